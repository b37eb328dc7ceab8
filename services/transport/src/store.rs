//! The transport service's sled database: vehicles, active alarms, service alerts and the outbox. The only module
//! that sees sled; every change is written with its events in one transaction.

use prost::Message;
use proto::event::CheckedEvent;
use proto::transport::{ServiceAlert, VehicleState};
use runtime::outbox::{Outbox, PreparedEntry};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::tracking::Tracked;
use runtime::alarms::{ActiveAlarm, AlarmOp, EncodedOp};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store holds an undecodable {what} for {key:?}: {message}")]
    Corrupt { what: &'static str, key: String, message: String },
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct VehicleRecord {
    #[prost(message, optional, tag = "1")]
    state: Option<VehicleState>,
    #[prost(double, tag = "2")]
    service_s: f64,
    #[prost(uint64, tag = "3")]
    seen_unix_s: u64,
}

#[derive(Default)]
pub struct WriteBatch {
    pub vehicles: Vec<Tracked>,
    pub alarms: Vec<AlarmOp>,
    /// Service alerts to store (`Some`) or remove (`None`), by id.
    pub service_alerts: Vec<(String, Option<ServiceAlert>)>,
    pub events: Vec<CheckedEvent>,
}

#[derive(Clone)]
pub struct Store {
    vehicles: sled::Tree,
    alarms: sled::Tree,
    service_alerts: sled::Tree,
    outbox: Outbox,
}

fn vehicle_key(t: &Tracked) -> Vec<u8> {
    t.state.position.as_ref().map(|p| p.vehicle_id.clone()).unwrap_or_default().into_bytes()
}

impl Store {
    pub fn open(db: &sled::Db) -> Result<Store, StoreError> {
        Ok(Store {
            vehicles: db.open_tree("vehicles")?,
            alarms: db.open_tree("alarms")?,
            service_alerts: db.open_tree("service_alerts")?,
            outbox: Outbox::open(db, proto::v1::Domain::Transport)?,
        })
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn vehicles(&self) -> Result<Vec<Tracked>, StoreError> {
        let mut out = Vec::new();
        for item in self.vehicles.iter() {
            let (key, value) = item?;
            let record = VehicleRecord::decode(value.as_ref()).map_err(|e| StoreError::Corrupt {
                what: "vehicle",
                key: String::from_utf8_lossy(&key).into_owned(),
                message: e.to_string(),
            })?;
            out.push(Tracked {
                state: record.state.unwrap_or_default(),
                service_s: record.service_s,
                seen_unix_s: record.seen_unix_s,
            });
        }
        Ok(out)
    }

    pub fn alarms(&self) -> Result<Vec<ActiveAlarm>, StoreError> {
        runtime::alarms::read_all(&self.alarms).map_err(|e| match e {
            runtime::alarms::ReadError::Sled(e) => StoreError::Sled(e),
            runtime::alarms::ReadError::Corrupt { key, message } => StoreError::Corrupt { what: "alarm", key, message },
        })
    }

    pub fn service_alerts(&self) -> Result<Vec<ServiceAlert>, StoreError> {
        let mut out = Vec::new();
        for item in self.service_alerts.iter() {
            let (key, value) = item?;
            out.push(ServiceAlert::decode(value.as_ref()).map_err(|e| StoreError::Corrupt {
                what: "service alert",
                key: String::from_utf8_lossy(&key).into_owned(),
                message: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Writes a batch and its events in one transaction (durable at the next [`Store::commit`]).
    pub fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let entries: Vec<PreparedEntry> =
            batch.events.iter().map(|e| self.outbox.prepare(e)).collect::<Result<_, sled::Error>>()?;
        let vehicles: Vec<(Vec<u8>, Vec<u8>)> = batch
            .vehicles
            .iter()
            .map(|t| {
                let record =
                    VehicleRecord { state: Some(t.state.clone()), service_s: t.service_s, seen_unix_s: t.seen_unix_s };
                (vehicle_key(t), record.encode_to_vec())
            })
            .collect();
        let alarms: Vec<EncodedOp> = batch.alarms.iter().map(AlarmOp::encode).collect();
        let service_alerts: Vec<(&str, Option<Vec<u8>>)> =
            batch.service_alerts.iter().map(|(id, a)| (id.as_str(), a.as_ref().map(Message::encode_to_vec))).collect();
        let trees = (&self.vehicles, &self.alarms, &self.service_alerts, self.outbox.tree());
        trees.transaction(|(t_vehicles, t_alarms, t_service_alerts, t_outbox)| {
            for (k, v) in &vehicles {
                t_vehicles.insert(k.as_slice(), v.as_slice())?;
            }
            for op in &alarms {
                op.stage(t_alarms)?;
            }
            for (id, alert) in &service_alerts {
                match alert {
                    Some(bytes) => t_service_alerts.insert(id.as_bytes(), bytes.as_slice())?,
                    None => t_service_alerts.remove(id.as_bytes())?,
                };
            }
            for entry in &entries {
                entry.stage(t_outbox)?;
            }
            Ok::<(), ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(())
    }

    pub async fn commit(&self) -> Result<(), StoreError> {
        self.outbox.commit().await?;
        Ok(())
    }
}
