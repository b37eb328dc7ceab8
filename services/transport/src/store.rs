//! The transport service's sled database: vehicles, active alarms, service alerts and the outbox. The only module
//! that sees sled; every change is written with its events in one transaction.

use prost::Message;
use proto::event::CheckedEvent;
use proto::transport::{ServiceAlert, VehicleState};
use runtime::outbox::{Outbox, PreparedEntry};
pub use runtime::store::StoreError;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use crate::tracking::Tracked;
use runtime::alarms::{ActiveAlarm, AlarmOp, EncodedOp};

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
    /// Opens the service's database in `path` (created if missing).
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        let db = runtime::store::open_database(path)?;
        Ok(Store {
            vehicles: db.open_tree("vehicles")?,
            alarms: db.open_tree("alarms")?,
            service_alerts: db.open_tree("service_alerts")?,
            outbox: Outbox::open(&db, proto::v1::Domain::Transport)?,
        })
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn vehicles(&self) -> Result<Vec<Tracked>, StoreError> {
        let records: Vec<VehicleRecord> = runtime::store::all(&self.vehicles, "vehicle")?;
        Ok(records
            .into_iter()
            .map(|r| Tracked { state: r.state.unwrap_or_default(), service_s: r.service_s, seen_unix_s: r.seen_unix_s })
            .collect())
    }

    pub fn alarms(&self) -> Result<Vec<ActiveAlarm>, StoreError> {
        runtime::alarms::read_all(&self.alarms)
    }

    pub fn service_alerts(&self) -> Result<Vec<ServiceAlert>, StoreError> {
        runtime::store::all(&self.service_alerts, "service alert")
    }

    /// Writes a batch and its events in one transaction (durable at the next [`Store::flush`]).
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

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.outbox.flush().await?;
        Ok(())
    }
}
