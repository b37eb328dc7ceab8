//! The territory as the console draws it, with no network resource: the communes' boundaries and
//! the streets as GeoJSON, built from the parsed layers (only the properties the map uses, so
//! that nothing else in the source files reaches a browser).

use crate::Territory;
use crate::streets::MAX_STREETS_BYTES;
use geo::BoundingRect;
use serde_json::{Value, json};
use std::path::Path;

/// The communes (id, name, population, bounding box), for the console's commune selector.
pub fn communes_list(territory: &Territory) -> Value {
    let communes: Vec<Value> = territory
        .communes()
        .iter()
        .map(|c| {
            let bbox = c.boundary.bounding_rect().map(|r| [r.min().x, r.min().y, r.max().x, r.max().y]);
            json!({"id": c.id.as_str(), "name": c.name, "population": c.population, "bbox": bbox})
        })
        .collect();
    json!({ "communes": communes })
}

/// The communes' boundaries: a FeatureCollection of MultiPolygons with `insee` and `name`.
pub fn communes_geojson(territory: &Territory) -> Value {
    let features: Vec<Value> = territory
        .communes()
        .iter()
        .map(|c| {
            let geometry = geojson::Geometry::new(geojson::Value::from(&c.boundary));
            json!({"type": "Feature", "properties": {"insee": c.id.as_str(), "name": c.name}, "geometry": geometry})
        })
        .collect();
    json!({"type": "FeatureCollection", "features": features})
}

/// The streets' lines with their `name` (and `road_type` when given); unnamed lines are kept, as
/// they are part of the map. Coordinates outside WGS84 bounds are refused.
pub fn streets_geojson(path: &Path) -> Result<Value, String> {
    let size = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
    if size > MAX_STREETS_BYTES {
        return Err(format!("{} is {size} bytes, more than {MAX_STREETS_BYTES}", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    streets_from_text(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn streets_from_text(text: &str) -> Result<Value, String> {
    let collection = match text.parse::<geojson::GeoJson>().map_err(|e| e.to_string())? {
        geojson::GeoJson::FeatureCollection(fc) => fc,
        _ => return Err("the top level is not a FeatureCollection".into()),
    };
    let in_bounds = |p: &Vec<f64>| p.len() >= 2 && (-180.0..=180.0).contains(&p[0]) && (-90.0..=90.0).contains(&p[1]);
    let mut features = Vec::with_capacity(collection.features.len());
    for (index, feature) in collection.features.iter().enumerate() {
        let geometry = match feature.geometry.as_ref().map(|g| &g.value) {
            Some(v @ geojson::Value::LineString(line)) if line.iter().all(in_bounds) => v.clone(),
            Some(v @ geojson::Value::MultiLineString(lines)) if lines.iter().flatten().all(in_bounds) => v.clone(),
            Some(geojson::Value::LineString(_) | geojson::Value::MultiLineString(_)) => {
                return Err(format!("feature {index}: a coordinate is not a longitude, latitude in degrees"));
            }
            _ => continue,
        };
        let text_property = |key: &str| feature.property(key).and_then(|v| v.as_str()).map(str::trim).unwrap_or("");
        features.push(json!({
            "type": "Feature",
            "properties": {"name": text_property("name"), "road_type": text_property("road_type")},
            "geometry": geojson::Geometry::new(geometry),
        }));
    }
    Ok(json!({"type": "FeatureCollection", "features": features}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streets_keep_lines_and_names_only() {
        let text = r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"name":" Rue A ","owner":"x"},"geometry":{"type":"LineString","coordinates":[[3.8,43.6],[3.81,43.61]]}},
          {"type":"Feature","properties":{},"geometry":{"type":"MultiLineString","coordinates":[[[3.8,43.6],[3.9,43.6]]]}},
          {"type":"Feature","properties":{"name":"Place"},"geometry":{"type":"Point","coordinates":[3.8,43.6]}}]}"#;
        let streets = streets_from_text(text).unwrap();
        let features = streets["features"].as_array().unwrap();
        assert_eq!(features.len(), 2, "the point is left out");
        assert_eq!(features[0]["properties"], json!({"name": "Rue A", "road_type": ""}));
        assert_eq!(features[1]["geometry"]["type"], "MultiLineString");
    }

    #[test]
    fn streets_refuse_coordinates_that_are_not_degrees() {
        let text = r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{},"geometry":{"type":"LineString","coordinates":[[770000,6280000],[770010,6280000]]}}]}"#;
        assert!(streets_from_text(text).unwrap_err().contains("feature 0"));
        assert!(streets_from_text("[]").is_err());
    }

    #[test]
    fn communes_become_multipolygons_with_their_bbox() {
        let text = r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"insee":"00001","name":"West","population":10,"mayor":"x"},
           "geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]}}]}"#;
        let territory = Territory::from_communes(crate::parse_communes(Path::new("c"), text).unwrap());
        let map = communes_geojson(&territory);
        assert_eq!(map["features"][0]["properties"], json!({"insee": "00001", "name": "West"}));
        assert_eq!(map["features"][0]["geometry"]["type"], "MultiPolygon");
        let list = communes_list(&territory);
        assert_eq!(
            list["communes"][0],
            json!({"id": "00001", "name": "West", "population": 10, "bbox": [0.0, 0.0, 1.0, 1.0]})
        );
    }
}
