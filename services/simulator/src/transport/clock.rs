//! The simulation's time: a clock that may start in the past and run ×N until it reaches the
//! present, and the fixed local time of the feed a replay may start at.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Simulated time: starts at `start_unix` and runs `speed` times faster than the wall clock until
/// it reaches the present, then with it.
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    started: Instant,
    start_unix: f64,
    pub(crate) speed: f64,
}

impl SimClock {
    pub fn new(replay_from: Duration, speed: f64) -> SimClock {
        SimClock::starting_at(wall_unix() - replay_from.as_secs_f64(), speed)
    }

    /// Starts at `start_unix` (POSIX seconds, in the past).
    pub fn starting_at(start_unix: f64, speed: f64) -> SimClock {
        SimClock { started: Instant::now(), start_unix: start_unix.min(wall_unix()), speed }
    }

    pub fn now_unix(&self) -> f64 {
        (self.start_unix + self.started.elapsed().as_secs_f64() * self.speed).min(wall_unix())
    }
}

/// A local time of the feed's time zone to start the simulation at, optionally on a weekday: the
/// latest such moment before now. `08:30` is today's 08:30 when it is past, else yesterday's;
/// `tue 08:30` the latest Tuesday's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayAt {
    pub weekday: Option<jiff::civil::Weekday>,
    pub hour: i8,
    pub minute: i8,
}

impl std::str::FromStr for ReplayAt {
    type Err = String;

    fn from_str(text: &str) -> Result<ReplayAt, String> {
        use jiff::civil::Weekday::*;
        let bad =
            || format!("{text:?} is not a time HH:MM, optionally after a weekday (mon … sun): e.g. \"tue 08:30\"");
        let (weekday, time) = match text.trim().split_once(' ') {
            Some((day, time)) => {
                let day = match day.to_ascii_lowercase().as_str() {
                    "mon" => Monday,
                    "tue" => Tuesday,
                    "wed" => Wednesday,
                    "thu" => Thursday,
                    "fri" => Friday,
                    "sat" => Saturday,
                    "sun" => Sunday,
                    _ => return Err(bad()),
                };
                (Some(day), time.trim())
            }
            None => (None, text.trim()),
        };
        let (hour, minute) = time.split_once(':').ok_or_else(bad)?;
        let (hour, minute): (i8, i8) = (hour.parse().map_err(|_| bad())?, minute.parse().map_err(|_| bad())?);
        if !((0..24).contains(&hour) && (0..60).contains(&minute)) {
            return Err(bad());
        }
        Ok(ReplayAt { weekday, hour, minute })
    }
}

impl ReplayAt {
    /// The latest moment before `now_unix` at this local time (and weekday) in `time_zone`.
    pub fn latest_before(&self, time_zone: &jiff::tz::TimeZone, now_unix: f64) -> Option<f64> {
        let now = jiff::Timestamp::from_second(now_unix as i64).ok()?;
        let mut date = now.to_zoned(time_zone.clone()).date();
        // Eight days back always holds the weekday; a day that skips the time (a clock change)
        // is passed over.
        for _ in 0..9 {
            let fits = self.weekday.is_none_or(|w| date.weekday() == w);
            if fits && let Ok(at) = date.at(self.hour, self.minute, 0, 0).to_zoned(time_zone.clone()) {
                let at = at.timestamp().as_second() as f64;
                if at <= now_unix {
                    return Some(at);
                }
            }
            date = date.yesterday().ok()?;
        }
        None
    }
}

pub(crate) fn wall_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
