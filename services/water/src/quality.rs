//! Readings' data quality, pure: what each measure is, its unit and plausible range (quality
//! measures follow the `WaterQualityObserved` vocabulary), and the flags a sensor earns: a value
//! out of range, a value frozen for too long, a sensor gone silent. A flagged reading is kept and
//! shown, never silently used by the rules.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Measure {
    Pressure,
    Flow,
    Level,
    FreeChlorine,
    Turbidity,
    Ph,
    Conductivity,
    Temperature,
}

impl Measure {
    pub const ALL: [Measure; 8] = [
        Measure::Pressure,
        Measure::Flow,
        Measure::Level,
        Measure::FreeChlorine,
        Measure::Turbidity,
        Measure::Ph,
        Measure::Conductivity,
        Measure::Temperature,
    ];

    /// The name readings use (`WaterQualityObserved` attribute names for quality measures).
    pub fn name(self) -> &'static str {
        match self {
            Measure::Pressure => "pressure",
            Measure::Flow => "flow",
            Measure::Level => "level",
            Measure::FreeChlorine => "freeChlorine",
            Measure::Turbidity => "turbidity",
            Measure::Ph => "pH",
            Measure::Conductivity => "conductivity",
            Measure::Temperature => "temperature",
        }
    }

    pub fn from_name(name: &str) -> Option<Measure> {
        Measure::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The unit a reading must carry.
    pub fn unit(self) -> &'static str {
        match self {
            Measure::Pressure => "m",
            Measure::Flow => "m3/h",
            Measure::Level => "m",
            Measure::FreeChlorine => "mg/L",
            Measure::Turbidity => "NTU",
            Measure::Ph => "",
            Measure::Conductivity => "uS/cm",
            Measure::Temperature => "Cel",
        }
    }

    /// Physically plausible values; beyond them the sensor is faulty, not the network.
    pub fn range(self) -> (f64, f64) {
        match self {
            Measure::Pressure => (-5.0, 250.0),
            Measure::Flow => (-5_000.0, 50_000.0),
            Measure::Level => (-1.0, 100.0),
            Measure::FreeChlorine => (0.0, 10.0),
            Measure::Turbidity => (0.0, 1_000.0),
            Measure::Ph => (0.0, 14.0),
            Measure::Conductivity => (0.0, 20_000.0),
            Measure::Temperature => (-10.0, 60.0),
        }
    }
}

impl Measure {
    /// What an instrument can output at all, well beyond [`Measure::range`]: a value outside the
    /// plausible range is a faulty sensor's (kept, and flagged), one outside these limits is not
    /// a measurement (refused, so that no sum or store ever sees it).
    pub fn limits(self) -> (f64, f64) {
        match self {
            Measure::Pressure => (-100.0, 2_500.0),
            Measure::Flow => (-500_000.0, 500_000.0),
            Measure::Level => (-10.0, 1_000.0),
            Measure::FreeChlorine => (-1.0, 100.0),
            Measure::Turbidity => (-1.0, 10_000.0),
            Measure::Ph => (-1.0, 15.0),
            Measure::Conductivity => (-1.0, 200_000.0),
            Measure::Temperature => (-50.0, 100.0),
        }
    }
}

/// Checks a reading's measure, unit and value; returns the measure.
pub fn check(measure: &str, unit: &str, value: f64) -> Result<Measure, String> {
    // Echoed in errors: never more than a name's length.
    let unit_shown: String = unit.chars().take(16).collect();
    let m = Measure::from_name(measure).ok_or_else(|| {
        let measure: String = measure.chars().take(32).collect();
        let known: Vec<&str> = Measure::ALL.iter().map(|m| m.name()).collect();
        format!("unknown measure {measure:?} (one of {})", known.join(", "))
    })?;
    if unit != m.unit() {
        return Err(format!("{measure} is read in {:?}, not {unit_shown:?}", m.unit()));
    }
    if !value.is_finite() {
        return Err(format!("{measure}: {value} is not a number"));
    }
    let (low, high) = m.limits();
    if !(low..=high).contains(&value) {
        return Err(format!("{measure}: {value} {} is outside {low}..{high}, what an instrument can read", m.unit()));
    }
    Ok(m)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flag {
    OutOfRange,
    Frozen,
    Silent,
}

impl Flag {
    pub const ALL: [Flag; 3] = [Flag::OutOfRange, Flag::Frozen, Flag::Silent];

    pub fn from_name(name: &str) -> Option<Flag> {
        Flag::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Flag::OutOfRange => "out_of_range",
            Flag::Frozen => "frozen",
            Flag::Silent => "silent",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FlagChange {
    Raised { sensor: String, flag: Flag },
    Cleared { sensor: String, flag: Flag },
}

#[derive(Debug, Clone)]
pub struct QualityConfig {
    /// The same value for longer than this, seconds: frozen (a live sensor always wavers).
    pub frozen_after_s: u64,
    /// No reading received for longer than this, seconds: silent.
    pub silent_after_s: u64,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig { frozen_after_s: 6 * 3600, silent_after_s: 30 * 60 }
    }
}

#[derive(Debug, Clone)]
struct SensorState {
    value: f64,
    same_since_s: u64,
    last_seen_s: u64,
    /// When the latest reading was received (wall clock): silence is a matter of communication,
    /// judged on reception, so that a replay of the past is not silent.
    last_received_s: u64,
    flags: Vec<Flag>,
}

/// Each sensor's latest value and flags.
#[derive(Debug, Default)]
pub struct QualityTracker {
    config: QualityConfig,
    sensors: HashMap<String, SensorState>,
}

impl QualityTracker {
    pub fn new(config: QualityConfig) -> QualityTracker {
        QualityTracker { config, sensors: HashMap::new() }
    }

    /// A checked reading of `measure` observed at `at_s` and received at `received_s` (POSIX
    /// seconds); returns whether the rules may use it, and the flags raised or cleared.
    pub fn observe(
        &mut self,
        sensor: &str,
        measure: Measure,
        value: f64,
        at_s: u64,
        received_s: u64,
    ) -> (bool, Vec<FlagChange>) {
        let (low, high) = measure.range();
        let state = self.sensors.entry(sensor.to_owned()).or_insert(SensorState {
            value,
            same_since_s: at_s,
            last_seen_s: at_s,
            last_received_s: received_s,
            flags: Vec::new(),
        });
        state.last_received_s = state.last_received_s.max(received_s);
        if at_s < state.last_seen_s {
            // Late: it tells nothing about the sensor now.
            return (false, Vec::new());
        }
        if value != state.value {
            state.value = value;
            state.same_since_s = at_s;
        }
        state.last_seen_s = at_s;
        let wanted = [
            (Flag::OutOfRange, !(low..=high).contains(&value)),
            // A stopped pump or a closed valve reads exactly zero for hours: that is not a fault.
            (
                Flag::Frozen,
                !(measure == Measure::Flow && value == 0.0)
                    && at_s.saturating_sub(state.same_since_s) > self.config.frozen_after_s,
            ),
            (Flag::Silent, false),
        ];
        let mut changes = Vec::new();
        for (flag, on) in wanted {
            let has = state.flags.contains(&flag);
            if on && !has {
                state.flags.push(flag);
                changes.push(FlagChange::Raised { sensor: sensor.to_owned(), flag });
            } else if !on && has {
                state.flags.retain(|f| *f != flag);
                changes.push(FlagChange::Cleared { sensor: sensor.to_owned(), flag });
            }
        }
        state.flags.sort();
        (state.flags.is_empty(), changes)
    }

    /// Sensors from which nothing was received for too long at `now_s` (raised once).
    pub fn silent(&mut self, now_s: u64) -> Vec<FlagChange> {
        let mut changes = Vec::new();
        for (sensor, state) in &mut self.sensors {
            if now_s.saturating_sub(state.last_received_s) > self.config.silent_after_s
                && !state.flags.contains(&Flag::Silent)
            {
                state.flags.push(Flag::Silent);
                changes.push(FlagChange::Raised { sensor: sensor.clone(), flag: Flag::Silent });
            }
        }
        changes.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        changes
    }

    /// A sensor's flags as a restart found them (its alarms): kept until its readings clear them.
    pub fn restore(&mut self, sensor: &str, flags: Vec<Flag>, now_s: u64) {
        let state = self.sensors.entry(sensor.to_owned()).or_insert(SensorState {
            // Not a value: the next reading starts a new run.
            value: f64::NAN,
            same_since_s: 0,
            last_seen_s: 0,
            last_received_s: now_s,
            flags: Vec::new(),
        });
        for flag in flags {
            if !state.flags.contains(&flag) {
                state.flags.push(flag);
            }
        }
        state.flags.sort();
    }

    pub fn flags(&self, sensor: &str) -> &[Flag] {
        self.sensors.get(sensor).map(|s| s.flags.as_slice()).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_checked() {
        assert_eq!(check("pressure", "m", 42.0), Ok(Measure::Pressure));
        assert_eq!(check("pH", "", 7.2), Ok(Measure::Ph));
        let cases = [
            ("pression", "m", 1.0, "unknown measure"),
            ("pressure", "bar", 1.0, "not \"bar\""),
            ("flow", "m3/h", f64::NAN, "not a number"),
            ("freeChlorine", "mg/L", f64::INFINITY, "not a number"),
        ];
        for (measure, unit, value, expected) in cases {
            let err = check(measure, unit, value).unwrap_err();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }

    fn kinds(changes: &[FlagChange]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                FlagChange::Raised { flag, .. } => format!("+{}", flag.name()),
                FlagChange::Cleared { flag, .. } => format!("-{}", flag.name()),
            })
            .collect()
    }

    #[test]
    fn sensors_are_flagged_and_cleared() {
        let mut t = QualityTracker::new(QualityConfig { frozen_after_s: 3_600, silent_after_s: 600 });
        // (value, at, usable, changes)
        let cases: [(f64, u64, bool, &[&str]); 7] = [
            (40.0, 0, true, &[]),
            (40.0, 3_600, true, &[]),           // the same value for an hour: not yet frozen
            (40.0, 3_601, false, &["+frozen"]), // frozen
            (40.1, 3_900, true, &["-frozen"]),  // it moves again
            (400.0, 4_200, false, &["+out_of_range"]),
            (41.0, 4_500, true, &["-out_of_range"]),
            (41.0, 4_000, false, &[]), // late: ignored
        ];
        for (i, (value, at, usable, expected)) in cases.into_iter().enumerate() {
            let (ok, changes) = t.observe("n1", Measure::Pressure, value, at, at);
            assert_eq!(
                (ok, kinds(&changes)),
                (usable, expected.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
                "case {i}"
            );
        }
        assert!(t.silent(5_100).is_empty());
        assert_eq!(kinds(&t.silent(5_101)), ["+silent"]);
        assert!(t.silent(6_000).is_empty(), "raised once");
        let (ok, changes) = t.observe("n1", Measure::Pressure, 41.5, 6_100, 6_100);
        assert_eq!((ok, kinds(&changes)), (true, vec!["-silent".to_owned()]));
        assert!(t.flags("n1").is_empty());
        // A stopped pump's meter reads zero all night: not frozen.
        for at in [0, 20_000] {
            assert_eq!(t.observe("pump", Measure::Flow, 0.0, at, at), (true, vec![]));
        }
        // A replay: observed long ago, received now; silence is judged on reception.
        let (ok, _) = t.observe("replayed", Measure::Pressure, 40.0, 100, 10_000);
        assert!(ok);
        assert!(
            !t.silent(10_500).iter().any(|c| matches!(c, FlagChange::Raised { sensor, .. } if sensor == "replayed"))
        );
    }
}
