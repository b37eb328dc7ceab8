//! The console in a real browser, against the real system: NATS, the lighting, transport,
//! reports and water services, the gateway serving the built console, and the simulator, on the
//! real territory of `../shared/data` when it is there (30,000 streetlights, the TaM feed, the
//! water network), else on the two-commune test territory.
//!
//! `ui-client/tests/console.test.mjs` (node's test runner, playwright-core driving Debian's
//! Chromium) plays the scenarios. When a scenario needs something done to the system (a lamp
//! failing, the gateway frozen, killed or started again, a burst on the water network), it asks
//! this test over a small HTTP control endpoint (`GET /step/<name>`), which does it and answers
//! with JSON. Screenshots of each scenario go to target/test-artifacts/console/.

use anyhow::{Context, Result, bail};
use proto::lighting::{
    LampStatus, PowerState, RegisterStreetlightsRequest, ReportStatusRequest, StatusReport, Streetlight,
};
use proto::reports::CreateRequestRequest;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, SystemTime};
use tests::{Process, ServiceProcess, Slice, free_port, http_get_json, real_territory, repo_root, test_territory};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The pipe the simulator bursts in the water scenario (a pipe of L-Town's main area).
const BURST_PIPE: &str = "p346";

struct System {
    slice: Slice,
    real_data: bool,
    water: Option<ServiceProcess>,
    water_simulator: Option<Process>,
    /// Lamps this test made fail, so that each step fails a new one.
    failed: Vec<String>,
    lamps: Vec<String>,
    /// The lamp `pick-lamp` chose, for `fail-picked-lamp`.
    picked: Option<String>,
    reports: ServiceProcess,
    /// Where `file-report` files its report (a lamp's place: in the territory).
    report_at: (f64, f64),
    /// A lamp and its street (real data only), for `street`.
    street_lamp: Option<Value>,
    /// Lamps for the flood (real data: lamps of 34172 besides `lamps`).
    flood_lamps: Vec<String>,
}

impl System {
    /// A lamp of the inventory that has not failed yet, reported defective.
    async fn fail_a_lamp(&mut self) -> Result<Value> {
        let id = self.lamps.iter().find(|l| !self.failed.contains(l)).context("no lamp left to fail")?.clone();
        self.fail(id).await
    }

    async fn fail(&mut self, id: String) -> Result<Value> {
        let mut client = self.slice.lighting_client().await?;
        let report = StatusReport {
            streetlight_id: id.clone(),
            observed_at: Some(SystemTime::now().into()),
            status: LampStatus::DefectiveLamp as i32,
            power_state: PowerState::On as i32,
            ..Default::default()
        };
        client.report_status(ReportStatusRequest { report: Some(report) }).await?;
        self.failed.push(id.clone());
        Ok(json!({ "asset": id }))
    }

    async fn step(&mut self, name: &str) -> Result<Value> {
        match name {
            "raise-alarm" => self.fail_a_lamp().await,
            // A lamp from the other end of the list (far from those failed from its start), not
            // failed yet: a scenario looks at it first, then asks `fail-picked-lamp`.
            "pick-lamp" => {
                let id = (self.lamps.iter().rev())
                    .find(|l| !self.failed.contains(l) && self.picked.as_ref() != Some(l))
                    .context("no lamp left to pick")?
                    .clone();
                // Never failed by another step once picked, whether or not it fails.
                self.failed.push(id.clone());
                self.picked = Some(id.clone());
                Ok(json!({ "asset": id }))
            }
            "fail-picked-lamp" => {
                let id = self.picked.take().context("no lamp picked")?;
                self.fail(id).await
            }
            "pause-gateway" => {
                self.slice.gateway.pause()?;
                Ok(json!({}))
            }
            "resume-gateway" => {
                self.slice.gateway.resume()?;
                Ok(json!({}))
            }
            "stop-gateway" => {
                self.slice.gateway.kill()?;
                Ok(json!({}))
            }
            // A lamp fails while the gateway is down; it comes back on the same address.
            "start-gateway" => {
                let failed = self.fail_a_lamp().await?;
                let from = self.slice.gateway.restart()?;
                self.slice.gateway.wait_for_log("HTTP listening", from)?;
                self.slice.gateway.wait_for_log("consuming events", from)?;
                Ok(failed)
            }
            "water-burst" => {
                let Some(water) = &self.water else { bail!("no water service (real data absent)") };
                // Three hours of the series ×1500 (about 7 s), the burst two hours in.
                let simulator = self.slice.start_simulator(&[
                    "--parts",
                    "water",
                    "--water-url",
                    &format!("http://{}", water.grpc_addr),
                    "--water-replay-from",
                    "3h",
                    "--water-speed",
                    "1500",
                    "--water-data-start",
                    "2019-06-20",
                    "--water-burst-after",
                    "2h",
                    "--water-burst-pipe",
                    BURST_PIPE,
                    "--seed",
                    "5",
                ])?;
                self.water_simulator = Some(simulator);
                Ok(json!({}))
            }
            // An alarm flood: every lamp left fails at once (up to 40).
            // An alarm flood: 560 lamps of one commune fail at once (over 500 alarms: some of its
            // lamps were failed already, or go dark as one feeder's outage), or every lamp of the
            // test territory.
            "flood" => {
                let flood: Vec<String> =
                    if self.flood_lamps.is_empty() { self.lamps.clone() } else { self.flood_lamps.clone() };
                let mut failed = Vec::new();
                let flood: Vec<String> = flood.into_iter().filter(|l| !self.failed.contains(l)).take(560).collect();
                for id in flood {
                    failed.push(self.fail(id).await?["asset"].clone());
                }
                Ok(json!({ "failed": failed }))
            }
            // A citizen's report at the first lamp of the list (a place of the territory).
            "file-report" => {
                let (lat, lon) = self.report_at;
                let mut client = self.reports.reports_client().await?;
                let request = CreateRequestRequest {
                    service_code: "voirie-nid-de-poule".into(),
                    lat: Some(lat),
                    lon: Some(lon),
                    description: "Nid-de-poule devant le numéro 4".into(),
                    ..Default::default()
                };
                let created = client.create_request(request).await?.into_inner().request.context("a request")?;
                // Its asset in the view is `report-<service request id>` (the reports service's).
                Ok(json!({ "asset": format!("report-{}", created.service_request_id), "commune": created.commune }))
            }
            "street" => self.street_lamp.clone().context("no lamp with a street (real data absent)"),
            "real-data" => Ok(json!({ "real_data": self.real_data })),
            other => bail!("unknown step {other:?}"),
        }
    }
}

/// Serves one control request: `GET /step/<name>`.
async fn control(system: &mut System, mut stream: tokio::net::TcpStream) -> Result<()> {
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("");
    let name = path.strip_prefix("/step/").unwrap_or("");
    eprintln!("[console test] step {name}");
    let (status, body) = match system.step(name).await {
        Ok(answer) => ("200 OK", answer),
        Err(e) => ("500 Internal Server Error", json!({ "error": format!("{e:#}") })),
    };
    let body = body.to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    Ok(())
}

/// Waits until the gateway's view holds at least `n` assets.
async fn wait_assets(gateway: &str, n: u64) -> Result<u64> {
    tests::eventually(&format!("{n} assets in the view"), Duration::from_secs(180), || async {
        let (_, health) = http_get_json(gateway, "/health").await?;
        let assets = health["assets"].as_u64().unwrap_or(0);
        if assets >= n { Ok(Some(assets)) } else { Err(anyhow::anyhow!("the view has {assets} assets")) }
    })
    .await
}

#[tokio::test]
async fn console_in_a_browser() -> Result<()> {
    if std::env::var("VIGIE_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("SKIP console_in_a_browser: VIGIE_SKIP_BROWSER=1");
        return Ok(());
    }
    let _alone = tests::HEAVY.lock().await;
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

    let (territory, real_data) = match real_territory()? {
        Some(dir) => (dir, true),
        None => {
            eprintln!(
                "NOTE console_in_a_browser: ../shared/data is absent: the test territory, no transport nor water"
            );
            (test_territory()?, false)
        }
    };
    let territory_path = territory.path().display().to_string();
    // The gateway is told where the water and reports services will be before they start: those
    // two addresses are chosen here (the gateway's own it takes, and keeps across restarts).
    let (water_addr, reports_addr) = (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
    let (water_url, reports_url) = (format!("http://{water_addr}"), format!("http://{reports_addr}"));
    let mut gateway_flags = vec!["--heartbeat", "1s", "--territory", &territory_path, "--reports-url", &reports_url];
    if real_data {
        gateway_flags.extend(["--water-url", water_url.as_str()]);
    }
    let slice = Slice::start_full(territory, &["--kpi-interval", "2s"], &gateway_flags).await?;
    let gateway_addr = slice.gateway_addr.clone();
    let reports = slice.start_reports(&["--grpc-addr", &reports_addr, "--kpi-interval", "2s"]).await?;
    let mut services = Vec::new();
    let mut water = None;
    let mut simulator_args = vec!["--seed".to_owned(), "3".to_owned(), "--reports-url".to_owned(), reports_url.clone()];
    let lamps: Vec<String>;
    let report_at: (f64, f64);
    let mut street_lamp = None;
    let mut flood_lamps = Vec::new();
    if real_data {
        let transport = slice.start_transport(&["--kpi-interval", "2s"]).await?;
        // A Tuesday morning's network, whatever the hour the test runs at (at 03:00 two vehicles
        // run): the simulator replays the latest Tuesday from 08:30 in real time.
        simulator_args.extend([
            "--replay-at".into(),
            "tue 08:30".into(),
            "--parts".into(),
            "lighting,transport,reports".into(),
            "--transport-url".into(),
            format!("http://{}", transport.grpc_addr),
        ]);
        services.push(transport);
        water = Some(slice.start_water(&["--grpc-addr", &water_addr, "--kpi-interval", "2s"]).await?);
        // The lighting service imports the real inventory at start.
        let assets = wait_assets(&gateway_addr, 29_000).await?;
        eprintln!("[console test] the view holds {assets} assets");
        // Lamps of 34172 far apart (every 40th in the inventory's order, which follows the
        // streets): a flood of them is many lamp failures, not one dark street (a cluster).
        let (_, listed) =
            http_get_json(&gateway_addr, "/api/v1/assets?domain=lighting&commune=34172&limit=2400").await?;
        let items = listed["items"].as_array().context("assets")?;
        let first = items.first().context("no lamp in 34172")?;
        // A lamp with its street, for the street commanded from the map.
        street_lamp = items
            .iter()
            .find(|a| a["details"]["street"].as_str().is_some_and(|s| !s.is_empty()))
            .map(|a| json!({ "asset": a["id"], "street": a["details"]["street"] }));
        report_at = (
            first["position"]["lat"].as_f64().context("a lamp's latitude")?,
            first["position"]["lon"].as_f64().context("a lamp's longitude")?,
        );
        lamps = items.iter().step_by(40).filter_map(|a| a["id"].as_str().map(str::to_owned)).collect();
        // The flood's: others, every eighth of the commune's first 8,000 (one street's run of
        // lamps would go dark as one feeder's outage, one alarm).
        let (_, many) = http_get_json(&gateway_addr, "/api/v1/assets?domain=lighting&commune=34172&limit=8000").await?;
        flood_lamps = (many["items"].as_array().context("assets")?.iter().enumerate())
            .filter(|(i, _)| i % 8 == 3)
            .filter_map(|(_, a)| a["id"].as_str().map(str::to_owned))
            .filter(|id| !lamps.contains(id))
            .collect();
    } else {
        let mut client = slice.lighting_client().await?;
        lamps = (0..20).map(|i| format!("EP{i:02}")).collect();
        report_at = (43.6, 3.82);
        let lights = lamps
            .iter()
            .enumerate()
            .map(|(i, id)| Streetlight {
                id: id.clone(),
                lat: 43.6,
                lon: 3.82 + i as f64 * 0.005,
                ..Default::default()
            })
            .collect();
        client.register_streetlights(RegisterStreetlightsRequest { streetlights: lights }).await?;
        simulator_args.extend(["--parts".into(), "lighting,reports".into()]);
        wait_assets(&gateway_addr, 20).await?;
    }
    let simulator_args: Vec<&str> = simulator_args.iter().map(String::as_str).collect();
    let simulator = slice.start_simulator(&simulator_args)?;
    let communes = if real_data { 31 } else { 2 };

    let mut system = System {
        slice,
        real_data,
        water,
        water_simulator: None,
        failed: Vec::new(),
        lamps,
        picked: None,
        reports,
        report_at,
        street_lamp,
        flood_lamps,
    };
    let control_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control_addr = control_listener.local_addr()?;
    let artifacts = root.join("target/test-artifacts/console");
    // This run's screenshots only: one left by an earlier run proves nothing.
    if artifacts.exists() {
        std::fs::remove_dir_all(&artifacts).with_context(|| format!("clearing {}", artifacts.display()))?;
    }
    // Operators: two of every commune (two browsers), and one of commune 34129 only.
    system.slice.add_operator("op-nord", "operator", &[]).await?;
    system.slice.add_operator("op-sud", "operator", &[]).await?;
    system.slice.add_operator("op-34129", "operator", &["34129"]).await?;
    let expect = json!({
        "real_data": real_data,
        "communes": communes,
        "password": tests::TEST_PASSWORD,
        "operators": {"a": "op-nord", "b": "op-sud", "one_commune": "op-34129"},
    });
    let mut node = tokio::process::Command::new("node")
        .arg("--test")
        .arg("--test-concurrency=1")
        .arg(root.join("ui-client/tests/console.test.mjs"))
        .current_dir(root.join("ui-client"))
        .env("VIGIE_URL", format!("http://{gateway_addr}/"))
        .env("VIGIE_CONTROL", format!("http://{control_addr}"))
        .env("VIGIE_ARTIFACTS", &artifacts)
        .env("VIGIE_EXPECT", expect.to_string())
        .env("CHROMIUM_PATH", &chromium)
        // Under the clock checks (tests/at-hour.sh) the browser keeps the real clock: Chromium's
        // zygote does not run under libfaketime. The console then sees the gateway's clock ahead
        // or behind its own, as an operator's PC may.
        .env_remove("LD_PRELOAD")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running node --test (is Node.js installed?)")?;
    let mut stdout = node.stdout.take().context("node's stdout")?;
    let output = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text).await;
        text
    });

    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let status = loop {
        tokio::select! {
            accepted = control_listener.accept() => {
                let (stream, _) = accepted?;
                if let Err(e) = control(&mut system, stream).await {
                    eprintln!("[console test] control request failed: {e:#}");
                }
            }
            status = node.wait() => break status?,
            _ = tokio::time::sleep_until(deadline) => bail!("the browser test did not finish in 10 minutes"),
        }
    };
    let stdout = output.await?;
    eprintln!("{stdout}");
    let scenarios = if real_data { 15 } else { 12 };
    if !status.success() || !stdout.contains(&format!("# pass {scenarios}")) {
        // Every process stops first: their shutdown logs would otherwise follow the reason, and
        // a report that keeps only the end of the output would lose it.
        drop(simulator);
        drop(services);
        drop(system);
        tokio::time::sleep(Duration::from_millis(300)).await;
        bail!("the browser test failed ({status}); its failed scenarios:\n{}", failed_scenarios(&stdout));
    }
    let shots = ["01-map-live.png", "02-alarm.png", "03-ack-second-browser.png", "04-stale.png", "05-reconnected.png"];
    let acting =
        ["09-confirm-command.png", "09-command.png", "09-shelved.png", "09-report-in-progress.png", "10-flood.png"];
    let acting = acting.iter().chain(["10-dense.png", "11-wall.png"].iter());
    let with_real_data = [
        "08-isolation.png",
        "08-valves-applied.png",
        "08-trend.png",
        "12-cluster-before.png",
        "12-cluster-fault.png",
        "13-street-confirm.png",
        "13-street-command.png",
        "13-zone-command.png",
    ];
    for shot in shots
        .iter()
        .chain(["06-one-commune.png", "07-operator-of-one-commune.png", "00-login.png"].iter())
        .chain(acting)
        .chain(with_real_data.iter().filter(|_| real_data))
    {
        assert!(artifacts.join(shot).is_file(), "no screenshot {shot} in {}", artifacts.display());
    }
    drop(simulator);
    drop(services);
    drop(system);
    Ok(())
}

/// The failed scenarios of node's TAP output, each with its diagnostics (from `not ok` to the
/// end of its YAML block).
fn failed_scenarios(tap: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in tap.lines() {
        if line.trim_start().starts_with("not ok") {
            inside = true;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
            if line.trim() == "..." {
                inside = false;
            }
        }
    }
    if out.is_empty() { "(none reported: see the output above)".to_owned() } else { out }
}
