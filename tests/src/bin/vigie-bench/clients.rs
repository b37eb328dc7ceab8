//! WebSocket clients, many of them: each reads every frame; the measuring ones record, for each
//! delta, the time from the event's `observed_at` (set by the load generator to the moment the
//! event was due to be sent: open loop, no coordinated omission) to its arrival. Stalled clients
//! connect and then never read.

use anyhow::{Context, Result};
use futures::StreamExt;
use hdrhistogram::Histogram;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

/// What one client, or a fleet, saw. Latencies in microseconds.
pub struct Seen {
    pub asset: Histogram<u64>,
    pub alarm: Histogram<u64>,
    /// Deltas received (every kind).
    pub deltas: u64,
    /// Clients whose connection ended before the end (closed by the server, or failed).
    pub dropped: u64,
}

impl Seen {
    pub fn new() -> Seen {
        let histogram = || Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
        Seen { asset: histogram(), alarm: histogram(), deltas: 0, dropped: 0 }
    }

    pub fn merge(&mut self, other: &Seen) {
        let _ = self.asset.add(&other.asset);
        let _ = self.alarm.add(&other.alarm);
        self.deltas += other.deltas;
        self.dropped += other.dropped;
    }
}

/// What a client does with what it receives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads and measures every delta.
    Measuring,
    /// Reads and discards.
    Reading,
    /// Never reads (a slow consumer).
    Stalled,
}

pub struct Fleet {
    stop: CancellationToken,
    clients: Vec<(Role, JoinHandle<Seen>)>,
}

/// Connects `roles.len()` clients to `url`, `token` as the gateway's subprotocol (none for the
/// raw baseline), a few at a time (the server's accept loop is not what is measured).
pub async fn connect(url: &str, token: Option<&str>, roles: &[Role]) -> Result<Fleet> {
    let stop = CancellationToken::new();
    let mut clients = Vec::with_capacity(roles.len());
    for chunk in roles.chunks(50) {
        let mut connecting = Vec::new();
        for role in chunk {
            let mut request = url.into_client_request()?;
            if let Some(token) = token {
                request.headers_mut().insert("sec-websocket-protocol", format!("vigie.v1, bearer.{token}").parse()?);
            }
            connecting.push(async move { (role, tokio_tungstenite::connect_async(request).await) });
        }
        for (role, connected) in futures::future::join_all(connecting).await {
            let (socket, _) = connected.with_context(|| format!("connecting a client to {url}"))?;
            let stop = stop.clone();
            let role = *role;
            clients.push((role, tokio::spawn(run(socket, role, stop))));
        }
    }
    Ok(Fleet { stop, clients })
}

impl Fleet {
    /// Stops every client and merges what the measuring ones saw; `dropped` counts every role.
    pub async fn finish(self) -> (Seen, u64) {
        self.stop.cancel();
        let mut seen = Seen::new();
        let mut dropped = 0;
        for (role, client) in self.clients {
            if let Ok(s) = client.await {
                dropped += s.dropped;
                if role == Role::Measuring {
                    seen.merge(&s);
                }
            }
        }
        (seen, dropped)
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn run(mut socket: Socket, role: Role, stop: CancellationToken) -> Seen {
    let mut seen = Seen::new();
    if role == Role::Stalled {
        stop.cancelled().await;
        return seen;
    }
    loop {
        let message = tokio::select! {
            m = socket.next() => m,
            _ = stop.cancelled() => break,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                if role == Role::Measuring {
                    record(&mut seen, text.as_str());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                seen.dropped += 1;
                break;
            }
        }
    }
    seen
}

/// Records a delta's latency: now minus its event's `observed_at`.
fn record(seen: &mut Seen, text: &str) {
    if !text.contains("\"type\":\"delta\"") {
        return;
    }
    seen.deltas += 1;
    let Some(observed) = field(text, "\"observed_at\":\"").and_then(parse_rfc3339_micros) else { return };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    let latency = now.saturating_sub(observed).max(1);
    let histogram = match field(text, "\"kind\":\"") {
        Some("alarm_raised") => &mut seen.alarm,
        Some("streetlight_status") | Some("bench") => &mut seen.asset,
        _ => return,
    };
    let _ = histogram.record(latency.min(600_000_000));
}

/// The text of the first string field after `key`.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let end = text[start..].find('"')?;
    Some(&text[start..start + end])
}

/// Microseconds since the epoch of an RFC 3339 UTC time.
pub fn parse_rfc3339_micros(text: &str) -> Option<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    u64::try_from(t.timestamp_micros()).ok()
}

/// `n` roles: `measuring` of them measure, `stalled` never read, the rest read.
pub fn roles(n: usize, measuring: usize, stalled: usize) -> Vec<Role> {
    (0..n)
        .map(|i| {
            if i < measuring {
                Role::Measuring
            } else if i < measuring + stalled {
                Role::Stalled
            } else {
                Role::Reading
            }
        })
        .collect()
}

/// Waits a little for the last frames in flight.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}
