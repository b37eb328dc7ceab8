//! Lighting rules, pure: what a valid streetlight and a valid status report are. No I/O here.

use proto::event::check_position;
use proto::ids::{AssetId, CommuneId};
use proto::lighting::command_action::Action;
use proto::lighting::command_target::Target;
use proto::lighting::{
    CommandAction, CommandTarget, LampStatus, PowerState, SendCommandRequest, StatusReport, Streetlight,
};
use std::time::{Duration, SystemTime};
use territory::Territory;

/// The most streetlights one registration call may carry.
pub const MAX_STREETLIGHTS_PER_CALL: usize = 10_000;
/// How far in the future an observation time may be (clock skew of field devices).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
pub const MAX_LAMP_TYPE_CHARS: usize = 64;
pub const MAX_STREET_CHARS: usize = 128;
pub const MAX_POLYGON_POINTS: usize = 10_000;
pub const MAX_REASON_CHARS: usize = 500;
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
pub const MAX_COMMAND_TIMEOUT: Duration = Duration::from_secs(3600);

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
    pub street: String,
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
            street: self.street.clone(),
        }
    }
}

/// The commune of the territory, served by another shard, that a streetlight belongs to (by
/// the commune it names, else by its position): not this instance's to register.
pub fn served_elsewhere(light: &Streetlight, territory: &Territory) -> Option<CommuneId> {
    if light.commune.is_empty() {
        return territory.served_elsewhere(light.lat, light.lon).map(|c| c.id.clone());
    }
    CommuneId::parse(&light.commune).ok().filter(|id| territory.is_served_elsewhere(id))
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
    let street = light.street.trim();
    if street.chars().count() > MAX_STREET_CHARS || street.chars().any(char::is_control) {
        return Err(invalid(format!(
            "streetlight {id}: street must be at most {MAX_STREET_CHARS} characters without control characters"
        )));
    }
    Ok(ValidStreetlight {
        id,
        commune,
        lat: light.lat,
        lon: light.lon,
        lamp_type: lamp_type.to_owned(),
        street: street.to_owned(),
    })
}

/// The most a streetlight draws: the largest discharge lamps with their ballast stay under 1 kW;
/// a report above it is a faulty meter or a forged value, and one at 1e308 W made the commune's
/// total infinite, which no store can round-trip.
pub const MAX_LAMP_POWER_W: f64 = 2_000.0;
/// The highest supply voltage a lamp reports: 230 V phase to neutral, 400 V between phases, with
/// a margin for surges.
pub const MAX_LAMP_VOLTAGE_V: f64 = 500.0;

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
    let observed_at = check_time(&id, report.observed_at, now)?;
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
    if !(power.is_finite() && (0.0..=MAX_LAMP_POWER_W).contains(&power)) {
        return Err(invalid(format!(
            "streetlight {id}: power_consumption_w {power} is outside 0..{MAX_LAMP_POWER_W} W (a streetlight's range)"
        )));
    }
    if let Some(v) = report.voltage_v
        && !(v.is_finite() && (0.0..=MAX_LAMP_VOLTAGE_V).contains(&v))
    {
        return Err(invalid(format!(
            "streetlight {id}: voltage_v {v} is outside 0..{MAX_LAMP_VOLTAGE_V} V (a streetlight's supply)"
        )));
    }
    Ok(ValidReport { streetlight_id: id, observed_at, report: report.clone() })
}

/// A command that passed [`validate_command`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidCommand {
    pub target: ValidTarget,
    pub action: CommandAction,
    pub requested_by: String,
    pub reason: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValidTarget {
    Streetlight(AssetId),
    Commune(CommuneId),
    /// Normalised street name (see [`street_key`]).
    Street(String),
    Polygon(geo::Polygon<f64>),
}

/// A street name for comparison: lower case, accents and punctuation folded, spaces collapsed.
pub fn street_key(name: &str) -> String {
    let folded: String = name
        .chars()
        .map(|c| match c {
            'à' | 'â' | 'ä' | 'À' | 'Â' | 'Ä' => 'a',
            'é' | 'è' | 'ê' | 'ë' | 'É' | 'È' | 'Ê' | 'Ë' => 'e',
            'î' | 'ï' | 'Î' | 'Ï' => 'i',
            'ô' | 'ö' | 'Ô' | 'Ö' => 'o',
            'ù' | 'û' | 'ü' | 'Ù' | 'Û' | 'Ü' => 'u',
            'ç' | 'Ç' => 'c',
            c if c.is_alphanumeric() => c.to_ascii_lowercase(),
            _ => ' ',
        })
        .collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn validate_command(request: &SendCommandRequest, territory: &Territory) -> Result<ValidCommand, Invalid> {
    let requested_by = request.requested_by.trim();
    if requested_by.is_empty() {
        return Err(invalid("requested_by is required: who asks for this command"));
    }
    if requested_by.chars().count() > 64 || requested_by.chars().any(char::is_control) {
        return Err(invalid("requested_by must be at most 64 characters without control characters"));
    }
    let reason = request.reason.trim();
    if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid(format!("reason must be at most {MAX_REASON_CHARS} characters of text")));
    }
    let timeout = match request.timeout_s {
        0 => DEFAULT_COMMAND_TIMEOUT,
        s if Duration::from_secs(u64::from(s)) > MAX_COMMAND_TIMEOUT => {
            return Err(invalid(format!("timeout_s {s} is more than {}", MAX_COMMAND_TIMEOUT.as_secs())));
        }
        s => Duration::from_secs(u64::from(s)),
    };
    let action = request.action.unwrap_or_default();
    match action.action {
        None => return Err(invalid("action is missing: switch_on or dim_level")),
        Some(Action::DimLevel(level)) if !(level.is_finite() && (0.0..=1.0).contains(&level)) => {
            return Err(invalid(format!("dim_level {level} is outside 0..1")));
        }
        Some(_) => {}
    }
    let target = match request.target.as_ref().and_then(|t| t.target.as_ref()) {
        None => return Err(invalid("target is missing: streetlight_id, commune, street or polygon")),
        Some(Target::StreetlightId(id)) => {
            ValidTarget::Streetlight(AssetId::parse_as("streetlight id", id).map_err(|e| invalid(e.to_string()))?)
        }
        Some(Target::Commune(c)) => {
            let commune = CommuneId::parse(c).map_err(|e| invalid(e.to_string()))?;
            if !territory.contains(&commune) {
                return Err(invalid(format!("commune {commune} is not in this territory")));
            }
            ValidTarget::Commune(commune)
        }
        Some(Target::Street(name)) => {
            let key = street_key(name);
            if key.is_empty() || name.chars().count() > MAX_STREET_CHARS {
                return Err(invalid(format!("street must be a name of 1 to {MAX_STREET_CHARS} characters")));
            }
            ValidTarget::Street(key)
        }
        Some(Target::Polygon(polygon)) => ValidTarget::Polygon(validate_polygon(&polygon.ring)?),
    };
    Ok(ValidCommand { target, action, requested_by: requested_by.to_owned(), reason: reason.to_owned(), timeout })
}

fn validate_polygon(ring: &[proto::v1::Position]) -> Result<geo::Polygon<f64>, Invalid> {
    if ring.len() < 4 {
        return Err(invalid(format!("polygon has {} points; a closed ring needs at least 4", ring.len())));
    }
    if ring.len() > MAX_POLYGON_POINTS {
        return Err(invalid(format!("polygon has more than {MAX_POLYGON_POINTS} points")));
    }
    for (i, p) in ring.iter().enumerate() {
        check_position(p.lat, p.lon).map_err(|e| invalid(format!("polygon point {i}: {e}")))?;
    }
    let (first, last) = (&ring[0], &ring[ring.len() - 1]);
    if first.lat != last.lat || first.lon != last.lon {
        return Err(invalid("polygon does not close: its last point must equal its first"));
    }
    let exterior: Vec<(f64, f64)> = ring.iter().map(|p| (p.lon, p.lat)).collect();
    let polygon = geo::Polygon::new(geo::LineString::from(exterior), vec![]);
    use geo::Area;
    if polygon.unsigned_area() == 0.0 {
        return Err(invalid("polygon has no area"));
    }
    Ok(polygon)
}

/// Whether a lamp is addressed by a target.
pub fn targets(target: &ValidTarget, id: &AssetId, commune: &CommuneId, lat: f64, lon: f64, street: &str) -> bool {
    match target {
        ValidTarget::Streetlight(t) => t == id,
        ValidTarget::Commune(c) => c == commune,
        ValidTarget::Street(key) => !street.is_empty() && street_key(street) == *key,
        ValidTarget::Polygon(polygon) => {
            use geo::Intersects;
            polygon.intersects(&geo::Point::new(lon, lat))
        }
    }
}

/// The target as the command records it (normalised).
pub fn target_proto(target: &ValidTarget, original: Option<&CommandTarget>) -> CommandTarget {
    match target {
        ValidTarget::Streetlight(id) => CommandTarget { target: Some(Target::StreetlightId(id.to_string())) },
        ValidTarget::Commune(c) => CommandTarget { target: Some(Target::Commune(c.to_string())) },
        ValidTarget::Street(_) | ValidTarget::Polygon(_) => original.cloned().unwrap_or_default(),
    }
}

/// Whether a report says the lamp gives light.
pub fn is_lit(report: &StatusReport) -> bool {
    report.illuminance_level > 0.0
        || matches!(PowerState::try_from(report.power_state), Ok(PowerState::On | PowerState::Low))
}

/// A fault report that passed [`validate_fault`].
pub fn validate_fault(
    fault: Option<&proto::lighting::FaultReport>,
    now: SystemTime,
) -> Result<(AssetId, SystemTime, proto::lighting::TalqFault), Invalid> {
    use proto::lighting::TalqFault;
    let fault = fault.ok_or_else(|| invalid("fault is missing"))?;
    let id = AssetId::parse_as("streetlight id", &fault.streetlight_id).map_err(|e| invalid(e.to_string()))?;
    let observed_at = check_time(&id, fault.observed_at, now)?;
    let kind = match TalqFault::try_from(fault.fault) {
        Ok(TalqFault::Unspecified) => return Err(invalid(format!("streetlight {id}: fault is missing"))),
        Err(_) => return Err(invalid(format!("streetlight {id}: unknown fault {}", fault.fault))),
        Ok(kind) => kind,
    };
    Ok((id, observed_at, kind))
}

fn check_time(id: &AssetId, at: Option<prost_types::Timestamp>, now: SystemTime) -> Result<SystemTime, Invalid> {
    let at = at.ok_or_else(|| invalid(format!("streetlight {id}: observed_at is missing")))?;
    let observed_at = SystemTime::try_from(at)
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
    Ok(observed_at)
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
        Streetlight {
            id: id.into(),
            commune: commune.into(),
            lat,
            lon,
            lamp_type: "LANTERNE".into(),
            street: String::new(),
        }
    }

    fn command(target: Target, action: Action) -> SendCommandRequest {
        SendCommandRequest {
            target: Some(CommandTarget { target: Some(target) }),
            action: Some(CommandAction { action: Some(action) }),
            requested_by: "operateur.mtp".into(),
            reason: "fête".into(),
            timeout_s: 0,
            allowed_communes: Vec::new(),
        }
    }

    fn ring(points: &[(f64, f64)]) -> proto::lighting::Polygon {
        proto::lighting::Polygon { ring: points.iter().map(|&(lat, lon)| proto::v1::Position { lat, lon }).collect() }
    }

    #[test]
    fn commands() {
        let t = territory();
        let square = [(43.59, 3.86), (43.59, 3.88), (43.61, 3.88), (43.61, 3.86), (43.59, 3.86)];
        let ok = validate_command(&command(Target::Polygon(ring(&square)), Action::DimLevel(0.5)), &t).unwrap();
        assert_eq!(ok.timeout, DEFAULT_COMMAND_TIMEOUT);
        let c = CommuneId::parse("34172").unwrap();
        assert!(targets(&ok.target, &AssetId::parse("EP1").unwrap(), &c, 43.6, 3.87, ""));
        assert!(!targets(&ok.target, &AssetId::parse("EP1").unwrap(), &c, 43.62, 3.87, ""));
        let street =
            validate_command(&command(Target::Street("Rue de l'Université".into()), Action::SwitchOn(false)), &t)
                .unwrap();
        assert!(targets(&street.target, &AssetId::parse("EP1").unwrap(), &c, 0.0, 0.0, "RUE DE L UNIVERSITE"));
        assert!(!targets(&street.target, &AssetId::parse("EP1").unwrap(), &c, 0.0, 0.0, ""));

        let open = [(43.59, 3.86), (43.59, 3.88), (43.61, 3.88), (43.61, 3.86)];
        let flat = [(43.59, 3.86), (43.59, 3.88), (43.59, 3.87), (43.59, 3.86)];
        let mut anonymous = command(Target::Commune("34172".into()), Action::SwitchOn(true));
        anonymous.requested_by = " ".into();
        let mut long = command(Target::Commune("34172".into()), Action::SwitchOn(true));
        long.timeout_s = 7200;
        let cases = [
            (command(Target::Polygon(ring(&open)), Action::DimLevel(0.5)), "does not close"),
            (command(Target::Polygon(ring(&square[..3])), Action::DimLevel(0.5)), "at least 4"),
            (command(Target::Polygon(ring(&flat)), Action::DimLevel(0.5)), "no area"),
            (
                command(
                    Target::Polygon(ring(&[(43.59, 3.86), (91.0, 3.88), (43.61, 3.88), (43.59, 3.86)])),
                    Action::DimLevel(0.5),
                ),
                "point 1",
            ),
            (command(Target::Commune("34172".into()), Action::DimLevel(1.5)), "outside 0..1"),
            (command(Target::Commune("34172".into()), Action::DimLevel(f64::NAN)), "outside 0..1"),
            (command(Target::Commune("99999".into()), Action::SwitchOn(true)), "not in this territory"),
            (command(Target::StreetlightId("EP.1".into()), Action::SwitchOn(true)), "'.'"),
            (command(Target::Street(" - ".into()), Action::SwitchOn(true)), "street"),
            (anonymous, "requested_by"),
            (long, "timeout_s"),
            (SendCommandRequest { requested_by: "x".into(), ..Default::default() }, "action is missing"),
        ];
        for (request, expected) in cases {
            let err = validate_command(&request, &t).unwrap_err().0;
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
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
        let mut huge_power = report(1.0);
        huge_power.power_consumption_w = 1e308;
        let mut huge_voltage = report(1.0);
        huge_voltage.voltage_v = Some(10_000.0);
        let mut no_time = report(1.0);
        no_time.observed_at = None;
        let cases = [
            (Some(huge_power), "outside 0..2000 W"),
            (Some(huge_voltage), "outside 0..500 V"),
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

/// Property tests of the status report check (the gRPC edge of field data): over any numbers
/// (NaN, infinities, huge, negative) and any enum values, it answers without panicking, and
/// what it accepts lies within the physical ranges a store can round-trip.
#[cfg(test)]
mod report_properties {
    use super::*;
    use proptest::prelude::*;

    fn number() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MAX),
            Just(-0.0),
            -10.0..3000.0f64,
            any::<f64>(),
        ]
    }

    proptest! {
        #[test]
        fn accepted_reports_are_physical(
            id in "[A-Za-z0-9_:-]{0,70}|.{0,10}",
            status in -2i32..8,
            power_state in -2i32..8,
            level in number(),
            power in number(),
            voltage in prop::option::of(number()),
            skew_s in -400_000i64..400_000,
        ) {
            let now = SystemTime::now();
            let observed = if skew_s >= 0 {
                now + Duration::from_secs(skew_s.unsigned_abs())
            } else {
                now - Duration::from_secs(skew_s.unsigned_abs())
            };
            let report = StatusReport {
                streetlight_id: id,
                observed_at: Some(observed.into()),
                status,
                power_state,
                illuminance_level: level,
                power_consumption_w: power,
                voltage_v: voltage,
            };
            if let Ok(valid) = validate_report(Some(&report), now) {
                let r = valid.report;
                prop_assert!((0.0..=1.0).contains(&r.illuminance_level));
                prop_assert!((0.0..=MAX_LAMP_POWER_W).contains(&r.power_consumption_w));
                prop_assert!(r.voltage_v.is_none_or(|v| (0.0..=MAX_LAMP_VOLTAGE_V).contains(&v)));
                prop_assert!(valid.observed_at <= now + Duration::from_secs(3600), "not far in the future");
            }
        }
    }
}
