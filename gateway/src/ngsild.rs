//! NGSI-LD's read API (ETSI GS CIM 009) under `/ngsi-ld/v1/`: the operations view's assets and
//! alarms as entities ([`entities`]), queried by type, id, id pattern, attributes, `q` and
//! geo-queries ([`query`]), paged, counted, as JSON with a `Link` to the context or as JSON-LD.
//!
//! The `@context` is Vigie's own, served by the gateway (`/ngsi-ld/contexts/vigie.jsonld`); the
//! gateway never fetches one. A request's `Link` may name it or the NGSI-LD core context (short
//! names are then read as Vigie's context spells them: the Smart Data Models' terms); any other
//! context is one this server cannot get: 504 LdContextNotAvailable, as the specification says.
//!
//! A query costs the view's size at worst (its candidates are cloned under the view's lock, then
//! written off the async workers): two run at once, the others wait their turn.
//!
//! Tenancy as everywhere: the token decides the communes; `NGSILD-Tenant` (an INSEE code) narrows
//! them to one, and a tenant outside the token's communes is answered as one that does not exist.

pub mod entities;
pub mod query;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use proto::ids::CommuneId;
use proto::live::{AlarmState, AssetState};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, LazyLock};

use crate::access::{Access, bearer};
use crate::auth::{Principal, Scope};
use crate::live::Live;

/// Where the gateway serves its context.
pub const CONTEXT_PATH: &str = "/ngsi-ld/contexts/vigie.jsonld";
/// The context document: Smart Data Models' terms, and Vigie's own.
const CONTEXT: &str = include_str!("../ngsild-context.jsonld");
/// The NGSI-LD core context the answers name after Vigie's (never fetched here).
pub const CORE_CONTEXT: &str = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld";
const CORE_CONTEXT_PREFIX: &str = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context";
const CONTEXT_REL: &str = "http://www.w3.org/ns/json-ld#context";
const TENANT: &str = "ngsild-tenant";
const RESULTS_COUNT: &str = "ngsild-results-count";
const ERRORS: &str = "https://uri.etsi.org/ngsi-ld/errors/";

/// Entities a page holds by default, and at most.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 1_000;
/// Farthest a page may start.
const MAX_OFFSET: usize = 1_000_000;
/// Most ids, types and attributes one request lists.
const MAX_LISTED: usize = 100;
/// Longest `coordinates` accepted, in bytes.
const MAX_COORDINATES_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct NgsiState {
    pub live: Arc<Live>,
    pub access: Access,
    /// Queries that read the whole view, at most two at once (the view's lock is shared with the
    /// consumer and the live sessions).
    pub heavy: Arc<tokio::sync::Semaphore>,
}

impl NgsiState {
    pub fn new(live: Arc<Live>, access: Access) -> NgsiState {
        NgsiState { live, access, heavy: Arc::new(tokio::sync::Semaphore::new(2)) }
    }

    /// A turn for a query that reads the whole view.
    async fn turn(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Problem> {
        self.heavy
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Problem::new(StatusCode::SERVICE_UNAVAILABLE, "InternalError", "shutting down"))
    }
}

pub fn router(state: NgsiState) -> Router {
    let protected = Router::new()
        .route("/ngsi-ld/v1/entities", get(query_entities))
        // A wildcard: an alarm's id holds slashes, which a client may leave unencoded.
        .route("/ngsi-ld/v1/entities/{*id}", get(retrieve_entity))
        .route("/ngsi-ld/v1/types", get(list_types))
        // A wildcard: a type may be given as its IRI, slashes unencoded.
        .route("/ngsi-ld/v1/types/{*type}", get(type_info))
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_principal));
    Router::new()
        .route(CONTEXT_PATH, get(context))
        // The rest of the API (writes, subscriptions, temporal) is not here: said as NGSI-LD says it.
        .route("/ngsi-ld/v1/{*rest}", axum::routing::any(not_found))
        .merge(protected)
        .with_state(state)
}

/// An NGSI-LD error: a problem details body (RFC 7807) with the specification's error type.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    detail: String,
}

impl Problem {
    fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Problem {
        Problem { status, kind, detail: detail.into() }
    }

    fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "BadRequestData", detail)
    }

    fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "ResourceNotFound", detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        // 401 and 403 have no NGSI-LD error type: RFC 7807's "about:blank", titled by the status.
        let kind = match self.kind {
            "" => "about:blank".to_owned(),
            kind => format!("{ERRORS}{kind}"),
        };
        let title = self.status.canonical_reason().unwrap_or("error");
        let body = json!({"type": kind, "title": title, "status": self.status.as_u16(), "detail": self.detail});
        let mut response =
            (self.status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

async fn not_found() -> Problem {
    Problem::not_found("no such NGSI-LD resource here (this server answers entities and types, read only)")
}

/// A valid access or integrator token, or 401 (as a problem details body).
async fn require_principal(State(state): State<NgsiState>, mut request: Request, next: Next) -> Response {
    let principal = match bearer(request.headers()) {
        None => {
            return Problem::new(StatusCode::UNAUTHORIZED, "", "this needs an Authorization: Bearer token")
                .into_response();
        }
        Some(token) => match state.access.authority.principal(token) {
            Ok(p) => p,
            Err(e) => return Problem::new(StatusCode::UNAUTHORIZED, "", e.to_string()).into_response(),
        },
    };
    if !principal.role.reads() {
        return Problem::new(StatusCode::FORBIDDEN, "", "administrators see no operational data").into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

async fn context() -> Response {
    ([(header::CONTENT_TYPE, "application/ld+json"), (header::CACHE_CONTROL, "public, max-age=3600")], CONTEXT)
        .into_response()
}

/// Term -> IRI, from the context document (its one spelling).
static TERMS: LazyLock<BTreeMap<String, String>> = LazyLock::new(|| {
    let document: Value = serde_json::from_str(CONTEXT).unwrap_or_default();
    let context = document.get("@context").and_then(Value::as_object).cloned().unwrap_or_default();
    let vocab = |prefixed: &str| -> String {
        match prefixed.split_once(':') {
            Some((prefix, rest)) if !rest.starts_with("//") => match context.get(prefix).and_then(Value::as_str) {
                Some(base) => format!("{base}{rest}"),
                None => prefixed.to_owned(),
            },
            _ => prefixed.to_owned(),
        }
    };
    context
        .iter()
        .filter_map(|(term, definition)| {
            let iri = match definition {
                Value::String(s) => s.as_str(),
                Value::Object(o) => o.get("@id")?.as_str()?,
                _ => return None,
            };
            Some((term.clone(), vocab(iri)))
        })
        .collect()
});

/// A type or attribute name as the context's short term (a client may send the full IRI).
fn compact(name: &str) -> String {
    if name.contains("://")
        && let Some((term, _)) = TERMS.iter().find(|(_, iri)| iri.as_str() == name)
    {
        return term.clone();
    }
    name.to_owned()
}

/// The term's IRI (NGSI-LD's default vocabulary for a term the context lacks).
fn expand(term: &str) -> String {
    TERMS.get(term).cloned().unwrap_or_else(|| format!("https://uri.etsi.org/ngsi-ld/default-context/{term}"))
}

/// How the answer is written: JSON with a `Link` header, or JSON-LD with `@context` inside.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Media {
    Json,
    JsonLd,
}

/// Content negotiation (6.3.4): the most preferred of what the client accepts.
fn negotiate(headers: &HeaderMap) -> Result<Media, Problem> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return Ok(Media::Json) };
    let mut offers: Vec<(f32, usize, Media)> = Vec::new();
    for (order, range) in accept.split(',').enumerate() {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .filter(|q| (0.0..=1.0).contains(q))
            .unwrap_or(1.0);
        let offered = match media.as_str() {
            "application/json" | "application/*" | "*/*" => Media::Json,
            "application/ld+json" => Media::JsonLd,
            _ => continue,
        };
        if q > 0.0 {
            offers.push((q, order, offered));
        }
    }
    offers.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    offers.first().map(|o| o.2).ok_or_else(|| {
        Problem::new(StatusCode::NOT_ACCEPTABLE, "", "this server answers application/json and application/ld+json")
    })
}

/// The context a request names in its `Link` header: Vigie's, the core one, or none.
fn check_link(headers: &HeaderMap) -> Result<(), Problem> {
    let mut contexts = Vec::new();
    for value in headers.get_all(header::LINK) {
        let value = value.to_str().map_err(|_| Problem::bad_request("the Link header is not text"))?;
        for link in value.split(',') {
            let Some((target, params)) = link.trim().strip_prefix('<').and_then(|l| l.split_once('>')) else {
                return Err(Problem::bad_request("a Link header is <url>; rel=..."));
            };
            if params.contains(CONTEXT_REL) {
                contexts.push(target.to_owned());
            }
        }
    }
    match contexts.as_slice() {
        [] => Ok(()),
        [one] if one.ends_with(CONTEXT_PATH) || one.starts_with(CORE_CONTEXT_PREFIX) => Ok(()),
        [one] => Err(Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "LdContextNotAvailable",
            format!(
                "this server does not fetch contexts: name its own ({CONTEXT_PATH}) or the core context, not {}",
                one.chars().take(200).collect::<String>()
            ),
        )),
        _ => Err(Problem::bad_request("a request names one JSON-LD context at most")),
    }
}

/// The communes a request sees: the token's, narrowed to `NGSILD-Tenant` when given. Empty means
/// every commune (a metropolitan token without a tenant).
fn tenant_communes(headers: &HeaderMap, p: &Principal, access: &Access) -> Result<Option<String>, Problem> {
    let Some(tenant) = headers.get(TENANT) else { return Ok(None) };
    let nonexistent = || Problem::new(StatusCode::NOT_FOUND, "NonexistentTenant", "no such tenant for this caller");
    let tenant = tenant.to_str().map_err(|_| nonexistent())?;
    let commune = CommuneId::parse(tenant).map_err(|_| nonexistent())?.to_string();
    let known = access.communes.read().map(|c| c.contains_key(&commune)).unwrap_or(false);
    let in_scope = match &p.scope {
        Scope::All => true,
        Scope::Communes(set) => set.contains(&commune),
    };
    // Outside the caller's communes or unknown: the same answer, so that it tells nothing.
    if known && in_scope { Ok(Some(commune)) } else { Err(nonexistent()) }
}

/// Which communes a place may be in, for this caller and tenant.
struct Place {
    scope: Scope,
    tenant: Option<String>,
}

impl Place {
    fn allows(&self, commune: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == commune)
            && match &self.scope {
                Scope::All => true,
                Scope::Communes(set) => set.contains(commune),
            }
    }
}

/// The query parameters this server knows, each at most once.
fn parameters(raw: Vec<(String, String)>, known: &[&str]) -> Result<BTreeMap<String, String>, Problem> {
    let mut out = BTreeMap::new();
    for (name, value) in raw {
        if !known.contains(&name.as_str()) {
            return Err(Problem::bad_request(format!(
                "unknown or unsupported parameter {:?} (known: {})",
                name.chars().take(64).collect::<String>(),
                known.join(", ")
            )));
        }
        if out.insert(name.clone(), value).is_some() {
            return Err(Problem::bad_request(format!("parameter {name} is given twice")));
        }
    }
    Ok(out)
}

/// A comma-separated list, bounded.
fn list(params: &BTreeMap<String, String>, name: &str) -> Result<Vec<String>, Problem> {
    let Some(value) = params.get(name) else { return Ok(Vec::new()) };
    let items: Vec<String> = value.split([',', '|']).map(str::trim).filter(|s| !s.is_empty()).map(compact).collect();
    if items.is_empty() {
        return Err(Problem::bad_request(format!("{name} is empty")));
    }
    if items.len() > MAX_LISTED {
        return Err(Problem::bad_request(format!("{name} lists at most {MAX_LISTED} items")));
    }
    Ok(items)
}

/// How entities are written back.
#[derive(Debug, Clone, Copy, Default)]
struct Representation {
    simplified: bool,
    sys_attrs: bool,
}

fn representation(params: &BTreeMap<String, String>) -> Result<Representation, Problem> {
    let mut r = Representation::default();
    if let Some(options) = params.get("options") {
        for option in options.split(',').map(str::trim) {
            match option {
                "keyValues" | "simplified" => r.simplified = true,
                "normalized" => r.simplified = false,
                "sysAttrs" => r.sys_attrs = true,
                other => {
                    return Err(Problem::bad_request(format!(
                        "options {:?}: this server knows keyValues, normalized and sysAttrs",
                        other.chars().take(64).collect::<String>()
                    )));
                }
            }
        }
    }
    match params.get("format").map(String::as_str) {
        None => {}
        Some("simplified" | "keyValues") => r.simplified = true,
        Some("normalized") => r.simplified = false,
        Some(_) => return Err(Problem::bad_request("format is normalized or simplified")),
    }
    Ok(r)
}

/// One object of the view an entity is made from.
enum Source {
    Asset(AssetState),
    Alarm(AlarmState, Option<&'static str>),
}

impl Source {
    fn entity_type(&self) -> &'static str {
        match self {
            Source::Asset(a) => entities::asset_type(a),
            Source::Alarm(..) => entities::ALERT,
        }
    }

    fn entity_id(&self) -> String {
        match self {
            Source::Asset(a) => entities::entity_id(self.entity_type(), &a.id),
            Source::Alarm(a, _) => entities::entity_id(self.entity_type(), &a.key),
        }
    }

    fn entity(&self, names: &BTreeMap<String, String>, r: Representation) -> Map<String, Value> {
        let (mut e, modified) = match self {
            Source::Asset(a) => (entities::asset_entity(a, names.get(&a.commune).map(String::as_str)), &a.recorded_at),
            Source::Alarm(a, source) => {
                (entities::alarm_entity(a, *source, names.get(&a.commune).map(String::as_str)), &a.last_raised_at)
            }
        };
        if r.sys_attrs {
            e.insert("modifiedAt".into(), json!(modified));
        }
        e
    }
}

/// Writes entities (or one) as negotiated.
fn answer(body: Value, media: Media, base: &str, tenant: Option<&str>, extra: Vec<(&'static str, String)>) -> Response {
    let body = match (media, body) {
        (Media::JsonLd, Value::Array(items)) => {
            Value::Array(items.into_iter().map(|item| with_context(item, base)).collect())
        }
        (Media::JsonLd, item) => with_context(item, base),
        (Media::Json, body) => body,
    };
    let content_type = match media {
        Media::Json => "application/json",
        Media::JsonLd => "application/ld+json",
    };
    let mut response = ([(header::CONTENT_TYPE, content_type)], body.to_string()).into_response();
    let h = response.headers_mut();
    if media == Media::Json
        && let Ok(link) = HeaderValue::from_str(&format!(
            "<{base}{CONTEXT_PATH}>; rel=\"{CONTEXT_REL}\"; type=\"application/ld+json\""
        ))
    {
        h.append(header::LINK, link);
    }
    if let Some(tenant) = tenant.and_then(|t| HeaderValue::from_str(t).ok()) {
        h.insert(TENANT, tenant);
    }
    for (name, value) in extra {
        if let Ok(value) = HeaderValue::from_str(&value) {
            h.append(name, value);
        }
    }
    response
}

fn with_context(item: Value, base: &str) -> Value {
    match item {
        Value::Object(mut map) => {
            map.insert("@context".into(), json!([format!("{base}{CONTEXT_PATH}"), CORE_CONTEXT]));
            Value::Object(map)
        }
        other => other,
    }
}

/// `scheme://authority` of this gateway as the client reached it, for the context's absolute URL:
/// the `Host` header (HTTP/2: the request's authority), and `https` when a trusted reverse proxy
/// (`--trusted-proxies`) says so in `X-Forwarded-Proto`.
struct Base(String);

impl axum::extract::FromRequestParts<NgsiState> for Base {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &NgsiState,
    ) -> Result<Self, Self::Rejection> {
        let valid = |h: &String| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        };
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .filter(valid)
            .unwrap_or_else(|| "localhost".to_owned());
        let peer = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
        let proxied_https = peer.is_some_and(|ip| state.access.trusted_proxies.contains(&ip))
            && parts.headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes() == b"https");
        let scheme = if proxied_https { "https" } else { "http" };
        Ok(Base(format!("{scheme}://{host}")))
    }
}

type RawQuery = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

fn raw(query: RawQuery) -> Result<Vec<(String, String)>, Problem> {
    query.map(|Query(q)| q).map_err(|e| Problem::bad_request(e.body_text()))
}

/// The request's checks every route makes: media, context, tenant; and the place it may see.
struct Preamble {
    media: Media,
    place: Place,
}

fn preamble(headers: &HeaderMap, p: &Principal, state: &NgsiState) -> Result<Preamble, Problem> {
    let media = negotiate(headers)?;
    check_link(headers)?;
    let tenant = tenant_communes(headers, p, &state.access)?;
    Ok(Preamble { media, place: Place { scope: p.scope.clone(), tenant } })
}

/// A `true`/`false` parameter (absent: false).
fn flag(params: &BTreeMap<String, String>, name: &str) -> Result<bool, Problem> {
    match params.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(Problem::bad_request(format!("{name} is true or false"))),
    }
}

fn commune_names(access: &Access) -> BTreeMap<String, String> {
    access.communes.read().map(|c| c.clone()).unwrap_or_default()
}

/// The filters of a query, parsed and bounded (the default keeps everything).
#[derive(Default)]
struct EntityFilter {
    types: Vec<String>,
    ids: BTreeSet<String>,
    id_pattern: Option<regex::Regex>,
    attrs: Vec<String>,
    q: Option<query::Expr>,
    geo: Option<query::GeoQuery>,
}

impl EntityFilter {
    fn parse(params: &BTreeMap<String, String>) -> Result<EntityFilter, Problem> {
        let types = list(params, "type")?;
        let ids: BTreeSet<String> = list(params, "id")?.into_iter().collect();
        let id_pattern =
            params.get("idPattern").map(|p| query::pattern(p)).transpose().map_err(Problem::bad_request)?;
        let attrs = list(params, "attrs")?;
        let mut q = params.get("q").map(|q| query::parse_q(q)).transpose().map_err(Problem::bad_request)?;
        if let Some(q) = &mut q {
            query::rename_attributes(q, &compact);
        }
        let geo = match (params.get("georel"), params.get("geometry"), params.get("coordinates")) {
            (None, None, None) => None,
            (Some(georel), Some(geometry), Some(coordinates)) => {
                if coordinates.len() > MAX_COORDINATES_BYTES {
                    return Err(Problem::bad_request(format!(
                        "coordinates is longer than {MAX_COORDINATES_BYTES} bytes"
                    )));
                }
                if params
                    .get("geoproperty")
                    .is_some_and(|g| g != "location" && g != "https://uri.etsi.org/ngsi-ld/location")
                {
                    return Err(Problem::bad_request("geoproperty: the entities here have one, location"));
                }
                Some(query::parse_geo(georel, geometry, coordinates).map_err(Problem::bad_request)?)
            }
            _ => return Err(Problem::bad_request("georel, geometry and coordinates come together")),
        };
        Ok(EntityFilter { types, ids, id_pattern, attrs, q, geo })
    }

    fn wants_type(&self, entity_type: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == entity_type)
    }

    /// What can be decided before the entity is written: type, id, pattern, place.
    fn keeps(&self, entity_type: &str, local_id: &str, position: Option<&proto::live::LatLon>) -> bool {
        if !self.wants_type(entity_type) {
            return false;
        }
        if !self.ids.is_empty() || self.id_pattern.is_some() {
            let id = entities::entity_id(entity_type, local_id);
            if !self.ids.is_empty() && !self.ids.contains(&id) {
                return false;
            }
            if self.id_pattern.as_ref().is_some_and(|p| !p.is_match(&id)) {
                return false;
            }
        }
        match &self.geo {
            None => true,
            Some(geo) => position.is_some_and(|p| query::geo_matches(geo, p.lon, p.lat)),
        }
    }

    /// What needs the entity: `q`, and `attrs` (an entity without any of them is not matched).
    fn matches(&self, entity: &Map<String, Value>) -> bool {
        self.q.as_ref().is_none_or(|q| query::satisfies(entity, q))
            && (self.attrs.is_empty() || self.attrs.iter().any(|a| entity.contains_key(a)))
    }
}

/// Every object of the view in this place that the cheap filters keep (cloned, so that the
/// entities are written without holding the view).
fn candidates(state: &NgsiState, place: &Place, filter: &EntityFilter) -> Vec<Source> {
    let alerts = filter.wants_type(entities::ALERT);
    state.live.read(|view| {
        let mut out = Vec::new();
        for asset in view.assets() {
            if place.allows(&asset.commune)
                && filter.keeps(entities::asset_type(asset), &asset.id, asset.position.as_ref())
            {
                out.push(Source::Asset(asset.clone()));
            }
        }
        if alerts {
            for alarm in view.alarms() {
                if place.allows(&alarm.commune) && filter.keeps(entities::ALERT, &alarm.key, alarm.position.as_ref()) {
                    let source = view.asset_state(&alarm.domain, &alarm.asset_id).map(entities::asset_type);
                    out.push(Source::Alarm(alarm.clone(), source));
                }
            }
        }
        out
    })
}

async fn query_entities(
    State(state): State<NgsiState>,
    Extension(p): Extension<Principal>,
    Base(base): Base,
    headers: HeaderMap,
    query: RawQuery,
) -> Result<Response, Problem> {
    let Preamble { media, place } = preamble(&headers, &p, &state)?;
    let tenant = place.tenant.clone();
    let params = parameters(
        raw(query)?,
        &[
            "type",
            "id",
            "idPattern",
            "attrs",
            "q",
            "georel",
            "geometry",
            "coordinates",
            "geoproperty",
            "limit",
            "offset",
            "count",
            "options",
            "format",
            "local",
        ],
    )?;
    if !["type", "attrs", "q", "georel"].iter().any(|k| params.contains_key(*k)) {
        return Err(Problem::bad_request("a query names a type, attributes, q or a geo-query"));
    }
    let count = flag(&params, "count")?;
    let number = |name: &str| -> Result<Option<usize>, Problem> {
        params
            .get(name)
            .map(|v| v.parse::<usize>().map_err(|_| Problem::bad_request(format!("{name} is a whole number"))))
            .transpose()
    };
    let limit = number("limit")?.unwrap_or(DEFAULT_LIMIT);
    let offset = number("offset")?.unwrap_or(0);
    if limit == 0 && !count {
        return Err(Problem::bad_request("limit=0 asks for the count alone: with count=true"));
    }
    if offset > MAX_OFFSET {
        return Err(Problem::bad_request(format!("offset is at most {MAX_OFFSET}")));
    }
    if limit > MAX_LIMIT {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "TooManyResults",
            format!("{limit} entities asked for; a page holds at most {MAX_LIMIT}"),
        ));
    }
    let representation = representation(&params)?;
    let filter = EntityFilter::parse(&params)?;

    let names = commune_names(&state.access);
    // The work is the whole view's at worst: off the async workers, two at once.
    let turn = state.turn().await?;
    let (total, page) = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let sources = candidates(&state, &place, &filter);
        // Only q and attrs need the entity written to decide; otherwise its id is enough, and
        // only the page is written.
        let needs_entity = filter.q.is_some() || !filter.attrs.is_empty();
        let mut kept: Vec<(String, Source)> = sources
            .into_iter()
            .filter(|source| !needs_entity || filter.matches(&source.entity(&names, representation)))
            .map(|source| (source.entity_id(), source))
            .collect();
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        let total = kept.len();
        let page: Vec<Value> = kept
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(_, source)| {
                Value::Object(written(source.entity(&names, representation), &filter.attrs, representation))
            })
            .collect();
        (total, page)
    })
    .await
    .map_err(|_| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "the query failed"))?;

    let mut extra = Vec::new();
    if count {
        extra.push((RESULTS_COUNT, total.to_string()));
    }
    for (rel, at) in [
        ("next", offset.checked_add(limit).filter(|next| *next < total && limit > 0)),
        ("prev", (offset > 0 && limit > 0).then(|| offset.saturating_sub(limit))),
    ] {
        if let Some(at) = at {
            let mut moved = params.clone();
            moved.insert("offset".into(), at.to_string());
            moved.insert("limit".into(), limit.to_string());
            if let Ok(query) = serde_urlencoded::to_string(&moved) {
                extra.push(("link", format!("</ngsi-ld/v1/entities?{query}>; rel=\"{rel}\"")));
            }
        }
    }
    Ok(answer(Value::Array(page), media, &base, tenant.as_deref(), extra))
}

/// An entity as the client asked for it: its attributes projected, simplified or not.
fn written(entity: Map<String, Value>, attrs: &[String], r: Representation) -> Map<String, Value> {
    let entity = if attrs.is_empty() { entity } else { entities::project(&entity, attrs) };
    if r.simplified { entities::simplified(&entity) } else { entity }
}

async fn retrieve_entity(
    State(state): State<NgsiState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    Base(base): Base,
    headers: HeaderMap,
    query: RawQuery,
) -> Result<Response, Problem> {
    let Preamble { media, place } = preamble(&headers, &p, &state)?;
    let tenant = place.tenant.clone();
    let params = parameters(raw(query)?, &["type", "attrs", "options", "format", "local"])?;
    let representation = representation(&params)?;
    let types = list(&params, "type")?;
    let attrs = list(&params, "attrs")?;
    // An id is a URI: a scheme, a colon, and more.
    if id.len() > 512 || !id.split_once(':').is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty()) {
        return Err(Problem::bad_request("an entity id is a URI (urn:ngsi-ld:<type>:<id>)"));
    }
    let missing = || Problem::not_found(format!("no entity {} here", id.chars().take(200).collect::<String>()));
    let (entity_type, local) = entities::parse_entity_id(&id).ok_or_else(missing)?;
    if !types.is_empty() && !types.iter().any(|t| t == entity_type) {
        return Err(missing());
    }
    let source = state.live.read(|view| {
        if entity_type == entities::ALERT {
            let alarm = view.alarm(local).filter(|a| !a.closed && place.allows(&a.commune))?;
            let source = view.asset_state(&alarm.domain, &alarm.asset_id).map(entities::asset_type);
            return Some(Source::Alarm(alarm.clone(), source));
        }
        let domain = entities::domain_of(entity_type)?;
        let asset = view
            .asset_state(domain, local)
            .filter(|a| entities::asset_type(a) == entity_type && place.allows(&a.commune))?;
        Some(Source::Asset(asset.clone()))
    });
    // Outside the caller's communes is answered as absent.
    let source = source.ok_or_else(missing)?;
    let entity = written(source.entity(&commune_names(&state.access), representation), &attrs, representation);
    Ok(answer(Value::Object(entity), media, &base, tenant.as_deref(), Vec::new()))
}

/// Each type present in this place, with the attributes its entities have and how many there are
/// (the whole view's entities written at worst: off the async workers).
async fn types_present(
    state: NgsiState,
    place: Place,
) -> Result<BTreeMap<&'static str, (usize, BTreeSet<String>)>, Problem> {
    let turn = state.turn().await?;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let names = commune_names(&state.access);
        let mut present: BTreeMap<&'static str, (usize, BTreeSet<String>)> = BTreeMap::new();
        for source in candidates(&state, &place, &EntityFilter::default()) {
            let entity = source.entity(&names, Representation::default());
            let (count, attributes) = present.entry(source.entity_type()).or_default();
            *count += 1;
            attributes.extend(entity.keys().filter(|k| !matches!(k.as_str(), "id" | "type")).cloned());
        }
        present
    })
    .await
    .map_err(|_| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "the types could not be listed"))
}

async fn list_types(
    State(state): State<NgsiState>,
    Extension(p): Extension<Principal>,
    Base(base): Base,
    headers: HeaderMap,
    query: RawQuery,
) -> Result<Response, Problem> {
    let Preamble { media, place } = preamble(&headers, &p, &state)?;
    let tenant = place.tenant.clone();
    let params = parameters(raw(query)?, &["details", "local"])?;
    let details = flag(&params, "details")?;
    let present = types_present(state.clone(), place).await?;
    let body = if details {
        Value::Array(
            present
                .iter()
                .map(|(t, (_, attributes))| {
                    json!({"id": expand(t), "type": "EntityType", "typeName": t, "attributeNames": attributes})
                })
                .collect(),
        )
    } else {
        json!({
            // The same id for every caller: nothing of the metropole's activity in it.
            "id": "urn:ngsi-ld:EntityTypeList:vigie",
            "type": "EntityTypeList",
            "typeList": present.keys().collect::<Vec<_>>(),
        })
    };
    Ok(answer(body, media, &base, tenant.as_deref(), Vec::new()))
}

async fn type_info(
    State(state): State<NgsiState>,
    Extension(p): Extension<Principal>,
    Path(wanted): Path<String>,
    Base(base): Base,
    headers: HeaderMap,
    query: RawQuery,
) -> Result<Response, Problem> {
    let Preamble { media, place } = preamble(&headers, &p, &state)?;
    let tenant = place.tenant.clone();
    parameters(raw(query)?, &["local"])?;
    let wanted = compact(&wanted);
    let present = types_present(state.clone(), place).await?;
    let (entity_type, (count, attributes)) = present.iter().find(|(t, _)| **t == wanted).ok_or_else(|| {
        Problem::not_found(format!("no entity of type {} here", wanted.chars().take(100).collect::<String>()))
    })?;
    let attribute_details: Vec<Value> = attributes
        .iter()
        .map(|name| {
            let kind = match name.as_str() {
                "location" => "GeoProperty",
                "alertSource" | "duplicateOf" | "refAlert" => "Relationship",
                _ => "Property",
            };
            json!({"id": expand(name), "type": "Attribute", "attributeName": name, "attributeTypes": [kind]})
        })
        .collect();
    let body = json!({
        "id": expand(entity_type),
        "type": "EntityTypeInfo",
        "typeName": entity_type,
        "entityCount": count,
        "attributeDetails": attribute_details,
    });
    Ok(answer(body, media, &base, tenant.as_deref(), Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).expect("header"));
        }
        h
    }

    #[test]
    fn negotiation_prefers_what_the_client_prefers() {
        assert_eq!(negotiate(&HeaderMap::new()).ok(), Some(Media::Json));
        assert_eq!(negotiate(&headers(&[("accept", "application/ld+json")])).ok(), Some(Media::JsonLd));
        assert_eq!(
            negotiate(&headers(&[("accept", "application/json;q=0.5, application/ld+json")])).ok(),
            Some(Media::JsonLd)
        );
        assert_eq!(negotiate(&headers(&[("accept", "*/*")])).ok(), Some(Media::Json));
        assert!(negotiate(&headers(&[("accept", "application/xml")])).is_err());
        assert!(negotiate(&headers(&[("accept", "application/json;q=0")])).is_err());
    }

    #[test]
    fn only_our_context_or_the_core_one_is_accepted() {
        let link = |url: &str| format!("<{url}>; rel=\"{CONTEXT_REL}\"; type=\"application/ld+json\"");
        assert!(check_link(&HeaderMap::new()).is_ok());
        assert!(check_link(&headers(&[("link", &link("http://gw:8080/ngsi-ld/contexts/vigie.jsonld"))])).is_ok());
        assert!(
            check_link(&headers(&[(
                "link",
                &link("https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.6.jsonld")
            )]))
            .is_ok()
        );
        let foreign = check_link(&headers(&[("link", &link("https://example.org/ctx.jsonld"))]));
        assert_eq!(foreign.err().map(|p| p.status), Some(StatusCode::GATEWAY_TIMEOUT));
        assert!(check_link(&headers(&[("link", "not a link")])).is_err());
    }

    #[test]
    fn the_context_spells_every_type_and_term_the_entities_use() {
        for t in entities::TYPES {
            assert!(TERMS.contains_key(t), "{t} is not in the context");
            assert_eq!(compact(&expand(t)), t);
        }
        for term in ["status", "powerState", "illuminanceLevel", "alertSource", "severity", "commune", "freeChlorine"] {
            assert!(TERMS.contains_key(term), "{term} is not in the context");
        }
        assert!(TERMS.values().all(|iri| iri.starts_with("https://")), "{:?}", *TERMS);
    }
}
