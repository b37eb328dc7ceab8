//! Communes as tenants. A canary: unique data of commune 34172 (a lamp, its alarm, a command, a
//! log book entry) never reaches the operator of commune 34129, over any path: the WebSocket
//! snapshot and deltas, REST lists, the audit log, the gRPC stream and queries; and that operator
//! cannot act outside their commune. Then what an access system must get right: no token, a bad
//! or expired one, a closed session (its sockets closed), a reused refresh token, an Origin not
//! allowed, a client flooding the socket, roles (a viewer does not act, an administrator does
//! not read operations).

use anyhow::{Context, Result};
use proto::lighting::{
    LampStatus, PowerState, RegisterStreetlightsRequest, ReportStatusRequest, StatusReport, Streetlight,
};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};
use tests::{LiveClient, Slice, TEST_PASSWORD, http_get_as, http_get_json_as, http_post_json_as, test_territory};

const CANARY: &str = "CANARYW7";

fn failing(id: &str) -> ReportStatusRequest {
    ReportStatusRequest {
        report: Some(StatusReport {
            streetlight_id: id.into(),
            observed_at: Some(SystemTime::now().into()),
            status: LampStatus::DefectiveLamp as i32,
            power_state: PowerState::On as i32,
            ..Default::default()
        }),
    }
}

fn authed<T>(message: T, token: &str) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

#[tokio::test]
async fn one_communes_data_never_reaches_another_communes_operator() -> Result<()> {
    let slice = Slice::start_full(test_territory()?, &[], &["--grpc-addr", "127.0.0.1:0"]).await?;
    let grpc_addr = slice.gateway.wait_for_addr("gRPC listening", 0)?;
    let gateway = slice.gateway_addr.clone();
    let ouest = slice.add_operator("op-ouest", "operator", &["34172"]).await?;
    let est = slice.add_operator("op-est", "operator", &["34129"]).await?;
    let viewer = slice.add_operator("lecteur-est", "viewer", &["34129"]).await?;

    // Operator Est listens before anything happens: WebSocket and gRPC stream.
    let mut est_ws = LiveClient::connect_as(&format!("ws://{gateway}/ws?coalesce=false"), Some(&est), None).await?;
    let mut ops = proto::ops::ops_view_client::OpsViewClient::connect(format!("http://{grpc_addr}")).await?;
    let mut est_stream = ops
        .subscribe(authed(proto::ops::SubscribeRequest { every_update: true, ..Default::default() }, &est)?)
        .await?
        .into_inner();

    // The canary in 34172: a lamp, its failure (an alarm), a command, a log book entry.
    let mut lighting = slice.lighting_client().await?;
    let lamps = vec![
        Streetlight { id: CANARY.into(), lat: 43.6, lon: 3.85, ..Default::default() },
        Streetlight { id: "EP-EST".into(), lat: 43.6, lon: 3.95, ..Default::default() },
    ];
    lighting.register_streetlights(RegisterStreetlightsRequest { streetlights: lamps }).await?;
    lighting.report_status(failing(CANARY)).await?;
    let (status, answer) = http_post_json_as(
        &gateway,
        "/api/v1/commands/lighting",
        &json!({"target": {"streetlight_id": CANARY}, "action": {"dim_level": 0.4}, "reason": "CANARYW7"}),
        Some(&ouest),
    )
    .await?;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = http_post_json_as(
        &gateway,
        "/api/v1/logbook",
        &json!({"commune": "34172", "text": "note CANARYW7"}),
        Some(&ouest),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    // Then a sentinel in 34129: once Est has it, Est has had everything before it.
    lighting.report_status(failing("EP-EST")).await?;
    let sentinel = |f: &Value| f["alarm"]["asset_id"] == "EP-EST";

    let frames = est_ws.until(sentinel).await?;
    for f in &frames {
        assert!(!f.to_string().contains(CANARY), "WebSocket frame of 34172 to 34129's operator: {f}");
    }
    loop {
        let frame: Value = serde_json::from_str(&est_stream.message().await?.context("the gRPC stream ended")?.json)?;
        assert!(!frame.to_string().contains(CANARY), "gRPC frame of 34172 to 34129's operator: {frame}");
        if sentinel(&frame) {
            break;
        }
    }
    // A new session's snapshot, the REST lists, the audit log: nothing of 34172.
    let mut late = LiveClient::connect_as(&format!("ws://{gateway}/ws"), Some(&est), None).await?;
    let snapshot = late.next().await?;
    assert_eq!(snapshot["type"], "snapshot");
    assert!(!snapshot.to_string().contains(CANARY), "snapshot: {snapshot}");
    assert!(snapshot.to_string().contains("EP-EST"));
    for path in
        ["/api/v1/assets", "/api/v1/alarms", "/api/v1/kpis", "/api/v1/commands", "/api/v1/audit", "/api/v1/territory"]
    {
        let (status, body) = http_get_as(&gateway, path, Some(&est)).await?;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains(CANARY) && !body.contains("34172"), "{path} shows 34172 to 34129's operator: {body}");
    }
    let answer = ops.query_audit(authed(proto::ops::AuditRequest::default(), &est)?).await?.into_inner();
    assert!(!answer.json.contains(CANARY), "gRPC audit: {}", answer.json);
    let answer = ops.list_assets(authed(proto::ops::ListRequest::default(), &est)?).await?.into_inner();
    assert!(!answer.json.contains(CANARY) && answer.json.contains("EP-EST"), "gRPC assets: {}", answer.json);
    // Asking for 34172 outright is refused, on every path.
    let (status, _) = http_get_as(&gateway, "/api/v1/alarms?commune=34172", Some(&est)).await?;
    assert_eq!(status, 403);
    let (status, _) = http_get_as(&gateway, "/api/v1/audit?commune=34172", Some(&est)).await?;
    assert_eq!(status, 403);
    let refused = ops
        .list_alarms(authed(proto::ops::ListRequest { commune: "34172".into(), ..Default::default() }, &est)?)
        .await
        .expect_err("another commune");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(LiveClient::connect_as(&format!("ws://{gateway}/ws?communes=34172"), Some(&est), None).await.is_err());
    late.send_text(r#"{"v":1,"type":"subscribe","filter":{"communes":["34172"]}}"#).await?;
    let error = late.until(|f| f["type"] == "error").await?;
    assert_eq!(error.last().map(|f| f["code"].clone()), Some(json!("bad_filter")));
    // The supervisor sees the canary (it is there, and the filter is what hides it).
    let supervisor = tests::login_token(&gateway, tests::SUPERVISOR).await?;
    let (_, body) = http_get_as(&gateway, "/api/v1/alarms", Some(&supervisor)).await?;
    assert!(body.contains(CANARY));

    // Acting outside the commune: refused.
    let key = format!("lighting/lamp_failure/{CANARY}");
    let (status, _) = http_post_json_as(
        &gateway,
        "/api/v1/alarms/actions",
        &json!({"alarm_key": key, "action": "acknowledge"}),
        Some(&est),
    )
    .await?;
    assert_eq!(status, 404, "another commune's alarm is not there for this operator");
    let (status, _) =
        http_post_json_as(&gateway, "/api/v1/logbook", &json!({"commune": "34172", "text": "x"}), Some(&est)).await?;
    assert_eq!(status, 403);
    let (status, answer) = http_post_json_as(
        &gateway,
        "/api/v1/commands/lighting",
        &json!({"target": {"commune": "34172"}, "action": {"switch_on": false}}),
        Some(&est),
    )
    .await?;
    assert_eq!(status, 403, "{answer}");
    // The viewer reads, never acts; the administrator administers, never reads operations.
    let (status, _) = http_post_json_as(
        &gateway,
        "/api/v1/alarms/actions",
        &json!({"alarm_key": "lighting/lamp_failure/EP-EST", "action": "acknowledge"}),
        Some(&viewer),
    )
    .await?;
    assert_eq!(status, 403);
    let (status, _) = http_get_as(&gateway, "/api/v1/alarms", Some(&viewer)).await?;
    assert_eq!(status, 200);
    let admin = tests::login_token(&gateway, tests::ADMIN).await?;
    let (status, _) = http_get_as(&gateway, "/api/v1/alarms", Some(&admin)).await?;
    assert_eq!(status, 403);
    let (status, _) = http_get_as(&gateway, "/api/v1/admin/operators", Some(&est)).await?;
    assert_eq!(status, 403);
    let (status, operators) = http_get_json_as(&gateway, "/api/v1/admin/operators", Some(&admin)).await?;
    assert_eq!(status, 200);
    assert!(!operators.to_string().contains("argon2"), "no password hash leaves the gateway");

    // An integrating system of commune 34129: its credential reads 34129 over gRPC, nothing
    // else, and it cannot log in nor act as an operator.
    let (status, issued) = http_post_json_as(
        &gateway,
        "/api/v1/admin/integrators",
        &json!({"login": "sig-est", "communes": ["34129"], "domains": ["lighting"]}),
        Some(&admin),
    )
    .await?;
    assert_eq!(status, 201, "{issued}");
    let credential = issued["token"].as_str().context("token")?.to_owned();
    let answer = ops.list_alarms(authed(proto::ops::ListRequest::default(), &credential)?).await?.into_inner();
    assert!(answer.json.contains("EP-EST") && !answer.json.contains(CANARY), "{}", answer.json);
    let (status, _) = http_post_json_as(
        &gateway,
        "/api/v1/alarms/actions",
        &json!({"alarm_key": "lighting/lamp_failure/EP-EST", "action": "acknowledge"}),
        Some(&credential),
    )
    .await?;
    assert_eq!(status, 403, "an integrator does not act as an operator");
    // Removing it revokes the credential at once.
    let (status, _) = tests::http_delete_as(&gateway, "/api/v1/admin/operators/sig-est", &admin).await?;
    assert_eq!(status, 204);
    let refused = ops.list_alarms(authed(proto::ops::ListRequest::default(), &credential)?).await.expect_err("revoked");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    Ok(())
}

#[tokio::test]
async fn tokens_expire_sessions_close_and_origins_are_checked() -> Result<()> {
    let slice =
        Slice::start_full(test_territory()?, &[], &["--access-token-ttl", "10s", "--session-ttl", "1h"]).await?;
    let gateway = slice.gateway_addr.clone();
    let ws = format!("ws://{gateway}/ws");

    // No token, a bad one: 401 everywhere.
    for token in [None, Some("not-a-token"), Some("a.b.c")] {
        let (status, _) = http_get_as(&gateway, "/api/v1/alarms", token).await?;
        assert_eq!(status, 401, "{token:?}");
        assert!(LiveClient::connect_as(&ws, token, None).await.is_err(), "{token:?}");
    }
    // A wrong password: 401; after three, this address waits before its next try (429), even
    // with the right password; the login is not locked for its owner elsewhere.
    for _ in 0..3 {
        let (status, _) = http_post_json_as(
            &gateway,
            "/api/v1/auth/login",
            &json!({"login": tests::SUPERVISOR, "password": "wrong"}),
            None,
        )
        .await?;
        assert_eq!(status, 401);
    }
    let (status, _) = http_post_json_as(
        &gateway,
        "/api/v1/auth/login",
        &json!({"login": tests::SUPERVISOR, "password": TEST_PASSWORD}),
        None,
    )
    .await?;
    assert_eq!(status, 429, "slowed down after three failures from here");
    let right = json!({"login": tests::SUPERVISOR, "password": TEST_PASSWORD});
    let (status, answer) = tests::http_post_json_from("127.0.0.2", &gateway, "/api/v1/auth/login", &right).await?;
    assert_eq!(status, 200, "the owner, elsewhere, is not locked out: {answer}");

    // Origins: the gateway's own, or none (not a browser); never another site.
    let token = slice.add_operator("op", "operator", &[]).await?;
    assert!(LiveClient::connect_as(&ws, Some(&token), Some("http://evil.example")).await.is_err());
    let mut same_site = LiveClient::connect_as(&ws, Some(&token), Some(&format!("http://{gateway}"))).await?;
    assert_eq!(same_site.next().await?["type"], "snapshot");

    // A flood of client frames closes that client (1008), not the others.
    let mut flooding = LiveClient::connect_as(&ws, Some(&token), None).await?;
    assert_eq!(flooding.next().await?["type"], "snapshot");
    for _ in 0..40 {
        flooding.send_text(r#"{"v":1,"type":"ping"}"#).await?;
    }
    assert_eq!(flooding.close_code().await?, 1008);

    // Logout closes the session's sockets (4003) and its tokens stop working.
    let body = json!({"login": "op", "password": TEST_PASSWORD});
    let (_, session) = http_post_json_as(&gateway, "/api/v1/auth/login", &body, None).await?;
    let access = session["access_token"].as_str().context("access")?.to_owned();
    let refresh = session["refresh_token"].as_str().context("refresh")?.to_owned();
    let mut socket = LiveClient::connect_as(&ws, Some(&access), None).await?;
    assert_eq!(socket.next().await?["type"], "snapshot");
    // Refreshing rotates the refresh token; the old one, used again, closes the session.
    let (status, renewed) =
        http_post_json_as(&gateway, "/api/v1/auth/refresh", &json!({"refresh_token": refresh}), None).await?;
    assert_eq!(status, 200, "{renewed}");
    let renewed_access = renewed["access_token"].as_str().context("access")?.to_owned();
    assert_eq!(http_get_as(&gateway, "/api/v1/alarms", Some(&renewed_access)).await?.0, 200);
    let (status, _) =
        http_post_json_as(&gateway, "/api/v1/auth/refresh", &json!({"refresh_token": refresh}), None).await?;
    assert_eq!(status, 401, "a refresh token is good once");
    assert_eq!(socket.close_code().await?, 4003, "the replayed refresh closed the session");
    assert_eq!(http_get_as(&gateway, "/api/v1/alarms", Some(&renewed_access)).await?.0, 401);
    let (_, session) = http_post_json_as(&gateway, "/api/v1/auth/login", &body, None).await?;
    let access = session["access_token"].as_str().context("access")?.to_owned();
    let mut socket = LiveClient::connect_as(&ws, Some(&access), None).await?;
    assert_eq!(socket.next().await?["type"], "snapshot");
    let (status, _) = http_post_json_as(&gateway, "/api/v1/auth/logout", &json!({}), Some(&access)).await?;
    assert_eq!(status, 204);
    assert_eq!(socket.close_code().await?, 4003);
    assert_eq!(http_get_as(&gateway, "/api/v1/alarms", Some(&access)).await?.0, 401);

    // An access token expires (here after 10 s): its socket is closed with 4001, and the API
    // refuses it; a refresh gives a new one.
    let (_, session) = http_post_json_as(&gateway, "/api/v1/auth/login", &body, None).await?;
    let access = session["access_token"].as_str().context("access")?.to_owned();
    let refresh = session["refresh_token"].as_str().context("refresh")?.to_owned();
    let mut socket = LiveClient::connect_as(&ws, Some(&access), None).await?;
    assert_eq!(socket.next().await?["type"], "snapshot");
    assert_eq!(socket.close_code().await?, 4001);
    let (status, error) = http_get_json_as(&gateway, "/api/v1/alarms", Some(&access)).await?;
    assert_eq!(status, 401);
    assert_eq!(error["error"]["message"], "the token has expired");
    let (status, renewed) =
        http_post_json_as(&gateway, "/api/v1/auth/refresh", &json!({"refresh_token": refresh}), None).await?;
    assert_eq!(status, 200, "{renewed}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

/// How long a request NATS refuses is waited for: a request the permissions refuse gets no
/// answer at all (the server drops it and tells the client asynchronously), so each refusal costs
/// this wait; an allowed one answers within milliseconds on loopback.
const REFUSED_WITHIN: Duration = Duration::from_secs(2);

/// NATS enforces who publishes what (deploy/nats/authorization.conf, the harness runs with it):
/// a service publishes only its own domain's subjects, only the gateway publishes operators'
/// events, and no service reads another's subjects directly.
#[tokio::test]
async fn nats_refuses_a_publish_outside_a_services_domain() -> Result<()> {
    use async_nats::jetstream;
    let nats = tests::NatsServer::start()?;
    let lighting = jetstream::new(nats.client_as("lighting").await?);
    let stream = jetstream::stream::Config {
        name: proto::subject::EVENTS_STREAM.into(),
        subjects: vec!["lighting.>".into(), "transport.>".into(), "water.>".into(), "reports.>".into(), "ops.>".into()],
        ..Default::default()
    };
    let mut events = lighting.get_or_create_stream(stream).await?;
    let publish = |js: jetstream::Context, subject: &'static str| async move {
        let ack = async { js.publish(subject, "x".into()).await?.await.map_err(anyhow::Error::from) };
        tokio::time::timeout(Duration::from_secs(3), ack).await.map_err(anyhow::Error::from).and_then(|r| r)
    };
    publish(lighting.clone(), "lighting.34172.streetlight_status.EP1").await.context("its own domain")?;
    for subject in ["transport.34172.vehicle_moved.bus-1", "water.34129.reading.s1", "ops.34172.alarm_action.EP1"] {
        assert!(publish(lighting.clone(), subject).await.is_err(), "lighting published on {subject}");
    }
    let gateway = jetstream::new(nats.client_as("gateway").await?);
    publish(gateway.clone(), "ops.34172.alarm_action.EP1").await.context("the gateway's operators' events")?;
    assert!(
        publish(gateway, "lighting.34172.streetlight_status.EP1").await.is_err(),
        "the gateway published a field event"
    );
    // Nothing refused reached the stream.
    assert_eq!(events.info().await?.state.messages, 2);
    // Replies come to each user's own inbox: another process cannot subscribe there (nor to
    // the shared default inbox), so it never reads what the gateway's consumer receives.
    let (violations, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let password = nats.credentials("lighting")[5].clone();
    let spy = async_nats::ConnectOptions::with_user_and_password("lighting".into(), password)
        .event_callback(move |event| {
            let violations = violations.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = violations.send(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await?;
    for subject in ["_INBOX_gateway.>", "_INBOX.>", ">"] {
        let mut spied = spy.subscribe(subject).await?;
        let violation = tokio::time::timeout(Duration::from_secs(3), seen.recv()).await.context("no violation")?;
        assert!(violation.is_some_and(|v| v.contains("Permissions Violation")), "lighting subscribed to {subject}");
        // The gateway's replies meanwhile (a JetStream request) do not reach the spy.
        gateway_info(&nats).await?;
        let got = tokio::time::timeout(Duration::from_millis(500), futures::StreamExt::next(&mut spied)).await;
        assert!(!matches!(got, Ok(Some(_))), "lighting read a reply on {subject}");
    }
    // Only the gateway changes the stream's configuration; reports delete no one's consumer.
    let mut config = events.info().await?.config.clone();
    config.max_messages = 10;
    assert!(lighting.update_stream(config.clone()).await.is_err(), "lighting updated the stream");
    let reports = jetstream::new(nats.client_as("reports").await?);
    let gateways = jetstream::new(nats.client_as("gateway").await?);
    let consumer = gateways
        .get_stream(proto::subject::EVENTS_STREAM)
        .await?
        .create_consumer(jetstream::consumer::pull::Config {
            name: Some("vue".into()),
            inactive_threshold: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    drop(consumer);
    let deleted = tokio::time::timeout(
        REFUSED_WITHIN,
        reports.get_stream(proto::subject::EVENTS_STREAM).await?.delete_consumer("vue"),
    )
    .await;
    assert!(!matches!(deleted, Ok(Ok(_))), "reports deleted the gateway's consumer");
    assert!(
        gateways
            .get_stream(proto::subject::EVENTS_STREAM)
            .await?
            .get_consumer::<jetstream::consumer::pull::Config>("vue")
            .await
            .is_ok()
    );

    // Reports read the lighting alarms and nothing else: a consumer on the operators' events
    // (their comments, the log book) or on another domain is refused, one on the alarms is not.
    let events_for_reports = reports.get_stream(proto::subject::EVENTS_STREAM).await?;
    for filter in ["ops.>", "water.>", ">", "lighting.*.streetlight_status.*", "lighting.*.streetlight_status"] {
        let created = tokio::time::timeout(
            REFUSED_WITHIN,
            events_for_reports.create_consumer(jetstream::consumer::pull::OrderedConfig {
                name: Some("reports-spy".into()),
                filter_subject: filter.into(),
                ..Default::default()
            }),
        )
        .await;
        assert!(!matches!(created, Ok(Ok(_))), "reports created a consumer on {filter}");
        let unnamed = tokio::time::timeout(
            REFUSED_WITHIN,
            events_for_reports.create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: filter.into(),
                ..Default::default()
            }),
        )
        .await;
        assert!(!matches!(unnamed, Ok(Ok(_))), "reports created an unnamed consumer on {filter}");
    }
    for filter in ["lighting.*.alarm_raised.*", "lighting.*.alarm_raised"] {
        events_for_reports
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                name: Some("reports-lighting-alarm_raised-test".into()),
                filter_subject: filter.into(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("reports follow the lighting alarms ({filter})"))?;
    }

    // The access directory (password hashes, sessions) is the gateway's alone: no service may
    // read its bucket, write it or create it.
    let gateway = jetstream::new(nats.client_as("gateway").await?);
    let directory = gateway
        .create_key_value(jetstream::kv::Config {
            bucket: gateway::directory::BUCKET.into(),
            history: 1,
            ..Default::default()
        })
        .await
        .context("the gateway creates its access directory")?;
    directory.put("operator.61", "{}".into()).await.context("the gateway writes it")?;
    for user in ["lighting", "transport", "water", "reports"] {
        let js = jetstream::new(nats.client_as(user).await?);
        let attempt = tokio::time::timeout(REFUSED_WITHIN, async {
            let bucket = js.get_key_value(gateway::directory::BUCKET).await?;
            let read = bucket.get("operator.61").await?;
            Ok::<_, anyhow::Error>(read)
        })
        .await;
        assert!(!matches!(attempt, Ok(Ok(_))), "{user} read the access directory: {attempt:?}");
        let write = tokio::time::timeout(REFUSED_WITHIN, async {
            js.publish(format!("$KV.{}.operator.62", gateway::directory::BUCKET), "{}".into()).await?.await?;
            Ok::<_, anyhow::Error>(())
        })
        .await;
        assert!(!matches!(write, Ok(Ok(()))), "{user} wrote the access directory");
    }
    assert_eq!(directory.get("operator.62").await?, None, "nothing refused reached the bucket");

    // The view's checkpoints hold every commune's data: the gateway's alone.
    let checkpoints = gateway
        .create_object_store(jetstream::object_store::Config {
            bucket: gateway::checkpoint::BUCKET.into(),
            ..Default::default()
        })
        .await
        .context("the gateway creates its checkpoints' bucket")?;
    checkpoints.put("view", &mut &b"{}"[..]).await.context("the gateway writes a checkpoint")?;
    for user in ["lighting", "transport", "water", "reports"] {
        let js = jetstream::new(nats.client_as(user).await?);
        let attempt = tokio::time::timeout(REFUSED_WITHIN, async {
            let bucket = js.get_object_store(gateway::checkpoint::BUCKET).await?;
            let mut object = bucket.get("view").await?;
            let mut bytes = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes).await?;
            Ok::<_, anyhow::Error>(bytes)
        })
        .await;
        assert!(!matches!(attempt, Ok(Ok(_))), "{user} read the view's checkpoint: {attempt:?}");
    }

    // A service's state (what its standby follows) and its lease are its own: another service
    // can neither write the one nor take the other.
    let water = jetstream::new(nats.client_as("water").await?);
    runtime::replica::ensure_state_bucket(&water, &proto::subject::Unit::whole(proto::v1::Domain::Water), 1)
        .await
        .context("water's state bucket")?;
    let leases = runtime::lease::bucket(&water, Duration::from_secs(10), 1).await.context("the leases bucket")?;
    leases.create("water", "water's".into()).await.context("water takes its lease")?;
    for subject in ["$KV.VIGIE_STATE_WATER.sensors.k00", "$KV.VIGIE_LEASES.water"] {
        let write = tokio::time::timeout(REFUSED_WITHIN, async {
            lighting.publish(subject, "lighting's".into()).await?.await?;
            Ok::<_, anyhow::Error>(())
        })
        .await;
        assert!(!matches!(write, Ok(Ok(()))), "lighting wrote {subject}");
    }
    assert_eq!(leases.get("water").await?.as_deref(), Some(&b"water's"[..]), "the lease stayed water's");

    // A wrong password does not connect.
    let wrong =
        async_nats::ConnectOptions::with_user_and_password("lighting".into(), "guess".into()).connect(nats.url()).await;
    assert!(wrong.is_err(), "connected with a wrong password");
    Ok(())
}

/// A credential's token, as gRPC metadata on a channel to `addr`.
async fn as_credential(addr: &str, token: &str) -> Result<tests::AuthChannel> {
    tests::channel_with_token(addr, Some(token)).await
}

#[tokio::test]
async fn an_integrators_credential_writes_only_its_communes_and_domains() -> Result<()> {
    use proto::lighting::lighting_service_client::LightingServiceClient;
    use proto::lighting::{SendCommandRequest, TelemetryMessage, telemetry_message::Message as Telemetry};
    use proto::reports::CreateRequestRequest;
    use proto::reports::reports_service_client::ReportsServiceClient;
    use tonic::Code;

    let slice = Slice::start_full(test_territory()?, &[], &[]).await?;
    let reports = slice.start_reports(&[]).await?;
    let gateway = slice.gateway_addr.clone();
    let lamps = vec![
        Streetlight { id: "EP-OUEST".into(), lat: 43.6, lon: 3.85, ..Default::default() },
        Streetlight { id: "EP-EST".into(), lat: 43.6, lon: 3.95, ..Default::default() },
    ];
    slice.lighting_client().await?.register_streetlights(RegisterStreetlightsRequest { streetlights: lamps }).await?;

    // The lighting contractor of commune 34129, and the citizen app of the same commune.
    let admin = tests::login_token(&gateway, tests::ADMIN).await?;
    let issue = async |login: &str, domains: &[&str]| -> Result<String> {
        let body = json!({"login": login, "communes": ["34129"], "domains": domains});
        let (status, issued) = http_post_json_as(&gateway, "/api/v1/admin/integrators", &body, Some(&admin)).await?;
        assert_eq!(status, 201, "{issued}");
        Ok(issued["token"].as_str().context("token")?.to_owned())
    };
    let contractor = issue("eclairage-est", &["lighting"]).await?;
    let app = issue("appli-est", &["reports"]).await?;
    let mut lighting = LightingServiceClient::new(as_credential(&slice.lighting_addr, &contractor).await?);

    // Its commune's lamp: accepted. The other commune's: refused, and nothing recorded.
    lighting.report_status(failing("EP-EST")).await?;
    // Another commune's lamp is, to this credential, not there: the answer an unknown id gets.
    let refused = lighting.report_status(failing("EP-OUEST")).await.expect_err("another commune's lamp");
    let unknown = lighting.report_status(failing("EP-NOPE")).await.expect_err("an unknown lamp");
    assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    assert_eq!(
        (refused.code(), refused.message()),
        (unknown.code(), unknown.message().replace("EP-NOPE", "EP-OUEST").as_str())
    );
    assert!(!refused.message().contains("34172"), "{}", refused.message());
    // In a stream, record by record: the other commune's report is refused, the stream goes on.
    let messages = ["EP-EST", "EP-OUEST", "EP-EST"]
        .map(|id| TelemetryMessage { message: Some(Telemetry::Status(failing(id).report.unwrap_or_default())) });
    let summary = lighting.stream_telemetry(futures::stream::iter(messages)).await?.into_inner();
    assert_eq!((summary.accepted, summary.refused), (2, 1), "{summary:?}");
    // What covers every commune, or acts as an operator: refused.
    let lamp = Streetlight { id: "EP-NEW".into(), lat: 43.6, lon: 3.95, ..Default::default() };
    let refused = lighting
        .register_streetlights(RegisterStreetlightsRequest { streetlights: vec![lamp] })
        .await
        .expect_err("registration covers every commune");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = lighting.send_command(SendCommandRequest::default()).await.expect_err("an operator's act");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("gateway"), "{}", refused.message());
    // Another domain: refused.
    let mut wrong_domain = ReportsServiceClient::new(as_credential(&reports.grpc_addr, &contractor).await?);
    let refused = wrong_domain.create_request(CreateRequestRequest::default()).await.expect_err("not its domain");
    assert_eq!(refused.code(), Code::PermissionDenied);
    // An operator's token is for the gateway, not the services.
    let operator = slice.add_operator("op-est", "operator", &["34129"]).await?;
    let mut with_operator = LightingServiceClient::new(as_credential(&slice.lighting_addr, &operator).await?);
    let refused = with_operator.report_status(failing("EP-EST")).await.expect_err("operator token");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // The commune's citizen app creates reports in its commune only, and reads only those.
    let mut citizen_app = ReportsServiceClient::new(as_credential(&reports.grpc_addr, &app).await?);
    let pothole = |lon: f64| CreateRequestRequest {
        service_code: "voirie-nid-de-poule".into(),
        lat: Some(43.6),
        lon: Some(lon),
        ..Default::default()
    };
    let created = citizen_app.create_request(pothole(3.95)).await?.into_inner().request.context("request")?;
    assert_eq!(created.commune, "34129");
    let refused = citizen_app.create_request(pothole(3.85)).await.expect_err("another commune");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let mut everything = reports.reports_client().await?;
    let other = everything.create_request(pothole(3.85)).await?.into_inner().request.context("request")?;
    let get = |id: &str| proto::reports::GetRequestRequest { service_request_id: id.to_owned() };
    citizen_app.get_request(get(&created.service_request_id)).await?;
    let hidden = citizen_app.get_request(get(&other.service_request_id)).await.expect_err("another commune's");
    assert_eq!(hidden.code(), Code::NotFound);

    // Removing the contractor revokes its credential at the service too, within moments (the
    // gateway announces it on NATS).
    let (status, _) = tests::http_delete_as(&gateway, "/api/v1/admin/operators/eclairage-est", &admin).await?;
    assert_eq!(status, 204);
    tests::eventually("the revoked credential refused", Duration::from_secs(10), || async {
        match lighting.clone().report_status(failing("EP-EST")).await {
            Err(status) if status.code() == Code::Unauthenticated => {
                assert!(status.message().contains("revoked"), "{}", status.message());
                Ok(Some(()))
            }
            outcome => Err(anyhow::anyhow!("still accepted after revocation: {outcome:?}")),
        }
    })
    .await?;
    // The app's credential still works: revocation is per credential.
    citizen_app.get_request(get(&created.service_request_id)).await?;
    Ok(())
}

/// A CA, and a certificate it signs for `names` (PEM: certificate, key).
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new() -> Result<TestCa> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate()?;
        Ok(TestCa { cert: params.self_signed(&key)?, key })
    }

    fn issue(&self, names: &[&str]) -> Result<(String, String)> {
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        Ok((params.signed_by(&key, &self.cert, &self.key)?.pem(), key.serialize_pem()))
    }
}

#[tokio::test]
async fn grpc_speaks_tls_and_requires_client_certificates_when_asked() -> Result<()> {
    use proto::reports::ListServicesRequest;
    use proto::reports::reports_service_client::ReportsServiceClient;
    use runtime::config::GrpcClientTls;

    let dir = tempfile::tempdir()?;
    let write = |name: &str, text: &str| -> Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let ca = TestCa::new()?;
    let (server_cert, server_key) = ca.issue(&["127.0.0.1", "localhost"])?;
    let (client_cert, client_key) = ca.issue(&["citizen-app"])?;
    let rogue = TestCa::new()?;
    let (rogue_cert, rogue_key) = rogue.issue(&["citizen-app"])?;
    let ca_pem = write("ca.pem", &ca.cert.pem())?;
    let (server_cert, server_key) = (write("server.pem", &server_cert)?, write("server.key", &server_key)?);
    let tls_flags = ["--grpc-tls-cert", &server_cert, "--grpc-tls-key", &server_key, "--grpc-tls-client-ca", &ca_pem]
        .map(String::from);

    let slice = Slice::start_full(test_territory()?, &[], &[]).await?;
    let reports = slice.start_reports(&tls_flags.each_ref().map(String::as_str)).await?;
    let url = format!("https://{}", reports.grpc_addr);
    let call = |tls: GrpcClientTls| {
        let (url, token) = (url.clone(), slice.integrator_token.clone());
        async move {
            let channel = tls.endpoint(&url)?.connect().await?;
            let token = runtime::grpc_auth::BearerToken::fixed(Some(token));
            let mut client = ReportsServiceClient::new(runtime::grpc_auth::with_token(channel, token));
            anyhow::Ok(client.list_services(ListServicesRequest::default()).await?.into_inner())
        }
    };
    let client = |cert: Option<(&str, &str)>| -> Result<GrpcClientTls> {
        Ok(GrpcClientTls {
            grpc_ca: Some(ca_pem.clone().into()),
            client_cert: cert.map(|(c, _)| write("client.pem", c)).transpose()?.map(Into::into),
            client_key: cert.map(|(_, k)| write("client.key", k)).transpose()?.map(Into::into),
        })
    };

    // A client with a certificate of the CA: served.
    let services = call(client(Some((&client_cert, &client_key)))?).await?;
    assert!(!services.services.is_empty());
    // Without a client certificate, or with one of another CA: refused at the handshake.
    assert!(call(client(None)?).await.is_err(), "no client certificate");
    assert!(call(client(Some((&rogue_cert, &rogue_key)))?).await.is_err(), "another CA's certificate");
    // In clear text: nothing.
    let plain = tests::channel_with_token(&reports.grpc_addr, Some(&slice.integrator_token)).await;
    if let Ok(channel) = plain {
        assert!(ReportsServiceClient::new(channel).list_services(ListServicesRequest::default()).await.is_err());
    }
    // Not trusting the service's CA: refused by the client.
    let distrustful = GrpcClientTls {
        grpc_ca: Some(write("rogue-ca.pem", &rogue.cert.pem())?.into()),
        ..client(Some((&client_cert, &client_key)))?
    };
    assert!(call(distrustful).await.is_err(), "the service's certificate is not of the trusted CA");
    Ok(())
}

/// A JetStream request by the gateway (its reply comes to the gateway's inbox).
async fn gateway_info(nats: &tests::NatsServer) -> Result<()> {
    let gateway = async_nats::jetstream::new(nats.client_as("gateway").await?);
    gateway.get_stream(proto::subject::EVENTS_STREAM).await?;
    Ok(())
}
