//! The lighting service's sled database: the inventory, the latest report of each streetlight, and
//! the outbox. This is the only module that sees sled; every write that changes state stages its
//! event in the outbox in the same transaction.

use prost::Message;
use proto::event::{CheckedEvent, EventError};
use proto::lighting::{StatusReport, Streetlight};
use runtime::outbox::{Outbox, PreparedEntry};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::domain::is_newer;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store holds an undecodable {what} for {key:?}: {source}")]
    Corrupt { what: &'static str, key: String, source: prost::DecodeError },
    #[error("event: {0}")]
    Event(#[from] EventError),
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
    streetlights: sled::Tree,
    last_reports: sled::Tree,
    outbox: Outbox,
}

impl Store {
    pub fn open(db: &sled::Db) -> Result<Store, StoreError> {
        Ok(Store {
            streetlights: db.open_tree("streetlights")?,
            last_reports: db.open_tree("last_reports")?,
            outbox: Outbox::open(db)?,
        })
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn streetlight(&self, id: &str) -> Result<Option<Streetlight>, StoreError> {
        decode(&self.streetlights, "streetlight", id)
    }

    pub fn last_report(&self, id: &str) -> Result<Option<StatusReport>, StoreError> {
        decode(&self.last_reports, "status report", id)
    }

    pub fn streetlight_count(&self) -> usize {
        self.streetlights.len()
    }

    /// Writes the streetlights and their `streetlight_registered` events atomically, then makes
    /// them durable.
    pub async fn register(&self, changes: Vec<(Streetlight, CheckedEvent)>) -> Result<(), StoreError> {
        let staged: Vec<(Streetlight, PreparedEntry)> = changes
            .into_iter()
            .map(|(light, event)| Ok((light, self.outbox.prepare(&event)?)))
            .collect::<Result<_, StoreError>>()?;
        (&self.streetlights, self.outbox.tree()).transaction(|(lights, outbox)| {
            for (light, entry) in &staged {
                lights.insert(light.id.as_bytes(), light.encode_to_vec())?;
                entry.stage(outbox)?;
            }
            Ok::<(), ConflictableTransactionError<StoreError>>(())
        })?;
        self.outbox.commit().await?;
        Ok(())
    }

    /// Records a report's event and, when it is the latest observation, the report itself, then
    /// makes both durable.
    pub async fn record_report(&self, report: &StatusReport, event: &CheckedEvent) -> Result<(), StoreError> {
        let entry = self.outbox.prepare(event)?;
        let key = report.streetlight_id.as_bytes();
        (&self.last_reports, self.outbox.tree()).transaction(|(reports, outbox)| {
            let current = match reports.get(key)? {
                Some(bytes) => Some(StatusReport::decode(bytes.as_ref()).map_err(|source| {
                    ConflictableTransactionError::Abort(StoreError::Corrupt {
                        what: "status report",
                        key: report.streetlight_id.clone(),
                        source,
                    })
                })?),
                None => None,
            };
            if is_newer(report, current.as_ref()) {
                reports.insert(key, report.encode_to_vec())?;
            }
            entry.stage(outbox)?;
            Ok(())
        })?;
        self.outbox.commit().await?;
        Ok(())
    }
}

fn decode<M: Message + Default>(tree: &sled::Tree, what: &'static str, key: &str) -> Result<Option<M>, StoreError> {
    match tree.get(key.as_bytes())? {
        None => Ok(None),
        Some(bytes) => M::decode(bytes.as_ref()).map(Some).map_err(|source| StoreError::Corrupt {
            what,
            key: key.to_owned(),
            source,
        }),
    }
}
