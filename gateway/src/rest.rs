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

/// An operator's action on an alarm.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmActionRequest {
    alarm_key: String,
    /// `acknowledge`, `assign`, `comment`, `shelve`, `unshelve`, `resolve`.
    action: String,
    #[serde(default)]
    assignee: String,
    #[serde(default)]
    comment: String,
    /// `shelve`: until when (RFC 3339, within `--max-shelve`, 8 h by default); `comment` says why.
    shelved_until: Option<String>,
}

#[derive(Serialize)]
struct ActionAnswer {
    event_id: String,
    /// The alarm after the action (absent when it left the view: closed).
    alarm: Option<AlarmState>,
}

fn text(name: &str, value: &str, max: usize, required: bool) -> Result<(), ApiError> {
    if required && value.trim().is_empty() {
        return Err(ApiError::bad_request(format!("{name} is required")));
    }
    if value.chars().count() > max || value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::bad_request(format!("{name}: at most {max} characters of text")));
    }
    Ok(())
}

async fn alarm_action(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<AlarmActionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    actor(&p)?;
    let Json(request) = body.map_err(ApiError::from_json)?;
    let action = CheckedAlarmAction::parse(
        &request.action,
        &request.assignee,
        &request.comment,
        request.shelved_until.as_deref(),
        state.max_shelve,
    )?;
    let key = AlarmKey::parse(&request.alarm_key).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (event_id, seq) = publish_alarm_action(&state, &p, &key, &action).await?;
    let applied = state.live.wait_applied(seq, READ_YOUR_WRITE).await;
    // Read again under the caller's scope: the alarm may have moved to another commune meanwhile.
    let alarm = state.live.read(|view| view.alarm(key.as_str()).cloned()).filter(|a| p.scope.allows(&a.commune));
    let status = if applied { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(ActionAnswer { event_id, alarm })).into_response())
}

/// How far past `--max-shelve` a shelve's end may fall (clocks estimated across the network).
const SHELVE_SLACK: Duration = Duration::from_secs(120);

/// Alarms one bulk action names at most (a flood of a few hundred lamps of one commune is one
/// group, acknowledged in one request).
const MAX_BULK_ALARMS: usize = 1_000;

/// The same action on many alarms at once (an operator acknowledging an alarm flood): one
/// request, one event (and one audit entry) per alarm.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkAlarmActionRequest {
    alarm_keys: Vec<String>,
    /// `acknowledge`, `shelve`, `unshelve` or `resolve` (assignments and comments are one by one).
    action: String,
    #[serde(default)]
    comment: String,
    shelved_until: Option<String>,
}

#[derive(Serialize)]
struct BulkAnswer {
    /// Event ids of the actions published, in the order of `alarm_keys`.
    done: Vec<BulkDone>,
    /// Alarms not acted on, and why (unknown to the caller, a bad key).
    refused: Vec<BulkRefused>,
}

#[derive(Serialize)]
struct BulkDone {
    alarm_key: String,
    event_id: String,
}

#[derive(Serialize)]
struct BulkRefused {
    alarm_key: String,
    error: String,
}

async fn bulk_alarm_action(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<BulkAlarmActionRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    actor(&p)?;
    let Json(request) = body.map_err(ApiError::from_json)?;
    if !["acknowledge", "shelve", "unshelve", "resolve"].contains(&request.action.as_str()) {
        return Err(ApiError::bad_request("a bulk action is acknowledge, shelve, unshelve or resolve"));
    }
    if request.alarm_keys.is_empty() || request.alarm_keys.len() > MAX_BULK_ALARMS {
        return Err(ApiError::bad_request(format!("alarm_keys names 1 to {MAX_BULK_ALARMS} alarms")));
    }
    let action = CheckedAlarmAction::parse(
        &request.action,
        "",
        &request.comment,
        request.shelved_until.as_deref(),
        state.max_shelve,
    )?;
    let (mut done, mut refused, mut last_seq) = (Vec::new(), Vec::new(), 0);
    let mut seen = std::collections::HashSet::new();
    for raw in request.alarm_keys {
        if !seen.insert(raw.clone()) {
            continue;
        }
        let shown: String = raw.chars().take(proto::ids::AlarmKey::MAX_LEN).collect();
        let outcome = match AlarmKey::parse(&raw) {
            Ok(key) => publish_alarm_action(&state, &p, &key, &action).await,
            Err(e) => Err(ApiError::bad_request(e.to_string())),
        };
        match outcome {
            Ok((event_id, seq)) => {
                last_seq = last_seq.max(seq);
                done.push(BulkDone { alarm_key: shown, event_id });
            }
            // The store or the bus failing is not one alarm's business: stop there.
            Err(e) if e.status().is_server_error() => return Err(e),
            Err(e) => refused.push(BulkRefused { alarm_key: shown, error: e.message().to_owned() }),
        }
    }
    let applied = last_seq == 0 || state.live.wait_applied(last_seq, READ_YOUR_WRITE).await;
    let status = if applied { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(BulkAnswer { done, refused })).into_response())
}

/// An alarm action, checked (its kind and fields), before it names an alarm.
struct CheckedAlarmAction {
    kind: AlarmActionKind,
    assignee: String,
    comment: String,
    shelved_until: Option<prost_types::Timestamp>,
}

impl CheckedAlarmAction {
    /// `max_shelve`: how far ahead a shelve may reach.
    fn parse(
        action: &str,
        assignee: &str,
        comment: &str,
        shelved_until: Option<&str>,
        max_shelve: Duration,
    ) -> Result<Self, ApiError> {
        let kind = match action {
            "acknowledge" => AlarmActionKind::Acknowledge,
            "assign" => AlarmActionKind::Assign,
            "comment" => AlarmActionKind::Comment,
            "shelve" => AlarmActionKind::Shelve,
            "unshelve" => AlarmActionKind::Unshelve,
            "resolve" => AlarmActionKind::Resolve,
            _ => {
                return Err(ApiError::bad_request(
                    "action is one of acknowledge, assign, comment, shelve, unshelve, resolve",
                ));
            }
        };
        text("assignee", assignee, 64, false)?;
        // A comment says what it says; a shelve says why the alarm is hidden (ISA-18.2).
        let required = matches!(kind, AlarmActionKind::Comment | AlarmActionKind::Shelve);
        text("comment", comment, MAX_COMMENT_CHARS, required)?;
        let now = SystemTime::now();
        let shelved_until = match (kind, shelved_until) {
            (AlarmActionKind::Shelve, Some(until)) => {
                let t = chrono::DateTime::parse_from_rfc3339(until)
                    .map_err(|_| ApiError::bad_request("shelved_until is not an RFC 3339 time"))?;
                let t = SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
                // A console computes the end on its estimate of this clock: a little slack.
                if t <= now || t > now + max_shelve + SHELVE_SLACK {
                    let hours = max_shelve.as_secs_f64() / 3600.0;
                    return Err(ApiError::bad_request(format!(
                        "shelved_until must be within the next {hours} h (--max-shelve)"
                    )));
                }
                Some(event::timestamp(t))
            }
            (AlarmActionKind::Shelve, None) => return Err(ApiError::bad_request("shelve needs shelved_until")),
            (_, Some(_)) => return Err(ApiError::bad_request("shelved_until goes with shelve only")),
            (_, None) => None,
        };
        Ok(CheckedAlarmAction {
            kind,
            assignee: assignee.trim().to_owned(),
            comment: comment.to_owned(),
            shelved_until,
        })
    }
}

/// Publishes `action` on the alarm `key` as `p`; its event id and stream sequence.
async fn publish_alarm_action(
    state: &ApiState,
    p: &Principal,
    key: &AlarmKey,
    action: &CheckedAlarmAction,
) -> Result<(String, u64), ApiError> {
    // The alarm must be in the view; the action belongs to its commune and asset.
    // Another commune's alarm is, to this operator, not there.
    let alarm = state
        .live
        .read(|view| view.alarm(key.as_str()).cloned())
        .filter(|a| p.scope.allows(&a.commune))
        .ok_or_else(|| ApiError::not_found(format!("no alarm {key} in the view (closed, or never raised)")))?;
    let commune = CommuneId::parse(&alarm.commune).map_err(|e| ApiError::unavailable(e.to_string()))?;
    let asset = AssetId::parse(&alarm.asset_id).map_err(|e| ApiError::unavailable(e.to_string()))?;
    let payload = AlarmAction {
        alarm_key: key.to_string(),
        action: action.kind as i32,
        actor: p.login.clone(),
        assignee: action.assignee.clone(),
        comment: action.comment.clone(),
        shelved_until: action.shelved_until,
    };
    let now = SystemTime::now();
    let checked =
        event::check(event::new_event(&commune, &asset, event::timestamp(now), None, Payload::AlarmAction(payload)))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let event_id = checked.event.id.clone();
    let seq = publish(&state.js, &checked).await?;
    Ok((event_id, seq))
}

/// A free-text entry of the log book.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogbookRequest {
    /// The commune it concerns (INSEE code).
    commune: String,
    text: String,
}

#[derive(Serialize)]
struct LogbookAnswer {
    event_id: String,
    /// The entry as the audit log has it (absent when this gateway has not applied it yet).
    entry: Option<AuditEntry>,
}

async fn logbook_entry(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<LogbookRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    actor(&p)?;
    let Json(request) = body.map_err(ApiError::from_json)?;
    text("text", &request.text, MAX_COMMENT_CHARS, true)?;
    let commune = CommuneId::parse(&request.commune).map_err(|e| ApiError::bad_request(format!("commune: {e}")))?;
    if !p.scope.allows(commune.as_str()) {
        return Err(forbidden(format!("commune {commune} is outside your communes")));
    }
    let actor = p.login.clone();
    let entry = LogbookEntry { actor: actor.clone(), text: request.text.trim().to_owned() };
    let asset = AssetId::parse("logbook").map_err(|e| ApiError::unavailable(e.to_string()))?;
    let now = event::timestamp(SystemTime::now());
    let checked = event::check(event::new_event(&commune, &asset, now, None, Payload::LogbookEntry(entry)))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let event_id = checked.event.id.clone();
    let seq = publish(&state.js, &checked).await?;
    let applied = state.live.wait_applied(seq, READ_YOUR_WRITE).await;
    let query =
        AuditQuery { communes: None, actor: Some(actor), action: Some("note".into()), from: None, to: None, limit: 20 };
    let entry = if applied {
        state.store.audit(&query).ok().and_then(|list| list.into_iter().find(|e| e.event_id == event_id))
    } else {
        None
    };
    let status = if applied { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((status, Json(LogbookAnswer { event_id, entry })).into_response())
}

/// The system notices (events the view could never apply), oldest first. An operator of some
/// communes sees that data may be missing, not the stream's sequences (every commune's volume).
async fn notices(State(state): State<ApiState>, Extension(p): Extension<Principal>) -> Result<Response, ApiError> {
    reader(&p)?;
    let all = matches!(p.scope, crate::auth::Scope::All);
    let items: Vec<proto::live::SystemNotice> = state
        .store
        .notices()
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .into_iter()
        .map(|n| if all { n } else { proto::live::SystemNotice { from_seq: None, to_seq: None, ..n } })
        .collect();
    Ok(Json(serde_json::json!({ "items": items })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcknowledgeNotices {
    /// Every notice up to this id (the newest the supervisor read).
    up_to: u64,
}

/// A supervisor acknowledges the notices up to an id: they are no longer announced.
async fn acknowledge_notices(
    State(state): State<ApiState>,
    Extension(p): Extension<Principal>,
    body: Result<Json<AcknowledgeNotices>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    if p.role != crate::auth::Role::Supervisor {
        return Err(forbidden("system notices are acknowledged by a supervisor"));
    }
    let Json(request) = body.map_err(ApiError::from_json)?;
    let acknowledged =
        state.store.acknowledge_notices(request.up_to).map_err(|e| ApiError::unavailable(e.to_string()))?;
    let left = state.store.notices().map_err(|e| ApiError::unavailable(e.to_string()))?.len();
    state.live.set_notices(left);
    tracing::info!(by = %p.login, acknowledged, left, "system notices acknowledged");
    Ok(Json(serde_json::json!({ "acknowledged": acknowledged, "left": left })).into_response())
}

/// Publishes an operator's event and waits for JetStream's acknowledgement (then it is durable);
/// returns its stream sequence.
async fn publish(js: &jetstream::Context, event: &proto::event::CheckedEvent) -> Result<u64, ApiError> {
    use prost::Message;
    let message = jetstream::message::PublishMessage::build()
        .message_id(&event.event.id)
        .payload(event.event.encode_to_vec().into());
    let ack = async {
        let ack = js.send_publish(event.subject(), message).await?;
        anyhow::Ok(ack.await?)
    };
    match tokio::time::timeout(Duration::from_secs(5), ack).await {
        Ok(Ok(ack)) => Ok(ack.sequence),
        Ok(Err(e)) => Err(ApiError::unavailable(format!("the event bus did not take the action: {e}; retry"))),
        Err(_) => Err(ApiError::unavailable("the event bus did not answer in time; retry")),
    }
}
