//! The holes an outside reading of the code found in "nothing lost, nothing doubled, never
//! silently stale", each reproduced against the real processes (see the fault suite for the
//! seeded fault schedules).

use anyhow::{Context, Result, bail};
use proto::lighting::{
    LampStatus, PowerState, RegisterStreetlightsRequest, ReportStatusRequest, StatusReport, Streetlight,
};
use proto::reports::CreateRequestRequest;
use std::time::{Duration, Instant, SystemTime};
use tests::{NatsServer, Slice, http_get_json, test_territory};

fn lamp(id: &str) -> Streetlight {
    Streetlight { id: id.into(), commune: "34172".into(), lat: 43.6, lon: 3.85, ..Default::default() }
}

fn report(id: &str, power_w: f64) -> ReportStatusRequest {
    ReportStatusRequest {
        report: Some(StatusReport {
            streetlight_id: id.into(),
            observed_at: Some(SystemTime::now().into()),
            status: LampStatus::Ok as i32,
            power_state: PowerState::On as i32,
            illuminance_level: 1.0,
            power_consumption_w: power_w,
            voltage_v: Some(230.0),
        }),
    }
}

/// Waits until the gateway's view holds `n` assets.
async fn wait_assets(gateway: &str, n: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, health) = http_get_json(gateway, "/health")?;
        if health["assets"].as_u64() == Some(n) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the view never held {n} assets: {health}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two reports of 1e308 W (accepted once: only "finite and >= 0" was checked) made the commune's
/// power KPI infinite; the gateway stored it as JSON null and then refused to start. A lamp's
/// power now has a physical range, refused with a clear message, and the KPI stays a number.
#[tokio::test]
async fn a_lamp_power_no_store_can_hold_is_refused_and_the_gateway_restarts() -> Result<()> {
    let mut slice = Slice::start_with(test_territory()?, &["--kpi-interval", "1s"]).await?;
    let mut client = slice.lighting_client().await?;
    client.register_streetlights(RegisterStreetlightsRequest { streetlights: vec![lamp("EP1"), lamp("EP2")] }).await?;
    for id in ["EP1", "EP2"] {
        let refused = client.report_status(report(id, 1e308)).await.expect_err("1e308 W accepted");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("outside 0..2000 W"), "{}", refused.message());
    }
    for id in ["EP1", "EP2"] {
        client.report_status(report(id, 70.0)).await?;
    }
    // The commune's KPI: a finite number, the sum of what was accepted.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, kpis) = http_get_json(&slice.gateway_addr, "/api/v1/kpis?domain=lighting")?;
        let power = kpis["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|k| k["commune"] == "34172")
            .and_then(|k| k["values"]["power_w"].as_f64());
        if power == Some(140.0) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the lighting KPI of 34172 never showed 140 W: {kpis}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slice.gateway.kill()?;
    slice.restart_gateway()?;
    wait_assets(&slice.gateway_addr, 2).await
}

/// A record of the stored view the gateway cannot read (written by an older version, a damaged
/// file, or a value like the infinite KPI above) made it refuse to start until `var/` was
/// deleted, with the operators, the sessions and the signing key. It is now logged, counted, and
/// the view rebuilt from the events stream; the operators stay.
#[tokio::test]
async fn an_unreadable_record_of_the_view_is_rebuilt_from_the_stream() -> Result<()> {
    let mut slice = Slice::start().await?;
    let mut client = slice.lighting_client().await?;
    client.register_streetlights(RegisterStreetlightsRequest { streetlights: vec![lamp("EP1"), lamp("EP2")] }).await?;
    client.report_status(report("EP1", 70.0)).await?;
    wait_assets(&slice.gateway_addr, 2).await?;
    slice.gateway.kill()?;
    {
        let db = sled::open(slice.stores.path().join("gateway")).context("opening the gateway's store")?;
        // What the infinite KPI was stored as, and a record cut short.
        db.open_tree("kpis")?.insert(
            "lighting/34172",
            br#"{"domain":"lighting","commune":"34172","at":"x","values":{"power_w":null}}"#.as_slice(),
        )?;
        db.open_tree("assets")?.insert("lighting/EP1", br#"{"domain":"ligh"#.as_slice())?;
        db.flush()?;
    }
    let from = slice.restart_gateway()?;
    slice.gateway.wait_for_log("the stored view cannot be read", from)?;
    wait_assets(&slice.gateway_addr, 2).await?;
    let (status, assets) = http_get_json(&slice.gateway_addr, "/api/v1/assets?domain=lighting")?;
    assert_eq!(status, 200, "{assets}");
    let asset = assets["items"].as_array().into_iter().flatten().find(|a| a["id"] == "EP1").context("EP1")?;
    assert_eq!(asset["details"]["power_consumption_w"], 70.0, "rebuilt from the stream: {asset}");
    // The operators were not part of what was forgotten (restart_gateway logged one in).
    let (_, metrics) = tests::http_get(&slice.gateway_addr, "/metrics")?;
    assert!(metrics.contains("vigie_gateway_view_records_unreadable_total 1"), "not counted: {metrics}");
    Ok(())
}

/// An outbox entry NATS refuses for good (here: larger than the server's `max_payload`, 8 KiB in
/// this test; in production a report whose history grew with every duplicate) blocked every
/// event behind it, forever. It is now moved aside, logged and counted, and the queue goes on.
#[tokio::test]
async fn an_event_nats_can_never_take_is_set_aside_and_the_outbox_goes_on() -> Result<()> {
    let nats = NatsServer::start_with("max_payload: 8192")?;
    let slice = Slice::start_on(nats, test_territory()?, &[], &[]).await?;
    let reports = slice.start_reports(&[]).await?;
    let mut client = reports.reports_client().await?;
    let report = |description: String, lat: f64| CreateRequestRequest {
        service_code: "voirie-nid-de-poule".into(),
        lat: Some(lat),
        lon: Some(3.85),
        description,
        ..Default::default()
    };
    // 4,000 characters of two bytes each: an event of more than 8 KiB.
    let heavy =
        client.create_request(report("é".repeat(4_000), 43.6)).await?.into_inner().request.context("a request")?;
    let light = client.create_request(report("Trou".into(), 43.65)).await?.into_inner().request.context("a request")?;
    reports.process.wait_for_log("can never be published", 0)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, assets) = http_get_json(&slice.gateway_addr, "/api/v1/assets?domain=reports")?;
        let ids: Vec<&str> =
            assets["items"].as_array().into_iter().flatten().filter_map(|a| a["id"].as_str()).collect();
        // A report's asset id is `report-<service_request_id>`.
        let id = |r: &proto::reports::ServiceRequest| format!("report-{}", r.service_request_id);
        if ids.contains(&id(&light).as_str()) {
            assert!(!ids.contains(&id(&heavy).as_str()), "the refused event cannot have arrived");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the report behind the refused event never reached the view: {ids:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gateway whose consumer cannot progress while its NATS link is up (here: the disk under its
/// store is full) said `live` in every heartbeat and in `/health`, and the console showed frozen
/// data as live. Liveness now comes from the consumer's progress. Nothing of what it could not
/// store was shown or counted as applied: once there is room again, a restart resumes from the
/// stored sequence and the events written meanwhile arrive, nothing lost.
#[tokio::test]
async fn a_gateway_on_a_full_disk_is_not_live_and_loses_nothing() -> Result<()> {
    let mut slice = Slice::start_full(test_territory()?, &[], &["--heartbeat", "1s"]).await?;
    let mut client = slice.lighting_client().await?;
    client.register_streetlights(RegisterStreetlightsRequest { streetlights: vec![lamp("EP1")] }).await?;
    wait_assets(&slice.gateway_addr, 1).await?;
    let (status, health) = http_get_json(&slice.gateway_addr, "/health")?;
    assert_eq!((status, health["status"].as_str()), (200, Some("live")), "{health}");

    // The gateway's store moves onto a small file system of its own.
    slice.gateway.kill()?;
    let store = slice.stores.path().join("gateway");
    let Some(disk) = tests::SmallDisk::mount_over(&store, 32 << 20)? else {
        eprintln!(
            "SKIP a_gateway_on_a_full_disk_is_not_live_and_loses_nothing: mounting a tmpfs is not allowed here (run as root)"
        );
        return Ok(());
    };
    slice.restart_gateway()?;
    wait_assets(&slice.gateway_addr, 1).await?;
    let mut live = slice.live_client().await?;

    disk.fill()?;
    // Writes until the gateway's store needs the disk (sled writes into space it holds first).
    let mut written = Vec::new();
    for k in 0..6_000 {
        written.push(client.report_status(report("EP1", f64::from(k % 100))).await?.into_inner().event_id);
        if k % 250 == 249 && http_get_json(&slice.gateway_addr, "/health")?.0 == 503 {
            break;
        }
    }
    eprintln!("[full disk] {} writes before the gateway said stale", written.len());
    let stale = live.until(|f| f["type"] == "heartbeat" && f["upstream"] == "stale").await;
    assert!(stale.is_ok(), "no heartbeat said stale while the gateway could not store: {:?}", stale.err());
    let (status, health) = http_get_json(&slice.gateway_addr, "/health")?;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "stale", "{health}");
    assert_eq!(health["nats"], "connected", "{health}");

    // Room again; the store's failure is the process's (sled keeps an I/O error), so the
    // gateway is restarted, as its supervisor would.
    disk.free()?;
    slice.gateway.kill()?;
    slice.restart_gateway()?;
    // The last write is in the view.
    let expected = ((written.len() - 1) % 100) as f64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, assets) = http_get_json(&slice.gateway_addr, "/api/v1/assets?domain=lighting")?;
        let ep1 = assets["items"].as_array().into_iter().flatten().find(|a| a["id"] == "EP1").cloned();
        if ep1.as_ref().and_then(|a| a["details"]["power_consumption_w"].as_f64()) == Some(expected) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the last write never reached the view: {ep1:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, health) = http_get_json(&slice.gateway_addr, "/health")?;
    assert_eq!((status, health["status"].as_str()), (200, Some("live")), "{health}");
    drop(disk);
    Ok(())
}

/// A recreated events stream (its store lost, or deleted by hand) made the gateway wipe its audit
/// log with the view, so the record of what operators did was gone; and the new stream's
/// sequences, from 1 again, would have overwritten old entries. The view is rebuilt from the new
/// stream, and the audit log is kept, the new entries after the old.
#[tokio::test]
async fn a_recreated_stream_rebuilds_the_view_and_keeps_the_audit_log() -> Result<()> {
    let mut slice = Slice::start().await?;
    let note = |text: &str| serde_json::json!({"commune": "34172", "text": text});
    let notes = |slice: &Slice| -> Result<Vec<String>> {
        let (_, audit) = http_get_json(&slice.gateway_addr, "/api/v1/audit?action=note")?;
        Ok(audit["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["details"]["text"].as_str().map(str::to_owned))
            .collect())
    };
    for text in ["avant 1", "avant 2"] {
        let (status, answer) = tests::http_post_json(&slice.gateway_addr, "/api/v1/logbook", &note(text))?;
        assert_eq!(status, 200, "{answer}");
    }
    slice.nats.restart_without_streams()?;
    slice.gateway.wait_for_log("it was recreated", 0)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Posted once the gateway is back on the new stream (it answers once applied).
        let (status, _) = tests::http_post_json(&slice.gateway_addr, "/api/v1/logbook", &note("après"))?;
        if status == 200 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the gateway never took a log book entry on the new stream");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(notes(&slice)?, ["après", "avant 2", "avant 1"], "newest first, none lost nor overwritten");
    // The audit log survives a restart too (its keys carry the stream's epoch).
    slice.gateway.kill()?;
    slice.restart_gateway()?;
    assert_eq!(notes(&slice)?, ["après", "avant 2", "avant 1"]);
    Ok(())
}
