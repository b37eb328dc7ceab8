//! The fault-injection suite, in the spirit of Jepsen: a workload, a seeded fault schedule, a
//! history, a checker. It runs the real binaries and a real nats-server.
//!
//! - **Workload:** a lamp writer (gRPC `ReportStatus`, one call at a time), and an operator
//!   writing the log book and sending lighting commands over REST (the gateway routes those to
//!   the lighting service). Each records every write and its outcome: acknowledged, refused, or
//!   unknown (a timeout, a lost connection, a server error).
//! - **Faults**, drawn from the seed, each on the lighting service or the gateway: SIGKILL
//!   (started again after a pause, up to 5 s: longer than the stream's duplicate window, 2 s
//!   here), SIGSTOP/SIGCONT long enough to pass timeouts, its TCP link to NATS cut or
//!   black-holed (a [`tests::Link`]), its disk filled then freed (a [`tests::SmallDisk`], when
//!   this machine lets the test mount one); and nats-server stopped and started again. The
//!   harness plays the supervisor: a process that exits is started again.
//! - **Checker**, once the faults stop and the gateway is live at the stream's last sequence:
//!   every acknowledged lamp write is in the stream exactly once, every acknowledged log book
//!   entry and command is in the audit log exactly once, what became of the writes with an
//!   unknown outcome, the time to converge; and a console session that stayed connected (it
//!   resumes after each break) holds what the REST view holds, and never saw `live` in a
//!   heartbeat while the view missed an event stored more than three heartbeats before.
//!
//! The same workload and checker run on a 3-node NATS cluster with the lighting service as an
//! active instance and a standby (`VIGIE_FAULT_CLUSTER_SCHEDULES`, 1 by default): the active
//! instance killed (the standby takes over, the old one comes back as the standby) or paused
//! past its lease (fenced, it exits and the supervisor starts it again), a NATS node killed and
//! started again, the gateway killed or paused.
//!
//! CI runs a short seeded version: one schedule on one node (`VIGIE_FAULT_SCHEDULES`, 1 by
//! default) and one on the cluster; the long mode runs many of each. The long mode writes
//! its table into a file: `VIGIE_FAULT_SCHEDULES=20 VIGIE_FAULT_REPORT=docs/reliability.md
//! cargo test -p tests --test e2e faults -- --nocapture`.

use anyhow::{Context, Result};
use proto::lighting::{
    LampStatus, PowerState, RegisterStreetlightsRequest, ReportStatusRequest, StatusReport, Streetlight,
};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tests::{
    LightingClient, LinkState, LiveClient, NatsServer, Slice, SmallDisk, channel_with_token, http_get_json,
    http_post_json,
};

mod workload;
use workload::{History, SessionLog, Target, lamp_writer, operator_writer, session};

const LAMPS: usize = 20;
/// A write that takes longer has an unknown outcome.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// The gateway's heartbeat in the suite; a session must never see `live` on data older than
/// three of them.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// The stream's duplicate window in the suite: shorter than most outages, so that it never hides
/// an event published twice.
const DUPLICATE_WINDOW: &str = "2s";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Lighting,
    Gateway,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(Part),
    Pause(Part),
    CutLink(Part),
    StallLink(Part),
    FullDisk(Part),
    RestartNats,
    /// On the cluster: a NATS node killed (a machine lost), started again after the pause.
    KillNatsNode(usize),
}

/// Where a schedule runs: one nats-server, one instance of each process (every fault above but
/// the node's); or a 3-node NATS cluster with the lighting service as an active instance and a
/// standby (`--standby`): a killed or paused active instance is taken over by the standby, and a
/// NATS node dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    Single,
    Cluster,
}

/// The lease's time to live on the cluster (the standby takes over this long after the active
/// instance's last renewal).
const LEASE_TTL: &str = "4s";

#[derive(Debug)]
struct Outcome {
    seed: u64,
    topology: Topology,
    faults: Vec<Fault>,
    history: History,
    lamp_missing: usize,
    lamp_doubled: usize,
    /// Unknown-outcome lamp writes found in the stream (they happened, once).
    lamp_unknown_landed: usize,
    notes_missing: usize,
    notes_doubled: usize,
    notes_unknown_landed: usize,
    commands_missing: usize,
    commands_doubled: usize,
    commands_unknown_landed: usize,
    /// Heartbeats that said `live` while the view missed an event stored three heartbeats before.
    live_on_stale: usize,
    live_heartbeats: usize,
    /// Lamps whose value in the session differs from the REST view's.
    session_differs: usize,
    session_connections: usize,
    restarts_by_supervisor: usize,
    converged_in: Duration,
}

/// The disks of the lighting service and the gateway, when this machine lets the test mount
/// them (root): both processes are stopped, their stores moved onto them, and started again.
async fn small_disks(slice: &mut Slice) -> Result<Option<(SmallDisk, SmallDisk)>> {
    slice.lighting.kill()?;
    slice.gateway.kill()?;
    let lighting = SmallDisk::mount_over(&slice.stores.path().join("lighting"), 256 << 20)?;
    let gateway = SmallDisk::mount_over(&slice.stores.path().join("gateway"), 256 << 20)?;
    let from = slice.lighting.restart()?;
    slice.lighting.wait_for_log("gRPC listening", from)?;
    slice.wait_lighting_serving().await?;
    slice.restart_gateway().await?;
    Ok(lighting.zip(gateway))
}

/// The supervisor's round: starts again a process that exited (a service that stops on a store
/// error, say). Returns how many it started.
async fn supervise(slice: &mut Slice, standby: &mut Option<tests::Process>, target: &Target) -> Result<usize> {
    let mut restarted = 0;
    if !slice.lighting.is_running() {
        eprintln!("[faults] the supervisor starts the lighting service again");
        let from = slice.lighting.restart()?;
        // With a standby, it may stand by (the other instance took over).
        if standby.is_none() {
            slice.lighting.wait_for_log("gRPC listening", from)?;
        }
        restarted += 1;
    }
    if let Some(standby) = standby.as_mut()
        && !standby.is_running()
    {
        eprintln!("[faults] the supervisor starts the lighting service's second instance again");
        standby.restart()?;
        restarted += 1;
    }
    if !slice.gateway.is_running() {
        eprintln!("[faults] the supervisor starts the gateway again");
        slice.restart_gateway().await?;
        *target.gateway.lock().unwrap_or_else(|p| p.into_inner()) = slice.gateway_addr.clone();
        restarted += 1;
    }
    Ok(restarted)
}

fn process(slice: &mut Slice, part: Part) -> &mut tests::Process {
    match part {
        Part::Lighting => &mut slice.lighting,
        Part::Gateway => &mut slice.gateway,
    }
}

fn link(slice: &Slice, part: Part) -> Result<&tests::Link> {
    match part {
        Part::Lighting => slice.lighting_link.as_ref(),
        Part::Gateway => slice.gateway_link.as_ref(),
    }
    .context("a linked slice")
}

/// Whether the lighting instance at `addr` answers SERVING on the health service within a second
/// (a standby does not listen; a process that is stopping no longer answers).
async fn serving(addr: &str) -> bool {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
        let request = HealthCheckRequest { service: "vigie.lighting.v1.LightingService".into() };
        anyhow::Ok(HealthClient::new(channel).check(request).await?.into_inner().status == 1)
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), check).await, Ok(Ok(true)))
}

/// The lighting instance `i` on the cluster (0: the slice's, 1: the second one).
fn instance<'a>(
    slice: &'a mut Slice,
    standby: &'a mut Option<tests::Process>,
    i: usize,
) -> Result<&'a mut tests::Process> {
    if i == 0 { Ok(&mut slice.lighting) } else { standby.as_mut().context("the second lighting instance") }
}

/// Which of the lighting service's two instances is the active one: waits for one to answer
/// SERVING (a takeover may be under way), starting again an instance that exited meanwhile.
async fn active_instance(
    slice: &mut Slice,
    standby: &mut Option<tests::Process>,
    target: &Target,
    instances: &[String; 2],
    restarts: &mut usize,
) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        *restarts += supervise(slice, standby, target).await?;
        for (i, addr) in instances.iter().enumerate() {
            if serving(addr).await {
                return Ok(i);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no lighting instance active within 45 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run_schedule(seed: u64, topology: Topology) -> Result<Outcome> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let heartbeat = format!("{}s", HEARTBEAT.as_secs());
    let mut standby = None;
    let instances = [format!("127.0.0.1:{}", tests::free_port()?), format!("127.0.0.1:{}", tests::free_port()?)];
    let (mut slice, disks) = match topology {
        Topology::Single => {
            let mut slice = Slice::start_linked(
                NatsServer::start()?,
                tests::test_territory()?,
                &["--stream-duplicate-window", DUPLICATE_WINDOW],
                &["--stream-duplicate-window", DUPLICATE_WINDOW, "--heartbeat", &heartbeat],
            )
            .await?;
            let disks = small_disks(&mut slice).await?;
            if disks.is_none() {
                eprintln!("[faults {seed}] no full-disk faults: mounting a tmpfs is not allowed here (run as root)");
            }
            (slice, disks)
        }
        Topology::Cluster => {
            let lighting = |addr: &str| -> Vec<String> {
                ["--stream-duplicate-window", DUPLICATE_WINDOW, "--stream-replicas", "3", "--standby"]
                    .into_iter()
                    .chain(["--lease-ttl", LEASE_TTL, "--grpc-addr", addr])
                    .map(String::from)
                    .collect()
            };
            let urls = format!("http://{},http://{}", instances[0], instances[1]);
            let first = lighting(&instances[0]);
            let first: Vec<&str> = first.iter().map(String::as_str).collect();
            let slice = Slice::start_on(
                NatsServer::start_cluster(3)?,
                tests::test_territory()?,
                &first,
                &["--stream-duplicate-window", DUPLICATE_WINDOW, "--heartbeat", &heartbeat, "--stream-replicas", "3"]
                    .into_iter()
                    .chain(["--lighting-url", &urls])
                    .collect::<Vec<_>>(),
            )
            .await?;
            let second = lighting(&instances[1]);
            let second: Vec<&str> = second.iter().map(String::as_str).collect();
            let process = slice.start_lighting_instance(&slice.stores.path().join("lighting-b"), &second)?;
            process.wait_for_log("standing by", 0)?;
            standby = Some(process);
            (slice, None)
        }
    };
    let lamps = (0..LAMPS)
        .map(|i| Streetlight {
            id: format!("EP{i:02}"),
            commune: "34172".into(),
            lat: 43.6,
            lon: 3.82 + i as f64 * 0.002,
            ..Default::default()
        })
        .collect();
    slice.lighting_client().await?.register_streetlights(RegisterStreetlightsRequest { streetlights: lamps }).await?;
    let lighting_addr = match topology {
        Topology::Single => slice.lighting_addr.clone(),
        Topology::Cluster => instances.join(","),
    };
    let target = Arc::new(Target {
        lighting: Mutex::new(lighting_addr),
        gateway: Mutex::new(slice.gateway_addr.clone()),
        token: slice.integrator_token.clone(),
    });
    let history = Arc::new(Mutex::new(History::default()));
    let session_log = Arc::new(Mutex::new(SessionLog::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let lamps = tokio::spawn(lamp_writer(target.clone(), stop.clone(), history.clone()));
    // The session stays until the system has converged.
    let session_stop = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(session(target.clone(), session_stop.clone(), session_log.clone()));
    let operator = {
        let (target, stop, history) = (target.clone(), stop.clone(), history.clone());
        tokio::spawn(operator_writer(target, stop, history, seed))
    };

    let mut faults = Vec::new();
    let mut restarts_by_supervisor = 0;
    for _ in 0..rng.random_range(3..=5) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
        // A process the last fault stopped later (an active instance fenced once a NATS node's
        // loss outlasted half its lease) is started again before the next fault.
        restarts_by_supervisor += supervise(&mut slice, &mut standby, &target).await?;
        let part = if rng.random_bool(0.5) { Part::Lighting } else { Part::Gateway };
        let fault = match (topology, rng.random_range(0..6)) {
            (Topology::Single, 0) | (Topology::Cluster, 0 | 1) => Fault::Kill(part),
            (Topology::Single, 1) | (Topology::Cluster, 2) => Fault::Pause(part),
            (Topology::Single, 2) => Fault::CutLink(part),
            (Topology::Single, 3) => Fault::StallLink(part),
            (Topology::Single, 4) if disks.is_some() => Fault::FullDisk(part),
            (Topology::Single, _) => Fault::RestartNats,
            (Topology::Cluster, _) => Fault::KillNatsNode(rng.random_range(0..3)),
        };
        let down = Duration::from_millis(rng.random_range(300..5000));
        eprintln!("[faults {seed}] {fault:?} for {down:?}");
        faults.push(fault);
        match fault {
            Fault::Kill(Part::Lighting) | Fault::Pause(Part::Lighting) if topology == Topology::Cluster => {
                // The active instance: the standby takes over once the lease lapses (or the
                // killed one, started again, takes its own lease back first); a paused one is
                // fenced and exits on waking, and the supervisor starts it again.
                let restarts = &mut restarts_by_supervisor;
                let active = active_instance(&mut slice, &mut standby, &target, &instances, restarts).await?;
                let this = instance(&mut slice, &mut standby, active)?;
                if matches!(fault, Fault::Kill(_)) {
                    this.kill()?;
                    tokio::time::sleep(down).await;
                    this.restart()?;
                    active_instance(&mut slice, &mut standby, &target, &instances, restarts).await?;
                } else {
                    this.pause()?;
                    tokio::time::sleep(down + WRITE_TIMEOUT).await;
                    this.resume()?;
                }
            }
            Fault::KillNatsNode(node) => {
                slice.nats.kill_node(node)?;
                tokio::time::sleep(down).await;
                slice.nats.start_node(node)?;
            }
            Fault::Kill(part) => {
                process(&mut slice, part).kill()?;
                tokio::time::sleep(down).await;
                match part {
                    Part::Lighting => {
                        let from = slice.lighting.restart()?;
                        slice.lighting.wait_for_log("gRPC listening", from)?;
                    }
                    Part::Gateway => {
                        slice.restart_gateway().await?;
                        *target.gateway.lock().unwrap_or_else(|p| p.into_inner()) = slice.gateway_addr.clone();
                    }
                }
            }
            Fault::Pause(part) => {
                process(&mut slice, part).pause()?;
                // Long enough to pass the writers' timeouts.
                tokio::time::sleep(down + WRITE_TIMEOUT).await;
                process(&mut slice, part).resume()?;
            }
            Fault::CutLink(part) => {
                link(&slice, part)?.set(LinkState::Cut);
                tokio::time::sleep(down).await;
                link(&slice, part)?.set(LinkState::Open);
            }
            Fault::StallLink(part) => {
                // Long enough for the publishes' and requests' timeouts (5 s) to pass.
                link(&slice, part)?.set(LinkState::Stalled);
                tokio::time::sleep(down + Duration::from_secs(5)).await;
                link(&slice, part)?.set(LinkState::Open);
            }
            Fault::FullDisk(part) => {
                let (lighting, gateway) = disks.as_ref().context("disks")?;
                let disk = if part == Part::Lighting { lighting } else { gateway };
                disk.fill()?;
                tokio::time::sleep(down + Duration::from_secs(2)).await;
                disk.free()?;
            }
            Fault::RestartNats => {
                slice.nats.stop()?;
                tokio::time::sleep(down).await;
                slice.nats.restart()?;
            }
        }
        restarts_by_supervisor += supervise(&mut slice, &mut standby, &target).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    lamps.await?;
    operator.await?;

    // Convergence: the services' outboxes have published every acknowledged write (a relay
    // may still be backing off after a NATS restart), and the gateway is live and current with
    // the stream. Past 60 s, what is still missing is reported as lost.
    let history = std::mem::take(&mut *history.lock().unwrap_or_else(|p| p.into_inner()));
    let started = Instant::now();
    let content = loop {
        restarts_by_supervisor += supervise(&mut slice, &mut standby, &target).await?;
        let content = tests::read_events_stream(&slice.nats).await?;
        let (status, health) = http_get_json(&slice.gateway_addr, "/health").await?;
        let current = status == 200 && health["applied_seq"].as_u64() == Some(content.last);
        let published = history.lamp_acked.iter().all(|id| content.ids.contains_key(id));
        if current && (published || started.elapsed() >= Duration::from_secs(60)) {
            break content;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(90),
            "no convergence in 90 s: {health}, stream at {}",
            content.last
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let converged_in = started.elapsed();

    let acked: HashSet<&String> = history.lamp_acked.iter().collect();
    let ids = &content.ids;
    let lamp_missing = history.lamp_acked.iter().filter(|id| !ids.contains_key(*id)).count();
    let lamp_doubled = history.lamp_acked.iter().filter(|id| ids.get(*id).is_some_and(|n| *n > 1)).count();
    // Lamp status events no acknowledged write produced: writes of unknown outcome that happened.
    // (Every acknowledged write is among the status events read: else the count below would
    // check nothing.)
    anyhow::ensure!(
        history.lamp_acked.iter().filter(|id| ids.contains_key(*id)).all(|id| content.status_ids.contains(id)),
        "acknowledged lamp writes found in the stream are not counted among its status events"
    );
    let lamp_unknown_landed = content.status_ids.iter().filter(|id| !acked.contains(id)).count();

    let count =
        async |action: &str, key: &dyn Fn(&serde_json::Value) -> Option<String>| -> Result<HashMap<String, usize>> {
            let (_, audit) =
                http_get_json(&slice.gateway_addr, &format!("/api/v1/audit?action={action}&limit=10000")).await?;
            let mut seen: HashMap<String, usize> = HashMap::new();
            for entry in audit["items"].as_array().into_iter().flatten() {
                if let Some(k) = key(entry) {
                    *seen.entry(k).or_default() += 1;
                }
            }
            Ok(seen)
        };
    let notes = count("note", &|e| e["details"]["text"].as_str().map(str::to_owned)).await?;
    let commands = count("command", &|e| e["target"].as_str().map(str::to_owned)).await?;
    let judge = |acked: &[String], seen: &HashMap<String, usize>| {
        let acked_set: HashSet<&String> = acked.iter().collect();
        let missing = acked.iter().filter(|k| !seen.contains_key(*k)).count();
        let doubled = seen.values().filter(|n| **n > 1).count();
        let unknown_landed = seen.keys().filter(|k| !acked_set.contains(k)).count();
        (missing, doubled, unknown_landed)
    };
    let (notes_missing, notes_doubled, notes_unknown_landed) = judge(&history.notes_acked, &notes);
    let (commands_missing, commands_doubled, commands_unknown_landed) = judge(&history.commands_acked, &commands);

    // The session: it reaches the view's sequence (a heartbeat says so), never saw live on
    // stale data, and holds what the view holds.
    // (Not reaching it is judged below, with the rest of the session.)
    let _ = tests::eventually("the session at the view's sequence", HEARTBEAT * 5, || async {
        Ok((session_log.lock().unwrap_or_else(|p| p.into_inner()).seq >= content.last).then_some(()))
    })
    .await;
    session_stop.cancel();
    watcher.await?;
    let session_log = std::mem::take(&mut *session_log.lock().unwrap_or_else(|p| p.into_inner()));
    // The server's clock against this process's (under the clock checks, libfaketime shifts
    // ours, not nats-server's): how much later an acknowledged write was seen here than stored
    // there, at the median.
    let mut skews: Vec<i128> = history
        .lamp_acked
        .iter()
        .zip(&history.lamp_acked_at)
        .filter_map(|(id, at)| Some(nanos(*at) - nanos(*content.published_by_id.get(id)?)))
        .collect();
    skews.sort_unstable();
    let skew = skews.get(skews.len() / 2).copied().unwrap_or(0);
    let mut live_on_stale = 0;
    let mut live_heartbeats = 0;
    for (at, seq, live) in &session_log.heartbeats {
        if !live {
            continue;
        }
        live_heartbeats += 1;
        // The first event the view had not applied, and when it was stored.
        if let Some((missed, stored)) = content.published.range(seq + 1..).next()
            && nanos(*stored) + skew + i128::try_from((HEARTBEAT * 3).as_nanos()).unwrap_or(i128::MAX) < nanos(*at)
        {
            live_on_stale += 1;
            eprintln!("[faults {seed}] live at {at:?} on sequence {seq}, but {missed} was stored at {stored:?}");
        }
    }
    let (_, assets) = http_get_json(&slice.gateway_addr, "/api/v1/assets?domain=lighting").await?;
    let view: BTreeMap<String, f64> = assets["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a["id"].as_str()?.to_owned(), a["details"]["power_consumption_w"].as_f64()?)))
        .collect();
    let session_differs = view.iter().filter(|(id, power)| session_log.lamps.get(*id) != Some(power)).count()
        + session_log.lamps.keys().filter(|id| !view.contains_key(*id)).count();
    eprintln!(
        "[faults {seed}] stream at {}, converged in {converged_in:?}: lamps {} acked, {} unknown; notes {} acked, {} unknown; commands {} acked, {} unknown; session {} connections, {} resumed, {} snapshots",
        content.last,
        history.lamp_acked.len(),
        history.lamp_unknown,
        history.notes_acked.len(),
        history.notes_unknown,
        history.commands_acked.len(),
        history.commands_unknown,
        session_log.connections,
        session_log.resumed,
        session_log.snapshots,
    );
    drop(standby);
    drop(slice);
    drop(disks);
    Ok(Outcome {
        seed,
        topology,
        faults,
        history,
        lamp_missing,
        lamp_doubled,
        lamp_unknown_landed,
        notes_missing,
        notes_doubled,
        notes_unknown_landed,
        commands_missing,
        commands_doubled,
        commands_unknown_landed,
        live_on_stale,
        live_heartbeats,
        session_differs,
        session_connections: session_log.connections,
        restarts_by_supervisor,
        converged_in,
    })
}

/// Nanoseconds since 1970 (negative before).
fn nanos(t: SystemTime) -> i128 {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
    }
}

fn table(outcomes: &[Outcome]) -> String {
    let mut text = String::from(
        "| seed | system | faults | lamp writes acked / refused / unknown | lost | doubled | unknown that landed | log book acked / unknown | lost | doubled | unknown that landed | commands acked / unknown | lost | doubled | unknown that landed | `live` on stale data / live heartbeats | session differs from view (lamps) | session connections | restarts by supervisor | converged in |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let h = &o.history;
        text.push_str(&format!(
            "| {} | {} | {} | {} / {} / {} | {} | {} | {} | {} / {} | {} | {} | {} | {} / {} | {} | {} | {} | {} / {} | {} | {} | {} | {:.1} s |\n",
            o.seed,
            match o.topology {
                Topology::Single => "one node",
                Topology::Cluster => "3 nodes, standby",
            },
            o.faults.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", "),
            h.lamp_acked.len(),
            h.lamp_refused,
            h.lamp_unknown,
            o.lamp_missing,
            o.lamp_doubled,
            o.lamp_unknown_landed,
            h.notes_acked.len(),
            h.notes_unknown,
            o.notes_missing,
            o.notes_doubled,
            o.notes_unknown_landed,
            h.commands_acked.len(),
            h.commands_unknown,
            o.commands_missing,
            o.commands_doubled,
            o.commands_unknown_landed,
            o.live_on_stale,
            o.live_heartbeats,
            o.session_differs,
            o.session_connections,
            o.restarts_by_supervisor,
            o.converged_in.as_secs_f64(),
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_fault_schedules_lose_nothing_acknowledged_and_double_nothing() -> Result<()> {
    let schedules: u64 = std::env::var("VIGIE_FAULT_SCHEDULES").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let first_seed: u64 = std::env::var("VIGIE_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let _alone = tests::HEAVY.lock().await;
    let cluster_schedules: u64 =
        std::env::var("VIGIE_FAULT_CLUSTER_SCHEDULES").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut outcomes = Vec::new();
    for seed in first_seed..first_seed + schedules {
        outcomes.push(run_schedule(seed, Topology::Single).await.with_context(|| format!("schedule {seed}"))?);
    }
    for seed in first_seed..first_seed + cluster_schedules {
        let outcome = run_schedule(seed, Topology::Cluster).await;
        outcomes.push(outcome.with_context(|| format!("schedule {seed} on the cluster"))?);
    }
    let table = table(&outcomes);
    eprintln!("{table}");
    if let Ok(path) = std::env::var("VIGIE_FAULT_REPORT") {
        let path = tests::repo_root().join(path);
        let text = format!(
            "# Reliability under faults\n\nWritten by the fault-injection suite (`tests/tests/e2e/faults.rs`, its header says how it works): {schedules} seeded schedules from seed {first_seed}, each on a fresh system (nats-server, the lighting service, the gateway, each process reaching NATS through a link the suite cuts or stalls, their stores on small disks it fills), and {cluster_schedules} on a 3-node NATS cluster with the lighting service as an active instance and a standby (the active instance killed or paused, a NATS node killed, the gateway killed or paused), with a lamp writer over gRPC, an operator writing the log book and sending commands over REST, and a console session, while the faults run. The stream's duplicate window is {DUPLICATE_WINDOW}, shorter than most outages, so it hides nothing; the heartbeat is {} s.\n\n\"Lost\" and \"doubled\" count acknowledged writes and must be 0; an unknown outcome (a timeout, a lost connection, a server error) may or may not have happened, and when it did it is there once. \"`live` on stale data\" counts heartbeats that said `live` while the view missed an event stored more than three heartbeats earlier (must be 0); the session, connected all along (resuming after each break), must hold what the REST view holds.\n\n{table}",
            HEARTBEAT.as_secs()
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    for o in &outcomes {
        let h = &o.history;
        let seed = o.seed;
        assert!(h.lamp_acked.len() > 10, "seed {seed}: the lamp writer hardly wrote ({} acked)", h.lamp_acked.len());
        assert!(
            h.notes_acked.len() > 5,
            "seed {seed}: the log book writer hardly wrote ({} acked)",
            h.notes_acked.len()
        );
        assert!(!h.commands_acked.is_empty(), "seed {seed}: no command acknowledged");
        assert_eq!((o.lamp_missing, o.lamp_doubled), (0, 0), "seed {seed}: acknowledged lamp writes lost or doubled");
        assert_eq!((o.notes_missing, o.notes_doubled), (0, 0), "seed {seed}: log book entries lost or doubled");
        assert_eq!((o.commands_missing, o.commands_doubled), (0, 0), "seed {seed}: commands lost or doubled");
        assert!(o.lamp_unknown_landed <= h.lamp_unknown, "seed {seed}: more lamp events than writes");
        assert!(o.notes_unknown_landed <= h.notes_unknown, "seed {seed}: more notes than writes");
        assert!(o.commands_unknown_landed <= h.commands_unknown, "seed {seed}: more commands than sent");
        assert!(o.live_heartbeats > 0, "seed {seed}: the session never saw a live heartbeat");
        assert_eq!(o.live_on_stale, 0, "seed {seed}: a session saw `live` on stale data");
        assert_eq!(o.session_differs, 0, "seed {seed}: the session does not hold what the view holds");
    }
    Ok(())
}
