//! The water service's sled database: sensors (with their latest values), active alarms, valve
//! commands, closed links, each zone's memory (baselines, the night in progress), and the outbox.
//! The only module that sees sled. Every change is written with the events that announce it in
//! one transaction ([`Store::write`]); [`Store::flush`] makes it durable before the caller answers.

use prost::Message;
use proto::event::CheckedEvent;
use proto::water::{SensorState, ValveCommand};
use runtime::alarms::{ActiveAlarm, AlarmOp, EncodedOp};
use runtime::outbox::{Outbox, PreparedEntry};
pub use runtime::store::StoreError;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

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

#[derive(Clone)]
pub struct Store {
    sensors: sled::Tree,
    alarms: sled::Tree,
    commands: sled::Tree,
    /// Links whose valve a command closed (the network's state as operated). Written with the
    /// commands; nothing reads it yet (a network-state query comes with the console's water layer).
    closed_links: sled::Tree,
    zones: sled::Tree,
    outbox: Outbox,
}

impl Store {
    /// Opens the service's database in `path` (created if missing).
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        let db = runtime::store::open_database(path)?;
        Ok(Store {
            sensors: db.open_tree("sensors")?,
            alarms: db.open_tree("alarms")?,
            commands: db.open_tree("commands")?,
            closed_links: db.open_tree("closed_links")?,
            zones: db.open_tree("zones")?,
            outbox: Outbox::open(&db, proto::v1::Domain::Water)?,
        })
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
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
        if batch.is_empty() {
            return Ok(());
        }
        let entries: Vec<PreparedEntry> =
            batch.events.iter().map(|e| self.outbox.prepare(e)).collect::<Result<_, sled::Error>>()?;
        let sensors: Vec<(Vec<u8>, Vec<u8>)> = batch
            .sensors
            .iter()
            .map(|s| (s.sensor.as_ref().map(|s| s.id.clone()).unwrap_or_default().into_bytes(), s.encode_to_vec()))
            .collect();
        let alarms: Vec<EncodedOp> = batch.alarms.iter().map(AlarmOp::encode).collect();
        let commands: Vec<(Vec<u8>, Vec<u8>)> =
            batch.commands.iter().map(|c| (c.id.clone().into_bytes(), c.encode_to_vec())).collect();
        let zones: Vec<(Vec<u8>, Vec<u8>)> = batch
            .zones
            .iter()
            .map(|(id, memory)| (id.clone().into_bytes(), serde_json::to_vec(memory).unwrap_or_default()))
            .collect();
        (&self.sensors, &self.alarms, &self.commands, &self.closed_links, &self.zones, self.outbox.tree())
            .transaction(|(t_sensors, t_alarms, t_commands, t_links, t_zones, t_outbox)| {
                for (k, v) in &sensors {
                    t_sensors.insert(k.as_slice(), v.as_slice())?;
                }
                for op in &alarms {
                    op.stage(t_alarms)?;
                }
                for (k, v) in &commands {
                    t_commands.insert(k.as_slice(), v.as_slice())?;
                }
                for (link, closed) in &batch.links {
                    if *closed {
                        t_links.insert(link.as_bytes(), &[1u8][..])?;
                    } else {
                        t_links.remove(link.as_bytes())?;
                    }
                }
                for (k, v) in &zones {
                    t_zones.insert(k.as_slice(), v.as_slice())?;
                }
                for entry in &entries {
                    entry.stage(t_outbox)?;
                }
                Ok::<(), ConflictableTransactionError<StoreError>>(())
            })?;
        Ok(())
    }

    /// Makes what was written durable (and wakes the outbox relay).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.outbox.flush().await?;
        Ok(())
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
