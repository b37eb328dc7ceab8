//! The NATS connection and the JetStream events stream.

use crate::config::StreamSettings;
use async_nats::jetstream::{self, stream};
use proto::subject;

/// Connects to NATS. The client connects in the background and reconnects forever, so a process
/// starts (and a service accepts writes into its outbox) while NATS is down.
pub async fn connect(
    common: &crate::config::CommonConfig,
    client_name: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let options = match (&common.nats_user, &common.nats_password) {
        // Replies (JetStream acknowledgements, API answers, what a consumer delivers) come to an
        // inbox of this user's own: NATS lets no other process subscribe there.
        (Some(user), Some(password)) => {
            async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
                .custom_inbox_prefix(proto::subject::inbox_prefix(user))
        }
        _ => async_nats::ConnectOptions::new(),
    };
    options
        .name(client_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                other => tracing::info!(event = %other, "NATS event"),
            }
        })
        .connect(&common.nats_url)
        .await
}

/// The configuration of the events stream for these settings.
pub fn events_stream_config(settings: &StreamSettings) -> stream::Config {
    stream::Config {
        name: subject::EVENTS_STREAM.to_owned(),
        subjects: subject::events_stream_subjects(),
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: settings.max_age,
        duplicate_window: settings.duplicate_window,
        num_replicas: usize::from(settings.replicas),
        ..Default::default()
    }
}

/// Creates the events stream if it does not exist; adds subjects a newer version needs. Other
/// settings of an existing stream are left as they are (an operator may have tuned them).
pub async fn ensure_events_stream(js: &jetstream::Context, settings: &StreamSettings) -> anyhow::Result<()> {
    let wanted = events_stream_config(settings);
    let mut stream = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot get or create stream {}: {e}", subject::EVENTS_STREAM))?;
    let info = stream.info().await.map_err(|e| anyhow::anyhow!("cannot read stream info: {e}"))?;
    let mut config = info.config.clone();
    let missing: Vec<String> = wanted.subjects.iter().filter(|s| !config.subjects.contains(s)).cloned().collect();
    if !missing.is_empty() {
        // Only the gateway may change the stream's configuration (NATS permissions); a domain
        // service publishes on its own domain's subjects, which any stream it finds has.
        tracing::info!(?missing, "adding subjects to the events stream");
        config.subjects.extend(missing);
        if let Err(e) = js.update_stream(config).await {
            tracing::warn!(error = %e, "cannot add subjects to the events stream (the gateway does it)");
        }
    }
    Ok(())
}

/// Drains the connection (flushes what is buffered, then closes) within `timeout`.
pub async fn drain(nats: &async_nats::Client, timeout: std::time::Duration) {
    match tokio::time::timeout(timeout, nats.drain()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "NATS drain failed"),
        Err(_) => tracing::warn!("NATS drain timed out"),
    }
}

/// Runs `follow` (a consumer that should last as long as the process) again whenever it fails or
/// ends, after a pause growing from 1 s to 30 s, until `stop`. `what` says what is interrupted
/// meanwhile, for the log.
pub async fn follow_forever<F, R>(what: &str, stop: tokio_util::sync::CancellationToken, mut follow: F)
where
    F: FnMut() -> R,
    R: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut pause = std::time::Duration::from_secs(1);
    loop {
        tokio::select! {
            result = follow() => {
                let error = result.err().map(|e| format!("{e:#}")).unwrap_or_else(|| "the consumer ended".into());
                tracing::warn!(error, retry_in = ?pause, "{what} stopped; retrying");
            }
            _ = stop.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
        pause = (pause * 2).min(std::time::Duration::from_secs(30));
    }
}
