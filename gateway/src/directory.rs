//! The access directory: operators, sessions (refresh generations and revocations), integrator
//! credentials and added communes, shared by every gateway replica in a JetStream key-value
//! bucket ([`BUCKET`], as many replicas as the events stream). The bucket is the truth; each
//! replica keeps a copy in its sled store, followed by a watch, which serves listings, the
//! revocation announcements and a start while NATS is away.
//!
//! - Writes go to the bucket first and then to the copy: a write another replica did not see yet
//!   does not exist. Creating a login or a session is a create (refused if the key exists), and a
//!   session changes by compare-and-set on its revision: two replicas refreshing the same token at
//!   once cannot both succeed (the second sees a newer generation, and the session is closed as
//!   a reused token would be).
//! - A login reads its operator from the bucket (an operator created at another replica logs in
//!   at once), and from the copy only when the bus cannot answer.
//! - A session revoked anywhere reaches every replica through the watch: its sockets close there
//!   too (`Authority::revoke`). A revocation is also written to this replica's copy first (and
//!   flushed): a logout while the bus is away is kept, and uploaded when it is back. The copy
//!   merges sessions monotonically (revoked stays revoked, the generation only grows), so a late
//!   entry of the watch never undoes a newer write.
//! - A write whose answer is lost (a timeout while the NATS cluster elects a leader) is retried for
//!   [`PATIENCE`], and recognised when read back (each session write carries a random `rotation`).
//! - The command line (`add-operator`, …) runs while the gateway is stopped, without the bus: it
//!   writes the copy and marks the keys pending, and the next start uploads them. A bucket found
//!   empty (a first start, or a stream lost) is filled from the copy the same way.

use async_nats::jetstream::kv;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::access::Communes;
use crate::auth::{Authority, OperatorRecord, SessionRecord};
use crate::store::{Store, StoreError};

/// The bucket's name (its stream is `KV_VIGIE_ACCESS`; only the gateway's NATS user may touch it).
pub const BUCKET: &str = "VIGIE_ACCESS";
/// How often each replica purges the sessions expired for a day (idempotent: every replica may).
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// Compare-and-set attempts on one session before giving up (each loss means another replica
/// changed it meanwhile).
const CAS_ATTEMPTS: usize = 8;
/// How long a write keeps trying through the bus's failures (a NATS leader election takes up to
/// about 9 s, measured in the cluster tests).
pub const PATIENCE: Duration = Duration::from_secs(10);
/// How long a logout tries the bus before it is kept here and uploaded later.
const LOGOUT_PATIENCE: Duration = Duration::from_secs(3);
/// Pause between two tries of a failed write.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How often the follower uploads what was kept here while the bus failed.
const UPLOAD_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("the access directory is not reachable yet (NATS)")]
    NotReady,
    #[error("the access directory (NATS bucket {BUCKET}): {0}")]
    Bus(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a directory record cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    /// A key or a record that is not the directory's (a bad key, a record under another's key).
    #[error("{0}")]
    Invalid(String),
    #[error("the session changed at another replica {CAS_ATTEMPTS} times while it was being updated")]
    Contended,
}

fn bus(e: impl std::fmt::Display) -> DirectoryError {
    DirectoryError::Bus(e.to_string())
}

/// A key of the bucket: what it names.
#[derive(Debug, PartialEq)]
pub enum Key {
    /// A login (hex-encoded in the key: a login may hold `@`, which a key may not).
    Operator(String),
    /// A session under its login, so that removing a login finds every session of theirs.
    Session {
        login: String,
        sid: String,
    },
    Commune(String),
}

impl Key {
    pub fn encode(&self) -> Result<String, DirectoryError> {
        match self {
            Key::Operator(login) => Ok(format!("operator.{}", hex(login))),
            Key::Session { login, sid } => {
                let valid = !sid.is_empty()
                    && sid.len() <= 64
                    && sid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                if valid {
                    Ok(format!("session.{}.{sid}", hex(login)))
                } else {
                    Err(DirectoryError::Invalid("a session id is 1 to 64 letters, digits, '-' or '_'".into()))
                }
            }
            Key::Commune(id) => proto::ids::CommuneId::parse(id)
                .map(|id| format!("commune.{id}"))
                .map_err(|e| DirectoryError::Invalid(e.to_string())),
        }
    }

    pub fn decode(key: &str) -> Option<Key> {
        let (kind, rest) = key.split_once('.')?;
        let key = match kind {
            "operator" => Key::Operator(unhex(rest)?),
            "session" => {
                let (login, sid) = rest.split_once('.')?;
                Key::Session { login: unhex(login)?, sid: sid.to_owned() }
            }
            "commune" => Key::Commune(rest.to_owned()),
            _ => return None,
        };
        // Only the canonical spelling: a key written by anything else is not ours.
        (key.encode().ok()?.as_str() == format!("{kind}.{rest}")).then_some(key)
    }
}

fn same_json(a: &[u8], b: &[u8]) -> bool {
    match (serde_json::from_slice::<serde_json::Value>(a), serde_json::from_slice::<serde_json::Value>(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<String> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

/// The directory of one replica: the shared bucket (once reached) and the local copy.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// None for an administration command (no sessions of its own to close).
    authority: Option<Arc<Authority>>,
    communes: Communes,
    bucket: tokio::sync::OnceCell<kv::Store>,
    /// True once the copy has caught up with the bucket (at each start).
    caught_up: tokio::sync::watch::Sender<bool>,
}

impl Directory {
    pub fn new(store: Store, authority: Option<Arc<Authority>>, communes: Communes) -> Directory {
        Directory {
            inner: Arc::new(Inner {
                store,
                authority,
                communes,
                bucket: tokio::sync::OnceCell::new(),
                caught_up: tokio::sync::watch::channel(false).0,
            }),
        }
    }

    /// Waits until the local copy has caught up with the bucket, at most `limit` (then the
    /// replica serves from its copy, which the watch brings up to date when the bus answers).
    pub async fn caught_up(&self, limit: Duration) -> bool {
        let mut caught_up = self.inner.caught_up.subscribe();
        tokio::time::timeout(limit, caught_up.wait_for(|c| *c)).await.is_ok_and(|r| r.is_ok())
    }

    fn bucket(&self) -> Result<&kv::Store, DirectoryError> {
        self.inner.bucket.get().ok_or(DirectoryError::NotReady)
    }

    /// An operator (or integrator), from the bucket; from the copy when the bus cannot answer.
    pub async fn operator(&self, login: &str) -> Result<Option<OperatorRecord>, DirectoryError> {
        let key = Key::Operator(login.to_owned()).encode()?;
        match self.bucket().map(|b| b.get(key)) {
            Ok(get) => match get.await {
                Ok(Some(value)) => Ok(Some(serde_json::from_slice(&value)?)),
                Ok(None) => Ok(None),
                Err(e) => {
                    tracing::warn!(error = %e, "the access directory cannot be read; this replica's copy answers");
                    Ok(self.inner.store.operator(login)?)
                }
            },
            Err(_) => Ok(self.inner.store.operator(login)?),
        }
    }

    /// Every operator and integrator, from the copy.
    pub fn operators(&self) -> Result<Vec<OperatorRecord>, DirectoryError> {
        Ok(self.inner.store.operators()?)
    }

    /// Creates `value` under `key` unless the key exists: true if created, or found holding
    /// exactly `value` (our own write, whose answer was lost); false if it holds another value.
    /// Retried through the bus's failures for [`PATIENCE`].
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<bool, DirectoryError> {
        let bucket = self.bucket()?;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let failure = match bucket.create(key, value.clone().into()).await {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => match bucket.get(key).await {
                    // The same record (compared as JSON values: another version may spell it
                    // with other spacing or order).
                    Ok(Some(held)) => return Ok(same_json(&held, &value)),
                    // A follower that has not seen the key yet: asked again.
                    Ok(None) => "the key exists but was not read back".to_owned(),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() + RETRY_PAUSE > deadline {
                return Err(DirectoryError::Bus(failure));
            }
            tracing::debug!(key, error = failure, "a write to the access directory failed; retrying");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Adds an operator or integrator; false if the login exists already (at any replica).
    pub async fn create_operator(&self, operator: &OperatorRecord) -> Result<bool, DirectoryError> {
        let key = Key::Operator(operator.login.clone()).encode()?;
        if !self.create(&key, serde_json::to_vec(operator)?).await? {
            return Ok(false);
        }
        self.inner.store.put_operator(operator)?;
        Ok(true)
    }

    /// Removes a login; false if there was none. Every session of theirs is revoked first, from
    /// the bucket's list (not this replica's copy, which may not have them all yet): a failure
    /// leaves the login in place, and the administrator's retry finishes the work.
    pub async fn remove_operator(&self, login: &str) -> Result<bool, DirectoryError> {
        let key = Key::Operator(login.to_owned()).encode()?;
        let bucket = self.bucket()?;
        let exists = bucket.get(key.as_str()).await.map_err(bus)?.is_some();
        self.revoke_every_session_of(bucket, login).await?;
        if exists {
            bucket.delete(key).await.map_err(bus)?;
        }
        // Again: a login at another replica between the first listing and the delete.
        self.revoke_every_session_of(bucket, login).await?;
        self.inner.store.remove_operator(login)?;
        Ok(exists)
    }

    /// Revokes every session of `login` the bucket or this copy has.
    async fn revoke_every_session_of(&self, bucket: &kv::Store, login: &str) -> Result<(), DirectoryError> {
        let mut sids: std::collections::BTreeSet<String> =
            self.inner.store.sessions()?.into_iter().filter(|s| s.login == login).map(|s| s.sid).collect();
        let filter = format!("{}session.{}.*", bucket.prefix, hex(login));
        let mut subjects = bucket.stream.info_with_subjects(filter).await.map_err(bus)?;
        while let Some(subject) = subjects.next().await {
            let (subject, _) = subject.map_err(bus)?;
            if let Some(Key::Session { sid, .. }) = subject.strip_prefix(bucket.prefix.as_str()).and_then(Key::decode) {
                sids.insert(sid);
            }
        }
        for sid in &sids {
            self.revoke_session_with(login, sid, PATIENCE).await?;
        }
        Ok(())
    }

    /// A new session or credential.
    pub async fn create_session(&self, session: &SessionRecord) -> Result<(), DirectoryError> {
        let key = Key::Session { login: session.login.clone(), sid: session.sid.clone() }.encode()?;
        let session = SessionRecord { rotation: rand::random(), ..session.clone() };
        if !self.create(&key, serde_json::to_vec(&session)?).await? {
            return Err(DirectoryError::Bus("a session id was drawn twice".into()));
        }
        self.copy_session(&session)?;
        Ok(())
    }

    /// Changes a session by compare-and-set: `change` sees the session as the bucket has it and
    /// returns what to write (or `None` to leave it); retried when another replica changed it
    /// in between, and through the bus's failures for `patience`. Returns the session as it is
    /// afterwards (`None`: there is no such session).
    pub async fn update_session<T>(
        &self,
        login: &str,
        sid: &str,
        patience: Duration,
        mut change: impl FnMut(&SessionRecord) -> (Option<SessionRecord>, T),
    ) -> Result<Option<(SessionRecord, T)>, DirectoryError> {
        let key = Key::Session { login: login.to_owned(), sid: sid.to_owned() }.encode()?;
        let bucket = self.bucket()?;
        let deadline = tokio::time::Instant::now() + patience;
        // The writes whose answer was lost: the session each wrote, and what it meant. One may
        // land late, or be read from a follower that has not seen it yet: all are remembered.
        let mut unanswered: Vec<(SessionRecord, T)> = Vec::new();
        let mut conflicts = 0;
        loop {
            let failure = match bucket.entry(key.as_str()).await {
                Ok(entry) => {
                    let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                        return Ok(None);
                    };
                    let current: SessionRecord = serde_json::from_slice(&entry.value)?;
                    if let Some(ours) = unanswered.iter().position(|(written, _)| *written == current) {
                        let (_, outcome) = unanswered.swap_remove(ours);
                        self.copy_session(&current)?;
                        return Ok(Some((current, outcome)));
                    }
                    let (next, outcome) = change(&current);
                    let Some(next) = next else {
                        self.copy_session(&current)?;
                        return Ok(Some((current, outcome)));
                    };
                    let next = SessionRecord { rotation: rand::random(), ..next };
                    match bucket.update(key.as_str(), serde_json::to_vec(&next)?.into(), entry.revision).await {
                        Ok(_) => {
                            self.copy_session(&next)?;
                            return Ok(Some((next, outcome)));
                        }
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            conflicts += 1;
                            if conflicts >= CAS_ATTEMPTS {
                                return Err(DirectoryError::Contended);
                            }
                            continue;
                        }
                        Err(e) => {
                            unanswered.push((next, outcome));
                            e.to_string()
                        }
                    }
                }
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() + RETRY_PAUSE > deadline {
                return Err(DirectoryError::Bus(failure));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Revokes a session everywhere. At once and durably at this replica (its sockets close, the
    /// copy says so after a crash), then in the bucket, where the other replicas' watch finds
    /// it; when the bus cannot take it, it is kept here and uploaded when it can.
    pub async fn revoke_session(&self, login: &str, sid: &str) -> Result<(), DirectoryError> {
        self.revoke_here(sid);
        let key = Key::Session { login: login.to_owned(), sid: sid.to_owned() }.encode()?;
        // Kept here and marked for upload before the bus is tried (`mark_pending` flushes): a
        // crash meanwhile does not lose it.
        let kept = match self.inner.store.session(sid)? {
            Some(session) => {
                self.copy_session(&SessionRecord { revoked: true, ..session })?;
                self.inner.store.mark_pending(&key)?;
                true
            }
            None => false,
        };
        match self.revoke_session_with(login, sid, LOGOUT_PATIENCE).await {
            Ok(()) => {
                if kept {
                    self.inner.store.uploaded(&key)?;
                }
                Ok(())
            }
            Err(e) if kept => {
                tracing::warn!(error = %e, "a revocation is kept here until the access directory takes it");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn revoke_session_with(&self, login: &str, sid: &str, patience: Duration) -> Result<(), DirectoryError> {
        self.update_session(login, sid, patience, |s| {
            let next = (!s.revoked).then(|| SessionRecord { revoked: true, ..s.clone() });
            (next, ())
        })
        .await?;
        self.revoke_here(sid);
        Ok(())
    }

    /// Closes a session's sockets and refuses its tokens at this replica.
    fn revoke_here(&self, sid: &str) {
        if let Some(authority) = &self.inner.authority
            && !authority.is_revoked(sid)
        {
            authority.revoke(sid);
        }
    }

    /// Writes a session to the copy, merged with what the copy has: revoked stays revoked and
    /// the generation never goes back (an entry of the watch may arrive after a newer write).
    fn copy_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let merged = match self.inner.store.session(&session.sid)? {
            Some(held) => SessionRecord {
                revoked: session.revoked || held.revoked,
                generation: session.generation.max(held.generation),
                ..session.clone()
            },
            None => session.clone(),
        };
        self.inner.store.put_session(&merged)?;
        if merged.revoked {
            self.revoke_here(&merged.sid);
        }
        Ok(())
    }

    /// Adds (or renames) a commune of the deployment.
    pub async fn put_commune(&self, id: &str, name: &str) -> Result<(), DirectoryError> {
        let key = Key::Commune(id.to_owned()).encode()?;
        self.bucket()?.put(key, serde_json::to_vec(name)?.into()).await.map_err(bus)?;
        self.copy_commune(id, name)?;
        Ok(())
    }

    fn copy_commune(&self, id: &str, name: &str) -> Result<(), StoreError> {
        self.inner.store.put_tenant(id, name)?;
        if let Ok(mut communes) = self.inner.communes.write() {
            communes.insert(id.to_owned(), name.to_owned());
        }
        Ok(())
    }

    /// Follows the bucket until `stop`: creates it if missing, uploads what the command line
    /// wrote meanwhile, then applies every entry to the copy. Reconnects after any failure.
    pub async fn follow(self, js: async_nats::jetstream::Context, replicas: usize, stop: CancellationToken) {
        loop {
            match self.follow_once(&js, replicas, &stop).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "following the access directory failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn follow_once(
        &self,
        js: &async_nats::jetstream::Context,
        replicas: usize,
        stop: &CancellationToken,
    ) -> Result<(), DirectoryError> {
        let bucket = match js.get_key_value(BUCKET).await {
            Ok(bucket) => bucket,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: BUCKET.into(),
                    description: "Vigie's operators, sessions, credentials and communes (the gateway's)".into(),
                    history: 1,
                    num_replicas: replicas.max(1),
                    storage: async_nats::jetstream::stream::StorageType::File,
                    max_value_size: 64 * 1024,
                    ..Default::default()
                })
                .await
                .map_err(bus)?,
        };
        let empty = bucket.status().await.map_err(bus)?.info.state.messages == 0;
        let bucket = self.inner.bucket.get_or_init(|| async { bucket }).await;
        if empty {
            self.mark_copy_pending()?;
        }
        self.upload_pending(bucket).await;
        let mut watch = bucket.watch_with_history(">").await.map_err(bus)?;
        if empty {
            self.inner.caught_up.send_replace(true);
        }
        let mut purge = tokio::time::interval(PURGE_EVERY);
        let mut upload = tokio::time::interval(UPLOAD_EVERY);
        loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        if let Err(e) = self.apply(&entry) {
                            tracing::warn!(key = %entry.key, error = %e, "an access directory entry cannot be applied; skipped");
                        }
                        if entry.delta == 0 && !*self.inner.caught_up.borrow() {
                            tracing::info!("the access directory's copy is up to date");
                            self.inner.caught_up.send_replace(true);
                        }
                    }
                    Some(Err(e)) => return Err(bus(e)),
                    None => return Err(DirectoryError::Bus("the watch ended".into())),
                },
                _ = upload.tick() => self.upload_pending(bucket).await,
                _ = purge.tick() => self.purge_expired(bucket).await,
                _ = stop.cancelled() => return Ok(()),
            }
        }
    }

    /// Marks every record of the copy for upload (the bucket was found empty: a first start, or
    /// its stream lost). Sessions merge with what another replica may have uploaded meanwhile.
    fn mark_copy_pending(&self) -> Result<(), DirectoryError> {
        let store = &self.inner.store;
        let mut keys = Vec::new();
        for o in store.operators()? {
            keys.push(Key::Operator(o.login).encode()?);
        }
        for s in store.sessions()? {
            keys.push(Key::Session { login: s.login, sid: s.sid }.encode()?);
        }
        for (id, _) in store.tenants()? {
            keys.push(Key::Commune(id).encode()?);
        }
        if !keys.is_empty() {
            tracing::warn!(records = keys.len(), "the access directory is empty: filled from this replica's copy");
        }
        for key in keys {
            store.mark_pending(&key)?;
        }
        Ok(())
    }

    /// Uploads what was kept here: the command line's writes, revocations the bus could not
    /// take, or the copy of an empty bucket. A login that exists in the bucket with another
    /// record keeps the bucket's, and the sessions written here for it are revoked, never
    /// uploaded (a credential must not attach to someone else's login). A session merges with
    /// the bucket's (revoked stays revoked).
    async fn upload_pending(&self, bucket: &kv::Store) {
        let pending = match self.inner.store.pending() {
            Ok(pending) => pending,
            Err(e) => {
                tracing::error!(error = %e, "the keys kept for the access directory cannot be read");
                return;
            }
        };
        let mut pending: Vec<(String, Key)> =
            pending.into_iter().filter_map(|k| Key::decode(&k).map(|key| (k, key))).collect();
        // Operators first: their sessions depend on them.
        pending.sort_by_key(|(_, key)| !matches!(key, Key::Operator(_)));
        // Logins whose operator could not be uploaded this round: their sessions wait for it (it
        // decides whether they may be uploaded live).
        let mut unsettled = std::collections::BTreeSet::new();
        for (encoded, key) in pending {
            let login = match &key {
                Key::Operator(login) => Some(login.clone()),
                Key::Session { login, .. } if unsettled.contains(login) => continue,
                _ => None,
            };
            // A key that fails stays kept, and is tried again at the next round; the others go on.
            match self.upload_one(bucket, &encoded, key).await {
                Ok(()) => match self.inner.store.uploaded(&encoded) {
                    Ok(()) => tracing::info!(key = encoded, "uploaded to the access directory"),
                    Err(e) => tracing::error!(key = encoded, error = %e, "cannot mark an upload done"),
                },
                Err(e) => {
                    tracing::warn!(key = encoded, error = %e, "uploading to the access directory failed; later");
                    unsettled.extend(login);
                }
            }
        }
    }

    async fn upload_one(&self, bucket: &kv::Store, encoded: &str, key: Key) -> Result<(), DirectoryError> {
        let store = &self.inner.store;
        match key {
            Key::Operator(login) => {
                if let Some(operator) = store.operator(&login)?
                    && !self.create(encoded, serde_json::to_vec(&operator)?).await?
                {
                    tracing::error!(
                        login,
                        "this login exists in the access directory with another record: the directory's is kept, and the sessions written here for it are revoked"
                    );
                    // Revoked in the copy first (durably): whenever they are uploaded, they
                    // are uploaded revoked, and never attach to someone else's login.
                    for session in store.sessions()?.into_iter().filter(|s| s.login == login) {
                        self.copy_session(&SessionRecord { revoked: true, ..session })?;
                    }
                    store.flush_now()?;
                }
            }
            Key::Session { sid, .. } => {
                if let Some(session) = store.session(&sid)? {
                    self.upload_session(bucket, encoded, session).await?;
                }
            }
            Key::Commune(id) => {
                if let Some((_, name)) = store.tenants()?.into_iter().find(|(c, _)| *c == id) {
                    bucket.put(encoded, serde_json::to_vec(&name)?.into()).await.map_err(bus)?;
                }
            }
        }
        Ok(())
    }

    /// Writes a session kept here into the bucket, merged with the bucket's.
    async fn upload_session(
        &self,
        bucket: &kv::Store,
        key: &str,
        session: SessionRecord,
    ) -> Result<(), DirectoryError> {
        if bucket.entry(key).await.map_err(bus)?.is_none_or(|e| e.operation != kv::Operation::Put)
            && self.create(key, serde_json::to_vec(&session)?).await?
        {
            return Ok(());
        }
        let revoked = session.revoked;
        let generation = session.generation;
        self.update_session(&session.login, &session.sid, PATIENCE, |held| {
            let merged = SessionRecord {
                revoked: held.revoked || revoked,
                generation: held.generation.max(generation),
                ..held.clone()
            };
            ((merged != *held).then_some(merged), ())
        })
        .await?;
        Ok(())
    }

    /// Applies one entry of the bucket to the copy (a value that does not decode is refused).
    fn apply(&self, entry: &kv::Entry) -> Result<(), DirectoryError> {
        let store = &self.inner.store;
        let put = entry.operation == kv::Operation::Put;
        match Key::decode(&entry.key) {
            Some(Key::Operator(login)) if put => {
                let operator: OperatorRecord = serde_json::from_slice(&entry.value)?;
                if operator.login != login {
                    return Err(DirectoryError::Invalid("an operator under another login's key".into()));
                }
                store.put_operator(&operator)?;
            }
            Some(Key::Operator(login)) => {
                store.remove_operator(&login)?;
            }
            Some(Key::Session { login, sid }) if put => {
                let session: SessionRecord = serde_json::from_slice(&entry.value)?;
                if session.sid != sid || session.login != login {
                    return Err(DirectoryError::Invalid("a session under another session's key".into()));
                }
                // Revoked at another replica: its sockets here close too (in `copy_session`).
                self.copy_session(&session)?;
            }
            Some(Key::Session { sid, .. }) => store.remove_session(&sid)?,
            Some(Key::Commune(id)) if put => {
                let name: String = serde_json::from_slice(&entry.value)?;
                let name = crate::access::commune_name(&name)
                    .map_err(|e| DirectoryError::Invalid(format!("a commune's name: {e}")))?;
                self.copy_commune(&id, name)?;
            }
            // Communes are never removed (events and operators name them).
            Some(Key::Commune(_)) => {}
            None => return Err(DirectoryError::Invalid("not a key of the access directory".into())),
        }
        Ok(())
    }

    /// Purges the sessions expired for a day (a revoked one is kept until then, so that its
    /// tokens stay refused).
    async fn purge_expired(&self, bucket: &kv::Store) {
        let horizon = crate::auth::now_s().saturating_sub(86_400);
        let Ok(sessions) = self.inner.store.sessions() else { return };
        for session in sessions.into_iter().filter(|s| s.expires_at < horizon) {
            let Ok(key) = (Key::Session { login: session.login.clone(), sid: session.sid.clone() }).encode() else {
                continue;
            };
            if let Err(e) = bucket.purge(key).await {
                tracing::warn!(error = %e, "purging an expired session failed; next time");
                return;
            }
            let _ = self.inner.store.remove_session(&session.sid);
        }
    }
}

/// The command line's writes (the gateway stopped, no bus): to the copy, marked for upload at
/// the next start.
pub mod offline {
    use super::{DirectoryError, Key};
    use crate::auth::{OperatorRecord, SessionRecord};
    use crate::store::Store;

    pub fn put_operator(store: &Store, operator: &OperatorRecord) -> Result<(), DirectoryError> {
        store.put_operator(operator)?;
        store.mark_pending(&Key::Operator(operator.login.clone()).encode()?)?;
        Ok(())
    }

    pub fn put_session(store: &Store, session: &SessionRecord) -> Result<(), DirectoryError> {
        store.put_session(session)?;
        store.mark_pending(&Key::Session { login: session.login.clone(), sid: session.sid.clone() }.encode()?)?;
        Ok(())
    }

    pub fn put_commune(store: &Store, id: &str, name: &str) -> Result<(), DirectoryError> {
        store.put_tenant(id, name)?;
        store.mark_pending(&Key::Commune(id.to_owned()).encode()?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Key;

    #[test]
    fn keys_round_trip_and_refuse_what_is_not_ours() {
        for key in [
            Key::Operator("jean.dupont@ville.fr".into()),
            Key::Session { login: "jean.dupont@ville.fr".into(), sid: "AbC-_09xyz".into() },
            Key::Commune("34172".into()),
            Key::Commune("2A004".into()),
        ] {
            let encoded = key.encode().expect("encodes");
            assert!(encoded.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)), "{encoded}");
            assert_eq!(Key::decode(&encoded), Some(key));
        }
        let session = |sid: &str| Key::Session { login: "op".into(), sid: sid.into() };
        assert!(session("a.b").encode().is_err(), "a dot would make two tokens");
        assert!(session("").encode().is_err());
        assert!(Key::Commune("abc".into()).encode().is_err());
        for foreign in [
            "operator.zz",
            "operator.414",
            "session.",
            "session.abc",
            "session.6f70",
            "commune.abc",
            "other.x",
            "operator.4A",
        ] {
            assert_eq!(Key::decode(foreign), None, "{foreign}");
        }
    }
}
