//! The water service's sled database: sensors (with their latest values), active alarms, valve
//! commands, closed links, each zone's memory (baselines, the night in progress), and the outbox.
//! The only module that sees sled. Every change is written with the events that announce it in
//! one transaction ([`Store::write`]); [`Store::flush`] makes it durable before the caller answers.

use prost::Message;
use proto::event::CheckedEvent;
use proto::water::{SensorState, ValveCommand};
use runtime::alarms::{ActiveAlarm, AlarmOp};
use runtime::outbox::Outbox;
pub use runtime::store::StoreError;
use runtime::store::{Database, Writes};

use crate::zones::ZoneMemory;

/// One transaction's worth of changes.
#[derive(Default)]
pub struct WriteBatch {
    pub sensors: Vec<SensorState>,
    pub alarms: Vec<AlarmOp>,
    pub commands: Vec<ValveCommand>,
    /// Link id -> closed (true) or back in service (false).
    pub links: Vec<(String, bool)>,
    pub zones: Vec<(String, ZoneMemory)>,
    pub events: Vec<CheckedEvent>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.sensors.is_empty()
            && self.alarms.is_empty()
            && self.commands.is_empty()
            && self.links.is_empty()
            && self.zones.is_empty()
            && self.events.is_empty()
    }
}

/// The trees of the water service's state.
/// `closed_links`: links whose valve a command closed (the network's state as operated), written
/// with the commands; nothing reads it yet (a network-state query comes with the console's water
/// layer).
const TREES: &[&str] = &["sensors", "alarms", "commands", "closed_links", "zones"];

#[derive(Clone)]
pub struct Store {
    db: Database,
    sensors: sled::Tree,
    alarms: sled::Tree,
    commands: sled::Tree,
    zones: sled::Tree,
}

impl Store {
    /// Opens the service's database in `path` (created if missing).
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        let db = Database::open(path, proto::v1::Domain::Water, TREES)?;
        Ok(Store {
            sensors: db.tree("sensors")?.clone(),
            alarms: db.tree("alarms")?.clone(),
            commands: db.tree("commands")?.clone(),
            zones: db.tree("zones")?.clone(),
            db,
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn outbox(&self) -> &Outbox {
        self.db.outbox()
    }

    pub fn sensors(&self) -> Result<Vec<SensorState>, StoreError> {
        runtime::store::all(&self.sensors, "sensor")
    }

    pub fn alarms(&self) -> Result<Vec<ActiveAlarm>, StoreError> {
        runtime::alarms::read_all(&self.alarms)
    }

    pub fn commands(&self) -> Result<Vec<ValveCommand>, StoreError> {
        runtime::store::all(&self.commands, "valve command")
    }

    pub fn command(&self, id: &str) -> Result<Option<ValveCommand>, StoreError> {
        runtime::store::get(&self.commands, "valve command", id)
    }

    pub fn zones(&self) -> Result<Vec<(String, ZoneMemory)>, StoreError> {
        let mut out = Vec::new();
        for item in self.zones.iter() {
            let (key, value) = item?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let memory = serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                what: "zone memory",
                key: key.clone(),
                message: e.to_string(),
            })?;
            out.push((key, memory));
        }
        Ok(out)
    }

    /// Writes a batch in one transaction (not yet durable: see [`Store::flush`]).
    pub fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut writes = Writes::new();
        for s in &batch.sensors {
            let id = s.sensor.as_ref().map(|s| s.id.clone()).unwrap_or_default();
            writes.put("sensors", id, s.encode_to_vec());
        }
        for op in &batch.alarms {
            op.write("alarms", &mut writes);
        }
        for c in &batch.commands {
            writes.put("commands", c.id.as_bytes(), c.encode_to_vec());
        }
        for (link, closed) in &batch.links {
            if *closed {
                writes.put("closed_links", link.as_bytes(), [1u8]);
            } else {
                writes.remove("closed_links", link.as_bytes());
            }
        }
        for (id, memory) in &batch.zones {
            let encoded = serde_json::to_vec(memory).map_err(|e| StoreError::Corrupt {
                what: "zone memory",
                key: id.clone(),
                message: e.to_string(),
            })?;
            writes.put("zones", id.as_bytes(), encoded);
        }
        self.db.commit(&writes, &batch.events)
    }

    /// Makes what was written durable (and wakes the outbox relay).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaks::LeakThreshold;
    use crate::zones::NightFlow;

    #[test]
    fn zone_memories_read_back_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut memory = ZoneMemory::new(LeakThreshold::default());
        memory.detector.night(0, 139.71708333333333);
        memory.last_night =
            Some(NightFlow { date: "2026-11-23".into(), weekday: 0, night_flow: 139.71708333333333, baseline: None });
        store.write(WriteBatch { zones: vec![("DMA-1".into(), memory.clone())], ..Default::default() }).unwrap();
        let (id, read) = store.zones().unwrap().remove(0);
        assert_eq!(id, "DMA-1");
        assert_eq!(read.last_night, memory.last_night);
        assert_eq!(read.detector.baseline(0), Some(139.71708333333333));
    }
}
