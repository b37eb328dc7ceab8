//! The console in a real browser: this test starts the system, puts known data in it, then runs
//! `ui-client/tests/console.test.mjs` (node's test runner, playwright-core driving Debian's
//! Chromium) against the gateway. Screenshots go to target/test-artifacts/console/.

use anyhow::{Context, Result, bail};
use proto::lighting::{
    LampStatus, PowerState, RegisterStreetlightsRequest, ReportStatusRequest, StatusReport, Streetlight,
};
use std::process::Command;
use std::time::SystemTime;
use tests::{Slice, repo_root};

#[tokio::test]
async fn console_in_a_browser() -> Result<()> {
    if std::env::var("VIGIE_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("SKIP console_in_a_browser: VIGIE_SKIP_BROWSER=1");
        return Ok(());
    }
    let root = repo_root();
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    for (path, how) in [
        (root.join("ui-client/dist/index.html"), "build the console: cd ui-client && npm ci && npm run build"),
        (root.join("ui-client/node_modules/playwright-core"), "install the console's packages: cd ui-client && npm ci"),
        (chromium.clone().into(), "install Debian's chromium: deploy/install-tools.sh --browser"),
    ] {
        if !path.exists() {
            bail!("{} is missing: {how} (tests/run.sh does all of it), or set VIGIE_SKIP_BROWSER=1", path.display());
        }
    }

    let slice = Slice::start().await?;
    let mut client = slice.lighting_client().await?;
    let lights: Vec<Streetlight> = ["EPA1", "EPA2", "EPB1"]
        .iter()
        .enumerate()
        .map(|(i, id)| Streetlight { id: (*id).into(), lat: 43.6, lon: 3.85 + i as f64 * 0.01, ..Default::default() })
        .collect();
    client.register_streetlights(RegisterStreetlightsRequest { streetlights: lights }).await?;
    // One lamp out: a lamp_failure alarm, "Lampe en panne" in the console.
    let report = StatusReport {
        streetlight_id: "EPB1".into(),
        observed_at: Some(SystemTime::now().into()),
        status: LampStatus::DefectiveLamp as i32,
        power_state: PowerState::On as i32,
        ..Default::default()
    };
    client.report_status(ReportStatusRequest { report: Some(report) }).await?;

    let artifacts = root.join("target/test-artifacts/console");
    let expect = serde_json::json!({"assets": 3, "asset": "EPB1", "alarm_label": "Lampe en panne"});
    let output = Command::new("node")
        .arg("--test")
        .arg(root.join("ui-client/tests/console.test.mjs"))
        .current_dir(root.join("ui-client"))
        .env("VIGIE_URL", format!("http://{}/", slice.gateway_addr))
        .env("VIGIE_ARTIFACTS", &artifacts)
        .env("VIGIE_EXPECT", expect.to_string())
        .env("CHROMIUM_PATH", &chromium)
        .output()
        .context("running node --test (is Node.js installed?)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the browser test failed (see its output above)");
    assert!(stdout.contains("# pass 1"), "the browser test did not run: {stdout}");
    assert!(artifacts.join("console-live.png").is_file(), "no screenshot in {}", artifacts.display());
    Ok(())
}
