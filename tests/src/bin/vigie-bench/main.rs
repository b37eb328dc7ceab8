//! Vigie's benchmark: starts the real system on this machine (nats-server with the deployment's
//! permissions, the lighting service, the gateway), loads it open loop, and measures against
//! baselines run in the same session (raw JetStream, a raw WebSocket broadcast, a raw gRPC
//! streaming echo). Writes `docs/benchmarks.md` (or `--out`). `--smoke` runs every scenario
//! briefly on a small scale (the test suite does, so that the benchmark cannot rot); its figures
//! mean nothing.
//!
//! Run it on release builds: `cargo build --release --workspace --bins && target/release/vigie-bench`.

mod baselines;
mod clients;
mod load;
mod system;

use anyhow::{Context, Result};
use clients::{Role, Seen};
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use system::{cpu_seconds, machine, raise_open_files, rss};
use tests::{AuthChannel, JetStreamSync, NatsServer, Slice};

#[derive(clap::Parser)]
#[command(name = "vigie-bench", about = "Vigie's end-to-end benchmark against raw baselines")]
struct Args {
    /// A short run of every scenario on a small scale (checks the benchmark works).
    #[arg(long)]
    smoke: bool,
    /// Where the report goes.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: std::path::PathBuf,
    /// The scenarios to run (s1, s2 for S2 to S4, s5, s6, unsynced for S1 without per-message
    /// sync, standby for S1 on a cluster); all by default. A partial run is for profiling: do not
    /// commit its report.
    #[arg(long, value_delimiter = ',', default_value = "s1,s2,scaling,s5,s6,unsynced,standby")]
    scenarios: Vec<String>,
    /// Internal: run as a fleet of WebSocket clients connected to this URL (see `clients`).
    #[arg(long, hide = true)]
    fleet: Option<String>,
    /// Internal: the fleet's measuring, reading and stalled clients, `M,R,S`.
    #[arg(long, hide = true, default_value = "0,0,0")]
    fleet_roles: String,
}

/// The scale of a run.
#[derive(Clone)]
struct Scale {
    lamps: usize,
    b1_messages: usize,
    ladder: Vec<f64>,
    step: Duration,
    latency_rates: Vec<f64>,
    latency_clients: Vec<usize>,
    fanout_rate: f64,
    fanout_clients: Vec<usize>,
    memory_clients: usize,
    /// The territory's sizes of the scaling table (1×, 2×, 4×), streetlights.
    scaling_lamps: Vec<usize>,
    /// The ingest steps tried at each size.
    scaling_ladder: Vec<f64>,
    view_assets: usize,
    rebuild_events: usize,
    measuring: usize,
}

impl Scale {
    fn full() -> Scale {
        Scale {
            lamps: 2_000,
            b1_messages: 200_000,
            ladder: vec![1_000.0, 2_000.0, 3_000.0, 4_000.0, 5_000.0, 7_500.0, 10_000.0, 15_000.0, 20_000.0, 40_000.0],
            step: Duration::from_secs(10),
            latency_rates: vec![1_000.0, 5_000.0],
            latency_clients: vec![100, 1_000],
            fanout_rate: 1_000.0,
            fanout_clients: vec![500, 1_000, 2_000, 5_000],
            memory_clients: 1_000,
            scaling_lamps: vec![30_000, 60_000, 120_000],
            scaling_ladder: vec![2_000.0, 3_000.0, 4_000.0, 5_000.0],
            view_assets: 100_000,
            rebuild_events: 1_000_000,
            measuring: 20,
        }
    }

    fn smoke() -> Scale {
        Scale {
            lamps: 400,
            b1_messages: 2_000,
            ladder: vec![100.0, 300.0],
            step: Duration::from_secs(2),
            latency_rates: vec![100.0],
            latency_clients: vec![10],
            fanout_rate: 100.0,
            fanout_clients: vec![10, 20],
            memory_clients: 20,
            scaling_lamps: vec![500, 1_000, 2_000],
            scaling_ladder: vec![100.0],
            view_assets: 2_000,
            rebuild_events: 5_000,
            measuring: 4,
        }
    }
}

/// A latency summary, milliseconds.
fn summary(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no sample".into();
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.1} · p99 {:.1} · p99.9 {:.1} · max {:.1} ms ({} samples)",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0,
        h.len()
    )
}

fn p99_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(0.99) as f64 / 1000.0)
}

/// What one run of load saw.
struct Run {
    sent: load::Sent,
    /// What the measuring clients saw.
    seen: Seen,
    /// Clients whose connection ended before the end.
    dropped: u64,
    /// Cores each process kept busy on average while the load played, out of the machine's.
    cores: Cores,
}

/// Cores busy on average over a window: nats-server, the lighting service, the gateway, this
/// benchmark (the load generator) and the clients' process.
#[derive(Clone, Copy, Default)]
struct Cores([f64; 5]);

impl Cores {
    fn all(&self) -> String {
        self.0.iter().map(|c| format!("{c:.2}")).collect::<Vec<_>>().join(" · ")
    }

    /// The gateway's and the clients' (what fan-out costs).
    fn gateway_clients(&self) -> String {
        format!("{:.2} · {:.2}", self.0[2], self.0[4])
    }
}

struct Bench {
    slice: Slice,
    channel: AuthChannel,
    lamps: std::sync::Arc<Vec<String>>,
    next: u64,
    /// Streetlights registered and in the view (lamps `0..view_assets`: the scaling table and S5
    /// add many).
    view_assets: usize,
    ws: String,
    token: String,
    scale: Scale,
    report: String,
    smoke: bool,
    /// The lighting service's `/metrics` address (its outbox's depth).
    lighting_metrics: String,
}

/// The lighting service's flags: KPIs rarely (they are not measured), metrics served (the
/// benchmark waits for its outbox to drain between runs).
const LIGHTING_FLAGS: &[&str] = &["--kpi-interval", "60s", "--metrics-addr", "127.0.0.1:0"];

/// The gateway's flags: thousands of consoles under one login (each would have its own in a
/// control room), so the per-login snapshot budget is lifted.
const GATEWAY_FLAGS: &[&str] =
    &["--access-token-ttl", "4h", "--session-ttl", "8h", "--heartbeat", "2s", "--snapshots-per-login", "1000000"];

impl Bench {
    /// The benchmark on a running system: its lamps registered, a console's token.
    async fn on(slice: Slice, scale: Scale, report: String, smoke: bool) -> Result<Bench> {
        let channel = tests::channel_with_token(&slice.lighting_addr, Some(&slice.service_token)).await?;
        let mut lighting = proto::lighting::lighting_service_client::LightingServiceClient::new(channel.clone());
        let lamps = load::register(&mut lighting, 0..scale.lamps).await?;
        let token = tests::login_token(&slice.gateway_addr, tests::SUPERVISOR).await?;
        // The console's kind of client: snapshots in frames of about 16 KiB.
        let ws = format!("ws://{}/ws?split_snapshots=true", slice.gateway_addr);
        let lighting_metrics = slice.lighting.wait_for_addr("metrics listening", 0)?;
        Ok(Bench {
            slice,
            channel,
            view_assets: lamps.len(),
            lamps: std::sync::Arc::new(lamps),
            next: 0,
            ws,
            token,
            scale,
            report,
            smoke,
            lighting_metrics,
        })
    }

    /// Waits until what earlier runs left is done: the lighting service's outbox empty and the
    /// gateway's view at the stream's last event (a step that overloaded the system leaves a
    /// backlog; the next run must not measure it). Returns how long that took.
    async fn drain(&self) -> Result<Duration> {
        let start = Instant::now();
        let js = async_nats::jetstream::new(self.slice.nats.client_as("gateway").await?);
        loop {
            let (_, lighting) = tests::http_get(&self.lighting_metrics, "/metrics").await?;
            let depth = metric(&lighting, "vigie_outbox_depth").unwrap_or(0);
            let last = js.get_stream(proto::subject::EVENTS_STREAM).await?.info().await?.state.last_sequence;
            let (_, gateway) = tests::http_get(&self.slice.gateway_addr, "/metrics").await?;
            let applied = metric(&gateway, "vigie_gateway_applied_seq").unwrap_or(0);
            if depth == 0 && applied >= last {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(600),
                "the system did not drain in 10 minutes (outbox {depth}, view at {applied} of {last})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Plays reports at `rate` on the benchmark's lamps while `roles` clients (in a process of
    /// their own) are connected.
    async fn run(&mut self, rate: f64, duration: Duration, roles: &[Role], coalesce: bool) -> Result<Run> {
        let lamps = self.lamps.clone();
        self.run_on(&lamps, load::Load { rate, duration, alarm_every: 50, streams: 4 }, roles, coalesce).await
    }

    /// Plays `plan` on `lamps` while `roles` clients are connected; what the measuring ones saw.
    async fn run_on(&mut self, lamps: &[String], plan: load::Load, roles: &[Role], coalesce: bool) -> Result<Run> {
        let drained = self.drain().await?;
        if drained > Duration::from_secs(2) {
            println!("  (waited {:.1} s for the previous run's backlog)", drained.as_secs_f64());
        }
        let url = if coalesce { self.ws.clone() } else { format!("{}&coalesce=false", self.ws) };
        // Connected: every client has its snapshot (not what is measured).
        let fleet = clients::spawn(&url, Some(&self.token), roles).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (before, start) = (self.cpu(fleet.pid()), Instant::now());
        let (sent, next) = load::play(&self.channel, lamps, &plan, self.next).await?;
        self.next = next;
        clients::settle().await;
        let cores = cores_between(before, self.cpu(fleet.pid()), start.elapsed());
        let (seen, dropped) = fleet.finish().await?;
        Ok(Run { sent, seen, dropped, cores })
    }

    /// Grows the territory to `n` streetlights (lamps `0..n`), each new one reported once, and
    /// waits for the view to hold them all; returns every lamp's identifier.
    async fn grow_to(&mut self, n: usize) -> Result<Vec<String>> {
        let have = self.view_assets;
        if n > have {
            let mut lighting =
                proto::lighting::lighting_service_client::LightingServiceClient::new(self.channel.clone());
            let new = load::register(&mut lighting, have..n).await?;
            let rate = if self.smoke { 1_000.0 } else { 5_000.0 };
            let plan = load::Load {
                rate,
                duration: Duration::from_secs_f64(new.len() as f64 / rate),
                alarm_every: 0,
                streams: 4,
            };
            let (_, next) = load::play(&self.channel, &new, &plan, self.next).await?;
            self.next = next;
            self.view_assets = n;
        }
        self.drain().await?;
        Ok((0..n).map(load::lamp_id).collect())
    }

    fn gateway_pid(&self) -> Result<u32> {
        self.slice.gateway.pid().context("the gateway is not running")
    }

    /// CPU seconds so far of nats-server, the lighting service, the gateway, this benchmark and
    /// the clients' process `fleet`.
    fn cpu(&self, fleet: u32) -> [f64; 5] {
        let of = |pid: Option<u32>| pid.map(cpu_seconds).unwrap_or(0.0);
        [
            of(self.slice.nats.pid()),
            of(self.slice.lighting.pid()),
            of(self.slice.gateway.pid()),
            cpu_seconds(std::process::id()),
            cpu_seconds(fleet),
        ]
    }
}

fn cores_between(before: [f64; 5], after: [f64; 5], wall: Duration) -> Cores {
    let wall = wall.as_secs_f64().max(1e-9);
    Cores(std::array::from_fn(|i| (after[i] - before[i]).max(0.0) / wall))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = <Args as clap::Parser>::parse();
    raise_open_files();
    if let Some(url) = &args.fleet {
        return clients::fleet_main(url, &args.fleet_roles).await;
    }
    let scale = if args.smoke { Scale::smoke() } else { Scale::full() };
    let started = Instant::now();
    let mut report = String::new();
    writeln!(report, "# Benchmarks\n")?;
    writeln!(
        report,
        "Written by `vigie-bench`{} on {}. Every figure below comes from one run on the machine described; the baselines ran in the same session, on the same machine, so the ratios are what to compare.\n",
        if args.smoke { " --smoke (a check that the benchmark works: these figures mean nothing)" } else { "" },
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    )?;
    writeln!(report, "## Machine\n\n{}", machine())?;
    writeln!(
        report,
        "Everything shares these cores: nats-server, the lighting service, the gateway, this benchmark's load generator, and its WebSocket clients (in a process of their own, so that they share neither the load generator's runtime nor its CPU figure; the tables give the clients' CPU apart).\n"
    )?;
    writeln!(
        report,
        "**Durability.** The system runs on nats-server as deployed (`deploy/nats/`: `sync_interval: always`, every acknowledged event on disk), and each S1 figure is set beside a B1 measured at the same durability: on one server syncing every message for the system as deployed, on one server with nats-server's default sync (every 2 minutes) for S1 without per-message sync, on a 3-node cluster (3 copies, syncing every message) for S1 on the cluster.\n"
    )?;
    writeln!(
        report,
        "**Between runs** the benchmark waits until the lighting service's outbox is empty and the gateway's view has the stream's last event: a step that overloaded the system leaves a backlog, which the next run must not measure.\n"
    )?;

    // B1 on a server of its own (open: no users), before the system starts.
    let b1 = |nodes: usize, sync: JetStreamSync| {
        let messages = scale.b1_messages;
        async move {
            println!("B1: raw JetStream, {nodes} node(s), {sync:?} sync");
            let nats = NatsServer::start_open_synced(nodes, sync)?;
            let rate = baselines::raw_jetstream(&nats.url(), messages, 400, nodes).await?;
            println!("B1: {rate:.0} messages/s");
            anyhow::Ok(rate)
        }
    };
    let b1_synced = b1(1, JetStreamSync::Always).await?;
    println!("B3: raw tonic streaming echo");
    let b3 = baselines::raw_tonic_echo(scale.b1_messages, 120, 4).await?;
    println!("B3: {b3:.0} messages/s");

    println!("starting the system");
    let territory = tests::test_territory()?;
    let nats = NatsServer::start_synced(JetStreamSync::Always)?;
    let slice = Slice::start_on(nats, territory, LIGHTING_FLAGS, GATEWAY_FLAGS).await?;
    let mut bench = Bench::on(slice, scale.clone(), report, args.smoke).await?;

    // Each scenario's section is saved as soon as it is written; a scenario that fails says so
    // in the report, the others still run, and the run ends in failure.
    let run = |name: &str| args.scenarios.iter().any(|s| s == name);
    let mut failed = Vec::new();
    let per_client = if run("s5") {
        match s5_clients(&mut bench).await {
            Ok(measured) => Some(measured),
            Err(e) => {
                outcome(&mut bench.report, &mut failed, &args.out, "S5", Err(e))?;
                None
            }
        }
    } else {
        None
    };
    if run("s1") {
        let result = s1(&mut bench, b1_synced, b3).await;
        outcome(&mut bench.report, &mut failed, &args.out, "S1", result)?;
    }
    if run("s2") {
        let result = s2_s3_s4(&mut bench).await;
        outcome(&mut bench.report, &mut failed, &args.out, "S2 to S4", result)?;
    }
    if run("scaling") {
        let result = scaling(&mut bench).await;
        outcome(&mut bench.report, &mut failed, &args.out, "Scaling", result)?;
    }
    if let Some(per_client) = per_client {
        let result = s5(&mut bench, per_client).await;
        outcome(&mut bench.report, &mut failed, &args.out, "S5", result)?;
    }
    if run("s6") {
        let result = s6(&mut bench).await;
        outcome(&mut bench.report, &mut failed, &args.out, "S6", result)?;
    }
    let mut report = bench.report;
    drop(bench.slice);
    if run("unsynced") {
        let result = async { s1_unsynced(&scale, args.smoke, b1(1, JetStreamSync::Default).await?, &mut report).await };
        let result = result.await;
        outcome(&mut report, &mut failed, &args.out, "S1 without per-message sync", result)?;
    }
    if run("standby") {
        let result = async { s1_standby(&scale, args.smoke, b1(3, JetStreamSync::Always).await?, &mut report).await };
        let result = result.await;
        outcome(&mut report, &mut failed, &args.out, "S1 with a standby", result)?;
    }

    writeln!(report, "\nThe whole run took {:.0} s.", started.elapsed().as_secs_f64())?;
    writeln!(
        report,
        "\nWhat limits these figures, from profiling, and what to change next: [benchmarks-notes.md](benchmarks-notes.md)."
    )?;
    save(&args.out, &report)?;
    println!("{report}");
    println!("written to {}", args.out.display());
    anyhow::ensure!(failed.is_empty(), "scenarios failed: {}", failed.join(", "));
    Ok(())
}

/// A scenario's end: its failure, if any, in the report (its section says FAILED and why) and in
/// `failed`; then the report as it stands saved to `out`.
fn outcome(
    report: &mut String,
    failed: &mut Vec<String>,
    out: &std::path::Path,
    name: &str,
    result: Result<()>,
) -> Result<()> {
    if let Err(e) = result {
        eprintln!("{name} FAILED: {e:#}");
        writeln!(report, "## {name} · FAILED\n\n{e:#}\n")?;
        failed.push(name.to_owned());
    }
    save(out, report)
}

/// Writes the report as it stands (the run goes on; a later failure keeps what was measured).
fn save(out: &std::path::Path, report: &str) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, report)?;
    Ok(())
}

/// S1: the highest rate sustained end to end with nothing lost, as a ladder.
async fn s1(bench: &mut Bench, b1: f64, b3: f64) -> Result<()> {
    let clients = if bench.smoke { 4 } else { 10 };
    let (table, best) = ladder(bench, clients).await?;
    let r = &mut bench.report;
    writeln!(r, "## S1 · Sustained ingest, end to end\n")?;
    writeln!(
        r,
        "Status reports over 4 gRPC telemetry streams → lighting service (sled, flushed before acknowledging) → outbox → JetStream (syncing every message, as deployed) → gateway (ordered consumer, view, sled) → {clients} WebSocket clients receiving every update (`coalesce=false`). A step counts when the sender kept the pace, every accepted report reached every client within 1.5 s of the load's end, and p99 stayed under 1 s; a step where some had not is marked *late* (they were still on their way behind the backlog: the next run waits until the view holds the stream's last event). The ladder stops at the first step that fails.\n"
    )?;
    writeln!(r, "{table}")?;
    writeln!(
        r,
        "CPU: cores each process kept busy on average while the step's load played (and settled), out of {}; load is this benchmark's sender, clients the process of its WebSocket clients.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    )?;
    writeln!(
        r,
        "- **B1** raw JetStream at the same durability (one server, `sync_interval: always`; publish acknowledged, ordered consumer, 400-byte messages): **{b1:.0} events/s**."
    )?;
    writeln!(
        r,
        "- **B3** raw tonic streaming echo (4 bidirectional streams, 120-byte messages, the size of a status report): **{b3:.0} messages/s** echoed."
    )?;
    writeln!(
        r,
        "- **S1** highest step sustained: **{best:.0} events/s**, {:.1} % of B1 and {:.1} % of B3 (targets: ≥ 50 % of B1 and ≥ 20,000 events/s).\n",
        100.0 * best / b1,
        100.0 * best / b3
    )?;
    Ok(())
}

/// S1 on nats-server's default sync (every 2 minutes, not before each acknowledgement): what
/// per-message sync costs, beside a B1 at that durability.
async fn s1_unsynced(scale: &Scale, smoke: bool, b1: f64, report: &mut String) -> Result<()> {
    let clients = if smoke { 4 } else { 10 };
    println!("S1 without per-message sync");
    let nats = NatsServer::start_synced(JetStreamSync::Default)?;
    let slice = Slice::start_on(nats, tests::test_territory()?, LIGHTING_FLAGS, GATEWAY_FLAGS).await?;
    let mut bench = Bench::on(slice, scale.clone(), String::new(), smoke).await?;
    let (table, best) = ladder(&mut bench, clients).await?;
    writeln!(report, "## S1 without per-message sync\n")?;
    writeln!(
        report,
        "S1 again, on a nats-server with its default sync (every 2 minutes: an event JetStream acknowledged may be lost with the machine's power, not with the process). The domain service's store is flushed before each acknowledgement all the same.\n"
    )?;
    writeln!(report, "{table}")?;
    writeln!(
        report,
        "- **B1** raw JetStream at the same durability (default sync): **{b1:.0} events/s**.\n- Highest step sustained: **{best:.0} events/s**, {:.1} % of B1.\n",
        100.0 * best / b1
    )?;
    Ok(())
}

/// What a standby costs: the S1 ladder on a 3-node NATS cluster (every stream with 3 copies),
/// the lighting service alone, then with `--standby` and its standby running (a write
/// acknowledged once JetStream holds its events and its state, instead of once the local disk
/// does). Same cluster, same durability of the events: the ratio is the guarantee's price.
async fn s1_standby(scale: &Scale, smoke: bool, b1: f64, report: &mut String) -> Result<()> {
    let clients = if smoke { 4 } else { 10 };
    let mut runs = Vec::new();
    for standby in [false, true] {
        println!("S1 on a 3-node cluster, {}", if standby { "with a standby" } else { "alone" });
        let mut flags: Vec<&str> = LIGHTING_FLAGS.iter().copied().chain(["--stream-replicas", "3"]).collect();
        if standby {
            flags.extend(["--standby", "--grpc-addr", "127.0.0.1:0"]);
        }
        let gateway: Vec<&str> = GATEWAY_FLAGS.iter().copied().chain(["--stream-replicas", "3"]).collect();
        let cluster = NatsServer::start_cluster_synced(3, JetStreamSync::Always)?;
        let slice = Slice::start_on(cluster, tests::test_territory()?, &flags, &gateway).await?;
        let second = if standby {
            let store = slice.stores.path().join("lighting-standby");
            let process = slice.start_lighting_instance(
                &store,
                &["--kpi-interval", "60s", "--stream-replicas", "3", "--standby", "--grpc-addr", "127.0.0.1:0"],
            )?;
            process.wait_for_log("standing by", 0)?;
            Some(process)
        } else {
            None
        };
        let mut bench = Bench::on(slice, scale.clone(), String::new(), smoke).await?;
        runs.push(ladder(&mut bench, clients).await?);
        drop(second);
    }
    let (alone, with) = (&runs[0], &runs[1]);
    writeln!(report, "## S1 with a standby · what acknowledging after JetStream costs\n")?;
    writeln!(
        report,
        "S1 again on a 3-node NATS cluster (streams with 3 copies, each node syncing every message as deployed), {clients} clients. First the lighting service alone (a write acknowledged once its sled store is flushed), then with `--standby` and its standby following (a write acknowledged once JetStream holds its events and, in the state bucket, its state).\n"
    )?;
    writeln!(report, "Alone:\n\n{}", alone.0)?;
    writeln!(report, "With a standby:\n\n{}", with.0)?;
    writeln!(
        report,
        "- **B1** raw JetStream on the same kind of cluster (3 copies, syncing every message): **{b1:.0} events/s**.\n- Highest step sustained on the cluster: **{:.0} events/s** alone ({:.1} % of B1), **{:.0} events/s** with a standby ({:.1} % of B1): the standby keeps **{:.1} %**.\n",
        alone.1,
        100.0 * alone.1 / b1,
        with.1,
        100.0 * with.1 / b1,
        if alone.1 > 0.0 { 100.0 * with.1 / alone.1 } else { 0.0 }
    )?;
    Ok(())
}

/// The S1 ladder on `bench`'s system: the table of its steps and the highest step sustained.
async fn ladder(bench: &mut Bench, clients: usize) -> Result<(String, f64)> {
    let mut table = String::from(
        "| offered (events/s) | sent (events/s) | accepted | delivered to each client | asset update latency | CPU: nats · lighting · gateway · load · clients |\n|---|---|---|---|---|---|\n",
    );
    let mut best = 0.0f64;
    for rate in bench.scale.ladder.clone() {
        println!("S1: {rate} events/s");
        // A step whose load could not be played (the system stopped taking reports) fails.
        let run = match bench.run(rate, bench.scale.step, &clients::roles(clients, S1_MEASURING, 0), false).await {
            Ok(run) => run,
            Err(e) => {
                writeln!(table, "| {rate:.0} | FAILED: {e:#} | | | | |")?;
                break;
            }
        };
        let sustained = ladder_row(&mut table, rate, &run)?;
        if sustained {
            best = best.max(rate);
        } else {
            break;
        }
    }
    Ok((table, best))
}

/// Clients that measure in a ladder's step (each receives every update: `coalesce=false`).
const S1_MEASURING: usize = 2;

/// A ladder step's row; whether the step was sustained: the sender kept the pace, every accepted
/// report reached every client, and p99 stayed under 1 s.
fn ladder_row(table: &mut String, rate: f64, run: &Run) -> Result<bool> {
    let Run { sent, seen, dropped, cores } = run;
    // Each accepted report is one streetlight_status delta to every client (uncoalesced).
    let delivered = seen.asset.len() / S1_MEASURING as u64;
    let kept_up = sent.achieved >= 0.95 * rate;
    let complete = delivered == sent.accepted && sent.refused == 0 && *dropped == 0;
    let timely = p99_ms(&seen.asset).is_some_and(|p99| p99 < 1_000.0);
    writeln!(
        table,
        "| {rate:.0} | {:.0} | {} | {delivered}{} | {} | {} |",
        sent.achieved,
        sent.accepted,
        if complete { "" } else { " (late)" },
        summary(&seen.asset),
        cores.all()
    )?;
    Ok(kept_up && complete && timely)
}

/// S2 latencies, S3 fan-out, S4 slow consumers; B2 at the same rates and client counts.
async fn s2_s3_s4(bench: &mut Bench) -> Result<()> {
    let (b2_url, b2_frames) = baselines::broadcast_server().await?;
    let measuring = bench.scale.measuring;
    let duration = bench.scale.step;
    // B2's clients run in a process of their own too; the cores it reports are the broadcast
    // server's (this process) and the clients'.
    let b2 = |rate: f64, clients: usize| {
        let (url, frames) = (b2_url.clone(), b2_frames.clone());
        async move {
            let fleet = clients::spawn(&url, None, &clients::roles(clients, measuring, 0)).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let cpu = || [cpu_seconds(std::process::id()), cpu_seconds(fleet.pid())];
            let (before, start) = (cpu(), Instant::now());
            baselines::play(&frames, rate, duration).await;
            clients::settle().await;
            let (after, wall) = (cpu(), start.elapsed().as_secs_f64());
            let cores = format!("{:.2} · {:.2}", (after[0] - before[0]) / wall, (after[1] - before[1]) / wall);
            anyhow::Ok((fleet.finish().await?.0, cores))
        }
    };

    let mut table = String::from(
        "| events/s | clients | asset updates | alarms | CPU: gateway · clients | B2 (raw broadcast) | CPU: B2 · clients | p99 Vigie / B2 |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut s4_reference = None;
    for rate in bench.scale.latency_rates.clone() {
        for clients in bench.scale.latency_clients.clone() {
            println!("S2: {rate} events/s, {clients} clients");
            let run = bench.run(rate, duration, &clients::roles(clients, measuring, 0), true).await?;
            let (raw, raw_cores) = b2(rate, clients).await?;
            let ratio = match (p99_ms(&run.seen.asset), p99_ms(&raw.asset)) {
                (Some(v), Some(b)) if b > 0.0 => format!("{:.1}", v / b),
                _ => "n/a".into(),
            };
            writeln!(
                table,
                "| {rate:.0} | {clients} | {} | {} | {} | {} | {raw_cores} | {ratio} |",
                summary(&run.seen.asset),
                summary(&run.seen.alarm),
                run.cores.gateway_clients(),
                summary(&raw.asset)
            )?;
            if rate == bench.scale.latency_rates[0] && clients == *bench.scale.latency_clients.last().unwrap_or(&0) {
                s4_reference = Some((clients, run.seen.asset.clone()));
            }
        }
    }
    let r = &mut bench.report;
    writeln!(r, "## S2 · Latency from accept to delivery\n")?;
    writeln!(
        r,
        "From the moment a report was due to be sent (its `observed_at`, so a sender falling behind counts) to its delta on a WebSocket client; {measuring} clients measure, the others read. Clients are the console's kind (asset updates coalesced, at most one per asset per 100 ms; alarms never). One lamp in 50 fails every other round, so alarms are raised throughout. Targets: alarms p99 ≤ 100 ms, asset updates p99 ≤ 250 ms.\n"
    )?;
    writeln!(r, "{table}")?;

    // S3: the most clients with asset updates p99 ≤ 250 ms, against B2 the same way.
    let mut table = String::from(
        "| clients | Vigie asset updates | CPU: gateway · clients | B2 | CPU: B2 · clients |\n|---|---|---|---|---|\n",
    );
    let (mut vigie_best, mut raw_best) = (0usize, 0usize);
    let mut vigie_done = false;
    for clients in bench.scale.fanout_clients.clone() {
        println!("S3: {clients} clients");
        let rate = bench.scale.fanout_rate;
        let vigie = if vigie_done {
            None
        } else {
            Some(bench.run(rate, duration, &clients::roles(clients, measuring, 0), true).await?)
        };
        let (raw, raw_cores) = b2(rate, clients).await?;
        let (vigie_text, vigie_cores) = match &vigie {
            Some(Run { seen, dropped, cores, .. }) => {
                let ok = p99_ms(&seen.asset).is_some_and(|p| p <= 250.0) && *dropped == 0;
                if ok {
                    vigie_best = clients;
                } else {
                    vigie_done = true;
                }
                let dropped = if *dropped > 0 { format!(", {dropped} dropped") } else { String::new() };
                (format!("{}{dropped}", summary(&seen.asset)), cores.gateway_clients())
            }
            None => ("not run (a smaller count failed)".into(), String::new()),
        };
        if p99_ms(&raw.asset).is_some_and(|p| p <= 250.0) {
            raw_best = clients;
        }
        writeln!(table, "| {clients} | {vigie_text} | {vigie_cores} | {} | {raw_cores} |", summary(&raw.asset))?;
    }
    let r = &mut bench.report;
    writeln!(r, "## S3 · Fan-out\n")?;
    writeln!(
        r,
        "{:.0} events/s to a growing number of clients; a count passes when asset updates' p99 ≤ 250 ms and no client was dropped.\n",
        bench.scale.fanout_rate
    )?;
    writeln!(r, "{table}")?;
    writeln!(
        r,
        "- Most clients served within 250 ms p99: **Vigie {vigie_best}**, **B2 {raw_best}** ({}; targets: ≥ 5,000 clients and ≥ 50 % of B2).\n",
        if raw_best > 0 {
            format!("{:.0} % of B2", 100.0 * vigie_best as f64 / raw_best as f64)
        } else {
            "B2 passed no count".into()
        }
    )?;

    // S4: 5 % of the clients stop reading.
    let clients = *bench.scale.latency_clients.last().unwrap_or(&100);
    let stalled = (clients / 20).max(1);
    println!("S4: {clients} clients, {stalled} stalled");
    let rate = bench.scale.latency_rates[0];
    let Run { seen, dropped, .. } =
        bench.run(rate, duration, &clients::roles(clients, measuring, stalled), true).await?;
    let r = &mut bench.report;
    writeln!(r, "## S4 · Slow consumers\n")?;
    writeln!(r, "{rate:.0} events/s to {clients} clients of which {stalled} (5 %) never read after connecting.\n")?;
    writeln!(r, "- The others' asset updates: {}; alarms: {}.", summary(&seen.asset), summary(&seen.alarm))?;
    if let Some((n, reference)) = s4_reference {
        writeln!(r, "- The same load with {n} clients all reading (S2): {}.", summary(&reference))?;
    }
    writeln!(
        r,
        "- Connections closed by the end (stalled clients the gateway gave up on, among others): {dropped}.\n"
    )?;
    Ok(())
}

/// The scaling table: the territory at 1×, 2× and 4× (streetlights registered as more of the
/// benchmark's lamps, each reported once), and at each size the ingest ladder, S2's latencies,
/// and the gateway's memory. At 1×, the console's first load in a real browser.
async fn scaling(bench: &mut Bench) -> Result<()> {
    let pid = bench.gateway_pid()?;
    // Ten consoles of the whole territory: each snapshot is about 550 bytes per streetlight and
    // per alarm (130 MB at 4× by day), and the fleet is connected once every one has arrived.
    let clients = if bench.smoke { 4 } else { 10 };
    let measuring = clients;
    let latency_rate = bench.scale.latency_rates[0];
    let mut table = format!(
        "| streetlights | ingest sustained (events/s) | asset updates at {latency_rate:.0} events/s, {clients} clients | alarms | view (its own estimate) | gateway RSS | RSS per streetlight added |\n|---|---|---|---|---|---|---|\n"
    );
    let mut steps = String::from(
        "| streetlights | offered (events/s) | sent (events/s) | accepted | delivered to each client | asset update latency | CPU: nats · lighting · gateway · load · clients |\n|---|---|---|---|---|---|---|\n",
    );
    let mut first_load = None;
    let mut previous: Option<(usize, u64)> = None;
    for n in bench.scale.scaling_lamps.clone() {
        println!("scaling: {n} streetlights");
        let lamps = bench.grow_to(n).await?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let memory = rss(pid)?;
        let (_, metrics) = tests::http_get(&bench.slice.gateway_addr, "/metrics").await?;
        let view = metric(&metrics, "vigie_gateway_view_bytes").unwrap_or(0);
        if first_load.is_none() {
            println!("scaling: the console's first load on {n} streetlights");
            first_load = Some(console_first_load(bench).await);
        }
        let mut best = 0.0f64;
        for rate in bench.scale.scaling_ladder.clone() {
            println!("scaling: {n} streetlights, {rate} events/s");
            let plan = load::Load { rate, duration: bench.scale.step, alarm_every: 0, streams: 4 };
            let run = bench.run_on(&lamps, plan, &clients::roles(10, S1_MEASURING, 0), false).await?;
            let mut row = String::new();
            let sustained = ladder_row(&mut row, rate, &run)?;
            write!(steps, "| {n} | {}", row.trim_start_matches('|').trim_start())?;
            if !sustained {
                break;
            }
            best = rate;
        }
        println!("scaling: {n} streetlights, latency");
        let plan = load::Load { rate: latency_rate, duration: bench.scale.step, alarm_every: 50, streams: 4 };
        let run = bench.run_on(&lamps, plan, &clients::roles(clients, measuring, 0), true).await?;
        let added = match previous {
            Some((before_n, before_rss)) => format!(
                "{:.2} KiB",
                memory.saturating_sub(before_rss) as f64 / 1024.0 / n.saturating_sub(before_n).max(1) as f64
            ),
            None => "—".into(),
        };
        writeln!(
            table,
            "| {n} | {} | {} | {} | {:.1} MiB | {:.1} MiB | {added} |",
            if best > 0.0 { format!("{best:.0}") } else { "none of the steps".into() },
            summary(&run.seen.asset),
            summary(&run.seen.alarm),
            view as f64 / (1024.0 * 1024.0),
            memory as f64 / (1024.0 * 1024.0)
        )?;
        previous = Some((n, memory));
    }
    let r = &mut bench.report;
    writeln!(r, "## Scaling · the territory at 1×, 2× and 4×\n")?;
    writeln!(
        r,
        "The territory grown to each size (streetlights registered and each reported once), then at that size: the S1 ladder's steps (reports spread over every streetlight, 10 clients receiving every update), and S2's latencies ({clients} console clients, one lamp in 50 failing). Memory is the gateway's after the growth; the view's estimate is its own (`vigie_gateway_view_bytes`). Per event the work should not grow with the territory, and memory should grow in proportion.\n"
    )?;
    writeln!(r, "{table}")?;
    writeln!(r, "The ladder's steps at each size:\n\n{steps}")?;
    writeln!(r, "### The console's first load\n")?;
    writeln!(
        r,
        "A supervisor (the whole territory) opens the console in Chromium (playwright-core, software WebGL) on the territory's first size; `ui-client/tests/first-load.mjs` measures it.\n"
    )?;
    writeln!(r, "{}\n", first_load.unwrap_or_else(|| "not measured (no size ran)".into()))?;
    Ok(())
}

/// The console's first load in a real browser, as a line of the report (or why it was not
/// measured: the console not built, no browser).
async fn console_first_load(bench: &Bench) -> String {
    match first_load(bench).await {
        Ok(text) => text,
        Err(e) => format!("Not measured: {e:#}."),
    }
}

async fn first_load(bench: &Bench) -> Result<String> {
    let ui = tests::repo_root().join("ui-client");
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    for (needed, how) in [
        (ui.join("dist/index.html"), "build the console: cd ui-client && npm ci && npm run build"),
        (ui.join("node_modules/playwright-core"), "cd ui-client && npm ci"),
        (std::path::PathBuf::from(&chromium), "install Chromium (deploy/install-tools.sh --browser)"),
    ] {
        anyhow::ensure!(needed.exists(), "{} is missing ({how})", needed.display());
    }
    let within = Duration::from_secs(300);
    let output = tokio::process::Command::new("node")
        .arg("tests/first-load.mjs")
        .current_dir(&ui)
        .env("VIGIE_URL", format!("http://{}/", bench.slice.gateway_addr))
        .env("VIGIE_LOGIN", tests::SUPERVISOR)
        .env("VIGIE_PASSWORD", tests::TEST_PASSWORD)
        .env("CHROMIUM_PATH", &chromium)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(within, output)
        .await
        .map_err(|_| anyhow::anyhow!("first-load.mjs did not finish within {within:?}"))?
        .context("running node tests/first-load.mjs")?;
    anyhow::ensure!(
        output.status.success(),
        "first-load.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().context("first-load.mjs printed nothing")?;
    let m: serde_json::Value = serde_json::from_str(line).context("first-load.mjs's figures")?;
    // Every figure a number: a missing one is a failure, not a "NaN" in the report.
    for key in [
        "first_contentful_paint_ms",
        "live_ms",
        "assets_drawn_ms",
        "map_idle_ms",
        "snapshot_bytes",
        "snapshot_frames",
        "assets",
        "alarms",
        "heap_bytes",
    ] {
        anyhow::ensure!(m[key].as_f64().is_some_and(f64::is_finite), "first-load.mjs gave no {key}: {m}");
    }
    let ms = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
    Ok(format!(
        "- The login page painted {:.0} ms after navigation (first contentful paint).\n\
         - From the login's click: the link live {:.0} ms later, the streetlights first drawn on the map {:.0} ms later, the map idle (every tile drawn) {:.0} ms later.\n\
         - The snapshot: {:.1} KiB in {} frames ({} assets, {} alarms); the page's JavaScript heap after the load: {:.1} MiB.",
        ms("first_contentful_paint_ms"),
        ms("live_ms"),
        ms("assets_drawn_ms"),
        ms("map_idle_ms"),
        ms("snapshot_bytes") / 1024.0,
        m["snapshot_frames"],
        m["assets"],
        m["alarms"],
        ms("heap_bytes") / (1024.0 * 1024.0)
    ))
}

/// S5: memory per WebSocket client, idle and at 10 updates/s, and for a view of many assets.
/// S5's memory per client, measured first, on a gateway that no earlier scenario has grown (its
/// allocator would reuse what they freed, and show nothing).
async fn s5_clients(bench: &mut Bench) -> Result<(f64, f64)> {
    let pid = bench.gateway_pid()?;
    let clients = bench.scale.memory_clients;
    println!("S5: memory per client");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss(pid)?;
    let fleet = clients::spawn(&bench.ws, Some(&bench.token), &clients::roles(clients, 0, 0)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss(pid)?;
    let plan = load::Load { rate: 10.0, duration: Duration::from_secs(5), alarm_every: 0, streams: 1 };
    let (_, next) = load::play(&bench.channel, &bench.lamps, &plan, bench.next).await?;
    bench.next = next;
    let busy = rss(pid)?;
    fleet.finish().await?;
    let per_idle = idle.saturating_sub(before) as f64 / clients as f64;
    let per_busy = busy.saturating_sub(before) as f64 / clients as f64;
    Ok((per_idle, per_busy))
}

async fn s5(bench: &mut Bench, (per_idle, per_busy): (f64, f64)) -> Result<()> {
    let pid = bench.gateway_pid()?;
    let clients = bench.scale.memory_clients;
    println!("S5: memory of a large view");
    // A view of many assets (S6 measures the view a fresh gateway rebuilds from them; this
    // gateway's memory holds what the earlier scenarios left). The scaling table may have grown
    // it already.
    bench.grow_to(bench.scale.view_assets).await?;
    let r = &mut bench.report;
    writeln!(r, "## S5 · Memory\n")?;
    writeln!(
        r,
        "The gateway's resident memory (VmRSS), before and after; the clients' figures were measured first, on the freshly started gateway.\n"
    )?;
    writeln!(r, "- {clients} idle WebSocket clients: **{:.1} KiB per client** (target ≤ 64 KiB).", per_idle / 1024.0)?;
    writeln!(r, "- The same clients receiving 10 updates/s: {:.1} KiB per client.", per_busy / 1024.0)?;
    writeln!(r, "- The gateway after the scenarios so far: {:.1} MiB.", rss(pid)? as f64 / (1024.0 * 1024.0))?;
    writeln!(r, "- A view of {} streetlights: see S6, whose fresh gateway rebuilds it.\n", bench.view_assets)?;
    Ok(())
}

/// A counter or a sequence in a Prometheus text exposition (see [`tests::metric`]).
fn metric(text: &str, name: &str) -> Option<u64> {
    tests::metric(text, name).map(|v| v as u64)
}

/// Waits until the gateway at `addr` has applied the stream up to `last`.
async fn applied_up_to(addr: &str, last: u64, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let applied = match tests::http_get(addr, "/metrics").await {
            Ok((_, metrics)) => metric(&metrics, "vigie_gateway_applied_seq").unwrap_or(0),
            Err(_) => 0,
        };
        if applied >= last {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the view did not reach {last} within {within:?} ({applied})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// S6: how long a new gateway replica takes to have a current view: replaying the stream, from
/// the latest checkpoint, and started again on its own store.
async fn s6(bench: &mut Bench) -> Result<()> {
    use prost::Message as _;
    let target = bench.scale.rebuild_events;
    println!("S6: filling the stream to {target} events");
    let nats = bench.slice.nats.client_as("lighting").await?;
    let js = async_nats::jetstream::new(nats);
    let mut stream = js.get_stream(proto::subject::EVENTS_STREAM).await?;
    let have = stream.info().await?.state.messages as usize;
    let commune = proto::ids::CommuneId::parse("34172")?;
    let mut acks = Vec::with_capacity(512);
    let wall = std::time::SystemTime::now();
    for i in 0..target.saturating_sub(have) {
        let lamp = proto::ids::AssetId::parse(&bench.lamps[i % bench.lamps.len()])?;
        let report = proto::lighting::StatusReport {
            streetlight_id: lamp.to_string(),
            observed_at: Some((wall + Duration::from_micros(i as u64)).into()),
            status: proto::lighting::LampStatus::Ok as i32,
            power_state: proto::lighting::PowerState::On as i32,
            illuminance_level: 0.8,
            power_consumption_w: 40.0,
            voltage_v: None,
        };
        let event = proto::event::new_event(
            &commune,
            &lamp,
            proto::event::timestamp(wall + Duration::from_micros(i as u64)),
            None,
            proto::v1::event::Payload::StreetlightStatus(proto::lighting::StreetlightStatusReported {
                report: Some(report),
                ..Default::default()
            }),
        );
        let checked = proto::event::check(event)?;
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .message_id(&checked.event.id)
            .payload(checked.event.encode_to_vec().into());
        acks.push(js.send_publish(checked.subject(), publish).await?);
        if acks.len() == 512 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    let last = stream.info().await?.state.last_sequence;
    let events = stream.info().await?.state.messages;
    // The running gateway takes them in, and writes its checkpoints as it goes (every 100,000
    // events by default), as a deployment's replicas would.
    println!("S6: the running gateway taking in {events} events");
    applied_up_to(&bench.slice.gateway_addr, last, Duration::from_secs(600)).await?;
    let (_, metrics) = tests::http_get(&bench.slice.gateway_addr, "/metrics").await?;
    let checkpoint = metric(&metrics, "vigie_gateway_checkpoint_seq").unwrap_or(0);

    // A new replica three ways: replaying the whole stream (checkpoints off), from the latest
    // checkpoint, and the same replica started again on its own store.
    let store = tempfile::tempdir()?;
    let mut args = bench.slice.nats.credentials("gateway");
    args.extend(["--http-addr", "127.0.0.1:0"].map(String::from));
    let start_on = |store: &std::path::Path, extra: &[&str]| {
        let mut args = args.clone();
        args.extend(["--store".to_owned(), store.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        tests::Process::start("vigie-gateway", &args)
    };
    println!("S6: a new replica replaying {events} events");
    let (replay, replay_rss) = {
        let start = Instant::now();
        let gateway = start_on(&store.path().join("replay"), &["--view-checkpoint-every", "0"])?;
        let addr = gateway.wait_for_addr("HTTP listening", 0)?;
        let empty = gateway.pid().map(rss).transpose()?.unwrap_or(0);
        applied_up_to(&addr, last, Duration::from_secs(600)).await?;
        let elapsed = start.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rebuilt = gateway.pid().map(rss).transpose()?.unwrap_or(0);
        (elapsed, (empty, rebuilt))
    };
    println!("S6: a new replica from the checkpoint at {checkpoint}");
    let fresh_store = store.path().join("from-checkpoint");
    let (from_checkpoint, used) = {
        let start = Instant::now();
        let mut gateway = start_on(&fresh_store, &[])?;
        let addr = gateway.wait_for_addr("HTTP listening", 0)?;
        applied_up_to(&addr, last, Duration::from_secs(600)).await?;
        let elapsed = start.elapsed();
        let (_, metrics) = tests::http_get(&addr, "/metrics").await?;
        let used = metric(&metrics, "vigie_gateway_checkpoint_seq").unwrap_or(0);
        let applied = metric(&metrics, "vigie_gateway_events_applied_total").unwrap_or(0);
        gateway.terminate()?;
        (elapsed, (used, applied))
    };
    println!("S6: the same replica started again");
    let (restart, restart_applied) = {
        let start = Instant::now();
        let gateway = start_on(&fresh_store, &[])?;
        let addr = gateway.wait_for_addr("HTTP listening", 0)?;
        applied_up_to(&addr, last, Duration::from_secs(600)).await?;
        let elapsed = start.elapsed();
        let (_, metrics) = tests::http_get(&addr, "/metrics").await?;
        (elapsed, metric(&metrics, "vigie_gateway_events_applied_total").unwrap_or(0))
    };
    let assets = bench.view_assets;
    let r = &mut bench.report;
    writeln!(r, "## S6 · Rebuilding the view\n")?;
    writeln!(
        r,
        "The stream holds {events} events (the run's own, topped up with streetlight reports published directly); the running gateway took them in, writing a checkpoint of its view every 100,000 events (`--view-checkpoint-every`, to the object store every replica reads); its latest was at sequence {checkpoint} of {last}. Then a new gateway replica (empty store), from its start to its view being current (target ≤ 10 s for 1,000,000 events, for a new replica too):\n"
    )?;
    writeln!(r, "| new replica | time to current | events applied |\n|---|---|---|")?;
    writeln!(
        r,
        "| replaying the whole stream (checkpoints off: the baseline) | {:.1} s | {events} ({:.0} events/s) |",
        replay.as_secs_f64(),
        events as f64 / replay.as_secs_f64()
    )?;
    let from = if used.0 > 0 { format!("sequence {}", used.0) } else { "NONE USED: it replayed the stream".into() };
    writeln!(
        r,
        "| **from the latest checkpoint** ({from}), then the events after it | **{:.1} s** | {} |",
        from_checkpoint.as_secs_f64(),
        used.1
    )?;
    writeln!(
        r,
        "| the same replica started again (its own store) | {:.1} s | {restart_applied} |\n",
        restart.as_secs_f64()
    )?;
    let (empty, rebuilt) = replay_rss;
    writeln!(
        r,
        "The view holds {assets} streetlights (S5 registered them and reported each once): the replaying gateway's resident memory is {:.1} MiB, {:.1} MiB at its start, so **{:.2} KiB per asset** (view, store cache, everything).\n",
        rebuilt as f64 / (1024.0 * 1024.0),
        empty as f64 / (1024.0 * 1024.0),
        rebuilt.saturating_sub(empty) as f64 / 1024.0 / assets.max(1) as f64
    )?;
    Ok(())
}
