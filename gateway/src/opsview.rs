//! The gRPC face of the operations view (`vigie.ops.v1.OpsView`), for integrating systems: the
//! same live stream as the WebSocket (frames as JSON text) and the same queries as the REST API.

use proto::live::Filter;
use proto::ops::ops_view_server::OpsView;
use proto::ops::{AuditRequest, JsonAnswer, ListRequest, LiveFrame, SubscribeRequest};
use std::pin::Pin;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::auth::Principal;
use crate::rest::{self, ApiError, ApiState, AuditParams, ListQuery};
use crate::subscription::{End, Feed, Next, Refused, Subscription};
use axum::extract::ws::Utf8Bytes;

/// Frames buffered per stream; a stream that does not keep up falls behind the broadcast and
/// gets a fresh snapshot.
const STREAM_BUFFER: usize = 1024;

pub struct OpsViewApi {
    pub api: ApiState,
    /// What the live stream reads from, as the WebSocket's sessions do.
    pub feed: Feed,
}

impl OpsViewApi {
    /// The caller, from its `authorization: Bearer <token>` metadata (an integrator's credential
    /// or an operator's access token).
    fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("this needs authorization: Bearer <token> metadata"))?;
        let principal =
            self.feed.authority.principal(token.trim()).map_err(|e| Status::unauthenticated(e.to_string()))?;
        crate::access::reader(&principal)?;
        Ok(principal)
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e.status().as_u16() {
            400 | 413 => Status::invalid_argument(e.message().to_owned()),
            401 => Status::unauthenticated(e.message().to_owned()),
            403 => Status::permission_denied(e.message().to_owned()),
            404 => Status::not_found(e.message().to_owned()),
            _ => Status::unavailable(e.message().to_owned()),
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<Response<JsonAnswer>, Status> {
    let json = serde_json::to_string(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(JsonAnswer { json }))
}

fn some(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

fn list_query(r: ListRequest) -> ListQuery {
    ListQuery {
        commune: some(r.commune),
        domain: some(r.domain),
        severity: some(r.severity),
        state: some(r.state),
        limit: (r.limit > 0).then_some(r.limit as usize),
    }
}

type FrameStream = Pin<Box<dyn futures::Stream<Item = Result<LiveFrame, Status>> + Send>>;

#[tonic::async_trait]
impl OpsView for OpsViewApi {
    type SubscribeStream = FrameStream;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let principal = self.principal(&request)?;
        let r = request.into_inner();
        let bbox = match r.bbox.as_slice() {
            [] => None,
            [w, s, e, n] => Some([*w, *s, *e, *n]),
            _ => return Err(Status::invalid_argument("bbox is [west, south, east, north], or empty")),
        };
        let mut filter = Filter { communes: r.communes, domains: r.domains, bbox, min_severity: some(r.min_severity) };
        filter.validate().map_err(Status::invalid_argument)?;
        // The caller's communes: the scope filter every outgoing path goes through.
        filter.communes =
            principal.scope.narrow(&filter.communes).map_err(|e| Status::permission_denied(e.to_string()))?;
        let (mut subscription, start) =
            Subscription::start(&self.feed, &principal, filter, r.resume_from, !r.every_update, r.split_snapshots)
                .await
                .map_err(|refused| match refused {
                    Refused::Revoked => Status::unauthenticated("the session was closed"),
                    Refused::Limited(limited) => Status::resource_exhausted(limited.to_string()),
                })?;
        let (sender, receiver) = mpsc::channel::<Result<LiveFrame, Status>>(STREAM_BUFFER);
        let limit = self.feed.send_limit();
        tokio::spawn(async move {
            // A client that takes nothing for `limit` is dead (or reads too slowly to be live).
            let send = |frames: Vec<Utf8Bytes>| {
                let sender = sender.clone();
                async move {
                    for json in frames {
                        let frame = Ok(LiveFrame { json: json.to_string() });
                        if !matches!(tokio::time::timeout(limit, sender.send(frame)).await, Ok(Ok(()))) {
                            return false;
                        }
                    }
                    true
                }
            };
            if !send(start).await {
                return;
            }
            loop {
                let frames = tokio::select! {
                    next = subscription.next() => match next {
                        Next::Frames(frames) => frames,
                        Next::Heartbeat(beat) => vec![beat],
                        Next::FellBehind(missed) => match subscription.restart(missed).await {
                            Ok(start) => start,
                            // Too slow for the deltas, and its login out of snapshots: ended.
                            Err(limited) => {
                                let ended = Err(Status::resource_exhausted(limited.to_string()));
                                let _ = tokio::time::timeout(limit, sender.send(ended)).await;
                                return;
                            }
                        },
                        Next::Ended(end) => {
                            let status = match end {
                                End::TokenExpired => Status::unauthenticated("the token has expired"),
                                End::Revoked => Status::unauthenticated("the session was closed"),
                                End::ShuttingDown => {
                                    Status::unavailable("the gateway is shutting down; subscribe again with resume_from")
                                }
                                End::Closed => Status::unavailable("the view was rebuilt; subscribe again"),
                            };
                            let _ = tokio::time::timeout(limit, sender.send(Err(status))).await;
                            return;
                        }
                    },
                    _ = sender.closed() => return,
                };
                if !send(frames).await {
                    tracing::info!(login = %subscription.login(), "closing an OpsView stream whose client does not read");
                    crate::metrics::get().clients_closed_silent.inc();
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn list_assets(&self, request: Request<ListRequest>) -> Result<Response<JsonAnswer>, Status> {
        let principal = self.principal(&request)?;
        json(&rest::list_assets(&self.api, list_query(request.into_inner()), &principal)?)
    }

    async fn list_alarms(&self, request: Request<ListRequest>) -> Result<Response<JsonAnswer>, Status> {
        let principal = self.principal(&request)?;
        json(&rest::list_alarms(&self.api, list_query(request.into_inner()), &principal)?)
    }

    async fn list_kpis(&self, request: Request<ListRequest>) -> Result<Response<JsonAnswer>, Status> {
        let principal = self.principal(&request)?;
        json(&rest::list_kpis(&self.api, list_query(request.into_inner()), &principal)?)
    }

    async fn list_commands(&self, request: Request<ListRequest>) -> Result<Response<JsonAnswer>, Status> {
        let principal = self.principal(&request)?;
        json(&rest::list_commands(&self.api, list_query(request.into_inner()), &principal)?)
    }

    async fn query_audit(&self, request: Request<AuditRequest>) -> Result<Response<JsonAnswer>, Status> {
        let principal = self.principal(&request)?;
        let r = request.into_inner();
        let params = AuditParams {
            commune: some(r.commune),
            actor: some(r.actor),
            action: some(r.action),
            from: some(r.from),
            to: some(r.to),
            limit: (r.limit > 0).then_some(r.limit as usize),
        };
        json(&rest::query_audit(&self.api, params, &principal)?)
    }
}
