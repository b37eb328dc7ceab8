//! Access over HTTP: login, refresh, logout, who am I; the administrators' API (communes,
//! operators, integrators); and the middleware every protected route sits behind, which puts
//! the verified [`Principal`] in the request.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use proto::ids::CommuneId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::auth::{
    Authority, MIN_PASSWORD_CHARS, OperatorRecord, Principal, Role, SessionRecord, TokenType, check_login,
    hash_password, new_sid, now_s, password_matches,
};
use crate::directory::Directory;
use crate::rest::{ApiError, MAX_BODY_BYTES};

/// An integrator's credential lives this long unless revoked.
const INTEGRATOR_TTL: Duration = Duration::from_secs(365 * 86_400);

/// The communes of the deployment: the territory's, and those an administrator added.
pub type Communes = Arc<RwLock<BTreeMap<String, String>>>;

#[derive(Clone)]
pub struct Access {
    pub authority: Arc<Authority>,
    /// Operators, sessions, credentials and communes, shared by every replica.
    pub directory: Directory,
    pub communes: Communes,
    /// Reverse proxies whose `X-Forwarded-For` is believed (`--trusted-proxies`).
    pub trusted_proxies: Arc<Vec<std::net::IpAddr>>,
}

/// The client's address: the TCP peer's, unless the peer is a trusted reverse proxy; then the
/// nearest address in `X-Forwarded-For` that is not a trusted proxy (the entries further left
/// are the client's own say, which anyone can forge).
pub fn client_address(peer: std::net::IpAddr, headers: &HeaderMap, trusted: &[std::net::IpAddr]) -> std::net::IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    let mut nearest = peer;
    for entry in forwarded.iter().rev() {
        match entry.parse::<std::net::IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => nearest = ip,
            Ok(ip) => return ip,
            // A proxy wrote something that is not an address: go no further than what it is.
            Err(_) => return nearest,
        }
    }
    nearest
}

/// The bearer token of a request (`Authorization: Bearer <token>`).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

fn unauthorized(message: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": {"code": "unauthorized", "message": message.into()}});
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], Json(body)).into_response()
}

pub fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Middleware: a valid access (or integrator) token, or 401.
pub async fn require_principal(State(access): State<Access>, mut request: Request, next: Next) -> Response {
    let principal = match bearer(request.headers()) {
        None => return unauthorized("this needs an Authorization: Bearer token (POST /api/v1/auth/login)"),
        Some(token) => match access.authority.principal(token) {
            Ok(p) => p,
            Err(e) => return unauthorized(e.to_string()),
        },
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The caller may read operational data.
pub fn reader(p: &Principal) -> Result<(), ApiError> {
    if p.role.reads() { Ok(()) } else { Err(forbidden("administrators see no operational data")) }
}

/// The caller may act as an operator.
pub fn actor(p: &Principal) -> Result<(), ApiError> {
    if p.role.acts() { Ok(()) } else { Err(forbidden(format!("a {} does not act on operations", p.role.as_str()))) }
}

fn admin(p: &Principal) -> Result<(), ApiError> {
    if p.role == Role::Admin { Ok(()) } else { Err(forbidden("this is for administrators")) }
}

pub fn router(access: Access) -> Router {
    let protected = Router::new()
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/me", get(me))
        .route("/api/v1/admin/operators", get(list_operators).post(add_operator))
        .route("/api/v1/admin/operators/{login}", delete(remove_operator))
        .route("/api/v1/admin/integrators", post(add_integrator))
        .route("/api/v1/admin/communes", get(list_communes).post(add_commune))
        .route("/api/v1/admin/login-failures", get(login_failures))
        .layer(axum::middleware::from_fn_with_state(access.clone(), require_principal));
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/refresh", post(refresh))
        .merge(protected)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(access)
}

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

/// The latest failed login attempts (wrong passwords, attempts refused as too many), newest
/// first: for administrators.
async fn login_failures(
    State(access): State<Access>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    admin(&p)?;
    Ok(Json(serde_json::json!({ "items": access.authority.logins.recent_failures() })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    login: String,
    password: String,
}

#[derive(Serialize)]
pub struct OperatorView {
    login: String,
    role: Role,
    all_communes: bool,
    communes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    domains: Vec<String>,
}

impl From<&OperatorRecord> for OperatorView {
    fn from(o: &OperatorRecord) -> Self {
        OperatorView {
            login: o.login.clone(),
            role: o.role,
            all_communes: o.all_communes,
            communes: o.communes.clone(),
            domains: o.domains.clone(),
        }
    }
}

#[derive(Serialize)]
struct Tokens {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    /// Seconds the access token lives.
    expires_in: u64,
    operator: OperatorView,
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "access directory");
    ApiError::unavailable("the operators' directory cannot be read or written; retry")
}

fn tokens(access: &Access, operator: &OperatorRecord, session: &SessionRecord) -> Tokens {
    let keys = &access.authority.keys;
    let claims = access.authority.claims(operator, session, TokenType::Access);
    let expires_in = claims.exp.saturating_sub(claims.iat);
    Tokens {
        access_token: keys.sign(&claims),
        refresh_token: keys.sign(&access.authority.claims(operator, session, TokenType::Refresh)),
        token_type: "Bearer",
        expires_in,
        operator: operator.into(),
    }
}

/// A hash to check a password against when the login does not exist, so that an unknown login
/// costs the same time as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("no operator has this password").unwrap_or_default())
}

/// A login refused for too many failures from its address (or of its login): 429, with when to
/// retry.
fn too_many_attempts(login: &str, address: std::net::IpAddr, wait: Duration) -> Response {
    tracing::warn!(login = %login, %address, "login attempt refused: too many failures");
    // Rounded up: a client retrying when told is not refused again.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut answer = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        format!("too many failed logins from here: retry in {seconds} s"),
    )
    .into_response();
    answer.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
    answer
}

async fn login(
    State(access): State<Access>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Body<LoginRequest>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(ApiError::from_json)?;
    let wrong = || Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "login or password is wrong"));
    if check_login(&request.login).is_err() || request.password.len() > 1024 {
        return wrong();
    }
    let address = client_address(peer.ip(), &headers, &access.trusted_proxies);
    let logins = &access.authority.logins;
    if let Err(wait) = logins.may_try(&request.login, address) {
        return Ok(too_many_attempts(&request.login, address, wait));
    }
    // At most a few password checks at once (each takes about 19 MiB): memory stays bounded.
    let Some(slot) = logins.check_slot().await else {
        let mut answer =
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "too many logins at once: retry in a moment")
                .into_response();
        answer.headers_mut().insert(axum::http::header::RETRY_AFTER, 1u64.into());
        return Ok(answer);
    };
    // Asked again once a check is free: guesses sent together all passed the first question
    // before any of them had failed.
    if let Err(wait) = logins.may_try(&request.login, address) {
        return Ok(too_many_attempts(&request.login, address, wait));
    }
    let operator = access.directory.operator(&request.login).await.map_err(store_error)?;
    let hash = operator.as_ref().map_or(decoy_hash(), |o| o.password_hash.as_str()).to_owned();
    let password = request.password.clone();
    let matches = tokio::task::spawn_blocking(move || {
        let matches = password_matches(&password, &hash);
        drop(slot);
        matches
    })
    .await
    .unwrap_or(false);
    let Some(operator) = operator.filter(|_| matches) else {
        logins.failed(&request.login, address);
        tracing::warn!(login = %request.login, %address, "failed login");
        return wrong();
    };
    if operator.role == Role::Integrator {
        return Err(forbidden("integrators use their credential, they do not log in"));
    }
    logins.succeeded(&operator.login, address);
    let session = SessionRecord {
        sid: new_sid(),
        login: operator.login.clone(),
        generation: 0,
        expires_at: now_s() + access.authority.session_ttl.as_secs(),
        revoked: false,
        rotation: 0,
    };
    access.directory.create_session(&session).await.map_err(store_error)?;
    tracing::info!(login = %operator.login, role = operator.role.as_str(), "login");
    Ok(Json(tokens(&access, &operator, &session)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshRequest {
    refresh_token: String,
}

async fn refresh(State(access): State<Access>, body: Body<RefreshRequest>) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(ApiError::from_json)?;
    let refused = |m: &str| Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m));
    let claims = match access.authority.keys.verify(&request.refresh_token, now_s()) {
        Ok(c) if c.typ == TokenType::Refresh => c,
        Ok(_) => return refused("this is not a refresh token"),
        Err(e) => return refused(&e.to_string()),
    };
    /// What a refresh finds in the session, decided on the bucket's record (compare-and-set).
    enum Found {
        Revoked,
        Reused,
        Current,
    }
    let updated = access
        .directory
        .update_session(&claims.sub, &claims.sid, crate::directory::PATIENCE, |session| {
            if session.revoked {
                (None, Found::Revoked)
            } else if claims.generation != session.generation {
                // An old refresh token: someone kept a copy (or two replicas were asked to
                // refresh the same token at once). The session is closed for everyone.
                (Some(SessionRecord { revoked: true, ..session.clone() }), Found::Reused)
            } else {
                (Some(SessionRecord { generation: session.generation + 1, ..session.clone() }), Found::Current)
            }
        })
        .await
        .map_err(store_error)?;
    let session = match updated {
        None => return refused("no such session"),
        Some((session, Found::Revoked)) => {
            // Revoked at another replica, and not yet seen here: from now on.
            access.authority.revoke(&session.sid);
            return refused("the session was closed: log in again");
        }
        Some((session, Found::Reused)) => {
            access.authority.revoke(&session.sid);
            tracing::warn!(login = %session.login, "a refresh token was used twice: session closed");
            return refused("this refresh token was already used: the session is closed, log in again");
        }
        Some((session, Found::Current)) => session,
    };
    let Some(operator) = access.directory.operator(&session.login).await.map_err(store_error)? else {
        return refused("this operator no longer exists");
    };
    // The operator's role and scope as they are now: a change takes effect at the next refresh.
    Ok(Json(tokens(&access, &operator, &session)).into_response())
}

async fn logout(State(access): State<Access>, Extension(p): Extension<Principal>) -> Result<StatusCode, ApiError> {
    access.directory.revoke_session(&p.login, &p.sid).await.map_err(store_error)?;
    tracing::info!(login = %p.login, "logout");
    Ok(StatusCode::NO_CONTENT)
}

async fn me(Extension(p): Extension<Principal>) -> Json<serde_json::Value> {
    let (all, communes) = match &p.scope {
        crate::auth::Scope::All => (true, Vec::new()),
        crate::auth::Scope::Communes(set) => (false, set.iter().cloned().collect()),
    };
    Json(serde_json::json!({
        "login": p.login, "role": p.role, "all_communes": all, "communes": communes, "expires_at": p.expires_at,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOperator {
    login: String,
    password: String,
    role: String,
    #[serde(default)]
    all_communes: bool,
    #[serde(default)]
    communes: Vec<String>,
}

/// Checks a new operator's or integrator's fields; returns the record to store.
pub fn new_operator(
    communes: &BTreeMap<String, String>,
    login: &str,
    password_hash: String,
    role: Role,
    all_communes: bool,
    scope: &[String],
    domains: &[String],
) -> Result<OperatorRecord, String> {
    check_login(login)?;
    let mut ids = Vec::new();
    for c in scope {
        let id = CommuneId::parse(c).map_err(|e| format!("communes: {e}"))?;
        if !communes.contains_key(id.as_str()) {
            return Err(format!("commune {id} is not one of this deployment's (add it first)"));
        }
        ids.push(id.to_string());
    }
    ids.sort();
    ids.dedup();
    let all = match role {
        Role::Supervisor => true,
        Role::Admin => false,
        Role::Operator | Role::Viewer | Role::Integrator => all_communes,
    };
    if !all && ids.is_empty() && role != Role::Admin {
        return Err(format!("a {} needs communes, or all_communes", role.as_str()));
    }
    for d in domains {
        // A domain with a service: every one that publishes events but the operators' own.
        if proto::v1::Domain::from_token(d).is_none_or(|d| d == proto::v1::Domain::Ops) {
            return Err(format!("unknown domain {:?}", d.chars().take(32).collect::<String>()));
        }
    }
    Ok(OperatorRecord {
        login: login.to_owned(),
        role,
        all_communes: all,
        communes: if all { Vec::new() } else { ids },
        domains: domains.to_vec(),
        password_hash,
        created_at: now_s(),
    })
}

/// A commune's name, trimmed: 1 to 100 characters of text (the admin API, the command line and
/// the access directory's entries alike).
pub fn commune_name(name: &str) -> Result<&str, &'static str> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err("1 to 100 characters of text");
    }
    Ok(name)
}

pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > 1024 {
        return Err(format!("a password has {MIN_PASSWORD_CHARS} to 1024 characters"));
    }
    Ok(())
}

async fn add_operator(
    State(access): State<Access>,
    Extension(p): Extension<Principal>,
    body: Body<NewOperator>,
) -> Result<Response, ApiError> {
    admin(&p)?;
    let Json(request) = body.map_err(ApiError::from_json)?;
    let role = Role::parse(&request.role)
        .filter(|r| *r != Role::Integrator)
        .ok_or_else(|| ApiError::bad_request("role is one of supervisor, operator, viewer, admin"))?;
    check_password(&request.password).map_err(ApiError::bad_request)?;
    if access.directory.operator(&request.login).await.map_err(store_error)?.is_some() {
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", "this login exists already"));
    }
    let password = request.password.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(store_error)?
        .map_err(store_error)?;
    let communes = access.communes.read().map(|c| c.clone()).unwrap_or_default();
    let operator = new_operator(&communes, &request.login, hash, role, request.all_communes, &request.communes, &[])
        .map_err(ApiError::bad_request)?;
    if !access.directory.create_operator(&operator).await.map_err(store_error)? {
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", "this login exists already"));
    }
    tracing::info!(by = %p.login, login = %operator.login, role = role.as_str(), "operator added");
    Ok((StatusCode::CREATED, Json(OperatorView::from(&operator))).into_response())
}

async fn list_operators(
    State(access): State<Access>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&p)?;
    let operators: Vec<OperatorView> =
        access.directory.operators().map_err(store_error)?.iter().map(Into::into).collect();
    Ok(Json(serde_json::json!({ "items": operators })))
}

/// Removes an operator (or an integrator) and closes every session of theirs.
async fn remove_operator(
    State(access): State<Access>,
    Extension(p): Extension<Principal>,
    Path(login): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&p)?;
    // Their sessions and credentials are revoked first (see `Directory::remove_operator`).
    if !access.directory.remove_operator(&login).await.map_err(store_error)? {
        return Err(ApiError::not_found("no such login"));
    }
    tracing::info!(by = %p.login, login = %login, "operator removed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewIntegrator {
    login: String,
    #[serde(default)]
    all_communes: bool,
    #[serde(default)]
    communes: Vec<String>,
    /// The domains it may write to.
    #[serde(default)]
    domains: Vec<String>,
}

/// An integrator's credential (a session of a year) and its token; the caller stores both.
pub fn integrator_credential(authority: &Authority, record: &OperatorRecord) -> (SessionRecord, String) {
    let session = SessionRecord {
        sid: new_sid(),
        login: record.login.clone(),
        generation: 0,
        expires_at: now_s() + INTEGRATOR_TTL.as_secs(),
        revoked: false,
        rotation: 0,
    };
    let token = authority.keys.sign(&authority.claims(record, &session, TokenType::Integrator));
    (session, token)
}

/// An integrating system's credential: a token it sends as `authorization: Bearer` metadata
/// (gRPC) or header; revoked by removing the login.
async fn add_integrator(
    State(access): State<Access>,
    Extension(p): Extension<Principal>,
    body: Body<NewIntegrator>,
) -> Result<Response, ApiError> {
    admin(&p)?;
    let Json(request) = body.map_err(ApiError::from_json)?;
    let communes = access.communes.read().map(|c| c.clone()).unwrap_or_default();
    let record = new_operator(
        &communes,
        &request.login,
        String::new(),
        Role::Integrator,
        request.all_communes,
        &request.communes,
        &request.domains,
    )
    .map_err(ApiError::bad_request)?;
    if !access.directory.create_operator(&record).await.map_err(store_error)? {
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", "this login exists already"));
    }
    let (session, token) = integrator_credential(&access.authority, &record);
    access.directory.create_session(&session).await.map_err(store_error)?;
    tracing::info!(by = %p.login, login = %record.login, "integrator credential issued");
    let body = serde_json::json!({"token": token, "expires_at": session.expires_at, "integrator": OperatorView::from(&record)});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCommune {
    id: String,
    name: String,
}

async fn add_commune(
    State(access): State<Access>,
    Extension(p): Extension<Principal>,
    body: Body<NewCommune>,
) -> Result<Response, ApiError> {
    admin(&p)?;
    let Json(request) = body.map_err(ApiError::from_json)?;
    let id = CommuneId::parse(&request.id).map_err(|e| ApiError::bad_request(format!("id: {e}")))?;
    let name = commune_name(&request.name).map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    access.directory.put_commune(id.as_str(), name).await.map_err(store_error)?;
    tracing::info!(by = %p.login, commune = %id, "commune added");
    Ok((StatusCode::CREATED, Json(serde_json::json!({"id": id.as_str(), "name": name}))).into_response())
}

async fn list_communes(
    State(access): State<Access>,
    Extension(p): Extension<Principal>,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin(&p)?;
    let communes = access.communes.read().map(|c| c.clone()).unwrap_or_default();
    let items: Vec<_> = communes.iter().map(|(id, name)| serde_json::json!({"id": id, "name": name})).collect();
    Ok(Json(serde_json::json!({ "items": items })))
}
