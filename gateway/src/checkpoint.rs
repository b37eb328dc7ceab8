//! Checkpoints of the operations view, in the JetStream object store `VIGIE_VIEW` that every
//! gateway replica reads: a replica with an empty store (a new one, or one whose disk was lost)
//! starts from the latest checkpoint and replays only the events after it, instead of the whole
//! stream (a million events take about 20 s to replay; a checkpoint of the same view loads in
//! about one).
//!
//! A checkpoint is what the store persists (the view's assets, alarms, commands and KPIs, and
//! the log book of the current stream), at one stream sequence, and the creation time of the
//! stream it was built from: a checkpoint of another stream (one recreated since) is never
//! used. Any replica writes one once its view has moved `--view-checkpoint-every` events past the
//! latest; the object store replaces the previous one as a whole (its digest is checked when it
//! is read), so a reader finds the old checkpoint or the new one, never a mixture. Only the
//! gateway's NATS user may read the bucket (deploy/nats/authorization.conf): it holds every
//! commune's data.

use anyhow::Context;
use async_nats::jetstream::{self, object_store};
use proto::live::AuditEntry;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::live::Live;
use crate::store::{Loaded, Store};

pub const BUCKET: &str = "VIGIE_VIEW";
/// The one object of the bucket.
const OBJECT: &str = "view";
/// Bumped when the checkpoint's shape changes: a checkpoint of another format is not used.
const FORMAT: u32 = 1;
/// A checkpoint larger than this is not read (the view's size budget, 512 MiB by default, and
/// the log book's cap keep it below).
const MAX_BYTES: usize = 2 << 30;
/// The log book's latest entries a checkpoint holds at most: a new replica's log book goes back
/// that far (a replay from the stream would go back as far as its retention, 7 days).
pub const MAX_AUDIT: usize = 100_000;
/// Chunks of no current object, untouched this long, are another write's leftovers (one that
/// failed, or lost to a concurrent one): deleted.
const LEFTOVER_AFTER: Duration = Duration::from_secs(600);
/// Times a read is tried (another replica's write may remove the chunks being read).
const READ_TRIES: usize = 3;
/// How often a replica looks whether a checkpoint is due.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// A view that moved at all is checkpointed at least this often, however few its events: far
/// within the events stream's retention (`--stream-max-age`, 7 days by default).
const MAX_AGE: Duration = Duration::from_secs(3600);
/// How long reading a checkpoint may take before the replica replays the stream instead.
const READ_PATIENCE: Duration = Duration::from_secs(60);

/// The view, at its `applied_seq`, of the stream created at `stream_created`.
#[derive(Serialize, Deserialize)]
pub struct Checkpoint {
    format: u32,
    /// Nanoseconds since 1970.
    pub stream_created: i128,
    pub view: Loaded,
    /// The log book's entries of this stream, up to the view's sequence.
    pub audit: Vec<AuditEntry>,
}

impl Checkpoint {
    pub fn new(stream_created: i128, view: Loaded, audit: Vec<AuditEntry>) -> Checkpoint {
        Checkpoint { format: FORMAT, stream_created, view, audit }
    }
}

async fn bucket(js: &jetstream::Context, replicas: usize) -> anyhow::Result<object_store::ObjectStore> {
    match js.get_object_store(BUCKET).await {
        Ok(bucket) => Ok(bucket),
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: BUCKET.to_owned(),
                description: Some("Vigie: the latest checkpoint of the gateway's operations view".into()),
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .context("creating the view checkpoints' object store"),
    }
}

/// The latest checkpoint of the stream created at `stream_created`, if there is one (none of
/// another stream or of another format). A read that fails (another replica's write replaced
/// the object under it: its digest does not match) is tried again.
pub async fn read(
    js: &jetstream::Context,
    replicas: usize,
    stream_created: i128,
) -> anyhow::Result<Option<Checkpoint>> {
    let bucket = bucket(js, replicas).await?;
    let mut tries = 0;
    loop {
        tries += 1;
        match read_once(&bucket, stream_created).await {
            Err(e) if tries < READ_TRIES => {
                tracing::info!(error = %format!("{e:#}"), "reading the view checkpoint again");
            }
            outcome => return outcome,
        }
    }
}

async fn read_once(bucket: &object_store::ObjectStore, stream_created: i128) -> anyhow::Result<Option<Checkpoint>> {
    let info = match bucket.info(OBJECT).await {
        Ok(info) => info,
        Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("reading the view checkpoint's description"),
    };
    if info.deleted {
        return Ok(None);
    }
    if info.metadata.get("stream_created").and_then(|c| c.parse::<i128>().ok()) != Some(stream_created) {
        tracing::info!("the view checkpoint is of another events stream; not used");
        return Ok(None);
    }
    anyhow::ensure!(info.size <= MAX_BYTES, "the view checkpoint is {} bytes, more than {MAX_BYTES}", info.size);
    let mut object = bucket.get(OBJECT).await.context("reading the view checkpoint")?;
    let mut bytes = Vec::with_capacity(info.size);
    // The object store checks the digest at the end: a truncated or altered object is an error.
    (&mut object).take(MAX_BYTES as u64 + 1).read_to_end(&mut bytes).await.context("reading the view checkpoint")?;
    let checkpoint: Checkpoint = tokio::task::spawn_blocking(move || serde_json::from_slice(&bytes))
        .await?
        .context("the view checkpoint is not one this gateway reads")?;
    if checkpoint.format != FORMAT || checkpoint.stream_created != stream_created {
        return Ok(None);
    }
    Ok(Some(checkpoint))
}

/// The latest checkpoint's sequence and age, if it is of the stream created at `stream_created`.
async fn latest(bucket: &object_store::ObjectStore, stream_created: i128) -> Option<(u64, Duration)> {
    let info = bucket.info(OBJECT).await.ok().filter(|i| !i.deleted)?;
    let created = info.metadata.get("stream_created").and_then(|c| c.parse::<i128>().ok());
    let seq =
        info.metadata.get("applied_seq").and_then(|s| s.parse().ok()).filter(|_| created == Some(stream_created))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let age = info
        .modified
        .map(|m| Duration::from_secs(now.saturating_sub(u64::try_from(m.unix_timestamp()).unwrap_or(0))))
        .unwrap_or(Duration::MAX);
    Some((seq, age))
}

/// Writes `checkpoint` as the latest.
async fn write(bucket: &object_store::ObjectStore, checkpoint: Checkpoint) -> anyhow::Result<usize> {
    let (seq, created) = (checkpoint.view.applied_seq, checkpoint.stream_created);
    let bytes = tokio::task::spawn_blocking(move || serde_json::to_vec(&checkpoint)).await??;
    let size = bytes.len();
    let meta = object_store::ObjectMetadata {
        name: OBJECT.to_owned(),
        description: Some(format!("the operations view at stream sequence {seq}")),
        metadata: HashMap::from([
            ("applied_seq".to_owned(), seq.to_string()),
            ("stream_created".to_owned(), created.to_string()),
        ]),
        ..Default::default()
    };
    bucket.put(meta, &mut bytes.as_slice()).await.context("writing the view checkpoint")?;
    Ok(size)
}

/// For a replica whose store is empty (`applied` 0), or behind the stream's retention: the
/// latest checkpoint of the stream created at `stream_created`, if it is ahead of `applied`,
/// written to `store` in place of its view and shown by `live`. Returns the sequence it is
/// current at (0: none was used, and the stream is replayed from where the view is). A
/// checkpoint that cannot be had is never a refusal to start: the replay is the way back.
pub async fn restore(
    js: &jetstream::Context,
    replicas: usize,
    stream_created: i128,
    (applied, last_in_stream): (u64, u64),
    store: &Store,
    live: &Live,
) -> u64 {
    let started = std::time::Instant::now();
    let checkpoint = match tokio::time::timeout(READ_PATIENCE, read(js, replicas, stream_created)).await {
        Ok(Ok(Some(checkpoint))) => checkpoint,
        Ok(Ok(None)) => return 0,
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "no view checkpoint could be read; replaying the events stream");
            return 0;
        }
        Err(_) => {
            tracing::warn!("reading the view checkpoint took over {READ_PATIENCE:?}; replaying the events stream");
            return 0;
        }
    };
    let seq = checkpoint.view.applied_seq;
    if seq > last_in_stream {
        tracing::warn!(seq, last_in_stream, "the view checkpoint is not of this stream's sequences; not used");
        return 0;
    }
    if seq <= applied {
        return 0;
    }
    let Checkpoint { view, audit, .. } = checkpoint;
    let assets = view.assets.len();
    // The store's writes and flush are blocking work: off the runtime's threads.
    let writing = store.clone();
    let stored = tokio::task::spawn_blocking(move || writing.restore(&view, &audit).map(|()| view))
        .await
        .map_err(|e| e.to_string())
        .and_then(|stored| stored.map_err(|e| e.to_string()));
    let view = match stored {
        Ok(view) => view,
        Err(error) => {
            // The store's view may be cleared already: the view in memory follows it, and the
            // stream is replayed from its start.
            tracing::warn!(error, "the view checkpoint could not be stored; replaying the events stream");
            live.reset();
            return 0;
        }
    };
    live.restore(crate::view::OperationsView::from(view));
    crate::metrics::get().checkpoint_seq.set(i64::try_from(seq).unwrap_or(i64::MAX));
    tracing::info!(seq, assets, took = ?started.elapsed(), "view restored from a checkpoint; replaying the events after it");
    seq
}

/// Writes a checkpoint whenever the view has moved `every` events past the latest one (any
/// replica's), or moved at all in [`MAX_AGE`] (the stream's retention must never drop events no
/// checkpoint holds), until `shutdown`.
pub async fn keep_writing(
    js: jetstream::Context,
    replicas: usize,
    live: Arc<Live>,
    store: Store,
    every: u64,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bucket_handle = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Ok(Some(created)) = store.stream_created() else { continue };
        let applied = live.applied_seq();
        if applied == 0 {
            continue;
        }
        if bucket_handle.is_none() {
            match bucket(&js, replicas).await {
                Ok(b) => bucket_handle = Some(b),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "the view checkpoints' bucket cannot be had");
                    continue;
                }
            }
        }
        let Some(bucket) = &bucket_handle else { continue };
        // The latest checkpoint, whichever replica wrote it: one is due after `every` events, or
        // after MAX_AGE if the view moved at all.
        let due = |latest: Option<(u64, Duration)>, applied: u64| match latest {
            None => true,
            Some((seq, age)) => applied >= seq.saturating_add(every) || (applied > seq && age >= MAX_AGE),
        };
        if !due(latest(bucket, created).await, applied) {
            continue;
        }
        // Replicas look at the same moments (and may share a process id, one per container): a
        // random while apart, the others find this one's and skip.
        let jitter = Duration::from_millis(rand::random::<u64>() % 4000);
        tokio::select! {
            _ = tokio::time::sleep(jitter) => {}
            _ = shutdown.cancelled() => return,
        }
        if !due(latest(bucket, created).await, live.applied_seq()) {
            continue;
        }
        let started = std::time::Instant::now();
        // The view's copy (under its lock) and the log book's read are blocking work.
        let (reading_live, reading_store) = (live.clone(), store.clone());
        let copied = tokio::task::spawn_blocking(move || {
            let view = reading_live.persisted();
            let audit = reading_store.audit_upto(view.applied_seq, MAX_AUDIT);
            // The view copied is the stream's whose creation was read (not replaced since).
            let same_stream = matches!(reading_store.stream_created(), Ok(Some(c)) if c == created);
            (view, audit, same_stream)
        })
        .await;
        let (view, audit) = match copied {
            Ok((view, Ok(audit), true)) if view.applied_seq > 0 => (view, audit),
            Ok((_, Err(e), _)) => {
                tracing::warn!(error = %e, "the log book cannot be read for a view checkpoint");
                continue;
            }
            _ => continue,
        };
        let seq = view.applied_seq;
        match write(bucket, Checkpoint::new(created, view, audit)).await {
            Ok(bytes) => {
                crate::metrics::get().checkpoint_seq.set(i64::try_from(seq).unwrap_or(i64::MAX));
                tracing::info!(seq, bytes, took = ?started.elapsed(), "view checkpoint written");
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "the view checkpoint could not be written"),
        }
        if let Err(e) = remove_leftovers(&js, bucket).await {
            tracing::warn!(error = %format!("{e:#}"), "the view checkpoints' leftovers could not be removed");
        }
    }
}

/// Deletes the chunks of writes that never became the current object (a write that failed, or
/// that a concurrent one replaced before it ended: the object store deletes only the chunks of
/// the object a write replaces), once untouched for [`LEFTOVER_AFTER`].
async fn remove_leftovers(js: &jetstream::Context, bucket: &object_store::ObjectStore) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    // Which object is current must be known: on any doubt, nothing is removed.
    let current = match bucket.info(OBJECT).await {
        Ok(info) if !info.deleted => Some(info.nuid),
        Ok(_) => None,
        Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => None,
        Err(e) => return Err(e).context("reading the current view checkpoint"),
    };
    let mut stream = js.get_stream(format!("OBJ_{BUCKET}")).await?;
    // The server's clock, as the chunks' times are.
    let now = stream.info().await?.state.last_timestamp.unix_timestamp();
    let prefix = format!("$O.{BUCKET}.C.");
    let subjects: Vec<(String, usize)> = stream.info_with_subjects(format!("{prefix}>")).await?.try_collect().await?;
    for (subject, _) in subjects {
        if current.as_deref().is_some_and(|nuid| subject.strip_prefix(&prefix) == Some(nuid)) {
            continue;
        }
        // Purged meanwhile by a write that replaced its object: nothing to do.
        let Ok(last) = stream.get_last_raw_message_by_subject(&subject).await else { continue };
        let idle = u64::try_from(now.saturating_sub(last.time.unix_timestamp())).unwrap_or(0);
        if idle >= LEFTOVER_AFTER.as_secs() {
            stream.purge().filter(&subject).await?;
            tracing::info!(subject, "removed a view checkpoint's leftover chunks");
        }
    }
    Ok(())
}
