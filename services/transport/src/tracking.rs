//! Vehicle tracking, pure: each position becomes a vehicle state (where it is along its trip's
//! shape, how late, the headway to the vehicle ahead) and the alarm changes it causes. Time and
//! the territory come in as arguments; nothing here does I/O.
//!
//! Alarms (stable keys; each clears with hysteresis so a value hovering at a threshold does not
//! flap), all keyed by the vehicle (GTFS trip ids may hold any character; vehicle ids are
//! validated) and naming the trip in their details: `late`, `off_route`, `bunching` and `gap` (at
//! the stops it passes), `not_reporting` (see [`Tracker::silent`]).

use proto::ids::{AlarmKey, AssetId, CommuneId};
use proto::transport::{VehiclePosition, VehicleState, VehicleStopStatus};
use proto::v1::{AlarmCleared, AlarmRaised, Position, Severity};
use std::collections::{BTreeMap, HashMap};

use crate::network::Network;
use crate::rules::{self, Headway, RulesConfig};

pub const DOMAIN: &str = "transport";

#[derive(Debug, Clone)]
pub struct TrackerConfig {
    pub rules: RulesConfig,
    /// Later than this: a `late` alarm (minor; major beyond three times it).
    pub late_s: f64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig { rules: RulesConfig::default(), late_s: 300.0 }
    }
}

pub use runtime::alarms::{ActiveAlarm, AlarmChange};

/// One vehicle as the tracker keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    pub state: VehicleState,
    /// Seconds of the service day (GTFS time) of the latest position.
    pub service_s: f64,
    pub seen_unix_s: u64,
}

impl Tracked {
    /// POSIX seconds of its service day's GTFS time 0: the observation time minus its service
    /// time (right after midnight too, when the trip belongs to the evening before).
    pub fn origin_unix(&self) -> i64 {
        (self.seen_unix_s as f64 - self.service_s).round() as i64
    }
}

#[derive(Debug, Default)]
pub struct Tracker {
    config: TrackerConfig,
    vehicles: HashMap<String, Tracked>,
    /// (route, direction, stop) -> (vehicle, service seconds) of the latest passage.
    passages: HashMap<(String, u32, String), (String, f64)>,
    /// (route, direction, stop) -> scheduled passages of the service day, sorted.
    scheduled: HashMap<(String, u32, String), Vec<u32>>,
    alarms: BTreeMap<String, ActiveAlarm>,
}

/// Why a position is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Tracker {
    /// A tracker for the trips of one service day.
    pub fn new(config: TrackerConfig, network: &Network, service_day: chrono::NaiveDate) -> Tracker {
        Tracker { config, scheduled: scheduled_passages(network, service_day), ..Default::default() }
    }

    /// Moves to another service day's timetable (the scheduled headways change; vehicles, their
    /// alarms and the latest passages stay).
    pub fn set_service_day(&mut self, network: &Network, service_day: chrono::NaiveDate) {
        self.scheduled = scheduled_passages(network, service_day);
    }

    pub fn restore(&mut self, vehicles: Vec<Tracked>, alarms: Vec<ActiveAlarm>) {
        for v in vehicles {
            let id = v.state.position.as_ref().map(|p| p.vehicle_id.clone()).unwrap_or_default();
            self.vehicles.insert(id, v);
        }
        for a in alarms {
            self.alarms.insert(a.raised.key.clone(), a);
        }
    }

    pub fn vehicle(&self, id: &str) -> Option<&Tracked> {
        self.vehicles.get(id)
    }

    pub fn vehicles(&self) -> impl Iterator<Item = &Tracked> {
        self.vehicles.values()
    }

    pub fn active_alarms(&self) -> impl Iterator<Item = &ActiveAlarm> {
        self.alarms.values()
    }

    /// Applies one valid position (ids and coordinates checked by the caller) at `service_s`
    /// seconds of the service day, in `commune`.
    pub fn observe(
        &mut self,
        network: &Network,
        position: &VehiclePosition,
        commune: &CommuneId,
        service_s: f64,
        unix_s: u64,
    ) -> Result<(Tracked, Vec<AlarmChange>), Refused> {
        let trip = network
            .trips
            .get(&position.trip_id)
            .ok_or_else(|| Refused(format!("unknown trip {:?}", position.trip_id)))?;
        if !position.route_id.is_empty() && position.route_id != trip.route_id {
            return Err(Refused(format!(
                "trip {} runs on route {}, not {}",
                trip.id, trip.route_id, position.route_id
            )));
        }
        let vehicle = AssetId::parse_as("vehicle id", &position.vehicle_id).map_err(|e| Refused(e.to_string()))?;
        let previous = self.vehicles.get(vehicle.as_str()).cloned();
        if let Some(previous) = previous.as_ref().filter(|p| p.seen_unix_s > unix_s) {
            // A late position: an event, but not the vehicle's state.
            return Ok((previous.clone(), Vec::new()));
        }
        let projection = trip
            .shape_id
            .as_ref()
            .and_then(|s| network.shapes.get(s))
            .and_then(|shape| shape.project(position.lat, position.lon));
        let (along_m, offset_m) = projection.map(|p| (p.along_m, p.offset_m)).unwrap_or((0.0, 0.0));
        let delay_s = projection.and_then(|p| rules::delay_s(&trip.stop_times, p.along_m, service_s));
        let mut state = VehicleState {
            position: Some(position.clone()),
            commune: commune.to_string(),
            route_id: trip.route_id.clone(),
            direction: u32::from(trip.direction),
            delay_s,
            along_m,
            offset_m,
            headway_s: None,
            scheduled_headway_s: None,
            trip_finished: trip.stop_times.last().is_some_and(|last| {
                position.current_stop_sequence >= last.sequence
                    && (position.current_status == VehicleStopStatus::StoppedAt as i32
                        || last.dist_m.is_some_and(|d| projection.is_some_and(|p| p.along_m >= d - 30.0)))
            }),
        };
        let mut changes = Vec::new();
        let here = Some(Position { lat: position.lat, lon: position.lon });

        // Headway at the stop just passed (when the vehicle moved on to a later stop).
        let passed = previous.as_ref().and_then(|p| {
            let before = p.state.position.as_ref()?.current_stop_sequence;
            (position.current_stop_sequence > before && p.state.position.as_ref()?.trip_id == trip.id).then_some(before)
        });
        if let Some(sequence) = passed
            && let Some(stop) = trip.stop_times.iter().find(|st| st.sequence == sequence)
        {
            let key = (trip.route_id.clone(), u32::from(trip.direction), stop.stop_id.clone());
            let previous_passage = self.passages.insert(key.clone(), (vehicle.to_string(), service_s));
            if let Some((other, at)) = previous_passage
                && other != vehicle.as_str()
            {
                let observed = service_s - at;
                let scheduled = self.scheduled.get(&key).and_then(|p| rules::scheduled_headway_s(p, service_s));
                state.headway_s = Some(observed);
                state.scheduled_headway_s = scheduled;
                if let Some(scheduled) = scheduled {
                    let verdict = rules::classify_headway(observed, scheduled, &self.config.rules);
                    let details = || {
                        [
                            ("observed_s".to_owned(), format!("{observed:.0}")),
                            ("scheduled_s".to_owned(), format!("{scheduled:.0}")),
                            ("stop".to_owned(), stop.stop_id.clone()),
                            ("trip".to_owned(), trip.id.clone()),
                        ]
                        .into_iter()
                        .collect()
                    };
                    for (alarm_type, wanted) in
                        [("bunching", verdict == Headway::Bunching), ("gap", verdict == Headway::Gap)]
                    {
                        let key = AlarmKey::new(DOMAIN, alarm_type, &vehicle).to_string();
                        if wanted {
                            changes.extend(self.raise(
                                commune,
                                &vehicle,
                                here,
                                key,
                                alarm_type,
                                Severity::Minor,
                                details(),
                            ));
                        } else {
                            changes.extend(self.clear(&key, "headway back within its bounds"));
                        }
                    }
                }
            }
        }

        // Late, with a minute of hysteresis.
        let late_key = AlarmKey::new(DOMAIN, "late", &vehicle).to_string();
        match delay_s {
            Some(d) if d > self.config.late_s => {
                let severity = if d > 3.0 * self.config.late_s { Severity::Major } else { Severity::Minor };
                // Whole minutes: the alarm is raised again when the delay really moves, not at
                // every position report.
                let details =
                    [("delay_min".to_owned(), format!("{:.0}", d / 60.0)), ("trip".to_owned(), trip.id.clone())]
                        .into_iter()
                        .collect();
                changes.extend(self.raise(commune, &vehicle, here, late_key, "late", severity, details));
            }
            Some(d) if d < self.config.late_s - 60.0 => changes.extend(self.clear(&late_key, "back on schedule")),
            _ => {}
        }

        // Off route, with 20 % hysteresis.
        let off_key = AlarmKey::new(DOMAIN, "off_route", &vehicle).to_string();
        if projection.is_some() {
            if rules::is_off_route(offset_m, &self.config.rules) {
                let details = [("trip".to_owned(), trip.id.clone())].into_iter().collect();
                changes.extend(self.raise(commune, &vehicle, here, off_key, "off_route", Severity::Major, details));
            } else if offset_m < 0.8 * self.config.rules.off_route_m {
                changes.extend(self.clear(&off_key, "back on its route"));
            }
        }
        // It reports again.
        changes.extend(self.clear(&AlarmKey::new(DOMAIN, "not_reporting", &vehicle).to_string(), "reporting again"));

        let tracked = Tracked { state, service_s, seen_unix_s: unix_s };
        self.vehicles.insert(vehicle.to_string(), tracked.clone());
        Ok((tracked, changes))
    }

    /// Vehicles silent for longer than the configured time raise `not_reporting` (once); one that
    /// finished its trip is not expected to report until its next.
    pub fn silent(&mut self, now_unix_s: u64) -> Vec<AlarmChange> {
        let silent: Vec<(AssetId, CommuneId, Option<Position>)> = self
            .vehicles
            .iter()
            .filter(|(_, v)| !v.state.trip_finished && rules::is_silent(v.seen_unix_s, now_unix_s, &self.config.rules))
            .filter_map(|(id, v)| {
                let p = v.state.position.as_ref()?;
                Some((
                    AssetId::parse(id).ok()?,
                    CommuneId::parse(&v.state.commune).ok()?,
                    Some(Position { lat: p.lat, lon: p.lon }),
                ))
            })
            .collect();
        let mut changes = Vec::new();
        for (vehicle, commune, at) in silent {
            let key = AlarmKey::new(DOMAIN, "not_reporting", &vehicle).to_string();
            if !self.alarms.contains_key(&key) {
                changes.extend(self.raise(
                    &commune,
                    &vehicle,
                    at,
                    key,
                    "not_reporting",
                    Severity::Minor,
                    BTreeMap::new(),
                ));
            }
        }
        changes
    }

    #[allow(clippy::too_many_arguments)]
    fn raise(
        &mut self,
        commune: &CommuneId,
        asset: &AssetId,
        position: Option<Position>,
        key: String,
        alarm_type: &str,
        severity: Severity,
        details: BTreeMap<String, String>,
    ) -> Option<AlarmChange> {
        let alarm = ActiveAlarm {
            commune: commune.clone(),
            asset: asset.clone(),
            position,
            raised: AlarmRaised {
                key: key.clone(),
                alarm_type: alarm_type.to_owned(),
                severity: severity as i32,
                asset_ids: vec![asset.to_string()],
                details: details.into_iter().collect(),
            },
        };
        // Same facts (position aside): nothing new to say.
        if let Some(current) = self.alarms.get(&key)
            && current.raised == alarm.raised
            && current.commune == alarm.commune
        {
            return None;
        }
        self.alarms.insert(key, alarm.clone());
        Some(AlarmChange::Raised(alarm))
    }

    fn clear(&mut self, key: &str, reason: &str) -> Option<AlarmChange> {
        let alarm = self.alarms.remove(key)?;
        let cleared = AlarmCleared {
            key: key.to_owned(),
            alarm_type: alarm.raised.alarm_type.clone(),
            reason: reason.to_owned(),
        };
        Some(AlarmChange::Cleared { alarm, cleared })
    }
}

/// (route, direction, stop) -> the scheduled departures of one service day, sorted.
fn scheduled_passages(network: &Network, service_day: chrono::NaiveDate) -> HashMap<(String, u32, String), Vec<u32>> {
    let mut scheduled: HashMap<(String, u32, String), Vec<u32>> = HashMap::new();
    for trip in network.trips.values().filter(|t| network.runs_on(&t.service_id, service_day)) {
        for st in &trip.stop_times {
            scheduled
                .entry((trip.route_id.clone(), u32::from(trip.direction), st.stop_id.clone()))
                .or_default()
                .push(st.departure_s);
        }
    }
    for times in scheduled.values_mut() {
        times.sort_unstable();
    }
    scheduled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Polyline;
    use crate::network::{StopTime, Trip};
    use chrono::NaiveDate;

    const DEG_PER_M_LON: f64 = 1.0 / (111_320.0 * 0.724_172_6); // cos(43.6°)

    /// Route R, direction 0: a 2 km line east from (43.6, 3.87) with stops at 0, 1,000 and 2,000 m.
    /// Trips T1 (08:00) and T2 (08:10), ten minutes apart, 5 minutes between stops.
    fn network() -> Network {
        let mut n = Network::default();
        let day = NaiveDate::from_ymd_opt(2026, 2, 2).unwrap();
        n.add_daily_service("DAILY", day, day);
        n.shapes.insert("SH".into(), Polyline::new(vec![(43.6, 3.87), (43.6, 3.87 + 2_000.0 * DEG_PER_M_LON)]));
        for (trip, start) in [("T1", 28_800), ("T2", 29_400)] {
            let stop_times = (0..3)
                .map(|i| StopTime {
                    stop_id: format!("S{i}"),
                    sequence: i + 1,
                    arrival_s: start + i * 300,
                    departure_s: start + i * 300,
                    dist_m: Some(f64::from(i) * 1_000.0),
                })
                .collect();
            n.trips.insert(
                trip.into(),
                Trip {
                    id: trip.into(),
                    route_id: "R".into(),
                    service_id: "DAILY".into(),
                    direction: 0,
                    shape_id: Some("SH".into()),
                    headsign: String::new(),
                    stop_times,
                },
            );
        }
        n
    }

    fn tracker(n: &Network) -> Tracker {
        Tracker::new(TrackerConfig::default(), n, NaiveDate::from_ymd_opt(2026, 2, 2).unwrap())
    }

    fn at(vehicle: &str, trip: &str, east_m: f64, north_m: f64, stop_sequence: u32) -> VehiclePosition {
        VehiclePosition {
            vehicle_id: vehicle.into(),
            trip_id: trip.into(),
            lat: 43.6 + north_m / 111_132.0,
            lon: 3.87 + east_m * DEG_PER_M_LON,
            current_stop_sequence: stop_sequence,
            ..Default::default()
        }
    }

    fn commune() -> CommuneId {
        CommuneId::parse("34172").unwrap()
    }

    fn kinds(changes: &[AlarmChange]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                AlarmChange::Raised(a) => format!("+{}", a.raised.key),
                AlarmChange::Cleared { cleared, .. } => format!("-{}", cleared.key),
            })
            .collect()
    }

    #[test]
    fn late_trips_raise_and_clear_with_hysteresis() {
        let n = network();
        let mut t = tracker(&n);
        let c = commune();
        // (east m, service time, expected changes)
        let cases: [(f64, f64, &[&str]); 5] = [
            (500.0, 28_950.0, &[]),                       // on time
            (600.0, 29_340.0, &["+transport/late/V1"]),   // 6 min late
            (650.0, 29_350.0, &[]),                       // still about 6 min late: nothing new
            (1_100.0, 29_700.0, &["+transport/late/V1"]), // 10 min late: updated, still minor
            (1_500.0, 29_300.0, &["-transport/late/V1"]), // 3 min late: below the 4-min hysteresis
        ];
        for (i, (east, service_s, expected)) in cases.into_iter().enumerate() {
            let (tracked, changes) =
                t.observe(&n, &at("V1", "T1", east, 0.0, 2), &c, service_s, 1_000 + i as u64).unwrap();
            assert_eq!(kinds(&changes), expected, "case {i}: delay {:?}", tracked.state.delay_s);
        }
        let (tracked, changes) =
            t.observe(&n, &at("V1", "T1", 1_600.0, 0.0, 2), &c, 29_280.0 + 1_200.0, 2_000).unwrap();
        assert!(tracked.state.delay_s.is_some_and(|d| d > 900.0));
        assert!(
            matches!(&changes[..], [AlarmChange::Raised(a)] if a.raised.severity == Severity::Major as i32),
            "{changes:?}"
        );
    }

    #[test]
    fn off_route_with_hysteresis_and_refusals() {
        let n = network();
        let mut t = tracker(&n);
        let c = commune();
        let cases: [(f64, &[&str]); 4] = [
            (150.0, &["+transport/off_route/V1"]),
            (90.0, &[]),  // between 80 and 100 m: still off route, nothing new
            (120.0, &[]), // farther again: the same alarm, nothing new
            (50.0, &["-transport/off_route/V1"]),
        ];
        for (i, (north, expected)) in cases.into_iter().enumerate() {
            let (_, changes) = t.observe(&n, &at("V1", "T1", 500.0, north, 1), &c, 28_950.0, 1_000 + i as u64).unwrap();
            assert_eq!(kinds(&changes), expected, "case {i}");
        }
        assert_eq!(
            t.observe(&n, &at("V1", "T9", 0.0, 0.0, 1), &c, 0.0, 9_000).unwrap_err(),
            Refused("unknown trip \"T9\"".into())
        );
        let mut wrong_route = at("V1", "T1", 0.0, 0.0, 1);
        wrong_route.route_id = "Z".into();
        assert!(t.observe(&n, &wrong_route, &c, 0.0, 9_000).unwrap_err().0.contains("runs on route R"));
    }

    #[test]
    fn bunching_at_a_stop_then_back_to_normal() {
        let n = network();
        let mut t = tracker(&n);
        let c = commune();
        // V1 (trip T1) passes stop S1 (sequence 2) at 08:05; V2 (trip T2, due ten minutes later)
        // passes it one minute later: bunching (60 s < 25 % of 600 s).
        t.observe(&n, &at("V1", "T1", 990.0, 0.0, 2), &c, 29_090.0, 1).unwrap();
        t.observe(&n, &at("V1", "T1", 1_010.0, 0.0, 3), &c, 29_100.0, 2).unwrap();
        t.observe(&n, &at("V2", "T2", 990.0, 0.0, 2), &c, 29_150.0, 3).unwrap();
        let (tracked, changes) = t.observe(&n, &at("V2", "T2", 1_010.0, 0.0, 3), &c, 29_160.0, 4).unwrap();
        assert_eq!(tracked.state.headway_s, Some(60.0));
        assert_eq!(tracked.state.scheduled_headway_s, Some(600.0));
        assert!(kinds(&changes).contains(&"+transport/bunching/V2".to_owned()), "{changes:?}");
        // At the next stop they are ten minutes apart again: cleared.
        t.observe(&n, &at("V1", "T1", 2_000.0, 0.0, 4), &c, 29_400.0, 5).unwrap();
        t.observe(&n, &at("V2", "T2", 1_990.0, 0.0, 3), &c, 29_990.0, 6).unwrap();
        let (_, changes) = t.observe(&n, &at("V2", "T2", 2_000.0, 0.0, 4), &c, 30_000.0, 7).unwrap();
        assert!(kinds(&changes).contains(&"-transport/bunching/V2".to_owned()), "{changes:?}");
    }

    #[test]
    fn a_vehicle_at_its_terminus_is_not_expected_to_report() {
        let n = network();
        let mut t = tracker(&n);
        let c = commune();
        let mut end = at("V1", "T1", 2_000.0, 0.0, 3);
        end.current_status = VehicleStopStatus::StoppedAt as i32;
        let (tracked, _) = t.observe(&n, &end, &c, 29_400.0, 1_000).unwrap();
        assert!(tracked.state.trip_finished);
        let (tracked, _) = t.observe(&n, &at("V2", "T2", 1_000.0, 0.0, 2), &c, 29_700.0, 1_000).unwrap();
        assert!(!tracked.state.trip_finished, "mid-trip");
        assert_eq!(kinds(&t.silent(5_000)), ["+transport/not_reporting/V2"], "only the vehicle still on its trip");
    }

    #[test]
    fn silent_vehicles_raise_not_reporting_once_and_clear_when_heard() {
        let n = network();
        let mut t = tracker(&n);
        let c = commune();
        t.observe(&n, &at("V1", "T1", 500.0, 0.0, 1), &c, 28_950.0, 1_000).unwrap();
        assert!(t.silent(1_120).is_empty());
        assert_eq!(kinds(&t.silent(1_121)), ["+transport/not_reporting/V1"]);
        assert!(t.silent(1_200).is_empty(), "raised once");
        let (_, changes) = t.observe(&n, &at("V1", "T1", 600.0, 0.0, 1), &c, 28_980.0, 1_300).unwrap();
        assert_eq!(kinds(&changes), ["-transport/not_reporting/V1"]);
    }
}
