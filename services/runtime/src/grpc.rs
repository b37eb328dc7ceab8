//! Serving gRPC: on an already bound listener (tests bind port 0), with the standard health
//! service, server reflection, Vigie's message-size limit, and graceful shutdown.

use std::task::{Context, Poll};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

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

/// Serves `routes` plus health and reflection until `shutdown` is cancelled, then finishes the
/// requests in flight. `service_names` are reported SERVING by the health service.
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: Routes,
    service_names: &[&str],
    security: Security,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in service_names {
        health.set_service_status(*name, tonic_health::ServingStatus::Serving).await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let routes = routes.add_service(health_service).add_service(reflection);
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
    security: Security,
    shutdown: CancellationToken,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    tokio::select! {
        result = serve(listener, routes, service_names, security, shutdown.clone()) => result,
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
