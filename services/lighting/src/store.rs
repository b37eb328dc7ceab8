//! The lighting service's sled database: inventory, lamp states, active alarms, commands, and the
//! outbox. This is the only module that sees sled. Every change is written by [`Store::write`]
//! together with the events that announce it, in one transaction; [`Store::flush`] makes it
//! durable before the caller answers.

use prost::Message;
use proto::event::CheckedEvent;
use proto::lighting::{DimmingSchedule, LightingCommand, StatusReport, Streetlight};
use runtime::outbox::{Outbox, PreparedEntry};
pub use runtime::store::StoreError;
use runtime::store::{all, all_keyed, get};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use crate::rules::LampCondition;
use runtime::alarms::{ActiveAlarm, AlarmOp, EncodedOp};

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

#[derive(Clone)]
pub struct Store {
    streetlights: sled::Tree,
    lamp_states: sled::Tree,
    alarms: sled::Tree,
    commands: sled::Tree,
    energy_hours: sled::Tree,
    schedules: sled::Tree,
    outbox: Outbox,
}

impl Store {
    /// Opens the service's database in `path` (created if missing).
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        let db = runtime::store::open_database(path)?;
        Ok(Store {
            streetlights: db.open_tree("streetlights")?,
            lamp_states: db.open_tree("lamp_states")?,
            alarms: db.open_tree("alarms")?,
            commands: db.open_tree("commands")?,
            energy_hours: db.open_tree("energy_hours")?,
            schedules: db.open_tree("schedules")?,
            outbox: Outbox::open(&db, proto::v1::Domain::Lighting)?,
        })
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
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
        self.schedules.insert(schedule.id.as_bytes(), schedule.encode_to_vec())?;
        self.outbox.flush().await?;
        Ok(())
    }

    /// Removes a schedule; false when there was none.
    pub async fn delete_schedule(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.schedules.remove(id.as_bytes())?.is_some();
        self.outbox.flush().await?;
        Ok(existed)
    }

    /// Commands still pending (restored into the command desk at start).
    pub fn pending_commands(&self) -> Result<Vec<CommandRecord>, StoreError> {
        let all: Vec<CommandRecord> = all(&self.commands, "command")?;
        Ok(all.into_iter().filter(|r| !r.remaining.is_empty()).collect())
    }

    /// Writes a batch and its events in one transaction (not yet flushed: see [`Store::flush`]).
    pub fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let entries: Vec<PreparedEntry> =
            batch.events.iter().map(|e| self.outbox.prepare(e)).collect::<Result<_, sled::Error>>()?;
        let lights: Vec<(Vec<u8>, Vec<u8>)> =
            batch.streetlights.iter().map(|l| (l.id.as_bytes().to_vec(), l.encode_to_vec())).collect();
        let states: Vec<(Vec<u8>, Vec<u8>)> =
            batch.lamp_states.iter().map(|(id, s)| (id.as_bytes().to_vec(), s.encode_to_vec())).collect();
        // Raises and clears, in order.
        let alarms: Vec<EncodedOp> = batch.alarms.iter().map(AlarmOp::encode).collect();
        let commands: Vec<(Vec<u8>, Vec<u8>)> = batch
            .commands
            .iter()
            .map(|c| (c.command.as_ref().map(|c| c.id.clone()).unwrap_or_default().into_bytes(), c.encode_to_vec()))
            .collect();
        let energy: Vec<(Vec<u8>, [u8; 8])> = batch
            .energy_hours
            .iter()
            .map(|(commune, hour, wh)| (format!("{commune}/{hour}").into_bytes(), wh.to_be_bytes()))
            .collect();
        (&self.streetlights, &self.lamp_states, &self.alarms, &self.commands, &self.energy_hours, self.outbox.tree())
            .transaction(|(t_lights, t_states, t_alarms, t_commands, t_energy, t_outbox)| {
            for (k, v) in &energy {
                t_energy.insert(k.as_slice(), &v[..])?;
            }
            for (k, v) in &lights {
                t_lights.insert(k.as_slice(), v.as_slice())?;
            }
            for (k, v) in &states {
                t_states.insert(k.as_slice(), v.as_slice())?;
            }
            for op in &alarms {
                op.stage(t_alarms)?;
            }
            for (k, v) in &commands {
                t_commands.insert(k.as_slice(), v.as_slice())?;
            }
            for entry in &entries {
                entry.stage(t_outbox)?;
            }
            Ok::<(), ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(())
    }

    /// Makes every written batch durable and wakes the outbox relay.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.outbox.flush().await?;
        Ok(())
    }
}
