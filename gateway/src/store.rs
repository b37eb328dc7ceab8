//! The gateway's sled database: the view's assets and the stream sequence they are current at,
//! written together in one atomic batch. The only module that sees sled.

use proto::live::{AlarmState, AssetState, AuditEntry, CommandState, KpiState, SystemNotice};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};

use crate::auth::{OperatorRecord, SessionRecord};
use crate::live::Persist;

const APPLIED_SEQ: &[u8] = b"applied_seq";
/// How many times the events stream was recreated under this store: the audit log's keys begin
/// with it, so that a new stream's sequences (from 1 again) never overwrite the old entries.
const AUDIT_EPOCH: &[u8] = b"audit_epoch";
/// Set once the audit log's keys all carry an epoch.
const AUDIT_KEYS_WITH_EPOCH: &[u8] = b"audit_keys_with_epoch";
/// When the events stream the view was built from was created (nanoseconds since 1970, i128
/// big-endian): a stream created at another time is another stream.
const STREAM_CREATED: &[u8] = b"stream_created";
/// System notices kept at most (the oldest go first).
pub const MAX_NOTICES: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("record {key:?} cannot be read from or written to the store as JSON: {source}")]
    Corrupt { key: String, source: serde_json::Error },
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    assets: sled::Tree,
    alarms: sled::Tree,
    commands: sled::Tree,
    kpis: sled::Tree,
    /// (stream epoch, stream sequence), both big-endian -> audit entry: in the order the streams
    /// recorded them. Kept when the stream is recreated (see `forget_for_new_stream`).
    audit: sled::Tree,
    audit_epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
    meta: sled::Tree,
    /// Login -> operator (role, scope, password hash). Not part of the view: `clear` keeps it.
    operators: sled::Tree,
    /// Session id -> session (login, refresh generation, expiry, revoked).
    sessions: sled::Tree,
    /// Commune id -> name: communes an administrator added beyond the territory's.
    tenants: sled::Tree,
    /// Keys of the access directory (see `directory`) written here by the command line while
    /// the gateway was stopped, not yet in the shared directory: uploaded at the next start.
    directory_pending: sled::Tree,
    /// Notice id -> system notice (events the view could never apply), until acknowledged. Not
    /// part of the view: kept when it is forgotten.
    notices: sled::Tree,
}

/// What an audit query selects; every field narrows it.
#[derive(Debug, Default, Clone)]
pub struct AuditQuery {
    pub communes: Option<Vec<String>>,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// RFC 3339 bounds, inclusive.
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: usize,
}

/// The persisted view (also what a checkpoint carries: see `checkpoint`).
#[derive(Default, Serialize, serde::Deserialize)]
pub struct Loaded {
    pub assets: HashMap<String, AssetState>,
    pub alarms: HashMap<String, AlarmState>,
    pub commands: BTreeMap<String, CommandState>,
    pub kpis: HashMap<String, KpiState>,
    pub applied_seq: u64,
}

impl From<Loaded> for crate::view::OperationsView {
    fn from(l: Loaded) -> Self {
        crate::view::OperationsView::restore(l.assets, l.alarms, l.commands, l.kpis, l.applied_seq)
    }
}

impl Store {
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        let db = sled::Config::new().path(path).open()?;
        let meta = db.open_tree("meta")?;
        let epoch = read_u64(&meta, AUDIT_EPOCH)?;
        let audit = db.open_tree("audit")?;
        // Entries of a store written before epochs (keys of the sequence alone) are epoch 0's;
        // carried over once, not scanned at every start.
        if meta.get(AUDIT_KEYS_WITH_EPOCH)?.is_none() {
            for item in audit.iter() {
                let (key, value) = item?;
                if let Ok(seq) = <[u8; 8]>::try_from(key.as_ref()) {
                    audit.insert(audit_key(0, u64::from_be_bytes(seq)), value)?;
                    audit.remove(key)?;
                }
            }
            meta.insert(AUDIT_KEYS_WITH_EPOCH, &[1u8])?;
        }
        Ok(Store {
            assets: db.open_tree("assets")?,
            alarms: db.open_tree("alarms")?,
            commands: db.open_tree("commands")?,
            kpis: db.open_tree("kpis")?,
            audit,
            audit_epoch: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(epoch)),
            meta,
            operators: db.open_tree("operators")?,
            sessions: db.open_tree("sessions")?,
            tenants: db.open_tree("tenants")?,
            directory_pending: db.open_tree("directory_pending")?,
            notices: db.open_tree("notices")?,
            db,
        })
    }

    /// When the stream the view follows was created (none before the first consumption).
    pub fn stream_created(&self) -> Result<Option<i128>, StoreError> {
        Ok(self.meta.get(STREAM_CREATED)?.and_then(|v| <[u8; 16]>::try_from(v.as_ref()).ok()).map(i128::from_be_bytes))
    }

    pub fn set_stream_created(&self, created: i128) -> Result<(), StoreError> {
        if self.stream_created()? != Some(created) {
            self.meta.insert(STREAM_CREATED, &created.to_be_bytes())?;
            self.db.flush()?;
        }
        Ok(())
    }

    /// Has the store's failures watched (see `runtime::store_fault`).
    pub fn watch_faults(&self, dir: &std::path::Path) {
        runtime::store_fault::watch(dir, &self.db);
    }

    /// The persisted view and its sequence.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let seq = read_u64(&self.meta, APPLIED_SEQ)?;
        Ok(Loaded {
            assets: read_all(&self.assets)?,
            alarms: read_all(&self.alarms)?,
            commands: read_all(&self.commands)?,
            kpis: read_all(&self.kpis)?,
            applied_seq: seq,
        })
    }

    /// Writes what a batch of events changed and the sequence the view is now current at, in one
    /// transaction, so a crash leaves them consistent.
    pub fn save(&self, persist: &Persist) -> Result<(), StoreError> {
        use sled::Transactional;
        let assets = encode_all(persist.assets.iter().map(|(k, v)| (k, v.as_ref())))?;
        let alarms = encode_all(persist.alarms.iter().map(|(k, v)| (k, v.as_ref())))?;
        let commands = encode_all(persist.commands.iter().map(|(k, v)| (k, v.as_ref())))?;
        let kpis = encode_all(persist.kpis.iter().map(|(k, v)| (k, Some(v))))?;
        let epoch = self.audit_epoch.load(std::sync::atomic::Ordering::Acquire);
        let audit: Vec<([u8; 16], Vec<u8>)> = persist
            .audit
            .iter()
            .map(|e| {
                serde_json::to_vec(e)
                    .map(|v| (audit_key(epoch, e.seq), v))
                    .map_err(|source| StoreError::Corrupt { key: e.event_id.clone(), source })
            })
            .collect::<Result<_, _>>()?;
        (&self.assets, &self.alarms, &self.commands, &self.kpis, &self.audit, &self.meta)
            .transaction(|(t_assets, t_alarms, t_commands, t_kpis, t_audit, meta)| {
                for (key, value) in &audit {
                    t_audit.insert(&key[..], value.as_slice())?;
                }
                for (tree, entries) in
                    [(t_assets, &assets), (t_alarms, &alarms), (t_commands, &commands), (t_kpis, &kpis)]
                {
                    for (key, value) in entries {
                        match value {
                            Some(v) => tree.insert(key.as_bytes(), v.as_slice())?,
                            None => tree.remove(key.as_bytes())?,
                        };
                    }
                }
                meta.insert(APPLIED_SEQ, &persist.applied_seq.to_be_bytes())?;
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

    /// The persisted view; when one of its records cannot be read (a value written by an older
    /// version, a damaged file), the view is forgotten and an empty one returned, to be rebuilt
    /// from the events stream: an unreadable view is never a refusal to start. The audit log is
    /// kept (the replay writes its entries again under the same keys), and so are the operators,
    /// sessions and communes, which are not part of the view.
    pub fn load_or_forget(&self) -> Result<Loaded, StoreError> {
        match self.load() {
            // Records without a stored sequence are what an interrupted `restore` left.
            Ok(loaded)
                if loaded.applied_seq == 0
                    && !(loaded.assets.is_empty()
                        && loaded.alarms.is_empty()
                        && loaded.commands.is_empty()
                        && loaded.kpis.is_empty()) =>
            {
                tracing::warn!("the stored view has no sequence (a restore was interrupted); it is rebuilt");
                for tree in [&self.assets, &self.alarms, &self.commands, &self.kpis] {
                    tree.clear()?;
                }
                self.db.flush()?;
                Ok(Loaded::default())
            }
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::error!(error = %e, "the stored view cannot be read; it is rebuilt from the events stream");
                crate::metrics::get().view_records_unreadable.inc();
                self.assets.clear()?;
                self.alarms.clear()?;
                self.commands.clear()?;
                self.kpis.clear()?;
                self.meta.remove(APPLIED_SEQ)?;
                self.db.flush()?;
                Ok(Loaded::default())
            }
            other => other,
        }
    }

    /// Forgets the view: the stream it was built from is gone, and a new one begins. The audit
    /// log is the record of what operators did and is kept; the new stream's entries follow it
    /// under the next epoch.
    pub fn forget_for_new_stream(&self) -> Result<(), StoreError> {
        self.assets.clear()?;
        self.alarms.clear()?;
        self.commands.clear()?;
        self.kpis.clear()?;
        self.meta.remove(APPLIED_SEQ)?;
        let epoch = self.audit_epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        self.meta.insert(AUDIT_EPOCH, &epoch.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    /// Records a system notice (its id is set here); at most [`MAX_NOTICES`] are kept, the
    /// oldest dropped first.
    pub fn add_notice(&self, mut notice: SystemNotice) -> Result<SystemNotice, StoreError> {
        notice.id = self.db.generate_id()?;
        let json = serde_json::to_vec(&notice)
            .map_err(|source| StoreError::Corrupt { key: format!("notice {}", notice.id), source })?;
        self.notices.insert(notice.id.to_be_bytes(), json)?;
        while self.notices.len() > MAX_NOTICES {
            if self.notices.pop_min()?.is_none() {
                break;
            }
        }
        self.db.flush()?;
        Ok(notice)
    }

    /// The notices kept, oldest first (a record that cannot be read is skipped).
    pub fn notices(&self) -> Result<Vec<SystemNotice>, StoreError> {
        let mut notices = Vec::new();
        for item in self.notices.iter() {
            let (_, value) = item?;
            if let Ok(notice) = serde_json::from_slice(&value) {
                notices.push(notice);
            }
        }
        Ok(notices)
    }

    /// Forgets the notices up to `id` (a supervisor acknowledged them); returns how many.
    pub fn acknowledge_notices(&self, up_to: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.notices.range(..=up_to.to_be_bytes()) {
            let (key, _) = item?;
            self.notices.remove(key)?;
            removed += 1;
        }
        self.db.flush()?;
        Ok(removed)
    }

    /// The log book's latest entries (at most `limit`) of the current stream up to `seq`, in
    /// stream order (see `checkpoint`).
    pub fn audit_upto(&self, seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let epoch = self.audit_epoch.load(std::sync::atomic::Ordering::Acquire);
        let mut out = Vec::new();
        for item in self.audit.range(audit_key(epoch, 0)..=audit_key(epoch, seq)).rev().take(limit) {
            let (key, value) = item?;
            out.push(
                serde_json::from_slice(&value).map_err(|source| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    source,
                })?,
            );
        }
        out.reverse();
        Ok(out)
    }

    /// Puts a checkpoint's view and log book in place of the stored view (see `checkpoint`).
    /// The stored sequence goes first: a crash in between leaves a view that starts from nothing
    /// (the checkpoint is then read again), never an old sequence over a partial view.
    pub fn restore(&self, view: &Loaded, audit: &[AuditEntry]) -> Result<(), StoreError> {
        // One transaction of the whole view: the store watchdog's flush waits for it.
        let _bulk = runtime::store_fault::bulk_write();
        self.meta.remove(APPLIED_SEQ)?;
        self.db.flush()?;
        for tree in [&self.assets, &self.alarms, &self.commands, &self.kpis] {
            tree.clear()?;
        }
        let persist = Persist {
            assets: view.assets.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect(),
            alarms: view.alarms.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect(),
            commands: view.commands.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect(),
            kpis: view.kpis.clone(),
            audit: audit.to_vec(),
            applied_seq: view.applied_seq,
        };
        self.save(&persist)?;
        self.db.flush()?;
        Ok(())
    }

    /// Audit entries matching the query, newest first, at most `limit`.
    pub fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.audit.iter().rev() {
            let (key, value) = item?;
            let entry: AuditEntry = serde_json::from_slice(&value)
                .map_err(|source| StoreError::Corrupt { key: String::from_utf8_lossy(&key).into_owned(), source })?;
            if query.to.as_ref().is_some_and(|to| entry.at > *to) {
                continue;
            }
            // Entries are in stream order, which follows their time only roughly (an event's
            // time is its observation's): the scan goes on past an entry out of range.
            if query.from.as_ref().is_some_and(|from| entry.at < *from) {
                continue;
            }
            let wanted = query.communes.as_ref().is_none_or(|c| c.contains(&entry.commune))
                && query.actor.as_ref().is_none_or(|a| *a == entry.actor)
                && query.action.as_ref().is_none_or(|a| *a == entry.action);
            if wanted {
                out.push(entry);
                if out.len() >= query.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn operator(&self, login: &str) -> Result<Option<OperatorRecord>, StoreError> {
        read_one(&self.operators, login)
    }

    pub fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        Ok(read_all::<OperatorRecord, Vec<(String, OperatorRecord)>>(&self.operators)?
            .into_iter()
            .map(|(_, o)| o)
            .collect())
    }

    /// Writes an operator to this replica's copy of the access directory (the directory's bucket
    /// is the durable record; the command line's writes are flushed by `mark_pending`).
    pub fn put_operator(&self, operator: &OperatorRecord) -> Result<(), StoreError> {
        write_one(&self.operators, &operator.login, operator)
    }

    /// Removes an operator; their sessions are revoked by the caller.
    pub fn remove_operator(&self, login: &str) -> Result<bool, StoreError> {
        Ok(self.operators.remove(login.as_bytes())?.is_some())
    }

    pub fn session(&self, sid: &str) -> Result<Option<SessionRecord>, StoreError> {
        read_one(&self.sessions, sid)
    }

    pub fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(read_all::<SessionRecord, Vec<(String, SessionRecord)>>(&self.sessions)?
            .into_iter()
            .map(|(_, s)| s)
            .collect())
    }

    /// Writes a session to this replica's copy (see `put_operator`).
    pub fn put_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        write_one(&self.sessions, &session.sid, session)
    }

    /// Removes a session from this replica's copy (the directory purged it).
    pub fn remove_session(&self, sid: &str) -> Result<(), StoreError> {
        self.sessions.remove(sid.as_bytes())?;
        Ok(())
    }

    /// Marks a directory key as written here and not yet uploaded (see `directory`).
    pub fn mark_pending(&self, directory_key: &str) -> Result<(), StoreError> {
        self.directory_pending.insert(directory_key.as_bytes(), &[])?;
        self.db.flush()?;
        Ok(())
    }

    /// The directory keys written here and not yet uploaded.
    pub fn pending(&self) -> Result<Vec<String>, StoreError> {
        self.directory_pending.iter().keys().map(|k| Ok(String::from_utf8_lossy(&k?).into_owned())).collect()
    }

    pub fn uploaded(&self, directory_key: &str) -> Result<(), StoreError> {
        self.directory_pending.remove(directory_key.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    pub fn tenants(&self) -> Result<Vec<(String, String)>, StoreError> {
        read_all(&self.tenants)
    }

    pub fn put_tenant(&self, id: &str, name: &str) -> Result<(), StoreError> {
        write_one(&self.tenants, id, &name.to_owned())
    }

    /// Flushes now (a revocation must survive a crash of this replica).
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        runtime::store::flush(&self.db).await?;
        Ok(())
    }
}

fn read_one<T: DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>, StoreError> {
    tree.get(key.as_bytes())?
        .map(|v| serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt { key: key.to_owned(), source }))
        .transpose()
}

/// An audit entry's key: the stream's epoch, then its sequence (both big-endian, so that keys
/// sort in the order the entries were recorded).
fn audit_key(epoch: u64, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&epoch.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, StoreError> {
    Ok(tree.get(key)?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(u64::from_be_bytes).unwrap_or(0))
}

fn write_one<T: Serialize>(tree: &sled::Tree, key: &str, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Corrupt { key: key.to_owned(), source })?;
    tree.insert(key.as_bytes(), bytes)?;
    Ok(())
}

type Encoded<'a> = Vec<(&'a String, Option<Vec<u8>>)>;

fn encode_all<'a, T: Serialize + 'a>(
    items: impl Iterator<Item = (&'a String, Option<&'a T>)>,
) -> Result<Encoded<'a>, StoreError> {
    items
        .map(|(key, value)| {
            let encoded = value
                .map(|v| serde_json::to_vec(v).map_err(|source| StoreError::Corrupt { key: key.clone(), source }))
                .transpose()?;
            Ok((key, encoded))
        })
        .collect()
}

fn read_all<T: DeserializeOwned, C: FromIterator<(String, T)>>(tree: &sled::Tree) -> Result<C, StoreError> {
    tree.iter()
        .map(|item| {
            let (key, value) = item?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let value =
                serde_json::from_slice(&value).map_err(|source| StoreError::Corrupt { key: key.clone(), source })?;
            Ok((key, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, actor: &str) -> AuditEntry {
        AuditEntry {
            seq,
            event_id: format!("e{seq}"),
            at: "2026-12-06T03:00:00Z".into(),
            actor: actor.into(),
            action: "note".into(),
            commune: "34172".into(),
            domain: "ops".into(),
            target: String::new(),
            details: Default::default(),
        }
    }

    /// Opens the store again just after it was dropped: sled's flusher thread lets go of the
    /// file lock a moment after the drop.
    fn reopen(path: &std::path::Path) -> Store {
        for _ in 0..100 {
            match Store::open(path) {
                Ok(store) => return store,
                Err(StoreError::Sled(sled::Error::Io(e))) if e.kind() == std::io::ErrorKind::Other => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err(e) => panic!("reopen: {e:?}"),
            }
        }
        panic!("the store's lock was never released");
    }

    fn actors(store: &Store) -> Vec<String> {
        let query = AuditQuery { limit: 10, ..Default::default() };
        store.audit(&query).expect("audit").into_iter().map(|e| e.actor).collect()
    }

    #[test]
    fn the_audit_log_outlives_a_new_stream_and_older_keys_are_carried_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            // A store of the previous version: keys of the sequence alone.
            let db = sled::open(dir.path()).expect("sled");
            let audit = db.open_tree("audit").expect("tree");
            audit.insert(7u64.to_be_bytes(), serde_json::to_vec(&entry(7, "ancien")).expect("json")).expect("insert");
            db.flush().expect("flush");
        }
        let store = reopen(dir.path());
        assert_eq!(actors(&store), ["ancien"]);
        store.save(&Persist { audit: vec![entry(9, "avant")], applied_seq: 9, ..Default::default() }).expect("save");
        store.forget_for_new_stream().expect("forget");
        // The new stream starts at 1 again: below the old sequences, after them in the log.
        store.save(&Persist { audit: vec![entry(1, "après")], applied_seq: 1, ..Default::default() }).expect("save");
        assert_eq!(actors(&store), ["après", "avant", "ancien"]);
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(actors(&store), ["après", "avant", "ancien"], "the epoch is stored");
        assert_eq!(store.load().expect("load").applied_seq, 1);
    }
}
