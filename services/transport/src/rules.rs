//! Transport rules, pure: schedule adherence, headway classification, off route, silence.

use crate::network::StopTime;

#[derive(Debug, Clone)]
pub struct RulesConfig {
    /// Observed headway below this share of the scheduled one: bunching.
    pub bunching_ratio: f64,
    /// Observed headway above this multiple of the scheduled one: a gap.
    pub gap_ratio: f64,
    /// Farther than this from its shape: off route.
    pub off_route_m: f64,
    /// Silent for longer than this: not reporting.
    pub silence_s: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig { bunching_ratio: 0.25, gap_ratio: 2.0, off_route_m: 100.0, silence_s: 120 }
    }
}

/// The scheduled time (GTFS seconds) at `along_m` metres along the trip's shape, interpolated
/// between the stop times around it; `None` without distances or outside the trip.
pub fn scheduled_time_at(stop_times: &[StopTime], along_m: f64) -> Option<f64> {
    let mut previous: Option<&StopTime> = None;
    for st in stop_times {
        let d = st.dist_m?;
        if let Some(p) = previous
            && let Some(pd) = p.dist_m
            && along_m >= pd
            && along_m <= d
        {
            if d <= pd {
                return Some(f64::from(p.departure_s));
            }
            let t = (along_m - pd) / (d - pd);
            return Some(f64::from(p.departure_s) + t * (f64::from(st.arrival_s) - f64::from(p.departure_s)));
        }
        previous = Some(st);
    }
    None
}

/// Schedule adherence, seconds: positive late, negative early.
pub fn delay_s(stop_times: &[StopTime], along_m: f64, observed_s: f64) -> Option<f64> {
    scheduled_time_at(stop_times, along_m).map(|scheduled| observed_s - scheduled)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headway {
    Normal,
    Bunching,
    Gap,
}

/// Classifies an observed headway against the scheduled one.
pub fn classify_headway(observed_s: f64, scheduled_s: f64, config: &RulesConfig) -> Headway {
    if scheduled_s <= 0.0 {
        Headway::Normal
    } else if observed_s < config.bunching_ratio * scheduled_s {
        Headway::Bunching
    } else if observed_s > config.gap_ratio * scheduled_s {
        Headway::Gap
    } else {
        Headway::Normal
    }
}

/// The scheduled headway at a stop around time `t`: the interval between the scheduled passages
/// (sorted) that surround it; the nearest interval at either end of the day.
pub fn scheduled_headway_s(passages: &[u32], t: f64) -> Option<f64> {
    if passages.len() < 2 {
        return None;
    }
    let i = passages.partition_point(|&p| f64::from(p) <= t).clamp(1, passages.len() - 1);
    Some(f64::from(passages[i]) - f64::from(passages[i - 1]))
}

pub fn is_off_route(offset_m: f64, config: &RulesConfig) -> bool {
    offset_m > config.off_route_m
}

pub fn is_silent(last_seen_s: u64, now_s: u64, config: &RulesConfig) -> bool {
    now_s.saturating_sub(last_seen_s) > config.silence_s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(seq: u32, arrival: u32, departure: u32, dist: f64) -> StopTime {
        StopTime {
            stop_id: format!("S{seq}"),
            sequence: seq,
            arrival_s: arrival,
            departure_s: departure,
            dist_m: Some(dist),
        }
    }

    /// 08:00 at 0 m, 08:05 (arrive) / 08:06 (leave) at 1,000 m, 08:10 at 2,000 m.
    fn trip() -> Vec<StopTime> {
        vec![st(1, 28_800, 28_800, 0.0), st(2, 29_100, 29_160, 1_000.0), st(3, 29_400, 29_400, 2_000.0)]
    }

    #[test]
    fn adherence_table() {
        let cases = [
            (0.0, 28_800.0, Some(0.0), "on time at the first stop"),
            (500.0, 28_950.0, Some(0.0), "halfway to the second stop, on time"),
            (500.0, 29_070.0, Some(120.0), "two minutes late"),
            (1_500.0, 29_220.0, Some(-60.0), "a minute early after the dwell"),
            (2_000.0, 29_400.0, Some(0.0), "at the terminus"),
            (2_500.0, 29_400.0, None, "beyond the trip"),
        ];
        for (along, observed, expected, why) in cases {
            assert_eq!(delay_s(&trip(), along, observed), expected, "{why}");
        }
        let mut no_dist = trip();
        no_dist[1].dist_m = None;
        assert_eq!(delay_s(&no_dist, 1_500.0, 0.0), None, "no distances, no adherence");
    }

    #[test]
    fn headway_table() {
        let c = RulesConfig::default();
        let cases = [
            (600.0, 600.0, Headway::Normal),
            (149.0, 600.0, Headway::Bunching),
            (150.0, 600.0, Headway::Normal),
            (1_200.0, 600.0, Headway::Normal),
            (1_201.0, 600.0, Headway::Gap),
            (10.0, 0.0, Headway::Normal),
        ];
        for (observed, scheduled, expected) in cases {
            assert_eq!(classify_headway(observed, scheduled, &c), expected, "{observed} vs {scheduled}");
        }
        let passages = [28_800, 29_400, 30_600];
        assert_eq!(scheduled_headway_s(&passages, 29_000.0), Some(600.0));
        assert_eq!(scheduled_headway_s(&passages, 30_000.0), Some(1_200.0));
        assert_eq!(scheduled_headway_s(&passages, 10.0), Some(600.0), "before the first: the first interval");
        assert_eq!(scheduled_headway_s(&passages, 90_000.0), Some(1_200.0), "after the last: the last interval");
        assert_eq!(scheduled_headway_s(&[28_800], 29_000.0), None);
    }

    #[test]
    fn off_route_and_silence() {
        let c = RulesConfig::default();
        assert!(!is_off_route(100.0, &c));
        assert!(is_off_route(100.5, &c));
        assert!(!is_silent(1_000, 1_120, &c));
        assert!(is_silent(1_000, 1_121, &c));
        assert!(!is_silent(1_200, 1_000, &c), "a clock behind is not silence");
    }
}
