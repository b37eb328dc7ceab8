//! The transactional outbox.
//!
//! A service writes its domain change and the event that announces it in **one sled transaction**,
//! then flushes sled, and only then answers the gRPC call ([`Outbox::flush`]). The [`relay`] task
//! publishes outbox entries to JetStream in key order, with `Nats-Msg-Id` = the event id, and
//! removes each entry when JetStream acknowledges it. While NATS is unreachable entries wait (and
//! the relay retries); after a crash they are still in sled and are published at the next start.
//! An entry published but not yet removed when the process died is published again: JetStream's
//! duplicate window drops the second copy, so nothing is lost and nothing is doubled.
//!
//! Two flushes make this hold across a SIGKILL: the relay flushes what it read **before** it
//! publishes (an entry visible in sled may belong to a transaction not yet durable; published,
//! then lost in a crash, the stream would announce a write the service forgot and its caller
//! was told failed), and flushes its removals **after** the acknowledgements (an unflushed
//! removal comes back after a crash, and a restart later than the duplicate window would publish
//! the entry a second time). Both share fsyncs with the commits ([`Outbox::sync`]).
//!
//! The duplicate window alone does not make publishing exactly-once: a publish stored by
//! JetStream whose acknowledgement was lost (a link that dropped the answer, a crash between the
//! acknowledgement and the removal) would be published again, and stored twice when the retry
//! comes later than the window (a long outage, a restart after hours). So each event carries
//! its outbox's identity and its entry's key in headers, the relay records durably which entries
//! it is about to publish and after which stream sequence, and whenever it cannot know what
//! became of a batch (at start, after any failure) it reads the stream's events of its domain
//! since that sequence and drops the entries already there before publishing again ([`settle`]).
//!
//! An entry JetStream can never take (larger than the server's `max_payload`, refused by the
//! stream) is moved aside to `outbox_dead_letters`, logged and counted, so that one poison entry
//! never blocks the events behind it. Events are bounded well below that size
//! ([`proto::event::MAX_EVENT_BYTES`]), so this is a last line of defence.

use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message;
use proto::event::CheckedEvent;
use sled::transaction::{TransactionalTree, UnabortableTransactionError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus;
use crate::config::StreamSettings;
use crate::lease::Fence;
use crate::replica;
use crate::store::{Change, StoreError};

/// How an entry is stored: everything the relay needs, so it never decodes the event itself.
#[derive(Clone, PartialEq, prost::Message)]
struct OutboxRecord {
    #[prost(string, tag = "1")]
    subject: String,
    #[prost(string, tag = "2")]
    msg_id: String,
    #[prost(bytes = "vec", tag = "3")]
    payload: Vec<u8>,
    /// An entry of state changes (no subject, no event): an operation's changes, published to
    /// the service's state bucket after its events when the service runs with a standby.
    #[prost(message, repeated, tag = "4")]
    changes: Vec<Change>,
}

/// The entries of the batch being published, and the stream sequence they come after: what
/// the relay reads back after a failure (see [`settle`]).
#[derive(Clone, PartialEq, prost::Message)]
struct InFlight {
    #[prost(uint64, repeated, tag = "1")]
    keys: Vec<u64>,
    #[prost(uint64, tag = "2")]
    after_seq: u64,
}

/// The header naming the outbox an event was published from (a random id, kept in the store).
pub const PUBLISHER_HEADER: &str = "Vigie-Publisher";
/// The header giving the event's outbox entry key.
pub const ENTRY_HEADER: &str = "Vigie-Outbox-Entry";

const PUBLISHER_KEY: &[u8] = b"publisher";
/// The unit (domain, or shard of it) the store belongs to.
const UNIT_KEY: &[u8] = b"unit";
const IN_FLIGHT_KEY: &[u8] = b"in_flight";
const STATE_SEQ_KEY: &[u8] = b"state_seq";

#[derive(Clone)]
pub struct Outbox {
    db: sled::Db,
    tree: sled::Tree,
    dead: sled::Tree,
    /// The relay's own records: this outbox's identity, the batch in flight.
    meta: sled::Tree,
    publisher: String,
    /// What it publishes for: its subjects (`Unit::event_filters`) and the name of the consumer
    /// that reads them back (`Unit::outbox_reader`: one per unit, the name NATS permits, see
    /// deploy/nats/authorization.conf).
    unit: proto::subject::Unit,
    wake: Arc<Notify>,
    flushes: Arc<Flushes>,
    /// Set when the service runs with a standby (see [`Outbox::replicate`]).
    replication: Arc<std::sync::OnceLock<Replication>>,
    /// Notified each time the relay has removed published entries.
    published: Arc<Notify>,
}

/// How an outbox of a service with a standby publishes its state, and when it answers.
#[derive(Clone)]
pub struct Replication {
    /// How long a write waits for its state to be in the bucket before it is refused.
    pub ack_timeout: Duration,
    /// The lease this instance holds: nothing is published once it may have lapsed.
    pub fence: Fence,
    /// The state bucket's last sequence, as this instance wrote it (see [`replica::Publisher`]).
    pub tail: Arc<std::sync::atomic::AtomicU64>,
}

/// Commits share flushes: a commit waits for a flush that began after it was asked for, rather
/// than starting one of its own while another runs (each is an fsync; concurrent streams and
/// calls would otherwise queue one per commit).
#[derive(Default)]
struct Flushes {
    /// Commits asked for so far (each takes the next number).
    asked: std::sync::atomic::AtomicU64,
    /// Every commit numbered up to this one is durable.
    done: std::sync::atomic::AtomicU64,
    running: tokio::sync::Mutex<()>,
}

/// An outbox entry ready to be inserted in a transaction (see [`Outbox::prepare`]).
pub struct PreparedEntry {
    key: [u8; 8],
    value: Vec<u8>,
}

impl PreparedEntry {
    /// Inserts the entry; call inside the transaction that makes the domain change.
    pub fn stage(&self, outbox: &TransactionalTree) -> Result<(), UnabortableTransactionError> {
        outbox.insert(&self.key[..], self.value.as_slice())?;
        Ok(())
    }
}

impl Outbox {
    /// The outbox of a service publishing `unit`'s events. A store belongs to one unit: opened
    /// as another (another shard, or a shard's store as the whole domain), it is refused, since
    /// its state and its outbox are that unit's.
    pub fn open(db: &sled::Db, unit: &proto::subject::Unit) -> Result<Outbox, crate::store::StoreError> {
        let meta = db.open_tree("outbox_meta")?;
        let name = unit.name();
        // A store that published before units were recorded was its whole domain's.
        let recorded = meta.get(UNIT_KEY)?.map(|owner| String::from_utf8_lossy(&owner).into_owned());
        let owner = match &recorded {
            Some(owner) => Some(owner.clone()),
            None if meta.get(PUBLISHER_KEY)?.is_some() => Some(unit.domain.token().to_owned()),
            None => None,
        };
        if let Some(owner) = owner.filter(|owner| *owner != name) {
            return Err(crate::store::StoreError::OtherUnit { store: owner, opened_as: name });
        }
        if recorded.is_none() {
            meta.insert(UNIT_KEY, name.as_bytes())?;
        }
        let publisher = match meta.get(PUBLISHER_KEY)? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let id = uuid::Uuid::now_v7().simple().to_string();
                meta.insert(PUBLISHER_KEY, id.as_bytes())?;
                db.flush()?;
                id
            }
        };
        Ok(Outbox {
            db: db.clone(),
            tree: db.open_tree("outbox")?,
            dead: db.open_tree("outbox_dead_letters")?,
            meta,
            publisher,
            unit: unit.clone(),
            wake: Arc::new(Notify::new()),
            flushes: Arc::default(),
            replication: Arc::default(),
            published: Arc::new(Notify::new()),
        })
    }

    /// From now on, every operation's state changes go to the state bucket with its events, and
    /// a write is acknowledged once both are in JetStream (see [`crate::replica`]). Once only.
    pub fn replicate(&self, replication: Replication) {
        if self.replication.set(replication).is_err() {
            tracing::warn!("the outbox was already replicated");
        }
    }

    /// This outbox's identity (kept in the store): also the instance's in the leases bucket.
    pub fn publisher(&self) -> &str {
        &self.publisher
    }

    /// Whether state changes are published (the service runs with a standby).
    pub fn is_replicated(&self) -> bool {
        self.replication.get().is_some()
    }

    /// The entry that carries an operation's state changes, when they are published.
    pub fn prepare_changes(&self, changes: &[Change]) -> sled::Result<Option<PreparedEntry>> {
        if changes.is_empty() || !self.is_replicated() {
            return Ok(None);
        }
        let key = self.db.generate_id()?.to_be_bytes();
        let record = OutboxRecord { changes: changes.to_vec(), ..Default::default() };
        Ok(Some(PreparedEntry { key, value: record.encode_to_vec() }))
    }

    /// Forgets every entry (a standby's outbox: what it holds was never acknowledged, see
    /// [`crate::replica`]).
    pub fn discard(&self) -> sled::Result<usize> {
        let n = self.tree.len();
        self.tree.clear()?;
        self.meta.remove(IN_FLIGHT_KEY)?;
        Ok(n)
    }

    /// The tree to include in the caller's transaction.
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Encodes the entry for `event` under a fresh, increasing key.
    pub fn prepare(&self, event: &CheckedEvent) -> sled::Result<PreparedEntry> {
        let key = self.db.generate_id()?.to_be_bytes();
        let record = OutboxRecord {
            subject: event.subject(),
            msg_id: event.event.id.clone(),
            payload: event.event.encode_to_vec(),
            changes: Vec::new(),
        };
        Ok(PreparedEntry { key, value: record.encode_to_vec() })
    }

    /// Makes committed transactions durable, then wakes the relay. Call before acknowledging.
    /// With a standby, also waits until the relay has published them (events and state): what
    /// is acknowledged then survives the loss of this machine.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let Some(replication) = self.replication.get() else {
            self.sync().await?;
            self.wake.notify_one();
            return Ok(());
        };
        // Every entry committed before this call has a smaller key.
        let ticket = self.db.generate_id()?;
        self.sync().await?;
        self.wake.notify_one();
        let deadline = tokio::time::Instant::now() + replication.ack_timeout;
        loop {
            let published = self.published.notified();
            let first = self.tree.first()?.map(|(key, _)| entry_key(&key));
            if first.is_none_or(|key| key > ticket) {
                return Ok(());
            }
            if !replication.fence.holds() {
                return Err(StoreError::Fenced);
            }
            let wait = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_millis(250)));
            tokio::select! {
                _ = published => {}
                _ = wait => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(StoreError::NotReplicated(replication.ack_timeout));
                    }
                }
            }
        }
    }

    /// Makes every transaction committed before the call durable (sharing a flush with
    /// concurrent callers when one began after this call).
    pub async fn sync(&self) -> sled::Result<()> {
        use std::sync::atomic::Ordering;
        // What this commit must make durable was written before this number was taken.
        let ticket = self.flushes.asked.fetch_add(1, Ordering::AcqRel) + 1;
        let _running = self.flushes.running.lock().await;
        if self.flushes.done.load(Ordering::Acquire) < ticket {
            // This flush begins now: it covers every commit numbered so far.
            let covered = self.flushes.asked.load(Ordering::Acquire);
            if let Err(e) = crate::store::flush(&self.db).await {
                crate::store_fault::report(&e);
                return Err(e);
            }
            self.flushes.done.fetch_max(covered, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Entries set aside because JetStream could never take them.
    pub fn dead_letters(&self) -> usize {
        self.dead.len()
    }

    /// Moves an entry that can never be published aside, so that the entries behind it go on.
    fn set_aside(&self, key: &sled::IVec, value: &sled::IVec, why: &str) -> sled::Result<()> {
        tracing::error!(
            key = entry_key(key),
            why,
            "an outbox entry can never be published; moved to outbox_dead_letters"
        );
        crate::metrics::global().outbox_dead_letters.inc();
        self.dead.insert(key, value.clone())?;
        self.tree.remove(key)?;
        Ok(())
    }

    /// Entries not yet acknowledged by JetStream.
    pub fn depth(&self) -> usize {
        self.tree.len()
    }

    /// Records the batch about to be published (durable with the flush before publishing).
    fn record_in_flight(&self, keys: Vec<u64>, after_seq: u64) -> sled::Result<()> {
        self.meta.insert(IN_FLIGHT_KEY, InFlight { keys, after_seq }.encode_to_vec())?;
        Ok(())
    }

    /// Records the state bucket's sequence this store's state is at (published or applied).
    pub fn record_state_seq(&self, seq: u64) -> sled::Result<()> {
        self.meta.insert(STATE_SEQ_KEY, &seq.to_be_bytes())?;
        Ok(())
    }

    /// Whether this store's state was ever published to the state bucket or copied from it.
    pub fn has_replicated(&self) -> sled::Result<bool> {
        self.meta.contains_key(STATE_SEQ_KEY)
    }

    /// The state bucket's sequence this store's state is at (0: none recorded).
    pub fn state_seq(&self) -> sled::Result<u64> {
        Ok(self.meta.get(STATE_SEQ_KEY)?.map(|v| entry_key(&v)).unwrap_or(0))
    }

    fn in_flight(&self) -> sled::Result<Option<InFlight>> {
        Ok(self.meta.get(IN_FLIGHT_KEY)?.and_then(|bytes| InFlight::decode(bytes.as_ref()).ok()))
    }
}

fn entry_key(key: &[u8]) -> u64 {
    u64::from_be_bytes(<[u8; 8]>::try_from(key).unwrap_or_default())
}

#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Entries published before waiting for their acknowledgements.
    pub batch: usize,
    /// Longest pause between retries while NATS is unreachable. Short: a try against a NATS
    /// that does not answer already waits [`crate::bus::JETSTREAM_TIMEOUT`], and on a cluster the
    /// stream answers again as soon as its copies have elected a leader.
    pub max_backoff: Duration,
}

/// What one batch of the relay may hold, in stored bytes (its entries are events, at most
/// [`proto::event::MAX_EVENT_BYTES`] each, and state changes).
const MAX_BATCH_BYTES: usize = 16 << 20;

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings { batch: 2048, max_backoff: Duration::from_millis(500) }
    }
}

/// A running relay (see [`spawn_relay`]).
pub struct RelayHandle {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the relay of `outbox` on this NATS connection (publish acks wait at most
/// [`crate::bus::JETSTREAM_TIMEOUT`]).
pub fn spawn_relay(
    outbox: &Outbox,
    nats: &async_nats::Client,
    stream: &StreamSettings,
    drain_timeout: Duration,
) -> RelayHandle {
    let js = crate::bus::jetstream(nats);
    let stop = CancellationToken::new();
    let task =
        tokio::spawn(relay(outbox.clone(), js, stream.clone(), RelaySettings::default(), stop.clone(), drain_timeout));
    RelayHandle { stop, task }
}

impl RelayHandle {
    /// Publishes what is left (within the drain timeout) and stops. Call once no write can come.
    pub async fn finish(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "outbox relay task failed");
        }
    }
}

/// Publishes the outbox until `stop` is cancelled, then keeps publishing until the outbox is
/// empty or `drain_timeout` has passed (what is left goes out at the next start).
pub async fn relay(
    outbox: Outbox,
    js: jetstream::Context,
    stream: StreamSettings,
    settings: RelaySettings,
    stop: CancellationToken,
    drain_timeout: Duration,
) {
    let drain_deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        _ = run(&outbox, &js, &stream, &settings, &stop) => {}
        _ = drain_deadline => {
            tracing::warn!(left = outbox.depth(), "outbox not drained before the shutdown timeout; the rest is published at the next start");
        }
    }
}

async fn run(
    outbox: &Outbox,
    js: &jetstream::Context,
    stream: &StreamSettings,
    settings: &RelaySettings,
    stop: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    let mut stream_ready = false;
    // At start, what became of the last batch before the stop (or the crash) is not known.
    let mut state = RelayState { uncertain: true, after_seq: None };
    loop {
        if !stream_ready {
            match bus::ensure_events_stream(js, stream).await {
                Ok(()) => stream_ready = true,
                Err(e) => {
                    if stop.is_cancelled() && outbox.depth() == 0 {
                        return;
                    }
                    tracing::warn!(error = %e, pending = outbox.depth(), "events stream not reachable; outbox entries wait");
                    pause(&mut backoff, settings.max_backoff).await;
                    continue;
                }
            }
        }
        match publish_batch(outbox, js, settings.batch, &mut state).await {
            Ok(0) => {
                if stop.is_cancelled() {
                    return;
                }
                backoff = Duration::from_millis(50);
                // A commit wakes us; the timer is a safety net for a missed notification.
                tokio::select! {
                    _ = outbox.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => {}
                }
            }
            Ok(_) => {
                if backoff > Duration::from_millis(50) {
                    tracing::info!(pending = outbox.depth(), "outbox publishing again");
                }
                backoff = Duration::from_millis(50);
            }
            Err(e) if matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Fenced)) => {
                tracing::error!(
                    pending = outbox.depth(),
                    "this instance may have lost its lease: the outbox publishes nothing more"
                );
                return;
            }
            Err(e) => {
                crate::metrics::global().publish_failures.inc();
                if let Some(e) = e.downcast_ref::<sled::Error>() {
                    crate::store_fault::report(e);
                }
                tracing::warn!(error = %e, pending = outbox.depth(), "outbox publish failed; retrying");
                // Part of the batch may be stored with its acknowledgement lost.
                state.uncertain = true;
                state.after_seq = None;
                // The stream may have been deleted meanwhile: check it again before the next try.
                stream_ready = false;
                pause(&mut backoff, settings.max_backoff).await;
            }
        }
    }
}

async fn pause(backoff: &mut Duration, max: Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(max);
}

/// What the relay knows between batches.
struct RelayState {
    /// Some entries of the last batch may be in the stream without their acknowledgement.
    uncertain: bool,
    /// A stream sequence every event the next batch stores will come after (the last one
    /// acknowledged to this relay), when known.
    after_seq: Option<u64>,
}

/// Publishes up to `batch` entries from the head of the outbox and removes those acknowledged, in
/// order. Returns how many were acknowledged (or set aside, or found already published).
async fn publish_batch(
    outbox: &Outbox,
    js: &jetstream::Context,
    batch: usize,
    state: &mut RelayState,
) -> anyhow::Result<usize> {
    let mut settled = 0;
    if state.uncertain {
        settled = settle(outbox, js).await?;
        state.uncertain = false;
    }
    // At most `batch` entries and about MAX_BATCH_BYTES (one entry at least, whatever its size):
    // each is held twice while in flight, stored and as the payload sent.
    let mut entries: Vec<(sled::IVec, sled::IVec)> = Vec::new();
    let mut bytes = 0;
    for entry in outbox.tree.iter().take(batch) {
        let (key, value) = entry?;
        bytes += value.len();
        if !entries.is_empty() && bytes > MAX_BATCH_BYTES {
            break;
        }
        entries.push((key, value));
    }
    if entries.is_empty() {
        return Ok(settled);
    }
    let replication = outbox.replication.get();
    if replication.is_some_and(|r| !r.fence.holds()) {
        return Err(StoreError::Fenced.into());
    }
    let after_seq = match state.after_seq {
        Some(seq) => seq,
        None => last_sequence(js).await?,
    };
    outbox.record_in_flight(entries.iter().map(|(key, _)| entry_key(key)).collect(), after_seq)?;
    // What was read may belong to transactions not yet durable: never announce those. (The
    // record of the batch in flight is made durable by the same flush.)
    outbox.sync().await?;
    let mut in_flight = Vec::with_capacity(entries.len());
    let mut states: Vec<(sled::IVec, Vec<Change>)> = Vec::new();
    let mut set_aside = 0;
    for (key, value) in entries {
        let record = match OutboxRecord::decode(value.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                // Cannot happen with entries we wrote; never let one block the others.
                outbox.set_aside(&key, &value, &format!("undecodable: {e}"))?;
                set_aside += 1;
                continue;
            }
        };
        if !record.changes.is_empty() {
            // Published after the events of the batch (an operation's events come first).
            states.push((key, record.changes));
            continue;
        }
        let publish = PublishMessage::build()
            .message_id(&record.msg_id)
            .header(PUBLISHER_HEADER, outbox.publisher.as_str())
            .header(ENTRY_HEADER, entry_key(&key).to_string().as_str())
            .payload(record.payload.into());
        match js.send_publish(record.subject, publish).await {
            Ok(ack) => in_flight.push((key, value, ack)),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                outbox.set_aside(&key, &value, &e.to_string())?;
                set_aside += 1;
            }
            Err(e) => {
                if in_flight.is_empty() && set_aside == 0 {
                    return Err(e.into());
                }
                break;
            }
        }
    }
    let mut acknowledged = 0;
    let mut outcome = Ok(());
    // The first event entry not acknowledged: the state entries after it wait with it.
    let mut held_back: Option<u64> = None;
    for (key, value, ack) in in_flight {
        if outcome.is_err() {
            held_back = held_back.or(Some(entry_key(&key)));
            continue;
        }
        match ack.await {
            Ok(ack) if ack.stream != proto::subject::EVENTS_STREAM => {
                outcome = Err(anyhow::anyhow!(
                    "event stored in stream {:?}, expected {}",
                    ack.stream,
                    proto::subject::EVENTS_STREAM
                ));
                held_back = Some(entry_key(&key));
            }
            Ok(ack) => {
                if ack.duplicate {
                    tracing::debug!(seq = ack.sequence, "JetStream dropped a re-published event (duplicate window)");
                }
                state.after_seq = Some(state.after_seq.unwrap_or(after_seq).max(ack.sequence));
                outbox.tree.remove(&key)?;
                acknowledged += 1;
                crate::metrics::global().events_published.inc();
            }
            // The server refused this message for good (larger than it takes): it would block
            // every later event. The entry is kept in outbox_dead_letters.
            Err(e) if is_refused_for_good(&e) => {
                outbox.set_aside(&key, &value, &e.to_string())?;
                set_aside += 1;
            }
            Err(e) => {
                outcome = Err(e.into());
                held_back = Some(entry_key(&key));
            }
        }
    }
    // Events not even sent (the send loop stopped) come after every state entry read: the
    // state entries read are all before them.
    let states: Vec<(sled::IVec, Vec<Change>)> =
        states.into_iter().take_while(|(key, _)| held_back.is_none_or(|k| entry_key(key) < k)).collect();
    if !states.is_empty() {
        match replication {
            // Run without a standby now: nobody follows the state bucket.
            None => {
                for (key, _) in &states {
                    outbox.tree.remove(key)?;
                }
                acknowledged += states.len();
            }
            Some(_) if outcome.is_err() => {}
            Some(r) if !r.fence.holds() => outcome = Err(StoreError::Fenced.into()),
            Some(r) => {
                let groups: Vec<&[Change]> = states.iter().map(|(_, changes)| changes.as_slice()).collect();
                let client = js.client();
                let publisher = replica::Publisher {
                    client: &client,
                    js,
                    unit: &outbox.unit,
                    instance: &outbox.publisher,
                    tail: &r.tail,
                    fence: &r.fence,
                };
                let (published, seq) = match replica::publish_changes(&publisher, &groups).await {
                    Ok(seq) => (states.len(), seq),
                    Err(partial) => {
                        outcome = Err(partial.error);
                        (partial.groups, partial.seq)
                    }
                };
                // What is in the bucket leaves the outbox, even when a later batch failed: it
                // must not be published again after the later ones.
                for (key, _) in &states[..published] {
                    outbox.tree.remove(key)?;
                }
                if published > 0 {
                    outbox.record_state_seq(seq)?;
                }
                acknowledged += published;
            }
        }
    }
    // Removals are durable before the next batch: after a crash they do not come back, to be
    // published again once the duplicate window has passed.
    if acknowledged + set_aside > 0 {
        outbox.sync().await?;
        outbox.published.notify_waiters();
    }
    outcome.map(|()| settled + acknowledged + set_aside)
}

/// The stream's last sequence (every event published from now on comes after it).
async fn last_sequence(js: &jetstream::Context) -> anyhow::Result<u64> {
    let stream = js.get_stream(proto::subject::EVENTS_STREAM).await?;
    Ok(stream.cached_info().state.last_sequence)
}

/// Learns what became of the batch in flight when the relay last stopped or failed: its entries
/// that the stream already holds (published by this outbox since the recorded sequence) are
/// removed, not published again. Returns how many.
async fn settle(outbox: &Outbox, js: &jetstream::Context) -> anyhow::Result<usize> {
    let Some(in_flight) = outbox.in_flight()? else { return Ok(0) };
    let mut waiting = Vec::new();
    for key in in_flight.keys {
        if outbox.tree.contains_key(key.to_be_bytes())? {
            waiting.push(key);
        }
    }
    let mut removed = 0;
    if !waiting.is_empty() {
        let stored = published_since(js, outbox, in_flight.after_seq).await?;
        for key in waiting.into_iter().filter(|k| stored.contains(k)) {
            outbox.tree.remove(key.to_be_bytes())?;
            removed += 1;
        }
        if removed > 0 {
            crate::metrics::global().events_published.inc_by(removed as u64);
            tracing::info!(
                removed,
                "outbox entries found in the stream (stored, their acknowledgements lost): not published again"
            );
        }
    }
    outbox.meta.remove(IN_FLIGHT_KEY)?;
    outbox.sync().await?;
    Ok(removed)
}

/// The entry keys of the events this outbox stored on its domain's subjects after stream
/// sequence `after_seq`. Reads headers only, with the domain's reader consumer (created for the
/// occasion, deleted after; the server drops it by itself if this process dies meanwhile).
async fn published_since(
    js: &jetstream::Context,
    outbox: &Outbox,
    after_seq: u64,
) -> anyhow::Result<std::collections::HashSet<u64>> {
    let mut found = std::collections::HashSet::new();
    let stream = js.get_stream(proto::subject::EVENTS_STREAM).await?;
    let last = stream.cached_info().state.last_sequence;
    let start = match after_seq.cmp(&last) {
        std::cmp::Ordering::Equal => return Ok(found),
        std::cmp::Ordering::Less => after_seq + 1,
        // The stream is younger than the record (recreated): whatever it holds is since.
        std::cmp::Ordering::Greater => 1,
    };
    // One consumer per filter (a shard's NATS user may read only its communes' events, one
    // filter in each consumer's API subject), one after the other under the same name.
    for filter in &outbox.unit.event_filters() {
        read_back(&stream, outbox, filter, start, &mut found).await?;
    }
    Ok(found)
}

/// Adds to `found` the entry keys of this outbox's events on `filter` from `start`.
async fn read_back(
    stream: &jetstream::stream::Stream,
    outbox: &Outbox,
    filter: &str,
    start: u64,
    found: &mut std::collections::HashSet<u64>,
) -> anyhow::Result<()> {
    use jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    let publisher = outbox.publisher.as_str();
    // One left by an attempt that failed half-way is replaced.
    let reader = outbox.unit.outbox_reader();
    let _ = stream.delete_consumer(&reader).await;
    let consumer = stream
        .create_consumer(pull::Config {
            name: Some(reader.clone()),
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
            ack_policy: AckPolicy::None,
            headers_only: true,
            inactive_threshold: Duration::from_secs(30),
            // Read once and deleted: one copy in memory, also on a cluster (quick to create).
            num_replicas: 1,
            memory_storage: true,
            ..Default::default()
        })
        .await?;
    let mut pending = consumer.cached_info().num_pending;
    while pending > 0 {
        let mut messages = consumer.fetch().max_messages(1024).expires(Duration::from_secs(2)).messages().await?;
        let mut got = 0;
        while let Some(message) = futures::StreamExt::next(&mut messages).await {
            let message = message.map_err(|e| anyhow::anyhow!("reading the stream back: {e}"))?;
            got += 1;
            pending = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending;
            let Some(headers) = message.headers.as_ref() else { continue };
            if headers.get(PUBLISHER_HEADER).map(|v| v.as_str()) != Some(publisher) {
                continue;
            }
            if let Some(key) = headers.get(ENTRY_HEADER).and_then(|v| v.as_str().parse().ok()) {
                found.insert(key);
            }
        }
        anyhow::ensure!(got > 0, "reading the stream back: no answer ({pending} events left to read)");
    }
    if let Err(e) = stream.delete_consumer(&reader).await {
        tracing::debug!(error = %e, "the outbox's reader consumer was not deleted (the server drops it)");
    }
    Ok(())
}

/// A publish acknowledgement error that no retry can change: the server answered, and said no to
/// this message itself.
fn is_refused_for_good(e: &jetstream::context::PublishError) -> bool {
    use jetstream::context::PublishErrorKind;
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => true,
        PublishErrorKind::Other => {
            let text = e.to_string().to_ascii_lowercase();
            text.contains("maximum payload") || text.contains("message size exceeds")
        }
        _ => false,
    }
}
