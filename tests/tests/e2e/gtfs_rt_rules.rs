//! The three GTFS-Realtime feeds of the real TaM network, under the simulator's load (×10 from a
//! busy morning, whatever the hour), checked by a validator that is not ours: PyPI
//! `gtfs-rt-validator`, MobilityData's rule set (the E and W rules of their Java validator) in
//! Python. Each snapshot of the three feeds is one cycle, so the cross-feed rules (W003: a
//! vehicle in one feed and not in the other) run too. No rule of severity ERROR may fire, nor
//! W003. Needs the transit feed of `../shared/data` (skipped without it).

use anyhow::{Context, Result, bail};
use prost::Message;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tests::{Slice, http_get_bytes, repo_root};

/// Snapshots of the three feeds taken, a few simulated minutes apart.
const SNAPSHOTS: usize = 6;
/// Vehicles the feeds must hold before the snapshots begin (a morning has dozens).
const VEHICLES: usize = 20;

/// The communes and the real transit feed, as links in a folder the test owns.
fn transit_territory() -> Result<Option<tempfile::TempDir>> {
    let data = repo_root().join("../shared/data/montpellier-mediterranee-metropole");
    if !data.join("transit/gtfs.zip").is_file() || !data.join("communes.geojson").is_file() {
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    for name in ["communes.geojson", "transit"] {
        std::os::unix::fs::symlink(data.join(name), dir.path().join(name))?;
    }
    Ok(Some(dir))
}

async fn fetch(http_addr: &str, feed: &str) -> Result<Vec<u8>> {
    let (status, body) = http_get_bytes(http_addr, &format!("/gtfs-rt/{feed}")).await?;
    if status != 200 {
        bail!("GET /gtfs-rt/{feed}: {status}");
    }
    Ok(body)
}

/// A feed decoded, with its bytes.
type Feed = (proto::transit_realtime::FeedMessage, Vec<u8>);

/// The (vehicle, trip) pairs of the positions feed.
fn pairs(positions: &proto::transit_realtime::FeedMessage) -> Vec<(Option<String>, Option<String>)> {
    positions
        .entity
        .iter()
        .filter_map(|e| e.vehicle.as_ref())
        .map(|v| (v.vehicle.as_ref().and_then(|d| d.id.clone()), v.trip.as_ref().and_then(|t| t.trip_id.clone())))
        .collect()
}

/// The three feeds at one moment: the simulator goes on reporting while they are read, and a
/// vehicle that appeared, left or changed trips in between would be in one feed and not in the
/// other. Read the positions, the alerts, the trip updates, then the positions again, until both
/// readings of the positions pair the same vehicles with the same trips.
async fn consistent_snapshot(http: &str) -> Result<(Feed, Feed, Feed)> {
    let read = |feed: &'static str| async move {
        let bytes = fetch(http, feed).await?;
        Ok::<Feed, anyhow::Error>((proto::transit_realtime::FeedMessage::decode(bytes.as_slice())?, bytes))
    };
    for _ in 0..20 {
        let positions = read("vehicle-positions").await?;
        let alerts = read("alerts").await?;
        let updates = read("trip-updates").await?;
        if pairs(&read("vehicle-positions").await?.0) == pairs(&positions.0) {
            return Ok((positions, alerts, updates));
        }
    }
    bail!("the vehicles changed during each of 20 readings of the feeds")
}

/// The notices of one validation, by rule: (severity, total).
fn notices(report: &serde_json::Value) -> BTreeMap<String, (String, u64)> {
    report["notices"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|n| {
                    let code = n["code"].as_str().unwrap_or("?").to_owned();
                    let severity = n["severity"].as_str().unwrap_or("?").to_owned();
                    (code, (severity, n["totalNotices"].as_u64().unwrap_or(1)))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How long the validator may take on all the snapshots (about 20 s here).
const VALIDATOR_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the validator on the snapshots (a folder each: a file per feed, and `at`, its time: the
/// validator's clock, the replay's time and not the wall clock); returns their reports.
async fn validate(gtfs: &Path, snapshots: &[PathBuf]) -> Result<Vec<serde_json::Value>> {
    let python = repo_root().join(".tools/venv/bin/python");
    anyhow::ensure!(python.is_file(), "{} is missing: run deploy/install-tools.sh --browser", python.display());
    // A validator that hangs fails the test (and is killed) rather than holding CI.
    let running = tokio::process::Command::new(&python)
        .arg(repo_root().join("tests/gtfs_rt_validate.py"))
        .arg(gtfs)
        .args(snapshots)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(VALIDATOR_TIMEOUT, running)
        .await
        .with_context(|| format!("the GTFS-Realtime validator did not finish within {VALIDATOR_TIMEOUT:?}"))??;
    if !output.status.success() {
        bail!(
            "the GTFS-Realtime validator failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    snapshots
        .iter()
        .map(|s| {
            let errors: serde_json::Value =
                serde_json::from_slice(&std::fs::read(s.join("report/system_errors.json"))?)?;
            let listed = errors["notices"].as_array().map_or(0, Vec::len);
            anyhow::ensure!(listed == 0, "the validator could not read a feed of {}: {errors}", s.display());
            let report = std::fs::read(s.join("report/report.json")).context("the validator's report.json")?;
            Ok(serde_json::from_slice(&report)?)
        })
        .collect()
}

#[tokio::test]
async fn the_real_networks_feeds_pass_mobilitydatas_rules_under_the_simulators_load() -> Result<()> {
    let Some(territory) = transit_territory()? else {
        eprintln!("SKIP gtfs_rt_rules: ../shared/data's transit feed is absent");
        return Ok(());
    };
    let gtfs = territory.path().join("transit/gtfs.zip");
    let slice = Slice::start_in(territory).await?;
    let transport = slice.start_transport(&[]).await?;
    let transport_url = format!("http://{}", transport.grpc_addr);
    let _simulator = slice.start_simulator(&[
        "--parts",
        "transport",
        "--transport-url",
        &transport_url,
        // A Tuesday's morning, whatever the day and the hour (a Sunday has fewer vehicles).
        "--replay-at",
        "tue 08:00",
        "--speed",
        "10",
        "--seed",
        "7",
    ])?;
    let http = transport.http_addr.clone();
    let vehicles = tests::eventually(&format!("{VEHICLES} vehicles in the feed"), Duration::from_secs(240), || async {
        let feed = proto::transit_realtime::FeedMessage::decode(fetch(&http, "vehicle-positions").await?.as_slice())?;
        let n = feed.entity.len();
        if n >= VEHICLES { Ok(Some(n)) } else { Err(anyhow::anyhow!("{n} vehicles")) }
    })
    .await?;
    eprintln!("{vehicles} vehicles in the feed; validating {SNAPSHOTS} snapshots");

    let dir = tempfile::tempdir()?;
    let (mut snapshots, mut trip_updates, mut timed) = (Vec::new(), 0, 0);
    for k in 0..SNAPSHOTS {
        let snapshot = dir.path().join(format!("{k}"));
        std::fs::create_dir_all(&snapshot)?;
        let (positions, alerts, updates) = consistent_snapshot(&http).await?;
        let at = [&positions, &alerts, &updates].iter().filter_map(|(m, _)| m.header.timestamp).max().unwrap_or(0);
        trip_updates += updates.0.entity.len();
        timed += updates
            .0
            .entity
            .iter()
            .filter_map(|e| e.trip_update.as_ref())
            .flat_map(|t| &t.stop_time_update)
            .filter(|u| u.arrival.as_ref().is_some_and(|a| a.time.is_some()))
            .count();
        for (feed, (_, bytes)) in [("vehicle-positions", positions), ("alerts", alerts), ("trip-updates", updates)] {
            std::fs::write(snapshot.join(format!("{feed}.pb")), bytes)?;
        }
        std::fs::write(snapshot.join("at"), at.to_string())?;
        snapshots.push(snapshot);
        // Half a simulated minute between two snapshots.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let mut fired: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for report in validate(&gtfs, &snapshots).await? {
        // The three messages read and validated (one it cannot read is no notice, but a system
        // error and a file skipped), E022 among the rules run.
        let summary = &report["summary"];
        anyhow::ensure!(
            summary["messagesValidated"] == 3 && summary["filesSkipped"] == 0,
            "the validator did not validate the three feeds: {summary}"
        );
        anyhow::ensure!(
            summary["rulesRun"].as_array().is_some_and(|r| r.iter().any(|r| r == "E022")),
            "the validator ran no E022: {summary}"
        );
        for (code, (severity, total)) in notices(&report) {
            if !fired.contains_key(&code) {
                // The first occurrence of each rule, with its samples, for whoever reads the log.
                let notice = report["notices"].as_array().into_iter().flatten().find(|n| n["code"] == code.as_str());
                let text = notice.map(|n| n.to_string()).unwrap_or_default();
                eprintln!("{code} fired: {}", text.chars().take(1500).collect::<String>());
            }
            fired.entry(code).or_insert((severity, 0)).1 += total;
        }
    }
    eprintln!("{trip_updates} trip updates, {timed} stop time updates with times validated; rules fired: {fired:?}");
    assert!(trip_updates >= SNAPSHOTS * VEHICLES, "{trip_updates} trip updates in {SNAPSHOTS} snapshots");
    assert!(timed >= trip_updates, "{timed} stop time updates with a predicted time in {trip_updates} trip updates");
    // Errors, the cross-feed pairing (W003) and speeds no vehicle reaches (W004).
    let errors: Vec<_> = fired
        .iter()
        .filter(|(code, (severity, _))| severity == "ERROR" || ["W003", "W004"].contains(&code.as_str()))
        .collect();
    assert!(errors.is_empty(), "MobilityData's rules fired: {errors:?}");
    Ok(())
}
