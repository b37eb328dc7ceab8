//! The REST API under a property-based fuzzer that is not ours: Schemathesis (PyPI, MIT, pinned,
//! in `.tools/fuzz-venv`) reads `/api/v1/openapi.json` and sends what the document allows and what
//! it does not (its coverage, fuzzing and stateful phases, seeded), with the tokens of four roles
//! (the supervisor, a commune's operator, a commune's viewer, the administrator), against the real
//! gateway, lighting and reports services.
//!
//! Checked here: no answer is a server error (5xx), and every answer's content type is one the
//! document gives. The document is written by hand and has drifted from the code: statuses it
//! does not list (401 on every protected route), constraints the handlers enforce and the schema
//! lacks (an empty `commune=` is refused). Those checks (status codes, response schemas,
//! schema-valid requests accepted) come with the document generated from the code (issue 26);
//! `VIGIE_OPENAPI_FUZZ_ALL=1` runs them all, to see the drift, and with
//! `VIGIE_OPENAPI_FUZZ_REPORT=docs/openapi-drift.md` writes what they found there, by role and
//! operation (the test then passes: it is a measure, not a gate).

use anyhow::{Context, Result};
use std::time::Duration;
use tests::{ADMIN, SUPERVISOR, Slice, login_token, repo_root, test_territory};

/// Test cases per operation and role.
const EXAMPLES: &str = "25";
const SEED: &str = "26";

/// Runs Schemathesis with this token; its output when it found something.
async fn fuzz(gateway: &str, role: &str, token: &str, excluded: &[&str]) -> Result<Option<String>> {
    let schemathesis = repo_root().join(".tools/fuzz-venv/bin/schemathesis");
    anyhow::ensure!(
        schemathesis.is_file(),
        "{} is missing: run deploy/install-tools.sh --browser",
        schemathesis.display()
    );
    let checks = if std::env::var("VIGIE_OPENAPI_FUZZ_ALL").is_ok_and(|v| v == "1") {
        "all"
    } else {
        "not_a_server_error,content_type_conformance"
    };
    let mut command = tokio::process::Command::new(&schemathesis);
    command
        .arg("run")
        .arg(format!("http://{gateway}/api/v1/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", checks, "--max-examples", EXAMPLES, "--seed", SEED, "--workers", "1"])
        .args(["--request-timeout", "20", "--no-color"])
        // Logging out would end the token's session: the rest of the run would be 401s.
        .args(["--exclude-path-regex", "/api/v1/auth/logout"])
        // Removing operators could remove the test's own logins.
        .args(["--exclude-name", "DELETE /api/v1/admin/operators/{login}"]);
    for name in excluded {
        command.args(["--exclude-name", name]);
    }
    // Its own scratch files (reports, the examples' database) stay out of the repository.
    let scratch = tempfile::tempdir()?;
    command.current_dir(scratch.path()).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .with_context(|| format!("Schemathesis ({role}) did not finish within 10 minutes"))??;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    // It says how many cases it generated ("Test cases: N generated, ..."): none tests nothing.
    let generated = text
        .lines()
        .filter_map(|l| l.trim().split_once(" generated"))
        .filter_map(|(before, _)| before.rsplit(' ').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    anyhow::ensure!(generated > 0, "Schemathesis ({role}) generated no test case:\n{text}");
    // 1: checks failed; anything else but success is the run itself failing.
    match output.status.code() {
        Some(0) => Ok(None),
        Some(1) => Ok(Some(text)),
        other => anyhow::bail!("Schemathesis ({role}) did not run through (exit {other:?}):\n{text}"),
    }
}

/// The failures of a run, one line each: `- METHOD path: STnnn title (what came back)`.
fn summary(role: &str, output: &str) -> String {
    let mut out = format!("\n## {role}\n\n");
    let mut operation = "";
    let mut lines = output.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_matches(|c| c == '_' || c == ' ');
        if line.starts_with('_') && trimmed.split_once(' ').is_some_and(|(m, _)| ["GET", "POST", "DELETE"].contains(&m))
        {
            operation = trimmed;
        } else if let Some(check) = line.strip_prefix("- ST") {
            // What came back: the status received (undocumented ones), else the answer's body.
            let next: Vec<&str> =
                lines.clone().take(40).take_while(|l| !l.starts_with("- ST")).map(str::trim).collect();
            let seen = next
                .iter()
                .find(|l| l.starts_with("Received:"))
                .or_else(|| next.iter().find(|l| l.starts_with('`')))
                .copied()
                .unwrap_or("")
                .chars()
                .take(160)
                .collect::<String>();
            out.push_str(&format!("- `{operation}`: ST{check} ({seen})\n"));
        }
    }
    out
}

#[tokio::test]
async fn the_rest_api_answers_a_fuzzer_without_server_errors_for_every_role() -> Result<()> {
    let territory = test_territory()?;
    let reports_port = tests::free_port()?;
    let reports_url = format!("http://127.0.0.1:{reports_port}");
    // The water service needs the real network; without it, valve commands are not fuzzed (a
    // gateway without a water service answers them 503, as documented).
    let water_data = repo_root().join("../shared/data/montpellier-mediterranee-metropole/water");
    let water_port = tests::free_port()?;
    let water_url = format!("http://127.0.0.1:{water_port}");
    let with_water = water_data.join("L-TOWN.inp").is_file();
    if with_water {
        std::os::unix::fs::symlink(&water_data, territory.path().join("water"))?;
    } else {
        eprintln!("valve commands not fuzzed: {} is absent", water_data.display());
    }
    // The four runs take minutes: tokens that outlive them (a 401 would pass both checks).
    let mut gateway_flags = vec!["--reports-url", reports_url.as_str(), "--access-token-ttl", "2h"];
    if with_water {
        gateway_flags.extend(["--water-url", water_url.as_str()]);
    }
    let slice = Slice::start_full(territory, &[], &gateway_flags).await?;
    let reports_addr = format!("127.0.0.1:{reports_port}");
    let _reports = slice.start_reports(&["--grpc-addr", &reports_addr]).await?;
    let water_addr = format!("127.0.0.1:{water_port}");
    let _water = if with_water { Some(slice.start_water(&["--grpc-addr", &water_addr]).await?) } else { None };
    let gateway = slice.gateway_addr.clone();

    let roles = [
        ("supervisor", login_token(&gateway, SUPERVISOR).await?),
        ("operator", slice.add_operator("fuzz-operateur", "operator", &["34172"]).await?),
        ("viewer", slice.add_operator("fuzz-lecteur", "viewer", &["34129"]).await?),
        ("admin", login_token(&gateway, ADMIN).await?),
    ];
    let without_water: &[&str] = if with_water { &[] } else { &["POST /api/v1/commands/valve"] };
    let report = std::env::var("VIGIE_OPENAPI_FUZZ_REPORT").ok();
    let mut findings = Vec::new();
    let mut drift = String::new();
    for (role, token) in &roles {
        // Logins and refreshes do not depend on the caller's token: fuzzed once (each guess is a
        // password check, which takes its time on purpose).
        let mut excluded = without_water.to_vec();
        if *role != "supervisor" {
            excluded.extend(["POST /api/v1/auth/login", "POST /api/v1/auth/refresh"]);
        }
        if let Some(output) = fuzz(&gateway, role, token, &excluded).await? {
            drift.push_str(&summary(role, &output));
            findings.push(format!("== {role}\n{output}"));
        }
        // The role's token still held at the end of its run: it was fuzzed as that role.
        let (status, me) = tests::http_get_as(&gateway, "/api/v1/auth/me", Some(token)).await?;
        assert_eq!(status, 200, "{role}'s token after its run: {me}");
    }
    if let Some(path) = report {
        let text = format!(
            "# The REST API's OpenAPI document against the fuzzer\n\nWritten by `VIGIE_OPENAPI_FUZZ_ALL=1 \
             VIGIE_OPENAPI_FUZZ_REPORT={path} cargo test -p tests --test e2e -- openapi_fuzz` (Schemathesis, \
             every check, seed {SEED}, {EXAMPLES} cases per operation and role). Each line is one kind of \
             failure: the operation, Schemathesis's code and what it saw.\n{drift}"
        );
        std::fs::write(repo_root().join(&path), text)?;
        return Ok(());
    }
    assert!(findings.is_empty(), "the fuzzer found failures:\n{}", findings.join("\n"));
    // And the gateway is still up and serving.
    let (status, _) = tests::http_get_as(&gateway, "/api/v1/alarms", Some(&roles[0].1)).await?;
    assert_eq!(status, 200);
    Ok(())
}
