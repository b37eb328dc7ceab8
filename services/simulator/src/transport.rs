//! Public transport in the field: vehicles run the day's trips of the territory's real GTFS feed
//! along their shapes and report like an AVL system (GTFS-Realtime `VehiclePosition` fields) to
//! the transport service over its public gRPC stream.
//!
//! - **Vehicles** are assigned to the day's trips per route (a vehicle takes the next trip that
//!   starts at least three minutes after its previous one ends), so a line keeps its fleet.
//! - **Delays** wander (a mean-reverting random walk per trip; a share of trips drift far late),
//!   and a vehicle never goes back nor runs more than 25 % faster than its timetable.
//! - **Breakdowns**: a vehicle stops, reports a minute more, then falls silent for the rest of its
//!   trip (its next trip reports again, as a replacement would).
//! - **Bunching episodes**, one at a time: a vehicle is held (it runs at half speed) until the next
//!   trip of its line is a tenth of a headway behind it, runs so for three minutes, then recovers.
//!
//! Time is the simulation's [`SimClock`]: it may start in the past and run ×N until it reaches
//! the present (positions are never in the future, which the service would refuse). It may also
//! start at a fixed local time of the feed ([`ReplayAt`], e.g. the latest Tuesday 08:30), so that a
//! test or a demonstration sees the same busy network whatever the hour it runs at.

use anyhow::Context;
use proto::transport::transport_service_client::TransportServiceClient;
use proto::transport::{VehiclePosition, VehicleStopStatus};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use transport::network::{Network, Trip};
use transport::service_day;

mod clock;
use clock::wall_unix;
pub use clock::{ReplayAt, SimClock};

/// Real time between two simulation steps.
const STEP: Duration = Duration::from_millis(500);
/// A vehicle shows up at its first stop this long before departure (timetable seconds).
const LEAD_S: f64 = 120.0;
/// Minimum turnaround of a vehicle between two trips, seconds.
const LAYOVER_S: f64 = 180.0;
/// A broken-down vehicle keeps reporting this long before it falls silent (simulated seconds).
const BREAKDOWN_REPORTS_S: f64 = 60.0;
/// A trip whose vehicle is this late for it is cancelled (seconds).
const MAX_WAIT_S: f64 = 20.0 * 60.0;

#[derive(Debug, Clone)]
pub struct TransportSettings {
    pub url: String,
    pub grpc: crate::GrpcAccess,
    /// Simulated seconds between two reports of one vehicle.
    pub report_s: f64,
    /// Breakdowns per simulated hour, over the whole fleet.
    pub breakdowns_per_hour: f64,
    /// Simulated time between the starts of two bunching episodes (none when zero).
    pub bunching_every: Duration,
    /// Share of trips that drift far late (late alarms).
    pub late_trips: f64,
    pub seed: u64,
    /// Start at this local time of the feed instead of the clock's own start.
    pub replay_at: Option<ReplayAt>,
}

/// One trip of the day, run by one vehicle.
#[derive(Debug, Clone)]
struct Run {
    trip: String,
    vehicle: usize,
    route: String,
    direction: u8,
    /// POSIX time of its service day's GTFS time 0. Times below are POSIX seconds.
    origin_unix: f64,
    start_s: f64,
    end_s: f64,
    /// The delay this trip drifts towards, seconds.
    target_delay_s: f64,
    active: bool,
    done: bool,
    /// It was due while its vehicle was still on its previous trip.
    waited: bool,
    delay_s: f64,
    /// The hold of a bunching episode, added to the delay.
    extra_s: f64,
    broken_at_s: Option<f64>,
    last_report_s: f64,
    last_along_m: Option<f64>,
    /// Its arrival at the terminus was reported (the trip is over for the service too).
    arrival_reported: bool,
}

impl Run {
    /// Where the vehicle is in its timetable at `now` (POSIX seconds): the time it would be there
    /// on schedule.
    fn timetable_s(&self, now: f64) -> f64 {
        now - self.delay_s - self.extra_s
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Hold,
    Keep { until_s: f64 },
    Recover,
}

#[derive(Debug, Clone, Copy)]
struct Episode {
    leader: usize,
    follower: usize,
    headway_s: f64,
    phase: Phase,
}

/// The vehicles of one service day.
struct Day {
    /// The latest calendar day whose trips are planned.
    calendar: chrono::NaiveDate,
    /// Per route: (vehicle, free from), to chain the next day's trips.
    fleets: HashMap<String, Vec<(usize, f64)>>,
    runs: Vec<Run>,
    /// Per vehicle: (id, label), and the run it is on.
    vehicles: Vec<(String, String)>,
    busy: Vec<Option<usize>>,
}

/// An AVL-style id from a route name: the characters vehicle ids allow.
fn id_part(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(24).collect()
}

/// The trips running around `day`: the previous day's (those past midnight still run after the day
/// turns) and its own, with vehicles chained over both.
fn plan_day(
    network: &Network,
    time_zone: &jiff::tz::TimeZone,
    day: chrono::NaiveDate,
    rng: &mut impl Rng,
    late_trips: f64,
) -> Day {
    let yesterday = day.pred_opt().unwrap_or(day);
    let mut planned =
        Day { calendar: yesterday, fleets: HashMap::new(), runs: Vec::new(), vehicles: Vec::new(), busy: Vec::new() };
    add_day(&mut planned, network, time_zone, yesterday, rng, late_trips);
    add_day(&mut planned, network, time_zone, day, rng, late_trips);
    planned
}

/// Adds a calendar day's trips, each given to a vehicle of its route that is free by then (a new
/// one when none is); returns how many.
fn add_day(
    planned: &mut Day,
    network: &Network,
    time_zone: &jiff::tz::TimeZone,
    day: chrono::NaiveDate,
    rng: &mut impl Rng,
    late_trips: f64,
) -> usize {
    let timetable = network.service_day_for(day).unwrap_or(day);
    let origin = service_day::origin_unix(time_zone, day) as f64;
    let mut trips: Vec<(f64, &Trip)> = network
        .trips
        .values()
        .filter(|t| network.runs_on(&t.service_id, timetable) && t.stop_times.len() >= 2)
        .map(|t| (origin + f64::from(t.stop_times[0].departure_s), t))
        .collect();
    trips.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
    let count = trips.len();
    for (start, trip) in trips {
        let end = origin + f64::from(trip.stop_times[trip.stop_times.len() - 1].arrival_s);
        let fleet = planned.fleets.entry(trip.route_id.clone()).or_default();
        let vehicle = match fleet.iter_mut().filter(|(_, free)| *free <= start).min_by(|a, b| a.1.total_cmp(&b.1)) {
            Some(slot) => {
                slot.1 = end + LAYOVER_S;
                slot.0
            }
            None => {
                let route = network.routes.get(&trip.route_id);
                let name = route.map(|r| r.short_name.as_str()).filter(|n| !n.is_empty()).unwrap_or(&trip.route_id);
                let n = fleet.len() + 1;
                planned.vehicles.push((
                    format!("L{}-{n:02}", id_part(name)),
                    format!("{} n°{n}", name.chars().take(40).collect::<String>()),
                ));
                planned.busy.push(None);
                fleet.push((planned.vehicles.len() - 1, end + LAYOVER_S));
                planned.vehicles.len() - 1
            }
        };
        let late = rng.random_bool(late_trips.clamp(0.0, 1.0));
        let target = if late { rng.random_range(420.0..900.0) } else { rng.random_range(0.0..120.0) };
        planned.runs.push(Run {
            trip: trip.id.clone(),
            vehicle,
            route: trip.route_id.clone(),
            direction: trip.direction,
            origin_unix: origin,
            start_s: start,
            end_s: end,
            target_delay_s: target,
            active: false,
            done: false,
            waited: false,
            delay_s: rng.random_range(-20.0..90.0),
            extra_s: 0.0,
            broken_at_s: None,
            last_report_s: f64::NEG_INFINITY,
            last_along_m: None,
            arrival_reported: false,
        });
    }
    planned.calendar = day;
    count
}

/// Where a vehicle is at timetable time `t` on its trip: (lat, lon, bearing, along m, stop
/// sequence, status).
fn locate(network: &Network, trip: &Trip, t: f64) -> Option<(f64, f64, Option<f32>, f64, u32, VehicleStopStatus)> {
    let stops = &trip.stop_times;
    let shape = trip.shape_id.as_ref().and_then(|s| network.shapes.get(s));
    let point = |i: usize, along: f64| -> Option<(f64, f64, Option<f32>)> {
        match (shape, stops[i].dist_m) {
            (Some(shape), Some(_)) => shape.point_at(along).map(|(lat, lon, b)| (lat, lon, Some(b as f32))),
            _ => network.stops.get(&stops[i].stop_id).map(|s| (s.lat, s.lon, None)),
        }
    };
    // At a stop (before the first departure, or during a dwell).
    for (i, st) in stops.iter().enumerate() {
        let at_stop = (i == 0 && t <= f64::from(st.departure_s))
            || (t >= f64::from(st.arrival_s) && t <= f64::from(st.departure_s))
            || (i == stops.len() - 1 && t >= f64::from(st.arrival_s));
        if at_stop {
            let along = st.dist_m.unwrap_or(0.0);
            let (lat, lon, bearing) = point(i, along)?;
            return Some((lat, lon, bearing, along, st.sequence, VehicleStopStatus::StoppedAt));
        }
    }
    // Between two stops.
    let i = stops.windows(2).position(|w| t > f64::from(w[0].departure_s) && t < f64::from(w[1].arrival_s))?;
    let (a, b) = (&stops[i], &stops[i + 1]);
    let share = (t - f64::from(a.departure_s)) / (f64::from(b.arrival_s) - f64::from(a.departure_s)).max(1.0);
    match (shape, a.dist_m, b.dist_m) {
        (Some(shape), Some(da), Some(db)) => {
            let along = da + share * (db - da);
            let (lat, lon, bearing) = shape.point_at(along)?;
            Some((lat, lon, Some(bearing as f32), along, b.sequence, VehicleStopStatus::InTransitTo))
        }
        _ => {
            let (sa, sb) = (network.stops.get(&a.stop_id)?, network.stops.get(&b.stop_id)?);
            let (lat, lon) = (sa.lat + share * (sb.lat - sa.lat), sa.lon + share * (sb.lon - sa.lon));
            Some((lat, lon, None, 0.0, b.sequence, VehicleStopStatus::InTransitTo))
        }
    }
}

/// Roughly normal noise (the sum of three uniforms), mean 0, standard deviation `sigma`.
fn noise(rng: &mut impl Rng, sigma: f64) -> f64 {
    (0..3).map(|_| rng.random_range(-1.0..1.0)).sum::<f64>() * sigma
}

pub async fn run(
    settings: TransportSettings,
    territory: &Path,
    clock: SimClock,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let path = territory.join("transit/gtfs.zip");
    let network = Network::load(&path).with_context(|| format!("reading {}", path.display()))?;
    let time_zone = jiff::tz::TimeZone::get(&network.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    tracing::info!(trips = network.trips.len(), routes = network.routes.len(), "timetable read");
    let clock = match settings.replay_at {
        Some(at) => {
            let start = at
                .latest_before(&time_zone, wall_unix())
                .with_context(|| format!("no past moment at {at:?} in the feed's time zone"))?;
            tracing::info!(start_unix = start, speed = clock.speed, "replaying from a fixed local time");
            SimClock::starting_at(start, clock.speed)
        }
        None => clock,
    };
    let channel = crate::connect(&settings.url, "transport", &settings.grpc, &shutdown).await?;
    let mut client = TransportServiceClient::new(channel).max_encoding_message_size(proto::MAX_GRPC_MESSAGE_BYTES);
    let mut rng = rand::rngs::StdRng::seed_from_u64(settings.seed.wrapping_add(7));
    let mut day: Option<Day> = None;
    let mut episode: Option<Episode> = None;
    let mut next_episode_unix = clock.now_unix() + settings.bunching_every.as_secs_f64();
    let mut last_unix = clock.now_unix();
    let mut ticker = tokio::time::interval(STEP);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut accepted, mut refused) = (0u64, 0u64);
    let mut last_log = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let now_unix = clock.now_unix();
        let dt = (now_unix - last_unix).max(0.0);
        last_unix = now_unix;
        let calendar = service_day::calendar_day(&time_zone, now_unix);
        let day = match &mut day {
            Some(d) => {
                // The day turned: the new day's trips join, run by the same fleet.
                while d.calendar < calendar {
                    let next = d.calendar.succ_opt().unwrap_or(calendar);
                    let added = add_day(d, &network, &time_zone, next, &mut rng, settings.late_trips);
                    tracing::info!(day = %next, trips = added, vehicles = d.vehicles.len(), "day planned");
                }
                d
            }
            None => {
                let planned = plan_day(&network, &time_zone, calendar, &mut rng, settings.late_trips);
                tracing::info!(day = %planned.calendar, trips = planned.runs.len(), vehicles = planned.vehicles.len(), "days planned");
                day.insert(planned)
            }
        };
        step(day, now_unix, dt, &settings, &mut rng);
        if settings.breakdowns_per_hour > 0.0 && rng.random_bool((settings.breakdowns_per_hour * dt / 3600.0).min(1.0))
        {
            break_down(day, now_unix, &mut rng, episode.as_ref());
        }
        if let Some(e) = &mut episode {
            if !advance_episode(day, e, now_unix, dt) {
                tracing::info!(leader = %day.vehicles[day.runs[e.leader].vehicle].0, "bunching episode over");
                episode = None;
            }
        } else if !settings.bunching_every.is_zero() && now_unix >= next_episode_unix {
            episode = start_episode(day, now_unix, &mut rng);
            if let Some(e) = &episode {
                next_episode_unix = now_unix + settings.bunching_every.as_secs_f64();
                let (leader, follower) = (&day.runs[e.leader], &day.runs[e.follower]);
                tracing::info!(
                    leader = %day.vehicles[leader.vehicle].0,
                    follower = %day.vehicles[follower.vehicle].0,
                    route = %leader.route,
                    headway_s = e.headway_s,
                    "bunching episode starts"
                );
            }
        }
        let at = UNIX_EPOCH + Duration::from_secs_f64(now_unix.max(0.0));
        let positions = reports(day, &network, now_unix, at, &settings);
        if positions.is_empty() {
            continue;
        }
        match client.report_positions(futures::stream::iter(positions)).await {
            Ok(summary) => {
                let summary = summary.into_inner();
                accepted += summary.accepted;
                refused += summary.refused;
                for error in summary.errors.iter().take(3) {
                    tracing::warn!(index = error.index, message = %error.message, "position refused");
                }
            }
            Err(status) => tracing::warn!(code = ?status.code(), message = status.message(), "position stream failed"),
        }
        if last_log.elapsed() > Duration::from_secs(30) {
            last_log = Instant::now();
            let running = day.runs.iter().filter(|r| r.active && !r.done).count();
            tracing::info!(accepted, refused, running, "vehicle positions");
        }
    }
    tracing::info!(accepted, refused, "transport simulation stopped");
    Ok(())
}

/// Moves every trip `dt` simulated seconds on: activation, delays, the end of trips.
fn step(day: &mut Day, now_s: f64, dt: f64, settings: &TransportSettings, rng: &mut impl Rng) {
    for i in 0..day.runs.len() {
        let run = &day.runs[i];
        if run.done {
            continue;
        }
        if !run.active {
            if run.timetable_s(now_s) < run.start_s - LEAD_S {
                continue;
            }
            if day.busy[run.vehicle].is_some() {
                // Its vehicle is still on its previous trip: this one starts late, or, when its
                // vehicle is too late for it, is cancelled (it never runs).
                let run = &mut day.runs[i];
                if now_s - (run.start_s - LEAD_S) > MAX_WAIT_S {
                    run.done = true;
                } else {
                    run.waited = true;
                }
                continue;
            }
            let run = &mut day.runs[i];
            if run.waited {
                // It shows up at its first stop now.
                run.delay_s = run.delay_s.max(now_s - (run.start_s - LEAD_S));
            } else if run.timetable_s(now_s) > run.end_s {
                // Over before the simulation reached it (the simulation started later).
                run.done = true;
                continue;
            }
            // Otherwise it is where its timetable puts it (mid-trip when the simulation starts).
            run.active = true;
            day.busy[run.vehicle] = Some(i);
            continue;
        }
        let run = &mut day.runs[i];
        let before = run.delay_s;
        if run.broken_at_s.is_some() {
            run.delay_s += dt; // stands still
        } else {
            let pull = (run.target_delay_s - run.delay_s) * (dt / 900.0).min(1.0);
            let wander = noise(rng, 4.0) * (dt / settings.report_s.max(1.0)).sqrt();
            // Never backwards in the timetable, never more than 25 % faster than it.
            run.delay_s = (run.delay_s + pull + wander).clamp(before - 0.25 * dt, before + dt).max(-90.0);
        }
        let silent_for_good = run.broken_at_s.is_some_and(|b| now_s - b > BREAKDOWN_REPORTS_S);
        let arrived = run.timetable_s(now_s) > run.end_s;
        if silent_for_good || (arrived && run.arrival_reported) {
            run.done = true;
            day.busy[run.vehicle] = None;
        }
    }
}

/// The positions due now: each running vehicle every `report_s`, and its arrival at the terminus.
fn reports(
    day: &mut Day,
    network: &Network,
    now_s: f64,
    at: SystemTime,
    settings: &TransportSettings,
) -> Vec<VehiclePosition> {
    let mut out = Vec::new();
    for run in day.runs.iter_mut().filter(|r| r.active && !r.done) {
        if run.broken_at_s.is_some_and(|b| now_s - b > BREAKDOWN_REPORTS_S) {
            continue;
        }
        let t = run.timetable_s(now_s);
        let arrived = t > run.end_s;
        if !arrived && now_s - run.last_report_s < settings.report_s {
            continue;
        }
        let Some(trip) = network.trips.get(&run.trip) else { continue };
        let gtfs_t = t.min(run.end_s) - run.origin_unix;
        let Some((lat, lon, bearing, along, sequence, status)) = locate(network, trip, gtfs_t) else {
            continue;
        };
        let speed = match run.last_along_m {
            Some(previous) if now_s > run.last_report_s => {
                // At most 25 m/s (90 km/h, a city network's fastest bus): a jump in the feed's
                // distances along the shape is not a speed (MobilityData's W004 flags > 26 m/s).
                ((along - previous) / (now_s - run.last_report_s)).clamp(0.0, 25.0) as f32
            }
            _ => 0.0,
        };
        run.last_report_s = now_s;
        run.arrival_reported = arrived;
        run.last_along_m = Some(along);
        let (id, label) = &day.vehicles[run.vehicle];
        out.push(VehiclePosition {
            vehicle_id: id.clone(),
            vehicle_label: label.clone(),
            trip_id: run.trip.clone(),
            route_id: run.route.clone(),
            lat,
            lon,
            bearing: bearing.filter(|_| status == VehicleStopStatus::InTransitTo),
            speed: Some(speed),
            current_stop_sequence: sequence,
            current_status: status as i32,
            timestamp: Some(at.into()),
        });
    }
    out
}

fn break_down(day: &mut Day, now_s: f64, rng: &mut impl Rng, episode: Option<&Episode>) {
    let candidates: Vec<usize> = (0..day.runs.len())
        .filter(|&i| {
            let r = &day.runs[i];
            r.active && !r.done && r.broken_at_s.is_none() && episode.is_none_or(|e| e.leader != i && e.follower != i)
        })
        .collect();
    if candidates.is_empty() {
        return;
    }
    let i = candidates[rng.random_range(0..candidates.len())];
    day.runs[i].broken_at_s = Some(now_s);
    tracing::info!(vehicle = %day.vehicles[day.runs[i].vehicle].0, trip = %day.runs[i].trip, "breakdown");
}

/// Picks a running vehicle early in its trip, with the next trip of its line and direction
/// behind it, and starts holding it.
fn start_episode(day: &Day, now_s: f64, rng: &mut impl Rng) -> Option<Episode> {
    let mut candidates = Vec::new();
    for (i, leader) in day.runs.iter().enumerate() {
        if !leader.active || leader.done || leader.broken_at_s.is_some() {
            continue;
        }
        let t = leader.timetable_s(now_s);
        let follower = day
            .runs
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                !f.done
                    && f.broken_at_s.is_none()
                    && f.route == leader.route
                    && f.direction == leader.direction
                    && f.start_s > leader.start_s
            })
            .min_by(|a, b| a.1.start_s.total_cmp(&b.1.start_s));
        let Some((j, follower)) = follower else { continue };
        let headway = follower.start_s - leader.start_s;
        // Early in its trip, with time left to be caught up with and to recover.
        let time_needed = 0.9 * headway + 180.0 + 600.0;
        if (120.0..=1_800.0).contains(&headway) && t - leader.start_s <= 300.0 && leader.end_s - t >= time_needed {
            candidates.push(Episode { leader: i, follower: j, headway_s: headway, phase: Phase::Hold });
        }
    }
    (!candidates.is_empty()).then(|| candidates[rng.random_range(0..candidates.len())])
}

/// Moves an episode on; false when it is over.
fn advance_episode(day: &mut Day, e: &mut Episode, now_s: f64, dt: f64) -> bool {
    let follower_delay = {
        let f = &day.runs[e.follower];
        if f.done || f.broken_at_s.is_some() { None } else { Some(f.delay_s + f.extra_s) }
    };
    let leader = &mut day.runs[e.leader];
    let Some(follower_delay) = follower_delay.filter(|_| !leader.done && leader.broken_at_s.is_none()) else {
        leader.extra_s = 0.0;
        return false;
    };
    // Held until it runs a tenth of a headway ahead of the next vehicle.
    let wanted = (0.9 * e.headway_s + follower_delay - leader.delay_s).max(0.0);
    match e.phase {
        Phase::Hold => {
            leader.extra_s = (leader.extra_s + 0.5 * dt).min(wanted);
            if leader.extra_s >= wanted {
                e.phase = Phase::Keep { until_s: now_s + 180.0 };
            }
        }
        Phase::Keep { until_s } => {
            leader.extra_s = wanted.min(leader.extra_s + dt);
            if now_s >= until_s {
                e.phase = Phase::Recover;
            }
        }
        Phase::Recover => {
            leader.extra_s = (leader.extra_s - 0.5 * dt).max(0.0);
            if leader.extra_s == 0.0 {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests;
