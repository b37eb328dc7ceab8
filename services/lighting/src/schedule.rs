//! Dimming schedules, pure: which level a schedule asks for at a given instant and place.
//!
//! A schedule is a list of steps, each anchored to sunset or sunrise with an offset ("sunset:
//! 100 %", "sunset + 5 h: 50 %", "sunrise - 1 h: 100 %", "sunrise: off"). A *night* is the
//! evening of a day and the morning after it; an override replaces the steps of one night (a
//! festival night at full light). The level at an instant is that of the latest step at or before
//! it, computed with the real sunset and sunrise at the group's coordinates.

use chrono::{DateTime, Days, NaiveDate, Utc};
use proto::lighting::{ScheduleStep, SunAnchor};
use std::time::SystemTime;

use crate::domain::Invalid;
use crate::sun;

pub const MAX_STEPS: usize = 24;
pub const MAX_OVERRIDES: usize = 366;
pub const MAX_OFFSET_MINUTES: i32 = 12 * 60;

/// Checks the steps of a schedule or an override.
pub fn validate_steps(steps: &[ScheduleStep], what: &str) -> Result<(), Invalid> {
    if steps.is_empty() || steps.len() > MAX_STEPS {
        return Err(Invalid(format!("{what}: 1 to {MAX_STEPS} steps expected, got {}", steps.len())));
    }
    for (i, step) in steps.iter().enumerate() {
        match SunAnchor::try_from(step.anchor) {
            Ok(SunAnchor::Sunset | SunAnchor::Sunrise) => {}
            _ => return Err(Invalid(format!("{what}, step {i}: anchor must be sunset or sunrise"))),
        }
        if step.offset_minutes.abs() > MAX_OFFSET_MINUTES {
            return Err(Invalid(format!("{what}, step {i}: offset_minutes must be within ±{MAX_OFFSET_MINUTES}")));
        }
        if !(step.level.is_finite() && (0.0..=1.0).contains(&step.level)) {
            return Err(Invalid(format!("{what}, step {i}: level {} is outside 0..1", step.level)));
        }
    }
    Ok(())
}

/// Parses an override's night (`YYYY-MM-DD`, the evening's date in UTC).
pub fn parse_night(text: &str) -> Result<NaiveDate, Invalid> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| Invalid(format!("night_of {text:?} is not a date YYYY-MM-DD")))
}

/// The level the schedule asks for at `at` at this place; `None` before any step (never in
/// practice: yesterday's steps are looked at too) or where the sun never sets or rises.
pub fn level_at(
    steps: &[ScheduleStep],
    overrides: &[(NaiveDate, Vec<ScheduleStep>)],
    lat: f64,
    lon: f64,
    at: SystemTime,
) -> Option<f64> {
    let at_utc = DateTime::<Utc>::from(at);
    let today = at_utc.date_naive();
    let mut latest: Option<(DateTime<Utc>, f64)> = None;
    for evening in [today.checked_sub_days(Days::new(2))?, today.checked_sub_days(Days::new(1))?, today] {
        let night_steps = overrides.iter().find(|(d, _)| *d == evening).map(|(_, s)| s.as_slice()).unwrap_or(steps);
        let morning = evening.checked_add_days(Days::new(1))?;
        let (_, sunset) = sun_times_on(lat, lon, evening)?;
        let (sunrise, _) = sun_times_on(lat, lon, morning)?;
        for step in night_steps {
            let anchor = match SunAnchor::try_from(step.anchor) {
                Ok(SunAnchor::Sunset) => sunset,
                Ok(SunAnchor::Sunrise) => sunrise,
                _ => continue,
            };
            let instant = anchor + chrono::Duration::minutes(i64::from(step.offset_minutes));
            if instant <= at_utc && latest.is_none_or(|(t, _)| instant >= t) {
                latest = Some((instant, step.level));
            }
        }
    }
    latest.map(|(_, level)| level)
}

fn sun_times_on(lat: f64, lon: f64, day: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let noon = day.and_hms_opt(12, 0, 0)?.and_utc();
    sun::sun_times(lat, lon, noon.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAT: f64 = 43.6086;
    const LON: f64 = 3.8797;

    fn step(anchor: SunAnchor, offset_minutes: i32, level: f64) -> ScheduleStep {
        ScheduleStep { anchor: anchor as i32, offset_minutes, level }
    }

    fn at(text: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc).into()
    }

    /// Full light at sunset, 50 % from sunset + 5 h, full again from sunrise - 1 h, off at sunrise.
    fn profile() -> Vec<ScheduleStep> {
        vec![
            step(SunAnchor::Sunset, 0, 1.0),
            step(SunAnchor::Sunset, 300, 0.5),
            step(SunAnchor::Sunrise, -60, 1.0),
            step(SunAnchor::Sunrise, 0, 0.0),
        ]
    }

    #[test]
    fn levels_through_a_winter_night_in_montpellier() {
        // 21 Dec 2026: sunset 16:10 UTC; 22 Dec: sunrise 07:14 UTC (NOAA, see sun.rs).
        let cases = [
            ("2026-12-21T12:00:00Z", 0.0, "day: off since this morning's sunrise"),
            ("2026-12-21T16:20:00Z", 1.0, "just after sunset"),
            ("2026-12-21T21:00:00Z", 1.0, "sunset + 4h50: the 50 % step comes at 16:10 + 5 h = 21:10"),
            ("2026-12-21T21:15:00Z", 0.5, "after sunset + 5 h"),
            ("2026-12-22T03:00:00Z", 0.5, "after midnight, same night"),
            ("2026-12-22T06:30:00Z", 1.0, "sunrise - 1 h"),
            ("2026-12-22T07:30:00Z", 0.0, "after sunrise"),
        ];
        for (instant, expected, why) in cases {
            assert_eq!(level_at(&profile(), &[], LAT, LON, at(instant)), Some(expected), "{instant}: {why}");
        }
    }

    #[test]
    fn an_override_replaces_one_night() {
        let festival = NaiveDate::from_ymd_opt(2026, 12, 21).unwrap();
        let overrides = vec![(festival, vec![step(SunAnchor::Sunset, 0, 1.0), step(SunAnchor::Sunrise, 0, 0.0)])];
        // The festival night stays at full light all night...
        assert_eq!(level_at(&profile(), &overrides, LAT, LON, at("2026-12-22T03:00:00Z")), Some(1.0));
        // ... the next night is back to the profile.
        assert_eq!(level_at(&profile(), &overrides, LAT, LON, at("2026-12-23T03:00:00Z")), Some(0.5));
    }

    #[test]
    fn summer_nights_are_short() {
        // 21 June: sunset 19:29 UTC, sunrise 22 June ~04:03 UTC; sunset + 5 h is 00:29.
        assert_eq!(level_at(&profile(), &[], LAT, LON, at("2026-06-22T00:00:00Z")), Some(1.0));
        assert_eq!(level_at(&profile(), &[], LAT, LON, at("2026-06-22T01:00:00Z")), Some(0.5));
        assert_eq!(level_at(&profile(), &[], LAT, LON, at("2026-06-22T03:30:00Z")), Some(1.0));
    }

    #[test]
    fn steps_are_validated() {
        assert!(validate_steps(&profile(), "schedule").is_ok());
        let cases = [
            (vec![], "1 to 24 steps"),
            (vec![step(SunAnchor::Unspecified, 0, 1.0)], "anchor"),
            (vec![step(SunAnchor::Sunset, 800, 1.0)], "offset_minutes"),
            (vec![step(SunAnchor::Sunset, 0, 1.2)], "outside 0..1"),
            (vec![step(SunAnchor::Sunset, 0, f64::NAN)], "outside 0..1"),
        ];
        for (steps, expected) in cases {
            let err = validate_steps(&steps, "schedule").unwrap_err().0;
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
        assert!(parse_night("2026-12-21").is_ok());
        assert!(parse_night("21/12/2026").is_err());
    }
}
