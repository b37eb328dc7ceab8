//! The lighting service's sled database: inventory, lamp states, active alarms, commands, and the
//! outbox. This is the only module that sees sled. Every change is written by [`Store::write`]
//! together with the events that announce it, in one transaction; [`Store::flush`] makes it
//! durable before the caller answers.

use prost::Message;
use proto::event::CheckedEvent;
use proto::lighting::{DimmingSchedule, LightingCommand, StatusReport, Streetlight};
use runtime::outbox::Outbox;
pub use runtime::store::StoreError;
use runtime::store::{Database, Writes, all, all_keyed, get};

use crate::rules::LampCondition;
use runtime::alarms::{ActiveAlarm, AlarmOp};

/// What the service knows of one lamp beyond its inventory entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LampState {
    /// The latest report by observation time.
    #[prost(message, optional, tag = "1")]
    pub last_report: Option<StatusReport>,
    /// Active TALQ faults.
    #[prost(int32, repeated, tag = "2")]
    pub faults: Vec<i32>,
    #[prost(bool, tag = "3")]
    pub on_in_daytime: bool,
    #[prost(message, optional, tag = "4")]
    pub date_last_switching_on: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "5")]
    pub date_last_switching_off: Option<prost_types::Timestamp>,
}

impl LampState {
    pub fn condition(&self) -> LampCondition {
        LampCondition {
            status: self.last_report.as_ref().map(|r| r.status).unwrap_or_default(),
            faults: self.faults.iter().copied().collect(),
            on_in_daytime: self.on_in_daytime,
        }
    }
}

/// A command and the lamps it still waits for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CommandRecord {
    #[prost(message, optional, tag = "1")]
    pub command: Option<LightingCommand>,
    #[prost(string, repeated, tag = "2")]
    pub lamps: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    pub remaining: Vec<String>,
}

/// Everything one operation changes; written atomically by [`Store::write`].
#[derive(Default)]
pub struct WriteBatch {
    pub streetlights: Vec<Streetlight>,
    pub lamp_states: Vec<(String, LampState)>,
    /// Applied in order.
    pub alarms: Vec<AlarmOp>,
    pub commands: Vec<CommandRecord>,
    /// Energy per (commune, hour start in Unix seconds), watt-hours.
    pub energy_hours: Vec<(String, u64, f64)>,
    pub events: Vec<CheckedEvent>,
}

/// The trees of the lighting service's state.
const TREES: &[&str] = &["streetlights", "lamp_states", "alarms", "commands", "energy_hours", "schedules"];

#[derive(Clone)]
pub struct Store {
    db: Database,
    streetlights: sled::Tree,
    lamp_states: sled::Tree,
    alarms: sled::Tree,
    commands: sled::Tree,
    energy_hours: sled::Tree,
    schedules: sled::Tree,
}

impl Store {
    /// Opens the service's database in `path` (created if missing).
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        Store::open_unit(path, proto::subject::Unit::whole(proto::v1::Domain::Lighting))
    }

    /// The same for a shard of the service (its store is its own).
    pub fn open_unit(path: &std::path::Path, unit: proto::subject::Unit) -> Result<Store, StoreError> {
        let db = Database::open_unit(path, unit, TREES)?;
        Ok(Store {
            streetlights: db.tree("streetlights")?.clone(),
            lamp_states: db.tree("lamp_states")?.clone(),
            alarms: db.tree("alarms")?.clone(),
            commands: db.tree("commands")?.clone(),
            energy_hours: db.tree("energy_hours")?.clone(),
            schedules: db.tree("schedules")?.clone(),
            db,
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn outbox(&self) -> &Outbox {
        self.db.outbox()
    }

    pub fn streetlight(&self, id: &str) -> Result<Option<Streetlight>, StoreError> {
        get(&self.streetlights, "streetlight", id)
    }

    pub fn lamp_state(&self, id: &str) -> Result<Option<LampState>, StoreError> {
        get(&self.lamp_states, "lamp state", id)
    }

    pub fn command(&self, id: &str) -> Result<Option<CommandRecord>, StoreError> {
        get(&self.commands, "command", id)
    }

    pub fn streetlight_count(&self) -> usize {
        self.streetlights.len()
    }

    pub fn all_streetlights(&self) -> Result<Vec<Streetlight>, StoreError> {
        all(&self.streetlights, "streetlight")
    }

    pub fn all_lamp_states(&self) -> Result<Vec<(String, LampState)>, StoreError> {
        all_keyed(&self.lamp_states, "lamp state")
    }

    pub fn all_alarms(&self) -> Result<Vec<ActiveAlarm>, StoreError> {
        runtime::alarms::read_all(&self.alarms)
    }

    /// Energy per (commune, hour), watt-hours.
    pub fn all_energy_hours(&self) -> Result<Vec<(String, u64, f64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.energy_hours.iter() {
            let (key, value) = item?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let parsed = key.split_once('/').and_then(|(c, h)| Some((c.to_owned(), h.parse().ok()?)));
            let wh = <[u8; 8]>::try_from(value.as_ref()).map(f64::from_be_bytes);
            match (parsed, wh) {
                (Some((commune, hour)), Ok(wh)) => out.push((commune, hour, wh)),
                _ => return Err(StoreError::Corrupt { what: "energy hour", key, message: "bad key or value".into() }),
            }
        }
        Ok(out)
    }

    pub fn schedules(&self) -> Result<Vec<DimmingSchedule>, StoreError> {
        all(&self.schedules, "schedule")
    }

    /// Saves a schedule (durably: schedules change rarely).
    pub async fn put_schedule(&self, schedule: &DimmingSchedule) -> Result<(), StoreError> {
        let mut writes = Writes::new();
        writes.put("schedules", schedule.id.as_bytes(), schedule.encode_to_vec());
        self.db.commit(&writes, &[])?;
        self.db.flush().await
    }

    /// Removes a schedule; false when there was none.
    pub async fn delete_schedule(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.schedules.contains_key(id.as_bytes())?;
        let mut writes = Writes::new();
        writes.remove("schedules", id.as_bytes());
        self.db.commit(&writes, &[])?;
        self.db.flush().await?;
        Ok(existed)
    }

    /// Commands still pending (restored into the command desk at start).
    pub fn pending_commands(&self) -> Result<Vec<CommandRecord>, StoreError> {
        let all: Vec<CommandRecord> = all(&self.commands, "command")?;
        Ok(all.into_iter().filter(|r| !r.remaining.is_empty()).collect())
    }

    /// Writes a batch and its events in one transaction (not yet flushed: see [`Store::flush`]).
    pub fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut writes = Writes::new();
        for (commune, hour, wh) in &batch.energy_hours {
            writes.put("energy_hours", format!("{commune}/{hour}"), wh.to_be_bytes());
        }
        for light in &batch.streetlights {
            writes.put("streetlights", light.id.as_bytes(), light.encode_to_vec());
        }
        for (id, state) in &batch.lamp_states {
            writes.put("lamp_states", id.as_bytes(), state.encode_to_vec());
        }
        // Raises and clears, in order.
        for op in &batch.alarms {
            op.write("alarms", &mut writes);
        }
        for record in &batch.commands {
            let id = record.command.as_ref().map(|c| c.id.clone()).unwrap_or_default();
            writes.put("commands", id, record.encode_to_vec());
        }
        self.db.commit(&writes, &batch.events)
    }

    /// Makes every written batch durable and wakes the outbox relay.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().await
    }
}
