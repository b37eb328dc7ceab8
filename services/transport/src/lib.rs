//! Vigie's public-transport service.
//!
//! - [`network`]: a GTFS feed loaded into the model the rules need (routes, stops, trips with
//!   their stop times, shapes, service days), with errors that name the file and the line.
//! - [`geometry`]: positions projected onto a trip's shape (distance along it, offset from it).
//! - [`rules`]: schedule adherence, headway classification (bunching, gaps), off route, silent
//!   vehicles. Pure, table-tested.
//! - [`tracking`]: each position becomes a vehicle state and alarm changes. Pure.
//! - [`predict`]: predicted arrivals at the stops ahead. Pure.
//! - [`alerts`]: service alerts checked against the timetable, and the communes they concern. Pure.
//! - [`gtfs_rt`]: the GTFS-Realtime feeds built from the vehicles and alerts. Pure.
//! - [`kpi`]: vehicles in service and punctuality per commune. Pure.
//! - [`service_day`]: which day's service runs at an instant (it turns at 03:00), and its GTFS
//!   time 0. Pure; shared with the simulator.
//! - [`store`]: the sled database (the only module that sees sled).
//! - [`core`]: validation → tracker → store, in one order; the service's clock and timetable day.
//! - [`api`]: the gRPC service; [`http`]: the GTFS-Realtime feeds over HTTP.

pub mod alerts;
pub mod api;
pub mod core;
pub mod geometry;
pub mod gtfs_rt;
pub mod http;
pub mod kpi;
pub mod network;
pub mod predict;
pub mod rules;
pub mod service_day;
pub mod store;
pub mod tracking;

use anyhow::Context;
use proto::transport::transport_service_server::TransportServiceServer;
use runtime::config::CommonConfig;
use runtime::grpc_auth::Access;
use runtime::service::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "vigie-transport", version, about = "Vigie public-transport service (gRPC)")]
pub struct Config {
    /// Address of the gRPC server. Port 0 picks a free port (logged at start).
    #[arg(long, env = "VIGIE_TRANSPORT_GRPC_ADDR", default_value = "127.0.0.1:50062")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server (GTFS-Realtime feeds). Port 0 picks a free port (logged).
    #[arg(long, env = "VIGIE_TRANSPORT_HTTP_ADDR", default_value = "127.0.0.1:8062")]
    pub http_addr: SocketAddr,

    /// Folder of the service's sled database (created if missing).
    #[arg(long, env = "VIGIE_TRANSPORT_STORE", default_value = "var/transport")]
    pub store: PathBuf,

    /// Territory folder; its transit/gtfs.zip is the timetable.
    #[arg(long, env = "VIGIE_TERRITORY")]
    pub territory: PathBuf,

    /// The feed day whose timetable runs today (YYYY-MM-DD). Default: today when the feed covers
    /// it, else the busiest day of the same weekday in the feed's period.
    #[arg(long, env = "VIGIE_TRANSPORT_SERVICE_DAY")]
    pub service_day: Option<chrono::NaiveDate>,

    /// Later than this, in seconds: a `late` alarm.
    #[arg(long, env = "VIGIE_TRANSPORT_LATE_S", default_value_t = 300.0)]
    pub late_s: f64,

    /// Observed headway below this share of the scheduled one: a `bunching` alarm.
    #[arg(long, env = "VIGIE_TRANSPORT_BUNCHING_RATIO", default_value_t = 0.25)]
    pub bunching_ratio: f64,

    /// Observed headway above this multiple of the scheduled one: a `gap` alarm.
    #[arg(long, env = "VIGIE_TRANSPORT_GAP_RATIO", default_value_t = 2.0)]
    pub gap_ratio: f64,

    /// Farther than this from its shape, metres: an `off_route` alarm.
    #[arg(long, env = "VIGIE_TRANSPORT_OFF_ROUTE_M", default_value_t = 100.0)]
    pub off_route_m: f64,

    /// Silent for longer than this (e.g. 2m) while on its trip: a `not_reporting` alarm.
    /// How often the KPIs of each commune (vehicles, punctuality) are published.
    #[arg(long, env = "VIGIE_TRANSPORT_KPI_INTERVAL", value_parser = runtime::config::parse_duration, default_value = "60s")]
    pub kpi_interval: std::time::Duration,

    #[arg(long, env = "VIGIE_TRANSPORT_SILENCE", value_parser = runtime::config::parse_duration, default_value = "2m")]
    pub silence: std::time::Duration,

    #[command(flatten)]
    pub common: CommonConfig,

    #[command(flatten)]
    pub standby: runtime::replica::StandbyConfig,

    #[command(flatten)]
    pub security: runtime::grpc_auth::ServiceSecurityConfig,
}

/// Who may call each method (see `runtime::grpc_auth`). A transit network crosses communes: its
/// feeds need a credential for every commune.
const METHODS: &[(&str, Access)] = &[
    ("ReportPositions", Access::WriteEverywhere),
    ("PublishServiceAlert", Access::WriteEverywhere),
    ("WithdrawServiceAlert", Access::WriteEverywhere),
    ("ListVehicles", Access::Read),
    ("GetTripArrivals", Access::Read),
    ("ListServiceAlerts", Access::Read),
];

/// Runs the service on its two listeners (gRPC, HTTP) until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !(config.late_s.is_finite() && config.late_s > 60.0) {
        anyhow::bail!("--late-s must be more than 60");
    }
    let territory = territory::Territory::load(&config.territory).context("loading the territory")?;
    territory.log_summary();
    let network = match territory.layer_path(territory::Layer::Transit) {
        Some(path) => {
            let started = std::time::Instant::now();
            let network = network::Network::load(path)?;
            tracing::info!(
                routes = network.routes.len(),
                trips = network.trips.len(),
                stops = network.stops.len(),
                took_ms = started.elapsed().as_millis(),
                "timetable loaded"
            );
            network
        }
        None => {
            tracing::warn!("no transit layer in this territory: every position will be refused (unknown trip)");
            network::Network::default()
        }
    };
    let time_zone = match jiff::tz::TimeZone::get(&network.timezone) {
        Ok(tz) => tz,
        Err(e) => {
            tracing::warn!(timezone = %network.timezone, error = %e, "unknown feed time zone; using UTC");
            jiff::tz::TimeZone::UTC
        }
    };
    let ratios_ok = config.bunching_ratio > 0.0 && config.bunching_ratio < 1.0 && config.gap_ratio > 1.0;
    if !(ratios_ok && config.gap_ratio.is_finite()) {
        anyhow::bail!("--bunching-ratio must be between 0 and 1, and --gap-ratio more than 1");
    }
    if !(config.off_route_m.is_finite() && config.off_route_m >= 10.0) || config.silence.as_secs() < 10 {
        anyhow::bail!("--off-route-m must be at least 10, and --silence at least 10s");
    }
    if config.kpi_interval.as_secs() < 1 {
        anyhow::bail!("--kpi-interval must be at least 1s");
    }
    let rules = rules::RulesConfig {
        bunching_ratio: config.bunching_ratio,
        gap_ratio: config.gap_ratio,
        off_route_m: config.off_route_m,
        silence_s: config.silence.as_secs(),
    };
    let tracker_config = tracking::TrackerConfig { rules, late_s: config.late_s };

    let store =
        store::Store::open(&config.store).with_context(|| format!("opening the store {}", config.store.display()))?;
    // The tracker starts on today's timetable; the core turns the day at 03:00 (see core).
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let today = service_day::calendar_day(&time_zone, now);
    let timetable = config.service_day.or_else(|| network.service_day_for(today)).unwrap_or(today);
    let day = core::TimetableDay { calendar: today, timetable, fixed: config.service_day.is_some() };
    tracing::info!(calendar = %today, %timetable, fixed = day.fixed, "timetable day");
    let tracker = tracking::Tracker::new(tracker_config, &network, timetable);
    let Some(mut service) =
        Service::start("vigie-transport", &config.common, &config.standby, store.database(), &shutdown).await?
    else {
        return Ok(());
    };
    // Bound once this instance is the active one: a standby answers no call.
    let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
    let http_listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    let core = Arc::new(core::Transport::open(
        store.clone(),
        Arc::new(territory),
        Arc::new(network),
        time_zone,
        tracker,
        day,
    )?);

    service.spawn(housekeeping(core.clone(), service.background()));
    service.spawn(publish_kpis(core.clone(), config.kpi_interval, service.background()));
    tracing::info!(addr = %http_listener.local_addr()?, "HTTP listening (GTFS-Realtime)");
    service.serve_http(http_listener, http::router(core.clone()));

    let server = TransportServiceServer::new(api::TransportApi::new(core))
        .max_decoding_message_size(proto::MAX_GRPC_MESSAGE_BYTES);
    let names = [<TransportServiceServer<api::TransportApi> as NamedService>::NAME];
    let security = config.security.security(&service, "transport", names[0], METHODS).await?;
    service.serve_grpc(listener, tonic::service::Routes::new(server), &names, security, shutdown).await
}

/// Publishes the KPIs of each commune at every interval.
async fn publish_kpis(core: Arc<core::Transport>, every: std::time::Duration, stop: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = core.publish_kpis().await {
            tracing::warn!(error = %e, "publishing the transport KPIs failed");
        }
    }
}

/// Every 15 s: turns the timetable day when it changed, looks for silent vehicles, and withdraws
/// the service alerts that have ended.
async fn housekeeping(core: Arc<core::Transport>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        core.turn_day();
        if let Err(e) = core.check_silence().await {
            tracing::warn!(error = %e, "checking for silent vehicles failed");
        }
        if let Err(e) = core.expire_alerts().await {
            tracing::warn!(error = %e, "withdrawing ended service alerts failed");
        }
    }
}

#[cfg(test)]
mod flags {
    /// clap checks its definitions only when asked (two flags with one name panic at start).
    #[test]
    fn the_flags_are_well_formed() {
        <super::Config as clap::CommandFactory>::command().debug_assert();
    }
}
