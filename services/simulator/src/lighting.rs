//! The lighting field: the territory's real streetlight inventory, and the status reports a
//! lighting management system would send for it.

use proto::lighting::{LampStatus, PowerState, StatusReport, Streetlight};
use rand::Rng;
use std::time::SystemTime;

pub use territory::streetlights::read as read_inventory;

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

/// Whether it is night at this place: the sun is below the horizon (real sunset and sunrise for
/// the coordinates, as the lighting service computes them).
pub fn is_night(now: SystemTime, lat: f64, lon: f64) -> bool {
    let Some(coordinates) = sunrise::Coordinates::new(lat, lon) else { return false };
    let day = chrono::DateTime::<chrono::Utc>::from(now).date_naive();
    let solar = sunrise::SolarDay::new(coordinates, day);
    match (solar.event_time(sunrise::SolarEvent::Sunrise), solar.event_time(sunrise::SolarEvent::Sunset)) {
        (Some(rise), Some(set)) => {
            let now = chrono::DateTime::<chrono::Utc>::from(now);
            now < rise || now > set
        }
        _ => false,
    }
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
    let night = is_night(now, light.lat, light.lon);
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
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn night_and_day() {
        let midnight_utc = UNIX_EPOCH + Duration::from_secs(20_000 * 86_400);
        assert!(is_night(midnight_utc, 43.6, 3.87));
        assert!(!is_night(midnight_utc + Duration::from_secs(12 * 3600), 43.6, 3.87));
        // Same UTC instant, other side of the world (Nouméa): day there.
        assert!(!is_night(midnight_utc, -22.27, 166.44));
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
