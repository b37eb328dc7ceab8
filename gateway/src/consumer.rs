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
/// With nothing received for this long, the stream is asked whether something should have come
/// (after a NATS restart the client library takes up to two of its heartbeats, 10 s, to notice
/// that its consumer is gone).
/// Each check that finds nothing newer also proves the view current (see `live::max_lag`).
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub struct Consumer {
    pub js: jetstream::Context,
    pub live: Arc<Live>,
    pub store: Store,
    pub stream: StreamSettings,
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
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn consume(&self) -> anyhow::Result<()> {
        runtime::bus::ensure_events_stream(&self.js, &self.stream).await?;
        let mut stream = self.js.get_stream(EVENTS_STREAM).await?;
        let asked = Instant::now();
        let state = stream.info().await?.state.clone();
        if self.live.applied_seq() > state.last_sequence {
            // The stream was recreated: its sequences are not the ones the view counted.
            tracing::warn!(
                applied = self.live.applied_seq(),
                last_in_stream = state.last_sequence,
                "the events stream is behind the view (it was recreated); rebuilding the view from it, the audit log kept"
            );
            self.store.forget_for_new_stream()?;
            self.live.reset();
            self.notice(NoticeKind::StreamRecreated, None)?;
        }
        let applied = self.live.applied_seq();
        if applied > 0 && state.messages == 0 && state.last_sequence > applied {
            // The stream is empty and ahead of the view: retention dropped every event the view
            // had not applied. Nothing will arrive to show the gap; the view moves past it.
            let (from, to) = (applied + 1, state.last_sequence);
            self.lost_to_retention(from, to)?;
            let store = &self.store;
            let save = |persist: &crate::live::Persist| store.save(persist);
            let reload = || store.load().map(crate::view::OperationsView::from);
            self.live.apply(asked, vec![(to, Received::Refused)], save, reload)?;
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
        if state.last_sequence <= applied {
            // Nothing to fetch: caught up.
            self.live.consumer_current(asked);
        }
        tracing::info!(from = applied + 1, "consuming events");
        let mut expected = applied + 1;
        let mut first = true;
        // The consumer's own sequence: 1, 2, 3… A jump means the client library recreated the
        // consumer on its own (it does when the server lost or deleted it, e.g. with its stream),
        // from where it last was: what the stream holds now is for this loop to judge, afresh.
        let mut delivered = 0u64;
        loop {
            let chunk = match tokio::time::timeout(IDLE_CHECK, messages.next()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) => {
                    // Nothing came for a while: fine when the stream has nothing newer; else the
                    // consumer is not getting what the stream holds, and starts again.
                    let asked = Instant::now();
                    let state = stream.info().await?.state.clone();
                    if state.last_sequence < self.live.applied_seq() {
                        anyhow::bail!("the events stream restarted below the view (it was recreated)");
                    }
                    if state.last_sequence >= expected {
                        anyhow::bail!("the stream holds events up to {} but none arrived", state.last_sequence);
                    }
                    self.live.consumer_current(asked);
                    continue;
                }
            };
            let received = Instant::now();
            // What the batch makes the view current as of: now when nothing is left behind its
            // last event, else that event's publication.
            let mut as_of = received;
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
                as_of = if info.pending == 0 { received } else { published_at(info.published, received) };
                batch.push((seq, decode(&message)));
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
                let save = |persist: &crate::live::Persist| {
                    store.save(persist).inspect_err(|e| runtime::store_fault::report(e))
                };
                self.live.apply(as_of, batch, save, reload)?;
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
        let (from_seq, to_seq) = (seqs.map(|s| s.0), seqs.map(|s| s.1));
        let known = self.store.notices()?;
        if !known.iter().any(|n| n.kind == kind && n.from_seq == from_seq && n.to_seq == to_seq) {
            let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            self.store.add_notice(SystemNotice { id: 0, kind, at, from_seq, to_seq })?;
        }
        self.live.set_notices(self.store.notices()?.len());
        Ok(())
    }
}

/// The instant (on this process's monotonic clock) a message was published, from its stream
/// timestamp; `now` when that is in the future (clocks apart).
fn published_at(published: async_nats::datetime::DateTime, now: Instant) -> Instant {
    let wall_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
    let age = u64::try_from((wall_now - published.unix_timestamp_nanos()).max(0)).unwrap_or(u64::MAX);
    now.checked_sub(Duration::from_nanos(age)).unwrap_or(now)
}

/// Decodes and checks one message; the subject must be the one the event's own fields give, so a
/// message cannot claim one commune in its subject and another in its body.
fn decode(message: &jetstream::Message) -> Received {
    match proto::event::decode(&message.payload) {
        Ok(event) if event.subject() == message.subject.as_str() => Received::Event(Box::new(event)),
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
