//! The live protocol v1 (docs/live-protocol.md) against the real gateway: subscriptions filtered
//! by commune, domain, bounding box and severity; bad subscriptions and oversized frames refused
//! while other clients carry on; a resume after a disconnection without a gap; heartbeats, and a
//! silent client closed with its close code; a client that stops reading does not delay a fast
//! one; asset updates coalesced by default.

use anyhow::{Context, Result, bail};
use proto::lighting::{
    LampStatus, PowerState, RegisterStreetlightsRequest, ReportStatusRequest, StatusReport, Streetlight,
};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};
use tests::{LiveClient, Slice, test_territory};

fn report(id: &str, level: f64) -> ReportStatusRequest {
    ReportStatusRequest {
        report: Some(StatusReport {
            streetlight_id: id.into(),
            observed_at: Some(SystemTime::now().into()),
            status: LampStatus::Ok as i32,
            power_state: PowerState::On as i32,
            illuminance_level: level,
            power_consumption_w: 70.0,
            voltage_v: None,
        }),
    }
}

async fn subscribe(client: &mut LiveClient, message: Value) -> Result<Value> {
    client.send_text(&message.to_string()).await?;
    client.next().await
}

#[tokio::test]
async fn subscriptions_resume_heartbeats_and_slow_clients() -> Result<()> {
    let slice = Slice::start_full(test_territory()?, &[], &["--heartbeat", "300ms"]).await?;
    let mut lighting = slice.lighting_client().await?;
    let lights = vec![
        Streetlight { id: "EP-W".into(), lat: 43.6, lon: 3.85, ..Default::default() },
        Streetlight { id: "EP-E".into(), lat: 43.6, lon: 3.95, ..Default::default() },
    ];
    lighting.register_streetlights(RegisterStreetlightsRequest { streetlights: lights }).await?;
    // The registrations are applied (acknowledged writes reach the view a moment later).
    tests::eventually("the registrations in the view", std::time::Duration::from_secs(10), || async {
        Ok((tests::http_get_json(&slice.gateway_addr, "/health").await?.1["assets"] == 2).then_some(()))
    })
    .await?;
    let url = format!("ws://{}/ws", slice.gateway_addr);

    // A commune's subscription: its snapshot, then only its deltas.
    let mut east = LiveClient::connect(&format!("{url}?coalesce=false")).await?;
    assert_eq!(east.next().await?["type"], "snapshot");
    let snapshot =
        subscribe(&mut east, json!({"v": 1, "type": "subscribe", "filter": {"communes": ["34129"]}})).await?;
    assert_eq!(snapshot["type"], "snapshot");
    let ids: Vec<&str> =
        snapshot["assets"].as_array().context("assets")?.iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids, ["EP-E"]);
    // A bounding box around the western lamp only, and severity: nothing from the east.
    let mut west = LiveClient::connect(&url).await?;
    west.next().await?;
    let snapshot = subscribe(
        &mut west,
        json!({"v": 1, "type": "subscribe", "filter": {"bbox": [3.8, 43.5, 3.9, 43.7], "domains": ["lighting"], "min_severity": "major"}}),
    )
    .await?;
    let ids: Vec<&str> =
        snapshot["assets"].as_array().context("assets")?.iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids, ["EP-W"]);

    // Bad subscriptions get an error and change nothing; the connection stays.
    let bad = [
        (json!({"v": 1, "type": "subscribe", "filter": {"communes": ["34.129"]}}), "bad_filter"),
        (json!({"v": 1, "type": "subscribe", "filter": {"domains": ["weather"]}}), "bad_filter"),
        (json!({"v": 1, "type": "subscribe", "filter": {"bbox": [4.0, 43.5, 3.9, 43.7]}}), "bad_filter"),
        (json!({"v": 1, "type": "subscribe", "filter": {"min_severity": "apocalyptic"}}), "bad_filter"),
        (json!({"v": 1, "type": "subscribe", "filter": {"colour": "red"}}), "bad_message"),
        (json!({"v": 1, "type": "subscribe", "resume_from": -1}), "bad_message"),
    ];
    for (message, code) in bad {
        let answer = loop {
            let frame = subscribe(&mut east, message.clone()).await?;
            if frame["type"] != "heartbeat" {
                break frame;
            }
        };
        assert_eq!((&answer["type"], &answer["code"]), (&json!("error"), &json!(code)), "{message}: {answer}");
    }
    // An oversized frame closes that connection only.
    let mut big = LiveClient::connect(&url).await?;
    big.next().await?;
    big.send_text(&"x".repeat(70 * 1024)).await?;
    let closed = async {
        loop {
            if big.next().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .context("an oversized frame must close the connection")?;

    let east_report = lighting.report_status(report("EP-E", 0.4)).await?.into_inner().event_id;
    let west_report = lighting.report_status(report("EP-W", 0.6)).await?.into_inner().event_id;
    let frames = east.until(|f| f["event"]["id"] == east_report.as_str()).await?;
    assert!(frames.iter().all(|f| f["type"] != "delta" || f["asset"]["commune"] == "34129"), "{frames:?}");
    let frames = west.until(|f| f["event"]["id"] == west_report.as_str()).await?;
    assert!(frames.iter().all(|f| f["type"] != "delta" || f["asset"]["id"] == "EP-W"), "{frames:?}");

    // Heartbeats carry the sequence and say the gateway is live.
    let frames = west.until(|f| f["type"] == "heartbeat").await?;
    let beat = frames.last().context("heartbeat")?;
    assert_eq!(beat["upstream"], "live");
    assert!(beat["seq"].as_u64().is_some_and(|s| s > 0));

    // Resume: a client drops, events go on, it comes back with its last seq and gets exactly what
    // it missed.
    let mut roaming = LiveClient::connect(&format!("{url}?coalesce=false")).await?;
    let last_seq = roaming.next().await?["seq"].as_u64().context("seq")?;
    drop(roaming);
    let mut missed = Vec::new();
    for i in 0..20 {
        let lamp = if i % 2 == 0 { "EP-W" } else { "EP-E" };
        missed.push(lighting.report_status(report(lamp, f64::from(i) / 20.0)).await?.into_inner().event_id);
    }
    let mut back = LiveClient::connect(&format!("{url}?coalesce=false&resume_from={last_seq}")).await?;
    let first = back.next().await?;
    assert_eq!((&first["type"], &first["from"]), (&json!("resumed"), &json!(last_seq)));
    let wanted: HashSet<&str> = missed.iter().map(String::as_str).collect();
    let mut got: Vec<String> = Vec::new();
    let mut seqs: Vec<u64> = Vec::new();
    back.until(|f| {
        if f["type"] == "delta" {
            got.push(f["event"]["id"].as_str().unwrap_or_default().to_owned());
            seqs.push(f["seq"].as_u64().unwrap_or_default());
        }
        wanted.iter().all(|id| got.iter().any(|g| g == id))
    })
    .await?;
    assert!(seqs.windows(2).all(|w| w[0] < w[1]) && seqs[0] > last_seq, "in order, after {last_seq}: {seqs:?}");
    assert_eq!(got.len(), got.iter().collect::<HashSet<_>>().len(), "no delta twice");
    // A resume the gateway cannot serve (a sequence it never reached) gets a snapshot.
    let mut lost = LiveClient::connect(&format!("{url}?resume_from={}", last_seq + 1_000_000)).await?;
    assert_eq!(lost.next().await?["type"], "snapshot");

    // A client that stops reading (and so answers no ping) does not delay a fast one, and is
    // closed with the no-heartbeat code once silent for six heartbeats.
    let mut stalled = LiveClient::connect(&format!("{url}?coalesce=false")).await?;
    stalled.next().await?;
    let mut fast = LiveClient::connect(&url).await?;
    fast.next().await?;
    let flood: Vec<proto::lighting::TelemetryMessage> = (0..3000)
        .map(|i| proto::lighting::TelemetryMessage {
            message: Some(proto::lighting::telemetry_message::Message::Status(
                report("EP-W", f64::from(i % 100) / 100.0).report.unwrap_or_default(),
            )),
        })
        .collect();
    let sent = Instant::now();
    let summary = lighting.stream_telemetry(futures::stream::iter(flood)).await?.into_inner();
    assert_eq!(summary.accepted, 3000);
    let accepted_after = sent.elapsed();
    let sentinel = lighting.report_status(report("EP-E", 0.99)).await?.into_inner().event_id;
    let acknowledged = Instant::now();
    let mut updates_of_west = 0;
    fast.until(|f| {
        if f["asset"]["id"] == "EP-W" {
            updates_of_west += 1;
        }
        f["event"]["id"] == sentinel.as_str()
    })
    .await?;
    let delivery = acknowledged.elapsed();
    eprintln!(
        "3000 reports accepted in {accepted_after:?}; the fast client had the sentinel {delivery:?} after its ack, with {updates_of_west} coalesced updates of the flooded lamp"
    );
    assert!(delivery < Duration::from_secs(2), "the fast client waited {delivery:?}");
    assert!(updates_of_west < 3000, "asset updates are coalesced for a default client ({updates_of_west})");
    // The stalled client: its buffered frames, then the close.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut stalled_frames = 0;
    let mut stalled_sentinel = false;
    let ended = async {
        loop {
            match stalled.next().await {
                Ok(f) => {
                    stalled_frames += 1;
                    stalled_sentinel |= f["event"]["id"] == sentinel.as_str();
                }
                Err(e) => return e.to_string(),
            }
        }
    };
    let reason =
        tokio::time::timeout(Duration::from_secs(20), ended).await.context("the stalled client was never closed")?;
    eprintln!(
        "the stalled client had {stalled_frames} frames waiting when it was closed (sentinel among them: {stalled_sentinel})"
    );
    // The gateway sent the close frame (code 4002, NO_HEARTBEAT); this client library answers
    // the pings it finds first and then sees the closed socket (broken pipe) or the close frame.
    if !(reason.contains("4002") || reason.contains("Broken pipe") || reason.contains("reset")) {
        bail!("the stalled client should have been closed: {reason}");
    }
    slice.gateway.wait_for_log("closing a silent client", 0)?;
    Ok(())
}

/// The gRPC OpsView stream is the WebSocket's subscription carried otherwise: it ends cleanly when
/// the gateway shuts down (a status saying so, not a cut connection), as a WebSocket gets its
/// close frame.
#[tokio::test]
async fn an_opsview_stream_is_told_when_the_gateway_shuts_down() -> Result<()> {
    let mut slice = Slice::start_full(test_territory()?, &[], &["--grpc-addr", "127.0.0.1:0"]).await?;
    let grpc = slice.gateway.wait_for_addr("gRPC listening", 0)?;
    let supervisor = tests::login_token(&slice.gateway_addr, tests::SUPERVISOR).await?;
    let mut ops = proto::ops::ops_view_client::OpsViewClient::connect(format!("http://{grpc}")).await?;
    let mut request = tonic::Request::new(proto::ops::SubscribeRequest::default());
    request.metadata_mut().insert("authorization", format!("Bearer {supervisor}").parse()?);
    let mut stream = ops.subscribe(request).await?.into_inner();
    let first: Value = serde_json::from_str(&stream.message().await?.context("a first frame")?.json)?;
    assert_eq!(first["type"], "snapshot");
    let reader = tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Err(anyhow::anyhow!("the stream ended without saying why")),
                Err(status) => return Ok(status),
            }
        }
    });
    slice.gateway.terminate()?;
    let status = tokio::time::timeout(Duration::from_secs(30), reader).await???;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    Ok(())
}

/// A client within 20 frames a second on average is not closed when its frames arrive together
/// (frames it sent while its session was busy building a snapshot): the old one-second window
/// closed a client for 21 at once. (A flood is closed with 1008: see
/// `tenancy::tokens_expire_sessions_close_and_origins_are_checked`.)
#[tokio::test]
async fn frames_arriving_together_within_the_allowance_do_not_close_a_client() -> Result<()> {
    let slice = Slice::start().await?;
    let url = format!("ws://{}/ws", slice.gateway_addr);
    let mut steady = LiveClient::connect(&url).await?;
    assert_eq!(steady.next().await?["type"], "snapshot");
    // 25 at once (within the allowance of 30), then a pong comes back for each.
    for _ in 0..25 {
        steady.send_text(r#"{"v":1,"type":"ping"}"#).await?;
    }
    let mut pongs = 0;
    steady
        .until(|f| {
            pongs += usize::from(f["type"] == "pong");
            pongs == 25
        })
        .await?;
    // Still served.
    steady.send_text(r#"{"v":1,"type":"ping"}"#).await?;
    steady.until(|f| f["type"] == "pong").await?;
    Ok(())
}

/// A view's snapshot went out as one frame, however large: each connection's write buffer kept
/// that size for its life (a territory's snapshot is megabytes, so 1.2 MiB per idle client in the
/// benchmark). To a client that asks (`split_snapshots=true`, as the console does) it now comes
/// in frames of about 16 KiB, of one `seq`, every one but the last saying `more`, which together
/// hold the whole view once; the deltas follow. Other clients still get it whole.
#[tokio::test]
async fn a_large_snapshot_comes_in_small_frames_that_hold_the_view_once() -> Result<()> {
    const LAMPS: usize = 1_500;
    let slice = Slice::start().await?;
    let mut lighting = slice.lighting_client().await?;
    let lights: Vec<Streetlight> = (0..LAMPS)
        .map(|i| Streetlight {
            id: format!("EP-BIG-{i:05}"),
            lat: 43.6 + (i % 50) as f64 * 1e-4,
            lon: 3.86 + (i / 50) as f64 * 1e-3,
            ..Default::default()
        })
        .collect();
    lighting.register_streetlights(RegisterStreetlightsRequest { streetlights: lights }).await?;
    tests::eventually("the registrations in the view", Duration::from_secs(30), || async {
        let (_, health) = tests::http_get_json(&slice.gateway_addr, "/health").await?;
        Ok((health["assets"].as_u64() >= Some(LAMPS as u64)).then_some(()))
    })
    .await?;

    // A client that does not say it gathers frames gets the snapshot whole.
    let mut whole = LiveClient::connect(&format!("ws://{}/ws", slice.gateway_addr)).await?;
    let frame = whole.next_frame().await?;
    assert_eq!(frame["type"], "snapshot");
    assert!(frame.get("more").is_none(), "one frame");
    assert_eq!(frame["assets"].as_array().map(Vec::len), Some(LAMPS));

    let mut client = LiveClient::connect(&format!("ws://{}/ws?split_snapshots=true", slice.gateway_addr)).await?;
    let mut frames = Vec::new();
    loop {
        let frame = client.next_frame().await?;
        assert_eq!(frame["type"], "snapshot", "nothing comes between a snapshot's frames");
        let more = frame["more"] == true;
        frames.push(frame);
        if !more {
            break;
        }
    }
    let seqs: HashSet<u64> = frames.iter().filter_map(|f| f["seq"].as_u64()).collect();
    assert_eq!(seqs.len(), 1, "one seq for every frame of a snapshot: {seqs:?}");
    let largest = frames.iter().map(|f| f.to_string().len()).max().unwrap_or(0);
    assert!(frames.len() >= 10, "{LAMPS} lamps in {} frame(s)", frames.len());
    assert!(largest <= 20 * 1024, "a snapshot frame of {largest} bytes");
    let mut ids = HashSet::new();
    for frame in &frames {
        for asset in frame["assets"].as_array().context("assets")? {
            let id = asset["id"].as_str().context("an asset's id")?;
            assert!(ids.insert(id.to_owned()), "{id} twice in one snapshot");
        }
    }
    let expected: HashSet<String> = (0..LAMPS).map(|i| format!("EP-BIG-{i:05}")).collect();
    assert_eq!(ids, expected, "the snapshot's frames hold every asset once");

    // The deltas follow, after the snapshot's seq.
    lighting.report_status(report("EP-BIG-00007", 0.4)).await?;
    let delta = client.until(|f| f["type"] == "delta").await?.pop().context("a delta")?;
    assert!(delta["seq"].as_u64() > seqs.iter().next().copied());
    assert_eq!(delta["asset"]["id"], "EP-BIG-00007");
    Ok(())
}
