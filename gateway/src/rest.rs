//! The REST API under `/api/v1` (described by `/api/v1/openapi.json`): the operations view's
//! queries (assets, alarms, KPIs, commands), the audit log, and operators' alarm actions.
//!
//! An alarm action is published as an `ops` event (JetStream acknowledges it: durable), then the
//! answer waits until this gateway's view has applied it, so the caller reads its own write. Every
//! replica applies the same event, in stream order: replicas converge.
//!
//! Until operators authenticate (issue 10), the actor is given in the request.

use async_nats::jetstream;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use proto::event;
use proto::ids::{AlarmKey, AssetId, CommuneId};
use proto::live::{AlarmState, AssetState, AuditEntry, CommandState, Filter, KpiState};
use proto::ops::{AlarmAction, AlarmActionKind, LogbookEntry};
use proto::v1::event::Payload;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::access::{Access, actor, forbidden, reader, require_principal};
use crate::auth::Principal;
use crate::live::Live;
use crate::store::{AuditQuery, Store};

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Items a list answers at most (and by default).
const MAX_LIMIT: usize = 10_000;
const DEFAULT_LIMIT: usize = 1_000;
const MAX_COMMENT_CHARS: usize = 1_000;
/// How long an action's answer waits for the view to apply it.
const READ_YOUR_WRITE: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct ApiState {
    pub live: Arc<Live>,
    pub store: Store,
    pub js: jetstream::Context,
    /// How far ahead an alarm may be shelved (`--max-shelve`).
    pub max_shelve: Duration,
}

/// The API's routes; every one but the OpenAPI document needs a token, and every answer is
/// narrowed to the caller's communes.
pub fn router(state: ApiState, access: Access) -> Router {
    let public = Router::new().route("/api/v1/openapi.json", get(openapi));
    Router::new()
        .route("/api/v1/assets", get(assets))
        .route("/api/v1/alarms", get(alarms))
        .route("/api/v1/alarms/actions", post(alarm_action))
        .route("/api/v1/alarms/actions/bulk", post(bulk_alarm_action))
        .route("/api/v1/logbook", post(logbook_entry))
        .route("/api/v1/kpis", get(kpis))
        .route("/api/v1/commands", get(commands))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/notices", get(notices))
        .route("/api/v1/notices/acknowledge", post(acknowledge_notices))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(access, require_principal))
        .merge(public)
        .with_state(state)
}

/// An error as the API answers it: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// A body that is too large stays 413; every other body problem (not JSON, a missing or
    /// unknown field) is the request's fault: 400, as for parameters.
    pub fn from_json(e: axum::extract::rejection::JsonRejection) -> ApiError {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError { status: StatusCode::PAYLOAD_TOO_LARGE, code: "too_large", message: e.body_text() }
        } else {
            ApiError::bad_request(e.body_text())
        }
    }

    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, code: "bad_request", message: message.into() }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into() }
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, code: "unavailable", message: message.into() }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Filters shared by the list queries. `commune` is a comma-separated list of INSEE codes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub commune: Option<String>,
    pub domain: Option<String>,
    pub severity: Option<String>,
    /// Alarms: `active`, `cleared`, `unacknowledged`, `acknowledged`, `shelved`.
    pub state: Option<String>,
    pub limit: Option<usize>,
}

fn communes(list: &Option<String>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(list) = list else { return Ok(None) };
    list.split(',')
        .map(|c| CommuneId::parse(c.trim()).map(|c| c.to_string()).map_err(|e| ApiError::bad_request(e.to_string())))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) if n > MAX_LIMIT => Err(ApiError::bad_request(format!("limit is at most {MAX_LIMIT}"))),
        Some(n) => Ok(n),
    }
}

/// The commune and domain parameters as the live protocol's filter, narrowed to the caller's
/// communes (one place decides what a list may show).
fn place_filter(q: &ListQuery, p: &Principal) -> Result<Filter, ApiError> {
    reader(p)?;
    let requested = communes(&q.commune)?.unwrap_or_default();
    let filter = Filter {
        communes: p.scope.narrow(&requested).map_err(|e| forbidden(e.to_string()))?,
        domains: q.domain.iter().cloned().collect(),
        ..Default::default()
    };
    filter.validate().map_err(ApiError::bad_request)?;
    Ok(filter)
}

#[derive(Serialize)]
pub struct Listed<T> {
    items: Vec<T>,
    /// The stream sequence the view was current at.
    seq: u64,
}

type QueryOf<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

/// Unknown or malformed parameters: a 400 in the API's error format.
fn params<T>(query: QueryOf<T>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| ApiError::bad_request(e.body_text()))
}

async fn assets(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    q: QueryOf<ListQuery>,
) -> Result<Json<Listed<AssetState>>, ApiError> {
    list_assets(&state, params(q)?, &p).map(Json)
}

pub fn list_assets(state: &ApiState, q: ListQuery, p: &Principal) -> Result<Listed<AssetState>, ApiError> {
    let (filter, limit) = (place_filter(&q, p)?, limit(q.limit)?);
    let (items, seq) = state.live.read(|view| {
        let mut items: Vec<AssetState> = view.assets().filter(|a| filter.allows_asset(a)).cloned().collect();
        items.sort_by(|a, b| (&a.domain, &a.id).cmp(&(&b.domain, &b.id)));
        items.truncate(limit);
        (items, view.applied_seq())
    });
    Ok(Listed { items, seq })
}

/// Whether an alarm is in a state the query names.
fn in_state(alarm: &AlarmState, state: &str, now: &str) -> bool {
    match state {
        "active" => alarm.active,
        "cleared" => !alarm.active,
        "acknowledged" => alarm.acknowledged,
        "unacknowledged" => !alarm.acknowledged,
        "shelved" => alarm.shelved_until.as_deref().is_some_and(|until| until > now),
        _ => false,
    }
}

async fn alarms(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    q: QueryOf<ListQuery>,
) -> Result<Json<Listed<AlarmState>>, ApiError> {
    list_alarms(&state, params(q)?, &p).map(Json)
}

pub fn list_alarms(state: &ApiState, q: ListQuery, p: &Principal) -> Result<Listed<AlarmState>, ApiError> {
    let (filter, limit) = (place_filter(&q, p)?, limit(q.limit)?);
    if let Some(s) = &q.severity
        && !["warning", "minor", "major", "critical"].contains(&s.as_str())
    {
        return Err(ApiError::bad_request("severity is one of warning, minor, major, critical"));
    }
    if let Some(s) = &q.state
        && !["active", "cleared", "acknowledged", "unacknowledged", "shelved"].contains(&s.as_str())
    {
        return Err(ApiError::bad_request("state is one of active, cleared, acknowledged, unacknowledged, shelved"));
    }
    let now = proto::live::from_proto::rfc3339(Some(&event::timestamp(SystemTime::now())));
    let (items, seq) = state.live.read(|view| {
        let mut items: Vec<AlarmState> = view
            .alarms()
            .filter(|a| filter.allows_alarm(a))
            .filter(|a| q.severity.as_ref().is_none_or(|s| *s == a.severity))
            .filter(|a| q.state.as_ref().is_none_or(|s| in_state(a, s, &now)))
            .cloned()
            .collect();
        // The most recent first.
        items.sort_by(|a, b| b.last_raised_at.cmp(&a.last_raised_at).then(a.key.cmp(&b.key)));
        items.truncate(limit);
        (items, view.applied_seq())
    });
    Ok(Listed { items, seq })
}

async fn kpis(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    q: QueryOf<ListQuery>,
) -> Result<Json<Listed<KpiState>>, ApiError> {
    list_kpis(&state, params(q)?, &p).map(Json)
}

pub fn list_kpis(state: &ApiState, q: ListQuery, p: &Principal) -> Result<Listed<KpiState>, ApiError> {
    let filter = place_filter(&q, p)?;
    let (items, seq) = state.live.read(|view| {
        let mut items: Vec<KpiState> = view.kpis().filter(|k| filter.allows_kpi(k)).cloned().collect();
        items.sort_by(|a, b| (&a.domain, &a.commune).cmp(&(&b.domain, &b.commune)));
        (items, view.applied_seq())
    });
    Ok(Listed { items, seq })
}

async fn commands(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    q: QueryOf<ListQuery>,
) -> Result<Json<Listed<CommandState>>, ApiError> {
    list_commands(&state, params(q)?, &p).map(Json)
}

pub fn list_commands(state: &ApiState, q: ListQuery, p: &Principal) -> Result<Listed<CommandState>, ApiError> {
    let (filter, limit) = (place_filter(&q, p)?, limit(q.limit)?);
    let (items, seq) = state.live.read(|view| {
        // Newest first (ids are UUIDv7).
        let items: Vec<CommandState> =
            view.commands().rev().filter(|c| filter.allows_command(c)).take(limit).cloned().collect();
        (items, view.applied_seq())
    });
    Ok(Listed { items, seq })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    pub commune: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<usize>,
}

fn rfc3339_param(name: &str, value: &Option<String>) -> Result<Option<String>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    let t = chrono::DateTime::parse_from_rfc3339(value)
        .map_err(|_| ApiError::bad_request(format!("{name} is not an RFC 3339 time")))?;
    Ok(Some(t.with_timezone(&chrono::Utc).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)))
}

async fn audit(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    p: QueryOf<AuditParams>,
) -> Result<Json<Listed<AuditEntry>>, ApiError> {
    query_audit(&state, params(p)?, &principal).map(Json)
}

pub fn query_audit(state: &ApiState, p: AuditParams, principal: &Principal) -> Result<Listed<AuditEntry>, ApiError> {
    reader(principal)?;
    let requested = communes(&p.commune)?.unwrap_or_default();
    let narrowed = principal.scope.narrow(&requested).map_err(|e| forbidden(e.to_string()))?;
    let query = AuditQuery {
        communes: if narrowed.is_empty() { None } else { Some(narrowed) },
        actor: p.actor.clone(),
        action: p.action.clone(),
        from: rfc3339_param("from", &p.from)?,
        to: rfc3339_param("to", &p.to)?,
        limit: limit(p.limit)?,
    };
    let items = state.store.audit(&query).map_err(|e| {
        tracing::error!(error = %e, "audit query failed");
        ApiError::unavailable("the audit log cannot be read")
    })?;
    Ok(Listed { items, seq: state.live.applied_seq() })
}

mod actions;
use actions::{acknowledge_notices, alarm_action, bulk_alarm_action, logbook_entry, notices};
