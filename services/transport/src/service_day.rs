//! Service days, pure: which calendar day's service runs at an instant (the day turns at 03:00
//! local time: night trips past midnight, GTFS times beyond 24:00, belong to the evening's
//! service), and when a day's GTFS time 0 is. The service and the simulator share these, so that
//! they always agree on the day.

use chrono::Datelike;

/// The timetable day turns at 03:00 local time.
pub const DAY_TURNS_AT_S: i64 = 3 * 3600;

/// The calendar day whose service runs at `unix_s` (POSIX seconds) in a time zone.
pub fn calendar_day(time_zone: &jiff::tz::TimeZone, unix_s: f64) -> chrono::NaiveDate {
    let date = jiff::Timestamp::from_second(unix_s as i64 - DAY_TURNS_AT_S)
        .map(|t| t.to_zoned(time_zone.clone()).date())
        .unwrap_or_default();
    chrono::NaiveDate::from_ymd_opt(i32::from(date.year()), date.month() as u32, date.day() as u32).unwrap_or_default()
}

/// POSIX seconds of a day's GTFS time 0 (noon minus 12 h, in the time zone).
pub fn origin_unix(time_zone: &jiff::tz::TimeZone, day: chrono::NaiveDate) -> i64 {
    let noon = jiff::civil::date(day.year() as i16, day.month() as i8, day.day() as i8).at(12, 0, 0, 0);
    noon.to_zoned(time_zone.clone()).map(|z| z.timestamp().as_second()).unwrap_or(0) - 12 * 3600
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_turns_at_three_and_starts_at_noon_minus_twelve() {
        let paris = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
        let day = |d: u32| chrono::NaiveDate::from_ymd_opt(2026, 3, d).unwrap();
        // 2026-03-10 01:30 and 03:30 in Paris (UTC+1).
        let at = |h: f64| 1_773_097_200.0 + h * 3600.0; // 2026-03-10 00:00 Paris
        assert_eq!(calendar_day(&paris, at(1.5)), day(9), "01:30: the evening's service");
        assert_eq!(calendar_day(&paris, at(3.5)), day(10));
        assert_eq!(origin_unix(&paris, day(10)), 1_773_097_200);
        // On the night clocks go forward (29 March), noon minus 12 h is 23:00 the day before.
        assert_eq!(origin_unix(&paris, day(29)), 1_774_738_800 - 3600);
    }
}
