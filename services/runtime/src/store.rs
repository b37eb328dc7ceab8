//! What every domain service's store shares: its database ([`Database`]: its named trees and
//! its outbox, opened on a disk watched for failure, see [`crate::store_fault`]), the one way a
//! change is written ([`Writes`], committed with the events that announce it in one transaction),
//! the one error a store returns, and reading protobuf records back. Each service's own `store`
//! module stays the only one of its modules that sees sled; it builds on these.
//!
//! Every change goes through [`Database::commit`], so that a service run as an active instance
//! with a standby (see [`crate::replica`]) hands every change of its state to the outbox as well:
//! the relay publishes it to the service's state bucket, which the standby follows.

use prost::Message;
use proto::event::{CheckedEvent, EventError};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use std::path::Path;
use std::sync::Arc;

use crate::outbox::{Outbox, PreparedEntry};

/// One change to a tree: a record put, or removed (`value` absent).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Change {
    #[prost(string, tag = "1")]
    pub tree: String,
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub value: Option<Vec<u8>>,
}

/// The changes one operation makes, applied in order by [`Database::commit`].
#[derive(Debug, Default)]
pub struct Writes {
    changes: Vec<Change>,
}

impl Writes {
    pub fn new() -> Writes {
        Writes::default()
    }

    pub fn put(&mut self, tree: &str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.changes.push(Change { tree: tree.to_owned(), key: key.into(), value: Some(value.into()) });
    }

    pub fn remove(&mut self, tree: &str, key: impl Into<Vec<u8>>) {
        self.changes.push(Change { tree: tree.to_owned(), key: key.into(), value: None });
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn changes(&self) -> &[Change] {
        &self.changes
    }
}

/// A service's database: the trees that hold its state, by name, and its outbox.
#[derive(Clone)]
pub struct Database {
    db: sled::Db,
    unit: proto::subject::Unit,
    names: Vec<&'static str>,
    /// The state's trees, in `names`' order, then the outbox's tree (one transaction spans all).
    trees: Vec<sled::Tree>,
    outbox: Outbox,
    /// Commits one at a time: outbox keys are taken before the transaction, and the relay
    /// publishes in key order, so two commits must not overlap (with a standby, the state
    /// bucket would otherwise end with another value than the store).
    commits: Arc<std::sync::Mutex<()>>,
}

impl Database {
    /// Opens (or creates) the database in `path` with these state trees, and `domain`'s outbox.
    pub fn open(path: &Path, domain: proto::v1::Domain, names: &[&'static str]) -> Result<Database, StoreError> {
        Database::open_unit(path, proto::subject::Unit::whole(domain), names)
    }

    /// The same for one unit of a domain (a shard, see [`crate::config::ShardConfig`]).
    pub fn open_unit(path: &Path, unit: proto::subject::Unit, names: &[&'static str]) -> Result<Database, StoreError> {
        let db = open_database(path)?;
        let outbox = Outbox::open(&db, &unit)?;
        let mut trees = names.iter().map(|name| db.open_tree(name)).collect::<Result<Vec<_>, _>>()?;
        trees.push(outbox.tree().clone());
        Ok(Database { db, unit, names: names.to_vec(), trees, outbox, commits: Arc::default() })
    }

    /// The state tree `name` (one of those given at open).
    pub fn tree(&self, name: &str) -> Result<&sled::Tree, StoreError> {
        self.index(name).map(|i| &self.trees[i])
    }

    /// The state's trees with their names.
    pub fn state_trees(&self) -> impl Iterator<Item = (&'static str, &sled::Tree)> {
        self.names.iter().copied().zip(self.trees.iter())
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn domain(&self) -> proto::v1::Domain {
        self.unit.domain
    }

    /// What this database's instance serves: the domain, or a shard of it.
    pub fn unit(&self) -> &proto::subject::Unit {
        &self.unit
    }

    pub fn sled(&self) -> &sled::Db {
        &self.db
    }

    fn index(&self, name: &str) -> Result<usize, StoreError> {
        self.names.iter().position(|n| *n == name).ok_or_else(|| StoreError::UnknownTree(name.to_owned()))
    }

    /// Writes `writes` and the events that announce them in one transaction (durable at the
    /// next [`Database::flush`]). With a standby, the changes go to the outbox too.
    pub fn commit(&self, writes: &Writes, events: &[CheckedEvent]) -> Result<(), StoreError> {
        if writes.is_empty() && events.is_empty() {
            return Ok(());
        }
        let _one_at_a_time = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        let mut entries: Vec<PreparedEntry> =
            events.iter().map(|e| self.outbox.prepare(e)).collect::<Result<_, sled::Error>>()?;
        // After the events: the relay publishes an operation's events before its state.
        if let Some(state) = self.outbox.prepare_changes(&writes.changes)? {
            entries.push(state);
        }
        let staged =
            writes.changes.iter().map(|c| Ok((self.index(&c.tree)?, c))).collect::<Result<Vec<_>, StoreError>>()?;
        let outbox = self.trees.len() - 1;
        self.trees[..].transaction(|trees| {
            for (i, change) in &staged {
                match &change.value {
                    Some(value) => trees[*i].insert(change.key.as_slice(), value.as_slice())?,
                    None => trees[*i].remove(change.key.as_slice())?,
                };
            }
            for entry in &entries {
                entry.stage(&trees[outbox])?;
            }
            Ok::<(), ConflictableTransactionError<StoreError>>(())
        })?;
        Ok(())
    }

    /// Makes every committed write durable (and, with a standby, published) before the caller
    /// answers.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.outbox.flush().await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store holds an undecodable {what} for {key:?}: {message}")]
    Corrupt { what: &'static str, key: String, message: String },
    #[error("event: {0}")]
    Event(#[from] EventError),
    /// A write to a tree the database was not opened with (a programming error, refused).
    #[error("store: no tree named {0:?}")]
    UnknownTree(String),
    /// Written here, and not yet in the state bucket the standby follows: not acknowledged. The
    /// write may still be applied (the relay goes on publishing it) unless this instance loses
    /// its lease first.
    #[error("written, but not replicated within {0:?}: the write may still be applied")]
    NotReplicated(std::time::Duration),
    /// This instance lost its lease: another one is active (or about to be).
    #[error("this instance is no longer the active one")]
    Fenced,
    /// The store belongs to another unit (another shard, or the whole domain).
    #[error("this store belongs to {store}, not to {opened_as}: each shard keeps its own store")]
    OtherUnit { store: String, opened_as: String },
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

/// A failed write acknowledges nothing: the caller may retry (`UNAVAILABLE`). A disk that fails
/// is reported once, so that the process restarts once it has room again.
impl StoreError {
    /// Logs the failure; a failing disk starts the store-fault probe (see `store_fault`).
    pub fn report(&self) {
        tracing::error!(error = %self, "store failure");
        if let StoreError::Sled(e) = self {
            crate::store_fault::report(e);
        }
    }
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> tonic::Status {
        e.report();
        match e {
            // Written here and perhaps published later: the outcome is not known (as for a
            // call whose deadline passed), so a retry may apply the write twice.
            StoreError::NotReplicated(_) | StoreError::Fenced => {
                tonic::Status::deadline_exceeded(format!("the write's outcome is not known: {e}"))
            }
            _ => tonic::Status::unavailable(format!("the store could not complete the operation: {e}")),
        }
    }
}

/// Opens (or creates) a service's database in `path`, and watches it for a failing disk.
pub fn open_database(path: &Path) -> Result<sled::Db, StoreError> {
    let db = sled::Config::new().path(path).open()?;
    crate::store_fault::watch(path, &db);
    Ok(db)
}

/// Makes every write to `db` so far durable, without blocking the runtime. On tokio's blocking
/// pool rather than by sled's `flush_async`: that hands the flush to sled's own thread pool,
/// whose every task wakes all its idle threads (seven). One such hop less per flush took the
/// lighting service's p99 at 5,000 reports/s (without per-message sync) from 1.2 s to 116 ms;
/// sled's own buffer writes still go through that pool.
pub async fn flush(db: &sled::Db) -> sled::Result<()> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.flush().map(drop))
        .await
        .unwrap_or_else(|e| Err(sled::Error::ReportableBug(format!("the flush's task failed: {e}"))))
}

/// A key as text, for errors (keys are ids; a binary key is shown lossily).
fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Decodes one record; `what` names it in the error.
pub fn decode<M: Message + Default>(what: &'static str, key: &[u8], bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt { what, key: key_text(key), message: e.to_string() })
}

/// The record under `key`, if any.
pub fn get<M: Message + Default>(tree: &sled::Tree, what: &'static str, key: &str) -> Result<Option<M>, StoreError> {
    match tree.get(key.as_bytes())? {
        None => Ok(None),
        Some(bytes) => decode(what, key.as_bytes(), &bytes).map(Some),
    }
}

/// Every record of a tree, in key order.
pub fn all<M: Message + Default>(tree: &sled::Tree, what: &'static str) -> Result<Vec<M>, StoreError> {
    let mut out = Vec::with_capacity(tree.len());
    for item in tree.iter() {
        let (key, value) = item?;
        out.push(decode(what, &key, &value)?);
    }
    Ok(out)
}

/// Every record of a tree with its key, in key order.
pub fn all_keyed<M: Message + Default>(tree: &sled::Tree, what: &'static str) -> Result<Vec<(String, M)>, StoreError> {
    let mut out = Vec::with_capacity(tree.len());
    for item in tree.iter() {
        let (key, value) = item?;
        out.push((key_text(&key), decode(what, &key, &value)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_belongs_to_one_unit() {
        use proto::subject::Unit;
        use proto::v1::Domain;
        // One sled database opened as units one after the other (a process keeps its store
        // open until it exits: the outbox's check is what a restart under another unit meets).
        let db = sled::Config::new().temporary(true).open().expect("a database");
        let shard = |name: &str| Some(proto::subject::Shard { name: name.into(), communes: Vec::new() });
        let est = Unit { domain: Domain::Lighting, shard: shard("est") };
        Outbox::open(&db, &est).expect("a new store");
        Outbox::open(&db, &est).expect("its own shard");
        let other =
            Outbox::open(&db, &Unit { domain: Domain::Lighting, shard: shard("ouest") }).err().expect("another shard");
        assert!(other.to_string().contains("belongs to lighting-est, not to lighting-ouest"), "{other}");
        let whole = Outbox::open(&db, &Unit::whole(Domain::Lighting)).err();
        assert!(matches!(whole, Some(StoreError::OtherUnit { .. })), "the whole domain");
    }

    #[test]
    fn records_read_back_and_an_undecodable_one_names_its_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_database(dir.path()).expect("open");
        let tree = db.open_tree("t").expect("tree");
        let a = proto::v1::Position { lat: 43.6, lon: 3.9 };
        tree.insert("a", a.encode_to_vec()).expect("insert");
        assert_eq!(get::<proto::v1::Position>(&tree, "position", "a").expect("get"), Some(a));
        assert_eq!(get::<proto::v1::Position>(&tree, "position", "z").expect("get"), None);
        assert_eq!(all_keyed::<proto::v1::Position>(&tree, "position").expect("all").len(), 1);
        // A wire type that does not match: field 1 as a varint where a double is expected.
        tree.insert("b", vec![0x0a, 0xff]).expect("insert");
        match all::<proto::v1::Position>(&tree, "position") {
            Err(StoreError::Corrupt { what, key, .. }) => assert_eq!((what, key.as_str()), ("position", "b")),
            other => panic!("expected a corrupt record, got {other:?}"),
        }
    }
}
