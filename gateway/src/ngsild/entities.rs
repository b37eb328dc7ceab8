//! The operations view as NGSI-LD entities (normalized), with the Smart Data Models' types and
//! attribute names where they have one: `Streetlight` (dataModel.Streetlighting), `Vehicle`
//! (dataModel.Transportation), `Open311ServiceRequest` (dataModel.IssueTracking),
//! `WaterQualityObserved` (dataModel.WaterQuality) for a water sensor that measures quality,
//! `Device` (dataModel.Device) for one that measures pressure, flow or level, and `Alert`
//! (dataModel.Alert) for an alarm. Vigie's own terms (`commune`, `faults`, `delay`, ...) are in
//! its context too, under NGSI-LD's default vocabulary.
//!
//! Pure: the view's states in, JSON out.

use proto::live::{AlarmState, AssetDetails, AssetState, LatLon};
use serde_json::{Map, Value, json};

pub const STREETLIGHT: &str = "Streetlight";
pub const VEHICLE: &str = "Vehicle";
pub const SERVICE_REQUEST: &str = "Open311ServiceRequest";
pub const WATER_QUALITY: &str = "WaterQualityObserved";
pub const DEVICE: &str = "Device";
pub const ALERT: &str = "Alert";

/// Every entity type this face answers, in the order `/types` lists them.
pub const TYPES: [&str; 6] = [ALERT, DEVICE, SERVICE_REQUEST, STREETLIGHT, VEHICLE, WATER_QUALITY];

/// Water measures that describe its quality (the rest, pressure, flow and level, are the network's).
const QUALITY_MEASURES: [&str; 5] = ["freeChlorine", "turbidity", "pH", "conductivity", "temperature"];

/// The entity type of an asset, from its details.
pub fn asset_type(asset: &AssetState) -> &'static str {
    match &asset.details {
        AssetDetails::Streetlight(_) => STREETLIGHT,
        AssetDetails::Vehicle(_) => VEHICLE,
        AssetDetails::Report(_) => SERVICE_REQUEST,
        AssetDetails::WaterSensor(w) => {
            if w.measures.keys().any(|m| QUALITY_MEASURES.contains(&m.as_str())) {
                WATER_QUALITY
            } else {
                DEVICE
            }
        }
        _ => DEVICE,
    }
}

/// `urn:ngsi-ld:<type>:<id>`: asset ids and alarm keys are made of characters a URN allows as is.
pub fn entity_id(entity_type: &str, id: &str) -> String {
    format!("urn:ngsi-ld:{entity_type}:{id}")
}

/// The type and the asset id (or alarm key) an entity id names, when it is one of ours.
pub fn parse_entity_id(id: &str) -> Option<(&'static str, &str)> {
    let rest = id.strip_prefix("urn:ngsi-ld:")?;
    let (entity_type, local) = rest.split_once(':')?;
    let entity_type = TYPES.into_iter().find(|t| *t == entity_type)?;
    (!local.is_empty()).then_some((entity_type, local))
}

/// The view's domain of an entity type (alerts: none, they belong to every domain).
pub fn domain_of(entity_type: &str) -> Option<&'static str> {
    match entity_type {
        STREETLIGHT => Some("lighting"),
        VEHICLE => Some("transport"),
        SERVICE_REQUEST => Some("reports"),
        WATER_QUALITY | DEVICE => Some("water"),
        _ => None,
    }
}

fn property(value: impl Into<Value>) -> Value {
    json!({"type": "Property", "value": value.into()})
}

fn observed(value: impl Into<Value>, observed_at: &str) -> Value {
    let mut p = json!({"type": "Property", "value": value.into()});
    if !observed_at.is_empty() {
        p["observedAt"] = json!(observed_at);
    }
    p
}

/// A property with a UN/CEFACT unit code.
fn measured(value: f64, unit_code: Option<&str>, observed_at: &str) -> Value {
    let mut p = observed(value, observed_at);
    if let Some(code) = unit_code {
        p["unitCode"] = json!(code);
    }
    p
}

fn date_time(value: &str) -> Value {
    property(json!({"@type": "DateTime", "@value": value}))
}

fn relationship(object: String) -> Value {
    json!({"type": "Relationship", "object": object})
}

fn geo_point(position: &LatLon) -> Value {
    json!({"type": "GeoProperty", "value": {"type": "Point", "coordinates": [position.lon, position.lat]}})
}

/// The UN/CEFACT code of a unit Vigie's sensors report in, when it has one.
fn unit_code(unit: &str) -> Option<&'static str> {
    match unit {
        "m" => Some("MTR"),
        "m3/h" => Some("MQH"),
        "mg/L" => Some("M1"),
        "uS/cm" => Some("G42"),
        "Cel" => Some("CEL"),
        _ => None,
    }
}

/// What every entity has: id, type, location, commune, and the address when the commune's name is
/// known.
fn base(entity_type: &str, local_id: &str, commune: &str, commune_name: Option<&str>) -> Map<String, Value> {
    let mut entity = Map::new();
    entity.insert("id".into(), json!(entity_id(entity_type, local_id)));
    entity.insert("type".into(), json!(entity_type));
    entity.insert("commune".into(), property(commune));
    if let Some(name) = commune_name {
        entity.insert("address".into(), property(json!({"addressLocality": name})));
    }
    entity
}

/// An asset as a normalized entity. `commune_name` names its commune when known.
pub fn asset_entity(asset: &AssetState, commune_name: Option<&str>) -> Map<String, Value> {
    let entity_type = asset_type(asset);
    let mut e = base(entity_type, &asset.id, &asset.commune, commune_name);
    if let Some(position) = &asset.position {
        e.insert("location".into(), geo_point(position));
    }
    let at = asset.observed_at.as_str();
    match &asset.details {
        AssetDetails::Streetlight(s) => {
            if let Some(status) = &s.status {
                e.insert("status".into(), observed(status.as_str(), at));
            }
            if let Some(power) = &s.power_state {
                e.insert("powerState".into(), observed(power.as_str(), at));
            }
            if let Some(level) = s.illuminance_level {
                e.insert("illuminanceLevel".into(), observed(level, at));
            }
            if let Some(w) = s.power_consumption_w {
                e.insert("powerConsumption".into(), measured(w, Some("WTT"), at));
            }
            if let Some(v) = s.voltage_v {
                e.insert("voltage".into(), measured(v, Some("VLT"), at));
            }
            if let Some(on) = &s.date_last_switching_on {
                e.insert("dateLastSwitchingOn".into(), date_time(on));
            }
            if let Some(off) = &s.date_last_switching_off {
                e.insert("dateLastSwitchingOff".into(), date_time(off));
            }
            if !s.lamp_type.is_empty() {
                e.insert("lampType".into(), property(s.lamp_type.as_str()));
            }
            if !s.street.is_empty() {
                let mut address = json!({"streetAddress": s.street});
                if let Some(name) = commune_name {
                    address["addressLocality"] = json!(name);
                }
                e.insert("address".into(), property(address));
            }
            e.insert("faults".into(), observed(s.faults.clone(), at));
        }
        AssetDetails::Vehicle(v) => {
            // The view does not know the GTFS route's mode: DATEX II's "any vehicle".
            e.insert("vehicleType".into(), property("anyVehicle"));
            e.insert("category".into(), property(json!(["public"])));
            e.insert("serviceStatus".into(), observed("onRoute", at));
            if !v.label.is_empty() {
                e.insert("name".into(), property(v.label.as_str()));
            }
            if let Some(speed) = v.speed {
                // The model's speed is in km/h; GTFS-Realtime's in m/s.
                e.insert("speed".into(), measured((f64::from(speed) * 3.6 * 100.0).round() / 100.0, Some("KMH"), at));
            }
            if let Some(bearing) = v.bearing {
                e.insert("heading".into(), measured(f64::from(bearing), Some("DD"), at));
            }
            e.insert("tripId".into(), property(v.trip_id.as_str()));
            e.insert("routeId".into(), property(v.route_id.as_str()));
            e.insert("direction".into(), property(v.direction));
            if let Some(delay) = v.delay_s {
                e.insert("delay".into(), measured(delay, Some("SEC"), at));
            }
            if let Some(headway) = v.headway_s {
                e.insert("headway".into(), measured(headway, Some("SEC"), at));
            }
        }
        AssetDetails::Report(r) => {
            e.insert("service_request_id".into(), property(r.service_request_id.as_str()));
            e.insert("service_code".into(), property(r.service_code.as_str()));
            e.insert("service_name".into(), property(r.service_name.as_str()));
            e.insert("status".into(), property(r.status.as_str()));
            e.insert("detailedStatus".into(), property(r.detailed_status.as_str()));
            for (name, value) in [
                ("status_notes", &r.status_notes),
                ("description", &r.description),
                ("address_string", &r.address),
                ("media_url", &r.media_url),
            ] {
                if !value.is_empty() {
                    e.insert(name.into(), property(value.as_str()));
                }
            }
            if !r.requested_at.is_empty() {
                e.insert("requested_datetime".into(), date_time(&r.requested_at));
            }
            e.insert("updated_datetime".into(), date_time(&asset.recorded_at));
            if !r.duplicate_of.is_empty() {
                e.insert("duplicateOf".into(), relationship(entity_id(SERVICE_REQUEST, &r.duplicate_of)));
            }
            if !r.linked_alarm_key.is_empty() {
                e.insert("refAlert".into(), relationship(entity_id(ALERT, &r.linked_alarm_key)));
            }
        }
        AssetDetails::WaterSensor(w) => {
            let latest = w.measures.values().map(|m| m.observed_at.as_str()).max().unwrap_or(at);
            if entity_type == WATER_QUALITY {
                e.insert("dateObserved".into(), date_time(latest));
            } else {
                e.insert("controlledProperty".into(), property(json!(w.measures.keys().collect::<Vec<_>>())));
                e.insert("dateLastValueReported".into(), date_time(latest));
            }
            for (name, reading) in &w.measures {
                e.insert(name.clone(), measured(reading.value, unit_code(&reading.unit), &reading.observed_at));
            }
            e.insert("networkElement".into(), property(w.element_id.as_str()));
            e.insert("dma".into(), property(w.dma.as_str()));
            e.insert("dataQualityFlags".into(), property(w.flags.clone()));
        }
        _ => {}
    }
    e
}

/// Smart Data Models' `Alert` severity of an alarm's.
fn alert_severity(severity: &str) -> &'static str {
    match severity {
        "critical" => "critical",
        "major" => "high",
        "minor" => "medium",
        _ => "low",
    }
}

/// Smart Data Models' `Alert` category of a domain's alarm.
fn alert_category(domain: &str) -> &'static str {
    match domain {
        "transport" => "traffic",
        "water" => "environment",
        _ => "security",
    }
}

/// An alarm as a normalized `Alert`; `source_type` is its asset's entity type (when the view
/// still has the asset).
pub fn alarm_entity(alarm: &AlarmState, source_type: Option<&str>, commune_name: Option<&str>) -> Map<String, Value> {
    let mut e = base(ALERT, &alarm.key, &alarm.commune, commune_name);
    if let Some(position) = &alarm.position {
        e.insert("location".into(), geo_point(position));
    }
    e.insert("category".into(), property(alert_category(&alarm.domain)));
    e.insert("subCategory".into(), property(alarm.alarm_type.as_str()));
    e.insert("severity".into(), property(alert_severity(&alarm.severity)));
    e.insert("alarmSeverity".into(), property(alarm.severity.as_str()));
    e.insert("domain".into(), property(alarm.domain.as_str()));
    let source_type = source_type.or(default_type_of_domain(&alarm.domain)).unwrap_or(DEVICE);
    e.insert("alertSource".into(), relationship(entity_id(source_type, &alarm.asset_id)));
    e.insert("dateIssued".into(), date_time(&alarm.first_raised_at));
    e.insert("validFrom".into(), date_time(&alarm.first_raised_at));
    if let Some(cleared) = &alarm.cleared_at {
        e.insert("validTo".into(), date_time(cleared));
    }
    let description: Vec<String> = alarm.details.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    e.insert("description".into(), property(format!("{} ({})", alarm.alarm_type, description.join(", "))));
    e.insert("active".into(), property(alarm.active));
    e.insert("acknowledged".into(), property(alarm.acknowledged));
    e.insert("raiseCount".into(), property(alarm.raise_count));
    e.insert("dateLastRaised".into(), date_time(&alarm.last_raised_at));
    if let Some(assignee) = &alarm.assignee {
        e.insert("assignee".into(), property(assignee.as_str()));
    }
    e
}

/// The entity type a domain's asset has by default (water: its quality sensors), for an alarm
/// whose asset the view no longer holds.
fn default_type_of_domain(domain: &str) -> Option<&'static str> {
    match domain {
        "lighting" => Some(STREETLIGHT),
        "transport" => Some(VEHICLE),
        "reports" => Some(SERVICE_REQUEST),
        "water" => Some(WATER_QUALITY),
        _ => None,
    }
}

/// An entity under `attrs`: its id and type always, and only the attributes named.
pub fn project(entity: &Map<String, Value>, attrs: &[String]) -> Map<String, Value> {
    entity
        .iter()
        .filter(|(name, _)| matches!(name.as_str(), "id" | "type") || attrs.iter().any(|a| a == *name))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// NGSI-LD's simplified (keyValues) form: each attribute's value, object or geometry alone.
pub fn simplified(entity: &Map<String, Value>) -> Map<String, Value> {
    entity
        .iter()
        .map(|(name, attribute)| {
            let value = match attribute {
                Value::Object(a) => a.get("value").or_else(|| a.get("object")).cloned().unwrap_or(Value::Null),
                other => other.clone(),
            };
            (name.clone(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::live::{MeasureReading, StreetlightDetails, WaterSensorDetails};

    fn lamp() -> AssetState {
        AssetState {
            domain: "lighting".into(),
            id: "EP00001".into(),
            commune: "34172".into(),
            position: Some(LatLon { lat: 43.61, lon: 3.87 }),
            observed_at: "2026-12-07T17:00:00Z".into(),
            recorded_at: "2026-12-07T17:00:01Z".into(),
            last_event_id: "e1".into(),
            details: AssetDetails::Streetlight(StreetlightDetails {
                status: Some("defectiveLamp".into()),
                power_state: Some("off".into()),
                illuminance_level: Some(0.0),
                faults: vec!["lamp_failure".into()],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_streetlight_has_the_model_s_names_and_a_point() {
        let e = asset_entity(&lamp(), Some("Montpellier"));
        assert_eq!(e["id"], "urn:ngsi-ld:Streetlight:EP00001");
        assert_eq!(e["type"], STREETLIGHT);
        assert_eq!(e["status"]["value"], "defectiveLamp");
        assert_eq!(e["status"]["observedAt"], "2026-12-07T17:00:00Z");
        assert_eq!(e["location"]["value"]["coordinates"], json!([3.87, 43.61]));
        assert_eq!(e["address"]["value"]["addressLocality"], "Montpellier");
        assert_eq!(e["commune"]["value"], "34172");
        let kv = simplified(&e);
        assert_eq!(kv["status"], "defectiveLamp");
        assert_eq!(kv["location"]["type"], "Point");
        let only = project(&e, &["status".into()]);
        assert_eq!(only.keys().collect::<Vec<_>>(), ["id", "status", "type"]);
    }

    #[test]
    fn a_water_sensor_is_a_quality_observation_or_a_device_by_what_it_measures() {
        let mut sensor = lamp();
        sensor.domain = "water".into();
        let reading =
            |unit: &str| MeasureReading { value: 0.3, unit: unit.into(), observed_at: "2026-12-07T16:00:00Z".into() };
        let mut details = WaterSensorDetails { element_id: "n1".into(), dma: "DMA1".into(), ..Default::default() };
        details.measures.insert("pressure".into(), reading("m"));
        sensor.details = AssetDetails::WaterSensor(details.clone());
        assert_eq!(asset_type(&sensor), DEVICE);
        details.measures.insert("freeChlorine".into(), reading("mg/L"));
        sensor.details = AssetDetails::WaterSensor(details);
        assert_eq!(asset_type(&sensor), WATER_QUALITY);
        let e = asset_entity(&sensor, None);
        assert_eq!(e["freeChlorine"]["unitCode"], "M1");
        assert_eq!(e["dateObserved"]["value"]["@value"], "2026-12-07T16:00:00Z");
    }

    #[test]
    fn entity_ids_round_trip_and_foreign_ones_are_not_ours() {
        assert_eq!(
            parse_entity_id("urn:ngsi-ld:Alert:lighting/lamp_failure/EP1"),
            Some((ALERT, "lighting/lamp_failure/EP1"))
        );
        assert_eq!(parse_entity_id(&entity_id(VEHICLE, "V:12")), Some((VEHICLE, "V:12")));
        assert_eq!(parse_entity_id("urn:ngsi-ld:Parking:1"), None);
        assert_eq!(parse_entity_id("urn:ngsi-ld:Streetlight:"), None);
        assert_eq!(parse_entity_id("Streetlight:1"), None);
    }
}
