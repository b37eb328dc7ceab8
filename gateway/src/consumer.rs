//! Consumes the events stream into the live view.
//!
//! The view's stored sequence is the only cursor. Each attempt opens an ordered consumer at the
//! stored sequence + 1 (no acknowledgements, nothing kept on the server), and takes the stream's
//! messages only in order: a message after a gap ends the attempt, and the next one starts again
//! from the stored sequence, so an event lost in flight (a reconnection, an error in the middle of
//! a chunk) is fetched again rather than skipped. A batch is applied, stored with its sequence,
//! and only then shown to sessions (`Live::apply`); a failed store puts the view back to what is
//! stored. Events the stream no longer holds (its retention dropped them before the view applied
//! them) are the one gap accepted, at the start of an attempt only: logged as an error and
//! counted. A stream that restarted below the stored sequence (it was recreated) makes the view
//! rebuild from it. The client library may recreate an ordered consumer on its own; a jump in the
//! consumer's delivery sequence ends the attempt, so that this loop judges the stream afresh, and
//! a consumer that receives nothing while the stream holds newer events starts again too.

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;
use proto::subject::EVENTS_STREAM;
use runtime::config::StreamSettings;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::live::{Live, Received};
use crate::store::Store;
use proto::live::{NoticeKind, SystemNotice};

/// Events taken from the stream and applied together (one store write).
const BATCH: usize = 512;
/// How often the stream is asked for its last sequence: the proof that the view is current
/// once it has applied that sequence (see `live::max_lag`), and, when nothing came meanwhile
/// though the stream holds more, the sign that the consumer is not getting it (after a NATS
/// restart the client library takes up to two of its heartbeats, 10 s, to notice that its
/// consumer is gone).
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub struct Consumer {
    pub js: jetstream::Context,
    pub live: Arc<Live>,
    pub store: Store,
    pub stream: StreamSettings,
    /// Whether a view with nothing applied starts from the latest checkpoint (see `checkpoint`).
    pub checkpoints: bool,
}

impl Consumer {
    /// Consumes until `shutdown`, starting again from the stored sequence after any failure (NATS
    /// down, stream missing, a gap, the store failing).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let outcome = tokio::select! {
                outcome = self.consume() => outcome,
                _ = shutdown.cancelled() => return,
            };
            if let Err(e) = outcome {
                let reason = format!("{e:#}");
                tracing::warn!(error = %reason, "event consumption interrupted; retrying from the stored sequence");
                self.live.consumer_failed(reason);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            // Short: a try against a NATS that does not answer already waits its timeout, and on
            // a cluster the stream answers again as soon as its copies have elected a leader.
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn consume(&self) -> anyhow::Result<()> {
        runtime::bus::ensure_events_stream(&self.js, &self.stream).await?;
        let mut stream = self.js.get_stream(EVENTS_STREAM).await?;
        let asked = Instant::now();
        let info = stream.info().await?.clone();
        let state = info.state.clone();
        // The stream is told apart from an earlier one by its creation time (sequences begin at
        // 1 again in a recreated stream, and may have grown past the view's meanwhile).
        let created = info.created.unix_timestamp_nanos();
        let recreated = self.store.stream_created()?.is_some_and(|known| known != created);
        if recreated || self.live.applied_seq() > state.last_sequence {
            // The stream was recreated: its sequences are not the ones the view counted.
            tracing::warn!(
                applied = self.live.applied_seq(),
                last_in_stream = state.last_sequence,
                "the events stream was recreated; rebuilding the view from it, the audit log kept"
            );
            self.store.forget_for_new_stream()?;
            self.live.reset();
            self.notice(NoticeKind::StreamRecreated, None)?;
        }
        self.store.set_stream_created(created)?;
        let applied = self.live.applied_seq();
        // A new replica (or one that lost its store), or one whose next events the stream's
        // retention dropped: from the latest checkpoint ahead of it, if any.
        if self.checkpoints && state.last_sequence > applied && (applied == 0 || state.first_sequence > applied + 1) {
            let replicas = usize::from(self.stream.replicas);
            let seqs = (applied, state.last_sequence);
            crate::checkpoint::restore(&self.js, replicas, created, seqs, &self.store, &self.live).await;
        }
        let applied = self.live.applied_seq();
        if state.messages == 0 && state.last_sequence > applied {
            // The stream is empty and ahead of the view: retention dropped every event the view
            // had not applied (all of them, for a view that has none: a new replica, or one whose
            // store lost what it had not flushed). Nothing will arrive to show the gap; the view
            // moves past it.
            let (from, to) = (applied + 1, state.last_sequence);
            self.lost_to_retention(from, to)?;
            let store = &self.store;
            let save = |persist: &crate::live::Persist| store.save(persist).inspect_err(report_store_fault);
            let reload = || store.load().map(crate::view::OperationsView::from);
            self.live.apply(vec![(to, Received::Refused)], save, reload)?;
        }
        let applied = self.live.applied_seq();
        let deliver_policy = if applied == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence { start_sequence: applied + 1 }
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy,
                description: Some("Vigie gateway operations view".into()),
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?.ready_chunks(BATCH);
        // The proof that the view is current: when the stream was asked, and its last sequence
        // then. Once the view has applied that sequence it holds everything published before
        // that instant (the stream's own order, no clock compared).
        let mut proof = (asked, state.last_sequence);
        self.live.consumer_progressing();
        if state.last_sequence <= applied {
            self.live.consumer_current(asked);
        }
        tracing::info!(from = applied + 1, "consuming events");
        let mut expected = applied + 1;
        let mut first = true;
        // The consumer's own sequence: 1, 2, 3… A jump means the client library recreated the
        // consumer on its own (it does when the server lost or deleted it, e.g. with its stream),
        // from where it last was: what the stream holds now is for this loop to judge, afresh.
        let mut delivered = 0u64;
        // Every IDLE_CHECK the stream is asked for its last sequence, busy or not: the proof.
        let mut check = tokio::time::interval(IDLE_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        let mut received_since_check = false;
        // The sequence expected when a check found the stream ahead and nothing had come.
        let mut stuck_at: Option<u64> = None;
        loop {
            let chunk = tokio::select! {
                chunk = messages.next() => match chunk {
                    Some(chunk) => chunk,
                    None => break,
                },
                _ = check.tick() => {
                    let asked = Instant::now();
                    let state = stream.info().await?.state.clone();
                    if state.last_sequence < self.live.applied_seq() {
                        anyhow::bail!("the events stream restarted below the view (it was recreated)");
                    }
                    if !received_since_check && state.last_sequence >= expected {
                        // Nothing came though the stream holds more: twice in a row (an event
                        // published just before the check may still be on its way), the
                        // consumer is not getting what the stream holds, and starts again.
                        if stuck_at == Some(expected) {
                            anyhow::bail!("the stream holds events up to {} but none arrived", state.last_sequence);
                        }
                        stuck_at = Some(expected);
                    } else {
                        stuck_at = None;
                    }
                    received_since_check = false;
                    proof = (asked, state.last_sequence);
                    if self.live.applied_seq() >= state.last_sequence {
                        self.live.consumer_current(asked);
                    }
                    continue;
                }
            };
            received_since_check = true;
            let mut batch = Vec::with_capacity(chunk.len());
            let mut interrupted = None;
            for message in chunk {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        interrupted = Some(anyhow::anyhow!("receiving events: {e}"));
                        break;
                    }
                };
                let info = match message.info() {
                    Ok(info) => info,
                    Err(e) => {
                        interrupted = Some(anyhow::anyhow!("not a JetStream message: {e}"));
                        break;
                    }
                };
                if info.consumer_sequence != delivered + 1 {
                    interrupted = Some(anyhow::anyhow!(
                        "the consumer was recreated underneath (delivery {} after {delivered})",
                        info.consumer_sequence
                    ));
                    break;
                }
                delivered = info.consumer_sequence;
                let seq = info.stream_sequence;
                if seq < expected {
                    continue;
                }
                if seq > expected {
                    if first && expected == 1 {
                        // A view built from nothing starts where the stream's retention begins.
                        tracing::info!(
                            first = seq,
                            "the stream's retention begins at this event; the view is built from there"
                        );
                    } else if first {
                        // The stream holds nothing between: retention dropped events the view
                        // never applied. They cannot be had again.
                        if let Err(e) = self.lost_to_retention(expected, seq - 1) {
                            interrupted = Some(e);
                            break;
                        }
                    } else {
                        interrupted = Some(anyhow::anyhow!("events {expected} to {} did not arrive", seq - 1));
                        break;
                    }
                }
                first = false;
                crate::metrics::get().consumer_pending.set(i64::try_from(info.pending).unwrap_or(i64::MAX));
                batch.push((seq, decode(&message, info.published.unix_timestamp())));
                expected = seq + 1;
            }
            if !batch.is_empty() {
                let store = &self.store;
                let reload = || match store.load() {
                    Ok(loaded) => Ok(crate::view::OperationsView::from(loaded)),
                    Err(e) => {
                        // The view in memory is ahead of a store that cannot even be read: there
                        // is no going on without showing what is not stored. Its supervisor
                        // restarts the gateway, from the stored sequence.
                        tracing::error!(error = %e, "the store cannot be read back after a failed write; stopping");
                        std::process::exit(70);
                    }
                };
                let save = |persist: &crate::live::Persist| store.save(persist).inspect_err(report_store_fault);
                let applied = self.live.apply(batch, save, reload)?;
                if applied >= proof.1 {
                    self.live.consumer_current(proof.0);
                }
            }
            if let Some(e) = interrupted {
                return Err(e);
            }
        }
        anyhow::bail!("the consumer's message stream ended")
    }
}

impl Consumer {
    /// Events `from` to `to` are gone from the stream before the view applied them: logged,
    /// counted, and a notice for the operators.
    fn lost_to_retention(&self, from: u64, to: u64) -> anyhow::Result<()> {
        let lost = to + 1 - from;
        tracing::error!(
            from,
            to,
            lost,
            "events the view never applied are no longer in the stream (retention); the view goes on without them"
        );
        crate::metrics::get().events_lost_to_retention.inc_by(lost);
        self.notice(NoticeKind::EventsLostToRetention, Some((from, to)))
    }

    /// Records a system notice (once: an attempt that fails and starts again finds it there).
    fn notice(&self, kind: NoticeKind, seqs: Option<(u64, u64)>) -> anyhow::Result<()> {
        record_notice(&self.store, &self.live, kind, seqs)
    }
}

/// Records a system notice, unless one of that kind (and sequences) waits already, and tells the
/// sessions how many wait.
pub fn record_notice(
    store: &crate::store::Store,
    live: &crate::live::Live,
    kind: NoticeKind,
    seqs: Option<(u64, u64)>,
) -> anyhow::Result<()> {
    let (from_seq, to_seq) = (seqs.map(|s| s.0), seqs.map(|s| s.1));
    let known = store.notices()?;
    let mut count = known.len();
    if !known.iter().any(|n| n.kind == kind && n.from_seq == from_seq && n.to_seq == to_seq) {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        store.add_notice(SystemNotice { id: 0, kind, at, from_seq, to_seq })?;
        count = (count + 1).min(crate::store::MAX_NOTICES);
    }
    live.set_notices(count);
    Ok(())
}

/// A store that failed to write (see `runtime::store_fault`).
fn report_store_fault(e: &crate::store::StoreError) {
    if let crate::store::StoreError::Sled(e) = e {
        runtime::store_fault::report(e);
    }
}

/// Decodes and checks one message, stored at `stored_at` (Unix seconds); the subject must be the
/// one the event's own fields give, so a message cannot claim one commune in its subject and
/// another in its body.
fn decode(message: &jetstream::Message, stored_at: i64) -> Received {
    match proto::event::decode(&message.payload) {
        Ok(event) if event.published_on(&message.subject) => Received::Event { event: Box::new(event), stored_at },
        Ok(event) => {
            tracing::warn!(subject = %message.subject, expected = %event.subject(), id = %event.event.id, "event refused: subject does not match its content");
            Received::Refused
        }
        Err(e) => {
            tracing::warn!(subject = %message.subject, error = %e, "event refused");
            Received::Refused
        }
    }
}
