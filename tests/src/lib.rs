//! Test harness: real processes on ephemeral ports.
//!
//! - [`NatsServer`]: `nats-server -js -p -1` with `--ports_file_dir`, so the port is learnt
//!   without a race; stopped, restarted on the same port and store, killed on drop.
//! - [`Process`]: a Vigie binary from the same `target/` folder as the test, its stderr captured;
//!   readiness is a log line, then a health check. Killed on drop.
//! - [`LiveClient`]: a WebSocket client of the gateway's live protocol.
//! - [`Slice`]: NATS, the lighting service and the gateway (other services on demand), with
//!   operators, tokens and gRPC clients.
//! - [`test_territory`]: a small synthetic territory, so the tests need no shared data.
//! - `http`: requests through `reqwest` (async), with the token the test logged in with.
//! - [`eventually`]: the one way to wait for a condition, under a deadline (never a bare sleep).

use anyhow::{Context, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use proto;

mod fixtures;
mod http;
mod link;
mod live_client;
mod nats;
mod process;
mod slice;
mod wait;
pub use fixtures::*;
pub use http::*;
pub use link::{Link, LinkState};
pub use live_client::*;
pub use nats::*;
pub use process::*;
pub use slice::*;
pub use wait::{block_on, eventually};

/// How long any single wait in the harness may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// How long a test may read frames waiting for a condition, even while frames keep coming
/// (periodic KPIs would otherwise keep a failing wait alive for ever).
pub const UNTIL: Duration = Duration::from_secs(90);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The nats-server binary: `$VIGIE_NATS_SERVER`, else `.tools/bin/nats-server` (installed by
/// `deploy/install-tools.sh`), else `nats-server` on the PATH.
pub fn nats_server_binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("VIGIE_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let local = repo_root().join(".tools/bin/nats-server");
    if local.is_file() {
        return Ok(local);
    }
    if Command::new("nats-server").arg("--version").output().is_ok() {
        return Ok(PathBuf::from("nats-server"));
    }
    bail!("nats-server not found: run deploy/install-tools.sh (or tests/run.sh), or set VIGIE_NATS_SERVER")
}

/// A Vigie binary built in the same profile as this test.
pub fn vigie_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>; a binary of this crate (the
    // benchmark) is in target/<profile> itself.
    let parent = exe.parent().ok_or_else(|| anyhow!("unexpected path {}", exe.display()))?;
    let dir = if parent.ends_with("deps") { parent.parent().unwrap_or(parent) } else { parent };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build the binaries first (`cargo build --workspace --bins`, as tests/run.sh does)",
            path.display()
        );
    }
    Ok(path)
}

fn poll<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, sig)?;
    Ok(())
}

fn wait_exit(child: &mut Child, what: &str) -> Result<ExitStatus> {
    poll(what, WAIT, || child.try_wait().ok().flatten())
}

/// The password of the operators the harness creates (tests are not about password strength).
pub const TEST_PASSWORD: &str = "a test password of the harness";
