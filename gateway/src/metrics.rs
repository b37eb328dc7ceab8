//! The gateway's own metrics, registered with the process's (see `runtime::metrics`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::OnceLock;

pub struct GatewayMetrics {
    pub events_applied: Counter,
    /// Events the consumer still has to fetch (JetStream's count at the last message).
    pub consumer_pending: Gauge,
    pub applied_seq: Gauge,
    pub clients: Gauge,
    pub resyncs: Counter,
    /// Asset updates a session skipped because a later one of the same asset superseded them.
    pub deltas_coalesced: Counter,
    pub clients_closed_silent: Counter,
    /// Records of the persisted view that could not be read at start (the view was rebuilt).
    pub view_records_unreadable: Counter,
    /// KPI values dropped because they were not finite numbers (no store can round-trip them).
    pub kpi_values_dropped: Counter,
    /// Events the view never applied and the stream no longer holds (its retention dropped them).
    pub events_lost_to_retention: Counter,
    /// The view's approximate size, bytes (see `--view-budget`).
    pub view_bytes: Gauge,
    /// Snapshots serialised, and those served from a shared one.
    pub snapshots_built: Counter,
    pub snapshots_shared: Counter,
    /// Snapshots refused because their login asked for too many.
    pub snapshots_refused: Counter,
    /// The sequence of the latest view checkpoint this replica wrote or started from.
    pub checkpoint_seq: Gauge,
}

pub fn get() -> &'static GatewayMetrics {
    static METRICS: OnceLock<GatewayMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = GatewayMetrics {
            events_applied: Counter::default(),
            consumer_pending: Gauge::default(),
            applied_seq: Gauge::default(),
            clients: Gauge::default(),
            resyncs: Counter::default(),
            deltas_coalesced: Counter::default(),
            clients_closed_silent: Counter::default(),
            view_records_unreadable: Counter::default(),
            kpi_values_dropped: Counter::default(),
            events_lost_to_retention: Counter::default(),
            view_bytes: Gauge::default(),
            snapshots_built: Counter::default(),
            snapshots_shared: Counter::default(),
            snapshots_refused: Counter::default(),
            checkpoint_seq: Gauge::default(),
        };
        let r = runtime::metrics::global();
        r.register("gateway_events_applied", "Events applied to the operations view", m.events_applied.clone());
        r.register(
            "gateway_consumer_pending",
            "Events in the stream not yet fetched by the gateway (consumer lag)",
            m.consumer_pending.clone(),
        );
        r.register("gateway_applied_seq", "Stream sequence the view is current at", m.applied_seq.clone());
        r.register("gateway_ws_clients", "Live WebSocket sessions", m.clients.clone());
        r.register("gateway_view_bytes", "The operations view's approximate size in memory", m.view_bytes.clone());
        r.register("gateway_snapshots_built", "Snapshots serialised", m.snapshots_built.clone());
        r.register(
            "gateway_snapshots_shared",
            "Snapshots served from one serialised for the same filter moments before",
            m.snapshots_shared.clone(),
        );
        r.register(
            "gateway_snapshots_refused",
            "Snapshots refused because their login asked for more than its budget",
            m.snapshots_refused.clone(),
        );
        r.register(
            "gateway_checkpoint_seq",
            "Stream sequence of the latest view checkpoint this replica wrote or started from",
            m.checkpoint_seq.clone(),
        );
        r.register("gateway_resyncs", "Fresh snapshots sent to sessions that fell too far behind", m.resyncs.clone());
        r.register(
            "gateway_deltas_coalesced",
            "Asset updates superseded within a session's batch",
            m.deltas_coalesced.clone(),
        );
        r.register(
            "gateway_clients_closed_silent",
            "Sessions closed after no sign of life",
            m.clients_closed_silent.clone(),
        );
        r.register(
            "gateway_view_records_unreadable",
            "Records of the stored view that could not be read at start; the view was rebuilt from the stream",
            m.view_records_unreadable.clone(),
        );
        r.register(
            "gateway_kpi_values_dropped",
            "KPI values dropped because they were not finite numbers",
            m.kpi_values_dropped.clone(),
        );
        r.register(
            "gateway_events_lost_to_retention",
            "Events the view never applied that the stream no longer holds",
            m.events_lost_to_retention.clone(),
        );
        m
    })
}

/// Counts a live session while it exists.
pub struct SessionGuard;

impl SessionGuard {
    pub fn start() -> SessionGuard {
        get().clients.inc();
        SessionGuard
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        get().clients.dec();
    }
}
