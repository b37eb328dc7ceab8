//! The service's core: validates positions, runs the tracker, and writes the vehicle state, the
//! alarm changes and their events with the store, in the tracker's order (one lock around both).

use proto::event::{self, CheckedEvent};
use proto::ids::{AssetId, CommuneId};
use proto::transport::{VehicleMoved, VehiclePosition, VehicleState};
use proto::v1::Position;
use proto::v1::event::Payload;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use territory::Territory;
use tonic::Status;

use crate::network::Network;
use crate::store::{Store, StoreError, WriteBatch};
use crate::tracking::{AlarmChange, Tracker};
use runtime::alarms::AlarmPayloads;

/// How far in the future a position's time may be (clock skew of on-board units).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

pub struct Transport {
    store: Store,
    territory: Arc<Territory>,
    network: Arc<Network>,
    time_zone: jiff::tz::TimeZone,
    tracker: Mutex<Tracker>,
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        tracing::error!(error = %e, "store failure");
        Status::unavailable(format!("the transport store could not complete the write: {e}"))
    }
}

fn checked(event: proto::v1::Event) -> Result<CheckedEvent, Status> {
    event::check(event).map_err(|e| Status::internal(format!("built an invalid event: {e}")))
}

impl Transport {
    pub fn open(
        store: Store,
        territory: Arc<Territory>,
        network: Arc<Network>,
        time_zone: jiff::tz::TimeZone,
        mut tracker: Tracker,
    ) -> Result<Transport, StoreError> {
        tracker.restore(store.vehicles()?, store.alarms()?);
        Ok(Transport { store, territory, network, time_zone, tracker: Mutex::new(tracker) })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn commit(&self) -> Result<(), Status> {
        Ok(self.store.commit().await?)
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
    pub fn record(&self, position: &VehiclePosition) -> Result<(), Status> {
        let at = validate(position, SystemTime::now()).map_err(Status::invalid_argument)?;
        let trip = self
            .network
            .trips
            .get(&position.trip_id)
            .ok_or_else(|| Status::not_found(format!("trip {:?} is not in the timetable", position.trip_id)))?;
        let vehicle = AssetId::parse_as("vehicle id", &position.vehicle_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut tracker = self.tracker();
        // The commune where the vehicle is; a vehicle just outside the (simplified) boundaries
        // keeps the commune it was last seen in.
        let commune = match self.territory.locate(position.lat, position.lon) {
            Some(c) => c.id.clone(),
            None => tracker
                .vehicles()
                .find(|v| v.state.position.as_ref().is_some_and(|p| p.vehicle_id == vehicle.as_str()))
                .and_then(|v| CommuneId::parse(&v.state.commune).ok())
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "vehicle {vehicle}: position lat {}, lon {} is outside every commune of the territory",
                        position.lat, position.lon
                    ))
                })?,
        };
        let first_departure = trip.stop_times.first().map(|s| s.departure_s).unwrap_or(0);
        let service_s = self.service_seconds(at, first_departure);
        let unix_s = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let (tracked, changes) = tracker
            .observe(&self.network, position, &commune, service_s, unix_s)
            .map_err(|e| Status::invalid_argument(e.0))?;
        let moved = checked(event::new_event(
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

    /// Raises `not_reporting` for vehicles gone silent, and commits.
    pub async fn check_silence(&self, now: SystemTime) -> Result<(), Status> {
        {
            let unix = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let changes = self.tracker().silent(unix);
            if changes.is_empty() {
                return Ok(());
            }
            let mut batch = WriteBatch::default();
            add_alarm_changes(&mut batch, changes, event::timestamp(now))?;
            self.store.write(batch)?;
        }
        self.commit().await
    }

    pub fn vehicles(&self, route_id: &str) -> Vec<VehicleState> {
        self.tracker()
            .vehicles()
            .filter(|v| route_id.is_empty() || v.state.route_id == route_id)
            .map(|v| v.state.clone())
            .collect()
    }
}

/// The transport domain's alarm events.
const ALARM_PAYLOADS: AlarmPayloads =
    AlarmPayloads { raised: Payload::TransportAlarmRaised, cleared: Payload::TransportAlarmCleared };

/// Adds the alarm changes, and their events, to a batch.
fn add_alarm_changes(
    batch: &mut WriteBatch,
    changes: Vec<AlarmChange>,
    at: prost_types::Timestamp,
) -> Result<(), Status> {
    runtime::alarms::announce(changes, &ALARM_PAYLOADS, at, &mut batch.events, &mut batch.alarms)
        .map_err(|e| Status::internal(format!("built an invalid event: {e}")))
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
        ];
        for (change, expected) in cases {
            let mut p = position();
            change(&mut p);
            let err = validate(&p, now).unwrap_err();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }
}
