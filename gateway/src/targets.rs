//! KPI targets and bands, per commune: what a KPI of the console aims at, and from which value it
//! is a warning or an alarm (ISA-101: a tile is coloured only out of its band). Built-in defaults,
//! replaced KPI by KPI and commune by commune by a JSON file (`--kpi-targets`), checked at start:
//!
//! ```json
//! {"defaults": {"transport_on_time": {"target": 0.9, "warning": 0.85, "alarm": 0.75}},
//!  "communes": {"34172": {"transport_on_time": {"target": 0.92, "warning": 0.88, "alarm": 0.8}}}}
//! ```
//!
//! A band whose warning lies below its target is "higher is better" (a value under `warning` is
//! a warning, under `alarm` an alarm); above it, "lower is better". The KPIs are the console's
//! tiles, named in `proto::live::KPI_TILES`.

use proto::ids::CommuneId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

use crate::auth::Scope;

/// Where a KPI should be, and where it turns to a warning and to an alarm.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    pub target: f64,
    pub warning: f64,
    pub alarm: f64,
}

impl Band {
    fn check(&self) -> Result<(), String> {
        let Band { target, warning, alarm } = *self;
        if ![target, warning, alarm].iter().all(|v| v.is_finite()) {
            return Err("target, warning and alarm must be numbers".into());
        }
        let higher_is_better = warning < target && alarm <= warning;
        let lower_is_better = warning > target && alarm >= warning;
        if higher_is_better || lower_is_better {
            Ok(())
        } else {
            Err(format!(
                "target {target}, warning {warning}, alarm {alarm}: the warning lies between the target and the alarm (all below the target, or all above it), and differs from the target"
            ))
        }
    }
}

/// The bands of every KPI: the defaults, and each commune's own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiTargets {
    #[serde(default)]
    pub defaults: BTreeMap<String, Band>,
    #[serde(default)]
    pub communes: BTreeMap<String, BTreeMap<String, Band>>,
}

/// The largest targets file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

impl KpiTargets {
    /// What a control room expects without saying: lamps lit 99 % of the time (a warning under
    /// 98 %, an alarm under 95 %), buses on time 90 % of the time (85 %, 75 %), a mean delay
    /// within a minute (3, 5 minutes; in seconds, as the KPI).
    pub fn builtin() -> KpiTargets {
        let band = |target, warning, alarm| Band { target, warning, alarm };
        KpiTargets {
            defaults: BTreeMap::from([
                ("lighting_availability".to_owned(), band(0.99, 0.98, 0.95)),
                ("transport_on_time".to_owned(), band(0.90, 0.85, 0.75)),
                ("transport_delay".to_owned(), band(60.0, 180.0, 300.0)),
            ]),
            communes: BTreeMap::new(),
        }
    }

    /// The built-in bands, replaced by the file's where it has them. `known` are the territory's
    /// communes (empty: no territory, any INSEE code is taken).
    pub fn load(path: Option<&Path>, known: &BTreeMap<String, String>) -> anyhow::Result<KpiTargets> {
        let mut targets = KpiTargets::builtin();
        let Some(path) = path else { return Ok(targets) };
        let shown = path.display();
        let size = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("cannot read {shown}: {e}"))?.len();
        anyhow::ensure!(size <= MAX_FILE_BYTES, "{shown} is {size} bytes, more than {MAX_FILE_BYTES}");
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {shown}: {e}"))?;
        let file: KpiTargets = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
        file.check(known).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
        targets.defaults.extend(file.defaults);
        targets.communes = file.communes;
        Ok(targets)
    }

    fn check(&self, known: &BTreeMap<String, String>) -> Result<(), String> {
        let check_all = |bands: &BTreeMap<String, Band>, place: &str| {
            bands.iter().try_for_each(|(kpi, band)| {
                if !proto::live::KPI_TILES.contains(&kpi.as_str()) {
                    return Err(format!("{place}: unknown KPI {kpi:?} (one of {})", proto::live::KPI_TILES.join(", ")));
                }
                band.check().map_err(|e| format!("{place}, {kpi}: {e}"))
            })
        };
        check_all(&self.defaults, "defaults")?;
        for (commune, bands) in &self.communes {
            CommuneId::parse(commune).map_err(|e| format!("communes: {e}"))?;
            if !known.is_empty() && !known.contains_key(commune) {
                return Err(format!("communes: {commune} is not a commune of the territory"));
            }
            check_all(bands, &format!("commune {commune}"))?;
        }
        Ok(())
    }

    /// What a caller may see: the defaults, and the bands of its communes only.
    pub fn for_scope(&self, scope: &Scope) -> KpiTargets {
        KpiTargets {
            defaults: self.defaults.clone(),
            communes: self
                .communes
                .iter()
                .filter(|(c, _)| scope.allows(c))
                .map(|(c, b)| (c.clone(), b.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<KpiTargets, String> {
        let file: KpiTargets = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let known = BTreeMap::from([("34172".to_owned(), "Montpellier".to_owned())]);
        file.check(&known).map(|()| file)
    }

    #[test]
    fn the_builtin_bands_hold() {
        assert_eq!(KpiTargets::builtin().check(&BTreeMap::new()), Ok(()));
    }

    #[test]
    fn bad_files_are_refused_with_what_is_wrong() {
        let cases = [
            (r#"{"defaults": {"nope": {"target": 1, "warning": 0.5, "alarm": 0.2}}}"#, "unknown KPI \"nope\""),
            (r#"{"defaults": {"transport_on_time": {"target": 0.9, "warning": 0.95, "alarm": 0.7}}}"#, "lies between"),
            (r#"{"defaults": {"transport_on_time": {"target": 0.9, "warning": 0.9, "alarm": 0.9}}}"#, "differs"),
            (r#"{"communes": {"34.1": {}}}"#, "communes"),
            (r#"{"communes": {"99999": {}}}"#, "99999 is not a commune of the territory"),
            (r#"{"defaults": {"transport_on_time": {"target": 0.9, "warning": 0.8}}}"#, "missing field `alarm`"),
            (r#"{"defaults": {}, "extra": 1}"#, "unknown field `extra`"),
        ];
        for (text, needle) in cases {
            let error = parse(text).expect_err(text);
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn a_communes_band_and_lower_is_better_are_taken() {
        let file = r#"{"communes": {"34172": {"transport_delay": {"target": 120, "warning": 240, "alarm": 360}}}}"#;
        let targets = parse(file).expect("a good file");
        assert_eq!(targets.communes["34172"]["transport_delay"], Band { target: 120.0, warning: 240.0, alarm: 360.0 });
    }
}
