//! Vigie's street-lighting service.
//!
//! - [`domain`]: validation, pure (streetlights, reports, faults, commands and their targets).
//! - [`rules`]: the alarm rules, pure (lamp faults, outage clusters, lamps on in daytime).
//! - [`sun`]: sunrise and sunset at a lamp's coordinates.
//! - [`commands`]: the command desk (pending commands, connected controllers).
//! - [`store`]: the sled database, the only module that sees sled; writes go with their events.
//! - [`core`]: validation → rules → store, in one order.
//! - [`api`]: the gRPC service `vigie.lighting.v1.LightingService`.
//! - [`run`]: wires them to NATS, the outbox relay and a gRPC listener, and shuts down gracefully.

pub mod api;
pub mod commands;
pub mod core;
pub mod domain;
pub mod kpi;
pub mod rules;
pub mod schedule;
pub mod store;
pub mod sun;

use anyhow::Context;
use proto::lighting::lighting_service_server::LightingServiceServer;
use runtime::config::CommonConfig;
use runtime::grpc_auth::Access;
use runtime::service::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "vigie-lighting", version, about = "Vigie street-lighting service (gRPC)")]
pub struct Config {
    /// Address of the gRPC server. Port 0 picks a free port (logged at start).
    #[arg(long, env = "VIGIE_LIGHTING_GRPC_ADDR", default_value = "127.0.0.1:50061")]
    pub grpc_addr: SocketAddr,

    /// Folder of the service's sled database (created if missing). Never shared with another process.
    #[arg(long, env = "VIGIE_LIGHTING_STORE", default_value = "var/lighting")]
    pub store: PathBuf,

    /// Territory folder (communes.geojson and layers), e.g. ../shared/data/montpellier-mediterranee-metropole.
    #[arg(long, env = "VIGIE_TERRITORY")]
    pub territory: PathBuf,

    /// Dark lamps that make an outage cluster (one alarm instead of one per lamp).
    #[arg(long, env = "VIGIE_LIGHTING_CLUSTER_MIN_LAMPS", default_value_t = 5)]
    pub cluster_min_lamps: usize,

    /// Distance within which dark lamps belong to the same cluster, metres.
    #[arg(long, env = "VIGIE_LIGHTING_CLUSTER_RADIUS_M", default_value_t = 50.0)]
    pub cluster_radius_m: f64,

    /// Around sunrise and sunset, a lit lamp is not reported as "on in daytime".
    #[arg(long, env = "VIGIE_LIGHTING_DAYTIME_MARGIN", default_value = "30m", value_parser = runtime::config::parse_duration)]
    pub daytime_margin: std::time::Duration,

    /// How often the KPIs (energy, availability per commune) are published and time-dependent
    /// rules re-evaluated.
    #[arg(long, env = "VIGIE_LIGHTING_KPI_INTERVAL", default_value = "60s", value_parser = runtime::config::parse_duration)]
    pub kpi_interval: std::time::Duration,

    /// Import the territory's streetlight layer at start (lighting/streetlights.geojson).
    #[arg(long, env = "VIGIE_LIGHTING_IMPORT_INVENTORY", default_value_t = true, action = clap::ArgAction::Set)]
    pub import_inventory: bool,

    #[command(flatten)]
    pub common: CommonConfig,

    #[command(flatten)]
    pub standby: runtime::replica::StandbyConfig,

    #[command(flatten)]
    pub shard: runtime::config::ShardConfig,

    #[command(flatten)]
    pub security: runtime::grpc_auth::ServiceSecurityConfig,
}

/// Registers the territory's streetlight layer: each lamp in the commune whose boundary contains
/// it (the file's own code only where the point falls between the simplified boundaries), and on
/// the nearest street of the streets layer within 30 m. Lamps that cannot be placed are counted
/// and left out; the rest is registered (unchanged lamps cost nothing).
async fn import_inventory(core: &Arc<core::Lighting>, territory: &territory::Territory) -> anyhow::Result<()> {
    use territory::Layer;
    let Some(path) = territory.layer_path(Layer::Streetlights) else {
        tracing::info!("no streetlight layer in the territory: nothing to import");
        return Ok(());
    };
    let mut lights = territory::streetlights::read(path).context("reading the streetlight inventory")?;
    let streets = match territory.layer_path(Layer::Streets).map(territory::streets::StreetIndex::read) {
        Some(Ok(index)) => Some(index),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "streets layer unreadable: lamps are imported without street names");
            None
        }
        None => None,
    };
    let (mut skipped, mut with_street, mut elsewhere) = (0usize, 0usize, 0usize);
    let mut valid = Vec::with_capacity(lights.len());
    for mut light in lights.drain(..) {
        // A shard imports its communes' lamps, placed by their position as without shards (the
        // file's commune only for a lamp outside every commune); the others are another shard's.
        let here = territory.locate(light.lat, light.lon).is_some();
        if !here
            && (territory.served_elsewhere(light.lat, light.lon).is_some()
                || proto::ids::CommuneId::parse(&light.commune).is_ok_and(|c| territory.is_served_elsewhere(&c)))
        {
            elsewhere += 1;
            continue;
        }
        if let Some(commune) = territory.locate(light.lat, light.lon) {
            light.commune = commune.id.to_string();
        }
        if light.street.is_empty()
            && let Some(name) = streets.as_ref().and_then(|s| s.nearest(light.lat, light.lon, 30.0))
        {
            light.street = name.to_owned();
        }
        match domain::validate_streetlight(&light, territory) {
            Ok(_) => {
                with_street += usize::from(!light.street.is_empty());
                valid.push(light);
            }
            Err(e) => {
                skipped += 1;
                if skipped <= 10 {
                    tracing::warn!(error = %e, "streetlight left out of the import");
                }
            }
        }
    }
    let (mut registered, mut unchanged) = (0, 0);
    for chunk in valid.chunks(domain::MAX_STREETLIGHTS_PER_CALL) {
        let (r, u) = core.register(chunk).map_err(|e| anyhow::anyhow!("importing streetlights: {e}"))?;
        core.flush().await.map_err(|e| anyhow::anyhow!("importing streetlights: {e}"))?;
        registered += r;
        unchanged += u;
    }
    tracing::info!(registered, unchanged, skipped, with_street, elsewhere, path = %path.display(), "streetlight inventory imported");
    Ok(())
}

/// Re-evaluates time-dependent rules and publishes the KPIs, every `interval`.
async fn tick(core: Arc<core::Lighting>, interval: std::time::Duration, stop: CancellationToken) {
    let mut interval = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = std::time::SystemTime::now();
        if let Err(e) = core.tick(now).await {
            tracing::warn!(error = %e, "periodic rule evaluation failed");
        }
        if let Err(e) = core.publish_kpis(now).await {
            tracing::warn!(error = %e, "publishing KPIs failed");
        }
        if let Err(e) = core.run_schedules(now).await {
            tracing::warn!(error = %e, "running the dimming schedules failed");
        }
    }
}

/// Who may call each method (see `runtime::grpc_auth`).
const METHODS: &[(&str, Access)] = &[
    ("RegisterStreetlights", Access::WriteEverywhere),
    ("ReportStatus", Access::PerCommune),
    ("StreamTelemetry", Access::PerCommune),
    ("GetStreetlight", Access::Read),
    ("GetCommand", Access::Read),
    ("GetKpis", Access::Read),
    ("ListSchedules", Access::Read),
    // A controller receives the commands of every commune.
    ("ControllerSession", Access::WriteEverywhere),
    ("SendCommand", Access::Act),
    ("PutSchedule", Access::Act),
    ("DeleteSchedule", Access::Act),
];

/// Runs the service on `listener` until `shutdown` is cancelled; then stops accepting calls,
/// finishes those in flight, drains the outbox and NATS, and flushes the store, all within
/// `shutdown_timeout`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut territory = territory::Territory::load(&config.territory).context("loading the territory")?;
    territory.log_summary();
    let unit = config.shard.unit(proto::v1::Domain::Lighting)?;
    if let Some(shard) = &unit.shard {
        territory.limit_to(&shard.communes).context("--communes")?;
        tracing::info!(shard = unit.name(), communes = ?shard.communes, "this instance serves a shard of the territory");
    }
    let store = store::Store::open_unit(&config.store, unit)
        .with_context(|| format!("opening the store {}", config.store.display()))?;
    // Before NATS: a misconfigured shard takes no lease and publishes nothing (checked again
    // once active: a standby's store is the bucket's copy).
    core::refuse_other_shards_records(&store, &territory).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rules = rules::RulesConfig {
        cluster_min_lamps: config.cluster_min_lamps,
        cluster_radius_m: config.cluster_radius_m,
        daytime_margin: config.daytime_margin,
    };
    if config.kpi_interval.is_zero() {
        anyhow::bail!("--kpi-interval must be more than 0");
    }
    if rules.cluster_min_lamps < 2 || !(rules.cluster_radius_m.is_finite() && rules.cluster_radius_m > 0.0) {
        anyhow::bail!("--cluster-min-lamps must be at least 2 and --cluster-radius-m a positive number");
    }
    let Some(mut service) =
        Service::start("vigie-lighting", &config.common, &config.standby, store.database(), &shutdown).await?
    else {
        return Ok(());
    };
    // Bound once this instance is the active one: a standby answers no call.
    let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
    let territory = Arc::new(territory);
    let core = core::Lighting::open(store.clone(), territory.clone(), rules, service.background())
        .await
        .map_err(|e| anyhow::anyhow!("restoring the lighting state: {e}"))?;
    tracing::info!(streetlights = store.streetlight_count(), outbox = store.outbox().depth(), "store opened");
    if config.import_inventory {
        import_inventory(&core, &territory).await?;
    }
    service.spawn(tick(core.clone(), config.kpi_interval, service.background()));

    let server = LightingServiceServer::new(api::LightingApi::new(core))
        .max_decoding_message_size(proto::MAX_GRPC_MESSAGE_BYTES);
    let names = [<LightingServiceServer<api::LightingApi> as NamedService>::NAME];
    let security = config.security.security(&service, "lighting", names[0], METHODS).await?;
    service.serve_grpc(listener, tonic::service::Routes::new(server), &names, security, shutdown).await
}

#[cfg(test)]
mod flags {
    /// clap checks its definitions only when asked (two flags with one name panic at start).
    #[test]
    fn the_flags_are_well_formed() {
        <super::Config as clap::CommandFactory>::command().debug_assert();
    }
}
