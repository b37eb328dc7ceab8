//! The fault suite's workload: the lamp writer, the operator, the console session, and what
//! each records of its writes and of what it saw.

use super::*;

/// What the writers see of the system: where to write (the gateway's address changes when it
/// starts again) and the integrator's token.
pub(super) struct Target {
    pub(super) lighting: Mutex<String>,
    pub(super) gateway: Mutex<String>,
    pub(super) token: String,
}

impl Target {
    fn gateway(&self) -> String {
        self.gateway.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

#[derive(Default, Debug)]
pub(super) struct History {
    /// Lamp writes acknowledged: their event ids, and when (this process's clock).
    pub(super) lamp_acked: Vec<String>,
    pub(super) lamp_acked_at: Vec<SystemTime>,
    pub(super) lamp_refused: usize,
    pub(super) lamp_unknown: usize,
    /// Log book entries acknowledged: their texts.
    pub(super) notes_acked: Vec<String>,
    pub(super) notes_refused: usize,
    pub(super) notes_unknown: usize,
    /// Commands acknowledged: their ids.
    pub(super) commands_acked: Vec<String>,
    pub(super) commands_refused: usize,
    pub(super) commands_unknown: usize,
}

/// What the console session saw: each heartbeat (when, the sequence, live or not), and the lamps
/// as its frames left them.
#[derive(Default, Debug)]
pub(super) struct SessionLog {
    pub(super) heartbeats: Vec<(SystemTime, u64, bool)>,
    /// The sequence its frames bring it to.
    pub(super) seq: u64,
    pub(super) lamps: BTreeMap<String, f64>,
    pub(super) connections: usize,
    pub(super) resumed: usize,
    pub(super) snapshots: usize,
}

pub(super) fn lamp_report(k: u64) -> ReportStatusRequest {
    ReportStatusRequest {
        report: Some(StatusReport {
            streetlight_id: format!("EP{:02}", k % LAMPS as u64),
            observed_at: Some(SystemTime::now().into()),
            status: LampStatus::Ok as i32,
            power_state: PowerState::On as i32,
            illuminance_level: 1.0,
            power_consumption_w: (k % 200) as f64,
            voltage_v: Some(230.0),
        }),
    }
}

/// A channel to the lighting service at `addr`, or, given several addresses (an active
/// instance and its standby), to whichever answers, as the gateway reaches it.
async fn lighting_channel(addr: &str, token: &str) -> Result<runtime::grpc_auth::AuthChannel> {
    if !addr.contains(',') {
        return channel_with_token(addr, Some(token)).await;
    }
    let urls: Vec<String> = addr.split(',').map(|a| format!("http://{a}")).collect();
    let channel = runtime::config::GrpcClientTls::default().channel(&urls.join(","))?;
    Ok(runtime::grpc_auth::with_token(channel, runtime::grpc_auth::BearerToken::fixed(Some(token.to_owned()))))
}

pub(super) async fn lamp_writer(
    target: Arc<Target>,
    stop: tokio_util::sync::CancellationToken,
    history: Arc<Mutex<History>>,
) {
    let mut k = 0u64;
    let mut client: Option<LightingClient> = None;
    while !stop.is_cancelled() {
        if client.is_none() {
            let addr = target.lighting.lock().map(|a| a.clone()).unwrap_or_default();
            match tokio::time::timeout(WRITE_TIMEOUT, lighting_channel(&addr, &target.token)).await {
                Ok(Ok(channel)) => client = Some(LightingClient::new(channel)),
                _ => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        k += 1;
        // Paced (at most 500 writes a second): a load, not a flood of the two cores.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let outcome = tokio::time::timeout(WRITE_TIMEOUT, c.report_status(lamp_report(k))).await;
        let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(Ok(reply)) => {
                h.lamp_acked.push(reply.into_inner().event_id);
                h.lamp_acked_at.push(SystemTime::now());
            }
            Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => h.lamp_refused += 1,
            _ => {
                h.lamp_unknown += 1;
                client = None;
            }
        }
    }
}

/// An operator: a log book entry every 50 ms, and every fourth time a lighting command.
pub(super) async fn operator_writer(
    target: Arc<Target>,
    stop: tokio_util::sync::CancellationToken,
    history: Arc<Mutex<History>>,
    seed: u64,
) {
    let mut k = 0u64;
    while !stop.is_cancelled() {
        k += 1;
        let addr = target.gateway();
        if k.is_multiple_of(4) {
            let body = serde_json::json!({
                "target": {"streetlight_id": format!("EP{:02}", k % LAMPS as u64)},
                "action": {"dim_level": 0.5},
                "reason": format!("faute {seed} commande {k}"),
            });
            let outcome = http_post_json(&addr, "/api/v1/commands/lighting", &body).await;
            let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
            match outcome {
                Ok((201, answer)) => match answer["commands"][0]["id"].as_str() {
                    Some(id) => h.commands_acked.push(id.to_owned()),
                    None => h.commands_unknown += 1,
                },
                Ok((400 | 403 | 404, _)) => h.commands_refused += 1,
                _ => h.commands_unknown += 1,
            }
        } else {
            let text = format!("faute {seed} note {k}");
            let body = serde_json::json!({"commune": "34172", "text": text});
            let outcome = http_post_json(&addr, "/api/v1/logbook", &body).await;
            let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
            match outcome {
                // 202: published, not yet applied by this gateway (still acknowledged).
                Ok((200 | 202, _)) => h.notes_acked.push(text),
                Ok((400 | 403 | 404, _)) => h.notes_refused += 1,
                _ => h.notes_unknown += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A console session: connected all along (it reconnects after each break, resuming from the
/// last sequence it had), keeping the lamps as its frames say and every heartbeat.
pub(super) async fn session(
    target: Arc<Target>,
    stop: tokio_util::sync::CancellationToken,
    log: Arc<Mutex<SessionLog>>,
) {
    let mut seq: Option<u64> = None;
    while !stop.is_cancelled() {
        let resume = seq.map(|s| format!("&resume_from={s}")).unwrap_or_default();
        let url = format!("ws://{}/ws?coalesce=false{resume}", target.gateway());
        let Ok(Ok(mut client)) = tokio::time::timeout(WRITE_TIMEOUT, LiveClient::connect(&url)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        log.lock().unwrap_or_else(|p| p.into_inner()).connections += 1;
        loop {
            // Silent for three heartbeats: as the console does, give up on this connection.
            let frame = tokio::select! {
                frame = tokio::time::timeout(HEARTBEAT * 3, client.next()) => frame,
                _ = stop.cancelled() => return,
            };
            let Ok(Ok(frame)) = frame else { break };
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            let lamp = |log: &mut SessionLog, asset: &serde_json::Value| {
                if asset["domain"] == "lighting"
                    && let (Some(id), Some(power)) =
                        (asset["id"].as_str(), asset["details"]["power_consumption_w"].as_f64())
                {
                    log.lamps.insert(id.to_owned(), power);
                }
            };
            match frame["type"].as_str() {
                Some("snapshot") => {
                    log.snapshots += 1;
                    log.lamps.clear();
                    for asset in frame["assets"].as_array().into_iter().flatten() {
                        lamp(&mut log, asset);
                    }
                    seq = frame["seq"].as_u64();
                    log.seq = seq.unwrap_or(0);
                }
                Some("resumed") => log.resumed += 1,
                Some("delta") => {
                    lamp(&mut log, &frame["asset"]);
                    seq = frame["seq"].as_u64().or(seq);
                }
                Some("heartbeat") => {
                    let at = frame["seq"].as_u64().unwrap_or(0);
                    log.heartbeats.push((SystemTime::now(), at, frame["upstream"] == "live"));
                    log.seq = log.seq.max(at);
                }
                _ => {}
            }
        }
    }
}
