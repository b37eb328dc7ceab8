//! The territory for the console, read once at start (`--territory`): the communes for its
//! selector, and the offline basemap (commune boundaries, streets) as GeoJSON, so that the
//! console needs no tile, font or other network resource. Without a territory the answers are
//! empty and the console shows the live assets on a blank background.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router, extract::State};

use crate::access::{Access, Communes, require_principal};
use crate::auth::Principal;
use crate::targets::KpiTargets;
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone)]
pub struct Basemap {
    /// The territory's communes (id, name, population, bbox), in its order.
    communes: Vec<serde_json::Value>,
    boundaries: Bytes,
    streets: Bytes,
}

impl Basemap {
    /// Reads the territory; a broken file is an error (the gateway does not start on bad data),
    /// a missing layer gives an empty one.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Basemap> {
        let empty = serde_json::json!({"type": "FeatureCollection", "features": []});
        let Some(dir) = dir else {
            return Ok(Basemap::from_values(&serde_json::json!({"communes": []}), &empty, &empty));
        };
        let territory = territory::Territory::load(dir)?;
        territory.log_summary();
        let streets = match territory.layer_path(territory::Layer::Streets) {
            Some(path) => territory::basemap::streets_geojson(path).map_err(anyhow::Error::msg)?,
            None => empty,
        };
        Ok(Basemap::from_values(
            &territory::basemap::communes_list(&territory),
            &territory::basemap::communes_geojson(&territory),
            &streets,
        ))
    }

    fn from_values(communes: &serde_json::Value, boundaries: &serde_json::Value, streets: &serde_json::Value) -> Self {
        let bytes = |v: &serde_json::Value| Bytes::from(v.to_string());
        let communes = communes["communes"].as_array().cloned().unwrap_or_default();
        Basemap { communes, boundaries: bytes(boundaries), streets: bytes(streets) }
    }

    /// The territory's communes: id -> name.
    pub fn commune_names(&self) -> std::collections::BTreeMap<String, String> {
        self.communes
            .iter()
            .filter_map(|c| Some((c["id"].as_str()?.to_owned(), c["name"].as_str()?.to_owned())))
            .collect()
    }
}

#[derive(Clone)]
struct MapState {
    basemap: Arc<Basemap>,
    communes: Communes,
    settings: Arc<ConsoleSettings>,
}

/// What the console is told with the territory: the KPI targets, and when alarms are a flood.
pub struct ConsoleSettings {
    pub targets: KpiTargets,
    /// Alarms raised in 10 minutes from which the console calls it a flood.
    pub alarm_flood: u32,
}

/// `/api/v1/territory`: the communes the caller may see (the territory's, then those an
/// administrator added), for the console's commune selector, the KPI targets of those
/// communes (with the defaults), and the alarm flood's threshold.
async fn territory(State(state): State<MapState>, Extension(p): Extension<Principal>) -> Response {
    let known = state.communes.read().map(|c| c.clone()).unwrap_or_default();
    let mut listed: Vec<serde_json::Value> = state
        .basemap
        .communes
        .iter()
        .filter(|c| c["id"].as_str().is_some_and(|id| p.scope.allows(id)))
        .cloned()
        .collect();
    for (id, name) in &known {
        if p.scope.allows(id) && !state.basemap.communes.iter().any(|c| c["id"] == id.as_str()) {
            listed.push(serde_json::json!({"id": id, "name": name, "population": null, "bbox": null}));
        }
    }
    let targets = state.settings.targets.for_scope(&p.scope);
    let flood = state.settings.alarm_flood;
    axum::Json(serde_json::json!({ "communes": listed, "kpi_targets": targets, "alarm_flood": flood })).into_response()
}

/// The territory's routes, behind a token like the rest of the API. The basemap is public
/// geography (every boundary, every street), the same for every caller.
pub fn router(basemap: Basemap, settings: ConsoleSettings, access: Access) -> Router {
    let state =
        MapState { basemap: Arc::new(basemap), communes: access.communes.clone(), settings: Arc::new(settings) };
    Router::new()
        .route("/api/v1/territory", get(territory))
        .route(
            "/api/v1/basemap/communes.geojson",
            get(|State(s): State<MapState>| async move { geojson(s.basemap.boundaries.clone()) }),
        )
        .route(
            "/api/v1/basemap/streets.geojson",
            get(|State(s): State<MapState>| async move { geojson(s.basemap.streets.clone()) }),
        )
        .layer(axum::middleware::from_fn_with_state(access, require_principal))
        .with_state(state)
}

fn geojson(body: Bytes) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/geo+json"));
    // Fixed for the gateway's life: the browser may keep it for an hour.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    response
}
