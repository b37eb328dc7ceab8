//! The gateway's sled database: the view's assets and the stream sequence they are current at,
//! written together in one atomic batch. The only module that sees sled.

use proto::live::AssetState;
use std::collections::HashMap;

const APPLIED_SEQ: &[u8] = b"applied_seq";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("asset {key:?} cannot be read from or written to the store as JSON: {source}")]
    Corrupt { key: String, source: serde_json::Error },
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    assets: sled::Tree,
    meta: sled::Tree,
}

impl Store {
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        let db = sled::Config::new().path(path).open()?;
        Ok(Store { assets: db.open_tree("assets")?, meta: db.open_tree("meta")?, db })
    }

    /// The persisted view and its sequence.
    pub fn load(&self) -> Result<(HashMap<String, AssetState>, u64), StoreError> {
        let mut assets = HashMap::with_capacity(self.assets.len());
        for item in self.assets.iter() {
            let (key, value) = item?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let asset =
                serde_json::from_slice(&value).map_err(|source| StoreError::Corrupt { key: key.clone(), source })?;
            assets.insert(key, asset);
        }
        let seq = self
            .meta
            .get(APPLIED_SEQ)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        Ok((assets, seq))
    }

    /// Writes the assets changed by a batch of events and the sequence the view is now current at.
    /// Both trees are written by one transaction, so a crash leaves them consistent.
    pub fn save(&self, changed: &HashMap<String, AssetState>, applied_seq: u64) -> Result<(), StoreError> {
        use sled::Transactional;
        let encoded = changed
            .iter()
            .map(|(k, a)| {
                Ok((k, serde_json::to_vec(a).map_err(|source| StoreError::Corrupt { key: k.clone(), source })?))
            })
            .collect::<Result<Vec<(&String, Vec<u8>)>, StoreError>>()?;
        (&self.assets, &self.meta)
            .transaction(|(assets, meta)| {
                for (key, value) in &encoded {
                    assets.insert(key.as_bytes(), value.as_slice())?;
                }
                meta.insert(APPLIED_SEQ, &applied_seq.to_be_bytes())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Sled(sled::Error::Unsupported("aborted".into()))
                }
            })?;
        Ok(())
    }

    /// Forgets the whole view (the stream it was built from is gone).
    pub fn clear(&self) -> Result<(), StoreError> {
        self.assets.clear()?;
        self.meta.clear()?;
        self.db.flush()?;
        Ok(())
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}
