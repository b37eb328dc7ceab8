//! What every domain service's store shares: opening its sled database (watched for a failing
//! disk, see [`crate::store_fault`]), the one error a store returns, and reading protobuf records
//! back. Each service's own `store` module stays the only one of its modules that sees sled; it
//! builds on these functions.

use prost::Message;
use proto::event::EventError;
use sled::transaction::TransactionError;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store holds an undecodable {what} for {key:?}: {message}")]
    Corrupt { what: &'static str, key: String, message: String },
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
        tonic::Status::unavailable(format!("the store could not complete the operation: {e}"))
    }
}

/// Opens (or creates) a service's database in `path`, and watches it for a failing disk.
pub fn open_database(path: &Path) -> Result<sled::Db, StoreError> {
    let db = sled::Config::new().path(path).open()?;
    crate::store_fault::watch(path, &db);
    Ok(db)
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
