//! Vigie's gateway.
//!
//! - [`view`]: the operations view, pure (latest state per asset from events in stream order).
//! - [`store`]: the view persisted in sled with the stream sequence it is current at.
//! - [`consumer`]: the durable JetStream consumer that feeds the view, exactly once.
//! - [`live`]: the view shared with WebSocket sessions, and the broadcast of deltas.
//! - [`opsview`]: the gRPC face (`vigie.ops.v1.OpsView`): the live stream and the queries.
//! - [`metrics`]: the gateway's Prometheus metrics (served at `/metrics` with the common ones).
//! - [`http`]: `/health`, `/ws` (live protocol v1, see `proto::live`), the console's files.
//! - [`basemap`]: the territory for the console (communes, offline basemap as GeoJSON).
//! - [`api`]: the REST API under `/api/v1` (queries, audit log, alarm actions), with its OpenAPI
//!   document; [`commands`]: operators' commands over REST, routed to the services over gRPC.

pub mod api;
pub mod basemap;
pub mod commands;
pub mod consumer;
pub mod http;
pub mod live;
pub mod metrics;
pub mod opsview;
pub mod store;
pub mod view;

use anyhow::Context;
use async_nats::jetstream;
use runtime::config::CommonConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "vigie-gateway", version, about = "Vigie gateway: operations view, live WebSocket, console")]
pub struct Config {
    /// Address of the HTTP server (console, WebSocket, health). Port 0 picks a free port (logged).
    #[arg(long, env = "VIGIE_GATEWAY_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Folder of the gateway's sled database (created if missing).
    #[arg(long, env = "VIGIE_GATEWAY_STORE", default_value = "var/gateway")]
    pub store: PathBuf,

    /// Name of the durable JetStream consumer; each gateway replica has its own.
    #[arg(long, env = "VIGIE_GATEWAY_CONSUMER", default_value = "gateway")]
    pub consumer: String,

    /// gRPC endpoint of the lighting service, for operators' commands (none: refused with 503).
    #[arg(long, env = "VIGIE_GATEWAY_LIGHTING_URL")]
    pub lighting_url: Option<String>,

    /// gRPC endpoint of the water service, for valve commands.
    #[arg(long, env = "VIGIE_GATEWAY_WATER_URL")]
    pub water_url: Option<String>,

    /// gRPC endpoint of the reports service, for report status changes.
    #[arg(long, env = "VIGIE_GATEWAY_REPORTS_URL")]
    pub reports_url: Option<String>,

    /// Address of the gRPC face for integrators (`vigie.ops.v1.OpsView`); not served when absent.
    /// Port 0 picks a free port (logged).
    #[arg(long, env = "VIGIE_GATEWAY_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    /// How often each live session gets a heartbeat; a client silent for six of them is closed.
    #[arg(long, env = "VIGIE_GATEWAY_HEARTBEAT", default_value = "5s", value_parser = runtime::config::parse_duration)]
    pub heartbeat: std::time::Duration,

    /// Territory folder (communes.geojson, streets.geojson): the console's commune selector and
    /// offline basemap. Without it the console shows the live assets on a blank background.
    #[arg(long, env = "VIGIE_TERRITORY")]
    pub territory: Option<PathBuf>,

    /// Folder of the built console (served at `/` when present).
    #[arg(long, env = "VIGIE_UI_DIR", default_value = "ui-client/dist")]
    pub ui_dir: PathBuf,

    #[command(flatten)]
    pub common: CommonConfig,
}

pub async fn run(config: Config, listener: tokio::net::TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    proto::ids::AssetId::parse_as("consumer name", &config.consumer).context("--consumer")?;
    let basemap = basemap::Basemap::load(config.territory.as_deref()).context("reading --territory")?;
    let store =
        store::Store::open(&config.store).with_context(|| format!("opening the store {}", config.store.display()))?;
    let loaded = store.load().context("loading the view")?;
    tracing::info!(
        assets = loaded.assets.len(),
        alarms = loaded.alarms.len(),
        applied_seq = loaded.applied_seq,
        "view restored from the store"
    );
    let view =
        view::OperationsView::restore(loaded.assets, loaded.alarms, loaded.commands, loaded.kpis, loaded.applied_seq);
    let live = Arc::new(live::Live::new(view));

    let nats = runtime::bus::connect(&config.common.nats_url, "vigie-gateway").await?;
    let consumer = consumer::Consumer {
        js: jetstream::new(nats.clone()),
        live: live.clone(),
        store: store.clone(),
        durable_name: config.consumer.clone(),
        stream: config.common.stream.clone(),
    };
    let consuming = tokio::spawn(consumer.run(shutdown.clone()));

    let api = api::ApiState { live: live.clone(), store: store.clone(), js: jetstream::new(nats.clone()) };
    if config.heartbeat < std::time::Duration::from_millis(100) {
        anyhow::bail!("--heartbeat must be at least 100ms");
    }
    let grpc = match config.grpc_addr {
        Some(addr) => {
            use proto::ops::ops_view_server::OpsViewServer;
            use tonic::server::NamedService;
            let listener = tokio::net::TcpListener::bind(addr).await.context("binding --grpc-addr")?;
            tracing::info!(addr = %listener.local_addr()?, "gRPC listening");
            let ops = opsview::OpsViewApi { api: api.clone(), nats: nats.clone(), heartbeat: config.heartbeat };
            let routes = tonic::service::Routes::new(OpsViewServer::new(ops));
            let (stop, timeout) = (shutdown.clone(), config.common.shutdown_timeout);
            Some(tokio::spawn(async move {
                let names = [<OpsViewServer<opsview::OpsViewApi> as NamedService>::NAME];
                if let Err(e) = runtime::grpc::serve_until_shutdown(listener, routes, &names, stop, timeout).await {
                    tracing::error!(error = format!("{e:#}"), "gRPC server failed");
                }
            }))
        }
        None => None,
    };
    let scraped = live.clone();
    let state = http::AppState { live, nats: nats.clone(), shutdown: shutdown.clone(), heartbeat: config.heartbeat };
    let services = commands::Services::connect(
        config.lighting_url.as_deref(),
        config.water_url.as_deref(),
        config.reports_url.as_deref(),
    )?;
    let app = api::router(api)
        .merge(commands::router(services))
        .merge(basemap::router(basemap))
        .merge(runtime::metrics::router(move || {
            metrics::get().applied_seq.set(scraped.applied_seq() as i64);
        }))
        .merge(http::router(state, Some(config.ui_dir.clone())));
    tracing::info!(addr = %listener.local_addr()?, "HTTP listening");
    let timeout = config.common.shutdown_timeout;
    let serving = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let served = tokio::select! {
        result = serving => result.context("HTTP server"),
        _ = async { shutdown.cancelled().await; tokio::time::sleep(timeout).await } => Ok(()),
    };
    if let Some(grpc) = grpc {
        let _ = grpc.await;
    }
    if let Err(e) = consuming.await {
        tracing::error!(error = %e, "consumer task failed");
    }
    match tokio::time::timeout(timeout, nats.drain()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "NATS drain failed"),
        Err(_) => tracing::warn!("NATS drain timed out"),
    }
    store.flush().await.context("flushing the store")?;
    tracing::info!("stopped");
    served
}
