//! The start and the end of every domain service's `run`, written once: connect to NATS (with
//! `--standby`, stand by until this instance holds the lease, see [`crate::replica`]), start
//! the outbox relay and the metrics endpoint; then, once the gRPC server has stopped, stop the
//! background work, publish what the outbox still holds, drain NATS, flush the store and release
//! the lease, all within the shutdown timeout. What lies between (the domain, its core, its API)
//! is the service's own.

use crate::config::CommonConfig;
use crate::lease::{self, Fence};
use crate::outbox::{self, Outbox, RelayHandle};
use crate::replica::{self, StandbyConfig};
use crate::store::Database;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// With `--standby`: the lease this instance holds, and what releases it at the end.
    lease: Option<(Fence, CancellationToken, JoinHandle<()>)>,
}

impl Service {
    /// Connects to NATS as `client_name`, stands by while another instance is active (with
    /// `--standby`), and starts publishing the outbox and serving metrics. `None`: `shutdown`
    /// came while standing by.
    pub async fn start(
        client_name: &str,
        common: &CommonConfig,
        standby: &StandbyConfig,
        database: &Database,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Service>> {
        let nats = crate::bus::connect(common, client_name).await?;
        let outbox = database.outbox();
        // Served by a standby too: its liveness (its gRPC port waits for the lease).
        let metrics = crate::metrics::serve_service(common.metrics_addr, outbox, shutdown.clone()).await?;
        let lease = if standby.standby {
            let Some(fence) = become_active(database, &nats, common, standby, shutdown).await? else {
                crate::bus::drain(&nats, common.shutdown_timeout).await;
                if let Some(metrics) = metrics {
                    let _ = metrics.await;
                }
                return Ok(None);
            };
            outbox.replicate(outbox::Replication {
                ack_timeout: standby.replication_timeout,
                fence: fence.0.clone(),
                tail: fence.3.clone(),
            });
            Some((fence.0, fence.1, fence.2))
        } else {
            None
        };
        let relay = outbox::spawn_relay(outbox, &nats, &common.stream, common.shutdown_timeout);
        Ok(Some(Service {
            nats,
            outbox: outbox.clone(),
            relay,
            metrics,
            background: CancellationToken::new(),
            tasks: Vec::new(),
            timeout: common.shutdown_timeout,
            stream_replicas: common.stream.replicas,
            lease,
        }))
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

    /// Whether this instance can take writes now (its gRPC health says so, see
    /// [`crate::grpc::Readiness`]). Its NATS link being down alone does not stop it: the outbox
    /// keeps what it accepts until the link is back. What does:
    /// - its store failed to write (a full or failing disk): writes are refused until it restarts;
    ///   or stopped answering (see [`crate::store_fault`]). Reads would still work from the
    ///   store, but an instance that cannot write leaves the balancing (a client's retry goes
    ///   to another instance, or waits), which is what balancers and Kubernetes can express;
    ///   (when every worker is parked inside a deadlocked store, the health itself cannot
    ///   answer: the watchdog's exit is what ends it);
    /// - with `--standby`, its lease lapsed (another instance may be active), or NATS is
    ///   unreachable (a write is acknowledged only once JetStream holds it).
    fn readiness(&self) -> crate::grpc::Readiness {
        let fence = self.lease.as_ref().map(|(fence, _, _)| fence.clone());
        let nats = self.nats.clone();
        std::sync::Arc::new(move || {
            if crate::store_fault::failed() {
                return Err("its store failed to write (a full or failing disk); writes are refused".into());
            }
            // The reason stays the same while the stall lasts (the health does not flap).
            if crate::store_fault::stalled_for().is_some() {
                return Err(format!(
                    "its store has not finished a flush for {} s or more",
                    crate::store_fault::STALL_NOT_SERVING.as_secs()
                ));
            }
            if let Some(fence) = &fence {
                if !fence.holds() {
                    return Err("it no longer holds the lease of the active instance".into());
                }
                if !matches!(nats.connection_state(), async_nats::connection::State::Connected) {
                    return Err("NATS is unreachable, and with --standby a write waits for JetStream".into());
                }
            }
            Ok(())
        })
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
        let readiness = self.readiness();
        let served = crate::grpc::serve_until_shutdown(
            listener,
            routes,
            service_names,
            readiness,
            security,
            shutdown,
            self.timeout,
        )
        .await;
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
        let synced = self.outbox.sync().await;
        let lost = self.lease.as_ref().is_some_and(|(fence, _, _)| fence.lost().is_cancelled());
        if let Some((_, release, keeper)) = self.lease {
            // What the relay sent is at the server before the lease goes.
            if !lost {
                let _ = tokio::time::timeout(self.timeout, self.nats.flush()).await;
            }
            release.cancel();
            let _ = keeper.await;
        }
        // A fenced instance sends nothing more: what the client still buffers (publishes made
        // before a disconnection) would reach the stream after another instance took over.
        if !lost {
            crate::bus::drain(&self.nats, self.timeout).await;
        }
        if let Err(e) = synced {
            tracing::error!(error = %e, "flushing the store at shutdown failed");
            return Err(anyhow::anyhow!("flushing the store: {e}"));
        }
        tracing::info!(outbox = self.outbox.depth(), "stopped");
        if lost {
            anyhow::bail!("this instance lost its lease: another one is active");
        }
        served
    }
}

/// What an active instance holds: its lease's fence, what releases the lease, the task that
/// keeps it, and the state bucket's last sequence as this instance wrote it.
type Active = (Fence, CancellationToken, JoinHandle<()>, Arc<AtomicU64>);

/// Stands by until this instance holds the service's lease, following the state bucket; then
/// brings the store to the bucket's end and marks the bucket as its own. `None` if `shutdown`
/// came first.
async fn become_active(
    database: &Database,
    nats: &async_nats::Client,
    common: &CommonConfig,
    standby: &StandbyConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Active>> {
    let js = crate::bus::jetstream(nats);
    let unit = database.unit();
    let replicas = common.stream.replicas;
    if standby.lease_ttl < Duration::from_secs(2) || standby.lease_ttl > Duration::from_secs(600) {
        anyhow::bail!("--lease-ttl must be between 2s and 10m");
    }
    if standby.replication_timeout.is_zero() {
        anyhow::bail!("--replication-timeout must be more than 0");
    }
    // The buckets, once NATS answers (a standby may start before the cluster has a leader).
    let leases = loop {
        let made = async {
            replica::ensure_state_bucket(&js, unit, replicas).await?;
            lease::bucket(&js, standby.lease_ttl, replicas).await
        };
        match made.await {
            Ok(leases) => break leases,
            Err(e) if e.downcast_ref::<replica::Misconfigured>().is_some() => return Err(e),
            Err(e) => tracing::warn!(error = %e, "the state and leases buckets are not reachable yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
    };
    let key = unit.name();
    let key = key.as_str();
    let instance = database.outbox().publisher().to_owned();
    let mut follower: Option<replica::Follower> = None;
    // An instance with nothing in its store leaves a bucket that was never written to another
    // one for a while: started together, the instance with the state must be the one to seed.
    let empty_store = database.state_trees().all(|(_, tree)| tree.is_empty());
    let started = tokio::time::Instant::now();
    let lease = loop {
        let yielding = empty_store
            && started.elapsed() < standby.lease_ttl
            && replica::last_seq(&js, unit).await.unwrap_or(0) == 0;
        if yielding {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = shutdown.cancelled() => return Ok(None),
            }
        }
        match lease::try_acquire(&leases, key, &instance, standby.lease_ttl).await {
            Ok(Some(lease)) => break lease,
            Ok(None) => {
                if follower.as_ref().is_none_or(|f| f.has_stopped()) {
                    if follower.is_none() {
                        tracing::info!(key, "another instance is active: standing by");
                    }
                    match replica::follow(database, &js).await {
                        Ok(f) => follower = Some(f),
                        Err(e) if e.downcast_ref::<replica::Misconfigured>().is_some() => return Err(e),
                        Err(e) => tracing::warn!(error = %e, "following the state bucket failed; retrying"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "the lease could not be tried; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
    };
    let fence = lease.fence();
    let release = CancellationToken::new();
    let keeper = tokio::spawn(lease.keep(release.clone()));
    // Losing the lease stops the service (the supervisor starts it again, as a standby).
    let (lost, stop) = (fence.lost(), shutdown.clone());
    tokio::spawn(async move {
        lost.cancelled().await;
        stop.cancel();
    });
    tracing::info!(key, "this instance holds the lease: catching up with the state bucket");
    const CATCH_UP: Duration = Duration::from_secs(300);
    // The bucket's stream may be electing a leader (its node lost): tried again while the
    // lease holds.
    let mut last =
        patiently("reading the state bucket's end", &fence, shutdown, || replica::last_seq(&js, unit)).await?;
    let local = database.outbox().state_seq()?;
    let tail = Arc::new(AtomicU64::new(0));
    let publisher = replica::Publisher { client: nats, js: &js, unit, instance: &instance, tail: &tail, fence: &fence };
    let read_anew = || async { replica::follow(database, &js).await?.catch_up(last, CATCH_UP).await };
    match follower {
        // A follower whose consumer was on a node now lost may take long to recover: read anew.
        Some(follower) => {
            if let Err(e) = follower.catch_up(last, Duration::from_secs(10)).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "the standby's copy did not catch up: reading the state bucket anew"
                );
                patiently("reading the state bucket", &fence, shutdown, read_anew).await?;
            }
        }
        None if last == 0 => {
            // A bucket that never held anything: this store's state is the first.
            last =
                patiently("seeding the state bucket", &fence, shutdown, || replica::seed(database, &publisher)).await?;
        }
        // This instance was the active one, and nothing was published since: its store (and
        // what its outbox still holds) goes on.
        None if local == last => {}
        None => patiently("reading the state bucket", &fence, shutdown, read_anew).await?,
    }
    // From here on, a batch of another instance's is refused by the server, and this one's
    // would be if another took over (see `replica::Publisher::tail`).
    tail.store(last, Ordering::Release);
    let marked = patiently("taking the state bucket over", &fence, shutdown, || replica::take_over(&publisher)).await?;
    database.outbox().record_state_seq(marked)?;
    database.outbox().sync().await?;
    if !fence.holds() {
        anyhow::bail!("the lease lapsed while this instance caught up with the state bucket");
    }
    tracing::info!(key, publisher = %instance, state_seq = database.outbox().state_seq()?, "this instance is the active one");
    Ok(Some((fence, release, keeper, tail)))
}

/// Runs `attempt` until it succeeds, once a second, while this instance holds its lease, for
/// at most [`PATIENCE`] (then the instance gives the lease up: an error that does not pass must
/// not keep the service from every instance) and until `shutdown`.
async fn patiently<T, F, Fut>(
    what: &str,
    fence: &Fence,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let outcome = tokio::select! {
            outcome = attempt() => outcome,
            _ = shutdown.cancelled() => anyhow::bail!("{what}: stopped"),
        };
        match outcome {
            Ok(value) => return Ok(value),
            Err(e) if !fence.holds() || matches!(e.downcast_ref(), Some(crate::store::StoreError::Fenced)) => {
                return Err(e.context(format!("{what}: the lease was lost meanwhile")));
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("{what}: still failing after {PATIENCE:?}")));
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "{what} failed; trying again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => anyhow::bail!("{what}: stopped"),
        }
    }
}

/// How long a new active instance tries to catch up and take the bucket over.
const PATIENCE: Duration = Duration::from_secs(300);
