//! WebSocket clients, many of them: each reads every frame; the measuring ones record, for each
//! delta, the time from the event's `observed_at` (set by the load generator to the moment the
//! event was due to be sent: open loop, no coordinated omission) to its arrival. Stalled clients
//! connect and then never read.
//!
//! A fleet runs in a process of its own ([`spawn`]: this binary again, with `--fleet`), so that
//! its clients share neither the benchmark's runtime (the load generator's pace) nor its CPU
//! figure: the clients' CPU is reported apart. The process answers on its standard output:
//! `connected` once every client is, then, when told to stop (a line on its standard input),
//! what its measuring clients saw as one JSON line.

use anyhow::{Context, Result};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
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

impl Seen {
    /// As one JSON line: each histogram as its recorded `[value, count]` pairs.
    fn to_json(&self) -> Value {
        let pairs = |h: &Histogram<u64>| -> Vec<[u64; 2]> {
            h.iter_recorded().map(|v| [v.value_iterated_to(), v.count_at_value()]).collect()
        };
        json!({ "asset": pairs(&self.asset), "alarm": pairs(&self.alarm), "deltas": self.deltas, "dropped": self.dropped })
    }

    fn from_json(value: &Value) -> Result<Seen> {
        let mut seen = Seen::new();
        for (name, histogram) in [("asset", &mut seen.asset), ("alarm", &mut seen.alarm)] {
            let pairs: Vec<[u64; 2]> =
                serde_json::from_value(value[name].clone()).with_context(|| format!("the fleet's {name} histogram"))?;
            for [v, count] in pairs {
                histogram.record_n(v, count)?;
            }
        }
        seen.deltas = value["deltas"].as_u64().context("the fleet's deltas")?;
        seen.dropped = value["dropped"].as_u64().context("the fleet's dropped")?;
        Ok(seen)
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
/// raw baseline), a few at a time (the server's accept loop is not what is measured). A client of
/// the gateway is connected once its whole snapshot has arrived: a load played while snapshots
/// are still being sent would measure them (their size grows with the territory) rather than
/// the deltas.
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
            let snapshot = token.is_some();
            connecting.push(async move {
                let connected = async {
                    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
                    if snapshot {
                        await_snapshot(&mut socket).await?;
                    }
                    anyhow::Ok(socket)
                };
                (role, connected.await)
            });
        }
        for (role, connected) in futures::future::join_all(connecting).await {
            let socket = connected.with_context(|| format!("connecting a client to {url}"))?;
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
}

/// How long a fleet may take to connect its clients (their snapshots included), and to stop and
/// give its figures.
const FLEET_WITHIN: Duration = Duration::from_secs(300);

/// A fleet of clients in a process of its own (see the module's documentation).
pub struct RemoteFleet {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    pid: u32,
}

/// Starts a fleet process: `roles.len()` clients connected to `url` (with `token` as for
/// [`connect`]); returns once every one is connected.
pub async fn spawn(url: &str, token: Option<&str>, roles: &[Role]) -> Result<RemoteFleet> {
    let count = |role| roles.iter().filter(|r| **r == role).count().to_string();
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .args(["--fleet", url, "--fleet-roles"])
        .arg(format!("{},{},{}", count(Role::Measuring), count(Role::Reading), count(Role::Stalled)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(token) = token {
        // Not on the command line, where every process of the machine reads it.
        command.env("VIGIE_BENCH_FLEET_TOKEN", token);
    }
    let mut child = command.spawn().context("starting a fleet process")?;
    let pid = child.id().context("the fleet process has no pid")?;
    let stdin = child.stdin.take().context("the fleet's stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().context("the fleet's stdout")?).lines();
    // A gateway that accepts connections but never answers them must not hang the run.
    let connected = tokio::time::timeout(FLEET_WITHIN, stdout.next_line())
        .await
        .map_err(|_| anyhow::anyhow!("the fleet's {} clients did not connect within {FLEET_WITHIN:?}", roles.len()))?;
    match connected? {
        Some(line) if line == "connected" => {}
        other => anyhow::bail!("the fleet process did not connect its clients: {other:?}"),
    }
    Ok(RemoteFleet { child, stdin, stdout, pid })
}

impl RemoteFleet {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stops its clients: what the measuring ones saw, and how many of all were dropped.
    pub async fn finish(mut self) -> Result<(Seen, u64)> {
        self.stdin.write_all(b"stop\n").await?;
        self.stdin.flush().await?;
        let line = tokio::time::timeout(FLEET_WITHIN, self.stdout.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("the fleet did not give its figures within {FLEET_WITHIN:?}"))??
            .context("the fleet process ended without its figures")?;
        let seen = Seen::from_json(&serde_json::from_str(&line)?)?;
        self.child.wait().await?;
        let dropped = seen.dropped;
        Ok((seen, dropped))
    }
}

/// The fleet process's body (`--fleet URL --fleet-roles M,R,S`): connects, says so, waits for
/// the word to stop, prints what was seen.
pub async fn fleet_main(url: &str, roles: &str) -> Result<()> {
    let counts: Vec<usize> = roles.split(',').map(str::parse).collect::<Result<_, _>>().context("--fleet-roles")?;
    let [measuring, reading, stalled] = counts[..] else { anyhow::bail!("--fleet-roles takes M,R,S") };
    let token = std::env::var("VIGIE_BENCH_FLEET_TOKEN").ok();
    let fleet = connect(url, token.as_deref(), &self::roles(measuring + reading + stalled, measuring, stalled)).await?;
    println!("connected");
    let mut line = String::new();
    BufReader::new(tokio::io::stdin()).read_line(&mut line).await?;
    let (mut seen, dropped) = fleet.finish().await;
    seen.dropped = dropped;
    println!("{}", seen.to_json());
    Ok(())
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn run(mut socket: Socket, role: Role, stop: CancellationToken) -> Seen {
    let mut seen = Seen::new();
    if role == Role::Stalled {
        stop.cancelled().await;
        close(&mut socket).await;
        return seen;
    }
    loop {
        let message = tokio::select! {
            m = socket.next() => m,
            _ = stop.cancelled() => None,
        };
        if stop.is_cancelled() {
            close(&mut socket).await;
            break;
        }
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

/// Reads a gateway client's first frames until its snapshot is whole (its last frame does not
/// say `more`).
async fn await_snapshot(socket: &mut Socket) -> Result<()> {
    while let Some(message) = socket.next().await {
        if let Message::Text(text) = message? {
            let text = text.as_str();
            let snapshot = text.find("\"type\":\"snapshot\"").is_some_and(|at| at < 64);
            if snapshot && !text.ends_with("\"more\":true}") {
                return Ok(());
            }
        }
    }
    anyhow::bail!("the connection ended before its snapshot was whole")
}

/// Ends a client as a console would (a close frame), not with a reset the gateway logs.
async fn close(socket: &mut Socket) {
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
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
