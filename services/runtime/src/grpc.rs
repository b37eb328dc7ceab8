//! Serving gRPC: on an already bound listener (tests bind port 0), with the standard health
//! service (each service's status, NOT_SERVING while it cannot do its work), server reflection
//! in both versions clients speak (`v1`, and `v1alpha` for grpcio-reflection, Postman and older
//! grpcurl) offering only this server's own services, Vigie's message-size limit, and graceful
//! shutdown.

use anyhow::Context as _;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Whether a server can do its work now: `Err(why)` while it cannot. Its health then answers
/// NOT_SERVING for each of its services and for the server as a whole (`""`), which balancing
/// clients (the gateway's) follow.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A server that can always do its work while it runs.
pub fn always_ready() -> Readiness {
    Arc::new(|| Ok(()))
}

/// How often the health service's statuses are brought up to date.
const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// The fully qualified names of the standard services every server adds.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_SERVICES: [&str; 2] =
    ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// How a service's gRPC server is secured: who may call it, and TLS.
pub struct Security {
    pub auth: crate::grpc_auth::ServiceAuth,
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

impl Security {
    /// Neither checks nor TLS (tests of one service).
    pub fn open() -> Security {
        Security { auth: crate::grpc_auth::ServiceAuth::open(), tls: None }
    }
}

/// Serves `routes` (the services `service_names`, fully qualified) plus health and reflection
/// until `shutdown` is cancelled, then finishes the requests in flight. The health service says
/// what `readiness` says, for each of `service_names` and for the server (`""`); at the shutdown
/// the health `Watch` streams still open are told NOT_SERVING (new connections are refused).
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: Routes,
    service_names: &[&str],
    readiness: Readiness,
    security: Security,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let names: Vec<String> = service_names.iter().map(|n| n.to_string()).collect();
    // The statuses are right before the first call is taken.
    let initial = readiness();
    set_health(&health, &names, status_of(&initial, &names)).await;
    tokio::spawn(report_health(health, names, readiness, initial, shutdown.clone()));
    let files = reflection_files(service_names)?;
    let reflection = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(&files)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
            .include_reflection_service(false);
        service_names
            .iter()
            .copied()
            .chain([HEALTH_SERVICE])
            .chain(REFLECTION_SERVICES)
            .fold(builder, |builder, name| builder.with_service_name(name))
    };
    let routes = routes
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = security.tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .layer(ClientFaultCodesLayer)
        .layer(security.auth)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// Keeps the health service's statuses what `readiness` says (logging each change), until the
/// shutdown; then NOT_SERVING, for the `Watch` streams still open.
async fn report_health(
    health: HealthReporter,
    names: Vec<String>,
    readiness: Readiness,
    mut was: Result<(), String>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_EVERY) => {}
            _ = shutdown.cancelled() => break,
        }
        let now = readiness();
        if now != was {
            set_health(&health, &names, status_of(&now, &names)).await;
            was = now;
        }
    }
    set_health(&health, &names, ServingStatus::NotServing).await;
}

/// The health status `readiness` answered, logged.
fn status_of(readiness: &Result<(), String>, names: &[String]) -> ServingStatus {
    match readiness {
        Ok(()) => {
            tracing::info!(services = ?names, "health: SERVING");
            ServingStatus::Serving
        }
        Err(why) => {
            tracing::warn!(services = ?names, why = %why, "health: NOT_SERVING (this server cannot do its work)");
            ServingStatus::NotServing
        }
    }
}

async fn set_health(health: &HealthReporter, names: &[String], status: ServingStatus) {
    for name in names.iter().map(String::as_str).chain([""]) {
        health.set_service_status(name, status).await;
    }
}

/// The descriptors a server offers by reflection: the files of Vigie's contract that define
/// `service_names`, and those they import, transitively. Another service's file is in it only
/// when one of these imports it (its messages are needed), and is not listed then.
pub fn reflection_files(service_names: &[&str]) -> anyhow::Result<Vec<u8>> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET)?;
    let file_named = |name: &str| set.file.iter().find(|f| f.name() == name);
    let mut wanted: Vec<String> = Vec::new();
    for service in service_names {
        let file = set
            .file
            .iter()
            .find(|f| f.service.iter().any(|s| format!("{}.{}", f.package(), s.name()) == *service))
            .with_context(|| format!("no descriptor of Vigie's contract defines the service {service}"))?;
        wanted.push(file.name().to_owned());
    }
    let mut i = 0;
    while let Some(name) = wanted.get(i) {
        let file = file_named(name).with_context(|| format!("the descriptor {name} is imported but missing"))?;
        for dependency in &file.dependency {
            if !wanted.contains(dependency) {
                wanted.push(dependency.clone());
            }
        }
        i += 1;
    }
    let files = set.file.iter().filter(|f| wanted.iter().any(|w| w == f.name())).cloned().collect();
    Ok(prost_types::FileDescriptorSet { file: files }.encode_to_vec())
}

/// Refusals listed in a stream summary (all are counted).
pub const MAX_LISTED_REFUSALS: usize = 100;

/// Consumes a client stream of field data: `record` stores each message (or refuses it, and the
/// stream goes on), `commit` makes what was recorded durable: every `group` accepted messages,
/// whenever no further message has arrived yet (so a quiet stream's data is not held back waiting
/// for a group to fill, while a busy one still shares each flush), and at the end. The summary is returned only after the last commit, so `accepted` counts only
/// what is durable. A broken stream (undecodable, cut) ends the loop; what was accepted stays.
pub async fn ingest<M, R, C, F, E>(
    mut stream: tonic::Streaming<M>,
    mut record: R,
    group: u64,
    commit: C,
) -> Result<proto::v1::StreamSummary, tonic::Status>
where
    R: FnMut(M) -> Result<(), E>,
    C: Fn() -> F,
    F: std::future::Future<Output = Result<(), E>>,
    E: Into<tonic::Status>,
{
    let commit = || async { commit().await.map_err(Into::<tonic::Status>::into) };
    let mut summary = proto::v1::StreamSummary::default();
    let refuse = |summary: &mut proto::v1::StreamSummary, index: u64, message: String| {
        summary.refused += 1;
        if summary.errors.len() < MAX_LISTED_REFUSALS {
            summary.errors.push(proto::v1::StreamRefusal { index, message });
        }
    };
    let (mut index, mut uncommitted) = (0u64, 0u64);
    loop {
        let next = stream.message();
        tokio::pin!(next);
        let ready = match futures::poll!(next.as_mut()) {
            std::task::Poll::Ready(ready) => ready,
            std::task::Poll::Pending => {
                if uncommitted > 0 {
                    commit().await?;
                    uncommitted = 0;
                }
                next.await
            }
        };
        let message = match ready {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                refuse(&mut summary, index, format!("stream ended: {}", status.message()));
                break;
            }
        };
        match record(message) {
            Ok(()) => {
                summary.accepted += 1;
                uncommitted += 1;
                crate::metrics::global().ingest_accepted.inc();
            }
            Err(refused) => {
                crate::metrics::global().ingest_refused.inc();
                let status: tonic::Status = refused.into();
                refuse(&mut summary, index, status.message().to_owned());
            }
        }
        index += 1;
        if uncommitted >= group {
            commit().await?;
            uncommitted = 0;
        }
    }
    commit().await?;
    if summary.refused > 0 {
        tracing::info!(accepted = summary.accepted, refused = summary.refused, "stream with refusals");
    }
    Ok(summary)
}

/// [`serve`], but gives up on calls still in flight `timeout` after `shutdown` is cancelled.
pub async fn serve_until_shutdown(
    listener: tokio::net::TcpListener,
    routes: Routes,
    service_names: &[&str],
    readiness: Readiness,
    security: Security,
    shutdown: CancellationToken,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    tokio::select! {
        result = serve(listener, routes, service_names, readiness, security, shutdown.clone()) => result,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(timeout).await } => {
            tracing::warn!("calls still in flight after the shutdown timeout; stopping anyway");
            Ok(())
        }
    }
}

/// Two of tonic's answers to a bad request blame the server; this layer makes them blame the
/// client, as integrators expect (and as other gRPC servers do):
/// - a request larger than the decoding limit: tonic says OUT_OF_RANGE; gRPC's convention is
///   RESOURCE_EXHAUSTED;
/// - a request that is not a valid protobuf message: tonic says INTERNAL (server fault, a client
///   may retry); it is INVALID_ARGUMENT (the client's fault, retrying cannot help).
///
/// tonic sends both as trailers-only responses (status in the headers), before any handler runs;
/// nothing else is rewritten.
#[derive(Debug, Clone, Copy)]
pub struct ClientFaultCodesLayer;

impl<S> tower::Layer<S> for ClientFaultCodesLayer {
    type Service = ClientFaultCodes<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ClientFaultCodes(inner)
    }
}

#[derive(Debug, Clone)]
pub struct ClientFaultCodes<S>(S);

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for ClientFaultCodes<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, fn(http::Response<ResBody>) -> http::Response<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        use futures::TryFutureExt;
        self.0.call(request).map_ok(rewrite_client_fault::<ResBody>)
    }
}

fn rewrite_client_fault<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let Some(status) = headers.get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_owned) else {
        return response;
    };
    // grpc-message is percent-encoded.
    let message =
        headers.get("grpc-message").and_then(|v| v.to_str().ok()).map(|m| m.replace("%20", " ")).unwrap_or_default();
    let code = match status.as_str() {
        "11" if message.contains("decoded message length too large") => "8",
        "13" if message.starts_with("failed to decode Protobuf message") => "3",
        _ => return response,
    };
    headers.insert("grpc-status", http::HeaderValue::from_static(code));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn files(services: &[&str]) -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(&reflection_files(services).unwrap()[..]).unwrap();
        set.file.iter().map(|f| f.name().to_owned()).collect()
    }

    #[test]
    fn a_server_offers_its_services_files_and_their_imports_only() {
        let lighting = files(&["vigie.lighting.v1.LightingService"]);
        assert!(lighting.contains(&"vigie/lighting/v1/lighting.proto".to_owned()), "{lighting:?}");
        assert!(lighting.contains(&"vigie/v1/common.proto".to_owned()), "{lighting:?}");
        assert!(lighting.contains(&"google/protobuf/timestamp.proto".to_owned()), "{lighting:?}");
        for other in ["vigie/water/v1/water.proto", "vigie/transport/v1/transport.proto", "vigie/v1/event.proto"] {
            assert!(!lighting.iter().any(|f| f == other), "{other} in {lighting:?}");
        }
        let ops = files(&["vigie.ops.v1.OpsView"]);
        assert!(ops.contains(&"vigie/ops/v1/ops.proto".to_owned()), "{ops:?}");
        assert!(!ops.iter().any(|f| f.contains("lighting")), "{ops:?}");
    }

    #[test]
    fn a_service_the_contract_does_not_define_is_refused() {
        let error = reflection_files(&["vigie.bench.v1.Echo"]).unwrap_err();
        assert!(error.to_string().contains("vigie.bench.v1.Echo"), "{error}");
    }
}
