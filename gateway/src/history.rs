//! An asset's recent history, for the console's trends: its measures over time and its alarms
//! raised and cleared, read from the events stream by the asset's subject
//! (`<domain>.*.*.<asset>`, see `proto::subject`), so that one asset's day is read without
//! scanning its commune's events. `GET /api/v1/assets/{domain}/{id}/history?hours=24`.
//!
//! Scope: the asset must be in the caller's communes now (else the answer is the unknown asset's
//! 404, with no read of the stream: neither the answer nor its time says whether it exists
//! elsewhere), and only the events of the caller's communes are drawn (an asset that moved from
//! another commune shows only its part here).
//!
//! Bounds: one history read at a time per login, two in the whole gateway (others wait up to
//! 2 s, then 503), at most `MAX_EVENTS` events read per answer (a busier window starts later and
//! says so), at most `MAX_POINTS` points per series (thinned evenly, the latest always kept).

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull::Config as PullConfig};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use futures::StreamExt;
use proto::event::CheckedEvent;
use proto::ids::{AssetId, CommuneId};
use proto::v1::Domain;
use proto::v1::event::Payload;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::access::{Access, reader, require_principal};
use crate::auth::{Principal, Scope};
use crate::live::Live;
use crate::rest::ApiError;

/// The window asked by default, and the longest one.
const DEFAULT_HOURS: u32 = 24;
const MAX_HOURS: u32 = 168;
/// Events one answer reads at most (a vehicle reporting every 5 s makes 17,280 a day).
pub const MAX_EVENTS: u64 = 20_000;
/// Points per series at most (a trend is a few hundred pixels wide), and alarm marks.
pub const MAX_POINTS: usize = 2_000;
pub const MAX_MARKS: usize = 200;
/// Reads in flight in the whole gateway, and how long a request waits for one.
const READS_IN_FLIGHT: usize = 2;
const WAIT_FOR_READ: Duration = Duration::from_secs(2);
/// How long one read may take before it answers with what it has.
const READ_BUDGET: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct HistoryState {
    pub live: Arc<Live>,
    pub js: jetstream::Context,
    reads: Arc<tokio::sync::Semaphore>,
    /// Logins with a read in flight.
    reading: Arc<Mutex<HashSet<String>>>,
}

impl HistoryState {
    pub fn new(live: Arc<Live>, js: jetstream::Context) -> HistoryState {
        HistoryState {
            live,
            js,
            reads: Arc::new(tokio::sync::Semaphore::new(READS_IN_FLIGHT)),
            reading: Arc::default(),
        }
    }
}

pub fn router(state: HistoryState, access: Access) -> Router {
    Router::new()
        .route("/api/v1/assets/{domain}/{id}/history", get(history))
        .layer(axum::middleware::from_fn_with_state(access, require_principal))
        .with_state(state)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// How far back, hours (1 to 168, default 24).
    pub hours: Option<u32>,
}

/// One measure over time: `[milliseconds since the epoch, value]` pairs, oldest first, and the
/// limits the asset's alarms named for it.
#[derive(Debug, Serialize, PartialEq)]
pub struct Series {
    pub name: String,
    pub unit: String,
    pub points: Vec<(i64, f64)>,
    pub limits: Vec<f64>,
}

/// An alarm of the asset raised or cleared, at its time.
#[derive(Debug, Serialize, PartialEq)]
pub struct AlarmMark {
    pub at_ms: i64,
    pub key: String,
    pub alarm_type: String,
    /// The severity it was raised with ("" for a clearing).
    pub severity: String,
    pub raised: bool,
}

#[derive(Debug, Serialize)]
pub struct History {
    pub domain: String,
    pub id: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub series: Vec<Series>,
    pub alarms: Vec<AlarmMark>,
    /// Events read from the stream for this answer.
    pub events: u64,
    /// Not the whole window: it held more events than one answer reads (the series begin later
    /// than `from_ms`), or the read ran out of time (they end early).
    pub truncated: bool,
}

type QueryOf<T> = Result<Query<T>, axum::extract::rejection::QueryRejection>;

async fn history(
    State(state): State<HistoryState>,
    Extension(p): Extension<Principal>,
    Path((domain, id)): Path<(String, String)>,
    q: QueryOf<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    reader(&p)?;
    let q = q.map(|Query(q)| q).map_err(|e| ApiError::bad_request(e.body_text()))?;
    let hours = q.hours.unwrap_or(DEFAULT_HOURS);
    if !(1..=MAX_HOURS).contains(&hours) {
        return Err(ApiError::bad_request(format!("hours is 1 to {MAX_HOURS}")));
    }
    let domain_of = Domain::from_token(&domain).filter(|d| *d != Domain::Ops);
    let Some(domain_of) = domain_of else {
        return Err(ApiError::bad_request("domain is one of transport, lighting, water, reports"));
    };
    let asset = AssetId::parse(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    // The same answer for an asset elsewhere as for one that does not exist, before any read.
    let visible = state.live.read(|view| view.asset_state(&domain, &id).is_some_and(|a| p.scope.allows(&a.commune)));
    if !visible {
        return Err(ApiError::not_found(format!("no {domain} asset {id} in your communes")));
    }
    let _mine = OneReadPerLogin::take(&state.reading, &p.login).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "one history at a time per login: retry when it has answered",
        )
    })?;
    let _permit = tokio::time::timeout(WAIT_FOR_READ, state.reads.acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| ApiError::unavailable("histories are busy: retry in a moment"))?;
    let to = SystemTime::now();
    let from = to - Duration::from_secs(u64::from(hours) * 3600);
    let read = read(&state.js, domain_of, &asset, from, &p).await.map_err(|e| {
        tracing::warn!(error = %format!("{e:#}"), "history read failed");
        ApiError::unavailable("the events stream cannot be read now")
    })?;
    let (from_ms, to_ms) = (millis(from), millis(to));
    let mut series: Vec<Series> = read.series.into_values().collect();
    for s in &mut series {
        s.limits = read.limits.get(&s.name).cloned().unwrap_or_default();
        // By the time observed (a controller may send what it buffered late), within the window.
        let mut points = std::mem::take(&mut s.points);
        points.retain(|(at, _)| (from_ms..=to_ms).contains(at));
        points.sort_by_key(|(at, _)| *at);
        s.points = thinned(points, MAX_POINTS);
    }
    series.retain(|s| !s.points.is_empty());
    let mut alarms = read.alarms;
    alarms.retain(|m| (from_ms..=to_ms).contains(&m.at_ms));
    alarms.sort_by_key(|m| m.at_ms);
    // The most recent marks, if a chattering alarm made more than a trend can show.
    let alarms = alarms.split_off(alarms.len().saturating_sub(MAX_MARKS));
    Ok(Json(History { domain, id, from_ms, to_ms, series, alarms, events: read.events, truncated: read.truncated }))
}

/// Marks a login as reading until dropped.
struct OneReadPerLogin {
    reading: Arc<Mutex<HashSet<String>>>,
    login: String,
}

impl OneReadPerLogin {
    fn take(reading: &Arc<Mutex<HashSet<String>>>, login: &str) -> Option<OneReadPerLogin> {
        let mut set = reading.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(login.to_owned()).then(|| OneReadPerLogin { reading: reading.clone(), login: login.to_owned() })
    }
}

impl Drop for OneReadPerLogin {
    fn drop(&mut self) {
        self.reading.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.login);
    }
}

#[derive(Default)]
struct Read {
    series: BTreeMap<String, Series>,
    /// Limits named by the alarms, by measure.
    limits: BTreeMap<String, Vec<f64>>,
    alarms: Vec<AlarmMark>,
    events: u64,
    truncated: bool,
}

/// Reads the asset's events since `from`, in stream order. The consumer's filters are the
/// caller's communes' subjects of the asset (`<domain>.<commune>.*.<asset>`): the server neither
/// delivers nor counts another commune's events, so neither the answer nor its time says how busy
/// the asset was elsewhere.
async fn read(
    js: &jetstream::Context,
    domain: Domain,
    asset: &AssetId,
    from: SystemTime,
    p: &Principal,
) -> anyhow::Result<Read> {
    let stream = js.get_stream(proto::subject::EVENTS_STREAM).await?;
    let filters: Vec<String> = match &p.scope {
        Scope::All => vec![proto::subject::asset_events(domain, asset)],
        Scope::Communes(communes) => communes
            .iter()
            .filter_map(|c| CommuneId::parse(c).ok())
            .map(|c| proto::subject::asset_events_in(domain, &c, asset))
            .collect(),
    };
    let mut out = Read::default();
    if filters.is_empty() {
        return Ok(out);
    }
    let open = |start: SystemTime| {
        let (stream, filters) = (stream.clone(), filters.clone());
        async move {
            let nanos = start.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
            let start_time = async_nats::datetime::from_nanos(i128::try_from(nanos).unwrap_or(i128::MAX))
                .map_err(|e| anyhow::anyhow!("start time: {e}"))?;
            let name = format!("history-{}", crate::auth::new_sid());
            let (filter_subject, filter_subjects) =
                if filters.len() == 1 { (filters[0].clone(), Vec::new()) } else { (String::new(), filters) };
            let consumer = stream
                .create_consumer(PullConfig {
                    name: Some(name.clone()),
                    filter_subject,
                    filter_subjects,
                    deliver_policy: DeliverPolicy::ByStartTime { start_time },
                    ack_policy: AckPolicy::None,
                    memory_storage: true,
                    // Gone by itself soon if this gateway dies mid-read.
                    inactive_threshold: Duration::from_secs(10),
                    ..Default::default()
                })
                .await?;
            anyhow::Ok((consumer, Deleted { stream, name: Some(name) }))
        }
    };
    let (mut consumer, mut deleted) = open(from).await?;
    let mut pending = consumer.cached_info().num_pending;
    // A busier window than one answer reads: start later, about where the last MAX_EVENTS begin
    // (events spread evenly), again while still too many, and say so.
    let mut start = from;
    for _ in 0..3 {
        if pending <= MAX_EVENTS {
            break;
        }
        let now = SystemTime::now();
        let span = now.duration_since(start).unwrap_or_default();
        start = now - span.mul_f64(MAX_EVENTS as f64 / pending as f64 * 0.9);
        (consumer, deleted) = open(start).await?;
        pending = consumer.cached_info().num_pending;
        out.truncated = true;
    }
    if pending == 0 {
        drop(deleted);
        return Ok(out);
    }
    let mut messages = consumer.messages().await?;
    let deadline = tokio::time::Instant::now() + READ_BUDGET;
    while out.events < pending.min(MAX_EVENTS) {
        let next = tokio::time::timeout_at(deadline, messages.next()).await;
        let Ok(Some(message)) = next else {
            out.truncated = true;
            break;
        };
        let message = message?;
        out.events += 1;
        if let Ok(event) = proto::event::decode(&message.payload)
            && event.published_on(&message.subject)
            && p.scope.allows(event.commune.as_str())
        {
            fold(&mut out, &event);
        }
        if message.info().is_ok_and(|i| i.pending == 0) {
            break;
        }
    }
    if pending > MAX_EVENTS {
        out.truncated = true;
    }
    drop(deleted);
    Ok(out)
}

/// Deletes a history's consumer when the read ends, whichever way it ends.
struct Deleted {
    stream: jetstream::stream::Stream,
    name: Option<String>,
}

impl Drop for Deleted {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            let stream = self.stream.clone();
            tokio::spawn(async move {
                if let Err(e) = stream.delete_consumer(&name).await {
                    tracing::debug!(error = %e, consumer = %name, "history consumer not deleted (it expires by itself)");
                }
            });
        }
    }
}

/// What one event adds: points of its measures, or an alarm mark (and the limit it names).
fn fold(out: &mut Read, event: &CheckedEvent) {
    let at = event.event.observed_at.as_ref().map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
    let mut point = |name: &str, unit: &str, value: f64| {
        if value.is_finite() {
            let series = out.series.entry(name.to_owned()).or_insert_with(|| Series {
                name: name.to_owned(),
                unit: unit.to_owned(),
                points: Vec::new(),
                limits: Vec::new(),
            });
            series.points.push((at, value));
        }
    };
    match event.payload() {
        Payload::StreetlightStatus(s) => {
            if let Some(r) = &s.report {
                point("illuminance_level", "%", r.illuminance_level * 100.0);
                point("power_consumption_w", "W", r.power_consumption_w);
            }
        }
        Payload::VehicleMoved(v) => {
            if let Some(state) = &v.state {
                if let Some(delay) = state.delay_s {
                    point("delay_s", "s", delay);
                }
                if let Some(headway) = state.headway_s {
                    point("headway_s", "s", headway);
                }
            }
        }
        Payload::WaterReading(w) => {
            if let Some(r) = &w.reading {
                point(&r.measure, &r.unit, r.value);
            }
        }
        Payload::LightingAlarmRaised(a) | Payload::TransportAlarmRaised(a) | Payload::WaterAlarmRaised(a) => {
            let limit = a.details.get("limit").and_then(|l| l.parse::<f64>().ok()).filter(|l| l.is_finite());
            if let (Some(measure), Some(limit)) = (a.details.get("measure"), limit) {
                let limits = out.limits.entry(measure.clone()).or_default();
                if !limits.contains(&limit) && limits.len() < 4 {
                    limits.push(limit);
                }
            }
            out.alarms.push(AlarmMark {
                at_ms: at,
                key: a.key.clone(),
                alarm_type: a.alarm_type.clone(),
                severity: proto::live::from_proto::severity_name(a.severity).to_owned(),
                raised: true,
            });
        }
        Payload::LightingAlarmCleared(a) | Payload::TransportAlarmCleared(a) | Payload::WaterAlarmCleared(a) => {
            out.alarms.push(AlarmMark {
                at_ms: at,
                key: a.key.clone(),
                alarm_type: a.alarm_type.clone(),
                severity: String::new(),
                raised: false,
            });
        }
        _ => {}
    }
}

/// At most `max` points, evenly spread, the first and the latest always kept.
fn thinned(points: Vec<(i64, f64)>, max: usize) -> Vec<(i64, f64)> {
    if points.len() <= max || max < 2 {
        return points;
    }
    let last = points.len() - 1;
    let step = last as f64 / (max - 1) as f64;
    (0..max).map(|k| points[((k as f64 * step).round() as usize).min(last)]).collect()
}

fn millis(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_the_ends_and_spreads_the_rest() {
        let points: Vec<(i64, f64)> = (0..10_000).map(|i| (i, i as f64)).collect();
        let thin = thinned(points.clone(), 2_000);
        assert_eq!(thin.len(), 2_000);
        assert_eq!(thin.first(), Some(&(0, 0.0)));
        assert_eq!(thin.last(), Some(&(9_999, 9_999.0)));
        assert!(thin.windows(2).all(|w| w[0].0 < w[1].0), "in order, no point twice");
        assert_eq!(thinned(points[..10].to_vec(), 2_000).len(), 10, "few points are kept as they are");
    }

    #[test]
    fn one_read_per_login_at_a_time() {
        let reading = Arc::default();
        let first = OneReadPerLogin::take(&reading, "op");
        assert!(first.is_some());
        assert!(OneReadPerLogin::take(&reading, "op").is_none(), "a second read of the same login");
        assert!(OneReadPerLogin::take(&reading, "other").is_some(), "another login");
        drop(first);
        assert!(OneReadPerLogin::take(&reading, "op").is_some(), "once the first has answered");
    }
}
