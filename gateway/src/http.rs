//! HTTP: `/health`, the live WebSocket at `/ws`, and the console's static files.

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use proto::live::{
    ClientFrame, ClientMessage, ErrorCode, Filter, MAX_CLIENT_FRAME_BYTES, PROTOCOL_VERSION, ServerFrame,
    ServerMessage, Upstream, close_code,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

use crate::live::{Delta, Live, Start, upstream};

#[derive(Clone)]
pub struct AppState {
    pub live: Arc<Live>,
    pub nats: async_nats::Client,
    pub shutdown: CancellationToken,
    /// How often each session gets a heartbeat (and a WebSocket ping).
    pub heartbeat: Duration,
}

/// The gateway's HTTP routes. `ui_dir`, when it exists, is served at `/`.
pub fn router(state: AppState, ui_dir: Option<PathBuf>) -> Router {
    let router = Router::new().route("/health", get(health)).route("/ws", get(websocket)).with_state(state);
    match ui_dir {
        Some(dir) if dir.is_dir() => {
            let index = dir.join("index.html");
            router.fallback_service(
                tower_http::services::ServeDir::new(dir).fallback(tower_http::services::ServeFile::new(index)),
            )
        }
        _ => router.fallback(console_missing),
    }
}

async fn console_missing() -> impl IntoResponse {
    (
        axum::http::StatusCode::NOT_FOUND,
        "The console is not built: run `npm ci && npm run build` in ui-client/ (deploy/run.sh does it).\n",
    )
}

async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let nats = upstream(&state.nats) == Upstream::Live;
    Json(serde_json::json!({
        "status": "ok",
        "nats": if nats { "connected" } else { "disconnected" },
        "applied_seq": state.live.applied_seq(),
        "assets": state.live.asset_count(),
    }))
}

/// `/ws?resume_from=<seq>`: start with the deltas missed since `seq` (a client reconnecting after
/// a network loss) rather than a snapshot, when the gateway still has them.
/// `coalesce=false`: every asset update (see `ClientMessage::Subscribe`).
/// `communes=34172,34129`: the session starts under that filter (a console showing one commune
/// does not first receive the whole territory's snapshot); `subscribe` may change it later.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WsParams {
    resume_from: Option<u64>,
    coalesce: Option<bool>,
    communes: Option<String>,
}

async fn websocket(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    params: Result<axum::extract::Query<WsParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (resume_from, coalesce, communes) = match params {
        Ok(axum::extract::Query(p)) => (p.resume_from, p.coalesce.unwrap_or(true), p.communes),
        Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    let filter = Filter {
        communes: communes.iter().flat_map(|list| list.split(',')).map(|c| c.trim().to_owned()).collect(),
        ..Default::default()
    };
    if let Err(message) = filter.validate() {
        return (axum::http::StatusCode::BAD_REQUEST, format!("communes: {message}")).into_response();
    }
    ws.max_message_size(MAX_CLIENT_FRAME_BYTES)
        .max_frame_size(MAX_CLIENT_FRAME_BYTES)
        .on_upgrade(move |socket| session(socket, state, filter, resume_from, coalesce))
}

fn frame(message: ServerMessage) -> Message {
    let json = serde_json::to_string(&ServerFrame::new(message)).unwrap_or_default();
    Message::Text(json.into())
}

/// Deltas are sent in batches: at once when a batch holds an alarm or a command (never held
/// back), else at most this often; within a batch an asset's successive updates are coalesced
/// (the latest wins), so each asset changes at most about 10 times a second per client.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Deltas taken from the broadcast in one batch.
const MAX_BATCH: usize = 10_000;
/// A client not heard from (any frame, or the pong to our pings) for this many heartbeats is
/// closed.
const HEARTBEATS_BEFORE_DEAD: u32 = 6;

/// The sending half of a session. A send waits at most `limit` for a client that does not read:
/// past it the client is dead (a full socket buffer cannot even carry a close frame).
struct Out {
    sink: SplitSink<WebSocket, Message>,
    limit: Duration,
}

impl Out {
    async fn send(&mut self, message: Message) -> bool {
        matches!(tokio::time::timeout(self.limit, self.sink.send(message)).await, Ok(Ok(())))
    }

    async fn text(&mut self, text: &str) -> bool {
        self.send(Message::Text(text.into())).await
    }

    /// A close frame, if the client still takes one.
    async fn close(&mut self, code: u16, reason: &'static str) {
        let close = CloseFrame { code, reason: reason.into() };
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.send(Message::Close(Some(close)))).await;
    }
}

/// Sends how a session starts; false when the client is gone.
async fn send_start(out: &mut Out, start: Start) -> bool {
    for frame in start.frames() {
        if !out.text(&frame).await {
            return false;
        }
    }
    true
}

/// One client: a snapshot (or a resume), then deltas, under the session's filter; heartbeats both
/// ways. A client that falls more than the broadcast buffer behind gets a fresh snapshot rather
/// than a gap; one that stays silent is closed.
async fn session(
    socket: WebSocket,
    state: AppState,
    mut filter: Filter,
    resume_from: Option<u64>,
    mut coalescing: bool,
) {
    let _counted = crate::metrics::SessionGuard::start();
    let (sink, mut incoming) = socket.split();
    let mut out = Out { sink, limit: state.heartbeat * HEARTBEATS_BEFORE_DEAD };
    let (start, mut deltas) = state.live.subscribe(&filter, resume_from);
    if !send_start(&mut out, start).await {
        return;
    }
    let mut batch: Vec<Arc<Delta>> = Vec::new();
    let mut last_flush = Instant::now();
    let mut heard = Instant::now();
    let mut heartbeat = tokio::time::interval(state.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        let urgent = !coalescing || batch.len() >= MAX_BATCH || batch.iter().any(|d| d.asset_key().is_none());
        let flush_at = if batch.is_empty() {
            None
        } else if urgent {
            Some(Instant::now())
        } else {
            Some(last_flush + FLUSH_EVERY)
        };
        tokio::select! {
            delta = deltas.recv() => match delta {
                Ok(delta) => {
                    batch.push(delta);
                    while batch.len() < MAX_BATCH {
                        match deltas.try_recv() {
                            Ok(delta) => batch.push(delta),
                            Err(TryRecvError::Lagged(missed)) => {
                                batch.clear();
                                if !resync(&mut out, &state, &filter, &mut deltas, missed).await {
                                    return;
                                }
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    batch.clear();
                    if !resync(&mut out, &state, &filter, &mut deltas, missed).await {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            _ = async { tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now).into()).await }, if flush_at.is_some() => {
                for delta in crate::live::coalesce(std::mem::take(&mut batch), &filter, coalescing) {
                    if !out.text(&delta.json).await {
                        return;
                    }
                }
                last_flush = Instant::now();
            }
            message = incoming.next() => {
                heard = Instant::now();
                match message {
                    Some(Ok(Message::Text(text))) => match request(text.as_str()) {
                        Request::Answer(answer) => {
                            if !out.send(answer).await {
                                return;
                            }
                        }
                        Request::Subscribe { filter: wanted, resume_from, coalesce } => {
                            filter = wanted;
                            coalescing = coalesce.unwrap_or(coalescing);
                            batch.clear();
                            let (start, receiver) = state.live.subscribe(&filter, resume_from);
                            deltas = receiver;
                            if !send_start(&mut out, start).await {
                                return;
                            }
                        }
                    },
                    Some(Ok(Message::Binary(_))) => {
                        let error = ServerMessage::Error { code: ErrorCode::BadMessage, message: "binary frames are not part of the protocol; send JSON text".into() };
                        if !out.send(frame(error)).await {
                            return;
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Err(e)) => {
                        tracing::info!(error = %e, "WebSocket closed on error");
                        return;
                    }
                }
            }
            _ = heartbeat.tick() => {
                if heard.elapsed() > state.heartbeat * HEARTBEATS_BEFORE_DEAD {
                    tracing::info!("closing a silent client");
                    crate::metrics::get().clients_closed_silent.inc();
                    out.close(close_code::NO_HEARTBEAT, "nothing heard from the client; reconnect and resume").await;
                    return;
                }
                let beat = frame(ServerMessage::Heartbeat { seq: state.live.applied_seq(), upstream: upstream(&state.nats) });
                if !out.send(beat).await || !out.send(Message::Ping(Default::default())).await {
                    return;
                }
            }
            _ = state.shutdown.cancelled() => {
                out.close(axum::extract::ws::close_code::AWAY, "gateway shutting down").await;
                return;
            }
        }
    }
}

/// The session fell too far behind: a fresh snapshot under its filter (nothing is lost: the
/// snapshot holds every current alarm and asset).
async fn resync(
    out: &mut Out,
    state: &AppState,
    filter: &Filter,
    deltas: &mut tokio::sync::broadcast::Receiver<Arc<Delta>>,
    missed: u64,
) -> bool {
    tracing::info!(missed, "client fell behind; sending a fresh snapshot");
    crate::metrics::get().resyncs.inc();
    let (start, receiver) = state.live.subscribe(filter, None);
    *deltas = receiver;
    send_start(out, start).await
}

enum Request {
    Answer(Message),
    Subscribe { filter: Filter, resume_from: Option<u64>, coalesce: Option<bool> },
}

/// What one client text frame asks: a subscription, or an answer (a pong, or an error).
fn request(text: &str) -> Request {
    let error = |code, message| Request::Answer(frame(ServerMessage::Error { code, message }));
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(ClientFrame { v, .. }) if v != PROTOCOL_VERSION => error(
            ErrorCode::UnsupportedVersion,
            format!("protocol version {v} is not supported; this gateway speaks {PROTOCOL_VERSION}"),
        ),
        Ok(ClientFrame { message: ClientMessage::Ping, .. }) => Request::Answer(frame(ServerMessage::Pong)),
        Ok(ClientFrame { message: ClientMessage::Subscribe { filter, resume_from, coalesce }, .. }) => {
            match filter.validate() {
                Ok(()) => Request::Subscribe { filter, resume_from, coalesce },
                Err(message) => error(ErrorCode::BadFilter, message),
            }
        }
        Err(e) => {
            let version =
                serde_json::from_str::<serde_json::Value>(text).ok().and_then(|v| v.get("v").and_then(|v| v.as_u64()));
            let code = if version.is_some_and(|v| v != u64::from(PROTOCOL_VERSION)) {
                ErrorCode::UnsupportedVersion
            } else {
                ErrorCode::BadMessage
            };
            error(code, format!("not a message of protocol {PROTOCOL_VERSION}: {e}"))
        }
    }
}
