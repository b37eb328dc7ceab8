//! Two gateway replicas on one stream agree (issue 22): operators, sessions and credentials live
//! in the shared access directory (a JetStream key-value bucket), so an operator created at one
//! logs in at the other at once, a logout at one closes the session's sockets at the other, a
//! refresh token is good once across both; the live view's sequences are the stream's, so a
//! console that loses its replica resumes at the other with exactly what it missed; and alarm
//! actions taken at both at once converge.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tests::{LiveClient, Slice, TEST_PASSWORD, http_get_as, http_post_json_as, metric};

/// Logs in with the harness's password; returns (access token, refresh token).
async fn session(gateway: &str, login: &str) -> Result<(String, String)> {
    let body = json!({"login": login, "password": TEST_PASSWORD});
    let (status, answer) = http_post_json_as(gateway, "/api/v1/auth/login", &body, None).await?;
    anyhow::ensure!(status == 200, "login {login} at {gateway}: {status} {answer}");
    let token = |name: &str| answer[name].as_str().map(str::to_owned).context("token");
    Ok((token("access_token")?, token("refresh_token")?))
}

async fn refresh(gateway: &str, refresh_token: &str) -> Result<(u16, Value)> {
    http_post_json_as(gateway, "/api/v1/auth/refresh", &json!({"refresh_token": refresh_token}), None).await
}

/// Opens a socket at `b` with `access`, logs the session out at `a`, and waits (at most
/// `within`) for `b` to close the socket as revoked; returns how long that took.
async fn logout_closes_socket(a: &str, b: &str, access: &str, within: Duration) -> Result<Duration> {
    let mut at_b = LiveClient::connect_as(&format!("ws://{b}/ws"), Some(access), None).await?;
    assert_eq!(at_b.next().await?["type"], "snapshot");
    let logged_out = Instant::now();
    let (status, _) = http_post_json_as(a, "/api/v1/auth/logout", &json!({}), Some(access)).await?;
    assert_eq!(status, 204);
    let code = tokio::time::timeout(within, at_b.close_code()).await??;
    assert_eq!(code, proto::live::close_code::REVOKED);
    Ok(logged_out.elapsed())
}

/// A lamp failure as its controller reports it, now.
fn lamp_failure(lamp: &str) -> proto::lighting::TelemetryMessage {
    proto::lighting::TelemetryMessage {
        message: Some(proto::lighting::telemetry_message::Message::Fault(proto::lighting::FaultReport {
            streetlight_id: lamp.into(),
            observed_at: Some(std::time::SystemTime::now().into()),
            fault: proto::lighting::TalqFault::LampFailure as i32,
            active: true,
        })),
    }
}

/// Every delta of a live socket until `done`: (event id, seq) in the order received.
async fn deltas_until(
    live: &mut LiveClient,
    mut done: impl FnMut(&[(String, u64)]) -> bool,
) -> Result<Vec<(String, u64)>> {
    let mut seen = Vec::new();
    live.until(|f| {
        if f["type"] == "delta" {
            let id = f["event"]["id"].as_str().unwrap_or_default().to_owned();
            seen.push((id, f["seq"].as_u64().unwrap_or_default()));
        }
        done(&seen)
    })
    .await?;
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateway_replicas_share_the_access_directory_and_the_stream() -> Result<()> {
    let mut slice = Slice::start().await?;
    let mut lighting = slice.lighting_client().await?;
    lighting
        .register_streetlights(proto::lighting::RegisterStreetlightsRequest {
            streetlights: vec![
                proto::lighting::Streetlight { id: "EP-W".into(), lat: 43.6, lon: 3.85, ..Default::default() },
                proto::lighting::Streetlight { id: "EP-E".into(), lat: 43.6, lon: 3.95, ..Default::default() },
            ],
        })
        .await?;
    // Replica B's store gets an operator from the command line while B is stopped (as
    // deploy/run.sh adds its first operators): B's start carries it to the directory.
    let b_store = tempfile::tempdir()?;
    tests::add_operator(b_store.path(), slice.territory.path(), "veilleur", "viewer", &["34172"])?;
    let (mut b_process, b) = slice.start_gateway_replica(b_store.path(), &[])?;
    let a = slice.gateway_addr.clone();
    tests::use_token(&b, &tests::login_token(&b, tests::SUPERVISOR).await?);
    session(&a, "veilleur").await.context("the command line's operator, added at B's store, logs in at A")?;

    // An operator created at A logs in at B at once (no wait).
    let admin = tests::login_token(&a, tests::ADMIN).await?;
    let body = json!({"login": "op-nord", "password": TEST_PASSWORD, "role": "operator", "communes": ["34172"]});
    let (status, answer) = http_post_json_as(&a, "/api/v1/admin/operators", &body, Some(&admin)).await?;
    assert_eq!(status, 201, "{answer}");
    let (access_b, _) = session(&b, "op-nord").await.context("an operator created at A logs in at B at once")?;
    // A login cannot be created twice, even at two replicas.
    let (status, answer) = http_post_json_as(&b, "/api/v1/admin/operators", &body, Some(&admin)).await?;
    assert_eq!(status, 409, "{answer}");

    // A logout at A closes the same session's sockets at B within 2 s, and B refuses its token.
    let (access, _) = session(&a, "op-nord").await?;
    let took = logout_closes_socket(&a, &b, &access, Duration::from_secs(2))
        .await
        .context("the socket at B must close within 2 s of the logout at A")?;
    println!("logout at A closed the socket at B in {} ms", took.as_millis());
    assert_eq!(http_get_as(&b, "/api/v1/alarms", Some(&access)).await?.0, 401);
    assert_eq!(http_get_as(&b, "/api/v1/alarms", Some(&access_b)).await?.0, 200, "another session stands");

    // The replicas' watch keeps up past the bus's flow control (JetStream pauses a push consumer
    // that does not answer it, about every 2 MiB): 4 MiB of other sessions written meanwhile.
    let js = async_nats::jetstream::new(slice.nats.client_as("gateway").await?);
    let bucket = js.get_key_value(gateway::directory::BUCKET).await?;
    let mut acks = Vec::new();
    for i in 0..10_000 {
        let sid = format!("flood{i}");
        let key = gateway::directory::Key::Session { login: "flood".into(), sid: sid.clone() }.encode()?;
        let record = json!({"sid": sid, "login": "flood", "generation": 0, "expires_at": 4_000_000_000u64,
            "revoked": false, "padding": "x".repeat(300)});
        acks.push(js.publish(format!("{}{key}", bucket.prefix), serde_json::to_vec(&record)?.into()).await?);
        // The client holds a bounded number of unanswered publishes.
        if acks.len() == 200 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    let (access, _) = session(&a, "op-nord").await?;
    logout_closes_socket(&a, &b, &access, Duration::from_secs(5))
        .await
        .context("after 4 MiB of directory writes, a logout at A must still close the socket at B")?;

    // A refresh token asked at both replicas at once: one answer, and the session is closed for
    // the other (as a reused token): the winner's tokens stop working everywhere.
    let (_, refresh_token) = session(&a, "op-nord").await?;
    let (at_a, at_b) = tokio::join!(refresh(&a, &refresh_token), refresh(&b, &refresh_token));
    let answers = [at_a?, at_b?];
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert!(statuses.contains(&200) && statuses.contains(&401), "one refresh wins, one is refused: {statuses:?}");
    let winner = &answers.iter().find(|(s, _)| *s == 200).context("winner")?.1;
    let renewed = winner["refresh_token"].as_str().context("refresh token")?;
    for gateway in [&a, &b] {
        assert_eq!(refresh(gateway, renewed).await?.0, 401, "the session was closed at {gateway}");
    }
    // Refreshed at A, then the same (now old) token at B: refused, the session closed.
    let (_, refresh_token) = session(&a, "op-nord").await?;
    let (status, renewed) = refresh(&a, &refresh_token).await?;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(refresh(&b, &refresh_token).await?.0, 401, "a refresh token is good once, across replicas");
    let renewed_access = renewed["access_token"].as_str().context("access")?;
    tests::eventually("the reused session's token refused at A", Duration::from_secs(2), || async {
        Ok((http_get_as(&a, "/api/v1/alarms", Some(renewed_access)).await?.0 == 401).then_some(()))
    })
    .await?;

    // Alarm actions taken at both replicas at once converge to one state on both.
    let supervisor = tests::login_token(&a, tests::SUPERVISOR).await?;
    let mut watch_a = LiveClient::connect(&format!("ws://{a}/ws?coalesce=false")).await?;
    let mut watch_b = LiveClient::connect(&format!("ws://{b}/ws?coalesce=false")).await?;
    assert_eq!(watch_a.next().await?["type"], "snapshot");
    assert_eq!(watch_b.next().await?["type"], "snapshot");
    lighting.stream_telemetry(futures::stream::iter(vec![lamp_failure("EP-W")])).await?;
    let key = "lighting/lamp_failure/EP-W";
    for gateway in [&a, &b] {
        tests::eventually("the alarm in both views", Duration::from_secs(10), || async {
            let (_, body) = tests::http_get_json_as(gateway, "/api/v1/alarms", Some(&supervisor)).await?;
            Ok(body["items"].as_array().is_some_and(|items| items.iter().any(|i| i["key"] == key)).then_some(()))
        })
        .await?;
    }
    let act = |gateway: String, body: Value| {
        let token = supervisor.clone();
        async move { http_post_json_as(&gateway, "/api/v1/alarms/actions", &body, Some(&token)).await }
    };
    let (first, second, third) = tokio::join!(
        act(a.clone(), json!({"alarm_key": key, "action": "assign", "assignee": "op-nord"})),
        act(b.clone(), json!({"alarm_key": key, "action": "comment", "comment": "vu depuis B"})),
        act(b.clone(), json!({"alarm_key": key, "action": "acknowledge"})),
    );
    for (status, answer) in [first?, second?, third?] {
        assert_eq!(status, 200, "{answer}");
    }
    let alarm_at = |gateway: String| {
        let token = supervisor.clone();
        async move {
            let (_, body) = tests::http_get_json_as(&gateway, "/api/v1/alarms?commune=34172", Some(&token)).await?;
            Ok::<Value, anyhow::Error>(body["items"].clone())
        }
    };
    tests::eventually("both replicas agree on the alarm", Duration::from_secs(10), || async {
        let (on_a, on_b) = (alarm_at(a.clone()).await?, alarm_at(b.clone()).await?);
        let done = on_a == on_b
            && on_a[0]["acknowledged"] == true
            && on_a[0]["assignee"] == "op-nord"
            && on_a[0]["comments"].as_array().is_some_and(|c| c.len() == 1);
        Ok(done.then_some(()))
    })
    .await?;

    // Sequences are the stream's: the same event has the same seq at both replicas.
    let mut reports = Vec::new();
    for i in 0..10 {
        let lamp = if i % 2 == 0 { "EP-W" } else { "EP-E" };
        reports
            .push(lighting.report_status(tests::lamp_report(lamp, f64::from(i) / 10.0)).await?.into_inner().event_id);
    }
    let last = reports.last().cloned().context("reports")?;
    let done = |seen: &[(String, u64)]| seen.iter().any(|(id, _)| *id == last);
    let on_a: HashMap<String, u64> = deltas_until(&mut watch_a, done).await?.into_iter().collect();
    let on_b: HashMap<String, u64> = deltas_until(&mut watch_b, done).await?.into_iter().collect();
    for id in &reports {
        assert_eq!(on_a.get(id), on_b.get(id), "event {id}: one seq at both replicas");
        assert!(on_a.contains_key(id), "event {id} reached A");
    }

    // A console at A that loses A (killed) resumes at B from its last seq: exactly the deltas it
    // missed, in order, none twice.
    let last_seq = on_a.values().copied().max().context("seq")?;
    slice.gateway.kill()?;
    let mut missed = Vec::new();
    for i in 0..20 {
        let lamp = if i % 2 == 0 { "EP-W" } else { "EP-E" };
        missed.push(lighting.report_status(tests::lamp_report(lamp, f64::from(i) / 20.0)).await?.into_inner().event_id);
    }
    let mut resumed = LiveClient::connect(&format!("ws://{b}/ws?coalesce=false&resume_from={last_seq}")).await?;
    let first = resumed.next().await?;
    assert_eq!((&first["type"], &first["from"]), (&json!("resumed"), &json!(last_seq)), "{first}");
    let wanted: HashSet<&str> = missed.iter().map(String::as_str).collect();
    let got = deltas_until(&mut resumed, |seen| wanted.iter().all(|w| seen.iter().any(|(id, _)| id == w))).await?;
    let seqs: Vec<u64> = got.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs.first().copied(), Some(last_seq + 1), "from the next seq: {seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "no gap, nothing twice: {seqs:?}");
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).filter(|id| wanted.contains(id)).collect();
    assert_eq!(ids, missed.iter().map(String::as_str).collect::<Vec<_>>(), "the missed reports, in order");
    b_process.terminate()?;
    Ok(())
}

/// A logout while the bus is away is kept by the replica that took it (durably: across its own
/// crash) and reaches the other replica when the bus is back; removing a login at one replica
/// revokes every credential of theirs, wherever it was issued.
#[tokio::test(flavor = "multi_thread")]
async fn a_logout_without_the_bus_is_kept_and_a_removed_login_loses_its_credentials_everywhere() -> Result<()> {
    let mut slice = Slice::start().await?;
    let b_store = tempfile::tempdir()?;
    let (_b_process, b) = slice.start_gateway_replica(b_store.path(), &[])?;
    let a = slice.gateway_addr.clone();
    let admin = tests::login_token(&a, tests::ADMIN).await?;

    // A commune added at A is one of the deployment's at B: an operator of it can be added there.
    let body = json!({"id": "34999", "name": "Commune nouvelle"});
    let (status, answer) = http_post_json_as(&a, "/api/v1/admin/communes", &body, Some(&admin)).await?;
    assert_eq!(status, 201, "{answer}");
    let bad = json!({"id": "34998", "name": "nom\u{7}"});
    assert_eq!(http_post_json_as(&a, "/api/v1/admin/communes", &bad, Some(&admin)).await?.0, 400);
    let body = json!({"login": "op-nouvelle", "password": TEST_PASSWORD, "role": "operator", "communes": ["34999"]});
    tests::eventually("the commune added at A known at B", Duration::from_secs(5), || async {
        let (status, answer) = http_post_json_as(&b, "/api/v1/admin/operators", &body, Some(&admin)).await?;
        Ok((status == 201).then_some(()).or_else(|| {
            eprintln!("not yet: {status} {answer}");
            None
        }))
    })
    .await?;
    let (_, communes) = tests::http_get_json_as(&b, "/api/v1/admin/communes", Some(&admin)).await?;
    let listed = communes["items"].as_array().is_some_and(|items| items.iter().any(|c| c["id"] == "34999"));
    assert!(listed, "B lists the commune added at A: {communes}");

    // An integrator's credential issued at A, its login removed at B: refused at both.
    let body = json!({"login": "sig-externe", "domains": ["lighting"], "all_communes": true});
    let (status, answer) = http_post_json_as(&a, "/api/v1/admin/integrators", &body, Some(&admin)).await?;
    assert_eq!(status, 201, "{answer}");
    let credential = answer["token"].as_str().context("token")?.to_owned();
    assert_eq!(http_get_as(&b, "/api/v1/auth/me", Some(&credential)).await?.0, 200);
    let (status, answer) = tests::http_delete_as(&b, "/api/v1/admin/operators/sig-externe", &admin).await?;
    assert_eq!(status, 204, "{answer}");
    for gateway in [&a, &b] {
        tests::eventually("the removed login's credential refused", Duration::from_secs(2), || async {
            Ok((http_get_as(gateway, "/api/v1/auth/me", Some(&credential)).await?.0 == 401).then_some(()))
        })
        .await?;
    }

    // The command line on a running deployment (`--online`, as in a gateway's pod): at once at
    // both replicas, with no store of a gateway touched.
    let scratch = tempfile::tempdir()?;
    let mut args = slice.nats.credentials("gateway");
    args.extend(["--store".to_owned(), scratch.path().display().to_string(), "--online".to_owned()]);
    args.extend(["--territory".to_owned(), slice.territory.path().display().to_string()]);
    args.extend(["add-operator", "--login", "astreinte", "--role", "viewer", "--communes", "34172"].map(String::from));
    let mut child = std::process::Command::new(tests::vigie_binary("vigie-gateway")?)
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child.stdin.take().context("stdin")?.write_all(format!("{TEST_PASSWORD}\n").as_bytes())?;
    let output = child.wait_with_output()?;
    assert!(output.status.success(), "add-operator --online: {}", String::from_utf8_lossy(&output.stderr));
    session(&b, "astreinte").await.context("an operator added online logs in at B")?;
    session(&a, "astreinte").await.context("and at A")?;
    assert_eq!(std::fs::read_dir(scratch.path())?.count(), 0, "the command's scratch copy is removed");

    // A logout at A while NATS is stopped: taken (204), the token refused at A at once, and
    // still after A is killed and started again without the bus.
    let body = json!({"login": "op-sud", "password": TEST_PASSWORD, "role": "operator", "communes": ["34129"]});
    let (status, answer) = http_post_json_as(&a, "/api/v1/admin/operators", &body, Some(&admin)).await?;
    assert_eq!(status, 201, "{answer}");
    let (access, _) = session(&a, "op-sud").await?;
    assert_eq!(http_get_as(&b, "/api/v1/auth/me", Some(&access)).await?.0, 200);
    slice.nats.stop()?;
    let (status, answer) = http_post_json_as(&a, "/api/v1/auth/logout", &json!({}), Some(&access)).await?;
    assert_eq!(status, 204, "a logout without the bus is taken: {answer}");
    assert_eq!(http_get_as(&a, "/api/v1/auth/me", Some(&access)).await?.0, 401);
    slice.gateway.kill()?;
    let from = slice.gateway.restart()?;
    let a = slice.gateway.wait_for_addr("HTTP listening", from)?;
    assert_eq!(http_get_as(&a, "/api/v1/auth/me", Some(&access)).await?.0, 401, "the logout survived A's crash");
    // The bus back, B learns of it.
    slice.nats.restart()?;
    tests::eventually("the logout taken without the bus reaches B", Duration::from_secs(20), || async {
        Ok((http_get_as(&b, "/api/v1/auth/me", Some(&access)).await?.0 == 401).then_some(()))
    })
    .await?;
    Ok(())
}

async fn metrics_of(gateway: &str) -> Result<String> {
    Ok(tests::http_get(gateway, "/metrics").await?.1)
}

/// A new replica (or one whose disk was lost) rebuilt its view by replaying the whole events
/// stream: a million events took 16 to 20 s in the benchmark, and events older than the stream's
/// retention (7 days) were not there to replay at all. The replicas now keep a checkpoint of the
/// view in a JetStream object store: a replica with an empty store starts from the latest one
/// and applies only the events after it, and has the same view and the same log book as the
/// replica that wrote it. With checkpoints off, a new replica replays every event (the control).
#[tokio::test(flavor = "multi_thread")]
async fn a_new_replica_starts_from_the_latest_checkpoint_and_replays_only_the_events_after_it() -> Result<()> {
    let slice = Slice::start_full(tests::test_territory()?, &[], &["--view-checkpoint-every", "20"]).await?;
    let mut lighting = slice.lighting_client().await?;
    let a = slice.gateway_addr.clone();
    let supervisor = tests::login_token(&a, tests::SUPERVISOR).await?;
    let lights: Vec<proto::lighting::Streetlight> = (0..30)
        .map(|i| proto::lighting::Streetlight {
            id: format!("EP-CK-{i:02}"),
            lat: 43.6 + f64::from(i) * 1e-4,
            lon: 3.87,
            ..Default::default()
        })
        .collect();
    lighting.register_streetlights(proto::lighting::RegisterStreetlightsRequest { streetlights: lights }).await?;
    let report = |id: String, level: f64| proto::lighting::ReportStatusRequest {
        report: Some(proto::lighting::StatusReport {
            streetlight_id: id,
            observed_at: Some(std::time::SystemTime::now().into()),
            status: proto::lighting::LampStatus::Ok as i32,
            power_state: proto::lighting::PowerState::On as i32,
            illuminance_level: level,
            power_consumption_w: 40.0 + level * 10.0,
            voltage_v: None,
        }),
    };
    for i in 0..30 {
        lighting.report_status(report(format!("EP-CK-{i:02}"), 0.5)).await?;
    }
    // An operator's action: the log book must come across too.
    lighting.stream_telemetry(futures::stream::iter(vec![lamp_failure("EP-CK-03")])).await?;
    let key = "lighting/lamp_failure/EP-CK-03";
    tests::eventually("the alarm in the view", Duration::from_secs(10), || async {
        let (_, body) = tests::http_get_json_as(&a, "/api/v1/alarms", Some(&supervisor)).await?;
        Ok(body["items"].as_array().is_some_and(|items| items.iter().any(|i| i["key"] == key)).then_some(()))
    })
    .await?;
    let body = json!({"alarm_key": key, "action": "acknowledge"});
    let (status, answer) = http_post_json_as(&a, "/api/v1/alarms/actions", &body, Some(&supervisor)).await?;
    assert_eq!(status, 200, "{answer}");
    // The writer's checkpoint: every 20 events, checked every 5 s.
    let checkpoint = tests::eventually("a checkpoint after the acknowledgement", Duration::from_secs(30), || async {
        let text = metrics_of(&a).await?;
        let audit = tests::http_get_json_as(&a, "/api/v1/audit?action=acknowledge", Some(&supervisor)).await?.1;
        let acknowledged_at = audit["items"][0]["seq"].as_u64();
        let checkpoint = metric(&text, "vigie_gateway_checkpoint_seq").map(|v| v as u64);
        Ok(checkpoint.filter(|c| acknowledged_at.is_some_and(|at| *c >= at)))
    })
    .await?;
    // The tail: events after the checkpoint, fewer than 20 (no checkpoint holds them).
    for i in 0..5 {
        lighting.report_status(report(format!("EP-CK-{i:02}"), 0.9)).await?;
    }
    let applied = tests::eventually("the writer current", Duration::from_secs(10), || async {
        let text = metrics_of(&a).await?;
        let applied = metric(&text, "vigie_gateway_applied_seq").map(|v| v as u64);
        Ok(applied.filter(|s| *s >= checkpoint + 5))
    })
    .await?;
    assert!(checkpoint > 30, "the checkpoint holds the registrations and reports (seq {checkpoint})");

    for (checkpoints, name) in [(true, "from the checkpoint"), (false, "replaying the stream")] {
        let store = tempfile::tempdir()?;
        let flags: &[&str] = if checkpoints { &[] } else { &["--view-checkpoint-every", "0"] };
        let (_replica, b) = slice.start_gateway_replica(&store.path().join("gateway"), flags)?;
        let applied_at_b = tests::eventually("the new replica current", Duration::from_secs(30), || async {
            let text = metrics_of(&b).await?;
            Ok(metric(&text, "vigie_gateway_applied_seq").filter(|s| *s as u64 >= applied).map(|_| text))
        })
        .await?;
        let events_applied = metric(&applied_at_b, "vigie_gateway_events_applied_total").unwrap_or(-1.0) as u64;
        let applied = metric(&applied_at_b, "vigie_gateway_applied_seq").unwrap_or(0.0) as u64;
        if checkpoints {
            assert_eq!(
                metric(&applied_at_b, "vigie_gateway_checkpoint_seq").map(|v| v as u64),
                Some(checkpoint),
                "{name}: started from the writer's checkpoint"
            );
            assert!(
                events_applied <= applied - checkpoint,
                "{name}: {events_applied} events applied, the tail is {}",
                applied - checkpoint
            );
        } else {
            assert!(events_applied >= checkpoint, "{name}: {events_applied} events applied of {applied}");
        }
        // The same view and the same log book as the writer.
        let view_of = |gateway: String| {
            let token = supervisor.clone();
            async move {
                let mut live = LiveClient::connect_as(&format!("ws://{gateway}/ws"), Some(&token), None).await?;
                let snapshot = live.next().await?;
                let mut lamps: Vec<(String, String)> = snapshot["assets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|a| a["domain"] == "lighting")
                    .map(|a| (a["id"].to_string(), a["details"]["power_consumption_w"].to_string()))
                    .collect();
                lamps.sort();
                let mut alarms: Vec<(String, bool)> = snapshot["alarms"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| (a["key"].to_string(), a["acknowledged"] == true))
                    .collect();
                alarms.sort();
                anyhow::Ok((snapshot["seq"].as_u64(), lamps, alarms))
            }
        };
        let (at_a, at_b) = (view_of(a.clone()).await?, view_of(b.clone()).await?);
        assert_eq!(at_a.1.len(), 30, "the writer's lamps");
        assert_eq!(at_a, at_b, "{name}: the same view at the same seq");
        assert!(at_b.2.iter().any(|(k, acknowledged)| k.contains("EP-CK-03") && *acknowledged));
        let audit = |gateway: String| {
            let token = supervisor.clone();
            async move {
                let (_, body) = tests::http_get_json_as(&gateway, "/api/v1/audit", Some(&token)).await?;
                anyhow::Ok(body["items"].clone())
            }
        };
        let (log_a, log_b) = (audit(a.clone()).await?, audit(b.clone()).await?);
        assert!(log_a.as_array().is_some_and(|l| !l.is_empty()), "{log_a}");
        assert_eq!(log_a, log_b, "{name}: the same log book");
    }
    Ok(())
}
