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
use tests::{
    LiveClient, Slice, TEST_PASSWORD, free_port, http_get_as, http_get_json_as, http_post_json_as, test_territory,
};

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

/// A DELETE with a token: the status.
fn http_delete_as(host_port: &str, path: &str, token: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(host_port)?;
    write!(
        stream,
        "DELETE {path} HTTP/1.1\r\nHost: {host_port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("status")?;
    Ok((status, response))
}

fn authed<T>(message: T, token: &str) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

#[tokio::test]
async fn one_communes_data_never_reaches_another_communes_operator() -> Result<()> {
    let grpc_port = free_port()?;
    let grpc_addr = format!("127.0.0.1:{grpc_port}");
    let slice = Slice::start_full(test_territory()?, &[], &["--grpc-addr", &grpc_addr]).await?;
    let gateway = slice.gateway_addr.clone();
    let ouest = slice.add_operator("op-ouest", "operator", &["34172"])?;
    let est = slice.add_operator("op-est", "operator", &["34129"])?;
    let viewer = slice.add_operator("lecteur-est", "viewer", &["34129"])?;

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
    )?;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = http_post_json_as(
        &gateway,
        "/api/v1/logbook",
        &json!({"commune": "34172", "text": "note CANARYW7"}),
        Some(&ouest),
    )?;
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
        let (status, body) = http_get_as(&gateway, path, Some(&est))?;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains(CANARY) && !body.contains("34172"), "{path} shows 34172 to 34129's operator: {body}");
    }
    let answer = ops.query_audit(authed(proto::ops::AuditRequest::default(), &est)?).await?.into_inner();
    assert!(!answer.json.contains(CANARY), "gRPC audit: {}", answer.json);
    let answer = ops.list_assets(authed(proto::ops::ListRequest::default(), &est)?).await?.into_inner();
    assert!(!answer.json.contains(CANARY) && answer.json.contains("EP-EST"), "gRPC assets: {}", answer.json);
    // Asking for 34172 outright is refused, on every path.
    let (status, _) = http_get_as(&gateway, "/api/v1/alarms?commune=34172", Some(&est))?;
    assert_eq!(status, 403);
    let (status, _) = http_get_as(&gateway, "/api/v1/audit?commune=34172", Some(&est))?;
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
    let (_, body) = http_get_as(&gateway, "/api/v1/alarms", Some(&tests::login_token(&gateway, tests::SUPERVISOR)?))?;
    assert!(body.contains(CANARY));

    // Acting outside the commune: refused.
    let key = format!("lighting/lamp_failure/{CANARY}");
    let (status, _) = http_post_json_as(
        &gateway,
        "/api/v1/alarms/actions",
        &json!({"alarm_key": key, "action": "acknowledge"}),
        Some(&est),
    )?;
    assert_eq!(status, 404, "another commune's alarm is not there for this operator");
    let (status, _) =
        http_post_json_as(&gateway, "/api/v1/logbook", &json!({"commune": "34172", "text": "x"}), Some(&est))?;
    assert_eq!(status, 403);
    let (status, answer) = http_post_json_as(
        &gateway,
        "/api/v1/commands/lighting",
        &json!({"target": {"commune": "34172"}, "action": {"switch_on": false}}),
        Some(&est),
    )?;
    assert_eq!(status, 403, "{answer}");
    // The viewer reads, never acts; the administrator administers, never reads operations.
    let (status, _) = http_post_json_as(
        &gateway,
        "/api/v1/alarms/actions",
        &json!({"alarm_key": "lighting/lamp_failure/EP-EST", "action": "acknowledge"}),
        Some(&viewer),
    )?;
    assert_eq!(status, 403);
    let (status, _) = http_get_as(&gateway, "/api/v1/alarms", Some(&viewer))?;
    assert_eq!(status, 200);
    let admin = tests::login_token(&gateway, tests::ADMIN)?;
    let (status, _) = http_get_as(&gateway, "/api/v1/alarms", Some(&admin))?;
    assert_eq!(status, 403);
    let (status, _) = http_get_as(&gateway, "/api/v1/admin/operators", Some(&est))?;
    assert_eq!(status, 403);
    let (status, operators) = http_get_json_as(&gateway, "/api/v1/admin/operators", Some(&admin))?;
    assert_eq!(status, 200);
    assert!(!operators.to_string().contains("argon2"), "no password hash leaves the gateway");

    // An integrating system of commune 34129: its credential reads 34129 over gRPC, nothing
    // else, and it cannot log in nor act as an operator.
    let (status, issued) = http_post_json_as(
        &gateway,
        "/api/v1/admin/integrators",
        &json!({"login": "sig-est", "communes": ["34129"], "domains": ["lighting"]}),
        Some(&admin),
    )?;
    assert_eq!(status, 201, "{issued}");
    let credential = issued["token"].as_str().context("token")?.to_owned();
    let answer = ops.list_alarms(authed(proto::ops::ListRequest::default(), &credential)?).await?.into_inner();
    assert!(answer.json.contains("EP-EST") && !answer.json.contains(CANARY), "{}", answer.json);
    let (status, _) = http_post_json_as(
        &gateway,
        "/api/v1/alarms/actions",
        &json!({"alarm_key": "lighting/lamp_failure/EP-EST", "action": "acknowledge"}),
        Some(&credential),
    )?;
    assert_eq!(status, 403, "an integrator does not act as an operator");
    // Removing it revokes the credential at once.
    let (status, _) = http_delete_as(&gateway, "/api/v1/admin/operators/sig-est", &admin)?;
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
        let (status, _) = http_get_as(&gateway, "/api/v1/alarms", token)?;
        assert_eq!(status, 401, "{token:?}");
        assert!(LiveClient::connect_as(&ws, token, None).await.is_err(), "{token:?}");
    }
    // A wrong password: 401, and five of them lock the login for a while.
    for _ in 0..5 {
        let (status, _) = http_post_json_as(
            &gateway,
            "/api/v1/auth/login",
            &json!({"login": tests::SUPERVISOR, "password": "wrong"}),
            None,
        )?;
        assert_eq!(status, 401);
    }
    let (status, _) = http_post_json_as(
        &gateway,
        "/api/v1/auth/login",
        &json!({"login": tests::SUPERVISOR, "password": TEST_PASSWORD}),
        None,
    )?;
    assert_eq!(status, 429, "locked after five failures");

    // Origins: the gateway's own, or none (not a browser); never another site.
    let token = slice.add_operator("op", "operator", &[])?;
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
    let (_, session) = http_post_json_as(&gateway, "/api/v1/auth/login", &body, None)?;
    let access = session["access_token"].as_str().context("access")?.to_owned();
    let refresh = session["refresh_token"].as_str().context("refresh")?.to_owned();
    let mut socket = LiveClient::connect_as(&ws, Some(&access), None).await?;
    assert_eq!(socket.next().await?["type"], "snapshot");
    // Refreshing rotates the refresh token; the old one, used again, closes the session.
    let (status, renewed) =
        http_post_json_as(&gateway, "/api/v1/auth/refresh", &json!({"refresh_token": refresh}), None)?;
    assert_eq!(status, 200, "{renewed}");
    let renewed_access = renewed["access_token"].as_str().context("access")?.to_owned();
    assert_eq!(http_get_as(&gateway, "/api/v1/alarms", Some(&renewed_access))?.0, 200);
    let (status, _) = http_post_json_as(&gateway, "/api/v1/auth/refresh", &json!({"refresh_token": refresh}), None)?;
    assert_eq!(status, 401, "a refresh token is good once");
    assert_eq!(socket.close_code().await?, 4003, "the replayed refresh closed the session");
    assert_eq!(http_get_as(&gateway, "/api/v1/alarms", Some(&renewed_access))?.0, 401);
    let (_, session) = http_post_json_as(&gateway, "/api/v1/auth/login", &body, None)?;
    let access = session["access_token"].as_str().context("access")?.to_owned();
    let mut socket = LiveClient::connect_as(&ws, Some(&access), None).await?;
    assert_eq!(socket.next().await?["type"], "snapshot");
    let (status, _) = http_post_json_as(&gateway, "/api/v1/auth/logout", &json!({}), Some(&access))?;
    assert_eq!(status, 204);
    assert_eq!(socket.close_code().await?, 4003);
    assert_eq!(http_get_as(&gateway, "/api/v1/alarms", Some(&access))?.0, 401);

    // An access token expires (here after 10 s): its socket is closed with 4001, and the API
    // refuses it; a refresh gives a new one.
    let (_, session) = http_post_json_as(&gateway, "/api/v1/auth/login", &body, None)?;
    let access = session["access_token"].as_str().context("access")?.to_owned();
    let refresh = session["refresh_token"].as_str().context("refresh")?.to_owned();
    let mut socket = LiveClient::connect_as(&ws, Some(&access), None).await?;
    assert_eq!(socket.next().await?["type"], "snapshot");
    assert_eq!(socket.close_code().await?, 4001);
    let (status, error) = http_get_json_as(&gateway, "/api/v1/alarms", Some(&access))?;
    assert_eq!(status, 401);
    assert_eq!(error["error"]["message"], "the token has expired");
    let (status, renewed) =
        http_post_json_as(&gateway, "/api/v1/auth/refresh", &json!({"refresh_token": refresh}), None)?;
    assert_eq!(status, 200, "{renewed}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

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
    publish(lighting.clone(), "lighting.34172.streetlight_status").await.context("its own domain")?;
    for subject in ["transport.34172.vehicle_moved", "water.34129.reading", "ops.34172.alarm_action"] {
        assert!(publish(lighting.clone(), subject).await.is_err(), "lighting published on {subject}");
    }
    let gateway = jetstream::new(nats.client_as("gateway").await?);
    publish(gateway.clone(), "ops.34172.alarm_action").await.context("the gateway's operators' events")?;
    assert!(
        publish(gateway, "lighting.34172.streetlight_status").await.is_err(),
        "the gateway published a field event"
    );
    // Nothing refused reached the stream.
    assert_eq!(events.info().await?.state.messages, 2);
    // A wrong password does not connect.
    let wrong =
        async_nats::ConnectOptions::with_user_and_password("lighting".into(), "guess".into()).connect(nats.url()).await;
    assert!(wrong.is_err(), "connected with a wrong password");
    Ok(())
}
