//! The Open311 GeoReport v2 face (https://wiki.open311.org/GeoReport_v2), under `/open311/v2/`:
//!
//! - `GET services.{json|xml}`, `GET services/{service_code}.{fmt}`
//! - `POST requests.{fmt}` (form-encoded, as the specification says), `GET requests.{fmt}`,
//!   `GET requests/{id}.{fmt}`, `GET tokens/{token}.{fmt}`
//!
//! `jurisdiction_id` is a commune's INSEE code. Extensions: `page` / `page_size` on
//! `GET requests`, and on each request `jurisdiction_id`, `detailed_status` (the lifecycle state),
//! `duplicate_of`, `duplicate_count` and `linked_alarm_key`. Errors are Open311 errors with the
//! matching HTTP status. The reporter's contact is never returned.

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::reports::{
    Contact, CreateRequestRequest, ListRequestsRequest, ReportStatus, ServiceDefinition, ServiceRequest,
};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::core::Reports;
use runtime::error::Error;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct Open311 {
    pub reports: Arc<Reports>,
    /// When non-empty, `POST requests` needs one of these `api_key`s.
    pub api_keys: HashSet<String>,
    pub limiter: RateLimiter,
    /// Reads are limited per client too: a costly query repeated is a flood as well.
    pub read_limiter: RateLimiter,
}

/// Refuses a client's reads beyond its rate (429, in the Open311 error format).
async fn limit_reads(
    State(app): State<Arc<Open311>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    // Every method but POST (which has its own limit): HEAD runs the same handlers as GET.
    if request.method() != axum::http::Method::POST && path != "/health" && !app.read_limiter.allow(peer.ip()) {
        let format = if path.ends_with(".xml") { Format::Xml } else { Format::Json };
        return error(format, StatusCode::TOO_MANY_REQUESTS, "too many reads from this client; try again in a minute");
    }
    next.run(request).await
}

pub fn router(state: Arc<Open311>) -> axum::Router {
    axum::Router::new()
        .route("/open311/v2/{file}", get(top_get).post(post_request))
        .route("/open311/v2/services/{file}", get(service_definition))
        .route("/open311/v2/requests/{file}", get(one_request))
        .route("/open311/v2/tokens/{file}", get(token))
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async {
            error(Format::Json, StatusCode::NOT_FOUND, "no such resource; the API is under /open311/v2/")
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), limit_reads))
        .with_state(state)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Json,
    Xml,
}

/// `name.json` → ("name", Json).
fn split_format(file: &str) -> Option<(&str, Format)> {
    match file.rsplit_once('.') {
        Some((name, "json")) => Some((name, Format::Json)),
        Some((name, "xml")) => Some((name, Format::Xml)),
        _ => None,
    }
}

fn bad_format() -> Response {
    error(Format::Json, StatusCode::NOT_FOUND, "the format must be .json or .xml")
}

fn error(format: Format, status: StatusCode, description: &str) -> Response {
    let body = vec![json!({"code": status.as_u16(), "description": description})];
    render(format, status, "errors", "error", &body)
}

fn report_error(format: Format, e: Error) -> Response {
    match e {
        Error::Invalid(m) => error(format, StatusCode::BAD_REQUEST, &m),
        Error::NotFound(m) => error(format, StatusCode::NOT_FOUND, &m),
        Error::Forbidden(m) => error(format, StatusCode::FORBIDDEN, &m),
        Error::Exhausted(m) => error(format, StatusCode::TOO_MANY_REQUESTS, &m),
        // Nothing was acknowledged: the client may send it again (as gRPC's UNAVAILABLE says).
        Error::Store(e) => {
            e.report();
            error(format, StatusCode::SERVICE_UNAVAILABLE, &format!("the store could not complete the write: {e}"))
        }
        other => {
            tracing::error!(error = %other, "Open311 request failed");
            error(format, StatusCode::INTERNAL_SERVER_ERROR, &other.to_string())
        }
    }
}

fn query_pairs(raw: Option<String>) -> Result<HashMap<String, String>, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or_default()).map_err(|e| format!("bad query string: {e}"))?;
    Ok(pairs.into_iter().collect())
}

async fn top_get(State(app): State<Arc<Open311>>, Path(file): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let Some((name, format)) = split_format(&file) else {
        return bad_format();
    };
    let query = match query_pairs(raw) {
        Ok(q) => q,
        Err(m) => return error(format, StatusCode::BAD_REQUEST, &m),
    };
    let jurisdiction = query.get("jurisdiction_id").cloned().unwrap_or_default();
    match name {
        "services" => match app.reports.services(&jurisdiction) {
            Ok(services) => {
                let list: Vec<Value> = services.iter().map(service_json).collect();
                render(format, StatusCode::OK, "services", "service", &list)
            }
            Err(e) => report_error(format, e),
        },
        "requests" => list_requests(&app, format, &query).await,
        _ => error(format, StatusCode::NOT_FOUND, &format!("no resource {name:?}")),
    }
}

fn service_json(s: &ServiceDefinition) -> Value {
    json!({
        "service_code": s.service_code,
        "service_name": s.service_name,
        "description": s.description,
        "metadata": s.metadata,
        "type": s.r#type,
        "keywords": s.keywords.join(","),
        "group": s.group,
    })
}

async fn service_definition(
    State(app): State<Arc<Open311>>,
    Path(file): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let Some((code, format)) = split_format(&file) else {
        return bad_format();
    };
    let jurisdiction = query_pairs(raw).ok().and_then(|q| q.get("jurisdiction_id").cloned()).unwrap_or_default();
    let services = match app.reports.services(&jurisdiction) {
        Ok(s) => s,
        Err(e) => return report_error(format, e),
    };
    let Some(service) = services.iter().find(|s| s.service_code == code) else {
        return error(format, StatusCode::NOT_FOUND, &format!("service_code {code:?} not found"));
    };
    let attributes: Vec<Value> = service
        .attributes
        .iter()
        .map(|a| {
            json!({
                "variable": a.variable,
                "code": a.code,
                "datatype": a.datatype,
                "required": a.required,
                "datatype_description": a.datatype_description,
                "order": a.order,
                "description": a.description,
                "values": a.values.iter().map(|v| json!({"key": v.key, "name": v.name})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let definition = json!({"service_code": service.service_code, "attributes": attributes});
    match format {
        Format::Json => json_response(StatusCode::OK, &definition),
        Format::Xml => xml_response(StatusCode::OK, xml_element("service_definition", &definition)),
    }
}

fn datetime(t: Option<prost_types::Timestamp>) -> Value {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|d| Value::String(d.format("%Y-%m-%dT%H:%M:%SZ").to_string()))
        .unwrap_or(Value::Null)
}

pub fn request_json(r: &ServiceRequest) -> Value {
    let status = ReportStatus::try_from(r.status).unwrap_or(ReportStatus::Unspecified);
    json!({
        "service_request_id": r.service_request_id,
        "status": status.open311(),
        "status_notes": r.status_notes,
        "service_name": r.service_name,
        "service_code": r.service_code,
        "description": r.description,
        "agency_responsible": r.agency_responsible,
        "service_notice": "",
        "requested_datetime": datetime(r.requested_datetime),
        "updated_datetime": datetime(r.updated_datetime),
        "expected_datetime": Value::Null,
        "address": r.address,
        "address_id": "",
        "zipcode": "",
        "lat": r.lat,
        "long": r.lon,
        "media_url": r.media_url,
        "jurisdiction_id": r.commune,
        "detailed_status": status.token(),
        "duplicate_of": r.duplicate_of,
        "duplicate_count": r.duplicate_count,
        "linked_alarm_key": r.linked_alarm_key,
    })
}

fn parse_date(what: &str, value: Option<&String>) -> Result<Option<prost_types::Timestamp>, String> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|d| prost_types::Timestamp { seconds: d.timestamp(), nanos: 0 })
                .map_err(|_| format!("{what} {v:?} is not an ISO 8601 date and time (e.g. 2026-11-23T08:00:00Z)"))
        })
        .transpose()
}

async fn list_requests(app: &Open311, format: Format, query: &HashMap<String, String>) -> Response {
    let number = |what: &str| -> Result<u32, String> {
        query
            .get(what)
            .filter(|v| !v.is_empty())
            .map_or(Ok(0), |v| v.parse().map_err(|_| format!("{what} must be a positive integer")))
    };
    let request = (|| -> Result<ListRequestsRequest, String> {
        Ok(ListRequestsRequest {
            commune: query.get("jurisdiction_id").cloned().unwrap_or_default(),
            service_request_ids: query
                .get("service_request_id")
                .map(|ids| ids.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
            service_code: query.get("service_code").cloned().unwrap_or_default(),
            start_date: parse_date("start_date", query.get("start_date"))?,
            end_date: parse_date("end_date", query.get("end_date"))?,
            status: query.get("status").cloned().unwrap_or_default(),
            page: number("page")?,
            page_size: number("page_size")?,
        })
    })();
    let request = match request {
        Ok(r) => r,
        Err(m) => return error(format, StatusCode::BAD_REQUEST, &m),
    };
    match app.reports.list(&request, SystemTime::now()).await {
        Ok(list) => {
            let items: Vec<Value> = list.iter().map(request_json).collect();
            render(format, StatusCode::OK, "service_requests", "request", &items)
        }
        Err(e) => report_error(format, e),
    }
}

async fn one_request(State(app): State<Arc<Open311>>, Path(file): Path<String>) -> Response {
    let Some((id, format)) = split_format(&file) else {
        return bad_format();
    };
    match app.reports.get(id).await {
        Ok(r) => render(format, StatusCode::OK, "service_requests", "request", &[request_json(&r)]),
        Err(e) => report_error(format, e),
    }
}

async fn token(State(app): State<Arc<Open311>>, Path(file): Path<String>) -> Response {
    let Some((token, format)) = split_format(&file) else {
        return bad_format();
    };
    match app.reports.token(token).await {
        Ok(id) => render(
            format,
            StatusCode::OK,
            "service_requests",
            "request",
            &[json!({"service_request_id": id, "token": token})],
        ),
        Err(e) => report_error(format, e),
    }
}

async fn post_request(
    State(app): State<Arc<Open311>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some((name, format)) = split_format(&file) else {
        return bad_format();
    };
    if name != "requests" {
        return error(format, StatusCode::NOT_FOUND, &format!("cannot POST {name:?}; POST requests.{{json|xml}}"));
    }
    if !app.limiter.allow(peer.ip()) {
        return error(
            format,
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests from this client; try again in a minute",
        );
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return error(
            format,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the request as application/x-www-form-urlencoded",
        );
    }
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                format,
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request is larger than {MAX_BODY_BYTES} bytes"),
            );
        }
    };
    let pairs: Vec<(String, String)> = match serde_urlencoded::from_bytes(&bytes) {
        Ok(p) => p,
        Err(e) => return error(format, StatusCode::BAD_REQUEST, &format!("undecodable form: {e}")),
    };
    let input = match form_to_request(&pairs) {
        Ok(i) => i,
        Err(m) => return error(format, StatusCode::BAD_REQUEST, &m),
    };
    if !app.api_keys.is_empty() {
        let key = pairs.iter().find(|(k, _)| k == "api_key").map(|(_, v)| v.as_str()).unwrap_or_default();
        if !app.api_keys.contains(key) {
            return error(format, StatusCode::FORBIDDEN, "api_key is missing or not valid");
        }
    }
    match app.reports.create(input, None, SystemTime::now()).await {
        Ok(created) => {
            let r = created.request.unwrap_or_default();
            let item = json!({
                "service_request_id": r.service_request_id,
                "token": r.token,
                "service_notice": created.service_notice,
                "account_id": Value::Null,
            });
            render(format, StatusCode::CREATED, "service_requests", "request", &[item])
        }
        Err(e) => report_error(format, e),
    }
}

/// The form fields of `POST requests` (`attribute[code]`, `attribute[code][]` for lists).
fn form_to_request(pairs: &[(String, String)]) -> Result<CreateRequestRequest, String> {
    let mut r = CreateRequestRequest::default();
    let mut contact = Contact::default();
    let coordinate = |name: &str, v: &str| v.trim().parse::<f64>().map_err(|_| format!("{name} {v:?} is not a number"));
    let mut multi: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in pairs {
        match k.as_str() {
            "jurisdiction_id" => r.commune = v.clone(),
            "service_code" => r.service_code = v.clone(),
            "lat" => r.lat = Some(coordinate("lat", v)?),
            "long" => r.lon = Some(coordinate("long", v)?),
            "address_string" => r.address_string = v.clone(),
            "description" => r.description = v.clone(),
            "media_url" => r.media_url = v.clone(),
            "email" => contact.email = v.clone(),
            "device_id" => contact.device_id = v.clone(),
            "account_id" => contact.account_id = v.clone(),
            "first_name" => contact.first_name = v.clone(),
            "last_name" => contact.last_name = v.clone(),
            "phone" => contact.phone = v.clone(),
            "address_id" if !v.is_empty() => {
                return Err("address_id is not supported here: give lat and long, or address_string".into());
            }
            _ => {
                if let Some(code) = k.strip_prefix("attribute[").and_then(|rest| rest.strip_suffix("][]")) {
                    multi.entry(code.to_owned()).or_default().push(v.clone());
                } else if let Some(code) = k.strip_prefix("attribute[").and_then(|rest| rest.strip_suffix(']')) {
                    r.attributes.insert(code.to_owned(), v.clone());
                }
                // Other fields (api_key, extensions of other servers) are not ours to refuse.
            }
        }
    }
    for (code, values) in multi {
        r.attributes.insert(code, values.join(","));
    }
    r.contact = Some(contact);
    Ok(r)
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        serde_json::to_string(value).unwrap_or_default(),
    )
        .into_response()
}

fn xml_response(status: StatusCode, body: String) -> Response {
    let text = format!("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n{body}");
    (status, [(header::CONTENT_TYPE, "text/xml; charset=utf-8")], text).into_response()
}

/// A list: a JSON array, or `<root><item>…</item>…</root>`.
fn render(format: Format, status: StatusCode, root: &str, item: &str, items: &[Value]) -> Response {
    match format {
        Format::Json => json_response(status, &items),
        Format::Xml => {
            let inner: String = items.iter().map(|v| xml_element(item, v)).collect();
            xml_response(status, format!("<{root}>{inner}</{root}>"))
        }
    }
}

/// Escapes text for XML; a character XML 1.0 cannot carry (none should have been stored: see
/// `domain::clean_text`) is dropped rather than break the document.
fn escape(text: &str) -> String {
    let text: String = text.chars().filter(|c| crate::domain::xml_char(*c)).collect();
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// The element for an array's members (`attributes` → `attribute`).
fn singular(name: &str) -> &str {
    match name {
        "attributes" => "attribute",
        "values" => "value",
        other => other.strip_suffix('s').unwrap_or(other),
    }
}

fn xml_element(name: &str, value: &Value) -> String {
    match value {
        Value::Null => format!("<{name}/>"),
        Value::Object(fields) => {
            let inner: String = fields.iter().map(|(k, v)| xml_element(k, v)).collect();
            format!("<{name}>{inner}</{name}>")
        }
        Value::Array(items) => {
            let inner: String = items.iter().map(|v| xml_element(singular(name), v)).collect();
            format!("<{name}>{inner}</{name}>")
        }
        Value::String(s) => format!("<{name}>{}</{name}>", escape(s)),
        other => format!("<{name}>{other}</{name}>"),
    }
}

/// Requests per client (IP address): a token bucket, `per_minute` in a burst, refilled evenly.
pub struct RateLimiter {
    per_minute: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter { per_minute: f64::from(per_minute), buckets: Mutex::new(HashMap::new()) }
    }

    pub fn allow(&self, client: IpAddr) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Forget the clients whose buckets are full again.
            let per_minute = self.per_minute;
            buckets.retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() * per_minute / 60.0 < per_minute);
        }
        let (tokens, at) = buckets.entry(client).or_insert((self.per_minute, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_minute / 60.0).min(self.per_minute);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_follow_the_specification() {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(
            "service_code=voirie&lat=43.6&long=3.87&attribute%5Btaille%5D=grand&attribute%5Bcouleurs%5D%5B%5D=a&attribute%5Bcouleurs%5D%5B%5D=b&email=x%40y.fr&api_key=k",
        )
        .unwrap();
        let r = form_to_request(&pairs).unwrap();
        assert_eq!((r.lat, r.lon), (Some(43.6), Some(3.87)));
        assert_eq!(r.attributes["taille"], "grand");
        assert_eq!(r.attributes["couleurs"], "a,b");
        assert_eq!(r.contact.unwrap().email, "x@y.fr");
        let bad: Vec<(String, String)> = vec![("lat".into(), "nord".into())];
        assert!(form_to_request(&bad).unwrap_err().contains("lat"));
    }

    #[test]
    fn xml_is_escaped_and_nested() {
        let v = json!({"code": "a<b", "values": [{"key": "k&", "name": null}], "n": 3});
        assert_eq!(
            xml_element("attribute", &v),
            "<attribute><code>a&lt;b</code><n>3</n><values><value><key>k&amp;</key><name/></value></values></attribute>"
        );
    }

    /// The router against a real (temporary) store and a one-commune territory.
    fn app(api_keys: &[&str]) -> (axum::Router, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"insee":"34172","name":"Ouest"},
          "geometry":{"type":"Polygon","coordinates":[[[3.8,43.5],[3.9,43.5],[3.9,43.7],[3.8,43.7],[3.8,43.5]]]}}]}"#;
        let territory =
            territory::Territory::from_communes(territory::parse_communes(std::path::Path::new("test"), text).unwrap());
        let reports = Reports::open(
            crate::store::Store::open(dir.path()).unwrap(),
            Arc::new(territory),
            None,
            crate::catalogue::Catalogue::with_defaults(),
            Vec::new(),
        )
        .unwrap();
        let state = Arc::new(Open311 {
            reports: Arc::new(reports),
            api_keys: api_keys.iter().map(|k| (*k).to_owned()).collect(),
            limiter: RateLimiter::new(100),
            read_limiter: RateLimiter::new(1000),
        });
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        (router(state).layer(axum::extract::connect_info::MockConnectInfo(peer)), dir)
    }

    async fn post(app: &axum::Router, form: &str) -> (StatusCode, String) {
        use tower::ServiceExt;
        let request = axum::http::Request::post("/open311/v2/requests.json")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.to_owned()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn api_keys_guard_posting_when_configured() {
        let form = "service_code=eau-fuite&lat=43.6&long=3.85";
        let (open, _dir) = app(&[]);
        assert_eq!(post(&open, form).await.0, StatusCode::CREATED, "no keys configured: anyone may post");
        let (guarded, _dir2) = app(&["cle-1", "cle-2"]);
        let (status, body) = post(&guarded, form).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(body.contains("\"code\":403") && body.contains("api_key"), "{body}");
        assert_eq!(post(&guarded, &format!("{form}&api_key=faux")).await.0, StatusCode::FORBIDDEN);
        assert_eq!(post(&guarded, &format!("{form}&api_key=cle-2")).await.0, StatusCode::CREATED);
    }

    #[test]
    fn the_rate_limit_refills() {
        let limiter = RateLimiter::new(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(limiter.allow(ip) && limiter.allow(ip));
        assert!(!limiter.allow(ip), "a burst of 2");
        assert!(limiter.allow("127.0.0.2".parse().unwrap()), "per client");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const FIELDS: [&str; 16] = [
            "jurisdiction_id",
            "service_code",
            "lat",
            "long",
            "address_string",
            "address_id",
            "description",
            "media_url",
            "email",
            "device_id",
            "account_id",
            "first_name",
            "last_name",
            "phone",
            "attribute[taille]",
            "attribute[couleurs][]",
        ];

        fn pair() -> impl Strategy<Value = (String, String)> {
            let key = prop_oneof![prop::sample::select(FIELDS.map(str::to_owned).to_vec()), any::<String>()];
            let value = prop_oneof![any::<String>(), "-?[0-9]{1,3}\\.[0-9]{0,6}", Just(String::new())];
            (key, value)
        }

        proptest! {
            /// Any posted body decodes into a form or a refusal, and any form into a request
            /// carrying its fields, or a refusal naming the field; none panics.
            #[test]
            fn random_forms_never_panic(
                bytes in prop::collection::vec(any::<u8>(), 0..256),
                pairs in prop::collection::vec(pair(), 0..12),
            ) {
                if let Ok(decoded) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes) {
                    let _ = form_to_request(&decoded);
                }
                match form_to_request(&pairs) {
                    Ok(r) => {
                        let last = |name: &str| pairs.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                        prop_assert_eq!(Some(r.description.clone()), last("description").or(Some(String::new())));
                        prop_assert_eq!(Some(r.service_code.clone()), last("service_code").or(Some(String::new())));
                        let number = |v: Option<String>| v.and_then(|v| v.trim().parse::<f64>().ok());
                        prop_assert_eq!(r.lat.map(f64::to_bits), number(last("lat")).map(f64::to_bits));
                        prop_assert_eq!(r.lon.map(f64::to_bits), number(last("long")).map(f64::to_bits));
                    }
                    Err(e) => prop_assert!(
                        e.starts_with("lat ") || e.starts_with("long ") || e.starts_with("address_id"),
                        "{e}"
                    ),
                }
            }

            /// Whatever text a report carries, its XML has no markup of the text's making and
            /// no character XML 1.0 forbids.
            #[test]
            fn xml_text_is_escaped(text in any::<String>()) {
                let xml = xml_element("description", &json!(text));
                let inner = xml.strip_prefix("<description>").and_then(|x| x.strip_suffix("</description>"));
                prop_assert!(inner.is_some());
                let inner = inner.unwrap_or_default();
                prop_assert!(!inner.contains('<') && !inner.contains('>'));
                prop_assert!(inner.chars().all(crate::domain::xml_char));
                // Read back as XML reads it, it is the text (less what XML cannot carry).
                let read = inner
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&apos;", "'")
                    .replace("&amp;", "&");
                let kept: String = text.chars().filter(|c| crate::domain::xml_char(*c)).collect();
                prop_assert_eq!(read, kept);
            }
        }
    }
}
