//! A domain service run as an active instance and standbys (`--standby`), on a NATS cluster.
//!
//! **What the standby needs.** A service's state is its sled trees. The events on the stream do
//! not rebuild all of it (schedules, energy counters, a zone's memory of its nights are nobody
//! else's business), so the active instance also publishes every change of its trees to the
//! service's **state bucket**, a JetStream key-value bucket (`VIGIE_STATE_<DOMAIN>`, one key per
//! record, `<tree>.<hex key>`, as many copies as the events stream): the outbox carries each
//! operation's changes in the transaction that makes them (see [`crate::store::Database`]), and
//! the relay publishes them after the operation's events, as one **atomic batch** (nats-server's
//! `allow_atomic`): a standby sees an operation's changes all or none. JetStream keeps the last
//! value of each key, so the bucket is the state, compacted, replicated by JetStream's own Raft;
//! nothing here copies data between machines.
//!
//! **What is acknowledged.** With a standby, a write is acknowledged once its events and its
//! state are in JetStream (see [`crate::outbox::Outbox::flush`]), not when the local disk has
//! them: a machine lost with its disk costs no acknowledged write.
//!
//! **The standby** clears its trees and its outbox (an outbox left from a time it was active
//! holds only writes never acknowledged), follows the bucket into its trees, and tries the
//! lease every second ([`crate::lease`]). Once it holds the lease it reads the bucket to its end
//! (the old active, fenced, publishes nothing more) and becomes the active instance: only then
//! does it open its core and its gRPC port. An instance that restarts and takes its own lease
//! back keeps its store as it is, outbox included, when the bucket holds nothing newer than what
//! it published.

use async_nats::jetstream::{self, stream};
use std::fmt::Write as _;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{Change, Database, StoreError};
use proto::subject::Unit;

/// A configuration no retry can mend (the instance stops, saying what to change).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Misconfigured(pub String);

/// Changes in one atomic batch: nats-server takes at most 1,000 messages in one.
pub const MAX_ATOMIC_BATCH: usize = 1000;

/// The subject prefix of `unit`'s state bucket.
pub fn state_prefix(unit: &Unit) -> String {
    format!("$KV.{}.", unit.state_bucket())
}

fn state_stream(unit: &Unit) -> String {
    format!("KV_{}", unit.state_bucket())
}

/// Creates `unit`'s state bucket if missing: a key-value bucket (the last value of each key,
/// deletions kept as markers) that takes atomic batches.
pub async fn ensure_state_bucket(js: &jetstream::Context, unit: &Unit, replicas: u8) -> anyhow::Result<()> {
    let name = state_stream(unit);
    if let Ok(stream) = js.get_stream(&name).await {
        let config = &stream.cached_info().config;
        if !config.allow_atomic_publish || config.max_messages_per_subject != 1 {
            return Err(Misconfigured(format!(
                "the stream {name} exists without atomic batches or with more than one message per key: delete it (it is rebuilt from the active instance's store)"
            ))
            .into());
        }
        return Ok(());
    }
    js.get_or_create_stream(stream::Config {
        name: name.clone(),
        description: Some(format!("The state of Vigie's {} service, for its standby", unit.name())),
        subjects: vec![format!("{}>", state_prefix(unit))],
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        allow_atomic_publish: true,
        num_replicas: usize::from(replicas),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating the state bucket {name}: {e}"))?;
    Ok(())
}

fn key_subject(prefix: &str, change: &Change) -> String {
    let mut subject = String::with_capacity(prefix.len() + change.tree.len() + 1 + 2 * change.key.len());
    subject.push_str(prefix);
    subject.push_str(&change.tree);
    // A token is never empty, even for an empty key.
    subject.push_str(".k");
    for byte in &change.key {
        let _ = write!(subject, "{byte:02x}");
    }
    subject
}

/// The tree and the key a state subject names (after the prefix).
fn parse_subject(rest: &str) -> Option<(&str, Vec<u8>)> {
    let (tree, hex) = rest.split_once('.')?;
    let hex = hex.strip_prefix('k')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let key =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect::<Option<_>>()?;
    Some((tree, key))
}

/// The answer to a batch's commit.
#[derive(serde::Deserialize)]
struct BatchAck {
    #[serde(default)]
    stream: String,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(serde::Deserialize, Debug)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// JetStream's "wrong last sequence": another instance wrote to the bucket since this one's
/// last batch.
const WRONG_LAST_SEQUENCE: u64 = 10071;

/// The instance publishing a service's state, and what fences it on the server.
pub struct Publisher<'a> {
    pub client: &'a async_nats::Client,
    pub js: &'a jetstream::Context,
    pub unit: &'a Unit,
    /// This instance's identity (its outbox's).
    pub instance: &'a str,
    /// The bucket's last sequence as this instance knows it: each batch is stored only if the
    /// bucket still ends there (`Nats-Expected-Last-Sequence`), so that an instance another one
    /// took over from can never write to it again, whatever its clock says. 0: not known (after
    /// a commit whose answer was lost): read back before the next batch.
    pub tail: &'a std::sync::atomic::AtomicU64,
    pub fence: &'a crate::lease::Fence,
}

/// What [`publish_changes`] had done when it failed: the operations (`groups`) wholly in the
/// bucket, the sequence of the last of them, and why it stopped.
pub struct Partial {
    pub groups: usize,
    pub seq: u64,
    pub error: anyhow::Error,
}

/// Publishes operations' changes (`groups`, in order), each operation's in one atomic batch,
/// several operations per batch up to [`MAX_ATOMIC_BATCH`] changes (an operation with more is
/// split). Returns the bucket's sequence of the last change. On failure, says which operations
/// are in the bucket (the caller must not publish them again after later ones: an older value
/// would overwrite a newer). [`StoreError::Fenced`] (as the error's cause) when another instance
/// wrote to the bucket: this one has lost its lease.
pub async fn publish_changes(publisher: &Publisher<'_>, groups: &[&[Change]]) -> Result<u64, Partial> {
    let mut pending = Pending { batch: Vec::new(), complete: None, done: 0, last: 0 };
    for (i, group) in groups.iter().enumerate() {
        if !pending.batch.is_empty() && pending.batch.len() + group.len() > MAX_ATOMIC_BATCH {
            pending.commit(publisher).await?;
        }
        for (j, change) in group.iter().enumerate() {
            pending.batch.push(change);
            if j + 1 == group.len() {
                pending.complete = Some(i);
            }
            if pending.batch.len() == MAX_ATOMIC_BATCH {
                pending.commit(publisher).await?;
            }
        }
    }
    if !pending.batch.is_empty() {
        pending.commit(publisher).await?;
    }
    Ok(pending.last)
}

/// The batch being filled, the last operation wholly in it, and what is in the bucket already.
struct Pending<'c> {
    batch: Vec<&'c Change>,
    complete: Option<usize>,
    done: usize,
    last: u64,
}

impl Pending<'_> {
    async fn commit(&mut self, publisher: &Publisher<'_>) -> Result<(), Partial> {
        match publish_batch(publisher, &self.batch).await {
            Ok(seq) => {
                self.last = seq;
                if let Some(c) = self.complete.take() {
                    self.done = c + 1;
                }
                self.batch.clear();
                Ok(())
            }
            Err(error) => Err(Partial { groups: self.done, seq: self.last, error }),
        }
    }
}

/// One atomic batch: every message but the last published, the last a request that commits.
async fn publish_batch(publisher: &Publisher<'_>, changes: &[&Change]) -> anyhow::Result<u64> {
    use std::sync::atomic::Ordering;
    let mut tail = publisher.tail.load(Ordering::Acquire);
    if tail == 0 {
        tail = resolve_tail(publisher).await?;
        publisher.tail.store(tail, Ordering::Release);
    }
    let prefix = state_prefix(publisher.unit);
    let id = uuid::Uuid::now_v7().simple().to_string();
    let n = changes.len();
    for (i, change) in changes.iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Batch-Id", id.as_str());
        headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        if i == 0 {
            headers.insert("Nats-Expected-Last-Sequence", tail.to_string().as_str());
        }
        if change.value.is_none() {
            headers.insert("KV-Operation", "DEL");
        }
        let subject = key_subject(&prefix, change);
        let payload = bytes::Bytes::from(change.value.clone().unwrap_or_default());
        if i + 1 < n {
            publisher.client.publish_with_headers(subject, headers, payload).await?;
            continue;
        }
        headers.insert("Nats-Batch-Commit", "1");
        headers.insert(crate::outbox::PUBLISHER_HEADER, publisher.instance);
        if !publisher.fence.holds() {
            return Err(StoreError::Fenced.into());
        }
        let answer = tokio::time::timeout(
            crate::bus::JETSTREAM_TIMEOUT,
            publisher.client.request_with_headers(subject, headers, payload),
        )
        .await;
        let answer = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                publisher.tail.store(0, Ordering::Release);
                return Err(anyhow::anyhow!("committing a batch to the state bucket: {e}"));
            }
            Err(_) => {
                // Stored or not: read back before the next batch.
                publisher.tail.store(0, Ordering::Release);
                anyhow::bail!("the state bucket did not answer the batch's commit");
            }
        };
        let Ok(ack) = serde_json::from_slice::<BatchAck>(&answer.payload) else {
            publisher.tail.store(0, Ordering::Release);
            anyhow::bail!("the batch's commit was answered with something else");
        };
        if let Some(error) = ack.error {
            if error.err_code == WRONG_LAST_SEQUENCE {
                // This instance's own batch, whose answer was lost, may have landed since the
                // tail was read: fenced only if the bucket's last batch is another instance's.
                let tail = resolve_tail(publisher).await?;
                publisher.tail.store(tail, Ordering::Release);
                anyhow::bail!("the state bucket ended further than this instance knew (its own batch): trying again");
            }
            anyhow::bail!("the state bucket refused the batch: {} ({})", error.description, error.err_code);
        }
        if ack.seq <= tail || ack.stream != state_stream(publisher.unit) {
            publisher.tail.store(0, Ordering::Release);
            anyhow::bail!("the batch's commit was answered with sequence {} of stream {:?}", ack.seq, ack.stream);
        }
        publisher.tail.store(ack.seq, Ordering::Release);
        return Ok(ack.seq);
    }
    Ok(tail)
}

/// The bucket's last sequence when its last batch is this instance's; otherwise another
/// instance wrote since: [`StoreError::Fenced`].
async fn resolve_tail(publisher: &Publisher<'_>) -> anyhow::Result<u64> {
    let stream = publisher.js.get_stream(state_stream(publisher.unit)).await?;
    let last = stream.cached_info().state.last_sequence;
    if last == 0 {
        return Ok(0);
    }
    // From the stream's leader (a follower answering a direct get may lag behind).
    let message = stream.get_raw_message(last).await?;
    let by = message.headers.get(crate::outbox::PUBLISHER_HEADER).map(|v| v.as_str().to_owned());
    if by.as_deref() == Some(publisher.instance) {
        return Ok(last);
    }
    publisher.fence.lose("another instance wrote to the state bucket");
    Err(StoreError::Fenced.into())
}

/// Marks the bucket as this instance's from its tail on (the sequence this instance's store
/// holds, set by the caller): stored only if nothing was written since. Returns its sequence.
pub async fn take_over(publisher: &Publisher<'_>) -> anyhow::Result<u64> {
    let marker = Change {
        tree: META_TREE.to_owned(),
        key: b"active".to_vec(),
        value: Some(publisher.instance.as_bytes().to_vec()),
    };
    publish_batch(publisher, &[&marker]).await
}

/// The bucket's own records (who took it over last), not a tree of the service's.
const META_TREE: &str = "_meta";

/// A standby's copy of the state bucket in its trees (see [`follow`]).
pub struct Follower {
    applied: watch::Receiver<u64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Clears `database`'s trees and outbox, then follows its unit's state bucket into them.
pub async fn follow(database: &Database, js: &jetstream::Context) -> anyhow::Result<Follower> {
    let unit = database.unit();
    // A store that was never published (a service that ran alone) is the only copy of its
    // state: it is never wiped to follow another instance's.
    let holds_state = database.state_trees().any(|(_, tree)| !tree.is_empty());
    if holds_state && !database.outbox().has_replicated()? {
        return Err(Misconfigured(
            "another instance is active, and this store holds a state that was never published to the state bucket: it is not wiped. Stop the other instance and start this one first (it then publishes its state), or move this store aside".into(),
        )
        .into());
    }
    database.outbox().record_state_seq(0)?;
    let mut cleared = 0;
    for (_, tree) in database.state_trees() {
        cleared += tree.len();
        tree.clear()?;
    }
    let discarded = database.outbox().discard()?;
    database.outbox().record_state_seq(0)?;
    database.outbox().sync().await?;
    tracing::info!(cleared, discarded, "standby: the store follows the state bucket");
    let stream = js.get_stream(state_stream(unit)).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
            filter_subject: format!("{}>", state_prefix(unit)),
            ..Default::default()
        })
        .await?;
    let messages = consumer.messages().await?;
    let (applied_tx, applied) = watch::channel(0);
    let stop = CancellationToken::new();
    let task = tokio::spawn(apply(database.clone(), state_prefix(unit), messages, applied_tx, stop.clone()));
    Ok(Follower { applied, stop, task })
}

async fn apply(
    database: Database,
    prefix: String,
    mut messages: jetstream::consumer::push::Ordered,
    applied: watch::Sender<u64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut flushed = tokio::time::Instant::now();
    loop {
        let message = tokio::select! {
            m = messages.next() => m,
            _ = stop.cancelled() => return Ok(()),
        };
        let Some(message) = message else { anyhow::bail!("the state bucket's consumer ended") };
        let message = match message {
            Ok(message) => message,
            // The ordered consumer recreates itself (a missed heartbeat, a new stream leader).
            Err(e) => {
                tracing::debug!(error = %e, "following the state bucket: the consumer recovers");
                continue;
            }
        };
        let seq = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
        let removed = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        match message.subject.as_str().strip_prefix(prefix.as_str()).and_then(parse_subject) {
            Some((META_TREE, _)) => {}
            Some((name, key)) => match database.tree(name) {
                Ok(tree) if removed => {
                    tree.remove(key)?;
                }
                Ok(tree) => {
                    tree.insert(key, message.payload.as_ref())?;
                }
                Err(e) => {
                    tracing::warn!(error = %e, subject = %message.subject, "state change for no tree of ours: skipped")
                }
            },
            None => tracing::warn!(subject = %message.subject, "state subject not understood: skipped"),
        }
        database.outbox().record_state_seq(seq)?;
        applied.send_replace(seq);
        if flushed.elapsed() > Duration::from_secs(1) {
            crate::store::flush(database.sled()).await?;
            flushed = tokio::time::Instant::now();
        }
    }
}

impl Follower {
    /// Waits until the store holds the bucket up to `seq` (within `timeout`), then stops.
    pub async fn catch_up(mut self, seq: u64, timeout: Duration) -> anyhow::Result<()> {
        let reached = tokio::time::timeout(timeout, self.applied.wait_for(|applied| *applied >= seq)).await;
        self.stop.cancel();
        let outcome = self.task.await;
        match (reached, outcome) {
            (Ok(Ok(_)), _) => Ok(()),
            (_, Ok(Err(e))) => Err(e),
            (Err(_), _) => {
                anyhow::bail!("the store did not reach the state bucket's sequence {seq} within {timeout:?}")
            }
            (Ok(Err(_)), _) => anyhow::bail!("following the state bucket stopped"),
        }
    }

    /// Whether the follower stopped by itself (an error: the caller starts it again).
    pub fn has_stopped(&self) -> bool {
        self.task.is_finished()
    }
}

/// Publishes the whole state of `database` (an instance made active on a bucket that has never
/// held anything: the first start with `--standby`, from a store of a single instance).
pub async fn seed(database: &Database, publisher: &Publisher<'_>) -> anyhow::Result<u64> {
    let mut changes = Vec::new();
    for (name, tree) in database.state_trees() {
        for item in tree.iter() {
            let (key, value) = item?;
            changes.push(Change { tree: name.to_owned(), key: key.to_vec(), value: Some(value.to_vec()) });
        }
    }
    if changes.is_empty() {
        return Ok(0);
    }
    let groups: Vec<&[Change]> = changes.chunks(MAX_ATOMIC_BATCH).collect();
    let seq = publish_changes(publisher, &groups).await.map_err(|partial| partial.error)?;
    tracing::info!(records = changes.len(), "the state bucket was empty: this store's state seeded it");
    Ok(seq)
}

/// The last sequence of `unit`'s state bucket.
pub async fn last_seq(js: &jetstream::Context, unit: &Unit) -> anyhow::Result<u64> {
    // Fetching the stream reads its info: its last sequence is in it.
    Ok(js.get_stream(state_stream(unit)).await?.cached_info().state.last_sequence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_round_trips_through_its_subject() {
        let change = Change { tree: "lamp_states".into(), key: b"EP.1/\xff\x00".to_vec(), value: None };
        let subject = key_subject("$KV.VIGIE_STATE_LIGHTING.", &change);
        assert_eq!(subject, "$KV.VIGIE_STATE_LIGHTING.lamp_states.k45502e312fff00");
        let rest = subject.strip_prefix("$KV.VIGIE_STATE_LIGHTING.").unwrap();
        assert_eq!(parse_subject(rest), Some(("lamp_states", change.key.clone())));
        assert_eq!(parse_subject("lamp_states.k4"), None);
        assert_eq!(parse_subject("lamp_states.kzz"), None);
        assert_eq!(parse_subject("lamp_states.45"), None);
        assert_eq!(parse_subject("lamp_states.k"), Some(("lamp_states", Vec::new())));
        assert_eq!(parse_subject("nodot"), None);
    }
}

/// How a domain service runs with a standby (`--standby`).
#[derive(Debug, Clone, clap::Args)]
pub struct StandbyConfig {
    /// Run as one of several instances of this service (on other machines, with a NATS
    /// cluster): the one holding the lease is active, the others stand by, following its state,
    /// and take over when its lease lapses. Writes are then acknowledged once they are in
    /// JetStream. Every instance of a service must say so, with the same --lease-ttl.
    #[arg(long, env = "VIGIE_STANDBY", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub standby: bool,

    /// How long a lease lives without renewal: a standby takes over this long (and up to a
    /// second more) after the active instance died. The active instance stops acting half of it
    /// after its last renewal: longer than a NATS stream's election (4 to 9 s), so that the loss
    /// of the leases' leader node does not stop every active instance.
    #[arg(long, env = "VIGIE_LEASE_TTL", default_value = "20s", value_parser = crate::config::parse_duration)]
    pub lease_ttl: Duration,

    /// How long a write waits for JetStream to hold it before it is refused (UNAVAILABLE).
    #[arg(long, env = "VIGIE_REPLICATION_TIMEOUT", default_value = "10s", value_parser = crate::config::parse_duration)]
    pub replication_timeout: Duration,
}
