//! The gRPC face of the operations view (`vigie.ops.v1.OpsView`), for integrating systems: the
//! same live stream as the WebSocket (frames as JSON text) and the same queries as the REST API.

use proto::live::{Filter, ServerFrame, ServerMessage};
use proto::ops::ops_view_server::OpsView;
use proto::ops::{AuditRequest, JsonAnswer, ListRequest, LiveFrame, SubscribeRequest};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::api::{self, ApiError, ApiState, AuditParams, ListQuery};
use crate::auth::{Authority, Principal};
use crate::live::{Delta, Demand, Start, upstream};

/// Frames buffered per stream; a stream that does not keep up falls behind the broadcast and
/// gets a fresh snapshot.
const STREAM_BUFFER: usize = 1024;

pub struct OpsViewApi {
    pub api: ApiState,
    pub nats: async_nats::Client,
    pub heartbeat: Duration,
    pub authority: Arc<Authority>,
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
        let principal = self.authority.principal(token.trim()).map_err(|e| Status::unauthenticated(e.to_string()))?;
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

fn frame(message: ServerMessage) -> LiveFrame {
    LiveFrame { json: serde_json::to_string(&ServerFrame::new(message)).unwrap_or_default() }
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
        let mut revocations = self.authority.revocations.subscribe();
        let authority = self.authority.clone();
        let expires_at = crate::auth::deadline(principal.expires_at);
        let coalescing = !r.every_update;
        let live = self.api.live.clone();
        let (start, mut deltas) = live
            .start(&principal.login, &filter, r.resume_from, Demand::Asked, coalescing)
            .await
            .map_err(|limited| Status::resource_exhausted(limited.to_string()))?;
        let (sender, receiver) = mpsc::channel::<Result<LiveFrame, Status>>(STREAM_BUFFER);
        let (nats, every) = (self.nats.clone(), self.heartbeat);
        tokio::spawn(async move {
            let send_start = |start: Start| -> Vec<LiveFrame> {
                start.frames().iter().map(|json| LiveFrame { json: json.to_string() }).collect()
            };
            for f in send_start(start) {
                if sender.send(Ok(f)).await.is_err() {
                    return;
                }
            }
            let mut heartbeat = tokio::time::interval(every);
            heartbeat.tick().await;
            loop {
                let mut batch: Vec<Arc<Delta>> = Vec::new();
                let mut lagged = false;
                tokio::select! {
                    delta = deltas.recv() => match delta {
                        Ok(d) => {
                            batch.push(d);
                            loop {
                                match deltas.try_recv() {
                                    Ok(d) => batch.push(d),
                                    Err(TryRecvError::Lagged(_)) => { lagged = true; break; }
                                    Err(_) => break,
                                }
                            }
                        }
                        Err(RecvError::Lagged(_)) => lagged = true,
                        Err(RecvError::Closed) => return,
                    },
                    _ = heartbeat.tick() => {
                        let beat = frame(ServerMessage::Heartbeat {
                            seq: live.applied_seq(),
                            upstream: upstream(&nats, &live),
                            notices: live.notices(),
                        });
                        if sender.send(Ok(beat)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    _ = sender.closed() => return,
                    _ = tokio::time::sleep_until(expires_at) => {
                        let _ = sender.send(Err(Status::unauthenticated("the token has expired"))).await;
                        return;
                    }
                    // Any revocation (or missed ones, if this stream lagged): is it this one's?
                    _ = revocations.recv() => {
                        if authority.is_revoked(&principal.sid) {
                            let _ = sender.send(Err(Status::unauthenticated("the session was closed"))).await;
                            return;
                        }
                        continue;
                    }
                }
                if lagged {
                    crate::metrics::get().resyncs.inc();
                    let started = live.start(&principal.login, &filter, None, Demand::FellBehind, coalescing).await;
                    let (start, receiver) = match started {
                        Ok(started) => started,
                        // Too slow for the deltas, and its login out of snapshots: ended.
                        Err(limited) => {
                            let _ = sender.send(Err(Status::resource_exhausted(limited.to_string()))).await;
                            return;
                        }
                    };
                    deltas = receiver;
                    for f in send_start(start) {
                        if sender.send(Ok(f)).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                for frame in crate::live::coalesce(batch, &filter, coalescing) {
                    if sender.send(Ok(LiveFrame { json: frame.to_string() })).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn list_assets(&self, request: Request<ListRequest>) -> Result<Response<JsonAnswer>, Status> {
        let principal = self.principal(&request)?;
        json(&api::list_assets(&self.api, list_query(request.into_inner()), &principal)?)
    }

    async fn list_alarms(&self, request: Request<ListRequest>) -> Result<Response<JsonAnswer>, Status> {
        let principal = self.principal(&request)?;
        json(&api::list_alarms(&self.api, list_query(request.into_inner()), &principal)?)
    }

    async fn list_kpis(&self, request: Request<ListRequest>) -> Result<Response<JsonAnswer>, Status> {
        let principal = self.principal(&request)?;
        json(&api::list_kpis(&self.api, list_query(request.into_inner()), &principal)?)
    }

    async fn list_commands(&self, request: Request<ListRequest>) -> Result<Response<JsonAnswer>, Status> {
        let principal = self.principal(&request)?;
        json(&api::list_commands(&self.api, list_query(request.into_inner()), &principal)?)
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
        json(&api::query_audit(&self.api, params, &principal)?)
    }
}
