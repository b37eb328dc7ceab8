//! HTTP: `/health`, the live WebSocket at `/ws`, and the console's static files.

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
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

use crate::auth::Principal;
use crate::live::upstream;
use crate::subscription::{End, Feed, Next, Refused, Subscription};

#[derive(Clone)]
pub struct AppState {
    /// What every live subscription reads from (the view, heartbeats, revocations, shutdown).
    pub feed: Feed,
    /// Origins a browser may open `/ws` from (`scheme://host[:port]`); empty: the gateway's own.
    pub allowed_origins: Arc<Vec<String>>,
}

/// The WebSocket subprotocol of the live protocol v1; a client offers it with its token as a
/// second one, `bearer.<token>` (a browser cannot set an Authorization header on a WebSocket, and
/// a token in the URL would end up in logs).
pub const SUBPROTOCOL: &str = "vigie.v1";
const BEARER_PREFIX: &str = "bearer.";
/// A WebSocket's read buffer (it grows for a larger frame, up to `MAX_CLIENT_FRAME_BYTES`).
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Frames wait in the write buffer until it holds this much (or the batch ends), then go out in
/// one write.
const WRITE_BUFFER_BYTES: usize = 8 * 1024;
/// Client frames allowed per second on average; past it the client is closed (1008).
const MAX_CLIENT_FRAMES_PER_S: f64 = 20.0;
/// Client frames allowed at once: frames a client sent while its session was busy (building its
/// snapshot) arrive together, and a client within the rate is not closed for that.
const MAX_CLIENT_FRAME_BURST: f64 = 30.0;

/// The token a WebSocket client offered as a subprotocol.
fn subprotocol_token(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(BEARER_PREFIX))
        .map(str::to_owned)
}

/// Whether a browser's `Origin` may open the WebSocket: one of the allowed origins, or (none
/// configured) the gateway's own host. A client that sends no Origin is not a browser page, and
/// a cross-site page cannot forge one.
fn origin_allowed(headers: &axum::http::HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    if !allowed.is_empty() {
        return allowed.iter().any(|a| a == origin);
    }
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    !host.is_empty() && (origin == format!("http://{host}") || origin == format!("https://{host}"))
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

/// The gateway's health: 200 and `live` when connected to NATS, its consumer progressing and the
/// view current within `live::max_lag`; 503
/// and `stale` with the reason otherwise (the process is up, and what it serves is getting old).
async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let nats = matches!(state.feed.nats.connection_state(), async_nats::connection::State::Connected);
    let live = upstream(&state.feed.nats, &state.feed.live) == Upstream::Live;
    let consumer = match state.feed.live.consumer_health() {
        crate::live::ConsumerHealth::Starting => serde_json::json!({"state": "starting"}),
        crate::live::ConsumerHealth::Progressing => serde_json::json!({"state": "progressing"}),
        crate::live::ConsumerHealth::Failing(reason) => serde_json::json!({"state": "failing", "reason": reason}),
    };
    let status = if live { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    (
        status,
        Json(serde_json::json!({
            "status": if live { "live" } else { "stale" },
            "nats": if nats { "connected" } else { "disconnected" },
            "consumer": consumer,
            "applied_seq": state.feed.live.applied_seq(),
            // How long since the consumer last proved the view current (null: never yet).
            "lag_ms": state.feed.live.lag().map(|lag| u64::try_from(lag.as_millis()).unwrap_or(u64::MAX)),
            "assets": state.feed.live.asset_count(),
        })),
    )
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
    split_snapshots: Option<bool>,
    communes: Option<String>,
}

async fn websocket(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    params: Result<axum::extract::Query<WsParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    use axum::http::StatusCode;
    if !origin_allowed(&headers, &state.allowed_origins) {
        tracing::warn!(origin = ?headers.get(axum::http::header::ORIGIN), "WebSocket from an origin not allowed");
        return (StatusCode::FORBIDDEN, "this origin may not open the live stream\n").into_response();
    }
    let principal = match subprotocol_token(&headers).map(|t| state.feed.authority.principal(&t)) {
        None => {
            let message = "offer the subprotocols vigie.v1 and bearer.<access token> (POST /api/v1/auth/login)\n";
            return (StatusCode::UNAUTHORIZED, message).into_response();
        }
        Some(Err(e)) => return (StatusCode::UNAUTHORIZED, format!("{e}\n")).into_response(),
        Some(Ok(p)) if !p.role.reads() => {
            return (StatusCode::FORBIDDEN, "administrators see no operational data\n").into_response();
        }
        Some(Ok(p)) => p,
    };
    let (resume_from, coalesce, split, communes) = match params {
        Ok(axum::extract::Query(p)) => {
            (p.resume_from, p.coalesce.unwrap_or(true), p.split_snapshots.unwrap_or(false), p.communes)
        }
        Err(e) => return (StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    let mut filter = Filter {
        communes: communes.iter().flat_map(|list| list.split(',')).map(|c| c.trim().to_owned()).collect(),
        ..Default::default()
    };
    if let Err(message) = filter.validate() {
        return (StatusCode::BAD_REQUEST, format!("communes: {message}")).into_response();
    }
    filter.communes = match principal.scope.narrow(&filter.communes) {
        Ok(c) => c,
        Err(e) => return (StatusCode::FORBIDDEN, format!("{e}\n")).into_response(),
    };
    ws.protocols([SUBPROTOCOL])
        .max_message_size(MAX_CLIENT_FRAME_BYTES)
        .max_frame_size(MAX_CLIENT_FRAME_BYTES)
        // Per-client buffers, which every connection holds for its life (their defaults are
        // 128 KiB each): a client sends a few small frames; the server's frames are a snapshot's
        // (`SNAPSHOT_FRAME_BYTES`) at most, and a batch of deltas goes out in writes of this size.
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .on_upgrade(move |socket| session(socket, state, principal, filter, resume_from, coalesce, split))
}

fn frame(message: ServerMessage) -> Message {
    let json = serde_json::to_string(&ServerFrame::new(message)).unwrap_or_default();
    Message::Text(json.into())
}

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

    /// Sends frames as one write where the socket takes them (one flush for the batch, not one
    /// per frame); each frame still gets at most `limit` to be taken.
    async fn frames(&mut self, frames: impl IntoIterator<Item = Utf8Bytes>) -> bool {
        for frame in frames {
            if !matches!(tokio::time::timeout(self.limit, self.sink.feed(Message::Text(frame))).await, Ok(Ok(()))) {
                return false;
            }
        }
        matches!(tokio::time::timeout(self.limit, self.sink.flush()).await, Ok(Ok(())))
    }

    /// A close frame, if the client still takes one.
    async fn close(&mut self, code: u16, reason: &'static str) {
        self.close_owned(code, reason.to_owned()).await;
    }

    async fn close_owned(&mut self, code: u16, reason: String) {
        let close = CloseFrame { code, reason: reason.into() };
        let _ = tokio::time::timeout(Duration::from_secs(1), self.sink.send(Message::Close(Some(close)))).await;
    }
}

/// One client: its subscription (a snapshot or a resume, then deltas, heartbeats: see
/// `subscription`), carried as WebSocket text frames; what the client sends (a new filter, a
/// ping) answered. A client that does not read, or from which nothing is heard for
/// `HEARTBEATS_BEFORE_DEAD` heartbeats, is closed.
async fn session(
    socket: WebSocket,
    state: AppState,
    principal: Principal,
    filter: Filter,
    resume_from: Option<u64>,
    coalescing: bool,
    split_snapshots: bool,
) {
    let _counted = crate::metrics::SessionGuard::start();
    let (sink, mut incoming) = socket.split();
    let mut out = Out { sink, limit: state.feed.send_limit() };
    let (mut subscription, start) =
        match Subscription::start(&state.feed, &principal, filter, resume_from, coalescing, split_snapshots).await {
            Ok(started) => started,
            Err(Refused::Revoked) => {
                out.close(close_code::REVOKED, "the session was closed; log in again").await;
                return;
            }
            Err(Refused::Limited(limited)) => {
                tracing::warn!(login = %principal.login, "refusing a snapshot: too many for this login");
                out.close_owned(close_code::TOO_MANY_SNAPSHOTS, limited.close_reason()).await;
                return;
            }
        };
    if !out.frames(start).await {
        return;
    }
    let mut coalescing = coalescing;
    let mut heard = Instant::now();
    // The client's frame allowance (a token bucket: `MAX_CLIENT_FRAME_BURST` at most, refilled at
    // `MAX_CLIENT_FRAMES_PER_S`), and when it was last refilled.
    let (mut allowance, mut refilled) = (MAX_CLIENT_FRAME_BURST, Instant::now());
    loop {
        tokio::select! {
            next = subscription.next() => match next {
                Next::Frames(frames) => {
                    if !out.frames(frames).await {
                        return;
                    }
                }
                Next::Heartbeat(beat) => {
                    if heard.elapsed() > state.feed.send_limit() {
                        tracing::info!("closing a silent client");
                        crate::metrics::get().clients_closed_silent.inc();
                        out.close(close_code::NO_HEARTBEAT, "nothing heard from the client; reconnect and resume").await;
                        return;
                    }
                    if !out.send(Message::Text(beat)).await || !out.send(Message::Ping(Default::default())).await {
                        return;
                    }
                }
                Next::FellBehind(missed) => match subscription.restart(missed).await {
                    Ok(start) => {
                        if !out.frames(start).await {
                            return;
                        }
                    }
                    Err(limited) => {
                        out.close_owned(close_code::TOO_MANY_SNAPSHOTS, limited.close_reason()).await;
                        return;
                    }
                },
                Next::Ended(end) => {
                    let (code, reason) = match end {
                        End::TokenExpired => (close_code::TOKEN_EXPIRED, "the token has expired; refresh it and reconnect"),
                        End::Revoked => (close_code::REVOKED, "the session was closed; log in again"),
                        End::ShuttingDown => (axum::extract::ws::close_code::AWAY, "gateway shutting down"),
                        End::Closed => (axum::extract::ws::close_code::RESTART, "the view was rebuilt; reconnect"),
                    };
                    out.close(code, reason).await;
                    return;
                }
            },
            message = incoming.next() => {
                heard = Instant::now();
                allowance = (allowance + refilled.elapsed().as_secs_f64() * MAX_CLIENT_FRAMES_PER_S).min(MAX_CLIENT_FRAME_BURST);
                refilled = Instant::now();
                allowance -= 1.0;
                if allowance < 0.0 {
                    tracing::warn!(login = %principal.login, "closing a client that sends too many frames");
                    out.close(axum::extract::ws::close_code::POLICY, "too many messages: at most 20 a second").await;
                    // What it sent meanwhile is read (for a second at most) before the socket is
                    // dropped: closing over unread bytes resets the connection, and the client
                    // would lose the close frame and its reason.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Some(Ok(message)) = incoming.next().await {
                            if matches!(message, Message::Close(_)) {
                                break;
                            }
                        }
                    })
                    .await;
                    return;
                }
                match message {
                    Some(Ok(Message::Text(text))) => match request(text.as_str()) {
                        Request::Answer(answer) => {
                            if !out.send(answer).await {
                                return;
                            }
                        }
                        Request::Subscribe { filter: mut wanted, resume_from, coalesce } => {
                            // The caller's communes, whatever it asks (the one scope filter).
                            match principal.scope.narrow(&wanted.communes) {
                                Ok(communes) => wanted.communes = communes,
                                Err(e) => {
                                    let error = ServerMessage::Error { code: ErrorCode::BadFilter, message: e.to_string() };
                                    if !out.send(frame(error)).await {
                                        return;
                                    }
                                    continue;
                                }
                            }
                            let coalescing_wanted = coalesce.unwrap_or(coalescing);
                            match subscription.change(wanted, resume_from, coalescing_wanted).await {
                                Ok(start) => {
                                    coalescing = coalescing_wanted;
                                    if !out.frames(start).await {
                                        return;
                                    }
                                }
                                Err(limited) => {
                                    let error = ServerMessage::Error { code: ErrorCode::RateLimited, message: limited.to_string() };
                                    if !out.send(frame(error)).await {
                                        return;
                                    }
                                }
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
        }
    }
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

/// Property tests of the live protocol's client frames: whatever text a client sends (random, or
/// frames of the protocol with odd values), the answer comes without panicking, and a
/// subscription is taken only with a filter that passes its checks.
#[cfg(test)]
mod client_frame_properties {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            "[0-9]{5}|[a-z_]{0,12}|.{0,6}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop::sample::select(vec!["communes", "domains", "bbox", "min_severity", "x"])
                        .prop_map(str::to_owned),
                    inner,
                    0..4
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn random_text_never_panics(text in any::<String>()) {
            let _ = request(&text);
        }

        #[test]
        fn subscriptions_carry_checked_filters(
            v in prop_oneof![Just(1u64), any::<u64>()],
            kind in prop::sample::select(vec!["subscribe", "ping", "dance"]),
            filter in value(),
            resume_from in prop::option::of(any::<u64>()),
        ) {
            let frame = serde_json::json!({"v": v, "type": kind, "filter": filter, "resume_from": resume_from});
            if let Request::Subscribe { filter, .. } = request(&frame.to_string()) {
                prop_assert!(filter.validate().is_ok(), "{filter:?}");
                prop_assert_eq!(v, 1);
            }
        }
    }
}
