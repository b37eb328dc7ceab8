//! What a process does when its sled store fails to write (a full disk, a failing one).
//!
//! sled keeps the first I/O error it hits: every later write of that process fails with it, even
//! once the disk has room again. So a process goes on serving what it can (a domain service
//! refuses writes with `UNAVAILABLE`, the gateway serves its last view, marked stale), and a
//! probe thread writes a file of 8 MiB next to the store every second; once that succeeds (room
//! again), the process exits with [`EXIT_STORE_RECOVERED`] so that its supervisor starts it
//! afresh, from what its store holds. Every deployment runs the processes under a supervisor
//! that restarts them (systemd, Kubernetes; the test harness plays one).
//!
//! A store can also stop answering: sled 0.34 deadlocks under a heavy write load (its log's
//! writers wait on a segment that a writer holding the log's lock waits for; sled issue #1412,
//! open, and seen here in the benchmark's standby step: every tokio worker parked inside sled, the
//! process idle, its lease lapsed). Nothing acknowledged is lost then (a write is acknowledged
//! after its flush), but the process serves nothing, silently. The watchdog's flush is timed: a
//! flush unfinished after [`STALL_NOT_SERVING`] makes the process say NOT_SERVING, and after
//! [`STALL_LIMIT`] it exits with [`EXIT_STORE_STALLED`] for its supervisor to start it afresh
//! (sled's recovery reads its log again at start).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// The exit status after the store failed and its disk has room again (EX_TEMPFAIL).
pub const EXIT_STORE_RECOVERED: i32 = 75;
/// The exit status after the store stopped answering (EX_SOFTWARE).
pub const EXIT_STORE_STALLED: i32 = 70;
/// A flush unfinished for this long: the store is not answering (the process is not serving).
pub const STALL_NOT_SERVING: Duration = Duration::from_secs(10);
/// A flush unfinished for this long: the store is stuck, and the process exits. A flush of a
/// loaded store takes well under a second on the benchmark's machine.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

static STORE_DIR: OnceLock<PathBuf> = OnceLock::new();
static FAILED: AtomicBool = AtomicBool::new(false);
/// When the watchdog's flush in progress began (milliseconds since [`since_epoch_ms`]'s epoch);
/// 0: none is.
static FLUSH_BEGAN_MS: AtomicU64 = AtomicU64::new(0);
/// Bulk writes in progress ([`bulk_write`]): a flush waits for them, and that is no stall.
static BULK_WRITES: AtomicUsize = AtomicUsize::new(0);

/// Marks a write that may hold the store for long (one transaction of a whole view: a restored
/// checkpoint is 119 MB at 100,000 assets): sled's flush waits for a transaction to end, and the
/// stall watch must not take that wait for a deadlock. Ends when dropped.
pub struct BulkWrite(());

pub fn bulk_write() -> BulkWrite {
    BULK_WRITES.fetch_add(1, Ordering::AcqRel);
    BulkWrite(())
}

impl Drop for BulkWrite {
    fn drop(&mut self) {
        BULK_WRITES.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Names the folder of this process's store (call once it is open), and starts a watchdog that
/// flushes it every two seconds: a write path that fails before any flush (sled refuses every
/// write once it kept an error) is found there, and so is a store that stopped answering (its
/// flush does not finish; see the module's comment).
pub fn watch(dir: &Path, db: &sled::Db) {
    let _ = STORE_DIR.set(dir.to_owned());
    let db = db.clone();
    let spawned = std::thread::Builder::new().name("store-watchdog".into()).spawn(move || {
        while !failed() {
            std::thread::sleep(Duration::from_secs(2));
            FLUSH_BEGAN_MS.store(since_epoch_ms().max(1), Ordering::Release);
            let flushed = db.flush();
            FLUSH_BEGAN_MS.store(0, Ordering::Release);
            if let Err(e) = flushed {
                report(&e);
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the store watchdog");
    }
    // Counted in its own observations, a second apart, of the same flush: a process frozen (a
    // SIGSTOP, a suspended machine) while a flush ran sees one observation, not the freeze's
    // length.
    let spawned = std::thread::Builder::new().name("store-stall-watch".into()).spawn(|| {
        let (mut flush, mut seen) = (0u64, 0u64);
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = FLUSH_BEGAN_MS.load(Ordering::Acquire);
            if BULK_WRITES.load(Ordering::Acquire) > 0 {
                (flush, seen) = (0, 0);
            } else if now != 0 && now == flush {
                seen += 1;
            } else {
                (flush, seen) = (now, 0);
            }
            if Duration::from_secs(seen) >= STALL_LIMIT {
                crate::metrics::global().store_failures.inc();
                tracing::error!(
                    "the store has not finished a flush in {} s: it stopped answering (a sled deadlock); exiting so that the supervisor starts this process afresh",
                    seen
                );
                std::process::exit(EXIT_STORE_STALLED);
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the store's stall watch");
    }
}

/// How long the watchdog's flush in progress has lasted, when it has lasted long enough to say
/// the store is not answering ([`STALL_NOT_SERVING`]); `None` otherwise.
pub fn stalled_for() -> Option<Duration> {
    if BULK_WRITES.load(Ordering::Acquire) > 0 {
        return None;
    }
    stall(FLUSH_BEGAN_MS.load(Ordering::Acquire), since_epoch_ms())
}

/// The rule, pure: a flush begun at `began_ms` (0: none) seen at `now_ms`.
fn stall(began_ms: u64, now_ms: u64) -> Option<Duration> {
    if began_ms == 0 {
        return None;
    }
    let lasted = Duration::from_millis(now_ms.saturating_sub(began_ms));
    (lasted >= STALL_NOT_SERVING).then_some(lasted)
}

/// Milliseconds on a monotonic clock since the first call in this process.
fn since_epoch_ms() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    EPOCH.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

/// Whether the store has failed to write since the process started.
pub fn failed() -> bool {
    FAILED.load(Ordering::Acquire)
}

/// The store failed: an I/O error (a full or failing disk) is logged and counted once, and the
/// probe starts. Other errors (a record that does not decode) are the caller's to handle.
pub fn report(error: &sled::Error) {
    if !matches!(error, sled::Error::Io(_)) || FAILED.swap(true, Ordering::AcqRel) {
        return;
    }
    crate::metrics::global().store_failures.inc();
    let Some(dir) = STORE_DIR.get().cloned() else {
        tracing::error!(%error, "the store failed to write; writes are refused until this process is restarted");
        return;
    };
    tracing::error!(%error, store = %dir.display(), "the store failed to write; writes are refused, and the process restarts once its disk has room again");
    let spawned = std::thread::Builder::new().name("store-probe".into()).spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            if has_room(&dir) {
                tracing::warn!(store = %dir.display(), "the store's disk has room again; exiting so that the supervisor starts this process afresh");
                std::process::exit(EXIT_STORE_RECOVERED);
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the store probe");
    }
}

/// Whether 8 MiB (sixteen of sled's segments) can be written and synced beside the store: a
/// disk with less is still full for a store that writes on. (A disk failing otherwise than by
/// space passes, and the process restarts onto it: its supervisor's backoff paces that.)
fn has_room(dir: &Path) -> bool {
    let probe = dir.join(".room-probe");
    let written = (|| {
        let mut file = std::fs::File::create(&probe)?;
        file.write_all(&vec![0u8; 8 << 20])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    written.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_is_a_stall_only_once_it_lasted() {
        assert_eq!(stall(0, 1_000_000), None, "no flush in progress");
        assert_eq!(stall(1_000, 1_000 + 9_999), None, "a slow flush is not a stall");
        assert_eq!(stall(1_000, 1_000 + 10_000), Some(STALL_NOT_SERVING));
        assert_eq!(stall(1_000, 1_000 + 61_000), Some(Duration::from_secs(61)));
        assert!(STALL_LIMIT > STALL_NOT_SERVING);
        // A clock read before the flush began (another thread's) is not a negative duration.
        assert_eq!(stall(5_000, 4_000), None);
    }
}
