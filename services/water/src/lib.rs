//! Vigie's water service.
//!
//! - [`network`]: an EPANET `.inp` network (junctions, reservoirs, tanks, pipes, pumps, valves,
//!   coordinates), with errors that name the section and the line; which links isolate a segment.
//! - [`placement`]: the network's local coordinates placed over the territory (WGS84), and each
//!   node's commune.
//! - [`dma`]: district metered areas derived from the network: the parts left connected once the
//!   metered links, the pumps and the valves are cut.
//! - [`zones`]: metering zones (areas joined across unmetered boundaries), their water balance,
//!   the minimum night flow of each night.
//! - [`model`]: all of the above for the service, with the sensors placed on it.
//! - [`layout`]: the sensor layout file.
//! - [`quality`]: readings' measures, units and ranges, and sensor flags (out of range, frozen,
//!   silent).
//! - [`leaks`]: leak detection by minimum night flow against a per-weekday baseline, scored on the
//!   BattLeDIM leak schedule.
//! - [`rules`]: tank levels, French drinking-water references, bursts (pressure drop with inflow
//!   rise), with hysteresis.
//! - [`domain`]: what the service accepts (readings, valve requests), checked without I/O.
//! - [`alarms`]: the alarms the rules' findings raise and clear.
//! - [`store`]: the sled database, the only module that sees sled.
//! - [`core`]: sensors and readings through the rules to alarms, one use case per call;
//!   [`valves`]: valve commands and their controllers; [`kpi`]: the KPIs per commune.
//! - [`api`]: the gRPC service `vigie.water.v1.WaterService`.

pub mod alarms;
pub mod api;
pub mod core;
pub mod dma;
pub mod domain;
pub mod kpi;
pub mod layout;
pub mod leaks;
pub mod model;
pub mod network;
pub mod placement;
pub mod quality;
pub mod rules;
pub mod store;
pub mod valves;
pub mod zones;

use anyhow::Context;
use proto::water::water_service_server::WaterServiceServer;
use runtime::config::{CommonConfig, parse_duration};
use runtime::grpc_auth::Access;
use runtime::service::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "vigie-water", version, about = "Vigie water service (network, readings, leaks, bursts, valves)")]
pub struct Config {
    /// Address of the gRPC server. Port 0 picks a free port (logged at start).
    #[arg(long, env = "VIGIE_WATER_GRPC_ADDR", default_value = "127.0.0.1:50063")]
    pub grpc_addr: SocketAddr,

    /// Folder of the service's sled database (created if missing).
    #[arg(long, env = "VIGIE_WATER_STORE", default_value = "var/water")]
    pub store: PathBuf,

    /// Territory folder: its communes, and its water layer (the EPANET network).
    #[arg(long, env = "VIGIE_TERRITORY")]
    pub territory: PathBuf,

    /// The network's placement over the territory; `placement.json` next to the network when absent.
    #[arg(long, env = "VIGIE_WATER_PLACEMENT")]
    pub placement: Option<PathBuf>,

    /// A sensor layout file (see `layout`), registered at start; sensors may also be registered
    /// over gRPC.
    #[arg(long, env = "VIGIE_WATER_SENSORS")]
    pub sensors: Option<PathBuf>,

    /// Time zone of the territory: nights are local.
    #[arg(long, env = "VIGIE_TIMEZONE", default_value = "Europe/Paris")]
    pub timezone: String,

    /// The minimum-night-flow window starts at this local hour...
    #[arg(long, env = "VIGIE_WATER_NIGHT_START_HOUR", default_value_t = 2, value_parser = clap::value_parser!(i8).range(0..=23))]
    pub night_start_hour: i8,

    /// ...and lasts this many hours.
    #[arg(long, env = "VIGIE_WATER_NIGHT_HOURS", default_value_t = 2, value_parser = clap::value_parser!(i8).range(1..=6))]
    pub night_hours: i8,

    /// A night flow over the weekday's baseline by more than this (m³/h)...
    #[arg(long, env = "VIGIE_WATER_LEAK_MIN_EXCESS", default_value_t = 1.5)]
    pub leak_min_excess: f64,

    /// ...or by more than this share of the baseline, when larger, suggests a leak.
    #[arg(long, env = "VIGIE_WATER_LEAK_SHARE", default_value_t = 0.03)]
    pub leak_share: f64,

    /// A burst: a pressure drop of more than this (m)...
    #[arg(long, env = "VIGIE_WATER_BURST_PRESSURE_DROP", default_value_t = 5.0)]
    pub burst_pressure_drop: f64,

    /// ...with a zone inflow rise of more than this (m³/h)...
    #[arg(long, env = "VIGIE_WATER_BURST_INFLOW_RISE", default_value_t = 20.0)]
    pub burst_inflow_rise: f64,

    /// ...within this window.
    #[arg(long, env = "VIGIE_WATER_BURST_WINDOW", default_value = "15m", value_parser = parse_duration)]
    pub burst_window: Duration,

    /// A sensor whose value has not changed for this long is frozen.
    #[arg(long, env = "VIGIE_WATER_FROZEN_AFTER", default_value = "6h", value_parser = parse_duration)]
    pub frozen_after: Duration,

    /// A sensor from which nothing was received for this long is silent (communication lost).
    #[arg(long, env = "VIGIE_WATER_SILENT_AFTER", default_value = "30m", value_parser = parse_duration)]
    pub silent_after: Duration,

    /// How often KPIs are published.
    #[arg(long, env = "VIGIE_WATER_KPI_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub kpi_interval: Duration,

    #[command(flatten)]
    pub common: CommonConfig,

    #[command(flatten)]
    pub standby: runtime::replica::StandbyConfig,

    #[command(flatten)]
    pub security: runtime::grpc_auth::ServiceSecurityConfig,
}

impl Config {
    fn water_config(&self) -> anyhow::Result<core::WaterConfig> {
        let time_zone = jiff::tz::TimeZone::get(&self.timezone)
            .with_context(|| format!("--timezone {:?} is not a known time zone", self.timezone))?;
        let positive = [self.leak_min_excess, self.burst_pressure_drop, self.burst_inflow_rise];
        if positive.iter().any(|v| !v.is_finite() || *v <= 0.0) || !(0.0..1.0).contains(&self.leak_share) {
            anyhow::bail!("thresholds must be positive numbers, and --leak-share in 0..1");
        }
        if self.kpi_interval.is_zero() || self.burst_window.as_secs() < 60 {
            anyhow::bail!("--kpi-interval must be more than 0 and --burst-window at least 1m");
        }
        Ok(core::WaterConfig {
            quality: quality::QualityConfig {
                frozen_after_s: self.frozen_after.as_secs(),
                silent_after_s: self.silent_after.as_secs(),
            },
            night: zones::NightWindow { time_zone, start_hour: self.night_start_hour, hours: self.night_hours },
            leak: leaks::LeakThreshold { min_excess: self.leak_min_excess, share_of_baseline: self.leak_share },
            burst: rules::BurstConfig {
                pressure_drop_m: self.burst_pressure_drop,
                inflow_rise: self.burst_inflow_rise,
            },
            burst_window_s: self.burst_window.as_secs() as i64,
        })
    }
}

/// Who may call each method (see `runtime::grpc_auth`). The network is the metropolis's: its
/// feeds and controllers need a credential for every commune.
const METHODS: &[(&str, Access)] = &[
    ("StreamReadings", Access::WriteEverywhere),
    ("RegisterSensors", Access::WriteEverywhere),
    ("ValveControllerSession", Access::WriteEverywhere),
    ("ListSensors", Access::Read),
    ("ListDmas", Access::Read),
    ("GetValveCommand", Access::Read),
    ("GetKpis", Access::Read),
    ("SendValveCommand", Access::Act),
];

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let water_config = config.water_config()?;
    let territory = territory::Territory::load(&config.territory).context("loading the territory")?;
    territory.log_summary();
    let network_path = territory
        .layer_path(territory::Layer::Water)
        .context("the territory has no water layer (water/L-TOWN.inp): nothing to supervise")?
        .to_owned();
    let network = network::Network::read(&network_path)?;
    let placement_path = config
        .placement
        .clone()
        .unwrap_or_else(|| network_path.parent().unwrap_or(std::path::Path::new(".")).join("placement.json"));
    let placement = placement::Placement::read(&placement_path).map_err(anyhow::Error::msg)?;
    let placed = placement::place(&network, &placement, |lat, lon| territory.locate(lat, lon).map(|c| c.id.clone()))
        .map_err(anyhow::Error::msg)?;
    let outside = placed.iter().filter(|p| p.commune.is_none()).count();
    tracing::info!(
        title = %network.title,
        nodes = network.nodes.len(),
        links = network.links.len(),
        outside_the_territory = outside,
        "network loaded and placed"
    );
    let initial_sensors = match &config.sensors {
        Some(path) => layout::read(path).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    let store =
        store::Store::open(&config.store).with_context(|| format!("opening the store {}", config.store.display()))?;
    let Some(mut service) =
        Service::start("vigie-water", &config.common, &config.standby, store.database(), &shutdown).await?
    else {
        return Ok(());
    };
    // Bound once this instance is the active one: a standby answers no call.
    let listener = tokio::net::TcpListener::bind(config.grpc_addr).await?;
    let core = core::Water::open(store, network, placed, initial_sensors, water_config, service.background())
        .await
        .context("restoring the water state")?;
    service.spawn(tick(core.clone(), config.kpi_interval, service.background()));

    let server =
        WaterServiceServer::new(api::WaterApi::new(core)).max_decoding_message_size(proto::MAX_GRPC_MESSAGE_BYTES);
    let names = [<WaterServiceServer<api::WaterApi> as NamedService>::NAME];
    let security = config.security.security(&service, "water", names[0], METHODS).await?;
    service.serve_grpc(listener, tonic::service::Routes::new(server), &names, security, shutdown).await
}

/// Silent sensors every few seconds; KPIs every `kpi_interval`.
async fn tick(core: Arc<core::Water>, kpi_interval: Duration, stop: CancellationToken) {
    let mut silence = tokio::time::interval(Duration::from_secs(5));
    let mut kpis = tokio::time::interval(kpi_interval);
    loop {
        let outcome = tokio::select! {
            _ = silence.tick() => core.tick().await,
            _ = kpis.tick() => core.publish_kpis(std::time::SystemTime::now()).await,
            _ = stop.cancelled() => return,
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "periodic water work failed; retried at the next tick");
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
