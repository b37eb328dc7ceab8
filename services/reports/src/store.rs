//! The reports service's sled database: service requests, tokens, and the outbox. The only module
//! that sees sled; every change is written with its events in one transaction.

use prost::Message;
use proto::event::CheckedEvent;
use proto::reports::ServiceRequest;
use runtime::outbox::{Outbox, PreparedEntry};
pub use runtime::store::StoreError;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

#[derive(Clone)]
pub struct Store {
    requests: sled::Tree,
    outbox: Outbox,
}

/// Request ids are decimal numbers; keys are big-endian so that the tree iterates in id order.
fn key(id: &str) -> Vec<u8> {
    id.parse::<u64>().map(|n| n.to_be_bytes().to_vec()).unwrap_or_else(|_| id.as_bytes().to_vec())
}

impl Store {
    /// Opens the service's database in `path` (created if missing).
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        let db = runtime::store::open_database(path)?;
        Ok(Store { requests: db.open_tree("requests")?, outbox: Outbox::open(&db, proto::v1::Domain::Reports)? })
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn requests(&self) -> Result<Vec<ServiceRequest>, StoreError> {
        runtime::store::all(&self.requests, "request")
    }

    /// Writes requests (whole) and their events in one transaction (durable at the next
    /// [`Store::flush`]).
    pub fn write(&self, requests: &[ServiceRequest], events: &[CheckedEvent]) -> Result<(), StoreError> {
        let entries: Vec<PreparedEntry> =
            events.iter().map(|e| self.outbox.prepare(e)).collect::<Result<_, sled::Error>>()?;
        let encoded: Vec<(Vec<u8>, Vec<u8>)> =
            requests.iter().map(|r| (key(&r.service_request_id), r.encode_to_vec())).collect();
        (&self.requests, self.outbox.tree()).transaction(|(t_requests, t_outbox)| {
            for (k, v) in &encoded {
                t_requests.insert(k.as_slice(), v.as_slice())?;
            }
            for entry in &entries {
                entry.stage(t_outbox)?;
            }
            Ok::<(), ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(())
    }

    /// Makes what was written durable (and wakes the outbox relay). Before answering.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.outbox.flush().await?;
        Ok(())
    }
}
