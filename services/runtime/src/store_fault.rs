//! What a process does when its sled store fails to write (a full disk, a failing one).
//!
//! sled keeps the first I/O error it hits: every later write of that process fails with it, even
//! once the disk has room again. So a process goes on serving what it can (a domain service
//! refuses writes with `UNAVAILABLE`, the gateway serves its last view, marked stale), and a
//! probe thread writes a file of 8 MiB next to the store every second; once that succeeds (room
//! again), the process exits with [`EXIT_STORE_RECOVERED`] so that its supervisor starts it
//! afresh, from what its store holds. Every deployment runs the processes under a supervisor
//! that restarts them (systemd, Kubernetes; the test harness plays one).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The exit status after the store failed and its disk has room again (EX_TEMPFAIL).
pub const EXIT_STORE_RECOVERED: i32 = 75;

static STORE_DIR: OnceLock<PathBuf> = OnceLock::new();
static FAILED: AtomicBool = AtomicBool::new(false);

/// Names the folder of this process's store (call once it is open), and starts a watchdog that
/// flushes it every two seconds: a write path that fails before any flush (sled refuses every
/// write once it kept an error) is found there.
pub fn watch(dir: &Path, db: &sled::Db) {
    let _ = STORE_DIR.set(dir.to_owned());
    let db = db.clone();
    let spawned = std::thread::Builder::new().name("store-watchdog".into()).spawn(move || {
        while !failed() {
            std::thread::sleep(Duration::from_secs(2));
            if let Err(e) = db.flush() {
                report(&e);
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the store watchdog");
    }
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
