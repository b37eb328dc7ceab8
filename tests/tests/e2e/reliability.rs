//! The holes an outside reading of the code found in "nothing lost, nothing doubled, never
//! silently stale", each reproduced against the real processes (see the fault suite for the
//! seeded fault schedules).

use anyhow::{Context, Result};
use proto::lighting::{
    LampStatus, PowerState, RegisterStreetlightsRequest, ReportStatusRequest, StatusReport, Streetlight,
};
use proto::reports::CreateRequestRequest;
use std::time::{Duration, SystemTime};
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
    tests::eventually("the view to hold the assets", Duration::from_secs(30), || async {
        let (_, health) = http_get_json(gateway, "/health").await?;
        if health["assets"].as_u64() == Some(n) {
            return Ok(Some(()));
        }
        Err(anyhow::anyhow!("the view never held {n} assets: {health}"))
    })
    .await
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
    tests::eventually("140 W in the lighting KPI of 34172", Duration::from_secs(20), || async {
        let (_, kpis) = http_get_json(&slice.gateway_addr, "/api/v1/kpis?domain=lighting").await?;
        let power = kpis["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|k| k["commune"] == "34172")
            .and_then(|k| k["values"]["power_w"].as_f64());
        if power == Some(140.0) {
            return Ok(Some(()));
        }
        Err(anyhow::anyhow!("the lighting KPI of 34172 never showed 140 W: {kpis}"))
    })
    .await?;
    slice.gateway.kill()?;
    slice.restart_gateway().await?;
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
    let from = slice.restart_gateway().await?;
    slice.gateway.wait_for_log("the stored view cannot be read", from)?;
    wait_assets(&slice.gateway_addr, 2).await?;
    let (status, assets) = http_get_json(&slice.gateway_addr, "/api/v1/assets?domain=lighting").await?;
    assert_eq!(status, 200, "{assets}");
    let asset = assets["items"].as_array().into_iter().flatten().find(|a| a["id"] == "EP1").context("EP1")?;
    assert_eq!(asset["details"]["power_consumption_w"], 70.0, "rebuilt from the stream: {asset}");
    // The operators were not part of what was forgotten (restart_gateway logged one in).
    let (_, metrics) = tests::http_get(&slice.gateway_addr, "/metrics").await?;
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
    tests::eventually("the report behind the refused event in the view", Duration::from_secs(20), || async {
        let (_, assets) = http_get_json(&slice.gateway_addr, "/api/v1/assets?domain=reports").await?;
        let ids: Vec<&str> =
            assets["items"].as_array().into_iter().flatten().filter_map(|a| a["id"].as_str()).collect();
        // A report's asset id is `report-<service_request_id>`.
        let id = |r: &proto::reports::ServiceRequest| format!("report-{}", r.service_request_id);
        if ids.contains(&id(&light).as_str()) {
            assert!(!ids.contains(&id(&heavy).as_str()), "the refused event cannot have arrived");
            return Ok(Some(()));
        }
        Err(anyhow::anyhow!("the report behind the refused event never reached the view: {ids:?}"))
    })
    .await
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
    let (status, health) = http_get_json(&slice.gateway_addr, "/health").await?;
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
    slice.restart_gateway().await?;
    wait_assets(&slice.gateway_addr, 1).await?;

    disk.fill()?;
    // Writes until the gateway's store needs the disk (sled writes into space it holds first).
    let mut written = Vec::new();
    for k in 0..6_000 {
        written.push(client.report_status(report("EP1", f64::from(k % 100))).await?.into_inner().event_id);
        if k % 250 == 249 && http_get_json(&slice.gateway_addr, "/health").await?.0 == 503 {
            break;
        }
    }
    eprintln!("[full disk] {} writes before the gateway said stale", written.len());
    // A console connecting now (one connected during the writes, reading nothing, would be
    // dropped as silent) is told the data is stale.
    let mut live = slice.live_client().await?;
    let stale = live.until(|f| f["type"] == "heartbeat" && f["upstream"] == "stale").await;
    assert!(stale.is_ok(), "no heartbeat said stale while the gateway could not store: {:?}", stale.err());
    let (status, health) = http_get_json(&slice.gateway_addr, "/health").await?;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "stale", "{health}");
    assert_eq!(health["nats"], "connected", "{health}");

    // Room again. The store's failure is the process's (sled keeps an I/O error): the gateway
    // sees the room and exits, for its supervisor (here the test) to start it afresh.
    disk.free()?;
    let exit = slice.gateway.wait_exit()?;
    assert_eq!(exit.code(), Some(runtime::store_fault::EXIT_STORE_RECOVERED), "{exit:?}");
    slice.restart_gateway().await?;
    // The last write is in the view.
    let expected = ((written.len() - 1) % 100) as f64;
    tests::eventually("the last write in the view", Duration::from_secs(30), || async {
        let (_, assets) = http_get_json(&slice.gateway_addr, "/api/v1/assets?domain=lighting").await?;
        let ep1 = assets["items"].as_array().into_iter().flatten().find(|a| a["id"] == "EP1").cloned();
        if ep1.as_ref().and_then(|a| a["details"]["power_consumption_w"].as_f64()) == Some(expected) {
            return Ok(Some(()));
        }
        Err(anyhow::anyhow!("the last write never reached the view: {ep1:?}"))
    })
    .await?;
    let (status, health) = http_get_json(&slice.gateway_addr, "/health").await?;
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
    let notes = async |slice: &Slice| -> Result<Vec<String>> {
        let (_, audit) = http_get_json(&slice.gateway_addr, "/api/v1/audit?action=note").await?;
        Ok(audit["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["details"]["text"].as_str().map(str::to_owned))
            .collect())
    };
    for text in ["avant 1", "avant 2"] {
        let (status, answer) = tests::http_post_json(&slice.gateway_addr, "/api/v1/logbook", &note(text)).await?;
        assert_eq!(status, 200, "{answer}");
    }
    slice.nats.restart_without_streams()?;
    slice.gateway.wait_for_log("recreated", 0)?;
    tests::eventually("a log book entry taken on the new stream", Duration::from_secs(30), || async {
        // Posted once the gateway is back on the new stream: acknowledged once published (200
        // once applied, 202 before). Posted once acknowledged, never again (it would be twice).
        let (status, answer) = tests::http_post_json(&slice.gateway_addr, "/api/v1/logbook", &note("après")).await?;
        if status == 200 || status == 202 {
            return Ok(Some(()));
        }
        Err(anyhow::anyhow!("the gateway did not take a log book entry on the new stream: {status} {answer}"))
    })
    .await?;
    let expected = ["après", "avant 2", "avant 1"];
    tests::eventually("the note in the audit log", Duration::from_secs(10), || async {
        let notes = notes(&slice).await?;
        if notes == expected { Ok(Some(())) } else { Err(anyhow::anyhow!("the audit log's notes: {notes:?}")) }
    })
    .await
    .context("newest first, none lost nor overwritten")?;
    // The audit log survives a restart too (its keys carry the stream's epoch).
    slice.gateway.kill()?;
    slice.restart_gateway().await?;
    assert_eq!(notes(&slice).await?, ["après", "avant 2", "avant 1"]);
    // The operators are told the view was rebuilt (what the old stream held is not in it).
    let (_, answer) = http_get_json(&slice.gateway_addr, "/api/v1/notices").await?;
    let kinds: Vec<&str> =
        answer["items"].as_array().into_iter().flatten().filter_map(|n| n["kind"].as_str()).collect();
    assert_eq!(kinds, ["stream_recreated"], "{answer}");
    Ok(())
}

/// The events stream's last sequence, as the harness reads it.
async fn stream_last(slice: &Slice) -> Result<u64> {
    Ok(tests::read_events_stream(&slice.nats).await?.last)
}

/// Waits until `id` is in the stream; returns what the stream holds then.
async fn wait_in_stream(slice: &Slice, id: &str) -> Result<tests::StreamContent> {
    tests::eventually("the event in the stream", Duration::from_secs(60), || async {
        let content = tests::read_events_stream(&slice.nats).await?;
        if content.ids.contains_key(id) {
            return Ok(Some(content));
        }
        Err(anyhow::anyhow!("event {id} never reached the stream (last sequence {})", content.last))
    })
    .await
}

/// Outbox entries JetStream stored but whose acknowledgements never came back (a link that
/// lost the answers, a crash between an acknowledgement and the removal) were published again
/// when the relay could; later than the duplicate window, the stream stored them a second time,
/// and the gateway applied them (an operator saw each twice). Flushing removals only narrowed
/// this. The relay now reads back, before publishing again, which entries of its batch the
/// stream holds.
#[tokio::test]
async fn a_publish_whose_acknowledgement_was_lost_is_not_stored_twice_after_the_duplicate_window() -> Result<()> {
    let window = ["--stream-duplicate-window", "1s"];
    let slice = Slice::start_linked(NatsServer::start()?, test_territory()?, &window, &window).await?;
    let mut client = slice.lighting_client().await?;
    client.register_streetlights(RegisterStreetlightsRequest { streetlights: vec![lamp("EP1")] }).await?;
    wait_assets(&slice.gateway_addr, 1).await?;
    let link = slice.lighting_link.as_ref().context("a linked slice")?;

    // The service's publishes reach NATS; nothing comes back.
    link.set(tests::LinkState::StalledToClient);
    let mut written = Vec::new();
    for k in 0..20 {
        written.push(client.report_status(report("EP1", f64::from(k))).await?.into_inner().event_id);
    }
    // The relay's first batch is stored; it waits for acknowledgements that never come, fails
    // after 5 s, and the duplicate window (1 s) passes.
    let first = written.first().cloned().unwrap_or_default();
    wait_in_stream(&slice, &first).await?;
    tokio::time::sleep(Duration::from_secs(7)).await;
    link.set(tests::LinkState::Open);

    // A last write: the relay publishes in order, so once it is stored the twenty are settled.
    let marker = client.report_status(report("EP1", 99.0)).await?.into_inner().event_id;
    let content = wait_in_stream(&slice, &marker).await?;
    let doubled: Vec<&String> = written.iter().filter(|id| content.ids.get(*id) != Some(&1)).collect();
    assert!(doubled.is_empty(), "{} of 20 events not stored exactly once: {doubled:?}", doubled.len());
    // The gateway applied each once: its view is at the stream's end, and the service's outbox
    // is empty (nothing waits to be published a second time).
    tests::eventually("the gateway at the stream's end", Duration::from_secs(30), || async {
        let (_, health) = http_get_json(&slice.gateway_addr, "/health").await?;
        let last = stream_last(&slice).await?;
        if health["applied_seq"].as_u64() == Some(last) {
            return Ok(Some(()));
        }
        Err(anyhow::anyhow!("the gateway never reached the stream's end ({last}): {health}"))
    })
    .await?;
    let content = tests::read_events_stream(&slice.nats).await?;
    let total: usize = written.iter().map(|id| content.ids.get(id).copied().unwrap_or(0)).sum();
    assert_eq!(total, 20, "each write stored once, and nothing published again since");
    Ok(())
}

/// Events in flight to the gateway when its link to NATS broke were lost with the connection;
/// its durable consumer (acknowledging "all" up to the last message) then acknowledged them with
/// the next one, and the view never applied them. The view now reads from its stored sequence
/// with an ordered consumer, and a gap ends the attempt.
#[tokio::test]
async fn events_lost_in_flight_to_the_gateway_are_read_again() -> Result<()> {
    let slice = Slice::start_linked(NatsServer::start()?, test_territory()?, &[], &[]).await?;
    let mut client = slice.lighting_client().await?;
    let lamps = (1..=10).map(|i| lamp(&format!("EP{i}"))).collect();
    client.register_streetlights(RegisterStreetlightsRequest { streetlights: lamps }).await?;
    wait_assets(&slice.gateway_addr, 10).await?;
    let link = slice.gateway_link.as_ref().context("a linked slice")?;

    // The gateway's requests reach NATS, the events it is sent do not come back; then the link
    // breaks, and what was in flight is gone.
    link.set(tests::LinkState::StalledToClient);
    let mut last = String::new();
    for i in 1..=10 {
        last = client.report_status(report(&format!("EP{i}"), f64::from(50 + i))).await?.into_inner().event_id;
    }
    wait_in_stream(&slice, &last).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    link.set(tests::LinkState::Cut);
    tokio::time::sleep(Duration::from_millis(500)).await;
    link.set(tests::LinkState::Open);
    // One more event after the break.
    let marker = client.report_status(report("EP1", 77.0)).await?.into_inner().event_id;
    wait_in_stream(&slice, &marker).await?;

    tests::eventually("the events lost in flight in the view", Duration::from_secs(60), || async {
        let (_, assets) = http_get_json(&slice.gateway_addr, "/api/v1/assets?domain=lighting").await?;
        let power = |id: &str| {
            assets["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["id"] == id)
                .and_then(|a| a["details"]["power_consumption_w"].as_f64())
        };
        let missing: Vec<String> = (2..=10)
            .filter(|i| power(&format!("EP{i}")) != Some(f64::from(50 + i)))
            .map(|i| format!("EP{i}"))
            .collect();
        if missing.is_empty() && power("EP1") == Some(77.0) {
            return Ok(Some(()));
        }
        Err(anyhow::anyhow!("events lost in flight never reached the view: {missing:?}, EP1 {:?}", power("EP1")))
    })
    .await?;
    Ok(())
}

/// Events the stream's retention dropped before the view applied them (the gateway down longer
/// than the stream keeps events) passed with a log line only; and when retention had emptied the
/// stream, the gateway waited for events that could never come, stale for good. Now the view
/// moves past the gap, and a system notice says what is missing: heartbeats count it,
/// `/api/v1/notices` lists it (the sequences to the metropolitan roles only), until a supervisor
/// acknowledges it.
#[tokio::test]
async fn events_dropped_by_retention_before_the_view_applied_them_are_announced() -> Result<()> {
    let stream = ["--stream-max-age", "2s", "--stream-duplicate-window", "1s"];
    let gateway = ["--stream-max-age", "2s", "--stream-duplicate-window", "1s", "--heartbeat", "1s"];
    let mut slice = Slice::start_full(test_territory()?, &stream, &gateway).await?;
    let mut client = slice.lighting_client().await?;
    client.register_streetlights(RegisterStreetlightsRequest { streetlights: vec![lamp("EP1")] }).await?;
    wait_assets(&slice.gateway_addr, 1).await?;
    let operator = slice.add_operator("op-ouest", "operator", &["34172"]).await?;

    slice.gateway.kill()?;
    for k in 0..5 {
        client.report_status(report("EP1", f64::from(10 + k))).await?;
    }
    // The stream's retention drops them (and everything else) before the gateway is back.
    let js = async_nats::jetstream::new(slice.nats.client_as("reports").await?);
    tests::eventually("retention to empty the stream", Duration::from_secs(30), || async {
        let mut events = js.get_stream(proto::subject::EVENTS_STREAM).await?;
        let state = events.info().await?.state.clone();
        if state.messages == 0 && state.last_sequence > 0 {
            return Ok(Some(()));
        }
        Err(anyhow::anyhow!("retention never emptied the stream: {state:?}"))
    })
    .await?;
    slice.restart_gateway().await?;

    // Live again, past the gap.
    tests::eventually("the gateway live past the gap", Duration::from_secs(30), || async {
        let (status, health) = http_get_json(&slice.gateway_addr, "/health").await?;
        if status == 200 && health["status"] == "live" {
            return Ok(Some(()));
        }
        Err(anyhow::anyhow!("the gateway never became live past the gap: {health}"))
    })
    .await?;
    let (status, answer) = http_get_json(&slice.gateway_addr, "/api/v1/notices").await?;
    assert_eq!(status, 200, "{answer}");
    let items = answer["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{answer}");
    assert_eq!(items[0]["kind"], "events_lost_to_retention", "{answer}");
    let (from, to) = (items[0]["from_seq"].as_u64(), items[0]["to_seq"].as_u64());
    assert!(from.is_some_and(|f| to.is_some_and(|t| t >= f + 4)), "the five writes at least: {answer}");
    let mut live = slice.live_client().await?;
    live.until(|f| f["type"] == "heartbeat" && f["notices"] == 1).await?;

    // A commune's operator is told data may be missing, not the stream's volume; only a
    // supervisor acknowledges.
    let (status, answer) = tests::http_get_json_as(&slice.gateway_addr, "/api/v1/notices", Some(&operator)).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["items"][0]["kind"], "events_lost_to_retention", "{answer}");
    assert!(answer["items"][0].get("from_seq").is_none(), "{answer}");
    let id = items[0]["id"].as_u64().context("notice id")?;
    let body = serde_json::json!({"up_to": id});
    let (status, _) =
        tests::http_post_json_as(&slice.gateway_addr, "/api/v1/notices/acknowledge", &body, Some(&operator)).await?;
    assert_eq!(status, 403);
    let (status, answer) = tests::http_post_json(&slice.gateway_addr, "/api/v1/notices/acknowledge", &body).await?;
    assert_eq!((status, answer["acknowledged"].as_u64()), (200, Some(1)), "{answer}");
    live.until(|f| f["type"] == "heartbeat" && f.get("notices").is_none()).await?;
    Ok(())
}
