//! The transport service's sled database: vehicles, active alarms, service alerts and the outbox. The only module
//! that sees sled; every change is written with its events in one transaction.

use prost::Message;
use proto::event::CheckedEvent;
use proto::transport::{ServiceAlert, VehicleState};
use runtime::outbox::Outbox;
pub use runtime::store::StoreError;
use runtime::store::{Database, Writes};

use crate::tracking::Tracked;
use runtime::alarms::{ActiveAlarm, AlarmOp};

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
    db: Database,
    vehicles: sled::Tree,
    alarms: sled::Tree,
    service_alerts: sled::Tree,
}

fn vehicle_key(t: &Tracked) -> Vec<u8> {
    t.state.position.as_ref().map(|p| p.vehicle_id.clone()).unwrap_or_default().into_bytes()
}

impl Store {
    /// Opens the service's database in `path` (created if missing).
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        let db = Database::open(path, proto::v1::Domain::Transport, &["vehicles", "alarms", "service_alerts"])?;
        Ok(Store {
            vehicles: db.tree("vehicles")?.clone(),
            alarms: db.tree("alarms")?.clone(),
            service_alerts: db.tree("service_alerts")?.clone(),
            db,
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn outbox(&self) -> &Outbox {
        self.db.outbox()
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
        let mut writes = Writes::new();
        for t in &batch.vehicles {
            let record =
                VehicleRecord { state: Some(t.state.clone()), service_s: t.service_s, seen_unix_s: t.seen_unix_s };
            writes.put("vehicles", vehicle_key(t), record.encode_to_vec());
        }
        for op in &batch.alarms {
            op.write("alarms", &mut writes);
        }
        for (id, alert) in &batch.service_alerts {
            match alert {
                Some(alert) => writes.put("service_alerts", id.as_bytes(), alert.encode_to_vec()),
                None => writes.remove("service_alerts", id.as_bytes()),
            }
        }
        self.db.commit(&writes, &batch.events)
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().await
    }
}
