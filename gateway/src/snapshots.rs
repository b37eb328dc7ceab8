//! What a snapshot costs, bounded: each login has a budget of snapshots (a burst, then one every
//! few seconds, whatever number of sockets or streams it opens); a serialised snapshot is shared
//! for a short while by the requests for the same filter (a client that asks, while nothing was
//! applied since; a session that fell behind, with the deltas since); and only a few are built
//! at once. A snapshot is the most expensive thing a reader can
//! ask for (the whole view, copied under the lock the consumer applies events under, then
//! serialised), so without these any viewer could keep the gateway busy and delay everyone's
//! events.

use axum::extract::ws::Utf8Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Snapshots a login may ask for at once, by default (`--snapshots-per-login`).
pub const BURST: u32 = 10;
/// Then one every this often.
pub const REFILL_EVERY: Duration = Duration::from_secs(2);
/// A serialised snapshot serves later requests for the same filter this long (see
/// `Live::start_shared`).
pub const SHARED_FOR: Duration = Duration::from_secs(1);
/// Snapshots built at once; the other requests wait their turn (the consumer never does). A
/// session that fell behind is charged too: past its login's budget it is closed (too slow).
pub const BUILDS_AT_ONCE: usize = 2;
/// Bytes of shared snapshots kept at most (the oldest leave first).
pub const SHARED_BYTES: usize = 64 << 20;

/// The login asked for more snapshots than its budget: retry after this long.
#[derive(Debug, Clone, Copy)]
pub struct RateLimited {
    pub retry_after: Duration,
    burst: u32,
}

impl RateLimited {
    /// The reason in a WebSocket close frame (at most 123 bytes).
    pub fn close_reason(&self) -> String {
        format!("too many snapshots for this login: retry in {} s", self.retry_after.as_secs_f64().ceil())
    }
}

impl std::fmt::Display for RateLimited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "too many snapshots for this login (a burst of {}, then one every {} s): retry in {} s; the \
             previous subscription stays",
            self.burst,
            REFILL_EVERY.as_secs(),
            self.retry_after.as_secs_f64().ceil()
        )
    }
}

/// A serialised snapshot: its frames, in order (see `live::snapshot_frames`). A clone shares
/// them; none when its serialisation failed.
#[derive(Clone, Default)]
pub struct SnapshotFrames(Arc<[Utf8Bytes]>);

impl SnapshotFrames {
    pub fn iter(&self) -> impl Iterator<Item = &Utf8Bytes> {
        self.0.iter()
    }

    pub fn bytes(&self) -> usize {
        self.0.iter().map(|f| f.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<Utf8Bytes>> for SnapshotFrames {
    fn from(frames: Vec<Utf8Bytes>) -> Self {
        SnapshotFrames(frames.into())
    }
}

/// A serialised snapshot, for one filter, current at `seq` of the view's `generation`.
pub struct Shared {
    generation: u64,
    seq: u64,
    frames: SnapshotFrames,
    built: Instant,
}

pub struct Snapshots {
    burst: u32,
    pub builds: tokio::sync::Semaphore,
    shared: Mutex<HashMap<String, Shared>>,
    budgets: Mutex<HashMap<String, Budget>>,
}

impl Snapshots {
    /// `burst`: the snapshots a login may ask for at once.
    pub fn new(burst: u32) -> Self {
        Snapshots {
            burst,
            builds: tokio::sync::Semaphore::new(BUILDS_AT_ONCE),
            shared: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
        }
    }
}

/// A login's snapshots left (a token bucket).
struct Budget {
    left: f64,
    at: Instant,
}

impl Budget {
    fn refill(&mut self, now: Instant, burst: u32) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        self.left = (self.left + earned).min(f64::from(burst));
        self.at = now;
    }
}

impl Snapshots {
    /// Takes one snapshot from `login`'s budget, or says how long until there is one.
    pub fn take(&self, login: &str) -> Result<(), RateLimited> {
        let now = Instant::now();
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        // Logins are the deployment's operators and integrators: few. Full budgets are
        // forgotten from time to time all the same.
        if budgets.len() > 10_000 {
            budgets.retain(|_, b| {
                b.refill(now, self.burst);
                b.left < f64::from(self.burst)
            });
        }
        let budget = budgets.entry(login.to_owned()).or_insert(Budget { left: f64::from(self.burst), at: now });
        budget.refill(now, self.burst);
        if budget.left >= 1.0 {
            budget.left -= 1.0;
            return Ok(());
        }
        let retry_after = REFILL_EVERY.mul_f64(1.0 - budget.left);
        crate::metrics::get().snapshots_refused.inc();
        Err(RateLimited { retry_after, burst: self.burst })
    }

    /// The shared snapshot for this filter, if one of this generation of the view is recent
    /// enough: its sequence and its frames.
    pub fn recent(&self, filter_key: &str, generation: u64) -> Option<(u64, SnapshotFrames)> {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared
            .get(filter_key)
            .filter(|s| s.generation == generation && s.built.elapsed() < SHARED_FOR)
            .map(|s| (s.seq, s.frames.clone()))
    }

    /// Drops every shared snapshot (the view they were taken from is gone).
    pub fn forget(&self) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Keeps a snapshot for the requests that follow; the expired ones, and the oldest past the
    /// byte budget, leave.
    pub fn share(&self, filter_key: String, generation: u64, seq: u64, frames: SnapshotFrames) {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.retain(|_, s| s.built.elapsed() < SHARED_FOR);
        let bytes = frames.bytes();
        if frames.is_empty() || bytes > SHARED_BYTES {
            return;
        }
        while shared.values().map(|s| s.frames.bytes()).sum::<usize>() + bytes > SHARED_BYTES {
            let Some(oldest) = shared.iter().min_by_key(|(_, s)| s.built).map(|(k, _)| k.clone()) else {
                break;
            };
            shared.remove(&oldest);
        }
        shared.insert(filter_key, Shared { generation, seq, frames, built: Instant::now() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_gets_a_burst_then_waits() {
        let snapshots = Snapshots::new(BURST);
        for _ in 0..10 {
            assert!(snapshots.take("viewer").is_ok());
        }
        let refused = snapshots.take("viewer").expect_err("past the burst");
        assert!(refused.retry_after <= REFILL_EVERY && refused.retry_after > Duration::ZERO);
        assert!(refused.to_string().contains("retry in"), "{refused}");
        // Another login has its own budget.
        assert!(snapshots.take("operator").is_ok());
    }

    #[test]
    fn shared_snapshots_expire_and_stay_within_their_bytes() {
        let snapshots = Snapshots::new(BURST);
        let frames = |text: &str| SnapshotFrames::from(vec![Utf8Bytes::from(text)]);
        snapshots.share("a".into(), 0, 7, frames("{}"));
        assert_eq!(snapshots.recent("a", 0).map(|(seq, _)| seq), Some(7));
        assert!(snapshots.recent("a", 1).is_none(), "another generation of the view");
        assert!(snapshots.recent("b", 0).is_none());
        let big = "x".repeat(SHARED_BYTES / 2 + 1);
        snapshots.share("b".into(), 0, 8, frames(&big));
        snapshots.share("c".into(), 0, 9, frames(&big));
        assert!(snapshots.recent("b", 0).is_none(), "the oldest left to make room");
        assert!(snapshots.recent("c", 0).is_some());
        snapshots.share("d".into(), 0, 10, SnapshotFrames::default());
        assert!(snapshots.recent("d", 0).is_none(), "a failed serialisation is not shared");
    }
}
