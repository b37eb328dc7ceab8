//! The live state shared by the consumer and the WebSocket sessions: the view, and the broadcast
//! of its deltas. A session subscribes and takes its snapshot under the same lock that the
//! consumer holds while it applies and broadcasts, so a client sees every delta after its
//! snapshot's `seq` and none before.

use axum::extract::ws::Utf8Bytes;
use proto::event::CheckedEvent;
use proto::live::{AlarmState, AssetState, AuditEntry, CommandState, Filter, KpiState, ServerFrame, ServerMessage};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};

use crate::snapshots::{RateLimited, SnapshotFrames, Snapshots};
use crate::view::{Change, OperationsView, Place};

/// Deltas a session may fall behind before it gets a fresh snapshot instead, and deltas kept for
/// sessions that resume after a disconnection.
pub const DELTA_BUFFER: usize = 8192;

/// One delta as sessions receive it: its JSON frame, and what it changed (to filter it, and to
/// coalesce an asset's successive updates).
#[derive(Debug)]
pub struct Delta {
    pub seq: u64,
    /// The frame, serialised once; every session sends these same bytes (a clone is a reference).
    pub json: Utf8Bytes,
    pub change: Change,
    /// Where the asset or alarm stood before, when the event moved it (see `view::Applied`): the
    /// sessions whose scope it leaves get a `removed` frame.
    pub left: Option<Place>,
}

impl Delta {
    /// The frame this delta is for a session under `filter`: the delta itself when its object
    /// is in scope; a removal when the event took the object out of scope; else nothing.
    pub fn frame_for(&self, filter: &Filter) -> Option<Utf8Bytes> {
        if self.allowed_by(filter) {
            return Some(self.json.clone());
        }
        if !self.left.as_ref().is_some_and(|before| before.allowed_by(filter)) {
            return None;
        }
        // Rare (an object leaving a scope): made for the sessions that need it. Nothing of where
        // the object went is in it.
        let (asset, alarm) = match &self.change {
            Change::Asset(_, a) => (Some(proto::live::AssetRef { domain: a.domain.clone(), id: a.id.clone() }), None),
            Change::Alarm(_, a) => (None, Some(a.key.clone())),
            _ => return None,
        };
        let removed = ServerFrame::new(ServerMessage::Removed { seq: self.seq, asset, alarm });
        serde_json::to_string(&removed).ok().map(Utf8Bytes::from)
    }

    pub fn allowed_by(&self, filter: &Filter) -> bool {
        match &self.change {
            Change::Asset(_, a) => filter.allows_asset(a),
            Change::Alarm(_, a) => filter.allows_alarm(a),
            Change::Command(_, c, _) => filter.allows_command(c),
            Change::Kpi(_, k) => filter.allows_kpi(k),
            Change::Removed(place) => place.allowed_by(filter),
        }
    }

    /// The asset key when the delta only updates an asset (later updates supersede it).
    pub fn asset_key(&self) -> Option<&str> {
        match &self.change {
            Change::Asset(key, _) => Some(key),
            _ => None,
        }
    }
}

/// Whether the gateway is live on the event stream (heartbeats and `/health` say so): connected
/// to NATS, its consumer making progress, **and** the view holding every event published more
/// than [`Live::max_lag`] ago. A connected link with a stuck consumer (its store failing on a
/// full disk, a gap it refuses to cross, a link that stopped answering) is not live, nor is a
/// view catching up on a backlog (after a pause): what it shows is getting old.
pub fn upstream(nats: &async_nats::Client, live: &Live) -> proto::live::Upstream {
    let connected = matches!(nats.connection_state(), async_nats::connection::State::Connected);
    let current = live.lag().is_some_and(|lag| lag < live.max_lag);
    if connected && live.consumer_healthy() && current {
        proto::live::Upstream::Live
    } else {
        proto::live::Upstream::Stale
    }
}

/// How far behind the stream a view may be and still be called live, for a heartbeat period:
/// two heartbeats, so that no session is shown `live` on data older than three; at least 3 s,
/// since the consumer proves currency every second, plus a request's round trip.
pub fn max_lag(heartbeat: Duration) -> Duration {
    (heartbeat * 2).max(Duration::from_secs(3))
}

/// The consumer's own account of its progress (see [`Live::consumer_failed`]).
#[derive(Debug, Clone, Default)]
pub enum ConsumerHealth {
    /// Not consuming yet (the gateway is starting).
    #[default]
    Starting,
    /// Applied and stored what it received, or caught up with nothing to receive.
    Progressing,
    /// Its last attempt failed (the reason), and nothing was applied since.
    Failing(String),
}

/// How a session starts or restarts.
pub enum Start {
    /// The whole (filtered) view, then the deltas applied since it was serialised (a shared
    /// snapshot serves several sessions: see `snapshots`), then the live ones.
    Snapshot { frames: SnapshotFrames, catch_up: Vec<Utf8Bytes> },
    /// The deltas the client missed since the sequence it gave (already filtered), then the
    /// live ones.
    Resumed { from: u64, missed: Vec<Utf8Bytes> },
}

impl Start {
    /// The frames (JSON text) that start the session, in order, whatever carries them.
    pub fn frames(self) -> Vec<Utf8Bytes> {
        match self {
            Start::Snapshot { frames, catch_up } => frames.iter().cloned().chain(catch_up).collect(),
            Start::Resumed { from, missed } => {
                let resumed =
                    serde_json::to_string(&ServerFrame::new(ServerMessage::Resumed { from })).unwrap_or_default();
                std::iter::once(Utf8Bytes::from(resumed)).chain(missed).collect()
            }
        }
    }
}

/// Why a session asks how to start: a client asked, or it fell too far behind (then it may
/// take a snapshot serialised moments before, with the deltas since). Either is charged to the
/// login's snapshot budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Demand {
    Asked,
    FellBehind,
}

pub struct Live {
    inner: Mutex<Inner>,
    /// The sequence the view is current at, for callers that wait for their own write.
    applied: watch::Sender<u64>,
    consumer: Mutex<ConsumerHealth>,
    /// The view holds every event published before this instant (the consumer's last proof).
    current_as_of: Mutex<Option<Instant>>,
    /// See [`max_lag`].
    pub max_lag: Duration,
    /// System notices waiting for a supervisor (told in heartbeats).
    notices: std::sync::atomic::AtomicU32,
    snapshots: Snapshots,
    /// See `OperationsView::keep_closed_reports` (set again on every view this holds).
    closed_reports_kept: Option<Duration>,
}

struct Inner {
    view: OperationsView,
    deltas: broadcast::Sender<Arc<Delta>>,
    /// The latest deltas, for sessions that resume.
    recent: VecDeque<Arc<Delta>>,
    /// Every delta up to this sequence has left `recent`: a resume from before it cannot be served.
    evicted_upto: u64,
    /// Counts the views this has held (a reset starts another): a snapshot shared from one is
    /// never served from the next.
    generation: u64,
}

/// What a batch changed, for the store. `None` removes (a closed alarm, an evicted command).
#[derive(Default)]
pub struct Persist {
    pub assets: HashMap<String, Option<AssetState>>,
    pub alarms: HashMap<String, Option<AlarmState>>,
    pub commands: HashMap<String, Option<CommandState>>,
    pub kpis: HashMap<String, KpiState>,
    pub audit: Vec<AuditEntry>,
    pub applied_seq: u64,
}

/// One received event: its stream sequence and what it decoded to.
pub enum Received {
    /// `stored_at`: when the stream stored it (Unix seconds, the NATS server's clock).
    Event { event: Box<CheckedEvent>, stored_at: i64 },
    /// Could not be applied (the reason is logged by the consumer); only its sequence counts.
    Refused,
}

/// How long a resume ahead of the view waits for it (see `Live::start`).
const RESUME_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

impl Live {
    /// `snapshot_burst`: the snapshots a login may ask for at once (see `snapshots`);
    /// `closed_reports_kept`: how long a closed citizen report stays in the view.
    pub fn new(
        mut view: OperationsView,
        max_lag: Duration,
        snapshot_burst: u32,
        closed_reports_kept: Option<Duration>,
    ) -> Live {
        view.keep_closed_reports(closed_reports_kept);
        let (deltas, _) = broadcast::channel(DELTA_BUFFER);
        let (applied, _) = watch::channel(view.applied_seq());
        // Deltas before the restored view are not kept: a resume from before it gets a snapshot.
        let evicted_upto = view.applied_seq();
        Live {
            inner: Mutex::new(Inner { view, deltas, recent: VecDeque::new(), evicted_upto, generation: 0 }),
            applied,
            consumer: Mutex::new(ConsumerHealth::Starting),
            current_as_of: Mutex::new(None),
            max_lag,
            notices: std::sync::atomic::AtomicU32::new(0),
            snapshots: Snapshots::new(snapshot_burst),
            closed_reports_kept,
        }
    }

    /// How many system notices wait for a supervisor.
    pub fn notices(&self) -> u32 {
        self.notices.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn set_notices(&self, count: usize) {
        self.notices.store(u32::try_from(count).unwrap_or(u32::MAX), std::sync::atomic::Ordering::Release);
    }

    /// Waits until the view has applied the event at `seq` (or `timeout` passes); returns whether
    /// it has.
    pub async fn wait_applied(&self, seq: u64, timeout: std::time::Duration) -> bool {
        let mut applied = self.applied.subscribe();
        tokio::time::timeout(timeout, applied.wait_for(|s| *s >= seq)).await.is_ok_and(|r| r.is_ok())
    }

    /// Reads the view under its lock.
    pub fn read<T>(&self, f: impl FnOnce(&OperationsView) -> T) -> T {
        f(&self.lock().view)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the view half-applied in a way that matters
        // more than stopping: keep serving what is there.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The sequence the view is current at (what is stored and shown); read without the view's
    /// lock, so that heartbeats never wait for a batch being stored.
    pub fn applied_seq(&self) -> u64 {
        *self.applied.borrow()
    }

    pub fn asset_count(&self) -> usize {
        self.lock().view.asset_count()
    }

    /// The consumer is consuming: it started, or applied and stored a batch.
    pub fn consumer_progressing(&self) {
        *self.consumer.lock().unwrap_or_else(|p| p.into_inner()) = ConsumerHealth::Progressing;
    }

    /// The view holds every event published before `as_of` (the consumer proved it: see
    /// `consumer.rs`).
    pub fn consumer_current(&self, as_of: Instant) {
        self.consumer_progressing();
        let mut current = self.current_as_of.lock().unwrap_or_else(|p| p.into_inner());
        *current = Some(current.map_or(as_of, |c| c.max(as_of)));
    }

    /// How old the view may be: the time since the consumer last proved it current (none before
    /// it ever did).
    pub fn lag(&self) -> Option<Duration> {
        self.current_as_of.lock().unwrap_or_else(|p| p.into_inner()).map(|at| at.elapsed())
    }

    /// The consumer's attempt failed; until it progresses again the gateway is not live.
    pub fn consumer_failed(&self, reason: String) {
        *self.consumer.lock().unwrap_or_else(|p| p.into_inner()) = ConsumerHealth::Failing(reason);
    }

    pub fn consumer_health(&self) -> ConsumerHealth {
        self.consumer.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn consumer_healthy(&self) -> bool {
        matches!(self.consumer_health(), ConsumerHealth::Progressing)
    }

    /// Replaces the view (after the stream it was built from disappeared).
    pub fn reset(&self) {
        self.restore(OperationsView::default());
    }

    /// Replaces the view with `view` (an empty one, or a checkpoint's): no resume from before it
    /// can be served, and no snapshot of the previous one is shared. The sessions started on the
    /// previous one end (their broadcast is closed): their snapshot is not of this view, and the
    /// deltas after it would not make it so. They reconnect and start afresh.
    pub fn restore(&self, mut view: OperationsView) {
        let seq = view.applied_seq();
        view.keep_closed_reports(self.closed_reports_kept);
        let mut inner = self.lock();
        inner.view = view;
        inner.deltas = broadcast::channel(DELTA_BUFFER).0;
        inner.recent.clear();
        inner.evicted_upto = seq;
        inner.generation += 1;
        drop(inner);
        self.snapshots.forget();
        *self.current_as_of.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.applied.send_replace(seq);
    }

    /// What the store persists of the view, copied under the lock (see `checkpoint`).
    pub fn persisted(&self) -> crate::store::Loaded {
        self.lock().view.persisted()
    }

    /// Applies a batch in stream order, has `save` store what changed with the sequence the view
    /// is now current at, and only then broadcasts one delta per applied event and advances the
    /// sequence callers wait for. When `save` fails, nothing of the batch is shown to anyone and
    /// the view goes back to what `reload` reads from the store (the consumer then takes the
    /// batch again from the stored sequence): memory is never ahead of the disk. Returns the
    /// sequence the view is current at.
    pub fn apply<E>(
        &self,
        batch: Vec<(u64, Received)>,
        save: impl FnOnce(&Persist) -> Result<(), E>,
        reload: impl FnOnce() -> Result<OperationsView, E>,
    ) -> Result<u64, E> {
        let mut persist = Persist::default();
        let mut deltas = Vec::new();
        let mut inner = self.lock();
        for (seq, received) in batch {
            match received {
                Received::Refused => inner.view.skip(seq),
                Received::Event { event, stored_at } => {
                    crate::metrics::get().events_applied.inc();
                    // Closed reports whose time has passed leave first. Their `removed` frames
                    // say the sequence before this event's: a client that received them and
                    // not the event's delta resumes from there and gets both (a removal twice
                    // does no harm); one that received the delta too is past them.
                    for gone in inner.view.expire_closed_reports(stored_at) {
                        let key = crate::view::asset_key(&gone.domain, &gone.id);
                        persist.assets.insert(key, None);
                        let asset = proto::live::AssetRef { domain: gone.domain.clone(), id: gone.id.clone() };
                        let removed =
                            ServerMessage::Removed { seq: seq.saturating_sub(1), asset: Some(asset), alarm: None };
                        match serde_json::to_string(&ServerFrame::new(removed)) {
                            Ok(json) => deltas.push(Arc::new(Delta {
                                seq,
                                json: Utf8Bytes::from(json),
                                change: Change::Removed(Place::of_asset(&gone)),
                                left: None,
                            })),
                            Err(e) => tracing::error!(error = %e, seq, "cannot serialise a removal"),
                        }
                    }
                    if let Some(applied) = inner.view.apply(&event, seq) {
                        let (mut asset, mut alarm, mut command, mut kpi) = (None, None, None, None);
                        let change = applied.change;
                        // The change, once for the store and once in the frame; the delta keeps it.
                        match &change {
                            Change::Asset(key, state) => {
                                asset = Some(Box::new(state.clone()));
                                persist.assets.insert(key.clone(), Some(state.clone()));
                            }
                            Change::Alarm(key, state) => {
                                alarm = Some(Box::new(state.clone()));
                                persist.alarms.insert(key.clone(), (!state.closed).then(|| state.clone()));
                            }
                            Change::Command(key, state, evicted) => {
                                command = Some(Box::new(state.clone()));
                                persist.commands.insert(key.clone(), Some(state.clone()));
                                persist.commands.extend(evicted.iter().map(|k| (k.clone(), None)));
                            }
                            Change::Kpi(key, state) => {
                                kpi = Some(Box::new(state.clone()));
                                persist.kpis.insert(key.clone(), state.clone());
                            }
                            Change::Removed(_) => {}
                        }
                        let frame = ServerFrame::new(ServerMessage::Delta {
                            seq,
                            event: applied.event,
                            asset,
                            alarm,
                            command,
                            kpi,
                        });
                        let left = applied.before;
                        match serde_json::to_string(&frame) {
                            Ok(json) => deltas.push(Arc::new(Delta { seq, json: Utf8Bytes::from(json), change, left })),
                            Err(e) => tracing::error!(error = %e, seq, "cannot serialise a delta"),
                        }
                    }
                }
            }
        }
        persist.applied_seq = inner.view.applied_seq();
        persist.audit = inner.view.take_audit();
        if let Err(e) = save(&persist) {
            // Back to what is stored (a caller whose store cannot be read back stops instead).
            inner.view = reload()?;
            inner.view.keep_closed_reports(self.closed_reports_kept);
            inner.generation += 1;
            return Err(e);
        }
        for delta in deltas {
            if inner.recent.len() >= DELTA_BUFFER
                && let Some(old) = inner.recent.pop_front()
            {
                inner.evicted_upto = old.seq;
            }
            inner.recent.push_back(delta.clone());
            // No receiver is not an error: nobody is connected.
            drop(inner.deltas.send(delta));
        }
        drop(inner);
        self.applied.send_replace(persist.applied_seq);
        self.consumer_progressing();
        Ok(persist.applied_seq)
    }

    /// A session's start under `filter`, for `login`: the missed deltas when `resume_from` can
    /// be served, else a snapshot (within the login's budget: see `snapshots`); and a receiver of
    /// every delta after it (unfiltered). The consumer never waits for this beyond copying the
    /// view's filtered states, a few sessions at a time.
    /// `coalescing`: the session's (the deltas after a shared snapshot follow it); `split`: a
    /// snapshot in frames of about [`SNAPSHOT_FRAME_BYTES`] (else one frame).
    pub async fn start(
        &self,
        login: &str,
        filter: &Filter,
        resume_from: Option<u64>,
        demand: Demand,
        coalescing: bool,
        split: bool,
    ) -> Result<(Start, broadcast::Receiver<Arc<Delta>>), RateLimited> {
        if let Some(from) = resume_from {
            // A client ahead of this view (it comes from another replica, or this one has just
            // started again and is catching up) waits a moment for the view to reach it: the
            // deltas it missed, not a whole snapshot. A sequence the view never reaches (another
            // stream's) gets the snapshot after the wait.
            if from > self.applied_seq() {
                self.wait_applied(from, RESUME_CATCH_UP).await;
            }
            if let Some(resumed) = self.resumed(from, filter) {
                return Ok(resumed);
            }
        }
        self.snapshots.take(login)?;
        // Shared by the requests for the same filter, split the same way.
        let key =
            format!("{}{}", if split { "split:" } else { "whole:" }, serde_json::to_string(filter).unwrap_or_default());
        if let Some(started) = self.start_shared(&key, filter, demand, coalescing) {
            return Ok(started);
        }
        // The semaphore is never closed; were it, building without a permit is still right.
        let _permit = self.snapshots.builds.acquire().await;
        // Another session may have built it while this one waited.
        if let Some(started) = self.start_shared(&key, filter, demand, coalescing) {
            return Ok(started);
        }
        let (receiver, generation, seq, assets, alarms, commands, kpis) = {
            let inner = self.lock();
            let view = &inner.view;
            let assets: Vec<AssetState> = view.assets().filter(|a| filter.allows_asset(a)).cloned().collect();
            let alarms: Vec<AlarmState> = view.alarms().filter(|a| filter.allows_alarm(a)).cloned().collect();
            let commands: Vec<CommandState> = view.commands().filter(|c| filter.allows_command(c)).cloned().collect();
            let kpis: Vec<KpiState> = view.kpis().filter(|k| filter.allows_kpi(k)).cloned().collect();
            (inner.deltas.subscribe(), inner.generation, view.applied_seq(), assets, alarms, commands, kpis)
        };
        // Serialising the whole view is long work: off the runtime's threads.
        let serialise = move || snapshot_frames(seq, assets, alarms, commands, kpis, split);
        let frames = tokio::task::spawn_blocking(serialise).await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot serialise a snapshot");
            SnapshotFrames::default()
        });
        crate::metrics::get().snapshots_built.inc();
        self.snapshots.share(key, generation, seq, frames.clone());
        Ok((Start::Snapshot { frames, catch_up: Vec::new() }, receiver))
    }

    /// The deltas missed since `from`, when they are all at hand.
    fn resumed(&self, from: u64, filter: &Filter) -> Option<(Start, broadcast::Receiver<Arc<Delta>>)> {
        let inner = self.lock();
        if from < inner.evicted_upto || from > inner.view.applied_seq() {
            return None;
        }
        let first = inner.recent.partition_point(|d| d.seq <= from);
        let missed = inner.recent.range(first..).filter_map(|d| d.frame_for(filter)).collect();
        Some((Start::Resumed { from, missed }, inner.deltas.subscribe()))
    }

    /// A start from the snapshot shared for this filter, when there is a recent one: that
    /// snapshot, then the deltas since (coalesced as the session wants), when they are
    /// still at hand. A client that asks gets it only while nothing was applied since: its
    /// snapshot holds everything applied before it asked (a write it saw acknowledged is in it);
    /// one that fell behind takes it with the deltas since.
    fn start_shared(
        &self,
        key: &str,
        filter: &Filter,
        demand: Demand,
        coalescing: bool,
    ) -> Option<(Start, broadcast::Receiver<Arc<Delta>>)> {
        let inner = self.lock();
        let (seq, frames) = self.snapshots.recent(key, inner.generation)?;
        let applied = inner.view.applied_seq();
        let usable = match demand {
            Demand::Asked => seq == applied,
            Demand::FellBehind => seq >= inner.evicted_upto && seq <= applied,
        };
        if !usable {
            return None;
        }
        let receiver = inner.deltas.subscribe();
        let first = inner.recent.partition_point(|d| d.seq <= seq);
        let since: Vec<Arc<Delta>> = inner.recent.range(first..).cloned().collect();
        drop(inner);
        crate::metrics::get().snapshots_shared.inc();
        Some((Start::Snapshot { frames, catch_up: coalesce(since, filter, coalescing) }, receiver))
    }
}

/// A snapshot's frames aim at this size: the socket's write buffer grows to its largest frame and
/// keeps that capacity for the connection's life, so one frame of a whole view (megabytes for a
/// territory) would cost each client as much, idle or not. An item larger than this (none is,
/// by far) takes a frame of its own.
pub const SNAPSHOT_FRAME_BYTES: usize = 16 * 1024;

/// The view's states at `seq` as `snapshot` frames: of about [`SNAPSHOT_FRAME_BYTES`] each, in
/// order (every one but the last with `more`), when `split`; else one frame (a client of the
/// protocol that does not gather frames).
pub fn snapshot_frames(
    seq: u64,
    assets: Vec<AssetState>,
    alarms: Vec<AlarmState>,
    commands: Vec<CommandState>,
    kpis: Vec<KpiState>,
    split: bool,
) -> SnapshotFrames {
    /// Counts what serde_json writes, to size an item without keeping its text.
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    fn size(item: &impl serde::Serialize) -> usize {
        let mut counter = Counter(0);
        // Writing to a counter cannot fail; the states serialise (they are the deltas' too).
        let _ = serde_json::to_writer(&mut counter, item);
        counter.0 + 1
    }
    let empty = || ServerMessage::Snapshot {
        seq,
        assets: Vec::new(),
        alarms: Vec::new(),
        commands: Vec::new(),
        kpis: Vec::new(),
        more: true,
    };
    let mut chunks = vec![empty()];
    let mut bytes = 0;
    macro_rules! pack {
        ($items:expr, $field:ident) => {
            for item in $items {
                let item_bytes = if split { size(&item) } else { 0 };
                if split && bytes > 0 && bytes + item_bytes > SNAPSHOT_FRAME_BYTES {
                    chunks.push(empty());
                    bytes = 0;
                }
                bytes += item_bytes;
                if let Some(ServerMessage::Snapshot { $field, .. }) = chunks.last_mut() {
                    $field.push(item);
                }
            }
        };
    }
    pack!(assets, assets);
    pack!(alarms, alarms);
    pack!(commands, commands);
    pack!(kpis, kpis);
    if let Some(ServerMessage::Snapshot { more, .. }) = chunks.last_mut() {
        *more = false;
    }
    let frames: Vec<Utf8Bytes> = chunks
        .into_iter()
        .map(|message| serde_json::to_string(&ServerFrame::new(message)).map(Utf8Bytes::from))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot serialise a snapshot");
            Vec::new()
        });
    SnapshotFrames::from(frames)
}

/// The frames of a batch this session sends, in order: its deltas and removals (see
/// [`Delta::frame_for`]), and (when `coalescing`) each asset only at its latest frame in the
/// batch.
pub fn coalesce(batch: Vec<Arc<Delta>>, filter: &Filter, coalescing: bool) -> Vec<Utf8Bytes> {
    let framed: Vec<(&Delta, Utf8Bytes)> =
        batch.iter().filter_map(|d| d.frame_for(filter).map(|f| (&**d, f))).collect();
    if !coalescing {
        return framed.into_iter().map(|(_, f)| f).collect();
    }
    let mut last_of_asset: HashMap<&str, u64> = HashMap::new();
    for (d, _) in &framed {
        if let Some(key) = d.asset_key() {
            last_of_asset.insert(key, d.seq);
        }
    }
    let mut superseded = 0u64;
    let mut frames = Vec::with_capacity(framed.len());
    for (d, frame) in framed {
        if d.asset_key().is_none_or(|k| last_of_asset.get(k) == Some(&d.seq)) {
            frames.push(frame);
        } else {
            superseded += 1;
        }
    }
    crate::metrics::get().deltas_coalesced.inc_by(superseded);
    frames
}
