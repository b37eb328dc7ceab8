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
//! rebuild from it.

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;
use proto::subject::EVENTS_STREAM;
use runtime::config::StreamSettings;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::live::{Live, Received};
use crate::store::Store;

/// Events taken from the stream and applied together (one store write).
const BATCH: usize = 512;

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
            self.live.consumer_progressed();
        }
        tracing::info!(from = applied + 1, "consuming events");
        let mut expected = applied + 1;
        let mut first = true;
        while let Some(chunk) = messages.next().await {
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
                let seq = info.stream_sequence;
                if seq < expected {
                    continue;
                }
                if seq > expected {
                    if first {
                        // The stream holds nothing between: retention dropped events the view
                        // never applied. They cannot be had again.
                        let lost = seq - expected;
                        tracing::error!(
                            from = expected,
                            to = seq - 1,
                            lost,
                            "events the view never applied are no longer in the stream (retention); the view goes on without them"
                        );
                        crate::metrics::get().events_lost_to_retention.inc_by(lost);
                    } else {
                        interrupted = Some(anyhow::anyhow!("events {expected} to {} did not arrive", seq - 1));
                        break;
                    }
                }
                first = false;
                crate::metrics::get().consumer_pending.set(i64::try_from(info.pending).unwrap_or(i64::MAX));
                batch.push((seq, decode(&message)));
                expected = seq + 1;
            }
            if !batch.is_empty() {
                let store = &self.store;
                self.live.apply(
                    batch,
                    |persist| store.save(persist),
                    || store.load().map(crate::view::OperationsView::from),
                )?;
            }
            if let Some(e) = interrupted {
                return Err(e);
            }
        }
        anyhow::bail!("the consumer's message stream ended")
    }
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
