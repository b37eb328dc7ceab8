//! The territory for the console, read once at start (`--territory`): the communes for its
//! selector, and the offline basemap (commune boundaries, streets) as GeoJSON, so that the
//! console needs no tile, font or other network resource. Without a territory the answers are
//! empty and the console shows the live assets on a blank background.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, extract::State};
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone)]
pub struct Basemap {
    communes: Bytes,
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
        Basemap { communes: bytes(communes), boundaries: bytes(boundaries), streets: bytes(streets) }
    }
}

pub fn router(basemap: Basemap) -> Router {
    Router::new()
        .route("/api/v1/territory", get(|State(b): State<Arc<Basemap>>| async move { json(b.communes.clone(), false) }))
        .route(
            "/api/v1/basemap/communes.geojson",
            get(|State(b): State<Arc<Basemap>>| async move { json(b.boundaries.clone(), true) }),
        )
        .route(
            "/api/v1/basemap/streets.geojson",
            get(|State(b): State<Arc<Basemap>>| async move { json(b.streets.clone(), true) }),
        )
        .with_state(Arc::new(basemap))
}

fn json(body: Bytes, geo: bool) -> Response {
    let kind = if geo { "application/geo+json" } else { "application/json" };
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Fixed for the gateway's life: the browser may keep it for an hour.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    response
}
