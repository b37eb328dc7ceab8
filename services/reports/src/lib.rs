//! Vigie's citizen-reports service.
//!
//! - [`catalogue`]: the services (kinds of report) each commune accepts; French defaults.
//! - [`domain`]: pure rules: input checks, the lifecycle and its Open311 mapping, duplicates.
//! - [`store`]: the sled database (the only module that sees sled).
//! - [`kpi`]: pure; open reports, received and closed, median time to close, per commune.
//! - [`core`]: routing to the commune, geocoding an address on the streets, duplicates and lamp
//!   links, writes with their events; [`open311`]: the GeoReport v2 HTTP API; [`api`]: gRPC.

pub mod api;
pub mod catalogue;
pub mod core;
pub mod domain;
pub mod kpi;
pub mod open311;
pub mod store;

use anyhow::Context;
use futures::StreamExt;
use proto::reports::reports_service_server::ReportsServiceServer;
use proto::v1::Domain;
use runtime::config::CommonConfig;
use runtime::grpc_auth::Access;
use runtime::service::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "vigie-reports", version, about = "Vigie citizen-reports service (Open311 GeoReport v2, gRPC)")]
pub struct Config {
    /// Address of the gRPC server. Port 0 picks a free port (logged at start).
    #[arg(long, env = "VIGIE_REPORTS_GRPC_ADDR", default_value = "127.0.0.1:50064")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server (Open311 under /open311/v2/). Port 0 picks a free port (logged).
    #[arg(long, env = "VIGIE_REPORTS_HTTP_ADDR", default_value = "127.0.0.1:8064")]
    pub http_addr: SocketAddr,

    /// Folder of the service's sled database (created if missing).
    #[arg(long, env = "VIGIE_REPORTS_STORE", default_value = "var/reports")]
    pub store: PathBuf,

    /// Territory folder: its communes route the reports, its streets place addresses.
    #[arg(long, env = "VIGIE_TERRITORY")]
    pub territory: PathBuf,

    /// A JSON file of services (see `catalogue`); the French defaults when absent.
    #[arg(long, env = "VIGIE_REPORTS_SERVICES")]
    pub services: Option<PathBuf>,

    /// API keys allowed to POST requests, comma-separated; anyone may when empty.
    #[arg(long, env = "VIGIE_REPORTS_API_KEYS", default_value = "", hide_env_values = true)]
    pub api_keys: String,

    /// Reports a client (IP address) may POST per minute.
    #[arg(long, env = "VIGIE_REPORTS_RATE_PER_MINUTE", default_value_t = 30)]
    pub rate_per_minute: u32,

    /// Open311 reads (GET) a client (IP address) may make per minute.
    #[arg(long, env = "VIGIE_REPORTS_READ_RATE_PER_MINUTE", default_value_t = 600)]
    pub read_rate_per_minute: u32,

    /// How often the reports' KPIs of each commune are published.
    #[arg(long, env = "VIGIE_REPORTS_KPI_INTERVAL", default_value = "60s", value_parser = runtime::config::parse_duration)]
    pub kpi_interval: std::time::Duration,

    /// Services whose reports are about a lamp: linked to a lighting alarm within 50 m.
    #[arg(long, env = "VIGIE_REPORTS_LIGHTING_SERVICES", default_value = "eclairage-panne", value_delimiter = ',')]
    pub lighting_services: Vec<String>,

    #[command(flatten)]
    pub common: CommonConfig,

    #[command(flatten)]
    pub standby: runtime::replica::StandbyConfig,

    #[command(flatten)]
    pub security: runtime::grpc_auth::ServiceSecurityConfig,
}

/// Who may call each method (see `runtime::grpc_auth`). A commune's own citizen front may hold a
/// credential for its commune: it creates and follows that commune's requests.
const METHODS: &[(&str, Access)] = &[
    ("ListServices", Access::Reference),
    ("CreateRequest", Access::PerCommune),
    ("GetRequest", Access::PerCommune),
    ("ListRequests", Access::Read),
    ("ChangeStatus", Access::Act),
];

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if config.rate_per_minute == 0 || config.read_rate_per_minute == 0 {
        anyhow::bail!("--rate-per-minute and --read-rate-per-minute must be at least 1");
    }
    let territory = territory::Territory::load(&config.territory).context("loading the territory")?;
    territory.log_summary();
    let streets = match territory.layer_path(territory::Layer::Streets) {
        Some(path) => Some(territory::streets::StreetIndex::read(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let catalogue = match &config.services {
        Some(path) => catalogue::Catalogue::read(path).map_err(anyhow::Error::msg)?,
        None => catalogue::Catalogue::with_defaults(),
    };
    let store =
        store::Store::open(&config.store).with_context(|| format!("opening the store {}", config.store.display()))?;
    if config.kpi_interval.is_zero() {
        anyhow::bail!("--kpi-interval must be more than 0");
    }
    let Some(mut service) =
        Service::start("vigie-reports", &config.common, &config.standby, store.database(), &shutdown).await?
    else {
        return Ok(());
    };
    // Bound once this instance is the active one: a standby answers no call.
    let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
    let http_listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    let core = Arc::new(core::Reports::open(
        store,
        Arc::new(territory),
        streets,
        catalogue,
        config.lighting_services.clone(),
    )?);
    service.spawn(follow_lighting_alarms(
        service.nats().clone(),
        core.clone(),
        config.common.clone(),
        service.background(),
    ));
    service.spawn(publish_kpis(core.clone(), config.kpi_interval, service.background()));

    let open311 = Arc::new(open311::Open311 {
        reports: core.clone(),
        api_keys: config.api_keys.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect(),
        limiter: open311::RateLimiter::new(config.rate_per_minute),
        read_limiter: open311::RateLimiter::new(config.read_rate_per_minute),
    });
    tracing::info!(addr = %http_listener.local_addr()?, "HTTP listening (Open311 GeoReport v2 under /open311/v2/)");
    service.serve_http(http_listener, open311::router(open311));

    let server =
        ReportsServiceServer::new(api::ReportsApi::new(core)).max_decoding_message_size(proto::MAX_GRPC_MESSAGE_BYTES);
    let names = [<ReportsServiceServer<api::ReportsApi> as NamedService>::NAME];
    let security = config.security.security(&service, "reports", names[0], METHODS).await?;
    service.serve_grpc(listener, tonic::service::Routes::new(server), &names, security, shutdown).await
}

/// Publishes the reports' KPIs every `every`, until `stop`.
async fn publish_kpis(core: Arc<core::Reports>, every: std::time::Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = core.publish_kpis(std::time::SystemTime::now()).await {
            tracing::warn!(error = %e, "reports KPIs not published; retried at the next tick");
        }
    }
}

/// Follows the lighting alarms on the bus (from the stream's start: the active ones are rebuilt at
/// each start), so that a "lamp out" report near a lamp known faulty is linked to its alarm. A
/// failure (NATS down, the stream recreated) starts it over, after a pause that grows to 30 s:
/// replaying the alarms is idempotent.
async fn follow_lighting_alarms(
    nats: async_nats::Client,
    core: Arc<core::Reports>,
    common: CommonConfig,
    stop: CancellationToken,
) {
    runtime::bus::follow_forever("following lighting alarms (lamp reports are not linked meanwhile)", stop, || {
        follow_lighting_alarms_once(nats.clone(), core.clone(), &common)
    })
    .await
}

async fn follow_lighting_alarms_once(
    nats: async_nats::Client,
    core: Arc<core::Reports>,
    common: &CommonConfig,
) -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    let js = runtime::bus::jetstream(&nats);
    runtime::bus::ensure_events_stream(&js, &common.stream).await?;
    let stream = js.get_stream(proto::subject::EVENTS_STREAM).await?;
    // One consumer per kind, each named and with a single filter: both are then in the API
    // subject (`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`), so that this service's NATS
    // user may create consumers on the lighting alarms and on nothing else (see
    // deploy/nats/authorization.conf). Raised and cleared alarms of one key are applied in
    // stream order within each kind, not between kinds: `core.lighting_event` keeps the latest
    // by stream sequence. A stream written before subjects named the asset holds its alarms on
    // the older subjects: one more consumer per kind reads those.
    let instance = uuid::Uuid::now_v7().simple().to_string();
    let mut merged = futures::stream::SelectAll::new();
    for kind in ["alarm_raised", "alarm_cleared"] {
        let filters = [
            (String::new(), proto::subject::kind_events(Domain::Lighting, kind)),
            ("-legacy".to_owned(), proto::subject::legacy_kind_events(Domain::Lighting, kind)),
        ];
        for (suffix, filter_subject) in filters {
            let consumer = stream
                .create_consumer(OrderedConfig {
                    name: Some(format!("reports-lighting-{kind}{suffix}-{instance}")),
                    filter_subject,
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await?;
            merged.push(consumer.messages().await?);
        }
    }
    tracing::info!("following lighting alarms");
    while let Some(message) = merged.next().await {
        let message = message?;
        // Checked like any bus input: decodable, consistent, and on its own subject.
        match proto::event::decode(&message.payload) {
            Ok(event) if event.published_on(&message.subject) => {
                let seq = message.info().map(|i| i.stream_sequence).map_err(|e| anyhow::anyhow!("{e}"))?;
                core.lighting_event(&event, seq)
            }
            Ok(event) => {
                tracing::warn!(subject = %message.subject, expected = %event.subject(), "lighting event on another subject skipped")
            }
            Err(e) => tracing::warn!(subject = %message.subject, error = %e, "undecodable lighting event skipped"),
        }
    }
    anyhow::Ok(())
}

#[cfg(test)]
mod flags {
    /// clap checks its definitions only when asked (two flags with one name panic at start).
    #[test]
    fn the_flags_are_well_formed() {
        <super::Config as clap::CommandFactory>::command().debug_assert();
    }
}
