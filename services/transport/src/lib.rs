//! Vigie's public-transport service.
//!
//! - [`network`]: a GTFS feed loaded into the model the rules need (routes, stops, trips with
//!   their stop times, shapes, service days), with errors that name the file and the line.
//! - [`geometry`]: positions projected onto a trip's shape (distance along it, offset from it).
//! - [`rules`]: schedule adherence, headway classification (bunching, gaps), off route, silent
//!   vehicles. Pure, table-tested.
//! - [`tracking`]: each position becomes a vehicle state and alarm changes. Pure.
//! - [`store`]: the sled database (the only module that sees sled).
//! - [`core`]: validation → tracker → store, in one order; [`api`]: the gRPC service.
//!
//! Still to come (issue 4): the GTFS-Realtime feed over HTTP, service alerts, predicted arrivals,
//! and the simulator's vehicles.

pub mod api;
pub mod core;
pub mod geometry;
pub mod network;
pub mod rules;
pub mod store;
pub mod tracking;

use anyhow::Context;
use proto::transport::transport_service_server::TransportServiceServer;
use runtime::config::CommonConfig;
use runtime::outbox;
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

    #[command(flatten)]
    pub common: CommonConfig,
}

pub async fn run(config: Config, listener: tokio::net::TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
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
    let today = {
        let now = jiff::Timestamp::now().to_zoned(time_zone.clone()).date();
        chrono::NaiveDate::from_ymd_opt(
            i32::from(now.year()),
            u32::try_from(now.month()).unwrap_or(1),
            u32::try_from(now.day()).unwrap_or(1),
        )
        .unwrap_or_default()
    };
    let service_day = config.service_day.or_else(|| network.service_day_for(today)).unwrap_or(today);
    tracing::info!(%today, %service_day, "timetable day");
    let tracker = tracking::Tracker::new(
        tracking::TrackerConfig { late_s: config.late_s, ..Default::default() },
        &network,
        service_day,
    );

    let db = sled::Config::new()
        .path(&config.store)
        .open()
        .with_context(|| format!("opening the store {}", config.store.display()))?;
    let store = store::Store::open(&db).context("opening the store's trees")?;
    let core =
        Arc::new(core::Transport::open(store.clone(), Arc::new(territory), Arc::new(network), time_zone, tracker)?);

    let nats = runtime::bus::connect(&config.common.nats_url, "vigie-transport").await?;
    let relay = outbox::spawn_relay(store.outbox(), &nats, &config.common.stream, config.common.shutdown_timeout);
    let background = CancellationToken::new();
    let silence = tokio::spawn(watch_silence(core.clone(), background.clone()));

    let server = TransportServiceServer::new(api::TransportApi::new(core))
        .max_decoding_message_size(proto::MAX_GRPC_MESSAGE_BYTES);
    let routes = tonic::service::Routes::new(server);
    tracing::info!(addr = %listener.local_addr()?, "gRPC listening");
    let names = [<TransportServiceServer<api::TransportApi> as NamedService>::NAME];
    let timeout = config.common.shutdown_timeout;
    let served = runtime::grpc::serve_until_shutdown(listener, routes, &names, shutdown.clone(), timeout).await;
    background.cancel();
    let _ = silence.await;
    relay.finish().await;
    runtime::bus::drain(&nats, timeout).await;
    db.flush_async().await.context("flushing the store")?;
    tracing::info!(outbox = store.outbox().depth(), "stopped");
    served
}

/// Looks for silent vehicles every 15 s.
async fn watch_silence(core: Arc<core::Transport>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = core.check_silence(std::time::SystemTime::now()).await {
            tracing::warn!(error = %e, "checking for silent vehicles failed");
        }
    }
}
