//! The streetlight layer of a territory (`lighting/streetlights.geojson`): Point features with
//! `id`, `lamp_type` (string or null), optional `insee` and `street`.

use proto::lighting::Streetlight;
use std::collections::HashSet;
use std::path::Path;

/// Largest inventory file read (the real one is 4.9 MB).
pub const MAX_INVENTORY_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is {size} bytes, more than {max}")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("{path} is not a GeoJSON FeatureCollection: {message}")]
    NotGeoJson { path: String, message: String },
    #[error("{path}, feature {index}: {message}")]
    BadFeature { path: String, index: usize, message: String },
}

pub fn read(path: &Path) -> Result<Vec<Streetlight>, InventoryError> {
    let name = path.display().to_string();
    let io = |source| InventoryError::Io { path: name.clone(), source };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_INVENTORY_BYTES {
        return Err(InventoryError::TooLarge { path: name, size, max: MAX_INVENTORY_BYTES });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse(&name, &text)
}

/// Parses an inventory; `commune` is the file's `insee` when it has one (the services check it).
pub fn parse(path: &str, text: &str) -> Result<Vec<Streetlight>, InventoryError> {
    let not_geojson = |message: String| InventoryError::NotGeoJson { path: path.to_owned(), message };
    let collection = match text.parse::<geojson::GeoJson>().map_err(|e| not_geojson(e.to_string()))? {
        geojson::GeoJson::FeatureCollection(fc) => fc,
        _ => return Err(not_geojson("the top level is not a FeatureCollection".into())),
    };
    let mut seen = HashSet::new();
    let mut lights = Vec::with_capacity(collection.features.len());
    for (index, feature) in collection.features.iter().enumerate() {
        let bad = |message: String| InventoryError::BadFeature { path: path.to_owned(), index, message };
        let id = feature
            .property("id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("property \"id\" is missing or not a string".into()))?;
        if !seen.insert(id.to_owned()) {
            return Err(bad(format!("streetlight {id} appears twice")));
        }
        let (lon, lat) = match feature.geometry.as_ref().map(|g| &g.value) {
            Some(geojson::Value::Point(p)) if p.len() >= 2 => (p[0], p[1]),
            _ => return Err(bad(format!("streetlight {id}: geometry is not a Point"))),
        };
        if proto::event::check_position(lat, lon).is_err() {
            return Err(bad(format!("streetlight {id}: position [{lon}, {lat}] is not a longitude and a latitude")));
        }
        let text = |name: &str| feature.property(name).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        lights.push(Streetlight {
            id: id.to_owned(),
            commune: text("insee"),
            lat,
            lon,
            lamp_type: text("lamp_type"),
            street: text("street"),
        });
    }
    Ok(lights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let text = r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"id":"EP1","lamp_type":"LANTERNE","insee":"34172"},"geometry":{"type":"Point","coordinates":[3.87,43.6]}},
          {"type":"Feature","properties":{"id":"EP2","lamp_type":null,"street":"Rue Foch"},"geometry":{"type":"Point","coordinates":[3.88,43.61]}}]}"#;
        let lights = parse("x", text).unwrap();
        assert_eq!(lights.len(), 2);
        assert_eq!((lights[0].lat, lights[0].lon, lights[0].commune.as_str()), (43.6, 3.87, "34172"));
        assert_eq!((lights[1].lamp_type.as_str(), lights[1].street.as_str()), ("", "Rue Foch"));
        let err = parse("x", &text.replace("\"EP2\"", "\"EP1\"")).unwrap_err().to_string();
        assert!(err.contains("feature 1") && err.contains("twice"), "{err}");
        let line = "\"LineString\",\"coordinates\":[[3.88,43.61],[3,4]]";
        let err = parse("x", &text.replace("\"Point\",\"coordinates\":[3.88,43.61]", line)).unwrap_err().to_string();
        assert!(err.contains("not a Point"), "{err}");
    }

    #[test]
    fn the_real_inventory_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/montpellier-mediterranee-metropole/lighting/streetlights.geojson");
        if !path.is_file() {
            eprintln!("SKIP the_real_inventory_loads: {} is absent", path.display());
            return;
        }
        let lights = read(&path).unwrap();
        assert_eq!(lights.len(), 29_969);
        assert_eq!(lights[0].id, "EP00001");
    }
}

/// Property tests of the data files' readers: whatever text a file holds (random, or GeoJSON with
/// odd values), reading it answers without panicking, and every streetlight it yields has a
/// position on Earth and an id of the inventory's alphabet.
#[cfg(test)]
mod file_properties {
    use super::*;
    use proptest::prelude::*;

    fn coordinate() -> impl Strategy<Value = String> {
        prop_oneof![
            (-400.0..400.0f64).prop_map(|v| v.to_string()),
            Just("1e400".to_owned()),
            Just("null".to_owned()),
            Just("\"3.8\"".to_owned()),
            Just("-0".to_owned()),
        ]
    }

    proptest! {
        #[test]
        fn random_text_never_panics(text in any::<String>()) {
            let _ = parse("streetlights.geojson", &text);
            let _ = crate::parse_communes(std::path::Path::new("communes.geojson"), &text);
            let _ = crate::streets::StreetIndex::parse(&text);
        }

        #[test]
        fn read_streetlights_are_on_earth(
            id in "[A-Za-z0-9_:-]{0,70}|.{0,8}",
            lon in coordinate(),
            lat in coordinate(),
            street in any::<String>(),
        ) {
            let text = format!(
                r#"{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{{"id":{},"street":{}}},"geometry":{{"type":"Point","coordinates":[{lon},{lat}]}}}}]}}"#,
                serde_json::Value::String(id),
                serde_json::Value::String(street),
            );
            if let Ok(lights) = parse("streetlights.geojson", &text) {
                for light in lights {
                    prop_assert!(light.lat.is_finite() && (-90.0..=90.0).contains(&light.lat), "{}", light.lat);
                    prop_assert!(light.lon.is_finite() && (-180.0..=180.0).contains(&light.lon), "{}", light.lon);
                }
            }
        }
    }
}
