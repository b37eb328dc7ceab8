//! The field simulator: plays a territory's real data into Vigie's services over their public
//! gRPC APIs, at a configurable rate, reproducibly (seeded).
//!
//! - [`lighting`]: the real streetlight inventory and the reports of a lighting controller.

pub mod lighting;

use anyhow::Context;
use proto::lighting::lighting_service_client::LightingServiceClient;
use proto::lighting::{RegisterStreetlightsRequest, ReportStatusRequest};
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "vigie-simulator", version, about = "Plays a territory's field activity into Vigie's services")]
pub struct Config {
    /// gRPC endpoint of the lighting service.
    #[arg(long, env = "VIGIE_SIM_LIGHTING_URL", default_value = "http://127.0.0.1:50061")]
    pub lighting_url: String,

    /// Territory folder (its layers decide what is simulated).
    #[arg(long, env = "VIGIE_TERRITORY")]
    pub territory: PathBuf,

    /// Streetlight status reports per second.
    #[arg(long, env = "VIGIE_SIM_LIGHTING_RATE", default_value_t = 20.0)]
    pub lighting_rate: f64,

    /// Probability that a working lamp reports a failure, per report.
    #[arg(long, env = "VIGIE_SIM_LAMP_FAILURE", default_value_t = 0.002)]
    pub lamp_failure: f64,

    /// Seed of the random generator: the same seed plays the same sequence.
    #[arg(long, env = "VIGIE_SIM_SEED", default_value_t = 1)]
    pub seed: u64,

    /// Stop after this long (e.g. 30s); runs until interrupted when absent.
    #[arg(long, env = "VIGIE_SIM_DURATION", value_parser = runtime::config::parse_duration)]
    pub duration: Option<Duration>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "VIGIE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// Registration batches (the service takes at most 10,000 per call).
const REGISTRATION_BATCH: usize = 5_000;

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !(config.lighting_rate.is_finite() && config.lighting_rate > 0.0) {
        anyhow::bail!("--lighting-rate must be a positive number");
    }
    if !(0.0..=1.0).contains(&config.lamp_failure) {
        anyhow::bail!("--lamp-failure must be between 0 and 1");
    }
    let inventory_path = config.territory.join("lighting/streetlights.geojson");
    if !inventory_path.is_file() {
        tracing::warn!(path = %inventory_path.display(), "no streetlight inventory in this territory: nothing to simulate for lighting");
        shutdown.cancelled().await;
        return Ok(());
    }
    let lights = lighting::read_inventory(&inventory_path)?;
    tracing::info!(streetlights = lights.len(), "inventory read");

    let mut client = connect(&config.lighting_url, &shutdown).await?;
    let mut registered = 0;
    for batch in lights.chunks(REGISTRATION_BATCH) {
        let reply = client
            .register_streetlights(RegisterStreetlightsRequest { streetlights: batch.to_vec() })
            .await
            .context("registering streetlights")?
            .into_inner();
        registered += reply.registered + reply.unchanged;
    }
    tracing::info!(registered, "inventory registered");

    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut faulty: HashSet<usize> = HashSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / config.lighting_rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = config.duration.map(|d| tokio::time::Instant::now() + d);
    let (mut sent, mut refused) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let index = rng.random_range(0..lights.len());
        // A working lamp fails now and then; a failed one is repaired after a while.
        if faulty.contains(&index) {
            if rng.random_bool(0.05) {
                faulty.remove(&index);
            }
        } else if rng.random_bool(config.lamp_failure) {
            faulty.insert(index);
        }
        let report = lighting::report(&mut rng, &lights[index], SystemTime::now(), faulty.contains(&index));
        match client.report_status(ReportStatusRequest { report: Some(report) }).await {
            Ok(_) => sent += 1,
            Err(status) => {
                refused += 1;
                tracing::warn!(code = ?status.code(), message = status.message(), "report refused");
            }
        }
        if (sent + refused) % 1000 == 0 {
            tracing::info!(sent, refused, faulty = faulty.len(), "lighting reports");
        }
    }
    tracing::info!(sent, refused, "simulation stopped");
    Ok(())
}

/// Connects, retrying while the service starts.
async fn connect(
    url: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<LightingServiceClient<tonic::transport::Channel>> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned()).context("--lighting-url")?;
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                return Ok(LightingServiceClient::new(channel).max_encoding_message_size(proto::MAX_GRPC_MESSAGE_BYTES));
            }
            Err(e) => tracing::info!(error = %e, url, "lighting service not reachable yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => anyhow::bail!("interrupted before the lighting service was reachable"),
        }
    }
}
