//! The alarm workflow through the gateway's REST API, with two gateway replicas on one stream:
//! an operator's actions on one replica (assign, comment, shelve, acknowledge, resolve) reach the
//! other's view and WebSocket clients; the audit log answers by actor, action, commune and time
//! on both; bad requests get clear errors; a restarted replica has the same view and audit.

use anyhow::{Context, Result};
use proto::lighting::telemetry_message::Message as Telemetry;
use proto::lighting::{FaultReport, RegisterStreetlightsRequest, Streetlight, TalqFault, TelemetryMessage};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};
use tests::{Process, Slice, http_get_json, http_post_json, http_post_json_as};

fn lamp_failure(id: &str) -> TelemetryMessage {
    TelemetryMessage {
        message: Some(Telemetry::Fault(FaultReport {
            streetlight_id: id.into(),
            observed_at: Some(SystemTime::now().into()),
            fault: TalqFault::LampFailure as i32,
            active: true,
        })),
    }
}

/// An alarm action by the operator whose token this is.
async fn act(gateway: &str, token: &str, body: Value) -> Result<(u16, Value)> {
    http_post_json_as(gateway, "/api/v1/alarms/actions", &body, Some(token)).await
}

/// A gRPC request carrying a token.
fn authed<T>(message: T, token: &str) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

async fn items(gateway: &str, path: &str) -> Result<Vec<Value>> {
    let (status, body) = http_get_json(gateway, path).await?;
    anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
    Ok(body["items"].as_array().context("items")?.clone())
}

#[tokio::test]
async fn operators_work_alarms_on_one_replica_and_every_replica_follows() -> Result<()> {
    let mut slice = Slice::start_full(tests::test_territory()?, &["--metrics-addr", "127.0.0.1:0"], &[]).await?;
    let mut client = slice.lighting_client().await?;
    // One lamp in each commune of the test territory.
    let lights = vec![
        Streetlight { id: "EP-W".into(), lat: 43.6, lon: 3.85, ..Default::default() },
        Streetlight { id: "EP-E".into(), lat: 43.6, lon: 3.95, ..Default::default() },
    ];
    client.register_streetlights(RegisterStreetlightsRequest { streetlights: lights }).await?;
    // A second replica of the gateway: its own store and consumer, the same stream.
    let replica_store = tempfile::tempdir()?;
    let (replica, b) = slice.start_gateway_replica(replica_store.path(), &["--grpc-addr", "127.0.0.1:0"])?;
    let a = slice.gateway_addr.clone();
    let supervisor = tests::login(&a, tests::SUPERVISOR).await?;
    tests::use_token(&b, &supervisor);
    // Three operators of both communes.
    let communes = ["34172", "34129"];
    let (op_a, op_b, op_c) = (
        slice.add_operator("op-a", "operator", &communes).await?,
        slice.add_operator("op-b", "operator", &communes).await?,
        slice.add_operator("op-c", "operator", &communes).await?,
    );
    let mut live_b = tests::LiveClient::connect(&format!("ws://{b}/ws")).await?;
    assert_eq!(live_b.next().await?["type"], "snapshot");

    client.stream_telemetry(futures::stream::iter(vec![lamp_failure("EP-W"), lamp_failure("EP-E")])).await?;
    let (west, east) = ("lighting/lamp_failure/EP-W", "lighting/lamp_failure/EP-E");
    let mut seen = 0;
    live_b
        .until(|f| {
            if f["alarm"]["key"] == west || f["alarm"]["key"] == east {
                seen += 1;
            }
            seen == 2
        })
        .await?;
    // Both replicas' views, filtered by commune.
    tests::eventually("both alarms on gateway A", Duration::from_secs(10), || async {
        Ok((items(&a, "/api/v1/alarms").await?.len() >= 2).then_some(()))
    })
    .await?;
    let in_west = items(&a, "/api/v1/alarms?commune=34172").await?;
    assert_eq!(in_west.len(), 1);
    assert_eq!(in_west[0]["key"], west);
    assert_eq!(items(&b, "/api/v1/alarms?commune=34172,34129&domain=lighting&state=unacknowledged").await?.len(), 2);
    assert_eq!(items(&a, "/api/v1/assets?domain=lighting&commune=34129").await?.len(), 1);

    // The workflow on replica A.
    let (status, answer) = act(&a, &op_a, json!({"alarm_key": west, "action": "assign", "assignee": "op-b"})).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["alarm"]["assignee"], "op-b");
    let (status, answer) =
        act(&a, &op_b, json!({"alarm_key": west, "action": "comment", "comment": "équipe en route"})).await?;
    assert_eq!((status, &answer["alarm"]["comments"][0]["text"]), (200, &json!("équipe en route")));
    let until = chrono::Utc::now() + chrono::Duration::hours(1);
    let (status, answer) = act(
        &a,
        &op_b,
        json!({"alarm_key": west, "action": "shelve", "shelved_until": until.to_rfc3339(), "comment": "travaux programmés"}),
    ).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(items(&a, "/api/v1/alarms?state=shelved").await?.len(), 1);
    let (status, answer) = act(&a, &op_b, json!({"alarm_key": west, "action": "acknowledge"})).await?;
    assert_eq!((status, &answer["alarm"]["acknowledged_by"]), (200, &json!("op-b")));

    // Replica B follows: its WebSocket clients see the steps, its REST answers the same state.
    let frames = live_b.until(|f| f["alarm"]["key"] == west && f["alarm"]["acknowledged"] == true).await?;
    assert!(frames.iter().any(|f| f["alarm"]["assignee"] == "op-b" && f["event"]["domain"] == "ops"));
    let on_b = items(&b, "/api/v1/alarms?commune=34172").await?;
    let on_a = items(&a, "/api/v1/alarms?commune=34172").await?;
    assert_eq!(on_b, on_a, "replicas converge");

    // Resolved on B: it leaves A's view too.
    let (status, answer) =
        act(&b, &op_c, json!({"alarm_key": east, "action": "resolve", "comment": "lampe remplacée"})).await?;
    assert_eq!((status, &answer["alarm"]), (200, &Value::Null), "{answer}");
    tests::eventually("the resolved alarm gone from gateway A", Duration::from_secs(10), || async {
        Ok((items(&a, "/api/v1/alarms?commune=34129").await?.len() != 1).then_some(()))
    })
    .await?;

    // The audit log, on both replicas.
    let by_op_b = items(&a, "/api/v1/audit?actor=op-b").await?;
    let actions: Vec<&str> = by_op_b.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["acknowledge", "shelve", "comment"], "newest first");
    assert_eq!(items(&b, "/api/v1/audit?actor=op-b").await?, by_op_b);
    let assigns = items(&b, "/api/v1/audit?action=assign").await?;
    assert_eq!(
        (assigns.len(), &assigns[0]["actor"], &assigns[0]["details"]["assignee"]),
        (1, &json!("op-a"), &json!("op-b"))
    );
    let east_log = items(&a, "/api/v1/audit?commune=34129").await?;
    assert_eq!(east_log.len(), 1);
    assert_eq!((&east_log[0]["action"], &east_log[0]["target"]), (&json!("resolve"), &json!(east)));
    let future = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    assert!(items(&a, &format!("/api/v1/audit?from={}", future.replace('+', "%2B"))).await?.is_empty());
    assert_eq!(items(&a, "/api/v1/audit?limit=2").await?.len(), 2);

    // Bad requests: clear errors, and the gateway carries on.
    let bad_actions = [
        (json!({"alarm_key": west, "action": "dance"}), 400, "action is one of"),
        // Who acts is the token's operator, not something the request says.
        (json!({"alarm_key": west, "action": "acknowledge", "actor": "someone-else"}), 400, "unknown field"),
        (json!({"alarm_key": west, "action": "comment"}), 400, "comment is required"),
        (json!({"alarm_key": west, "action": "shelve", "comment": "travaux"}), 400, "shelved_until"),
        (
            json!({"alarm_key": west, "action": "shelve", "shelved_until": "2020-01-01T00:00:00Z", "comment": "travaux"}),
            400,
            "within the next 8 h",
        ),
        // Longer than a shift (--max-shelve, 8 h by default).
        (
            json!({"alarm_key": west, "action": "shelve", "shelved_until": (chrono::Utc::now() + chrono::Duration::hours(9)).to_rfc3339(), "comment": "travaux"}),
            400,
            "within the next 8 h",
        ),
        // A shelve says why.
        (
            json!({"alarm_key": west, "action": "shelve", "shelved_until": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()}),
            400,
            "comment is required",
        ),
        (json!({"alarm_key": "lighting/lamp_failure/EP-X", "action": "acknowledge"}), 404, "no alarm"),
        (json!({"alarm_key": "bad key!", "action": "acknowledge"}), 400, "alarm key"),
        (json!({"alarm_key": west, "action": "comment", "comment": "x".repeat(1001)}), 400, "at most 1000"),
    ];
    for (body, status, message) in bad_actions {
        let (got, answer) = act(&a, &op_a, body.clone()).await?;
        assert_eq!(got, status, "{body}: {answer}");
        let text = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{body}: {text:?} should mention {message:?}");
    }
    let (status, _) =
        act(&a, &op_a, json!({"alarm_key": west, "action": "comment", "comment": "x".repeat(70_000)})).await?;
    assert_eq!(status, 413);
    // A flood acknowledged at once: one request, one event and one log book entry per alarm;
    // what the caller cannot act on is said, not hidden.
    // The east lamp is repaired, then fails again.
    let mut repaired = lamp_failure("EP-E");
    if let Some(Telemetry::Fault(f)) = &mut repaired.message {
        f.active = false;
    }
    // Two calls: the rules settle after each, and within one a repair and a failure cancel out.
    client.stream_telemetry(futures::stream::iter(vec![repaired])).await?;
    client.stream_telemetry(futures::stream::iter(vec![lamp_failure("EP-E")])).await?;
    tests::eventually("the east alarm raised again", Duration::from_secs(10), || async {
        Ok(items(&a, "/api/v1/alarms?commune=34129").await?.iter().any(|x| x["key"] == east).then_some(()))
    })
    .await?;
    let (status, answer) = http_post_json_as(
        &a,
        "/api/v1/alarms/actions/bulk",
        &json!({"alarm_keys": [west, east, east, "lighting/lamp_failure/EP-X", "bad key!"], "action": "resolve"}),
        Some(&op_c),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    let done: Vec<&str> =
        answer["done"].as_array().into_iter().flatten().filter_map(|d| d["alarm_key"].as_str()).collect();
    assert_eq!(done, [west, east], "each alarm once: {answer}");
    assert_eq!(answer["refused"].as_array().map(Vec::len), Some(2), "{answer}");
    assert!(items(&a, "/api/v1/alarms").await?.is_empty(), "both resolved");
    let resolved_by_c: Vec<Value> = items(&b, "/api/v1/audit?actor=op-c&action=resolve").await?;
    assert_eq!(resolved_by_c.len(), 3, "one entry per alarm (and the earlier one): {resolved_by_c:?}");
    for (body, message) in [
        (json!({"alarm_keys": [], "action": "acknowledge"}), "1 to 1000"),
        (json!({"alarm_keys": vec![west; 1001], "action": "acknowledge"}), "1 to 1000"),
        (json!({"alarm_keys": [west], "action": "comment"}), "acknowledge, shelve, unshelve or resolve"),
        (
            json!({"alarm_keys": [west], "action": "shelve", "shelved_until": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()}),
            "comment is required",
        ),
    ] {
        let (status, answer) = http_post_json_as(&a, "/api/v1/alarms/actions/bulk", &body, Some(&op_c)).await?;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains(message)), "{body}: {answer}");
    }
    let viewer = slice.add_operator("watcher", "viewer", &communes).await?;
    let (status, _) = http_post_json_as(
        &a,
        "/api/v1/alarms/actions/bulk",
        &json!({"alarm_keys": [west], "action": "acknowledge"}),
        Some(&viewer),
    )
    .await?;
    assert_eq!(status, 403, "a viewer acts on nothing");

    for path in [
        "/api/v1/alarms?commune=34.172",
        "/api/v1/alarms?domain=x",
        "/api/v1/assets?limit=0",
        "/api/v1/audit?from=yesterday",
        "/api/v1/alarms?colour=red",
    ] {
        let (status, body) = http_get_json(&a, path).await?;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
    let (status, doc) = http_get_json(&a, "/api/v1/openapi.json").await?;
    assert_eq!((status, &doc["openapi"]), (200, &json!("3.1.0")));
    for path in [
        "/api/v1/assets",
        "/api/v1/alarms",
        "/api/v1/alarms/actions",
        "/api/v1/alarms/actions/bulk",
        "/api/v1/kpis",
        "/api/v1/commands",
        "/api/v1/audit",
        "/api/v1/commands/lighting",
        "/api/v1/commands/valve",
        "/api/v1/reports/status",
        "/api/v1/logbook",
        "/api/v1/territory",
        "/api/v1/basemap/communes.geojson",
        "/api/v1/basemap/streets.geojson",
        "/api/v1/water/dmas",
        "/api/v1/endpoints",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }

    // Commands over REST, routed to the services: the lighting service takes it (pending, its
    // controller absent), refuses a bad one with its reason; services not configured answer 503.
    let (status, answer) = http_post_json_as(
        &a,
        "/api/v1/commands/lighting",
        &json!({"target": {"streetlight_id": "EP-W"}, "action": {"dim_level": 0.5}, "reason": "essai"}),
        Some(&op_a),
    )
    .await?;
    assert_eq!(status, 201, "{answer}");
    let command = &answer["commands"][0];
    assert_eq!(
        (&command["status"], &command["requested_by"], &command["commune"]),
        (&json!("pending"), &json!("op-a"), &json!("34172"))
    );
    // A command limited to one commune (a street's name is not unique across communes) reaches
    // that commune's lamps only, and only a commune of the caller's.
    let (status, answer) = http_post_json_as(
        &a,
        "/api/v1/commands/lighting",
        &json!({"target": {"streetlight_id": "EP-E"}, "action": {"switch_on": false}, "reason": "essai", "commune": "34172"}),
        Some(&op_a),
    ).await?;
    assert_eq!(status, 404, "EP-E is in 34129, not in the commune named: {answer}");
    let west_only = slice.add_operator("op-west-only", "operator", &["34172"]).await?;
    let (status, answer) = http_post_json_as(
        &a,
        "/api/v1/commands/lighting",
        &json!({"target": {"street": "Rue X"}, "action": {"switch_on": false}, "reason": "essai", "commune": "34129"}),
        Some(&west_only),
    )
    .await?;
    assert_eq!(status, 403, "{answer}");
    // Not a commune at all: said so, even to a supervisor of every commune.
    let (status, answer) = http_post_json_as(
        &a,
        "/api/v1/commands/lighting",
        &json!({"target": {"street": "Rue X"}, "action": {"switch_on": false}, "commune": "34.>"}),
        Some(&supervisor),
    )
    .await?;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.starts_with("commune:")), "{answer}");
    let (status, answer) = http_post_json(
        &a,
        "/api/v1/commands/lighting",
        &json!({"target": {"streetlight_id": "EP-W"}, "action": {"dim_level": 2.0}}),
    )
    .await?;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.starts_with("lighting:")), "{answer}");
    let (status, answer) = http_post_json(
        &a,
        "/api/v1/commands/lighting",
        &json!({"target": {"streetlight_id": "EP-NOPE"}, "action": {"switch_on": true}}),
    )
    .await?;
    assert_eq!(status, 404, "{answer}");
    let (status, _) =
        http_post_json(&a, "/api/v1/commands/valve", &json!({"link_id": "p1", "action": "close"})).await?;
    assert_eq!(status, 503, "no water service configured");
    let (status, _) = http_post_json(&a, "/api/v1/commands/valve", &json!({"link_id": "p1", "action": "shut"})).await?;
    assert_eq!(status, 400);
    let (status, _) =
        http_post_json(&a, "/api/v1/reports/status", &json!({"service_request_id": "1", "status": "fixed"})).await?;
    assert_eq!(status, 503, "no reports service configured");
    let command_id = command["id"].as_str().context("command id")?.to_owned();
    tests::eventually("the command in the audit log", Duration::from_secs(10), || async {
        let logged = items(&a, "/api/v1/audit?action=command").await?;
        let found = logged.iter().any(|e| e["target"] == command_id.as_str() && e["actor"] == "op-a");
        if found { Ok(Some(())) } else { Err(anyhow::anyhow!("the audit log: {logged:?}")) }
    })
    .await?;
    assert!(items(&b, "/api/v1/commands?domain=lighting").await?.iter().any(|c| c["id"] == command_id.as_str()));

    // The gRPC face of replica B: the same queries and the same live stream.
    let b_grpc = replica.wait_for_addr("gRPC listening", 0)?;
    let mut ops = proto::ops::ops_view_client::OpsViewClient::connect(format!("http://{b_grpc}")).await?;
    let answer = ops
        .list_alarms(authed(proto::ops::ListRequest { commune: "34172".into(), ..Default::default() }, &supervisor)?)
        .await?
        .into_inner();
    let over_grpc: Value = serde_json::from_str(&answer.json)?;
    assert_eq!(over_grpc["items"], json!(items(&b, "/api/v1/alarms?commune=34172").await?));
    let answer = ops
        .query_audit(authed(proto::ops::AuditRequest { actor: "op-b".into(), ..Default::default() }, &supervisor)?)
        .await?
        .into_inner();
    let over_grpc: Value = serde_json::from_str(&answer.json)?;
    assert_eq!(over_grpc["items"], json!(by_op_b));
    let status = ops
        .list_alarms(authed(proto::ops::ListRequest { commune: "34.172".into(), ..Default::default() }, &supervisor)?)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = ops.list_alarms(proto::ops::ListRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "no credential, no data");
    let mut stream = ops
        .subscribe(authed(
            proto::ops::SubscribeRequest { communes: vec!["34172".into()], ..Default::default() },
            &supervisor,
        )?)
        .await?
        .into_inner();
    let first: Value = serde_json::from_str(&stream.message().await?.context("a first frame")?.json)?;
    assert_eq!(first["type"], "snapshot");
    // Not empty (an `all` over nothing would pass): the Ouest lamp is there, and only Ouest's.
    let assets = first["assets"].as_array().context("the snapshot's assets")?;
    assert!(!assets.is_empty() && assets.iter().all(|x| x["commune"] == "34172"), "{first}");
    let sentinel = client.report_status(proto::lighting::ReportStatusRequest {
        report: Some(proto::lighting::StatusReport {
            streetlight_id: "EP-W".into(),
            observed_at: Some(SystemTime::now().into()),
            status: proto::lighting::LampStatus::Ok as i32,
            power_state: proto::lighting::PowerState::On as i32,
            illuminance_level: 1.0,
            power_consumption_w: 70.0,
            voltage_v: None,
        }),
    });
    let sentinel = sentinel.await?.into_inner().event_id;
    loop {
        let frame: Value = serde_json::from_str(&stream.message().await?.context("the stream ended")?.json)?;
        if frame["event"]["id"] == sentinel.as_str() {
            break;
        }
    }
    let status = ops
        .subscribe(authed(proto::ops::SubscribeRequest { bbox: vec![1.0, 2.0], ..Default::default() }, &supervisor)?)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // A replica started now, with an empty store, rebuilds the same view from the stream.
    let fresh_store = tempfile::tempdir()?;
    let fresh = Process::start(
        "vigie-gateway",
        &[
            slice.nats.credentials("gateway"),
            vec![
                "--store".into(),
                fresh_store.path().display().to_string(),
                "--http-addr".into(),
                "127.0.0.1:0".into(),
                "--auth-key".into(),
                slice.auth_key().display().to_string(),
            ],
        ]
        .concat(),
    )?;
    let c = fresh.wait_for_addr("HTTP listening", 0)?;
    tests::use_token(&c, &supervisor);
    tests::eventually("the fresh replica's audit log to catch up", Duration::from_secs(15), || async {
        Ok((items(&c, "/api/v1/audit").await? == items(&b, "/api/v1/audit").await?).then_some(()))
    })
    .await?;
    assert_eq!(items(&c, "/api/v1/alarms").await?, items(&b, "/api/v1/alarms").await?);
    assert_eq!(items(&c, "/api/v1/assets").await?, items(&b, "/api/v1/assets").await?);

    // Prometheus metrics: the gateway's on its HTTP address, the lighting service's on its own.
    let (status, text) = tests::http_get(&a, "/metrics").await?;
    assert_eq!(status, 200);
    assert!(tests::metric(&text, "vigie_gateway_events_applied_total").is_some_and(|n| n >= 10.0), "{text}");
    assert!(tests::metric(&text, "vigie_gateway_ws_clients").is_some_and(|n| n >= 0.0), "{text}");
    assert!(tests::metric(&text, "vigie_gateway_consumer_pending").is_some(), "{text}");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text");
    let lighting_metrics = slice.lighting.wait_for_addr("metrics listening", 0)?;
    let (status, text) = tests::http_get(&lighting_metrics, "/metrics").await?;
    assert_eq!(status, 200);
    assert!(tests::metric(&text, "vigie_outbox_published_total").is_some_and(|n| n >= 2.0), "{text}");
    assert_eq!(tests::metric(&text, "vigie_ingest_accepted_total"), Some(4.0), "the lamp faults streamed: {text}");
    assert!(tests::metric(&text, "vigie_outbox_depth").is_some(), "{text}");

    // A restarted replica has the same view and audit log.
    let audit_before = items(&a, "/api/v1/audit").await?;
    slice.gateway.kill()?;
    let from = slice.gateway.restart()?;
    let a = slice.gateway.wait_for_addr("HTTP listening", from)?;
    tests::use_token(&a, &supervisor);
    // What the SIGKILL cut from its store comes back from the stream.
    tests::eventually("the restarted replica's audit log as before", Duration::from_secs(15), || async {
        Ok((items(&a, "/api/v1/audit").await? == audit_before).then_some(()))
    })
    .await?;
    // And its alarms converge with the other replica's (each applies the stream at its pace).
    tests::eventually("the restarted replica's alarms as the other's", Duration::from_secs(15), || async {
        let (on_a, on_b) = (items(&a, "/api/v1/alarms").await?, items(&b, "/api/v1/alarms").await?);
        if on_a == on_b { Ok(Some(())) } else { Err(anyhow::anyhow!("A {on_a:?}\nB {on_b:?}")) }
    })
    .await?;
    Ok(())
}
