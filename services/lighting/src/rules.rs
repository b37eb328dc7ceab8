//! Lighting alarm rules, pure: from what the field reports to the alarms an operator needs.
//!
//! - A lamp is **dark** when its status is a fault (`defectiveLamp`, `brokenLantern`,
//!   `columnIssue`) or it has an active TALQ lamp failure, relay failure or supply loss.
//! - A dark lamp raises `lamp_failure` (minor), unless it belongs to an **outage cluster**: at
//!   least `cluster_min_lamps` dark lamps of one commune, each within `cluster_radius_m` of another.
//!   A cluster raises one `outage_cluster` alarm (major) and folds its lamps' own alarms into it:
//!   "the whole street is dark" is one alarm, not N. The cluster keeps its key while it grows or
//!   shrinks; it clears when it falls below the threshold.
//! - `dimming_failure` and `low_power_factor` (warnings) follow the TALQ faults.
//! - `lamp_on_in_daytime` (warning): a lamp reported lit while the sun is clearly up at its place
//!   (computed for its coordinates), or reported so by the controller; cleared when it is reported
//!   off, or at dusk.
//!
//! Clusters are per commune, so that an alarm and the lamps it names belong to one commune.

use proto::ids::{AlarmKey, AssetId, CommuneId};
use proto::lighting::{LampStatus, StatusReport, TalqFault};
use proto::v1::{AlarmCleared, AlarmRaised, Position, Severity};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use crate::sun;

pub const DOMAIN: &str = "lighting";
pub const LAMP_FAILURE: &str = "lamp_failure";
pub const OUTAGE_CLUSTER: &str = "outage_cluster";
pub const DIMMING_FAILURE: &str = "dimming_failure";
pub const LOW_POWER_FACTOR: &str = "low_power_factor";
pub const LAMP_ON_IN_DAYTIME: &str = "lamp_on_in_daytime";

/// The per-lamp alarm types, in evaluation order.
const LAMP_ALARMS: [&str; 4] = [LAMP_FAILURE, DIMMING_FAILURE, LOW_POWER_FACTOR, LAMP_ON_IN_DAYTIME];

#[derive(Debug, Clone)]
pub struct RulesConfig {
    pub cluster_min_lamps: usize,
    pub cluster_radius_m: f64,
    /// Around sunrise and sunset, a lit lamp is not "on in daytime".
    pub daytime_margin: Duration,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig { cluster_min_lamps: 5, cluster_radius_m: 50.0, daytime_margin: Duration::from_secs(30 * 60) }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LampPlace {
    pub commune: CommuneId,
    pub lat: f64,
    pub lon: f64,
    /// Street name from the inventory ("" when unknown).
    pub street: String,
}

/// What the rules remember of one lamp (persisted by the store).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LampCondition {
    /// `LampStatus` of the latest report (0 before any).
    pub status: i32,
    /// Active TALQ faults (`TalqFault` values).
    pub faults: BTreeSet<i32>,
    pub on_in_daytime: bool,
}

impl LampCondition {
    pub fn is_dark(&self) -> bool {
        let status_fault = matches!(
            LampStatus::try_from(self.status),
            Ok(LampStatus::DefectiveLamp | LampStatus::BrokenLantern | LampStatus::ColumnIssue)
        );
        let dark_faults = [TalqFault::LampFailure, TalqFault::RelayFailure, TalqFault::SupplyLoss];
        status_fault || dark_faults.iter().any(|f| self.faults.contains(&(*f as i32)))
    }

    /// Why the lamp is dark, for the operator.
    fn dark_cause(&self) -> &'static str {
        if self.faults.contains(&(TalqFault::SupplyLoss as i32)) {
            "supply_loss"
        } else if self.faults.contains(&(TalqFault::RelayFailure as i32)) {
            "relay_failure"
        } else {
            match LampStatus::try_from(self.status) {
                Ok(LampStatus::BrokenLantern) => "broken_lantern",
                Ok(LampStatus::ColumnIssue) => "column_issue",
                _ => "lamp_failure",
            }
        }
    }
}

/// Alarms as every service keeps them; a cluster's events are about its first lamp.
pub use runtime::alarms::{ActiveAlarm, AlarmChange};

#[derive(Debug, Default)]
pub struct Rules {
    config: RulesConfig,
    places: HashMap<AssetId, LampPlace>,
    conditions: HashMap<AssetId, LampCondition>,
    dark_by_commune: HashMap<CommuneId, BTreeSet<AssetId>>,
    alarms: BTreeMap<String, ActiveAlarm>,
    /// Lamp -> key of the outage cluster it belongs to (kept with `alarms`).
    cluster_of: HashMap<String, String>,
    /// Observed but not yet evaluated (see [`Rules::settle`]).
    unsettled_communes: BTreeSet<CommuneId>,
    unsettled_lamps: BTreeSet<AssetId>,
}

impl Rules {
    pub fn new(config: RulesConfig) -> Rules {
        Rules { config, ..Default::default() }
    }

    pub fn config(&self) -> &RulesConfig {
        &self.config
    }

    /// Adds (or moves) a lamp of the inventory.
    pub fn add_lamp(&mut self, id: AssetId, place: LampPlace) {
        if let Some(old) = self.places.get(&id)
            && old.commune != place.commune
            && let Some(set) = self.dark_by_commune.get_mut(&old.commune)
        {
            set.remove(&id);
        }
        if self.condition(&id).is_dark() {
            self.dark_by_commune.entry(place.commune.clone()).or_default().insert(id.clone());
        }
        self.places.insert(id, place);
    }

    pub fn place(&self, id: &AssetId) -> Option<&LampPlace> {
        self.places.get(id)
    }

    pub fn lamps(&self) -> impl Iterator<Item = (&AssetId, &LampPlace)> {
        self.places.iter()
    }

    pub fn condition(&self, id: &AssetId) -> LampCondition {
        self.conditions.get(id).cloned().unwrap_or_default()
    }

    /// Restores state saved by the store (at start, after `add_lamp` for every lamp).
    pub fn restore(&mut self, conditions: Vec<(AssetId, LampCondition)>, alarms: Vec<ActiveAlarm>) {
        for (id, condition) in conditions {
            if condition.is_dark()
                && let Some(place) = self.places.get(&id)
            {
                self.dark_by_commune.entry(place.commune.clone()).or_default().insert(id.clone());
            }
            self.conditions.insert(id, condition);
        }
        for alarm in alarms {
            self.index_cluster(&alarm, true);
            self.alarms.insert(alarm.raised.key.clone(), alarm);
        }
    }

    /// Lamps and dark lamps per commune.
    pub fn commune_counts(&self) -> BTreeMap<CommuneId, (usize, usize)> {
        let mut counts: BTreeMap<CommuneId, (usize, usize)> = BTreeMap::new();
        for place in self.places.values() {
            counts.entry(place.commune.clone()).or_default().0 += 1;
        }
        for (commune, dark) in &self.dark_by_commune {
            if let Some(c) = counts.get_mut(commune) {
                c.1 = dark.len();
            }
        }
        counts
    }

    pub fn active_alarms(&self) -> impl Iterator<Item = &ActiveAlarm> {
        self.alarms.values()
    }

    /// A status report of a known lamp. Its alarms follow at the next [`Rules::settle`].
    pub fn observe_status(&mut self, id: &AssetId, report: &StatusReport, observed_at: SystemTime) {
        let Some(place) = self.places.get(id).cloned() else { return };
        let lit = crate::domain::is_lit(report);
        let mut condition = self.condition(id);
        condition.status = report.status;
        let working = !condition.is_dark();
        condition.on_in_daytime =
            working && lit && sun::is_clearly_day(place.lat, place.lon, observed_at, self.config.daytime_margin);
        self.update(id, &place, condition);
    }

    /// A TALQ fault started or ended on a known lamp. Its alarms follow at the next settle.
    pub fn observe_fault(&mut self, id: &AssetId, fault: TalqFault, active: bool) {
        let Some(place) = self.places.get(id).cloned() else { return };
        let mut condition = self.condition(id);
        if fault == TalqFault::LampOnInDaytime {
            condition.on_in_daytime = active;
        } else if active {
            condition.faults.insert(fault as i32);
        } else {
            condition.faults.remove(&(fault as i32));
        }
        self.update(id, &place, condition);
    }

    /// Time passes: lamps "on in daytime" are no longer a fault once the sun is down.
    pub fn tick(&mut self, now: SystemTime) -> Vec<AlarmChange> {
        let due: Vec<(AssetId, LampPlace)> = self
            .conditions
            .iter()
            .filter(|(_, c)| c.on_in_daytime)
            .filter_map(|(id, _)| self.places.get(id).map(|p| (id.clone(), p.clone())))
            .filter(|(_, p)| !sun::is_clearly_day(p.lat, p.lon, now, self.config.daytime_margin))
            .collect();
        for (id, place) in due {
            let mut condition = self.condition(&id);
            condition.on_in_daytime = false;
            self.update(&id, &place, condition);
        }
        self.settle()
    }

    fn update(&mut self, id: &AssetId, place: &LampPlace, condition: LampCondition) {
        let was_dark = self.condition(id).is_dark();
        let is_dark = condition.is_dark();
        self.conditions.insert(id.clone(), condition);
        self.unsettled_lamps.insert(id.clone());
        if was_dark != is_dark {
            let set = self.dark_by_commune.entry(place.commune.clone()).or_default();
            if is_dark {
                set.insert(id.clone());
            } else {
                set.remove(id);
            }
            self.unsettled_communes.insert(place.commune.clone());
        }
    }

    /// Evaluates what was observed since the last settle: the clusters of the communes whose dark
    /// lamps changed, then the alarms of every lamp concerned. Observing a whole batch (a feeder
    /// failure reported lamp by lamp) before settling gives one cluster alarm, without a flash of
    /// lamp alarms raised and cleared on the way.
    pub fn settle(&mut self) -> Vec<AlarmChange> {
        let mut touched = std::mem::take(&mut self.unsettled_lamps);
        let mut changes = Vec::new();
        for commune in std::mem::take(&mut self.unsettled_communes) {
            changes.extend(self.evaluate_clusters(&commune, &mut touched));
        }
        for lamp in touched {
            changes.extend(self.evaluate_lamp(&lamp));
        }
        changes
    }

    /// Re-evaluates everything (at start: the state written last may be ahead of the alarms
    /// written with it, after a crash between the two).
    pub fn recheck_all(&mut self) -> Vec<AlarmChange> {
        self.unsettled_communes.extend(self.places.values().map(|p| p.commune.clone()));
        self.unsettled_lamps.extend(self.conditions.keys().cloned());
        self.unsettled_lamps
            .extend(self.alarms.values().filter(|a| a.raised.alarm_type != OUTAGE_CLUSTER).map(|a| a.asset.clone()));
        self.settle()
    }

    fn in_cluster(&self, id: &AssetId) -> bool {
        self.cluster_of.contains_key(id.as_str())
    }

    /// Adds or removes a cluster alarm's members in the membership index.
    fn index_cluster(&mut self, alarm: &ActiveAlarm, member: bool) {
        if alarm.raised.alarm_type != OUTAGE_CLUSTER {
            return;
        }
        for lamp in &alarm.raised.asset_ids {
            if member {
                self.cluster_of.insert(lamp.clone(), alarm.raised.key.clone());
            } else if self.cluster_of.get(lamp) == Some(&alarm.raised.key) {
                self.cluster_of.remove(lamp);
            }
        }
    }

    /// Brings the per-lamp alarms of one lamp in line with its condition.
    fn evaluate_lamp(&mut self, id: &AssetId) -> Vec<AlarmChange> {
        let Some(place) = self.places.get(id).cloned() else { return Vec::new() };
        let condition = self.condition(id);
        let mut changes = Vec::new();
        for alarm_type in LAMP_ALARMS {
            let wanted: Option<(Severity, BTreeMap<String, String>)> = match alarm_type {
                LAMP_FAILURE if condition.is_dark() && !self.in_cluster(id) => {
                    Some((Severity::Minor, BTreeMap::from([("cause".to_owned(), condition.dark_cause().to_owned())])))
                }
                DIMMING_FAILURE if condition.faults.contains(&(TalqFault::DimmingFailure as i32)) => {
                    Some((Severity::Warning, BTreeMap::new()))
                }
                LOW_POWER_FACTOR if condition.faults.contains(&(TalqFault::LowPowerFactor as i32)) => {
                    Some((Severity::Warning, BTreeMap::new()))
                }
                LAMP_ON_IN_DAYTIME if condition.on_in_daytime => Some((Severity::Warning, BTreeMap::new())),
                _ => None,
            };
            let key = AlarmKey::new(DOMAIN, alarm_type, id).to_string();
            match wanted {
                Some((severity, details)) => {
                    let alarm = ActiveAlarm {
                        commune: place.commune.clone(),
                        asset: id.clone(),
                        position: Some(Position { lat: place.lat, lon: place.lon }),
                        raised: AlarmRaised {
                            key: key.clone(),
                            alarm_type: alarm_type.to_owned(),
                            severity: severity as i32,
                            asset_ids: vec![id.to_string()],
                            details: details.into_iter().collect(),
                        },
                    };
                    changes.extend(self.raise(alarm));
                }
                None => {
                    let reason = if alarm_type == LAMP_FAILURE && condition.is_dark() {
                        "part of an outage cluster"
                    } else {
                        "condition over"
                    };
                    changes.extend(self.clear(&key, reason));
                }
            }
        }
        changes
    }

    /// Recomputes the outage clusters of one commune; lamps whose membership changed are added
    /// to `touched` so that their own alarms follow.
    fn evaluate_clusters(&mut self, commune: &CommuneId, touched: &mut BTreeSet<AssetId>) -> Vec<AlarmChange> {
        let dark: Vec<(AssetId, f64, f64)> = self
            .dark_by_commune
            .get(commune)
            .into_iter()
            .flatten()
            .filter_map(|id| self.places.get(id).map(|p| (id.clone(), p.lat, p.lon)))
            .collect();
        let mut components = clusters(&dark, self.config.cluster_radius_m, self.config.cluster_min_lamps);
        components.sort_by_key(|c| std::cmp::Reverse(c.len()));

        let existing: Vec<(String, BTreeSet<String>)> = self
            .alarms
            .values()
            .filter(|a| a.raised.alarm_type == OUTAGE_CLUSTER && &a.commune == commune)
            .map(|a| (a.raised.key.clone(), a.raised.asset_ids.iter().cloned().collect()))
            .collect();
        let mut unmatched: BTreeMap<String, BTreeSet<String>> = existing.into_iter().collect();
        let mut changes = Vec::new();
        let mut wanted = Vec::new();
        for members in components {
            let names: BTreeSet<String> = members.iter().map(|m| m.to_string()).collect();
            let best = unmatched
                .iter()
                .map(|(key, old)| (key.clone(), old.intersection(&names).count()))
                .filter(|(_, overlap)| *overlap > 0)
                .max_by_key(|(_, overlap)| *overlap)
                .map(|(key, _)| key);
            let key = match best {
                Some(key) => {
                    if let Some(old) = unmatched.remove(&key) {
                        touched.extend(old.symmetric_difference(&names).filter_map(|m| AssetId::parse(m).ok()));
                    }
                    key
                }
                None => {
                    touched.extend(members.iter().cloned());
                    AlarmKey::new(DOMAIN, OUTAGE_CLUSTER, &members[0]).to_string()
                }
            };
            wanted.push((key, members));
        }
        for (key, old) in unmatched {
            touched.extend(old.iter().filter_map(|m| AssetId::parse(m).ok()));
            changes.extend(self.clear(&key, "fewer dark lamps than the cluster threshold"));
        }
        for (key, members) in wanted {
            let (lat, lon) =
                members.iter().filter_map(|m| self.places.get(m)).fold((0.0, 0.0), |(a, b), p| (a + p.lat, b + p.lon));
            let n = members.len() as f64;
            let asset = members[0].clone();
            let alarm = ActiveAlarm {
                commune: commune.clone(),
                asset: AssetId::parse(key.rsplit('/').next().unwrap_or_default()).unwrap_or(asset),
                position: Some(Position { lat: lat / n, lon: lon / n }),
                raised: AlarmRaised {
                    key,
                    alarm_type: OUTAGE_CLUSTER.to_owned(),
                    severity: Severity::Major as i32,
                    asset_ids: members.iter().map(|m| m.to_string()).collect(),
                    details: [("lamps".to_owned(), members.len().to_string())].into_iter().collect(),
                },
            };
            changes.extend(self.raise(alarm));
        }
        changes
    }

    /// Raises an alarm unless the same one is already active (no event for nothing new).
    fn raise(&mut self, alarm: ActiveAlarm) -> Option<AlarmChange> {
        if self.alarms.get(&alarm.raised.key) == Some(&alarm) {
            return None;
        }
        if let Some(previous) = self.alarms.insert(alarm.raised.key.clone(), alarm.clone()) {
            self.index_cluster(&previous, false);
        }
        self.index_cluster(&alarm, true);
        Some(AlarmChange::Raised(alarm))
    }

    fn clear(&mut self, key: &str, reason: &str) -> Option<AlarmChange> {
        let alarm = self.alarms.remove(key)?;
        self.index_cluster(&alarm, false);
        let cleared = AlarmCleared {
            key: key.to_owned(),
            alarm_type: alarm.raised.alarm_type.clone(),
            reason: reason.to_owned(),
        };
        Some(AlarmChange::Cleared { alarm, cleared })
    }
}

/// Groups points that are within `radius_m` of one another (single linkage) and keeps the groups
/// of at least `min_size`, each sorted by id. A grid of `radius_m` cells keeps it linear in the
/// number of points.
pub fn clusters(points: &[(AssetId, f64, f64)], radius_m: f64, min_size: usize) -> Vec<Vec<AssetId>> {
    if points.is_empty() || radius_m <= 0.0 {
        return Vec::new();
    }
    // Local equirectangular projection: metres are exact enough at the scale of a street.
    let lat0 = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
    let m_per_deg_lat = 111_132.0;
    let m_per_deg_lon = 111_320.0 * lat0.to_radians().cos();
    let xy: Vec<(f64, f64)> = points.iter().map(|p| (p.2 * m_per_deg_lon, p.1 * m_per_deg_lat)).collect();
    let cell = |x: f64, y: f64| ((x / radius_m).floor() as i64, (y / radius_m).floor() as i64);
    let mut grid: HashMap<(i64, i64), Vec<usize>> = HashMap::new();
    for (i, &(x, y)) in xy.iter().enumerate() {
        grid.entry(cell(x, y)).or_default().push(i);
    }
    let mut parent: Vec<usize> = (0..points.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for (i, &(x, y)) in xy.iter().enumerate() {
        let (cx, cy) = cell(x, y);
        for dx in -1..=1 {
            for dy in -1..=1 {
                for &j in grid.get(&(cx + dx, cy + dy)).into_iter().flatten() {
                    if j > i && (xy[j].0 - x).hypot(xy[j].1 - y) <= radius_m {
                        let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                        parent[a] = b;
                    }
                }
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<AssetId>> = BTreeMap::new();
    for (i, point) in points.iter().enumerate() {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(point.0.clone());
    }
    let mut out: Vec<Vec<AssetId>> = groups
        .into_values()
        .filter(|g| g.len() >= min_size)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests;
