//! Water rules, pure: tank levels, drinking-water quality, and bursts. Each returns what should be
//! alarmed now; the caller keeps the alarms (stable keys) and clears them with the hysteresis
//! given here.

use crate::quality::Measure;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TankState {
    Normal,
    Low,
    High,
}

/// A tank's state from its level, with hysteresis: low below 10 % of its range (back to normal
/// above 15 %), high above 98 % (back below 95 %): an overflow is near. Pump controls keep a tank
/// inside its band (L-Town's T1 cycles between 2.4 and 3.9 m of 4), so normal filling is not high.
pub fn tank_state(level_m: f64, (min_m, max_m): (f64, f64), previous: TankState) -> TankState {
    let range = (max_m - min_m).max(f64::EPSILON);
    let share = (level_m - min_m) / range;
    match previous {
        TankState::Low if share < 0.15 => TankState::Low,
        TankState::High if share > 0.95 => TankState::High,
        _ if share < 0.10 => TankState::Low,
        _ if share > 0.98 => TankState::High,
        _ => TankState::Normal,
    }
}

/// A drinking-water quality breach: which bound, and the limit.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityBreach {
    pub measure: Measure,
    /// `above` or `below`.
    pub side: &'static str,
    pub limit: f64,
}

/// French drinking-water references in distribution (arrêté du 11 janvier 2007, annexe I, and the
/// Vigipirate plan's disinfectant residual): turbidity at most 2 NFU, pH 6.5 to 9, conductivity 200
/// to 1,100 µS/cm, temperature at most 25 °C, free chlorine at least 0.1 mg/L everywhere in the
/// network. Pressure, flow and level have no quality limit.
pub fn quality_limits(measure: Measure) -> (Option<f64>, Option<f64>) {
    match measure {
        Measure::Turbidity => (None, Some(2.0)),
        Measure::Ph => (Some(6.5), Some(9.0)),
        Measure::Conductivity => (Some(200.0), Some(1_100.0)),
        Measure::Temperature => (None, Some(25.0)),
        Measure::FreeChlorine => (Some(0.1), None),
        Measure::Pressure | Measure::Flow | Measure::Level => (None, None),
    }
}

/// Whether a quality value breaches its limits; `breached` says whether it did before (it clears
/// only once back inside by 5 % of the limit, so a value hovering at it does not flap).
pub fn quality_breach(measure: Measure, value: f64, breached: bool) -> Option<QualityBreach> {
    let (low, high) = quality_limits(measure);
    let margin = if breached { 0.05 } else { 0.0 };
    if let Some(limit) = high
        && value > limit * (1.0 - margin)
    {
        return Some(QualityBreach { measure, side: "above", limit });
    }
    if let Some(limit) = low
        && value < limit * (1.0 + margin)
    {
        return Some(QualityBreach { measure, side: "below", limit });
    }
    None
}

#[derive(Debug, Clone)]
pub struct BurstConfig {
    /// A pressure drop larger than this within the window, metres.
    pub pressure_drop_m: f64,
    /// With a zone inflow rise larger than this within the same window (flow unit).
    pub inflow_rise: f64,
}

impl Default for BurstConfig {
    fn default() -> Self {
        BurstConfig { pressure_drop_m: 5.0, inflow_rise: 20.0 }
    }
}

/// A burst: within one window (e.g. the last 15 minutes), a sensor's pressure fell and the zone's
/// inflow rose, both beyond their thresholds. A pressure drop alone is a pump or valve moving;
/// a flow rise alone is demand.
pub fn is_burst(
    pressure_first_m: f64,
    pressure_last_m: f64,
    inflow_first: f64,
    inflow_last: f64,
    c: &BurstConfig,
) -> bool {
    pressure_first_m - pressure_last_m > c.pressure_drop_m && inflow_last - inflow_first > c.inflow_rise
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tank_table() {
        use TankState::*;
        let range = (0.0, 4.0);
        let cases = [
            (2.0, Normal, Normal),
            (0.39, Normal, Low),
            (0.5, Low, Low), // 12.5 %: still low (hysteresis)
            (0.61, Low, Normal),
            (3.9, Normal, Normal), // 97.5 %: the top of the pump's band
            (3.93, Normal, High),
            (3.85, High, High), // 96.25 %
            (3.79, High, Normal),
        ];
        for (level, before, after) in cases {
            assert_eq!(tank_state(level, range, before), after, "{level} m after {before:?}");
        }
    }

    #[test]
    fn quality_table() {
        use Measure::*;
        let cases = [
            (Turbidity, 1.5, false, None),
            (Turbidity, 2.3, false, Some("above")),
            (Turbidity, 1.95, true, Some("above")), // within 5 % of the limit: not cleared yet
            (Turbidity, 1.85, true, None),
            (FreeChlorine, 0.05, false, Some("below")),
            (FreeChlorine, 0.3, true, None),
            (Ph, 9.4, false, Some("above")),
            (Ph, 6.0, false, Some("below")),
            (Pressure, 500.0, false, None),
        ];
        for (measure, value, before, expected) in cases {
            assert_eq!(quality_breach(measure, value, before).map(|b| b.side), expected, "{measure:?} {value}");
        }
    }

    #[test]
    fn burst_table() {
        let c = BurstConfig::default();
        let cases = [
            ((50.0, 42.0), (100.0, 135.0), true, "pressure falls and inflow rises"),
            ((50.0, 42.0), (100.0, 105.0), false, "a pressure drop alone (a pump stopping)"),
            ((50.0, 49.0), (100.0, 135.0), false, "an inflow rise alone (demand)"),
            ((50.0, 55.0), (100.0, 135.0), false, "pressure up"),
        ];
        for ((p0, p1), (q0, q1), expected, why) in cases {
            assert_eq!(is_burst(p0, p1, q0, q1, &c), expected, "{why}");
        }
    }
}
