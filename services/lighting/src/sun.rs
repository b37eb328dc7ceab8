//! Daylight at a place, from the solar position (the `sunrise` crate): what decides whether a
//! lamp should be on, and whether one that is on is wasting energy.

use chrono::{DateTime, Utc};
use std::time::{Duration, SystemTime};

/// Sunrise and sunset (UTC) of the UTC day containing `at`, at this place; `None` near the poles
/// on days without one.
pub fn sun_times(lat: f64, lon: f64, at: SystemTime) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let coordinates = sunrise::Coordinates::new(lat, lon)?;
    let day = DateTime::<Utc>::from(at).date_naive();
    let solar = sunrise::SolarDay::new(coordinates, day);
    Some((solar.event_time(sunrise::SolarEvent::Sunrise)?, solar.event_time(sunrise::SolarEvent::Sunset)?))
}

/// Whether it is clearly day: after sunrise + `margin` and before sunset - `margin`. Around dawn
/// and dusk (within the margin) it is not "clearly day", so a lamp still on then is not a fault.
pub fn is_clearly_day(lat: f64, lon: f64, at: SystemTime, margin: Duration) -> bool {
    let Some((rise, set)) = sun_times(lat, lon, at) else { return false };
    let at = DateTime::<Utc>::from(at);
    let Ok(margin) = chrono::Duration::from_std(margin) else { return false };
    at > rise + margin && at < set - margin
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc).into()
    }

    // Montpellier, Place de la Comédie.
    const LAT: f64 = 43.6086;
    const LON: f64 = 3.8797;

    #[test]
    fn montpellier_sunrise_and_sunset() {
        // Expected times from an independent computation with NOAA's general solar position
        // formulas (zenith 90.833°): 21 June 2026 04:02:35 and 19:29:02 UTC (06:02 and 21:29
        // local summer time); 21 December 2026 07:14:10 and 16:10:25 UTC. Within 3 minutes.
        for (day, rise, set) in [
            ("2026-06-21T12:00:00Z", "2026-06-21T04:02:35Z", "2026-06-21T19:29:02Z"),
            ("2026-12-21T12:00:00Z", "2026-12-21T07:14:10Z", "2026-12-21T16:10:25Z"),
        ] {
            let (r, s) = sun_times(LAT, LON, utc(day)).unwrap();
            let close = |a: DateTime<Utc>, b: &str| (a - DateTime::<Utc>::from(utc(b))).num_seconds().abs() < 180;
            assert!(close(r, rise), "{day}: sunrise {r} vs {rise}");
            assert!(close(s, set), "{day}: sunset {s} vs {set}");
        }
    }

    #[test]
    fn clearly_day_table() {
        let margin = Duration::from_secs(30 * 60);
        let cases = [
            ("2026-12-21T12:00:00Z", true, "noon"),
            ("2026-12-21T02:00:00Z", false, "night"),
            ("2026-12-21T07:20:00Z", false, "just after sunrise, within the margin"),
            ("2026-12-21T08:00:00Z", true, "46 min after sunrise"),
            ("2026-12-21T15:50:00Z", false, "just before sunset, within the margin"),
            ("2026-12-21T20:00:00Z", false, "evening"),
        ];
        for (at, expected, why) in cases {
            assert_eq!(is_clearly_day(LAT, LON, utc(at), margin), expected, "{at}: {why}");
        }
        // Same instant, other side of the world (Nouméa): night there.
        assert!(!is_clearly_day(-22.27, 166.44, utc("2026-12-21T12:00:00Z"), margin));
    }
}
