//! The service's core: validates positions, runs the tracker, and writes the vehicle state, the
//! alarm changes and their events with the store, in the tracker's order (one lock around both).
//! Also the service alerts, the predicted arrivals, the GTFS-Realtime feeds, the timetable day and
//! the service's clock.
//!
//! The clock is the AVL's: the newest position time received, advanced by the wall time elapsed
//! since. Live, it is the wall clock; when a simulator replays a past period faster than real
//! time, silence and staleness are judged in the replayed time, as they were then.

use proto::event::{self, CheckedEvent};
use proto::ids::{AssetId, CommuneId};
use proto::transit_realtime::FeedMessage;
use proto::transport::{ServiceAlert, ServiceAlertPublished, ServiceAlertWithdrawn, StopArrival, TripArrivals};
use proto::transport::{VehicleMoved, VehiclePosition, VehicleState};
use proto::v1::Position;
use proto::v1::event::Payload;
use runtime::error::Error;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use territory::Territory;

use crate::alerts::{self, Coverage};
use crate::gtfs_rt::{self, Feed};
use crate::network::Network;
use crate::predict;
use crate::service_day;
use crate::store::{Store, StoreError, WriteBatch};
use crate::tracking::{AlarmChange, Tracked, Tracker};
use runtime::alarms::AlarmPayloads;

/// How far in the future a position's time may be (clock skew of on-board units).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// At most this many service alerts at once.
pub const MAX_SERVICE_ALERTS: usize = 1_000;

pub struct Transport {
    store: Store,
    territory: Arc<Territory>,
    network: Arc<Network>,
    coverage: Coverage,
    time_zone: jiff::tz::TimeZone,
    tracker: Mutex<Tracker>,
    service_alerts: Mutex<BTreeMap<String, ServiceAlert>>,
    /// `None` until a position is heard (then the wall clock stands in).
    clock: Mutex<Option<AvlClock>>,
    /// The communes of the last KPI publication (a commune whose vehicles are gone gets zeros).
    kpi_communes: Mutex<std::collections::BTreeSet<String>>,
    day: Mutex<TimetableDay>,
}

/// The newest position time received, and when (monotonic).
#[derive(Debug, Clone, Copy)]
struct AvlClock {
    latest_unix_s: f64,
    received: Instant,
}

/// Which feed day's timetable runs on which calendar day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimetableDay {
    /// The calendar day (local) whose service runs now.
    pub calendar: chrono::NaiveDate,
    /// The feed day whose timetable it runs (the same day when the feed covers it).
    pub timetable: chrono::NaiveDate,
    /// Given by configuration: it never turns.
    pub fixed: bool,
}

impl Transport {
    /// Opens the core on a store, restoring its vehicles, alarms and service alerts. `day` is the
    /// timetable day the tracker was built for.
    pub fn open(
        store: Store,
        territory: Arc<Territory>,
        network: Arc<Network>,
        time_zone: jiff::tz::TimeZone,
        mut tracker: Tracker,
        day: TimetableDay,
    ) -> Result<Transport, StoreError> {
        let vehicles = store.vehicles()?;
        // The clock resumes from the newest position stored, not from the wall clock: a replay
        // interrupted by a restart must not find every vehicle silent.
        let clock = vehicles
            .iter()
            .map(|v| v.seen_unix_s)
            .max()
            .map(|latest| AvlClock { latest_unix_s: latest as f64, received: Instant::now() });
        tracker.restore(vehicles, store.alarms()?);
        let service_alerts = store.service_alerts()?.into_iter().map(|a| (a.id.clone(), a)).collect();
        let coverage = Coverage::new(&network, |lat, lon| territory.locate(lat, lon).map(|c| c.id.clone()));
        Ok(Transport {
            store,
            territory,
            network,
            coverage,
            time_zone,
            tracker: Mutex::new(tracker),
            service_alerts: Mutex::new(service_alerts),
            clock: Mutex::new(clock),
            kpi_communes: Mutex::new(std::collections::BTreeSet::new()),
            day: Mutex::new(day),
        })
    }

    /// The service's clock (see the module's documentation), POSIX seconds.
    pub fn now_unix(&self) -> f64 {
        match *lock(&self.clock) {
            Some(clock) => clock.latest_unix_s + clock.received.elapsed().as_secs_f64(),
            None => unix_f64(SystemTime::now()),
        }
    }

    fn heard(&self, at: SystemTime) {
        let at = unix_f64(at);
        let mut clock = lock(&self.clock);
        let ahead = clock.is_none_or(|c| at > c.latest_unix_s + c.received.elapsed().as_secs_f64());
        if ahead {
            *clock = Some(AvlClock { latest_unix_s: at, received: Instant::now() });
        }
    }

    pub fn timetable_day(&self) -> TimetableDay {
        *lock(&self.day)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        lock(&self.tracker)
    }

    pub async fn flush(&self) -> Result<(), Error> {
        Ok(self.store.flush().await?)
    }

    /// GTFS time of `at` in the feed's time zone: seconds since local midnight, plus a day for
    /// the small hours when the trip started the evening before (GTFS times past 24:00).
    fn service_seconds(&self, at: SystemTime, first_departure_s: u32) -> f64 {
        let unix = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let seconds = jiff::Timestamp::from_second(unix as i64)
            .map(|t| {
                let civil = t.to_zoned(self.time_zone.clone()).datetime();
                f64::from(civil.hour()) * 3600.0 + f64::from(civil.minute()) * 60.0 + f64::from(civil.second())
            })
            .unwrap_or(0.0)
            + unix.fract();
        if seconds < 4.0 * 3600.0 && first_departure_s >= 20 * 3600 { seconds + 86_400.0 } else { seconds }
    }

    /// Records one position (not yet committed).
    pub fn record(&self, position: &VehiclePosition) -> Result<(), Error> {
        let at = validate(position, SystemTime::now()).map_err(Error::invalid)?;
        let trip = self
            .network
            .trips
            .get(&position.trip_id)
            .ok_or_else(|| Error::not_found(format!("trip {:?} is not in the timetable", position.trip_id)))?;
        let vehicle =
            AssetId::parse_as("vehicle id", &position.vehicle_id).map_err(|e| Error::invalid(e.to_string()))?;
        // The clock follows the AVL, and the timetable day with it at once: a replay of another
        // day than the wall clock's is matched against its own timetable from its first position.
        self.heard(at);
        self.turn_day();
        let mut tracker = self.tracker();
        // The commune where the vehicle is; a vehicle just outside the (simplified) boundaries
        // keeps the commune it was last seen in.
        let commune = match self.territory.locate(position.lat, position.lon) {
            Some(c) => c.id.clone(),
            None => tracker
                .vehicle(vehicle.as_str())
                .and_then(|v| CommuneId::parse(&v.state.commune).ok())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "vehicle {vehicle}: position lat {}, lon {} is outside every commune of the territory",
                        position.lat, position.lon
                    ))
                })?,
        };
        let first_departure = trip.stop_times.first().map(|s| s.departure_s).unwrap_or(0);
        let service_s = self.service_seconds(at, first_departure);
        let unix_s = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let (tracked, changes) =
            tracker.observe(&self.network, position, &commune, service_s, unix_s).map_err(|e| Error::invalid(e.0))?;
        let moved = event::check(event::new_event(
            &commune,
            &vehicle,
            event::timestamp(at),
            Some(Position { lat: position.lat, lon: position.lon }),
            Payload::VehicleMoved(VehicleMoved { state: Some(tracked.state.clone()) }),
        ))?;
        let mut batch = WriteBatch { vehicles: vec![tracked], events: vec![moved], ..Default::default() };
        add_alarm_changes(&mut batch, changes, event::timestamp(at))?;
        self.store.write(batch)?;
        Ok(())
    }

    /// Raises `not_reporting` for vehicles gone silent (in the service's clock), and commits.
    pub async fn check_silence(&self) -> Result<(), Error> {
        let now_unix = self.now_unix();
        let now = UNIX_EPOCH + Duration::from_secs_f64(now_unix.max(0.0));
        {
            let changes = self.tracker().silent(now_unix as u64);
            if changes.is_empty() {
                return Ok(());
            }
            let mut batch = WriteBatch::default();
            add_alarm_changes(&mut batch, changes, event::timestamp(now))?;
            self.store.write(batch)?;
        }
        self.flush().await
    }

    /// Turns the timetable day when the calendar day (in the feed's time zone, at 03:00) changed.
    pub fn turn_day(&self) {
        let now = UNIX_EPOCH + Duration::from_secs_f64(self.now_unix().max(0.0));
        let mut day = lock(&self.day);
        if day.fixed {
            return;
        }
        let calendar = service_day::calendar_day(&self.time_zone, unix_f64(now));
        if calendar == day.calendar {
            return;
        }
        let timetable = self.network.service_day_for(calendar).unwrap_or(calendar);
        self.tracker().set_service_day(&self.network, timetable);
        tracing::info!(%calendar, %timetable, "timetable day turned");
        *day = TimetableDay { calendar, timetable, fixed: false };
    }

    /// The arrivals of a trip at its stops still ahead (see [`predict::arrivals`]).
    pub fn trip_arrivals(&self, trip_id: &str) -> Result<TripArrivals, Error> {
        let trip = self
            .network
            .trips
            .get(trip_id)
            .ok_or_else(|| Error::not_found(format!("trip {trip_id:?} is not in the timetable")))?;
        let vehicle = self
            .tracker()
            .vehicles()
            .filter(|v| v.state.position.as_ref().is_some_and(|p| p.trip_id == trip_id))
            .max_by_key(|v| v.seen_unix_s)
            .cloned();
        let calendar = self.timetable_day().calendar;
        let origin =
            vehicle.as_ref().map_or_else(|| service_day::origin_unix(&self.time_zone, calendar), Tracked::origin_unix);
        let service_day = jiff::Timestamp::from_second(origin + 12 * 3600)
            .map(|t| t.to_zoned(self.time_zone.clone()).date().to_string())
            .unwrap_or_default();
        let timestamp = |s: i64| prost_types::Timestamp { seconds: s, nanos: 0 };
        let arrivals = predict::arrivals(trip, vehicle.as_ref(), origin)
            .into_iter()
            .map(|a| StopArrival {
                stop_name: self.network.stops.get(&a.stop_id).map(|s| s.name.clone()).unwrap_or_default(),
                stop_id: a.stop_id,
                stop_sequence: a.stop_sequence,
                scheduled_arrival: Some(timestamp(a.scheduled_unix)),
                predicted_arrival: a.predicted_unix.map(timestamp),
                delay_s: a.delay_s,
            })
            .collect();
        Ok(TripArrivals {
            trip_id: trip.id.clone(),
            route_id: trip.route_id.clone(),
            vehicle_id: vehicle.and_then(|v| v.state.position.map(|p| p.vehicle_id)).unwrap_or_default(),
            service_day,
            arrivals,
        })
    }

    /// Publishes the KPIs of every commune with vehicles in service (and zeros for a commune that
    /// had some at the last publication), as events.
    pub async fn publish_kpis(&self) -> Result<(), Error> {
        let now_unix = self.now_unix();
        let at = UNIX_EPOCH + Duration::from_secs_f64(now_unix.max(0.0));
        let mut kpis = crate::kpi::per_commune(self.tracker().vehicles(), now_unix as u64);
        {
            let mut previous = lock(&self.kpi_communes);
            for commune in previous.iter() {
                kpis.entry(commune.clone())
                    .or_insert(proto::transport::TransportKpi { punctuality: 1.0, ..Default::default() });
            }
            *previous = kpis.iter().filter(|(_, k)| k.vehicles > 0).map(|(c, _)| c.clone()).collect();
        }
        if kpis.is_empty() {
            return Ok(());
        }
        let mut events = Vec::new();
        for (commune, kpi) in kpis {
            let commune = CommuneId::parse(&commune).map_err(|e| Error::internal(e.to_string()))?;
            let asset = AssetId::parse(&format!("kpi-{commune}")).map_err(|e| Error::internal(e.to_string()))?;
            events.push(event::check(event::new_event(
                &commune,
                &asset,
                event::timestamp(at),
                None,
                Payload::TransportKpi(kpi),
            ))?);
        }
        self.store.write(WriteBatch { events, ..Default::default() })?;
        self.flush().await
    }

    /// One of the GTFS-Realtime feeds, now (in the service's clock).
    pub fn feed(&self, feed: Feed) -> FeedMessage {
        let now_unix = self.now_unix();
        match feed {
            Feed::VehiclePositions => {
                gtfs_rt::vehicle_positions(self.tracker().vehicles(), &self.network, &self.time_zone, now_unix as u64)
            }
            Feed::TripUpdates => {
                gtfs_rt::trip_updates(self.tracker().vehicles(), &self.network, &self.time_zone, now_unix as u64)
            }
            Feed::Alerts => gtfs_rt::alerts(
                lock(&self.service_alerts).values(),
                UNIX_EPOCH + Duration::from_secs_f64(now_unix.max(0.0)),
            ),
        }
    }

    /// Publishes (or replaces) a service alert: stored with one event per commune it concerns
    /// (and a withdrawal for the communes a replaced version concerned and this one does not).
    pub async fn publish_alert(&self, alert: ServiceAlert) -> Result<ServiceAlert, Error> {
        let now = SystemTime::now();
        let alert = alerts::validate(alert, &self.network, &self.coverage, now).map_err(Error::invalid)?;
        if alerts::has_ended(&alert, now) {
            return Err(Error::invalid(format!("alert {}: every active period has ended", alert.id)));
        }
        {
            let mut all = lock(&self.service_alerts);
            let previous = all.get(&alert.id);
            if previous.is_none() && all.len() >= MAX_SERVICE_ALERTS {
                return Err(Error::exhausted(format!(
                    "{MAX_SERVICE_ALERTS} service alerts are published already; withdraw some first"
                )));
            }
            let mut events = Vec::new();
            for commune in &alert.communes {
                let payload = Payload::ServiceAlertPublished(ServiceAlertPublished { alert: Some(alert.clone()) });
                events.push(self.alert_event(commune, &alert.id, now, payload)?);
            }
            for commune in previous.iter().flat_map(|p| &p.communes).filter(|c| !alert.communes.contains(c)) {
                let reason = "the new version of the alert no longer concerns this commune";
                let payload = Payload::ServiceAlertWithdrawn(ServiceAlertWithdrawn {
                    id: alert.id.clone(),
                    reason: reason.into(),
                });
                events.push(self.alert_event(commune, &alert.id, now, payload)?);
            }
            let batch = WriteBatch {
                service_alerts: vec![(alert.id.clone(), Some(alert.clone()))],
                events,
                ..Default::default()
            };
            self.store.write(batch)?;
            all.insert(alert.id.clone(), alert.clone());
        }
        self.flush().await?;
        tracing::info!(id = %alert.id, communes = ?alert.communes, "service alert published");
        Ok(alert)
    }

    /// Withdraws a service alert (not committed: the caller commits).
    fn withdraw(&self, id: &str, reason: &str, now: SystemTime) -> Result<bool, Error> {
        let mut all = lock(&self.service_alerts);
        let Some(alert) = all.get(id) else { return Ok(false) };
        let events = alert
            .communes
            .iter()
            .map(|commune| {
                let payload = Payload::ServiceAlertWithdrawn(ServiceAlertWithdrawn {
                    id: id.to_owned(),
                    reason: reason.to_owned(),
                });
                self.alert_event(commune, id, now, payload)
            })
            .collect::<Result<_, _>>()?;
        self.store.write(WriteBatch { service_alerts: vec![(id.to_owned(), None)], events, ..Default::default() })?;
        all.remove(id);
        Ok(true)
    }

    pub async fn withdraw_alert(&self, id: &str, reason: &str) -> Result<(), Error> {
        alerts::check_reason(reason).map_err(Error::invalid)?;
        let reason = if reason.trim().is_empty() { "withdrawn" } else { reason.trim() };
        if !self.withdraw(id, reason, SystemTime::now())? {
            return Err(Error::not_found(format!("no service alert {id:?}")));
        }
        self.flush().await?;
        tracing::info!(%id, %reason, "service alert withdrawn");
        Ok(())
    }

    /// Withdraws the alerts whose every period has ended.
    pub async fn expire_alerts(&self) -> Result<(), Error> {
        let now = UNIX_EPOCH + Duration::from_secs_f64(self.now_unix().max(0.0));
        let ended: Vec<String> =
            lock(&self.service_alerts).values().filter(|a| alerts::has_ended(a, now)).map(|a| a.id.clone()).collect();
        if ended.is_empty() {
            return Ok(());
        }
        for id in &ended {
            self.withdraw(id, "its active periods have ended", now)?;
        }
        self.flush().await?;
        tracing::info!(alerts = ?ended, "service alerts ended");
        Ok(())
    }

    pub fn service_alerts(&self) -> Vec<ServiceAlert> {
        lock(&self.service_alerts).values().cloned().collect()
    }

    fn alert_event(&self, commune: &str, id: &str, at: SystemTime, payload: Payload) -> Result<CheckedEvent, Error> {
        let commune = CommuneId::parse(commune).map_err(|e| Error::internal(e.to_string()))?;
        let asset = AssetId::parse(id).map_err(|e| Error::internal(e.to_string()))?;
        event::check(event::new_event(&commune, &asset, event::timestamp(at), None, payload)).map_err(Error::from)
    }

    /// The vehicles (of a route, or all), sorted by id.
    pub fn vehicles(&self, route_id: &str) -> Vec<VehicleState> {
        let mut vehicles: Vec<VehicleState> = self
            .tracker()
            .vehicles()
            .filter(|v| route_id.is_empty() || v.state.route_id == route_id)
            .map(|v| v.state.clone())
            .collect();
        vehicles.sort_by(|a, b| {
            let id = |v: &VehicleState| v.position.as_ref().map(|p| p.vehicle_id.clone()).unwrap_or_default();
            id(a).cmp(&id(b))
        });
        vehicles
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The transport domain's alarm events.
const ALARM_PAYLOADS: AlarmPayloads =
    AlarmPayloads { raised: Payload::TransportAlarmRaised, cleared: Payload::TransportAlarmCleared };

/// Adds the alarm changes, and their events, to a batch.
fn add_alarm_changes(
    batch: &mut WriteBatch,
    changes: Vec<AlarmChange>,
    at: prost_types::Timestamp,
) -> Result<(), Error> {
    runtime::alarms::announce(changes, &ALARM_PAYLOADS, at, &mut batch.events, &mut batch.alarms).map_err(Error::from)
}

/// Checks a position's fields; returns when it was measured.
pub fn validate(p: &VehiclePosition, now: SystemTime) -> Result<SystemTime, String> {
    AssetId::parse_as("vehicle id", &p.vehicle_id).map_err(|e| e.to_string())?;
    let v = &p.vehicle_id;
    if p.trip_id.is_empty() || p.trip_id.chars().count() > 128 {
        return Err(format!("vehicle {v}: trip_id must be 1 to 128 characters"));
    }
    if p.vehicle_label.chars().count() > 64 || p.vehicle_label.chars().any(char::is_control) {
        return Err(format!("vehicle {v}: vehicle_label must be at most 64 characters of text"));
    }
    event::check_position(p.lat, p.lon).map_err(|e| format!("vehicle {v}: {e}"))?;
    if let Some(b) = p.bearing
        && !(b.is_finite() && (0.0..=360.0).contains(&b))
    {
        return Err(format!("vehicle {v}: bearing {b} is outside 0..360"));
    }
    if let Some(s) = p.speed
        && !(s.is_finite() && (0.0..=100.0).contains(&s))
    {
        return Err(format!("vehicle {v}: speed {s} m/s is outside 0..100"));
    }
    if proto::transport::VehicleStopStatus::try_from(p.current_status).is_err() {
        return Err(format!("vehicle {v}: unknown current_status {}", p.current_status));
    }
    // GTFS stop sequences grow along a trip; no trip has this many stops.
    if p.current_stop_sequence > 100_000 {
        return Err(format!("vehicle {v}: current_stop_sequence {} is not a trip's", p.current_stop_sequence));
    }
    let at = p.timestamp.ok_or_else(|| format!("vehicle {v}: timestamp is missing"))?;
    let at = SystemTime::try_from(at).map_err(|e| format!("vehicle {v}: timestamp is not a valid time: {e}"))?;
    if at > now + MAX_CLOCK_SKEW {
        return Err(format!("vehicle {v}: timestamp is more than {} s in the future", MAX_CLOCK_SKEW.as_secs()));
    }
    if at < UNIX_EPOCH + Duration::from_secs(946_684_800) {
        return Err(format!("vehicle {v}: timestamp is before 2000"));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position() -> VehiclePosition {
        VehiclePosition {
            vehicle_id: "BUS-12".into(),
            trip_id: "2020-Semaine-1.921G_T01".into(),
            lat: 43.6,
            lon: 3.87,
            timestamp: Some(SystemTime::now().into()),
            ..Default::default()
        }
    }

    #[test]
    fn positions_are_validated() {
        let now = SystemTime::now();
        assert!(validate(&position(), now).is_ok(), "any GTFS trip id is accepted");
        type Change = Box<dyn Fn(&mut VehiclePosition)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|p| p.vehicle_id = "BUS.12".into()), "'.'"),
            (Box::new(|p| p.vehicle_id = String::new()), "empty"),
            (Box::new(|p| p.trip_id = String::new()), "trip_id"),
            (Box::new(|p| p.lat = f64::NAN), "WGS84"),
            (Box::new(|p| p.lon = 200.0), "WGS84"),
            (Box::new(|p| p.bearing = Some(400.0)), "bearing"),
            (Box::new(|p| p.speed = Some(f32::NAN)), "speed"),
            (Box::new(|p| p.speed = Some(-1.0)), "speed"),
            (Box::new(|p| p.timestamp = None), "timestamp is missing"),
            (Box::new(|p| p.timestamp = Some((SystemTime::now() + Duration::from_secs(3600)).into())), "future"),
            (Box::new(|p| p.current_status = 99), "current_status"),
            (Box::new(|p| p.current_stop_sequence = u32::MAX), "current_stop_sequence"),
        ];
        for (change, expected) in cases {
            let mut p = position();
            change(&mut p);
            let err = validate(&p, now).unwrap_err();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn coordinate() -> impl Strategy<Value = f64> {
            prop_oneof![any::<f64>(), -200.0..200.0f64, Just(f64::NAN)]
        }

        fn optional_f32() -> impl Strategy<Value = Option<f32>> {
            prop::option::of(prop_oneof![any::<f32>(), -500.0..500.0f32, Just(f32::NAN), Just(f32::INFINITY)])
        }

        proptest! {
            /// Whatever bytes a feeder sends, decoding and checking a position answers.
            #[test]
            fn random_positions_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                use prost::Message;
                if let Ok(p) = VehiclePosition::decode(bytes.as_slice()) {
                    let _ = validate(&p, SystemTime::now());
                }
            }

            /// What the check accepts is a vehicle on Earth, moving as a bus or a tram can.
            #[test]
            fn accepted_positions_are_physical(
                lat in coordinate(),
                lon in coordinate(),
                bearing in optional_f32(),
                speed in optional_f32(),
                status in prop_oneof![any::<i32>(), 0i32..4],
                sequence in prop_oneof![any::<u32>(), 0u32..200],
                seconds in prop_oneof![any::<i64>(), 1_700_000_000i64..1_900_000_000],
            ) {
                let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
                let p = VehiclePosition {
                    lat,
                    lon,
                    bearing,
                    speed,
                    current_status: status,
                    current_stop_sequence: sequence,
                    timestamp: Some(prost_types::Timestamp { seconds, nanos: 0 }),
                    ..position()
                };
                if let Ok(at) = validate(&p, now) {
                    prop_assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon));
                    prop_assert!(bearing.is_none_or(|b| (0.0..=360.0).contains(&b)));
                    prop_assert!(speed.is_none_or(|s| (0.0..=100.0).contains(&s)));
                    prop_assert!(sequence <= 100_000);
                    prop_assert!(at <= now + MAX_CLOCK_SKEW && at >= UNIX_EPOCH + Duration::from_secs(946_684_800));
                }
            }
        }
    }
}
