//! Vigie's street-lighting service.
//!
//! - [`domain`]: the rules, pure (valid streetlights and reports, which report is the latest).
//! - [`store`]: the sled database, the only module that sees sled; writes go with their outbox entry.
//! - [`api`]: the gRPC service `vigie.lighting.v1.LightingService`.
//! - [`run`]: wires them to NATS, the outbox relay and a gRPC listener, and shuts down gracefully.

pub mod api;
pub mod domain;
pub mod store;

use anyhow::Context;
use async_nats::jetstream;
use proto::lighting::lighting_service_server::LightingServiceServer;
use runtime::config::CommonConfig;
use runtime::outbox::{self, RelaySettings};
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

    #[command(flatten)]
    pub common: CommonConfig,
}

/// Runs the service on `listener` until `shutdown` is cancelled; then stops accepting calls,
/// finishes those in flight, drains the outbox and NATS, and flushes the store, all within
/// `shutdown_timeout`.
pub async fn run(config: Config, listener: tokio::net::TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let territory = territory::Territory::load(&config.territory).context("loading the territory")?;
    territory.log_summary();
    let db = sled::Config::new()
        .path(&config.store)
        .open()
        .with_context(|| format!("opening the store {}", config.store.display()))?;
    let store = store::Store::open(&db).context("opening the store's trees")?;
    tracing::info!(streetlights = store.streetlight_count(), outbox = store.outbox().depth(), "store opened");

    let nats = runtime::bus::connect(&config.common.nats_url, "vigie-lighting").await?;
    let mut js = jetstream::new(nats.clone());
    js.set_timeout(std::time::Duration::from_secs(5));
    let relay_stop = CancellationToken::new();
    let relay = tokio::spawn(outbox::relay(
        store.outbox().clone(),
        js,
        config.common.stream.clone(),
        RelaySettings::default(),
        relay_stop.clone(),
        config.common.shutdown_timeout,
    ));

    let api = api::LightingApi::new(store.clone(), Arc::new(territory));
    let server = LightingServiceServer::new(api).max_decoding_message_size(proto::MAX_GRPC_MESSAGE_BYTES);
    let routes = tonic::service::Routes::new(server);
    tracing::info!(addr = %listener.local_addr()?, "gRPC listening");
    let names = [<LightingServiceServer<api::LightingApi> as NamedService>::NAME];
    let serving = runtime::grpc::serve(listener, routes, &names, shutdown.clone());
    let timeout = config.common.shutdown_timeout;
    let served = tokio::select! {
        result = serving => result,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(timeout).await } => {
            tracing::warn!("calls still in flight after the shutdown timeout; stopping anyway");
            Ok(())
        }
    };

    // No call is in flight any more: what the outbox holds is all there is to publish.
    relay_stop.cancel();
    if let Err(e) = relay.await {
        tracing::error!(error = %e, "outbox relay task failed");
    }
    match tokio::time::timeout(timeout, nats.drain()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "NATS drain failed"),
        Err(_) => tracing::warn!("NATS drain timed out"),
    }
    db.flush_async().await.context("flushing the store")?;
    tracing::info!(outbox = store.outbox().depth(), "stopped");
    served
}
