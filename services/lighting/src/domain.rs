//! Lighting rules, pure: what a valid streetlight and a valid status report are. No I/O here.

use proto::event::check_position;
use proto::ids::{AssetId, CommuneId};
use proto::lighting::{LampStatus, PowerState, StatusReport, Streetlight};
use std::time::{Duration, SystemTime};
use territory::Territory;

/// The most streetlights one registration call may carry.
pub const MAX_STREETLIGHTS_PER_CALL: usize = 10_000;
/// How far in the future an observation time may be (clock skew of field devices).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
pub const MAX_LAMP_TYPE_CHARS: usize = 64;

/// Input refused, with a message that says what is wrong (INVALID_ARGUMENT).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(message: impl Into<String>) -> Invalid {
    Invalid(message.into())
}

/// A streetlight that passed [`validate_streetlight`], its commune resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidStreetlight {
    pub id: AssetId,
    pub commune: CommuneId,
    pub lat: f64,
    pub lon: f64,
    pub lamp_type: String,
}

impl ValidStreetlight {
    /// The stored and published form (commune filled in).
    pub fn to_proto(&self) -> Streetlight {
        Streetlight {
            id: self.id.to_string(),
            commune: self.commune.to_string(),
            lat: self.lat,
            lon: self.lon,
            lamp_type: self.lamp_type.clone(),
        }
    }
}

pub fn validate_streetlight(light: &Streetlight, territory: &Territory) -> Result<ValidStreetlight, Invalid> {
    let id = AssetId::parse_as("streetlight id", &light.id).map_err(|e| invalid(e.to_string()))?;
    check_position(light.lat, light.lon).map_err(|e| invalid(format!("streetlight {id}: {e}")))?;
    let commune = if light.commune.is_empty() {
        territory.locate(light.lat, light.lon).map(|c| c.id.clone()).ok_or_else(|| {
            invalid(format!(
                "streetlight {id}: position lat {}, lon {} is outside every commune of the territory \
                 (give its commune, or check the coordinates: latitude first)",
                light.lat, light.lon
            ))
        })?
    } else {
        let commune = CommuneId::parse(&light.commune).map_err(|e| invalid(format!("streetlight {id}: {e}")))?;
        if !territory.contains(&commune) {
            return Err(invalid(format!("streetlight {id}: commune {commune} is not in this territory")));
        }
        commune
    };
    let lamp_type = light.lamp_type.trim();
    if lamp_type.chars().count() > MAX_LAMP_TYPE_CHARS {
        return Err(invalid(format!("streetlight {id}: lamp type longer than {MAX_LAMP_TYPE_CHARS} characters")));
    }
    if lamp_type.chars().any(char::is_control) {
        return Err(invalid(format!("streetlight {id}: lamp type contains control characters")));
    }
    Ok(ValidStreetlight { id, commune, lat: light.lat, lon: light.lon, lamp_type: lamp_type.to_owned() })
}

/// A status report that passed [`validate_report`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidReport {
    pub streetlight_id: AssetId,
    pub observed_at: SystemTime,
    pub report: StatusReport,
}

pub fn validate_report(report: Option<&StatusReport>, now: SystemTime) -> Result<ValidReport, Invalid> {
    let report = report.ok_or_else(|| invalid("report is missing"))?;
    let id = AssetId::parse_as("streetlight id", &report.streetlight_id).map_err(|e| invalid(e.to_string()))?;
    let observed = report.observed_at.ok_or_else(|| invalid(format!("streetlight {id}: observed_at is missing")))?;
    let observed_at = SystemTime::try_from(observed)
        .map_err(|e| invalid(format!("streetlight {id}: observed_at is not a valid time: {e}")))?;
    if observed_at > now + MAX_CLOCK_SKEW {
        return Err(invalid(format!(
            "streetlight {id}: observed_at is more than {} s in the future",
            MAX_CLOCK_SKEW.as_secs()
        )));
    }
    if observed_at < SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800) {
        return Err(invalid(format!("streetlight {id}: observed_at is before 2000")));
    }
    match LampStatus::try_from(report.status) {
        Ok(LampStatus::Unspecified) => return Err(invalid(format!("streetlight {id}: status is missing"))),
        Err(_) => return Err(invalid(format!("streetlight {id}: unknown status {}", report.status))),
        Ok(_) => {}
    }
    match PowerState::try_from(report.power_state) {
        Ok(PowerState::Unspecified) => return Err(invalid(format!("streetlight {id}: power_state is missing"))),
        Err(_) => return Err(invalid(format!("streetlight {id}: unknown power_state {}", report.power_state))),
        Ok(_) => {}
    }
    let level = report.illuminance_level;
    if !(level.is_finite() && (0.0..=1.0).contains(&level)) {
        return Err(invalid(format!("streetlight {id}: illuminance_level {level} is outside 0..1")));
    }
    let power = report.power_consumption_w;
    if !(power.is_finite() && power >= 0.0) {
        return Err(invalid(format!("streetlight {id}: power_consumption_w {power} must be a number >= 0")));
    }
    if let Some(v) = report.voltage_v
        && !(v.is_finite() && v >= 0.0)
    {
        return Err(invalid(format!("streetlight {id}: voltage_v {v} must be a number >= 0")));
    }
    Ok(ValidReport { streetlight_id: id, observed_at, report: report.clone() })
}

/// Whether `candidate` replaces `current` as the latest report: the later observation wins;
/// a report arriving late never overwrites a newer state.
pub fn is_newer(candidate: &StatusReport, current: Option<&StatusReport>) -> bool {
    let key = |r: &StatusReport| r.observed_at.map(|t| (t.seconds, t.nanos));
    match current {
        None => true,
        Some(current) => key(candidate) >= key(current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use territory::parse_communes;

    fn territory() -> Territory {
        let text = r#"{"type":"FeatureCollection","features":[{"type":"Feature",
          "properties":{"insee":"34172","name":"Montpellier"},
          "geometry":{"type":"Polygon","coordinates":[[[3.8,43.5],[3.95,43.5],[3.95,43.7],[3.8,43.7],[3.8,43.5]]]}}]}"#;
        Territory::from_communes(parse_communes(std::path::Path::new("t"), text).unwrap())
    }

    fn light(id: &str, commune: &str, lat: f64, lon: f64) -> Streetlight {
        Streetlight { id: id.into(), commune: commune.into(), lat, lon, lamp_type: "LANTERNE".into() }
    }

    #[test]
    fn streetlights() {
        let t = territory();
        let ok = validate_streetlight(&light("EP1", "", 43.6, 3.88), &t).unwrap();
        assert_eq!(ok.commune.as_str(), "34172", "commune found by point-in-polygon");
        assert!(validate_streetlight(&light("EP1", "34172", 43.6, 3.88), &t).is_ok());
        let cases = [
            (light("", "34172", 43.6, 3.88), "empty"),
            (light("EP.1", "34172", 43.6, 3.88), "'.'"),
            (light("EP*", "34172", 43.6, 3.88), "'*'"),
            (light("EP>", "34172", 43.6, 3.88), "'>'"),
            (light("EP1", "99999", 43.6, 3.88), "not in this territory"),
            (light("EP1", "34.172", 43.6, 3.88), "'.'"),
            (light("EP1", "", 3.88, 43.6), "outside every commune"),
            (light("EP1", "34172", 91.0, 3.88), "WGS84"),
            (light("EP1", "34172", f64::NAN, 3.88), "WGS84"),
            (light("EP1", "34172", 43.6, f64::INFINITY), "WGS84"),
        ];
        for (input, expected) in cases {
            let err = validate_streetlight(&input, &t).unwrap_err().0;
            assert!(err.contains(expected), "{input:?}: {err:?} should mention {expected:?}");
        }
    }

    fn report(level: f64) -> StatusReport {
        StatusReport {
            streetlight_id: "EP1".into(),
            observed_at: Some(SystemTime::now().into()),
            status: LampStatus::Ok as i32,
            power_state: PowerState::On as i32,
            illuminance_level: level,
            power_consumption_w: 70.0,
            voltage_v: Some(230.0),
        }
    }

    #[test]
    fn reports() {
        let now = SystemTime::now();
        assert!(validate_report(Some(&report(0.5)), now).is_ok());
        let mut future = report(1.0);
        future.observed_at = Some((now + Duration::from_secs(3600)).into());
        let mut no_status = report(1.0);
        no_status.status = 0;
        let mut bad_status = report(1.0);
        bad_status.status = 42;
        let mut bad_power = report(1.0);
        bad_power.power_consumption_w = -1.0;
        let mut bad_voltage = report(1.0);
        bad_voltage.voltage_v = Some(f64::NAN);
        let mut no_time = report(1.0);
        no_time.observed_at = None;
        let cases = [
            (Some(report(1.5)), "outside 0..1"),
            (Some(report(f64::NAN)), "outside 0..1"),
            (Some(future), "future"),
            (Some(no_status), "status is missing"),
            (Some(bad_status), "unknown status 42"),
            (Some(bad_power), "power_consumption_w"),
            (Some(bad_voltage), "voltage_v"),
            (Some(no_time), "observed_at is missing"),
            (None, "report is missing"),
        ];
        for (input, expected) in cases {
            let err = validate_report(input.as_ref(), now).unwrap_err().0;
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }

    #[test]
    fn later_observation_wins() {
        let old = report(1.0);
        let mut new = report(0.5);
        new.observed_at = Some((SystemTime::now() + Duration::from_secs(10)).into());
        assert!(is_newer(&new, Some(&old)));
        assert!(!is_newer(&old, Some(&new)));
        assert!(is_newer(&old, None));
    }
}
