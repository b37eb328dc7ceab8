//! The reports service's sled database: service requests, tokens, and the outbox. The only module
//! that sees sled; every change is written with its events in one transaction.

use prost::Message;
use proto::event::CheckedEvent;
use proto::reports::ServiceRequest;
use runtime::outbox::Outbox;
pub use runtime::store::StoreError;
use runtime::store::{Database, Writes};

#[derive(Clone)]
pub struct Store {
    db: Database,
    requests: sled::Tree,
}

/// Request ids are decimal numbers; keys are big-endian so that the tree iterates in id order.
fn key(id: &str) -> Vec<u8> {
    id.parse::<u64>().map(|n| n.to_be_bytes().to_vec()).unwrap_or_else(|_| id.as_bytes().to_vec())
}

impl Store {
    /// Opens the service's database in `path` (created if missing).
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        let db = Database::open(path, proto::v1::Domain::Reports, &["requests"])?;
        Ok(Store { requests: db.tree("requests")?.clone(), db })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn outbox(&self) -> &Outbox {
        self.db.outbox()
    }

    pub fn requests(&self) -> Result<Vec<ServiceRequest>, StoreError> {
        runtime::store::all(&self.requests, "request")
    }

    /// Writes requests (whole) and their events in one transaction (durable at the next
    /// [`Store::flush`]).
    pub fn write(&self, requests: &[ServiceRequest], events: &[CheckedEvent]) -> Result<(), StoreError> {
        let mut writes = Writes::new();
        for request in requests {
            writes.put("requests", key(&request.service_request_id), request.encode_to_vec());
        }
        self.db.commit(&writes, events)
    }

    /// Makes what was written durable (and wakes the outbox relay). Before answering.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().await
    }
}
