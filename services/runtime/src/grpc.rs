//! Serving gRPC: on an already bound listener (tests bind port 0), with the standard health
//! service, server reflection, Vigie's message-size limit, and graceful shutdown.

use std::task::{Context, Poll};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

/// Serves `routes` plus health and reflection until `shutdown` is cancelled, then finishes the
/// requests in flight. `service_names` are reported SERVING by the health service.
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: Routes,
    service_names: &[&str],
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
    tonic::transport::Server::builder()
        .layer(OversizeIsResourceExhaustedLayer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// tonic answers a request larger than the decoding limit with OUT_OF_RANGE; gRPC's convention
/// (and every other implementation) says RESOURCE_EXHAUSTED. This layer rewrites exactly that
/// answer, which tonic sends as a trailers-only response (status in the headers).
#[derive(Debug, Clone, Copy)]
pub struct OversizeIsResourceExhaustedLayer;

impl<S> tower::Layer<S> for OversizeIsResourceExhaustedLayer {
    type Service = OversizeIsResourceExhausted<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OversizeIsResourceExhausted(inner)
    }
}

#[derive(Debug, Clone)]
pub struct OversizeIsResourceExhausted<S>(S);

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for OversizeIsResourceExhausted<S>
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
        self.0.call(request).map_ok(rewrite_oversize_status::<ResBody>)
    }
}

fn rewrite_oversize_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v == "11");
    // grpc-message is percent-encoded: "Error, decoded message length too large: ..."
    let too_large = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.contains("message%20length%20too%20large") || m.contains("message length too large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}
