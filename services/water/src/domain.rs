//! What the water service accepts, checked without I/O: a reading's measure, unit, value and
//! time; a valve command's request; the bounds of a call. The core calls these before it takes
//! its lock; refusals are the client's to read (`INVALID_ARGUMENT`).

use proto::water::{Reading, SendValveCommandRequest, Sensor, ValveAction};
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::quality::{self, Measure};

/// Readings later than this past the wall clock are refused (clock skew allowance).
pub const MAX_FUTURE: Duration = Duration::from_secs(300);
/// Readings before 2000-01-01 are refused (a clock that was never set).
const EARLIEST: Duration = Duration::from_secs(946_684_800);
/// Sensors registered in one call.
pub const MAX_SENSORS_PER_CALL: usize = 10_000;
/// A valve command's reason, and a controller's, is kept to this many characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Who asked for a command: 1 to this many characters of text.
const MAX_REQUESTED_BY_CHARS: usize = 64;
/// A valve command's deadline when the request names none, and the longest allowed, seconds.
const DEFAULT_TIMEOUT_S: u32 = 300;
const MAX_TIMEOUT_S: u32 = 86_400;

/// A reading that may enter the rules: its measure, and when it was observed.
#[derive(Debug, PartialEq)]
pub struct CheckedReading {
    pub measure: Measure,
    pub observed_at: prost_types::Timestamp,
}

/// Checks a reading's measure, unit, physical range and time against `now`. The refusal names
/// the sensor (its id cut to an id's length: it is echoed).
pub fn check_reading(reading: &Reading, now: SystemTime) -> Result<CheckedReading, String> {
    let shown: String = reading.sensor_id.chars().take(proto::ids::AssetId::MAX_LEN).collect();
    let refuse = |message: String| format!("sensor {shown:?}: {message}");
    let measure = quality::check(&reading.measure, &reading.unit, reading.value).map_err(refuse)?;
    let observed_at = reading.observed_at.ok_or_else(|| refuse("observed_at is missing".into()))?;
    let at = SystemTime::try_from(observed_at).map_err(|_| refuse("observed_at is not a valid time".into()))?;
    if at > now + MAX_FUTURE {
        return Err(refuse("observed_at is in the future".into()));
    }
    if at < SystemTime::UNIX_EPOCH + EARLIEST {
        return Err(refuse("observed_at is before 2000".into()));
    }
    Ok(CheckedReading { measure, observed_at })
}

/// A valve command's request, checked.
#[derive(Debug, PartialEq)]
pub struct ValveRequest {
    pub action: ValveAction,
    pub requested_by: String,
    pub timeout_s: u32,
}

/// Checks who asks, why, what and for how long (the link is the network's to check).
pub fn valve_request(request: &SendValveCommandRequest) -> Result<ValveRequest, String> {
    let by = request.requested_by.trim();
    if by.is_empty() || by.chars().count() > MAX_REQUESTED_BY_CHARS || by.chars().any(char::is_control) {
        return Err(format!("requested_by is required: 1 to {MAX_REQUESTED_BY_CHARS} characters of text"));
    }
    if request.reason.chars().count() > MAX_REASON_CHARS || request.reason.chars().any(|c| c.is_control() && c != '\n')
    {
        return Err(format!("reason: at most {MAX_REASON_CHARS} characters of text"));
    }
    let action = match ValveAction::try_from(request.action) {
        Ok(ValveAction::Close) => ValveAction::Close,
        Ok(ValveAction::Open) => ValveAction::Open,
        _ => return Err("action must be VALVE_ACTION_CLOSE or VALVE_ACTION_OPEN".into()),
    };
    let timeout_s = match request.timeout_s {
        0 => DEFAULT_TIMEOUT_S,
        t if t > MAX_TIMEOUT_S => return Err(format!("timeout_s: at most {MAX_TIMEOUT_S} seconds")),
        t => t,
    };
    Ok(ValveRequest { action, requested_by: by.to_owned(), timeout_s })
}

/// The links metered by flow sensors, sorted (they cut the network into areas).
pub fn metered_links<'a>(sensors: impl Iterator<Item = &'a Sensor>) -> Vec<String> {
    let set: BTreeSet<String> = sensors
        .filter(|s| s.measures.iter().any(|m| m == Measure::Flow.name()))
        .map(|s| s.element_id.clone())
        .collect();
    set.into_iter().collect()
}

/// The quality tracker's key of one measure of one sensor.
pub fn series_key(sensor: &str, measure: Measure) -> String {
    format!("{sensor}:{}", measure.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(seconds: i64) -> Reading {
        Reading {
            sensor_id: "P-1".into(),
            measure: "pressure".into(),
            unit: "m".into(),
            value: 42.0,
            observed_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        }
    }

    #[test]
    fn a_reading_is_refused_outside_its_time_window() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ok = check_reading(&reading(1_800_000_000), now).expect("a reading of now");
        assert_eq!(ok.measure, Measure::Pressure);
        let future = check_reading(&reading(1_800_000_000 + 301), now).expect_err("too far ahead");
        assert!(future.contains("in the future") && future.starts_with("sensor \"P-1\""), "{future}");
        assert!(check_reading(&reading(1_800_000_000 + 299), now).is_ok(), "clock skew is allowed");
        assert!(check_reading(&reading(900_000_000), now).expect_err("1998").contains("before 2000"));
        let missing = Reading { observed_at: None, ..reading(0) };
        assert!(check_reading(&missing, now).expect_err("no time").contains("missing"));
        let long_id = Reading { sensor_id: "x".repeat(10_000), ..reading(0) };
        assert!(check_reading(&long_id, now).expect_err("echoed id").len() < 200, "the echoed id is cut");
    }

    #[test]
    fn a_valve_request_names_who_why_what_and_how_long() {
        let request = SendValveCommandRequest {
            link_id: "V1".into(),
            action: ValveAction::Close as i32,
            requested_by: " op ".into(),
            reason: "burst\nrue X".into(),
            timeout_s: 0,
            ..Default::default()
        };
        let valid = valve_request(&request).expect("valid");
        assert_eq!(valid, ValveRequest { action: ValveAction::Close, requested_by: "op".into(), timeout_s: 300 });
        let refused = |r: SendValveCommandRequest| valve_request(&r).expect_err("refused");
        assert!(
            refused(SendValveCommandRequest { requested_by: "  ".into(), ..request.clone() }).contains("requested_by")
        );
        assert!(refused(SendValveCommandRequest { reason: "a\u{7}".into(), ..request.clone() }).contains("reason"));
        assert!(refused(SendValveCommandRequest { action: 0, ..request.clone() }).contains("action"));
        assert!(refused(SendValveCommandRequest { timeout_s: 86_401, ..request.clone() }).contains("timeout_s"));
        assert_eq!(
            valve_request(&SendValveCommandRequest { timeout_s: 86_400, ..request }).map(|v| v.timeout_s),
            Ok(86_400)
        );
    }

    #[test]
    fn only_flow_sensors_meter_links() {
        let sensor = |id: &str, link: &str, measure: &str| Sensor {
            id: id.into(),
            element_id: link.into(),
            measures: vec![measure.into()],
            ..Default::default()
        };
        let sensors = [
            sensor("F2", "L2", "flow"),
            sensor("P1", "L9", "pressure"),
            sensor("F1", "L1", "flow"),
            sensor("F3", "L1", "flow"),
        ];
        assert_eq!(metered_links(sensors.iter()), ["L1", "L2"]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn measure_name() -> impl Strategy<Value = String> {
            prop_oneof![prop::sample::select(Measure::ALL.map(|m| m.name().to_owned()).to_vec()), any::<String>()]
        }

        fn unit_for(measure: &str) -> impl Strategy<Value = String> + use<> {
            let right = Measure::from_name(measure).map(|m| m.unit().to_owned()).unwrap_or_default();
            prop_oneof![Just(right), any::<String>()]
        }

        fn value() -> impl Strategy<Value = f64> {
            prop_oneof![any::<f64>(), -1e6..1e6f64, Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)]
        }

        proptest! {
            /// Whatever bytes a gRPC caller sends, decoding and checking a reading or a valve
            /// request answers (never panics), and what the check accepts is what an instrument
            /// or an operator can mean.
            #[test]
            fn random_requests_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                use prost::Message;
                let now = SystemTime::now();
                if let Ok(reading) = Reading::decode(bytes.as_slice()) {
                    let _ = check_reading(&reading, now);
                }
                if let Ok(request) = SendValveCommandRequest::decode(bytes.as_slice()) {
                    let _ = valve_request(&request);
                }
            }

            /// A valve request is accepted only with an action, someone asking, a reason of
            /// text and a deadline within a day; what is kept is what was asked.
            #[test]
            fn accepted_valve_requests_are_bounded(
                action in prop_oneof![any::<i32>(), 0i32..4],
                by in prop_oneof![any::<String>(), "[a-z. ]{0,70}"],
                reason in prop_oneof![any::<String>(), "[a-z\n]{0,40}"],
                timeout_s in prop_oneof![any::<u32>(), 0u32..100_000],
            ) {
                let request = SendValveCommandRequest { action, requested_by: by.clone(), reason: reason.clone(), timeout_s, ..Default::default() };
                if let Ok(valid) = valve_request(&request) {
                    prop_assert!(action == ValveAction::Close as i32 || action == ValveAction::Open as i32);
                    prop_assert_eq!(valid.action as i32, action);
                    prop_assert_eq!(valid.requested_by.as_str(), by.trim());
                    prop_assert!(!valid.requested_by.is_empty() && valid.requested_by.chars().count() <= MAX_REQUESTED_BY_CHARS);
                    prop_assert!(!valid.requested_by.chars().any(char::is_control));
                    prop_assert!(!reason.chars().any(|c| c.is_control() && c != '\n'));
                    prop_assert_eq!(valid.timeout_s, if timeout_s == 0 { DEFAULT_TIMEOUT_S } else { timeout_s });
                    prop_assert!(valid.timeout_s <= MAX_TIMEOUT_S);
                }
            }

            #[test]
            fn accepted_readings_are_physical(
                (measure, unit) in measure_name().prop_flat_map(|m| (Just(m.clone()), unit_for(&m))),
                value in value(),
                seconds in prop_oneof![any::<i64>(), 0i64..4_000_000_000],
                nanos in prop_oneof![any::<i32>(), 0i32..1_000_000_000],
            ) {
                let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
                let reading = Reading {
                    sensor_id: "P-1".into(),
                    measure,
                    unit,
                    value,
                    observed_at: Some(prost_types::Timestamp { seconds, nanos }),
                };
                if let Ok(checked) = check_reading(&reading, now) {
                    let (low, high) = checked.measure.limits();
                    prop_assert!(value.is_finite() && (low..=high).contains(&value), "{value} accepted");
                    prop_assert_eq!(reading.unit.as_str(), checked.measure.unit());
                    let at = SystemTime::try_from(checked.observed_at).expect("a valid time");
                    prop_assert!(at <= now + MAX_FUTURE && at >= SystemTime::UNIX_EPOCH + EARLIEST);
                }
            }
        }
    }
}
