//! The benchmark's smoke mode: every scenario and baseline, briefly and on a small scale, so that
//! the benchmark keeps working (its figures are not checked: speed is the benchmark's business,
//! not the tests').

use anyhow::{Context, Result};

#[test]
fn the_benchmark_runs_every_scenario_and_loses_nothing() -> Result<()> {
    let _alone = tests::HEAVY.blocking_lock();
    let out = tempfile::tempdir()?;
    let report_path = out.path().join("benchmarks.md");
    let output = std::process::Command::new(tests::vigie_binary("vigie-bench")?)
        .args(["--smoke", "--out"])
        .arg(&report_path)
        .output()
        .context("running vigie-bench")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
    assert!(output.status.success(), "vigie-bench --smoke failed: {tail:#?}");
    let report = std::fs::read_to_string(&report_path)?;
    for section in [
        "## Machine",
        "## S1",
        "**B1**",
        "**B3**",
        "## S2",
        "B2 (raw broadcast)",
        "## S3",
        "## S4",
        "## Scaling",
        "### The console's first load",
        "## S5",
        "## S6",
    ] {
        assert!(report.contains(section), "the report has no {section:?}:\n{report}");
    }
    // Where the console is built and Chromium is there (as in CI), its first load is measured.
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ui = tests::repo_root().join("ui-client");
    if ui.join("dist/index.html").exists() && ui.join("node_modules/playwright-core").exists() {
        if std::path::Path::new(&chromium).exists() {
            assert!(report.contains("- The snapshot: "), "the console's first load was not measured:\n{report}");
        } else {
            eprintln!("SKIP the console's first load: no Chromium at {chromium}");
        }
    } else {
        eprintln!("SKIP the console's first load: the console is not built (cd ui-client && npm ci && npm run build)");
    }
    // Whatever the pace on a busy machine, every accepted report reached every client; every
    // scenario ran (a failed one says FAILED, a ladder whose every step failed sustains 0).
    assert!(!report.contains("(late)"), "every report reached every client in time: {report}");
    assert!(!report.contains("FAILED"), "{report}");
    assert!(!report.contains("sustained: **0 events/s**"), "{report}");
    assert!(!report.contains("none of the steps"), "{report}");
    Ok(())
}
