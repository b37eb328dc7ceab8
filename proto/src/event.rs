//! Building events on the service side and checking them on the consumer side.

use crate::ids::{AlarmKey, AssetId, CommuneId, IdError};
use crate::subject;
use crate::v1::{Domain, Event, Position, event::Payload};
use prost::Message;
use std::time::SystemTime;

/// What happened, as a closed set. The token is the last subject token and the envelope's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    StreetlightRegistered,
    StreetlightStatus,
    StreetlightFault,
    LightingCommand,
    LightingKpi,
    LightingAlarmRaised,
    LightingAlarmCleared,
    VehicleMoved,
    TransportAlarmRaised,
    TransportAlarmCleared,
    ServiceAlertPublished,
    ServiceAlertWithdrawn,
    TransportKpi,
    ReportCreated,
    ReportUpdated,
    ReportsKpi,
    WaterReading,
    WaterAlarmRaised,
    WaterAlarmCleared,
    ValveCommand,
    WaterKpi,
    AlarmAction,
    LogbookEntry,
}

impl EventKind {
    pub fn token(self) -> &'static str {
        match self {
            EventKind::StreetlightRegistered => "streetlight_registered",
            EventKind::StreetlightStatus => "streetlight_status",
            EventKind::StreetlightFault => "streetlight_fault",
            EventKind::LightingCommand => "command_updated",
            EventKind::LightingKpi => "kpi",
            EventKind::LightingAlarmRaised => "alarm_raised",
            EventKind::LightingAlarmCleared => "alarm_cleared",
            EventKind::VehicleMoved => "vehicle_moved",
            EventKind::TransportAlarmRaised => "alarm_raised",
            EventKind::TransportAlarmCleared => "alarm_cleared",
            EventKind::ServiceAlertPublished => "service_alert_published",
            EventKind::ServiceAlertWithdrawn => "service_alert_withdrawn",
            EventKind::TransportKpi => "kpi",
            EventKind::ReportCreated => "report_created",
            EventKind::ReportUpdated => "report_updated",
            EventKind::ReportsKpi => "kpi",
            EventKind::WaterReading => "reading",
            EventKind::WaterAlarmRaised => "alarm_raised",
            EventKind::WaterAlarmCleared => "alarm_cleared",
            EventKind::ValveCommand => "command_updated",
            EventKind::WaterKpi => "kpi",
            EventKind::AlarmAction => "alarm_action",
            EventKind::LogbookEntry => "logbook_entry",
        }
    }

    pub fn domain(self) -> Domain {
        match self {
            EventKind::StreetlightRegistered
            | EventKind::StreetlightStatus
            | EventKind::StreetlightFault
            | EventKind::LightingCommand
            | EventKind::LightingKpi
            | EventKind::LightingAlarmRaised
            | EventKind::LightingAlarmCleared => Domain::Lighting,
            EventKind::VehicleMoved
            | EventKind::TransportAlarmRaised
            | EventKind::TransportAlarmCleared
            | EventKind::ServiceAlertPublished
            | EventKind::ServiceAlertWithdrawn
            | EventKind::TransportKpi => Domain::Transport,
            EventKind::ReportCreated | EventKind::ReportUpdated | EventKind::ReportsKpi => Domain::Reports,
            EventKind::WaterReading
            | EventKind::WaterAlarmRaised
            | EventKind::WaterAlarmCleared
            | EventKind::ValveCommand
            | EventKind::WaterKpi => Domain::Water,
            EventKind::AlarmAction | EventKind::LogbookEntry => Domain::Ops,
        }
    }
}

impl Payload {
    pub fn kind(&self) -> EventKind {
        match self {
            Payload::StreetlightRegistered(_) => EventKind::StreetlightRegistered,
            Payload::StreetlightStatus(_) => EventKind::StreetlightStatus,
            Payload::StreetlightFault(_) => EventKind::StreetlightFault,
            Payload::LightingCommand(_) => EventKind::LightingCommand,
            Payload::LightingKpi(_) => EventKind::LightingKpi,
            Payload::LightingAlarmRaised(_) => EventKind::LightingAlarmRaised,
            Payload::LightingAlarmCleared(_) => EventKind::LightingAlarmCleared,
            Payload::VehicleMoved(_) => EventKind::VehicleMoved,
            Payload::TransportAlarmRaised(_) => EventKind::TransportAlarmRaised,
            Payload::TransportAlarmCleared(_) => EventKind::TransportAlarmCleared,
            Payload::ServiceAlertPublished(_) => EventKind::ServiceAlertPublished,
            Payload::ServiceAlertWithdrawn(_) => EventKind::ServiceAlertWithdrawn,
            Payload::TransportKpi(_) => EventKind::TransportKpi,
            Payload::ReportCreated(_) => EventKind::ReportCreated,
            Payload::ReportUpdated(_) => EventKind::ReportUpdated,
            Payload::ReportsKpi(_) => EventKind::ReportsKpi,
            Payload::WaterReading(_) => EventKind::WaterReading,
            Payload::WaterAlarmRaised(_) => EventKind::WaterAlarmRaised,
            Payload::WaterAlarmCleared(_) => EventKind::WaterAlarmCleared,
            Payload::ValveCommand(_) => EventKind::ValveCommand,
            Payload::WaterKpi(_) => EventKind::WaterKpi,
            Payload::AlarmAction(_) => EventKind::AlarmAction,
            Payload::LogbookEntry(_) => EventKind::LogbookEntry,
        }
    }
}

/// Why an event is not acceptable. Used by services before they store one, and by consumers on
/// what they receive from the bus.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("undecodable event: {0}")]
    Undecodable(String),
    #[error("event id {0:?} is not a UUID")]
    BadId(String),
    #[error(transparent)]
    BadIdentifier(#[from] IdError),
    #[error("event has no payload")]
    NoPayload,
    #[error("event says domain {said:?} and kind {said_kind:?} but carries a {actual} payload")]
    KindMismatch { said: String, said_kind: String, actual: &'static str },
    #[error("event has no {0} time")]
    MissingTime(&'static str),
    #[error("position lat {lat}, lon {lon} is not a WGS84 coordinate (lat in -90..=90, lon in -180..=180)")]
    BadPosition { lat: f64, lon: f64 },
    #[error("event of {bytes} bytes is over the {MAX_EVENT_BYTES} an event may carry")]
    TooLarge { bytes: usize },
}

/// A service that builds an event its own contract refuses has a bug: the call fails as
/// `INTERNAL`, and nothing is stored.
impl From<EventError> for tonic::Status {
    fn from(e: EventError) -> tonic::Status {
        tonic::Status::internal(format!("built an invalid event: {e}"))
    }
}

/// The most an event may weigh, encoded: a quarter of NATS's default `max_payload` (1 MB), so
/// that every event the services build can be published; what an event carries (a report's
/// history, a command's targets) is bounded well below it by each domain.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// Checks a WGS84 position (finite, in range).
pub fn check_position(lat: f64, lon: f64) -> Result<Position, EventError> {
    if lat.is_finite() && lon.is_finite() && (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) {
        Ok(Position { lat, lon })
    } else {
        Err(EventError::BadPosition { lat, lon })
    }
}

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// A new event: a fresh UUIDv7 id, recorded now, domain and kind taken from the payload.
pub fn new_event(
    commune: &CommuneId,
    asset_id: &AssetId,
    observed_at: prost_types::Timestamp,
    position: Option<Position>,
    payload: Payload,
) -> Event {
    let kind = payload.kind();
    Event {
        id: uuid::Uuid::now_v7().to_string(),
        commune: commune.to_string(),
        domain: kind.domain() as i32,
        kind: kind.token().to_owned(),
        asset_id: asset_id.to_string(),
        observed_at: Some(observed_at),
        recorded_at: Some(timestamp(SystemTime::now())),
        position,
        payload: Some(payload),
    }
}

/// An event that passed [`check`]: its identifiers are parsed and its payload agrees with its
/// domain and kind.
#[derive(Debug, Clone)]
pub struct CheckedEvent {
    pub commune: CommuneId,
    pub asset_id: AssetId,
    pub kind: EventKind,
    pub event: Event,
}

impl CheckedEvent {
    pub fn domain(&self) -> Domain {
        self.kind.domain()
    }

    /// The subject this event is published on.
    pub fn subject(&self) -> String {
        subject::event(self.kind.domain(), &self.commune, self.kind.token(), &self.asset_id)
    }

    /// Whether `subject` is this event's: its subject, or the one it had in a stream written
    /// before subjects named the asset. A reader refuses an event found on another subject (a
    /// publisher allowed one commune's or domain's subjects must not slip in another's).
    pub fn published_on(&self, subject: &str) -> bool {
        subject::is_event(subject, self.kind.domain(), &self.commune, self.kind.token(), &self.asset_id)
    }

    pub fn payload(&self) -> &Payload {
        // `check` refuses events without a payload.
        match &self.event.payload {
            Some(p) => p,
            None => unreachable!("checked events have a payload"),
        }
    }
}

/// Checks every invariant of the envelope.
/// Checks an event a process builds to publish: [`check_received`], and at most
/// [`MAX_EVENT_BYTES`] encoded.
pub fn check(event: Event) -> Result<CheckedEvent, EventError> {
    let bytes = event.encoded_len();
    if bytes > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge { bytes });
    }
    check_received(event)
}

/// Checks an event read from the stream: the envelope and the payload's identifiers. Not its
/// size: an event the stream holds was published under the bound of its day, and refusing it
/// now would lose it from a rebuilt view.
pub fn check_received(event: Event) -> Result<CheckedEvent, EventError> {
    uuid::Uuid::parse_str(&event.id).map_err(|_| EventError::BadId(event.id.clone()))?;
    let commune = CommuneId::parse(&event.commune)?;
    let asset_id = AssetId::parse(&event.asset_id)?;
    let kind = event.payload.as_ref().ok_or(EventError::NoPayload)?.kind();
    if event.domain != kind.domain() as i32 || event.kind != kind.token() {
        return Err(EventError::KindMismatch {
            said: Domain::try_from(event.domain)
                .map(|d| d.token().to_owned())
                .unwrap_or_else(|_| event.domain.to_string()),
            said_kind: event.kind.clone(),
            actual: kind.token(),
        });
    }
    if event.observed_at.is_none() {
        return Err(EventError::MissingTime("observed"));
    }
    if event.recorded_at.is_none() {
        return Err(EventError::MissingTime("recorded"));
    }
    if let Some(p) = &event.position {
        check_position(p.lat, p.lon)?;
    }
    match &event.payload {
        Some(Payload::LightingAlarmRaised(a) | Payload::TransportAlarmRaised(a) | Payload::WaterAlarmRaised(a)) => {
            AlarmKey::parse(&a.key)?;
        }
        Some(Payload::LightingAlarmCleared(a) | Payload::TransportAlarmCleared(a) | Payload::WaterAlarmCleared(a)) => {
            AlarmKey::parse(&a.key)?;
        }
        Some(Payload::AlarmAction(a)) => {
            AlarmKey::parse(&a.alarm_key)?;
        }
        _ => {}
    }
    Ok(CheckedEvent { commune, asset_id, kind, event })
}

/// Decodes and checks an event received from the bus.
/// Decodes and checks an event read from the stream (see [`check_received`]).
pub fn decode(bytes: &[u8]) -> Result<CheckedEvent, EventError> {
    let event = Event::decode(bytes).map_err(|e| EventError::Undecodable(e.to_string()))?;
    check_received(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lighting::{StatusReport, StreetlightStatusReported};

    pub(super) fn sample() -> Event {
        new_event(
            &CommuneId::parse("34172").unwrap(),
            &AssetId::parse("EP00001").unwrap(),
            timestamp(SystemTime::now()),
            Some(Position { lat: 43.6, lon: 3.88 }),
            Payload::StreetlightStatus(StreetlightStatusReported {
                report: Some(StatusReport::default()),
                ..Default::default()
            }),
        )
    }

    #[test]
    fn a_new_event_checks_and_has_its_subject() {
        let e = sample();
        assert_eq!(e.kind, "streetlight_status");
        let checked = decode(&e.encode_to_vec()).unwrap();
        assert_eq!(checked.subject(), format!("lighting.34172.streetlight_status.{}", checked.asset_id.as_str()));
        assert!(checked.published_on("lighting.34172.streetlight_status"), "a stream written before the asset token");
        assert!(!checked.published_on("lighting.34129.streetlight_status"), "another commune");
        assert!(!checked.published_on(&format!("lighting.34172.streetlight_status.{}x", checked.asset_id.as_str())));
        assert_eq!(checked.event.id, e.id);
    }

    #[test]
    fn inconsistent_events_are_refused() {
        let mut e = sample();
        e.kind = "streetlight_registered".into();
        assert!(matches!(check(e), Err(EventError::KindMismatch { .. })));
        let mut e = sample();
        e.commune = "34.172".into();
        assert!(matches!(check(e), Err(EventError::BadIdentifier(_))));
        let mut e = sample();
        e.id = "not-a-uuid".into();
        assert!(matches!(check(e), Err(EventError::BadId(_))));
        let mut e = sample();
        e.position = Some(Position { lat: f64::NAN, lon: 3.0 });
        assert!(matches!(check(e), Err(EventError::BadPosition { .. })));
        let mut e = sample();
        e.payload = None;
        assert_eq!(check(e).unwrap_err(), EventError::NoPayload);
        assert!(matches!(decode(b"\xff\xff\xff"), Err(EventError::Undecodable(_))));
    }
}

/// Property tests of the decoder every NATS payload goes through: whatever bytes arrive (random,
/// or a valid event with bytes flipped, cut or appended), it answers without panicking, and what
/// it accepts is consistent and round-trips through an encoding (what a store keeps).
#[cfg(test)]
mod decode_properties {
    use super::*;
    use proptest::prelude::*;

    fn valid() -> Vec<u8> {
        super::tests::sample().encode_to_vec()
    }

    fn accepted_is_consistent(bytes: &[u8]) {
        if let Ok(checked) = decode(bytes) {
            assert!(checked.subject().split('.').all(|token| !token.is_empty()), "{}", checked.subject());
            let again = decode(&checked.event.encode_to_vec()).expect("an accepted event decodes again");
            assert_eq!(again.event, checked.event);
            assert_eq!(again.subject(), checked.subject());
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            accepted_is_consistent(&bytes);
        }

        #[test]
        fn a_damaged_event_never_panics(
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in any::<prop::sample::Index>(),
            tail in prop::collection::vec(any::<u8>(), 0..32),
        ) {
            let mut bytes = valid();
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes.extend(tail);
            accepted_is_consistent(&bytes);
        }
    }
}
