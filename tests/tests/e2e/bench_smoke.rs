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
    for section in
        ["## Machine", "## S1", "**B1**", "**B3**", "## S2", "B2 (raw broadcast)", "## S3", "## S4", "## S5", "## S6"]
    {
        assert!(report.contains(section), "the report has no {section:?}:\n{report}");
    }
    // Whatever the pace on a busy machine, every accepted report reached every client.
    assert!(!report.contains("(LOSS)"), "{report}");
    Ok(())
}
