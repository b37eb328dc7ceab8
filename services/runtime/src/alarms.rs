//! Alarm bookkeeping that every domain service does the same way: the active alarms a service
//! keeps, the changes its rules produce, how they are stored, and the events that announce them.

use crate::store::{StoreError, Writes};
use prost::Message;
use proto::event::{self, CheckedEvent, EventError};
use proto::ids::{AssetId, CommuneId};
use proto::v1::event::Payload;
use proto::v1::{AlarmCleared, AlarmRaised, Position};

/// An active alarm as a service keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlarm {
    pub commune: CommuneId,
    /// The asset the alarm's events are about.
    pub asset: AssetId,
    pub position: Option<Position>,
    pub raised: AlarmRaised,
}

/// What a rule decided.
#[derive(Debug, Clone, PartialEq)]
pub enum AlarmChange {
    Raised(ActiveAlarm),
    Cleared { alarm: ActiveAlarm, cleared: AlarmCleared },
}

/// The payload constructors of one domain's alarm events.
pub struct AlarmPayloads {
    pub raised: fn(AlarmRaised) -> Payload,
    pub cleared: fn(AlarmCleared) -> Payload,
}

impl AlarmChange {
    /// The event that announces the change, observed at `at`.
    pub fn event(&self, payloads: &AlarmPayloads, at: prost_types::Timestamp) -> Result<CheckedEvent, EventError> {
        let (alarm, payload) = match self {
            AlarmChange::Raised(a) => (a, (payloads.raised)(a.raised.clone())),
            AlarmChange::Cleared { alarm, cleared } => (alarm, (payloads.cleared)(cleared.clone())),
        };
        event::check(event::new_event(&alarm.commune, &alarm.asset, at, alarm.position, payload))
    }

    /// What to write in the store's alarm tree.
    pub fn into_op(self) -> AlarmOp {
        match self {
            AlarmChange::Raised(a) => AlarmOp::Raise(a),
            AlarmChange::Cleared { cleared, .. } => AlarmOp::Clear(cleared.key),
        }
    }
}

/// Turns rule decisions into the events that announce them and the store operations that keep
/// them, in order.
pub fn announce(
    changes: Vec<AlarmChange>,
    payloads: &AlarmPayloads,
    at: prost_types::Timestamp,
    events: &mut Vec<CheckedEvent>,
    ops: &mut Vec<AlarmOp>,
) -> Result<(), EventError> {
    for change in changes {
        events.push(change.event(payloads, at)?);
        ops.push(change.into_op());
    }
    Ok(())
}

pub enum AlarmOp {
    Raise(ActiveAlarm),
    Clear(String),
}

#[derive(Clone, PartialEq, prost::Message)]
struct AlarmRecord {
    #[prost(string, tag = "1")]
    commune: String,
    #[prost(string, tag = "2")]
    asset: String,
    #[prost(message, optional, tag = "3")]
    position: Option<Position>,
    #[prost(message, optional, tag = "4")]
    raised: Option<AlarmRaised>,
}

impl AlarmOp {
    /// Adds this raise or clear to `writes`, in the alarm tree `tree`.
    pub fn write(&self, tree: &str, writes: &mut Writes) {
        match self {
            AlarmOp::Raise(a) => {
                let record = AlarmRecord {
                    commune: a.commune.to_string(),
                    asset: a.asset.to_string(),
                    position: a.position,
                    raised: Some(a.raised.clone()),
                };
                writes.put(tree, a.raised.key.clone(), record.encode_to_vec());
            }
            AlarmOp::Clear(key) => writes.remove(tree, key.clone()),
        }
    }
}

/// Reads every alarm of an alarm tree.
pub fn read_all(tree: &sled::Tree) -> Result<Vec<ActiveAlarm>, StoreError> {
    let mut out = Vec::with_capacity(tree.len());
    for item in tree.iter() {
        let (key, value) = item?;
        let r: AlarmRecord = crate::store::decode("alarm", &key, &value)?;
        let corrupt = |message: String| StoreError::Corrupt {
            what: "alarm",
            key: String::from_utf8_lossy(&key).into_owned(),
            message,
        };
        out.push(ActiveAlarm {
            commune: CommuneId::parse(&r.commune).map_err(|e| corrupt(e.to_string()))?,
            asset: AssetId::parse(&r.asset).map_err(|e| corrupt(e.to_string()))?,
            position: r.position,
            raised: r.raised.ok_or_else(|| corrupt("no alarm".into()))?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarms_round_trip_through_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::Database::open(dir.path(), proto::v1::Domain::Lighting, &["alarms"]).unwrap();
        let alarm = ActiveAlarm {
            commune: CommuneId::parse("34172").unwrap(),
            asset: AssetId::parse("EP1").unwrap(),
            position: Some(Position { lat: 43.6, lon: 3.87 }),
            raised: AlarmRaised {
                key: "lighting/lamp_failure/EP1".into(),
                alarm_type: "lamp_failure".into(),
                ..Default::default()
            },
        };
        let mut writes = Writes::new();
        AlarmOp::Raise(alarm.clone()).write("alarms", &mut writes);
        db.commit(&writes, &[]).unwrap();
        assert_eq!(read_all(db.tree("alarms").unwrap()).unwrap(), [alarm]);
        let mut writes = Writes::new();
        AlarmOp::Clear("lighting/lamp_failure/EP1".into()).write("alarms", &mut writes);
        db.commit(&writes, &[]).unwrap();
        assert!(read_all(db.tree("alarms").unwrap()).unwrap().is_empty());
    }
}
