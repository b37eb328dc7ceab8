//! Consumes the events stream through a durable JetStream pull consumer into the live view.
//!
//! Exactly-once application: the view and the sequence it is current at are persisted together
//! (see `store`), and an event at or below that sequence is skipped. At start the consumer is
//! checked against the store: if the consumer acknowledged past what the store holds (the store
//! lost its last writes in a crash, or was deleted), the consumer is recreated from the store's
//! sequence, so nothing is missed either.

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;
use proto::subject::EVENTS_STREAM;
use runtime::config::StreamSettings;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::live::{Live, Received};
use crate::store::Store;

/// Events taken from the stream and applied together (one store write, one ack).
const BATCH: usize = 512;

pub struct Consumer {
    pub js: jetstream::Context,
    pub live: Arc<Live>,
    pub store: Store,
    pub durable_name: String,
    pub stream: StreamSettings,
}

impl Consumer {
    /// Consumes until `shutdown`, reconnecting after any failure (NATS down, stream missing).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let outcome = tokio::select! {
                outcome = self.consume() => outcome,
                _ = shutdown.cancelled() => return,
            };
            if let Err(e) = outcome {
                tracing::warn!(error = format!("{e:#}"), "event consumption interrupted; retrying");
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
        let last_in_stream = stream.info().await?.state.last_sequence;
        if self.live.applied_seq() > last_in_stream {
            // The stream was recreated: its sequences are not the ones the view counted.
            tracing::warn!(
                applied = self.live.applied_seq(),
                last_in_stream,
                "the events stream is behind the view; rebuilding the view from the stream"
            );
            self.store.clear()?;
            self.live.reset();
            let _ = stream.delete_consumer(&self.durable_name).await;
        }
        let consumer = self.open_consumer(&stream).await?;
        let mut messages = consumer.messages().await?.ready_chunks(BATCH);
        tracing::info!(consumer = %self.durable_name, from = self.live.applied_seq() + 1, "consuming events");
        while let Some(chunk) = messages.next().await {
            let mut batch = Vec::with_capacity(chunk.len());
            let mut last = None;
            for message in chunk {
                let message = message.map_err(|e| anyhow::anyhow!("receiving events: {e}"))?;
                let info = message.info().map_err(|e| anyhow::anyhow!("not a JetStream message: {e}"))?;
                let seq = info.stream_sequence;
                crate::metrics::get().consumer_pending.set(i64::try_from(info.pending).unwrap_or(i64::MAX));
                batch.push((seq, decode(&message)));
                last = Some(message);
            }
            let persist = self.live.apply(batch);
            self.store.save(&persist)?;
            if let Some(last) = last {
                // AckPolicy::All: acknowledges the whole batch.
                last.ack().await.map_err(|e| anyhow::anyhow!("acknowledging events: {e}"))?;
            }
        }
        anyhow::bail!("the consumer's message stream ended")
    }

    async fn open_consumer(
        &self,
        stream: &jetstream::stream::Stream,
    ) -> anyhow::Result<jetstream::consumer::Consumer<pull::Config>> {
        let applied = self.live.applied_seq();
        if let Ok(mut existing) = stream.get_consumer::<pull::Config>(&self.durable_name).await {
            let ack_floor = existing.info().await?.ack_floor.stream_sequence;
            if ack_floor <= applied {
                return Ok(existing);
            }
            tracing::warn!(
                ack_floor,
                applied,
                "the consumer is ahead of the view store; recreating it from the store's sequence"
            );
            stream.delete_consumer(&self.durable_name).await?;
        }
        let deliver_policy = if applied == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence { start_sequence: applied + 1 }
        };
        let config = pull::Config {
            durable_name: Some(self.durable_name.clone()),
            description: Some("Vigie gateway operations view".into()),
            ack_policy: AckPolicy::All,
            deliver_policy,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 100_000,
            ..Default::default()
        };
        Ok(stream.create_consumer(config).await?)
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
