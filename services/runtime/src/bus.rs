//! The NATS connection and the JetStream events stream.

use crate::config::StreamSettings;
use async_nats::jetstream::{self, stream};
use proto::subject;

/// The servers of `--nats-url`: one URL, or a cluster's, comma-separated. (async-nats parses a
/// string as one address: a list must be split here.)
pub fn server_addrs(urls: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| url.parse().map_err(|e| anyhow::anyhow!("the NATS URL {:?} is not valid: {e}", redacted(url))))
        .collect::<anyhow::Result<Vec<async_nats::ServerAddr>>>()?;
    if addrs.is_empty() {
        anyhow::bail!("--nats-url names no server");
    }
    Ok(addrs)
}

/// `url` with any `user:password@` replaced by `***@`: URLs go into errors and logs.
fn redacted(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].rfind('@') {
        Some(at) => format!("{}***{}", &url[..after_scheme], &url[after_scheme + at..]),
        None => url.to_owned(),
    }
}

/// Connects to NATS: to one of the servers of `--nats-url`, and on a cluster to any other node
/// when that one fails (the nodes a server announces are tried too). The client connects in the
/// background and reconnects forever, so a process starts (and a service accepts writes into its
/// outbox) while NATS is down.
pub async fn connect(common: &crate::config::CommonConfig, client_name: &str) -> anyhow::Result<async_nats::Client> {
    let servers = server_addrs(&common.nats_url)?;
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
        // A server that went silent (its machine lost, not its process killed: no TCP reset) is
        // noticed after two unanswered pings, and another node of a cluster tried; the default
        // (a minute) would leave the process talking to nobody for two.
        .ping_interval(std::time::Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                other => tracing::info!(event = %other, "NATS event"),
            }
        })
        .connect(servers)
        .await
        .map_err(|e| {
            let urls: Vec<String> = common.nats_url.split(',').map(|u| redacted(u.trim())).collect();
            anyhow::anyhow!("cannot connect to NATS at {}: {e}", urls.join(","))
        })
}

/// How long a JetStream request (an API call, a publish's acknowledgement) is waited for before
/// it is given up and tried again. On a cluster, a stream whose leader was lost answers nothing
/// until its copies elect another (4 to 9 s): a shorter wait retries sooner once it has. A
/// publish given up is published again under the same id, which JetStream drops if it was
/// stored after all.
pub const JETSTREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The JetStream context every process uses on `nats` (requests wait [`JETSTREAM_TIMEOUT`]).
/// An acknowledgement given up on (the relay stops waiting at the first failure of a batch)
/// holds one of the context's 5,000 publish permits until its own timeout: that one is
/// [`JETSTREAM_TIMEOUT`] too (30 s by default), so that a few failed batches of the relay's
/// size do not leave the next one waiting for permits.
pub fn jetstream(nats: &async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new().timeout(JETSTREAM_TIMEOUT).ack_timeout(JETSTREAM_TIMEOUT).build(nats.clone())
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

#[cfg(test)]
mod server_list_tests {
    use super::server_addrs;

    #[test]
    fn one_url_or_a_comma_separated_list() {
        assert_eq!(server_addrs("nats://127.0.0.1:4222").unwrap().len(), 1);
        let cluster = server_addrs("nats://10.0.0.1:4222, nats://10.0.0.2:4222,nats://10.0.0.3:4222").unwrap();
        let ports: Vec<String> = cluster.iter().map(|a| format!("{}:{}", a.host(), a.port())).collect();
        assert_eq!(ports, ["10.0.0.1:4222", "10.0.0.2:4222", "10.0.0.3:4222"]);
        assert!(server_addrs("").unwrap_err().to_string().contains("no server"));
        assert!(server_addrs(" , ").is_err());
        assert!(server_addrs("nats://127.0.0.1:4222,nats://[bad").unwrap_err().to_string().contains("[bad"));
        // A password in a URL never reaches an error.
        let refused = server_addrs("nats://lighting:s3cret@[bad").unwrap_err().to_string();
        assert!(refused.contains("nats://***@[bad") && !refused.contains("s3cret"), "{refused}");
    }
}
