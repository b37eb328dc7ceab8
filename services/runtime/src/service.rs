//! The start and the end of every domain service's `run`, written once: connect to NATS, start
//! the outbox relay and the metrics endpoint; then, once the gRPC server has stopped, stop the
//! background work, publish what the outbox still holds, drain NATS and flush the store, all
//! within the shutdown timeout. What lies between (the domain, its core, its API) is the
//! service's own.

use crate::config::CommonConfig;
use crate::outbox::{self, Outbox, RelayHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Service {
    nats: async_nats::Client,
    outbox: Outbox,
    relay: RelayHandle,
    metrics: Option<JoinHandle<()>>,
    background: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    timeout: Duration,
    stream_replicas: u8,
}

impl Service {
    /// Connects to NATS as `client_name`, and starts publishing `outbox` and serving metrics.
    pub async fn start(
        client_name: &str,
        common: &CommonConfig,
        outbox: &Outbox,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Service> {
        let nats = crate::bus::connect(common, client_name).await?;
        let relay = outbox::spawn_relay(outbox, &nats, &common.stream, common.shutdown_timeout);
        let metrics = crate::metrics::serve_service(common.metrics_addr, outbox, shutdown.clone()).await?;
        Ok(Service {
            nats,
            outbox: outbox.clone(),
            relay,
            metrics,
            background: CancellationToken::new(),
            tasks: Vec::new(),
            timeout: common.shutdown_timeout,
            stream_replicas: common.stream.replicas,
        })
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// The copies each stream this service creates keeps (`--stream-replicas`).
    pub fn stream_replicas(&self) -> u8 {
        self.stream_replicas
    }

    /// Cancelled once no call is in flight any more: the service's own timers and tasks stop then
    /// (before the outbox's last publication, so that nothing is written after it).
    pub fn background(&self) -> CancellationToken {
        self.background.clone()
    }

    /// Runs `task` until the end; it should return once [`Service::background`] is cancelled.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Serves an HTTP face (with each caller's address) on `listener` until the background stops.
    pub fn serve_http(&mut self, listener: tokio::net::TcpListener, app: axum::Router) {
        let stop = self.background.clone();
        self.spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
    }

    /// Serves gRPC until `shutdown`, then stops the service in order (see the module's comment).
    pub async fn serve_grpc(
        self,
        listener: tokio::net::TcpListener,
        routes: tonic::service::Routes,
        service_names: &[&str],
        security: crate::grpc::Security,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %listener.local_addr()?, "gRPC listening");
        let served =
            crate::grpc::serve_until_shutdown(listener, routes, service_names, security, shutdown, self.timeout).await;
        // No call is in flight any more: once the background work has stopped, what the outbox
        // holds is all there is to publish.
        self.background.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.relay.finish().await;
        if let Some(metrics) = self.metrics {
            let _ = metrics.await;
        }
        crate::bus::drain(&self.nats, self.timeout).await;
        if let Err(e) = self.outbox.flush().await {
            tracing::error!(error = %e, "flushing the store at shutdown failed");
            return Err(anyhow::anyhow!("flushing the store: {e}"));
        }
        tracing::info!(outbox = self.outbox.depth(), "stopped");
        served
    }
}
