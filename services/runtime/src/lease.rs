//! Which instance of a domain service is the active one: a lease in a NATS key-value bucket.
//!
//! Every instance of a service run with `--standby` tries to create the service's key in the
//! bucket [`proto::subject::LEASES_BUCKET`]. The one that creates it is active; it renews the key
//! (a compare-and-set on its revision) every fifth of the lease's time to live. The bucket's
//! `max_age` is that time to live: a key not renewed ages out of the stream, and another
//! instance's `create` then succeeds. An instance that restarts while its own key is still there
//! (its persistent identity is the key's value) takes it back at once.
//!
//! **Fencing.** The active instance counts its lease as valid until half the time to live after
//! it *sent* its last successful renewal: the server stored that renewal later, so the key lives
//! at least a whole time to live after this instant, and no other instance can be active before
//! the key has aged out. Past that instant the instance publishes nothing, acknowledges nothing
//! and stops ([`Fence::holds`] is false), whether or not it can reach NATS. A renewal answered
//! "wrong revision" means another instance holds the key: it stops at once. The margin (half
//! the time to live) covers clocks whose rates differ, and a process paused past it (SIGSTOP, a
//! long pause) finds on waking that its lease is no longer valid before it publishes anything.
//! That is the first line. The second does not depend on clocks (a host suspended, whose
//! monotonic clock stood still): the state bucket itself refuses a batch of an instance that
//! another one took over from (see [`crate::replica::Publisher`]).

use async_nats::jetstream::{self, kv};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Whether this instance may still act as the active one.
#[derive(Clone)]
pub struct Fence {
    inner: Arc<FenceInner>,
}

struct FenceInner {
    /// Milliseconds after `origin` until which the lease is valid.
    valid_until_ms: AtomicU64,
    origin: Instant,
    /// Cancelled once the lease is lost for good.
    lost: CancellationToken,
}

impl Fence {
    fn new(valid_until: Instant) -> Fence {
        let origin = Instant::now();
        let fence = Fence {
            inner: Arc::new(FenceInner { valid_until_ms: AtomicU64::new(0), origin, lost: CancellationToken::new() }),
        };
        fence.extend(valid_until);
        fence
    }

    /// True while the lease is certainly this instance's.
    /// A fence valid for `duration` from now, renewed by nobody (tests of what the state bucket
    /// refuses).
    pub fn holding_for(duration: Duration) -> Fence {
        Fence::new(Instant::now() + duration)
    }

    /// Once false, false for good: a lease that lapsed, even for a moment, is not taken back by
    /// this process (another instance may have been active meanwhile).
    pub fn holds(&self) -> bool {
        let now = Instant::now().saturating_duration_since(self.inner.origin).as_millis() as u64;
        if self.inner.lost.is_cancelled() {
            return false;
        }
        if now >= self.inner.valid_until_ms.load(Ordering::Acquire) {
            self.lose("the lease was not renewed in time");
            return false;
        }
        true
    }

    /// Cancelled once the lease is lost (the instance then stops).
    pub fn lost(&self) -> CancellationToken {
        self.inner.lost.clone()
    }

    fn extend(&self, until: Instant) {
        if self.inner.lost.is_cancelled() {
            return;
        }
        let ms = until.saturating_duration_since(self.inner.origin).as_millis() as u64;
        self.inner.valid_until_ms.fetch_max(ms, Ordering::AcqRel);
    }

    pub(crate) fn lose(&self, why: &str) {
        if !self.inner.lost.is_cancelled() {
            tracing::error!(why, "lease lost: this instance stops being the active one");
            self.inner.lost.cancel();
        }
    }
}

/// The leases bucket (created if missing) with this time to live.
pub async fn bucket(js: &jetstream::Context, ttl: Duration, replicas: u8) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(proto::subject::LEASES_BUCKET).await {
        let max_age = store.status().await.map(|s| s.max_age()).unwrap_or(ttl);
        if max_age != ttl {
            return Err(crate::replica::Misconfigured(format!(
                "the leases bucket {} has a time to live of {max_age:?}, this instance {ttl:?}: every instance must use the same --lease-ttl",
                proto::subject::LEASES_BUCKET
            ))
            .into());
        }
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: proto::subject::LEASES_BUCKET.to_owned(),
        description: "Which instance of each Vigie domain service is active".to_owned(),
        history: 1,
        max_age: ttl,
        max_value_size: 1024,
        num_replicas: usize::from(replicas),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating the leases bucket {}: {e}", proto::subject::LEASES_BUCKET))
}

/// What the key holds: who is active (its persistent identity, and its host for the operator).
#[derive(serde::Serialize, serde::Deserialize)]
struct Holder {
    instance: String,
    host: String,
}

/// A lease held by this instance (see [`try_acquire`]); [`Lease::keep`] renews it.
pub struct Lease {
    store: kv::Store,
    key: String,
    value: bytes::Bytes,
    revision: u64,
    ttl: Duration,
    fence: Fence,
}

/// Takes `key` for `instance` when it is free or already this instance's; `None` while another
/// instance holds it.
pub async fn try_acquire(store: &kv::Store, key: &str, instance: &str, ttl: Duration) -> anyhow::Result<Option<Lease>> {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let value: bytes::Bytes = serde_json::to_vec(&Holder { instance: instance.to_owned(), host })?.into();
    let asked = Instant::now();
    let revision = match store.create(key, value.clone()).await {
        Ok(revision) => revision,
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let Some(entry) = store.entry(key).await? else { return Ok(None) };
            let ours = serde_json::from_slice::<Holder>(&entry.value).is_ok_and(|h| h.instance == instance);
            if entry.operation != kv::Operation::Put || !ours {
                return Ok(None);
            }
            // This instance's own lease, from before a restart: taken back at once.
            match store.update(key, value.clone(), entry.revision).await {
                Ok(revision) => revision,
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Some(Lease {
        store: store.clone(),
        key: key.to_owned(),
        value,
        revision,
        ttl,
        fence: Fence::new(asked + ttl / 2),
    }))
}

impl Lease {
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Renews the lease until `stop` (then releases it, so that a standby takes over at once)
    /// or until it is lost (then cancels [`Fence::lost`]).
    pub async fn keep(mut self, stop: CancellationToken) {
        let period = self.ttl / 5;
        let lost = self.fence.lost();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.cancelled() => {
                    match self.store.delete_expect_revision(&self.key, Some(self.revision)).await {
                        Ok(()) => tracing::info!(key = %self.key, "lease released"),
                        Err(e) => tracing::warn!(error = %e, "the lease was not released: it lapses by itself"),
                    }
                    return;
                }
                _ = lost.cancelled() => return,
            }
            if !self.fence.holds() {
                return;
            }
            let asked = Instant::now();
            match tokio::time::timeout(period, self.store.update(&self.key, self.value.clone(), self.revision)).await {
                Ok(Ok(revision)) => {
                    self.revision = revision;
                    self.fence.extend(asked + self.ttl / 2);
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // A renewal whose answer was lost (a timeout) was stored all the same: the
                    // key is still this instance's, at a later revision.
                    match self.store.entry(&self.key).await {
                        Ok(Some(entry))
                            if entry.operation == kv::Operation::Put
                                && entry.value == self.value
                                && entry.revision > self.revision =>
                        {
                            self.revision = entry.revision;
                        }
                        _ => {
                            self.fence.lose("another instance holds the lease");
                            return;
                        }
                    }
                }
                outcome => {
                    let error = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer".to_owned(),
                    };
                    tracing::warn!(error, "the lease could not be renewed; retrying");
                    if !self.fence.holds() {
                        self.fence.lose("the lease could not be renewed in time");
                        return;
                    }
                }
            }
        }
    }
}
