//! The sensor layout file: which network elements carry which sensors. The lists of BattLeDIM's
//! layout (`pressure_sensors`, `flow_sensors`, `level_sensors`: element ids, the sensor taking the
//! element's id), plus `sensors` for any other (quality probes, say).

use proto::water::Sensor;
use serde::Deserialize;

use crate::quality::Measure;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutFile {
    #[serde(default)]
    pressure_sensors: Vec<String>,
    #[serde(default)]
    flow_sensors: Vec<String>,
    #[serde(default)]
    level_sensors: Vec<String>,
    /// Meters at customers (AMR): not read by this service, accepted in the file.
    #[serde(default)]
    #[allow(dead_code)]
    amr_nodes: Vec<String>,
    #[serde(default)]
    sensors: Vec<LayoutSensor>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LayoutSensor {
    id: String,
    element_id: String,
    measures: Vec<String>,
}

/// The largest layout file read.
const MAX_LAYOUT_BYTES: u64 = 16 * 1024 * 1024;

pub fn read(path: &std::path::Path) -> Result<Vec<Sensor>, String> {
    let size = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.len();
    if size > MAX_LAYOUT_BYTES {
        return Err(format!("{}: {size} bytes, more than {MAX_LAYOUT_BYTES}", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse(text: &str) -> Result<Vec<Sensor>, String> {
    let file: LayoutFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let on = |ids: &[String], measure: Measure| -> Vec<Sensor> {
        ids.iter()
            .map(|id| Sensor {
                id: id.clone(),
                element_id: id.clone(),
                measures: vec![measure.name().to_owned()],
                ..Default::default()
            })
            .collect()
    };
    let mut sensors = on(&file.pressure_sensors, Measure::Pressure);
    sensors.extend(on(&file.flow_sensors, Measure::Flow));
    sensors.extend(on(&file.level_sensors, Measure::Level));
    sensors.extend(file.sensors.into_iter().map(|s| Sensor {
        id: s.id,
        element_id: s.element_id,
        measures: s.measures,
        ..Default::default()
    }));
    Ok(sensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_read() {
        let sensors = parse(
            r#"{"pressure_sensors": ["n1"], "flow_sensors": ["p227"], "level_sensors": ["T1"], "amr_nodes": ["n2"],
                "sensors": [{"id": "Q-n1", "element_id": "n1", "measures": ["freeChlorine", "pH"]}]}"#,
        )
        .unwrap();
        let summary: Vec<(&str, &str, Vec<&str>)> = sensors
            .iter()
            .map(|s| (s.id.as_str(), s.element_id.as_str(), s.measures.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            summary,
            [
                ("n1", "n1", vec!["pressure"]),
                ("p227", "p227", vec!["flow"]),
                ("T1", "T1", vec!["level"]),
                ("Q-n1", "n1", vec!["freeChlorine", "pH"]),
            ]
        );
        assert!(parse(r#"{"pressure": ["n1"]}"#).unwrap_err().contains("unknown field"));
    }
}
