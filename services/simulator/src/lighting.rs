//! The lighting field: the territory's real streetlight inventory, and the status reports a
//! lighting management system would send for it.

use proto::lighting::{LampStatus, PowerState, StatusReport, Streetlight};
use rand::Rng;
use std::collections::HashSet;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

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

pub fn read_inventory(path: &Path) -> Result<Vec<Streetlight>, InventoryError> {
    let name = path.display().to_string();
    let io = |source| InventoryError::Io { path: name.clone(), source };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_INVENTORY_BYTES {
        return Err(InventoryError::TooLarge { path: name, size, max: MAX_INVENTORY_BYTES });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse_inventory(&name, &text)
}

/// Parses streetlights: Point features with properties `id` (string), `lamp_type` (string or
/// null) and `insee` (string, optional: the service locates the commune when absent).
pub fn parse_inventory(path: &str, text: &str) -> Result<Vec<Streetlight>, InventoryError> {
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
        let lamp_type = feature.property("lamp_type").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let commune = feature.property("insee").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let street = feature.property("street").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        lights.push(Streetlight { id: id.to_owned(), commune, lat, lon, lamp_type, street });
    }
    Ok(lights)
}

/// Rated power of a lamp by its inventory type, in watts (typical sodium / LED values).
pub fn rated_power_w(lamp_type: &str) -> f64 {
    match lamp_type {
        "PROJECTEUR" => 150.0,
        "LANTERNE" => 70.0,
        "LUMINAIRE AMBIANCE" => 45.0,
        "ENCASTRE" | "BORNE COLONNE" => 25.0,
        _ => 60.0,
    }
}

/// Whether it is night at this longitude: local solar time outside 07:00-18:00. A rough rule
/// until the lighting service computes real sunset and sunrise for each commune.
pub fn is_night(now: SystemTime, lon: f64) -> bool {
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let solar_hours = ((secs / 3600.0) + lon / 15.0).rem_euclid(24.0);
    !(7.0..18.0).contains(&solar_hours)
}

/// How a simulated lamp is doing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LampCondition {
    /// The lamp itself failed (reports `defectiveLamp`).
    pub faulty: bool,
    /// Its feeder is down (no power at all).
    pub unpowered: bool,
    /// Level set by the latest command, when one applies (`None`: the normal night/day cycle).
    pub commanded_level: Option<f64>,
}

/// The state a controller reports for one lamp: on at night (at the commanded level, if any), off
/// by day; a faulty lamp reports `defectiveLamp` and draws nothing; an unpowered one is off.
pub fn report<R: Rng>(rng: &mut R, light: &Streetlight, now: SystemTime, condition: LampCondition) -> StatusReport {
    let night = is_night(now, light.lon);
    let rated = rated_power_w(&light.lamp_type);
    let level = condition.commanded_level.unwrap_or(if night { 1.0 } else { 0.0 });
    let (status, power_state, level, power) = if condition.unpowered {
        (LampStatus::Ok, PowerState::Off, 0.0, 0.0)
    } else if condition.faulty {
        (LampStatus::DefectiveLamp, if level > 0.0 { PowerState::On } else { PowerState::Off }, 0.0, 0.0)
    } else if level <= 0.0 {
        (LampStatus::Ok, PowerState::Off, 0.0, 0.0)
    } else {
        let state = if level < 1.0 { PowerState::Low } else { PowerState::On };
        (LampStatus::Ok, state, level, rated * level * rng.random_range(0.95..1.05))
    };
    StatusReport {
        streetlight_id: light.id.clone(),
        observed_at: Some(now.into()),
        status: status as i32,
        power_state: power_state as i32,
        illuminance_level: level,
        power_consumption_w: power,
        voltage_v: if condition.unpowered { Some(0.0) } else { Some(rng.random_range(225.0..235.0)) },
    }
}

/// Lamps within `radius_m` of lamp `center`: what one feeder (a cabinet's circuit) supplies.
pub fn feeder(lights: &[Streetlight], center: usize, radius_m: f64) -> Vec<usize> {
    let Some(c) = lights.get(center) else { return Vec::new() };
    let m_per_deg_lon = 111_320.0 * c.lat.to_radians().cos();
    lights
        .iter()
        .enumerate()
        .filter(|(_, l)| ((l.lon - c.lon) * m_per_deg_lon).hypot((l.lat - c.lat) * 111_132.0) <= radius_m)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::time::Duration;

    #[test]
    fn parses_and_refuses() {
        let text = r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"id":"EP1","lamp_type":"LANTERNE","insee":"34172"},"geometry":{"type":"Point","coordinates":[3.87,43.6]}},
          {"type":"Feature","properties":{"id":"EP2","lamp_type":null},"geometry":{"type":"Point","coordinates":[3.88,43.61]}}]}"#;
        let lights = parse_inventory("x", text).unwrap();
        assert_eq!(lights.len(), 2);
        assert_eq!((lights[0].lat, lights[0].lon, lights[0].commune.as_str()), (43.6, 3.87, "34172"));
        assert_eq!(lights[1].lamp_type, "");
        let err = parse_inventory("x", &text.replace("\"EP2\"", "\"EP1\"")).unwrap_err().to_string();
        assert!(err.contains("feature 1") && err.contains("twice"), "{err}");
        let err = parse_inventory(
            "x",
            &text.replace(
                "\"Point\",\"coordinates\":[3.88,43.61]",
                "\"LineString\",\"coordinates\":[[3.88,43.61],[3,4]]",
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not a Point"), "{err}");
    }

    #[test]
    fn night_and_day() {
        let midnight_utc = UNIX_EPOCH + Duration::from_secs(20_000 * 86_400);
        assert!(is_night(midnight_utc, 3.87));
        assert!(!is_night(midnight_utc + Duration::from_secs(12 * 3600), 3.87));
        // Same UTC instant, other side of the world: noon there.
        assert!(!is_night(midnight_utc, 180.0));
    }

    #[test]
    fn reports_are_valid_and_reproducible() {
        let light = Streetlight {
            id: "EP1".into(),
            commune: String::new(),
            lat: 43.6,
            lon: 3.87,
            lamp_type: "LANTERNE".into(),
            street: String::new(),
        };
        let night = UNIX_EPOCH + Duration::from_secs(20_000 * 86_400);
        let normal = LampCondition { faulty: false, unpowered: false, commanded_level: None };
        let a = report(&mut rand::rngs::StdRng::seed_from_u64(7), &light, night, normal);
        let b = report(&mut rand::rngs::StdRng::seed_from_u64(7), &light, night, normal);
        assert_eq!(a, b);
        assert_eq!(a.power_state, PowerState::On as i32);
        assert!(a.power_consumption_w > 60.0 && a.power_consumption_w < 80.0);
        let broken =
            report(&mut rand::rngs::StdRng::seed_from_u64(7), &light, night, LampCondition { faulty: true, ..normal });
        assert_eq!(broken.status, LampStatus::DefectiveLamp as i32);
        assert_eq!(broken.illuminance_level, 0.0);
        let dimmed = report(
            &mut rand::rngs::StdRng::seed_from_u64(7),
            &light,
            night,
            LampCondition { commanded_level: Some(0.5), ..normal },
        );
        assert_eq!((dimmed.power_state, dimmed.illuminance_level), (PowerState::Low as i32, 0.5));
        assert!(dimmed.power_consumption_w > 30.0 && dimmed.power_consumption_w < 40.0);
        let dark = report(
            &mut rand::rngs::StdRng::seed_from_u64(7),
            &light,
            night,
            LampCondition { unpowered: true, ..normal },
        );
        assert_eq!((dark.power_state, dark.voltage_v), (PowerState::Off as i32, Some(0.0)));
    }

    #[test]
    fn a_feeder_is_the_lamps_around_one() {
        let at = |id: &str, east_m: f64| Streetlight {
            id: id.into(),
            lat: 43.6,
            lon: 3.87 + east_m / (111_320.0 * 43.6f64.to_radians().cos()),
            ..Default::default()
        };
        let lights = vec![at("a", 0.0), at("b", 50.0), at("c", 150.0), at("d", -70.0)];
        assert_eq!(feeder(&lights, 0, 80.0), [0, 1, 3]);
        assert!(feeder(&lights, 9, 80.0).is_empty());
    }
}
