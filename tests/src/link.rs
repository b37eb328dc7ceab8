//! A TCP link between one process and NATS that a test can cut or stall: a small proxy on its own
//! thread (so a test blocked in synchronous calls never stalls it by accident).
//!
//! - [`LinkState::Open`]: bytes flow both ways.
//! - [`LinkState::Stalled`]: nothing flows, connections stay open; what was sent waits, as in a
//!   black-holed network where TCP keeps retransmitting. Opening again delivers it.
//! - [`LinkState::StalledToClient`]: the process's bytes reach NATS, nothing comes back (its
//!   publishes are stored, their acknowledgements never arrive).
//! - [`LinkState::Cut`]: every connection is closed (what was in flight is lost) and new ones
//!   are closed at once.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Open,
    Stalled,
    StalledToClient,
    Cut,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

impl LinkState {
    fn flows(self, direction: Direction) -> bool {
        match self {
            LinkState::Open => true,
            LinkState::StalledToClient => direction == Direction::ToServer,
            LinkState::Stalled | LinkState::Cut => false,
        }
    }
}

/// A proxy from a local port to `target` (see the module's documentation). Closed on drop.
pub struct Link {
    addr: SocketAddr,
    state: watch::Sender<LinkState>,
    closed: watch::Sender<bool>,
}

impl Link {
    /// A link to `target` (`host:port`), open.
    pub fn to(target: &str) -> Result<Link> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (state, _) = watch::channel(LinkState::Open);
        let (closed, _) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let target = target.to_owned();
        let (states, mut closing) = (state.clone(), closed.subscribe());
        std::thread::Builder::new()
            .name(format!("link-{addr}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else { return };
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((client, _)) => {
                                    tokio::spawn(carry(client, target.clone(), states.subscribe()));
                                }
                                // Out of descriptors, say: try again shortly rather than spin.
                                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                            },
                            _ = closing.changed() => return,
                        }
                    }
                })
            })
            .context("starting the link's thread")?;
        Ok(Link { addr, state, closed })
    }

    /// The NATS URL a process connects through this link with.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn set(&self, state: LinkState) {
        self.state.send_replace(state);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.state.send_replace(LinkState::Cut);
        self.closed.send_replace(true);
    }
}

/// One connection through the link: refused while cut, else carried both ways until either end
/// closes or the link is cut.
async fn carry(client: TcpStream, target: String, state: watch::Receiver<LinkState>) {
    if *state.borrow() == LinkState::Cut {
        return;
    }
    let Ok(server) = TcpStream::connect(&target).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write, state.clone(), Direction::ToServer),
        pump(server_read, client_write, state, Direction::ToClient),
    );
}

/// Waits until bytes may flow this way; false once the link is cut (or gone).
async fn until_flowing(state: &mut watch::Receiver<LinkState>, direction: Direction) -> bool {
    loop {
        let now = *state.borrow_and_update();
        if now == LinkState::Cut {
            return false;
        }
        if now.flows(direction) {
            return true;
        }
        if state.changed().await.is_err() {
            return false;
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<LinkState>,
    direction: Direction,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if !until_flowing(&mut state, direction).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // A change (a stall, a cut) is looked at before reading on.
            _ = state.changed() => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just as the link stalled wait for it to open (or are lost if it is cut).
        if !until_flowing(&mut state, direction).await {
            return;
        }
        // A peer that reads nothing must not keep a cut connection open.
        let written = tokio::select! {
            written = to.write_all(&buffer[..n]) => written.is_ok(),
            _ = until_cut(&mut state) => false,
        };
        if !written {
            return;
        }
    }
}

/// Returns once the link is cut (or gone).
async fn until_cut(state: &mut watch::Receiver<LinkState>) {
    while *state.borrow_and_update() != LinkState::Cut {
        if state.changed().await.is_err() {
            return;
        }
    }
}
