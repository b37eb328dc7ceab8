//! Lighting KPIs, pure: energy per commune per hour (integrating each lamp's reported power over
//! time) and availability (share of lamps not dark).

use proto::ids::{AssetId, CommuneId};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// After this long without a report, a lamp's last power is no longer assumed to continue.
pub const MAX_EXTRAPOLATION: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq)]
struct Meter {
    power_w: f64,
    since: SystemTime,
}

/// Integrates reported power into watt-hours per commune and hour (UTC hours).
#[derive(Debug, Default)]
pub struct EnergyMeter {
    lamps: HashMap<AssetId, (CommuneId, Meter)>,
    /// (commune, hour start in Unix seconds) -> Wh.
    hours: BTreeMap<(CommuneId, u64), f64>,
    /// Hours changed since the store last took them ([`EnergyMeter::take_changed`]).
    changed: std::collections::BTreeSet<(CommuneId, u64)>,
}

pub fn hour_start(at: SystemTime) -> u64 {
    let secs = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    secs - secs % 3600
}

impl EnergyMeter {
    /// A lamp draws `power_w` from `at` on. Energy drawn since its previous report is added to the
    /// hours it spans. A report older than the previous one is ignored.
    pub fn observe(&mut self, lamp: &AssetId, commune: &CommuneId, power_w: f64, at: SystemTime) {
        let previous = self.lamps.get(lamp).map(|(_, m)| *m);
        if let Some(previous) = previous {
            if at < previous.since {
                return;
            }
            self.add(commune, previous, at);
        }
        self.lamps.insert(lamp.clone(), (commune.clone(), Meter { power_w, since: at }));
    }

    /// Restores what a lamp drew last (at start, from its latest report).
    pub fn restore_lamp(&mut self, lamp: AssetId, commune: CommuneId, power_w: f64, since: SystemTime) {
        self.lamps.insert(lamp, (commune, Meter { power_w, since }));
    }

    pub fn restore_hour(&mut self, commune: CommuneId, hour: u64, wh: f64) {
        self.hours.insert((commune, hour), wh);
    }

    fn add(&mut self, commune: &CommuneId, meter: Meter, until: SystemTime) {
        let until = until.min(meter.since + MAX_EXTRAPOLATION);
        let mut from = meter.since;
        while from < until {
            let hour = hour_start(from);
            let hour_end = UNIX_EPOCH + Duration::from_secs(hour + 3600);
            let to = until.min(hour_end);
            let hours = to.duration_since(from).map(|d| d.as_secs_f64() / 3600.0).unwrap_or(0.0);
            *self.hours.entry((commune.clone(), hour)).or_default() += meter.power_w * hours;
            self.changed.insert((commune.clone(), hour));
            from = to;
        }
    }

    /// Energy of a commune in the hour starting at `hour`, counting the lamps' current draw up
    /// to `now` (not yet closed by a report).
    pub fn energy_wh(&self, commune: &CommuneId, hour: u64, now: SystemTime) -> f64 {
        let closed = self.hours.get(&(commune.clone(), hour)).copied().unwrap_or(0.0);
        let mut open = EnergyMeter::default();
        for (c, meter) in self.lamps.values().filter(|(c, _)| c == commune) {
            open.add(c, *meter, now);
        }
        closed + open.hours.get(&(commune.clone(), hour)).copied().unwrap_or(0.0)
    }

    /// Current draw of a commune's lamps, watts.
    pub fn power_w(&self, commune: &CommuneId) -> f64 {
        self.lamps.values().filter(|(c, _)| c == commune).map(|(_, m)| m.power_w).sum()
    }

    /// The closed hours changed since the last call, for the store (written again only when
    /// they change: with a standby, every write is published); hours older than `keep_from` are
    /// forgotten.
    pub fn take_changed(&mut self, keep_from: u64) -> Vec<((CommuneId, u64), f64)> {
        self.hours.retain(|(_, hour), _| *hour >= keep_from);
        let changed = std::mem::take(&mut self.changed);
        changed.into_iter().filter_map(|key| self.hours.get(&key).map(|wh| (key, *wh))).collect()
    }

    /// Hours the store did not take after all (its write failed): taken again next time.
    pub fn untake(&mut self, hours: impl IntoIterator<Item = (CommuneId, u64)>) {
        self.changed.extend(hours);
    }
}

/// Share of lamps that are not dark, 0..1 (1 for a commune without lamps).
pub fn availability(lamps_total: usize, lamps_dark: usize) -> f64 {
    if lamps_total == 0 { 1.0 } else { (lamps_total.saturating_sub(lamps_dark)) as f64 / lamps_total as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn energy_is_power_over_time_split_by_hour() {
        let c = CommuneId::parse("34172").unwrap();
        let (a, b) = (AssetId::parse("A").unwrap(), AssetId::parse("B").unwrap());
        let mut m = EnergyMeter::default();
        let h = 1_800_000 * 3600; // an hour boundary
        m.observe(&a, &c, 100.0, t(h - 1800)); // 100 W from half an hour before the hour
        m.observe(&a, &c, 50.0, t(h + 1800)); // ... until half an hour after it
        assert!((m.energy_wh(&c, h - 3600, t(h + 1800)) - 50.0).abs() < 1e-9);
        // In hour h: 50 Wh closed, plus 50 W for the open half hour until the end of the hour.
        assert!((m.energy_wh(&c, h, t(h + 1800)) - 50.0).abs() < 1e-9);
        assert!((m.energy_wh(&c, h, t(h + 3600)) - 75.0).abs() < 1e-9);
        // Two lamps add up; a late report is ignored.
        m.observe(&b, &c, 20.0, t(h + 1800));
        m.observe(&a, &c, 999.0, t(h));
        assert!((m.power_w(&c) - 70.0).abs() < 1e-9);
        assert!((m.energy_wh(&c, h, t(h + 3600)) - 85.0).abs() < 1e-9);
        // A silent lamp is not extrapolated for ever.
        let mut m = EnergyMeter::default();
        m.observe(&a, &c, 100.0, t(h));
        m.observe(&a, &c, 0.0, t(h + 10 * 3600));
        assert!((m.energy_wh(&c, h, t(h + 10 * 3600)) - 100.0).abs() < 1e-9);
        assert_eq!(m.energy_wh(&c, h + 3600, t(h + 10 * 3600)), 0.0);
    }

    #[test]
    fn availability_table() {
        assert_eq!(availability(0, 0), 1.0);
        assert_eq!(availability(10, 0), 1.0);
        assert_eq!(availability(10, 3), 0.7);
        assert_eq!(availability(10, 12), 0.0);
    }
}
