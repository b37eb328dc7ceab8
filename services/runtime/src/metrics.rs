//! Prometheus metrics (OpenMetrics text at `/metrics`), the same for the gateway and every domain
//! service: each process has one registry, holding what they all measure (events published by the outbox, its depth,
//! field messages accepted and refused) and what its own crate registers.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use tokio_util::sync::CancellationToken;

/// What the gateway and every domain service measure.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Events the outbox relay published and JetStream acknowledged.
    pub events_published: Counter,
    /// Outbox entries waiting for JetStream (set when scraped).
    pub outbox_depth: Gauge,
    /// Publish attempts that failed (the entries wait and are retried).
    pub publish_failures: Counter,
    /// Outbox entries JetStream could never take, moved aside (each one is an event lost to the
    /// stream: alert on any).
    pub outbox_dead_letters: Counter,
    /// The store failed to write (at most once per process: see `store_fault`).
    pub store_failures: Counter,
    /// Field messages (telemetry, positions, readings) stored, and refused with a reason.
    pub ingest_accepted: Counter,
    pub ingest_refused: Counter,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let (events_published, outbox_depth, publish_failures, ingest_accepted, ingest_refused) =
            (Counter::default(), Gauge::default(), Counter::default(), Counter::default(), Counter::default());
        let outbox_dead_letters = Counter::default();
        let store_failures = Counter::default();
        let mut registry = Registry::with_prefix("vigie");
        registry.register(
            "outbox_published",
            "Events published to JetStream and acknowledged",
            events_published.clone(),
        );
        registry.register("outbox_depth", "Outbox entries waiting for JetStream", outbox_depth.clone());
        registry.register(
            "outbox_publish_failures",
            "Publish attempts that failed and wait for a retry",
            publish_failures.clone(),
        );
        registry.register(
            "outbox_dead_letters",
            "Outbox entries JetStream could never take, moved aside to outbox_dead_letters",
            outbox_dead_letters.clone(),
        );
        registry.register(
            "store_failures",
            "The store failed to write (a full or failing disk); the process restarts once it has room",
            store_failures.clone(),
        );
        registry.register("ingest_accepted", "Field messages stored", ingest_accepted.clone());
        registry.register("ingest_refused", "Field messages refused with a reason", ingest_refused.clone());
        Metrics {
            registry: Mutex::new(registry),
            events_published,
            outbox_depth,
            publish_failures,
            outbox_dead_letters,
            store_failures,
            ingest_accepted,
            ingest_refused,
        }
    })
}

impl Metrics {
    /// Registers a metric of the process's own (named `vigie_<name>`).
    pub fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry.lock().unwrap_or_else(|p| p.into_inner()).register(name, help, metric);
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = encode(&mut text, &self.registry.lock().unwrap_or_else(|p| p.into_inner())) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        text
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `/metrics` route. `before` runs at each scrape (to set gauges read on demand).
pub fn router(before: impl Fn() + Clone + Send + Sync + 'static) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let before = before.clone();
            async move {
                before();
                ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], global().render())
            }
        }),
    )
}

/// Serves `/metrics` on its own address until `stop` (for services without an HTTP face).
pub fn serve(
    listener: tokio::net::TcpListener,
    before: impl Fn() + Clone + Send + Sync + 'static,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening (/metrics)");
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(before)).with_graceful_shutdown(stop.cancelled_owned()).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    })
}

/// A domain service's metrics endpoint, when `--metrics-addr` is set: the common metrics, with
/// the outbox's depth read at each scrape.
pub async fn serve_service(
    addr: Option<SocketAddr>,
    outbox: &crate::outbox::Outbox,
    stop: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let outbox = outbox.clone();
    Ok(Some(serve(
        listener,
        move || {
            global().outbox_depth.set(outbox.depth() as i64);
        },
        stop,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_as_openmetrics() {
        let m = global();
        m.events_published.inc_by(3);
        m.outbox_depth.set(7);
        let text = m.render();
        let published = text
            .lines()
            .find_map(|l| l.strip_prefix("vigie_outbox_published_total "))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(published.is_some_and(|n| n >= 3), "{text}");
        assert!(text.contains("vigie_outbox_depth 7"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
