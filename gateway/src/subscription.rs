//! One live subscription, whatever carries it (the WebSocket at `/ws`, the gRPC OpsView stream):
//! how it starts (a snapshot, or the deltas missed since a sequence), its deltas in batches
//! (at once when a batch holds an alarm or a command, else at most every [`FLUSH_EVERY`], an
//! asset's successive updates coalesced), its heartbeats, a fresh snapshot when it falls behind
//! the broadcast, and its end: the token expired, the session revoked, the gateway shutting down.
//! A carrier sends what [`Subscription::next`] gives, and answers its own client.

use axum::extract::ws::Utf8Bytes;
use proto::live::{Filter, ServerFrame, ServerMessage};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

use crate::auth::{Authority, Principal};
use crate::live::{Delta, Demand, Live, upstream};
use crate::snapshots::RateLimited;

/// Deltas are sent in batches: at once when a batch holds an alarm or a command (never held
/// back), else at most this often; within a batch an asset's successive updates are coalesced
/// (the latest wins), so each asset changes at most about 10 times a second per client.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Deltas taken from the broadcast in one batch.
const MAX_BATCH: usize = 10_000;
/// A client that has not taken a frame (or, on a WebSocket, not been heard from) for this many
/// heartbeats is dead, and closed.
pub const HEARTBEATS_BEFORE_DEAD: u32 = 6;

/// What every subscription reads from: the view, the NATS link (for the heartbeats' `upstream`),
/// the revocations, the heartbeat interval and the gateway's shutdown.
#[derive(Clone)]
pub struct Feed {
    pub live: Arc<Live>,
    pub nats: async_nats::Client,
    pub authority: Arc<Authority>,
    pub heartbeat: Duration,
    pub shutdown: CancellationToken,
}

impl Feed {
    /// How long a send may wait for a client that does not read before it counts as dead.
    pub fn send_limit(&self) -> Duration {
        self.heartbeat * HEARTBEATS_BEFORE_DEAD
    }
}

/// Why a subscription cannot start.
pub enum Refused {
    /// The session was revoked (logged out, or the operator removed).
    Revoked,
    /// The login is out of snapshots for now.
    Limited(RateLimited),
}

/// What a subscription has for its carrier.
pub enum Next {
    /// Frames to send, in order.
    Frames(Vec<Utf8Bytes>),
    /// A heartbeat frame to send; also the carrier's moment to check that its client lives.
    Heartbeat(Utf8Bytes),
    /// It fell behind the broadcast (this many deltas missed): [`Subscription::restart`] it.
    FellBehind(u64),
    /// The subscription is over.
    Ended(End),
}

/// Why a subscription ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum End {
    TokenExpired,
    Revoked,
    ShuttingDown,
    /// The view's broadcast is gone: the gateway is stopping, or the view was replaced (from a
    /// checkpoint, or for a recreated stream) and the client must start again.
    Closed,
}

pub struct Subscription {
    feed: Feed,
    login: String,
    sid: String,
    filter: Filter,
    coalescing: bool,
    /// Its snapshots in frames of about 16 KiB (the client said it gathers them).
    split_snapshots: bool,
    deltas: broadcast::Receiver<Arc<Delta>>,
    revocations: broadcast::Receiver<String>,
    batch: Vec<Arc<Delta>>,
    last_flush: Instant,
    heartbeat: tokio::time::Interval,
    expires_at: tokio::time::Instant,
}

impl Subscription {
    /// Starts a subscription for `principal` under `filter` (already narrowed to its scope): the
    /// frames that start it, and the subscription that goes on from there.
    pub async fn start(
        feed: &Feed,
        principal: &Principal,
        filter: Filter,
        resume_from: Option<u64>,
        coalescing: bool,
        split_snapshots: bool,
    ) -> Result<(Subscription, Vec<Utf8Bytes>), Refused> {
        // Listening for revocations before anything is sent: a logout right after the snapshot
        // must not slip between the two.
        let revocations = feed.authority.revocations.subscribe();
        if feed.authority.is_revoked(&principal.sid) {
            return Err(Refused::Revoked);
        }
        let (start, deltas) = feed
            .live
            .start(&principal.login, &filter, resume_from, Demand::Asked, coalescing, split_snapshots)
            .await
            .map_err(Refused::Limited)?;
        let mut heartbeat = tokio::time::interval(feed.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: the next one is a heartbeat's interval away.
        heartbeat.reset();
        let subscription = Subscription {
            feed: feed.clone(),
            login: principal.login.clone(),
            sid: principal.sid.clone(),
            filter,
            coalescing,
            split_snapshots,
            deltas,
            revocations,
            batch: Vec::new(),
            last_flush: Instant::now(),
            heartbeat,
            expires_at: crate::auth::deadline(principal.expires_at),
        };
        Ok((subscription, start.frames()))
    }

    pub fn login(&self) -> &str {
        &self.login
    }

    /// The client asked for another filter (narrowed to its scope) or another pace: a fresh
    /// start under it. On refusal the subscription goes on as it was.
    pub async fn change(
        &mut self,
        filter: Filter,
        resume_from: Option<u64>,
        coalescing: bool,
    ) -> Result<Vec<Utf8Bytes>, RateLimited> {
        let (start, deltas) = self
            .feed
            .live
            .start(&self.login, &filter, resume_from, Demand::Asked, coalescing, self.split_snapshots)
            .await?;
        self.filter = filter;
        self.coalescing = coalescing;
        self.batch.clear();
        self.deltas = deltas;
        Ok(start.frames())
    }

    /// It fell behind: a fresh snapshot under its filter (nothing is lost: the snapshot holds
    /// every current alarm and asset). Refused when the login is out of snapshots: a client too
    /// slow for the deltas is then ended (it reconnects later).
    pub async fn restart(&mut self, missed: u64) -> Result<Vec<Utf8Bytes>, RateLimited> {
        tracing::info!(missed, login = %self.login, "a subscription fell behind; sending a fresh snapshot");
        crate::metrics::get().resyncs.inc();
        self.batch.clear();
        let started = self
            .feed
            .live
            .start(&self.login, &self.filter, None, Demand::FellBehind, self.coalescing, self.split_snapshots)
            .await;
        let (start, deltas) = started.inspect_err(|_| {
            tracing::warn!(login = %self.login, "a subscription fell behind past its login's snapshot budget; ending it");
        })?;
        self.deltas = deltas;
        Ok(start.frames())
    }

    /// The next thing to send, or the end. Cancel-safe: what it has taken is kept for the next
    /// call (a carrier selects on it and on its client).
    pub async fn next(&mut self) -> Next {
        loop {
            let urgent =
                !self.coalescing || self.batch.len() >= MAX_BATCH || self.batch.iter().any(|d| d.asset_key().is_none());
            let flush_at = match (self.batch.is_empty(), urgent) {
                (true, _) => None,
                (false, true) => Some(Instant::now()),
                (false, false) => Some(self.last_flush + FLUSH_EVERY),
            };
            tokio::select! {
                delta = self.deltas.recv() => match delta {
                    Ok(delta) => {
                        self.batch.push(delta);
                        while self.batch.len() < MAX_BATCH {
                            match self.deltas.try_recv() {
                                Ok(delta) => self.batch.push(delta),
                                Err(TryRecvError::Lagged(missed)) => return Next::FellBehind(missed),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(RecvError::Lagged(missed)) => return Next::FellBehind(missed),
                    Err(RecvError::Closed) => return Next::Ended(End::Closed),
                },
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now).into()), if flush_at.is_some() => {
                    self.last_flush = Instant::now();
                    let batch = std::mem::take(&mut self.batch);
                    let frames = crate::live::coalesce(batch, &self.filter, self.coalescing);
                    if !frames.is_empty() {
                        return Next::Frames(frames);
                    }
                }
                _ = self.heartbeat.tick() => return Next::Heartbeat(self.heartbeat_frame()),
                _ = tokio::time::sleep_until(self.expires_at) => return Next::Ended(End::TokenExpired),
                // Any revocation (or missed ones, if this subscription lagged): is it this one's?
                _ = self.revocations.recv() => {
                    if self.feed.authority.is_revoked(&self.sid) {
                        return Next::Ended(End::Revoked);
                    }
                }
                _ = self.feed.shutdown.cancelled() => return Next::Ended(End::ShuttingDown),
            }
        }
    }

    fn heartbeat_frame(&self) -> Utf8Bytes {
        let live = &self.feed.live;
        let beat = ServerMessage::Heartbeat {
            seq: live.applied_seq(),
            upstream: upstream(&self.feed.nats, live),
            notices: live.notices(),
        };
        Utf8Bytes::from(serde_json::to_string(&ServerFrame::new(beat)).unwrap_or_default())
    }
}
