//! Predicted arrivals, pure: the stops of a trip still ahead of its vehicle, with the vehicle's
//! current delay carried forward (the method most AVL systems publish; it neither catches up
//! recovery time nor adds dwell, and says so by being simple). Two rules bend it, so that the
//! predictions are times a vehicle can keep: none is before the observation, and each stop is
//! reached at least a second after the previous one was left (timetables give consecutive stops
//! the same minute; GTFS-Realtime requires strictly increasing times). A stop's delay is then its
//! own prediction's, a whole number of seconds.

use proto::transport::VehicleStopStatus;

use crate::network::Trip;
use crate::tracking::Tracked;

#[derive(Debug, Clone, PartialEq)]
pub struct Predicted {
    pub stop_id: String,
    pub stop_sequence: u32,
    /// POSIX seconds.
    pub scheduled_unix: i64,
    /// POSIX seconds; `None` without a vehicle delay.
    pub predicted_unix: Option<i64>,
    /// When the vehicle leaves the stop, POSIX seconds: the predicted arrival plus the
    /// timetable's dwell there; `None` without a vehicle delay.
    pub predicted_departure_unix: Option<i64>,
    pub delay_s: Option<f64>,
}

/// The arrivals of `trip` still to come. `vehicle` is the one running it, if any; without it every
/// stop is listed with its scheduled time only. `origin_unix` is the POSIX time of the service
/// day's GTFS time 0, used when no vehicle gives it (a vehicle's own origin is its observation
/// time minus its service time, which keeps its day right after midnight).
pub fn arrivals(trip: &Trip, vehicle: Option<&Tracked>, origin_unix: i64) -> Vec<Predicted> {
    let Some(vehicle) = vehicle else {
        return trip
            .stop_times
            .iter()
            .map(|st| Predicted {
                stop_id: st.stop_id.clone(),
                stop_sequence: st.sequence,
                scheduled_unix: origin_unix + i64::from(st.arrival_s),
                predicted_unix: None,
                predicted_departure_unix: None,
                delay_s: None,
            })
            .collect();
    };
    if vehicle.state.trip_finished {
        return Vec::new();
    }
    let origin = vehicle.origin_unix();
    let position = vehicle.state.position.as_ref();
    let sequence = position.map(|p| p.current_stop_sequence).unwrap_or(0);
    let stopped = position.is_some_and(|p| p.current_status == VehicleStopStatus::StoppedAt as i32);
    let along = vehicle.state.along_m;
    let ahead = |st: &&crate::network::StopTime| {
        if sequence > 0 {
            st.sequence > sequence || (st.sequence == sequence && !stopped)
        } else {
            st.dist_m.is_none_or(|d| d > along)
        }
    };
    let delay = vehicle.state.delay_s;
    // When the vehicle left the previous stop ahead: the next is reached at least a second later
    // (MobilityData's rule E022).
    let mut left_previous: Option<i64> = None;
    trip.stop_times
        .iter()
        .filter(ahead)
        .map(|st| {
            let scheduled = origin + i64::from(st.arrival_s);
            let dwell = i64::from(st.departure_s.saturating_sub(st.arrival_s));
            // Never in the past of the observation: a vehicle cannot have arrived already.
            let predicted = delay.map(|d| {
                let at = (scheduled + d.round() as i64).max(vehicle.seen_unix_s as i64);
                let at = left_previous.map_or(at, |p| at.max(p + 1));
                left_previous = Some(at + dwell);
                at
            });
            Predicted {
                stop_id: st.stop_id.clone(),
                stop_sequence: st.sequence,
                scheduled_unix: scheduled,
                predicted_unix: predicted,
                predicted_departure_unix: predicted.map(|at| at + dwell),
                // The delay the prediction says, stop by stop.
                delay_s: predicted.map(|p| (p - scheduled) as f64),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::StopTime;
    use proto::transport::{VehiclePosition, VehicleState};

    /// Stops at 0, 1,000 and 2,000 m, due 08:00, 08:05 and 08:10.
    fn trip() -> Trip {
        let stop_times = (0..3)
            .map(|i| StopTime {
                stop_id: format!("S{i}"),
                sequence: i + 1,
                arrival_s: 28_800 + i * 300,
                departure_s: 28_800 + i * 300,
                dist_m: Some(f64::from(i) * 1_000.0),
            })
            .collect();
        Trip::for_tests("T1", stop_times)
    }

    /// Day origin: 1,000,000; observed at 08:06 (service time 29,160).
    fn vehicle(sequence: u32, status: VehicleStopStatus, along_m: f64, delay_s: Option<f64>) -> Tracked {
        Tracked {
            state: VehicleState {
                position: Some(VehiclePosition {
                    current_stop_sequence: sequence,
                    current_status: status as i32,
                    ..Default::default()
                }),
                along_m,
                delay_s,
                ..Default::default()
            },
            service_s: 29_160.0,
            seen_unix_s: 1_029_160,
        }
    }

    fn summary(p: &[Predicted]) -> Vec<(u32, i64, Option<i64>)> {
        p.iter()
            .map(|p| (p.stop_sequence, p.scheduled_unix - 1_000_000, p.predicted_unix.map(|t| t - 1_000_000)))
            .collect()
    }

    #[test]
    fn arrivals_table() {
        use VehicleStopStatus::*;
        let t = trip();
        let cases = [
            (vehicle(3, InTransitTo, 1_300.0, Some(120.0)), vec![(3, 29_400, Some(29_520))], "2 min late, going to S2"),
            (vehicle(2, StoppedAt, 1_000.0, Some(60.0)), vec![(3, 29_400, Some(29_460))], "at S1: S2 is next"),
            (
                vehicle(2, InTransitTo, 900.0, Some(-30.0)),
                vec![(2, 29_100, Some(29_160)), (3, 29_400, Some(29_370))],
                "early: never before the observation",
            ),
            (
                vehicle(0, Unspecified, 1_500.0, Some(0.0)),
                vec![(3, 29_400, Some(29_400))],
                "no stop sequence: by distance",
            ),
            (vehicle(3, InTransitTo, 1_300.0, None), vec![(3, 29_400, None)], "no adherence: scheduled only"),
        ];
        for (v, expected, why) in cases {
            assert_eq!(summary(&arrivals(&t, Some(&v), 0)), expected, "{why}");
        }
        // Two stops due at the same minute, and stops held at the observation: each prediction
        // is a second after the one before, and its delay says so.
        let mut same_minute = trip();
        same_minute.stop_times[2].arrival_s = same_minute.stop_times[1].arrival_s;
        let early = arrivals(&same_minute, Some(&vehicle(2, InTransitTo, 900.0, Some(-600.0))), 0);
        assert_eq!(summary(&early), [(2, 29_100, Some(29_160)), (3, 29_100, Some(29_161))]);
        assert_eq!(early.iter().map(|a| a.delay_s).collect::<Vec<_>>(), [Some(60.0), Some(61.0)]);
        let late = arrivals(&same_minute, Some(&vehicle(2, InTransitTo, 900.0, Some(120.0))), 0);
        assert_eq!(summary(&late), [(2, 29_100, Some(29_220)), (3, 29_100, Some(29_221))]);
        // A dwell of a minute at S2: S3 is reached after the vehicle left S2.
        let mut dwell = same_minute.clone();
        dwell.stop_times[1].departure_s += 60;
        let waits = arrivals(&dwell, Some(&vehicle(2, InTransitTo, 900.0, Some(120.0))), 0);
        assert_eq!(waits[0].predicted_departure_unix.map(|t| t - 1_000_000), Some(29_280));
        assert_eq!(summary(&waits), [(2, 29_100, Some(29_220)), (3, 29_100, Some(29_281))]);
        let mut finished = vehicle(3, StoppedAt, 2_000.0, Some(0.0));
        finished.state.trip_finished = true;
        assert!(arrivals(&t, Some(&finished), 0).is_empty());
        let none = arrivals(&t, None, 1_000_000);
        assert_eq!(summary(&none), [(1, 28_800, None), (2, 29_100, None), (3, 29_400, None)]);
    }
}
