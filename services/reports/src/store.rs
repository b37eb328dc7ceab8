//! The reports service's sled database: service requests, tokens, and the outbox. The only module
//! that sees sled; every change is written with its events in one transaction.

use prost::Message;
use proto::event::CheckedEvent;
use proto::reports::ServiceRequest;
use runtime::outbox::{Outbox, PreparedEntry};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store holds an undecodable request for {key:?}: {message}")]
    Corrupt { key: String, message: String },
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

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
    pub fn open(db: &sled::Db) -> Result<Store, StoreError> {
        Ok(Store { requests: db.open_tree("requests")?, outbox: Outbox::open(db, proto::v1::Domain::Reports)? })
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn requests(&self) -> Result<Vec<ServiceRequest>, StoreError> {
        let mut out = Vec::new();
        for item in self.requests.iter() {
            let (k, v) = item?;
            out.push(ServiceRequest::decode(v.as_ref()).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                message: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Writes requests (whole) and their events in one transaction, then flushes: durable on return.
    pub async fn write(&self, requests: &[ServiceRequest], events: &[CheckedEvent]) -> Result<(), StoreError> {
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
        self.outbox.commit().await?;
        Ok(())
    }
}
