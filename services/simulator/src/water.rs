//! The water network's field: plays the territory's hydraulic time series (SCADA pressures, flows
//! and tank level at 5-minute steps, with the real leak schedule in them) as sensor readings, with
//! measurement noise; adds quality probes with a daily chlorine cycle and a chlorine-drop
//! incident; can stage a burst on a pipe, which stops once valves isolate it; and acts as the
//! valve controller.
//!
//! Time: the series' civil date-times are moved by a whole number of days so that the replay's
//! start falls on `data_start` at the same local time of day; nights stay nights and weekdays
//! keep their rhythm. The [`SimClock`] replays the recent past ×N, then runs in real time.

use anyhow::Context;
use proto::water::valve_controller_message::Message as ToService;
use proto::water::water_service_client::WaterServiceClient;
use proto::water::{
    Reading, RegisterSensorsRequest, Sensor, ValveAction, ValveControllerHello, ValveControllerMessage,
    ValveInstruction, ValveResult,
};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use water::network::{LinkKind, Network};

use crate::transport::SimClock;

type Client = WaterServiceClient<runtime::grpc_auth::AuthChannel>;

#[derive(Debug, Clone)]
pub struct WaterSettings {
    pub url: String,
    pub grpc: crate::GrpcAccess,
    pub time_zone: jiff::tz::TimeZone,
    /// The series' day that the replay's start falls on.
    pub data_start: Option<jiff::civil::Date>,
    /// Measurement noise, as a multiple of the default (0: the series as they are).
    pub noise: f64,
    /// Simulated time after the start when the chlorine incident begins.
    pub chlorine_drop_after: Option<Duration>,
    /// Simulated time after the start when a burst begins, and on which pipe.
    pub burst_after: Option<Duration>,
    pub burst_pipe: Option<String>,
    pub seed: u64,
}

/// The series, row by row.
struct Series {
    /// Civil date-time of each row (the data set's clock).
    times: Vec<jiff::civil::DateTime>,
    /// (sensor id, measure, unit, column of values).
    columns: Vec<(String, &'static str, &'static str, Vec<f64>)>,
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_string(&mut text)
            .with_context(|| format!("decompressing {}", path.display()))?;
        Ok(text)
    } else {
        String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))
    }
}

/// Reads `timestamp,<sensor>,...` CSV files with the same rows.
fn read_series(dir: &Path, files: &[(&str, &'static str, &'static str)]) -> anyhow::Result<Series> {
    let mut times: Vec<jiff::civil::DateTime> = Vec::new();
    let mut columns = Vec::new();
    for (name, measure, unit) in files {
        let path = dir.join(name);
        let text = read_text(&path)?;
        let mut lines = text.lines();
        let header: Vec<String> =
            lines.next().context("empty file")?.split(',').skip(1).map(|s| s.trim().to_owned()).collect();
        let mut values: Vec<Vec<f64>> = vec![Vec::new(); header.len()];
        for (i, line) in lines.enumerate() {
            let bad = |what: String| anyhow::anyhow!("{}, line {}: {what}", path.display(), i + 2);
            let mut fields = line.split(',');
            let stamp = fields.next().unwrap_or_default();
            let civil: jiff::civil::DateTime =
                stamp.get(..19).unwrap_or_default().parse().map_err(|e| bad(format!("time {stamp:?}: {e}")))?;
            if columns.is_empty() {
                times.push(civil);
            } else if times.get(i) != Some(&civil) {
                return Err(bad(format!("row time {civil} differs from the other files'")));
            }
            for (k, field) in fields.enumerate() {
                let v: f64 = field.trim().parse().map_err(|_| bad(format!("{field:?} is not a number")))?;
                values.get_mut(k).ok_or_else(|| bad("more values than columns".into()))?.push(v);
            }
        }
        for (id, column) in header.into_iter().zip(values) {
            if column.len() != times.len() {
                anyhow::bail!("{}: column {id} has {} values for {} rows", path.display(), column.len(), times.len());
            }
            columns.push((id, *measure, *unit, column));
        }
    }
    if times.len() < 2 {
        anyhow::bail!("{}: fewer than two rows", dir.display());
    }
    Ok(Series { times, columns })
}

/// The staged burst: where, how big, and what each pressure sensor feels.
struct Burst {
    pipe: String,
    starts_unix: i64,
    /// Sensor -> pressure drop, m.
    drops: HashMap<String, f64>,
    /// Meter -> added flow, m³/h.
    added_flow: HashMap<String, f64>,
}

/// A burst's flow, m³/h, and its pressure drop next to it, m (falling off over a few hundred metres).
const BURST_FLOW: f64 = 60.0;
const BURST_DROP_M: f64 = 15.0;
const BURST_FALLOFF_M: f64 = 300.0;

/// Distances along pipes (not through pumps or valves) from a node, metres.
fn pipe_distances(network: &Network, from: &str) -> HashMap<String, f64> {
    let mut adjacent: HashMap<&str, Vec<(&str, f64)>> = HashMap::new();
    for l in network.links.iter().filter(|l| l.kind == LinkKind::Pipe) {
        adjacent.entry(&l.from).or_default().push((&l.to, l.length_m));
        adjacent.entry(&l.to).or_default().push((&l.from, l.length_m));
    }
    let mut best: HashMap<String, f64> = HashMap::new();
    // Dijkstra with integer centimetres for ordering.
    let mut heap = BinaryHeap::new();
    heap.push(std::cmp::Reverse((0u64, from.to_owned())));
    while let Some(std::cmp::Reverse((d, node))) = heap.pop() {
        if best.contains_key(&node) {
            continue;
        }
        best.insert(node.clone(), d as f64 / 100.0);
        for (next, length) in adjacent.get(node.as_str()).into_iter().flatten() {
            if !best.contains_key(*next) {
                heap.push(std::cmp::Reverse((d + (length * 100.0) as u64, (*next).to_owned())));
            }
        }
    }
    best
}

/// The default burst pipe: the widest pipe at a pressure sensor of the largest metered area.
fn default_burst_pipe(network: &Network, pressure_sensors: &[String], meters: &[String]) -> Option<String> {
    let refs: Vec<&str> = meters.iter().map(String::as_str).collect();
    let dmas = water::dma::derive(network, &refs).ok()?;
    let largest = dmas.first()?;
    network
        .links
        .iter()
        .filter(|l| l.kind == LinkKind::Pipe)
        .filter(|l| pressure_sensors.contains(&l.from) || pressure_sensors.contains(&l.to))
        .filter(|l| network.node_position(&l.from).is_some_and(|i| largest.nodes.contains(&i)))
        .max_by(|a, b| a.diameter_mm.total_cmp(&b.diameter_mm).then(b.id.cmp(&a.id)))
        .map(|l| l.id.clone())
}

fn plan_burst(
    network: &Network,
    pipe: &str,
    starts_unix: i64,
    series: &Series,
    meters: &[String],
) -> anyhow::Result<Burst> {
    let link = network.link(pipe).with_context(|| format!("--water-burst-pipe {pipe:?} is not in the network"))?;
    let refs: Vec<&str> = meters.iter().map(String::as_str).collect();
    let dmas = water::dma::derive(network, &refs).map_err(anyhow::Error::msg)?;
    let zones = water::zones::metering_zones(network, &dmas, meters);
    let from = network.node_position(&link.from).context("the burst pipe's node is unknown")?;
    let zone = zones
        .iter()
        .find(|z| z.dmas.iter().any(|id| dmas.iter().any(|d| d.id == *id && d.nodes.contains(&from))))
        .context("the burst pipe is in no metered area")?;
    let inflows: Vec<&String> = zone.meters.iter().filter(|(_, sign)| *sign > 0.0).map(|(id, _)| id).collect();
    if inflows.is_empty() {
        anyhow::bail!("the burst pipe's zone has no metered inflow");
    }
    let distances = pipe_distances(network, &link.from);
    let drops = series
        .columns
        .iter()
        .filter(|(_, measure, _, _)| *measure == "pressure")
        .filter_map(|(id, _, _, _)| {
            distances.get(id).map(|d| (id.clone(), BURST_DROP_M * (-d / BURST_FALLOFF_M).exp()))
        })
        .collect();
    let added_flow = inflows.iter().map(|id| ((*id).clone(), BURST_FLOW / inflows.len() as f64)).collect();
    Ok(Burst { pipe: pipe.to_owned(), starts_unix, drops, added_flow })
}

/// Quality probes: at the tank(s) and at the first and last pressure sensors' nodes.
fn quality_probes(network: &Network, series: &Series) -> Vec<Sensor> {
    let mut nodes: Vec<String> =
        network.nodes.iter().filter(|n| n.tank_levels_m.is_some()).map(|n| n.id.clone()).collect();
    let pressures: Vec<&String> =
        series.columns.iter().filter(|(_, m, _, _)| *m == "pressure").map(|(id, _, _, _)| id).collect();
    nodes.extend(pressures.first().map(|s| (*s).clone()));
    nodes.extend(pressures.last().map(|s| (*s).clone()));
    nodes.dedup();
    nodes
        .into_iter()
        .map(|node| Sensor {
            id: format!("Q-{node}"),
            element_id: node,
            measures: ["freeChlorine", "turbidity", "pH", "conductivity", "temperature"].map(String::from).to_vec(),
            ..Default::default()
        })
        .collect()
}

/// A quality value at local hour `hour` (the chlorine residual falls at night as water ages).
fn quality_value(measure: &str, hour: f64, rng: &mut impl Rng, noise: f64) -> f64 {
    let cycle = (std::f64::consts::TAU * (hour - 14.0) / 24.0).cos();
    let jitter =
        |rng: &mut dyn rand::RngCore, sd: f64| (rng.random_range(-1.0..1.0) + rng.random_range(-1.0..1.0)) * sd * noise;
    match measure {
        "freeChlorine" => (0.35 + 0.08 * cycle + jitter(rng, 0.01)).max(0.0),
        "turbidity" => (0.3 + jitter(rng, 0.05)).abs(),
        "pH" => 7.7 + jitter(rng, 0.03),
        "conductivity" => 600.0 + jitter(rng, 8.0),
        _ => 17.0 + 1.5 * cycle + jitter(rng, 0.1),
    }
}

/// The chlorine residual during the incident: down to 0.04 mg/L over 30 minutes, two hours there,
/// back over 30 minutes. `None` outside it.
fn chlorine_incident(since_s: i64) -> Option<f64> {
    let ramp = 1800.0;
    let t = since_s as f64;
    match t {
        t if t < 0.0 => None,
        t if t < ramp => Some(0.35 - (0.35 - 0.04) * t / ramp),
        t if t < ramp + 7200.0 => Some(0.04),
        t if t < 2.0 * ramp + 7200.0 => Some(0.04 + (0.35 - 0.04) * (t - ramp - 7200.0) / ramp),
        _ => None,
    }
}

pub async fn run(
    settings: WaterSettings,
    water_dir: &Path,
    clock: SimClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let network = Network::read(&water_dir.join("L-TOWN.inp"))?;
    let scada = water_dir.join("scada");
    let series = read_series(
        &scada,
        &[("pressures.csv.gz", "pressure", "m"), ("flows.csv", "flow", "m3/h"), ("levels.csv", "level", "m")],
    )?;
    let first_day = series.times[0].date();
    let last_day = series.times[series.times.len() - 1].date();
    let data_start = settings.data_start.unwrap_or(first_day);
    if data_start < first_day || data_start > last_day {
        anyhow::bail!("--water-data-start {data_start}: the series run from {first_day} to {last_day}");
    }
    let start_unix = clock.now_unix() as i64;
    let start_local = jiff::Timestamp::from_second(start_unix)?.to_zoned(settings.time_zone.clone());
    // Whole days between the series' clock and the territory's.
    let shift_days = (start_local.date() - data_start).get_days();
    let to_unix = |civil: jiff::civil::DateTime| -> Option<i64> {
        let moved = civil.checked_add(jiff::Span::new().days(shift_days)).ok()?;
        Some(moved.to_zoned(settings.time_zone.clone()).ok()?.timestamp().as_second())
    };
    let mut next_row = series.times.iter().position(|t| to_unix(*t).is_some_and(|u| u >= start_unix)).unwrap_or(0);
    tracing::info!(
        from = %series.times[next_row],
        rows = series.times.len() - next_row,
        sensors = series.columns.len(),
        "water series: replaying from this row"
    );

    let mut sensors: Vec<Sensor> = series
        .columns
        .iter()
        .map(|(id, measure, _, _)| Sensor {
            id: id.clone(),
            element_id: id.clone(),
            measures: vec![(*measure).to_owned()],
            ..Default::default()
        })
        .collect();
    let probes = quality_probes(&network, &series);
    sensors.extend(probes.iter().cloned());
    let meters: Vec<String> =
        series.columns.iter().filter(|(_, m, _, _)| *m == "flow").map(|(id, _, _, _)| id.clone()).collect();
    let pressure_ids: Vec<String> =
        series.columns.iter().filter(|(_, m, _, _)| *m == "pressure").map(|(id, _, _, _)| id.clone()).collect();
    let burst = match settings.burst_after {
        Some(after) => {
            let pipe = match &settings.burst_pipe {
                Some(p) => p.clone(),
                None => default_burst_pipe(&network, &pressure_ids, &meters).context("no pipe for the burst")?,
            };
            let plan = plan_burst(&network, &pipe, start_unix + after.as_secs() as i64, &series, &meters)?;
            tracing::info!(pipe = %plan.pipe, after = ?after, flow = BURST_FLOW, "a burst is staged");
            Some(plan)
        }
        None => None,
    };
    let chlorine_from = settings.chlorine_drop_after.map(|d| start_unix + d.as_secs() as i64);
    let incident_probe = probes.first().map(|p| p.id.clone());

    let channel = crate::connect(&settings.url, "water", &settings.grpc, &shutdown).await?;
    let mut client = WaterServiceClient::new(channel).max_encoding_message_size(proto::MAX_GRPC_MESSAGE_BYTES);
    let request = || {
        let mut client = client.clone();
        let sensors = sensors.clone();
        async move { client.register_sensors(RegisterSensorsRequest { sensors }).await }
    };
    let answer = crate::until_available(request).await.context("registering the water sensors")?.into_inner();
    tracing::info!(registered = answer.registered, unchanged = answer.unchanged, "water sensors registered");

    let closed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let controller = tokio::spawn(controller(
        client.clone(),
        Arc::new(network.links.iter().map(|l| (l.id.clone(), l.kind)).collect()),
        closed.clone(),
        settings.seed,
        shutdown.clone(),
    ));
    let network = Arc::new(network);
    let mut rng = rand::rngs::StdRng::seed_from_u64(settings.seed.wrapping_add(7));
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut accepted, mut refused) = (0u64, 0u64);
    let mut burst_announced = (false, false);
    let mut last_log = tokio::time::Instant::now();
    while next_row < series.times.len() {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let now = clock.now_unix() as i64;
        let mut readings = Vec::new();
        while next_row < series.times.len() {
            let Some(at) = to_unix(series.times[next_row]) else {
                next_row += 1;
                continue;
            };
            if at > now {
                break;
            }
            let bursting = burst.as_ref().filter(|b| at >= b.starts_unix).filter(|b| {
                let shut = closed.lock().unwrap_or_else(|p| p.into_inner()).clone();
                network.is_supplied(&b.pipe, &shut)
            });
            match (&burst, bursting.is_some(), burst_announced) {
                (Some(b), true, (false, _)) => {
                    tracing::info!(pipe = %b.pipe, "burst: water escapes");
                    burst_announced.0 = true;
                }
                (Some(b), false, (true, false)) => {
                    tracing::info!(pipe = %b.pipe, "burst isolated: the segment no longer loses water");
                    burst_announced.1 = true;
                }
                _ => {}
            }
            let timestamp = Some(prost_types::Timestamp { seconds: at, nanos: 0 });
            for (id, measure, unit, values) in &series.columns {
                let mut value = values[next_row];
                if let Some(b) = bursting {
                    value -= b.drops.get(id).copied().unwrap_or(0.0);
                    value += b.added_flow.get(id).copied().unwrap_or(0.0);
                }
                let sd = match *measure {
                    "pressure" => 0.05,
                    "flow" => 0.005 * value.abs(),
                    _ => 0.0,
                };
                value += (rng.random_range(-1.0..1.0) + rng.random_range(-1.0..1.0)) * sd * settings.noise;
                readings.push(Reading {
                    sensor_id: id.clone(),
                    observed_at: timestamp,
                    measure: (*measure).to_owned(),
                    value: (value * 100.0).round() / 100.0,
                    unit: (*unit).to_owned(),
                });
            }
            // Quality probes report every 15 minutes.
            if next_row % 3 == 0 {
                let hour = f64::from(series.times[next_row].hour()) + f64::from(series.times[next_row].minute()) / 60.0;
                for probe in &probes {
                    for measure in &probe.measures {
                        let mut value = quality_value(measure, hour, &mut rng, settings.noise);
                        if measure == "freeChlorine"
                            && Some(&probe.id) == incident_probe.as_ref()
                            && let Some(dropped) = chlorine_from.and_then(|from| chlorine_incident(at - from))
                        {
                            value = dropped;
                        }
                        let unit = water::quality::Measure::from_name(measure).map(|m| m.unit()).unwrap_or_default();
                        readings.push(Reading {
                            sensor_id: probe.id.clone(),
                            observed_at: timestamp,
                            measure: measure.clone(),
                            value: (value * 1000.0).round() / 1000.0,
                            unit: unit.to_owned(),
                        });
                    }
                }
            }
            next_row += 1;
        }
        if readings.is_empty() {
            continue;
        }
        match client.stream_readings(futures::stream::iter(readings)).await {
            Ok(summary) => {
                let summary = summary.into_inner();
                accepted += summary.accepted;
                refused += summary.refused;
                for error in summary.errors.iter().take(3) {
                    tracing::warn!(index = error.index, message = %error.message, "reading refused");
                }
            }
            Err(status) => tracing::warn!(code = ?status.code(), message = status.message(), "readings stream failed"),
        }
        if last_log.elapsed() > Duration::from_secs(30) {
            last_log = tokio::time::Instant::now();
            tracing::info!(accepted, refused, row = %series.times[next_row.min(series.times.len() - 1)], "water readings");
        }
    }
    if next_row >= series.times.len() {
        tracing::info!("the water series have ended; no more readings");
        shutdown.cancelled().await;
    }
    tracing::info!(accepted, refused, "water simulation stopped");
    let _ = controller.await;
    Ok(())
}

/// The valve controller: operates the valves the service asks for after a realistic delay, and
/// reports. An unknown link or a pump is refused.
async fn controller(
    client: Client,
    links: Arc<BTreeMap<String, LinkKind>>,
    closed: Arc<Mutex<HashSet<String>>>,
    seed: u64,
    shutdown: CancellationToken,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(11));
    let hello = || ValveControllerMessage {
        message: Some(ToService::Hello(ValveControllerHello { controller_id: "vigie-simulator".into() })),
    };
    let open = |outbound| {
        let mut client = client.clone();
        async move { client.valve_controller_session(outbound).await }
    };
    // The valve moves after the field's delay (at ×2000, a second is half an hour of the
    // network's time: the burst must not look isolated before the command is applied).
    let answer = |instruction: ValveInstruction| {
        let delay = Duration::from_millis(rng.random_range(300..1200));
        let (links, closed) = (links.clone(), closed.clone());
        let operated: Box<dyn FnOnce() -> ValveControllerMessage + Send> = Box::new(move || {
            let result = operate(&links, &closed, &instruction);
            tracing::info!(link = %instruction.link_id, applied = result.applied, "valve operated");
            ValveControllerMessage { message: Some(ToService::Result(result)) }
        });
        (delay, operated)
    };
    crate::field_controller::run("valve controller", hello, open, answer, shutdown).await
}

fn operate(links: &BTreeMap<String, LinkKind>, closed: &Mutex<HashSet<String>>, i: &ValveInstruction) -> ValveResult {
    let refuse = |reason: &str| ValveResult { command_id: i.command_id.clone(), applied: false, reason: reason.into() };
    match links.get(&i.link_id) {
        None => return refuse("no such link in this network"),
        Some(LinkKind::Pump) => return refuse("a pump has no valve"),
        Some(_) => {}
    }
    let mut shut = closed.lock().unwrap_or_else(|p| p.into_inner());
    match ValveAction::try_from(i.action) {
        Ok(ValveAction::Close) => {
            shut.insert(i.link_id.clone());
        }
        Ok(ValveAction::Open) => {
            shut.remove(&i.link_id);
        }
        _ => return refuse("unknown action"),
    }
    ValveResult { command_id: i.command_id.clone(), applied: true, reason: String::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chlorine_incident_falls_holds_and_recovers() {
        let cases =
            [(-1, None), (0, Some(0.35)), (900, Some(0.195)), (1800, Some(0.04)), (9000, Some(0.04)), (10_800, None)];
        for (t, expected) in cases {
            let got = chlorine_incident(t);
            match (got, expected) {
                (Some(g), Some(e)) => assert!((g - e).abs() < 1e-9, "{t}: {g}"),
                (g, e) => assert_eq!(g, e, "{t}"),
            }
        }
    }
}
