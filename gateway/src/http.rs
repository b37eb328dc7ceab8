//! HTTP: `/health`, the live WebSocket at `/ws`, and the console's static files.

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use proto::live::{
    ClientFrame, ClientMessage, ErrorCode, MAX_CLIENT_FRAME_BYTES, PROTOCOL_VERSION, ServerFrame, ServerMessage,
};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::live::Live;

#[derive(Clone)]
pub struct AppState {
    pub live: Arc<Live>,
    pub nats: async_nats::Client,
    pub shutdown: CancellationToken,
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
    let nats = matches!(state.nats.connection_state(), async_nats::connection::State::Connected);
    Json(serde_json::json!({
        "status": "ok",
        "nats": if nats { "connected" } else { "disconnected" },
        "applied_seq": state.live.applied_seq(),
        "assets": state.live.asset_count(),
    }))
}

async fn websocket(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    ws.max_message_size(MAX_CLIENT_FRAME_BYTES)
        .max_frame_size(MAX_CLIENT_FRAME_BYTES)
        .on_upgrade(move |socket| session(socket, state))
}

fn frame(message: ServerMessage) -> Message {
    let json = serde_json::to_string(&ServerFrame::new(message)).unwrap_or_default();
    Message::Text(json.into())
}

/// One client: snapshot, then deltas; a client that falls more than the broadcast buffer behind
/// gets a fresh snapshot rather than a gap.
async fn session(socket: WebSocket, state: AppState) {
    let (mut sink, mut incoming) = socket.split();
    let (snapshot, mut deltas) = state.live.subscribe();
    if sink.send(Message::Text(snapshot.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            delta = deltas.recv() => match delta {
                Ok(json) => {
                    if sink.send(Message::Text(json.as_ref().into())).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(missed, "client fell behind; sending a fresh snapshot");
                    let (snapshot, receiver) = state.live.subscribe();
                    deltas = receiver;
                    if sink.send(Message::Text(snapshot.into())).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            message = incoming.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if sink.send(answer(text.as_str())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let error = ServerMessage::Error { code: ErrorCode::BadMessage, message: "binary frames are not part of the protocol; send JSON text".into() };
                    if sink.send(frame(error)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => return,
                Some(Err(e)) => {
                    tracing::info!(error = %e, "WebSocket closed on error");
                    return;
                }
            },
            _ = state.shutdown.cancelled() => {
                let close = CloseFrame { code: axum::extract::ws::close_code::AWAY, reason: "gateway shutting down".into() };
                let _ = sink.send(Message::Close(Some(close))).await;
                return;
            }
        }
    }
}

/// The answer to one client text frame.
fn answer(text: &str) -> Message {
    let version =
        serde_json::from_str::<serde_json::Value>(text).ok().and_then(|v| v.get("v").and_then(|v| v.as_u64()));
    match serde_json::from_str::<ClientFrame>(text) {
        Ok(ClientFrame { v, .. }) if v != PROTOCOL_VERSION => frame(ServerMessage::Error {
            code: ErrorCode::UnsupportedVersion,
            message: format!("protocol version {v} is not supported; this gateway speaks {PROTOCOL_VERSION}"),
        }),
        Ok(ClientFrame { message: ClientMessage::Ping, .. }) => frame(ServerMessage::Pong),
        Err(e) => frame(ServerMessage::Error {
            code: if version.is_some_and(|v| v != u64::from(PROTOCOL_VERSION)) {
                ErrorCode::UnsupportedVersion
            } else {
                ErrorCode::BadMessage
            },
            message: format!("not a message of protocol {PROTOCOL_VERSION}: {e}"),
        }),
    }
}
