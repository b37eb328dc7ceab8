//! The operations view, pure: the latest state of every asset, built by applying checked events in
//! stream order. No I/O here; the consumer feeds it and the store persists what it changed.

use proto::event::CheckedEvent;
use proto::live::from_proto as live;
use proto::live::{
    AlarmComment, AlarmState, AssetDetails, AssetState, AuditEntry, CommandState, EventSummary, KpiSample, KpiState,
    LatLon, MeasureReading, ReportDetails, StreetlightDetails, VehicleDetails, WaterSensorDetails,
};
use proto::ops::{AlarmAction, AlarmActionKind};
use proto::v1::event::Payload;
use proto::v1::{AlarmCleared, AlarmRaised};
use std::collections::{BTreeMap, BTreeSet, HashMap};

mod alarms;
mod assets;

/// Commands kept in the view (the pending ones always; the oldest finished ones leave first).
pub const MAX_COMMANDS: usize = 1000;
/// Previous KPI values kept per domain and commune, for sparklines.
pub const MAX_KPI_HISTORY: usize = 60;
/// Comments kept per alarm (the oldest leave first; the audit log keeps them all).
pub const MAX_COMMENTS: usize = 100;

/// `domain/asset id`: asset ids are unique within a domain.
pub fn asset_key(domain: &str, id: &str) -> String {
    format!("{domain}/{id}")
}

#[derive(Debug, Default)]
pub struct OperationsView {
    assets: HashMap<String, AssetState>,
    /// Active alarms by key.
    alarms: HashMap<String, AlarmState>,
    /// Commands by id (UUIDv7: in time order).
    commands: BTreeMap<String, CommandState>,
    /// Latest KPIs by `domain/commune`.
    kpis: HashMap<String, KpiState>,
    /// Stream sequence of the last event applied (or refused): every event up to it is in the view.
    applied_seq: u64,
    /// Audit entries of the events applied since the last [`OperationsView::take_audit`].
    audit: Vec<AuditEntry>,
    /// How long a closed citizen report stays (seconds of event time; none: for ever). The
    /// reports service keeps them all; the live view keeps what an operator acts on.
    closed_reports_kept: Option<i64>,
    /// Closed reports by the stream time they closed at (Unix seconds), oldest first, and the
    /// time of each.
    closed_reports: BTreeSet<(i64, String)>,
    closed_at: HashMap<String, i64>,
    /// The stream time of the latest event (see [`OperationsView::expire_closed_reports`]).
    stream_time: i64,
}

/// Closed reports that leave the view at one event at most.
pub const MAX_EXPIRED_AT_ONCE: usize = 256;

/// What applying one event changed: the one description of a change that the store persists
/// and the sessions receive (see `live::Delta`).
#[derive(Debug, Clone)]
pub enum Change {
    Asset(String, AssetState),
    /// An alarm raised or updated (`active`), or cleared (`!active`: it left the view).
    Alarm(String, AlarmState),
    /// A command created or updated; `evicted` finished commands left the view to make room.
    Command(String, CommandState, Vec<String>),
    Kpi(String, KpiState),
    /// An asset that left the view (a closed report whose time passed), where it stood.
    Removed(Place),
}

pub struct Applied {
    pub event: EventSummary,
    pub change: Change,
    /// Where the changed asset or alarm stood before, when that is not where it stands now (it
    /// moved to another commune or area, or its severity changed): sessions whose scope it
    /// leaves are told to forget it.
    pub before: Option<Place>,
}

/// What decides whether an asset or an alarm is in a session's scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    pub domain: String,
    pub commune: String,
    pub position: Option<LatLon>,
    /// An alarm's; none for an asset.
    pub severity: Option<String>,
}

impl Place {
    pub fn of_asset(a: &AssetState) -> Place {
        Place { domain: a.domain.clone(), commune: a.commune.clone(), position: a.position, severity: None }
    }

    fn of_alarm(a: &AlarmState) -> Place {
        Place {
            domain: a.domain.clone(),
            commune: a.commune.clone(),
            position: a.position,
            severity: Some(a.severity.clone()),
        }
    }

    pub fn allowed_by(&self, filter: &proto::live::Filter) -> bool {
        filter.allows_place(&self.domain, &self.commune, self.position.as_ref(), self.severity.as_deref())
    }
}

impl OperationsView {
    pub fn restore(
        assets: HashMap<String, AssetState>,
        alarms: HashMap<String, AlarmState>,
        commands: BTreeMap<String, CommandState>,
        kpis: HashMap<String, KpiState>,
        applied_seq: u64,
    ) -> Self {
        let mut view = OperationsView { assets, alarms, commands, kpis, applied_seq, ..Default::default() };
        let closed: Vec<(String, i64)> = view
            .assets
            .iter()
            .filter(|(_, a)| is_closed_report(a))
            .map(|(k, a)| (k.clone(), unix_seconds(&a.recorded_at)))
            .collect();
        for (key, at) in closed {
            view.closed_at.insert(key.clone(), at);
            view.closed_reports.insert((at, key));
        }
        view
    }

    /// What the store persists of the view, copied (see `checkpoint`).
    pub fn persisted(&self) -> crate::store::Loaded {
        crate::store::Loaded {
            assets: self.assets.clone(),
            alarms: self.alarms.clone(),
            commands: self.commands.clone(),
            kpis: self.kpis.clone(),
            applied_seq: self.applied_seq,
        }
    }

    /// Closed reports leave the view once `kept` has passed since they closed (by the stream's
    /// clock, so that a view rebuilt from the stream drops the same ones).
    pub fn keep_closed_reports(&mut self, kept: Option<std::time::Duration>) {
        self.closed_reports_kept = kept.map(|k| i64::try_from(k.as_secs()).unwrap_or(i64::MAX));
    }

    /// The view's approximate size in memory, bytes (its strings, mostly): what the size budget
    /// is checked against.
    pub fn approximate_bytes(&self) -> usize {
        const PER_OBJECT: usize = 256;
        let assets: usize = self.assets.values().map(|a| PER_OBJECT + asset_text_bytes(a)).sum();
        let alarms: usize = self
            .alarms
            .values()
            .map(|a| {
                let details: usize = a.details.iter().map(|(k, v)| k.len() + v.len()).sum();
                let ids: usize = a.asset_ids.iter().map(String::len).sum();
                PER_OBJECT + details + ids + a.comments.iter().map(|c| c.text.len() + 64).sum::<usize>()
            })
            .sum();
        let kpis: usize = self.kpis.values().map(|k| PER_OBJECT + k.history.len() * 64).sum();
        assets + alarms + self.commands.len() * PER_OBJECT + kpis
    }

    /// The audit entries of the events applied since the last call.
    pub fn take_audit(&mut self) -> Vec<AuditEntry> {
        std::mem::take(&mut self.audit)
    }

    pub fn alarm(&self, key: &str) -> Option<&AlarmState> {
        self.alarms.get(key)
    }

    pub fn kpis(&self) -> impl Iterator<Item = &KpiState> {
        self.kpis.values()
    }

    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    pub fn asset_count(&self) -> usize {
        self.assets.len()
    }

    pub fn assets(&self) -> impl Iterator<Item = &AssetState> {
        self.assets.values()
    }

    pub fn asset_state(&self, domain: &str, id: &str) -> Option<&AssetState> {
        self.assets.get(&asset_key(domain, id))
    }

    pub fn alarms(&self) -> impl Iterator<Item = &AlarmState> {
        self.alarms.values()
    }

    pub fn commands(&self) -> impl DoubleEndedIterator<Item = &CommandState> {
        self.commands.values()
    }

    /// Marks an event that could not be applied (undecodable, inconsistent) as passed.
    pub fn skip(&mut self, seq: u64) {
        self.applied_seq = self.applied_seq.max(seq);
    }

    /// Applies the event at stream sequence `seq`. Events at or below the applied sequence were
    /// applied already (a redelivery) and are ignored: `None`.
    pub fn apply(&mut self, event: &CheckedEvent, seq: u64) -> Option<Applied> {
        if seq <= self.applied_seq {
            return None;
        }
        self.applied_seq = seq;
        let summary = live::event_summary(event);
        if let Some(entry) = live::audit_entry(&summary, event, seq) {
            self.audit.push(entry);
        }
        // Where the asset or the alarm this event may change stands now.
        let asset_key_of_event = asset_key(&summary.domain, &summary.asset_id);
        let asset_before = self.assets.get(&asset_key_of_event).map(Place::of_asset);
        let alarm_key_of_event = match event.payload() {
            Payload::AlarmAction(action) => Some(action.alarm_key.as_str()),
            Payload::LightingAlarmRaised(raised)
            | Payload::TransportAlarmRaised(raised)
            | Payload::WaterAlarmRaised(raised) => Some(raised.key.as_str()),
            Payload::LightingAlarmCleared(cleared)
            | Payload::TransportAlarmCleared(cleared)
            | Payload::WaterAlarmCleared(cleared) => Some(cleared.key.as_str()),
            _ => None,
        };
        let alarm_before = alarm_key_of_event.and_then(|k| self.alarms.get(k)).map(Place::of_alarm);
        let change = self.change(&summary, event)?;
        let before = match &change {
            Change::Asset(key, a) if *key == asset_key_of_event => asset_before.filter(|p| *p != Place::of_asset(a)),
            Change::Alarm(key, a) if alarm_key_of_event == Some(key.as_str()) => {
                alarm_before.filter(|p| *p != Place::of_alarm(a))
            }
            _ => None,
        };
        Some(Applied { event: summary, change, before })
    }

    /// The stream's clock reached `now` (Unix seconds: when the next event was stored, by the
    /// NATS server's clock, the same however often the view is rebuilt, and no producer's to
    /// set): the closed reports whose time in the view has passed leave it, at most
    /// [`MAX_EXPIRED_AT_ONCE`] (the rest with the following events), so that sessions get a
    /// bounded burst of removals. Call it before applying the event stored at `now`.
    pub fn expire_closed_reports(&mut self, now: i64) -> Vec<AssetState> {
        self.stream_time = self.stream_time.max(now);
        let Some(kept) = self.closed_reports_kept else {
            return Vec::new();
        };
        let mut expired = Vec::new();
        while expired.len() < MAX_EXPIRED_AT_ONCE
            && let Some((at, key)) = self.closed_reports.first().cloned()
        {
            if at.saturating_add(kept) >= now {
                break;
            }
            self.closed_reports.pop_first();
            self.closed_at.remove(&key);
            if let Some(asset) = self.assets.remove(&key) {
                expired.push(asset);
            }
        }
        expired
    }

    /// What the event changes in the view (`None`: nothing).
    fn change(&mut self, summary: &EventSummary, event: &CheckedEvent) -> Option<Change> {
        let change = match event.payload() {
            Payload::AlarmAction(action) => self.alarm_action(summary, action)?,
            Payload::LightingAlarmRaised(raised)
            | Payload::TransportAlarmRaised(raised)
            | Payload::WaterAlarmRaised(raised) => self.raise(summary, event, raised),
            Payload::LightingAlarmCleared(cleared)
            | Payload::TransportAlarmCleared(cleared)
            | Payload::WaterAlarmCleared(cleared) => self.clear(summary, cleared)?,
            Payload::LightingCommand(command) => {
                let state = live::lighting_command(&summary.domain, command);
                self.command(state)
            }
            Payload::ValveCommand(command) => {
                let state = live::valve_command(&summary.domain, command);
                self.command(state)
            }
            Payload::WaterKpi(kpi) => {
                let mut values = vec![
                    ("sensors_total", f64::from(kpi.sensors_total)),
                    ("sensors_flagged", f64::from(kpi.sensors_flagged)),
                    ("active_leaks", f64::from(kpi.active_leaks)),
                    ("active_bursts", f64::from(kpi.active_bursts)),
                    ("quality_breaches", f64::from(kpi.quality_breaches)),
                ];
                // Night flow per metering zone, as `night_flow:<zone>` and `night_baseline:<zone>`.
                let zone_values: Vec<(String, f64)> = kpi
                    .zones
                    .iter()
                    .flat_map(|z| {
                        [
                            (format!("night_flow:{}", z.zone), z.night_flow),
                            (format!("night_baseline:{}", z.zone), z.baseline),
                        ]
                    })
                    .collect();
                values.extend(zone_values.iter().map(|(k, v)| (k.as_str(), *v)));
                self.kpi(summary, &values)
            }
            Payload::WaterReading(reading) => self.water_reading(summary, event, reading)?,
            Payload::LightingKpi(kpi) => self.kpi(
                summary,
                &[
                    ("lamps_total", f64::from(kpi.lamps_total)),
                    ("lamps_dark", f64::from(kpi.lamps_dark)),
                    ("availability", kpi.availability),
                    ("power_w", kpi.power_w),
                    ("energy_wh_current_hour", kpi.energy_wh_current_hour),
                    ("energy_wh_previous_hour", kpi.energy_wh_previous_hour),
                ],
            ),
            Payload::TransportKpi(kpi) => self.kpi(
                summary,
                &[
                    ("vehicles", f64::from(kpi.vehicles)),
                    ("with_adherence", f64::from(kpi.with_adherence)),
                    ("on_time", f64::from(kpi.on_time)),
                    ("punctuality", kpi.punctuality),
                    ("mean_delay_s", kpi.mean_delay_s),
                ],
            ),
            Payload::VehicleMoved(moved) => self.vehicle(summary, event, moved),
            Payload::StreetlightRegistered(_) | Payload::StreetlightStatus(_) | Payload::StreetlightFault(_) => {
                self.asset(summary, event)
            }
            // Passenger information: published in the transport service's GTFS-Realtime feed, not
            // (yet) part of the operations view.
            Payload::ServiceAlertPublished(_) | Payload::ServiceAlertWithdrawn(_) => return None,
            Payload::ReportCreated(proto::reports::ReportCreated { request: Some(request) })
            | Payload::ReportUpdated(proto::reports::ReportUpdated { request: Some(request), .. }) => {
                self.report(summary, event, request)
            }
            Payload::ReportCreated(_) | Payload::ReportUpdated(_) => return None,
            // Only in the audit log.
            Payload::LogbookEntry(_) => return None,
            Payload::ReportsKpi(kpi) => self.kpi(
                summary,
                &[
                    ("open", f64::from(kpi.open)),
                    ("received_last_24h", f64::from(kpi.received_last_24h)),
                    ("closed_last_7d", f64::from(kpi.closed_last_7d)),
                    ("median_time_to_close_s", kpi.median_time_to_close_s),
                ],
            ),
        };
        Some(change)
    }

    /// The latest KPIs of one domain in one commune.
    fn kpi(&mut self, summary: &EventSummary, values: &[(&str, f64)]) -> Change {
        let key = format!("{}/{}", summary.domain, summary.commune);
        // The previous values move to the history (a late KPI is not history: it is dropped).
        let mut history = Vec::new();
        if let Some(previous) = self.kpis.remove(&key) {
            if previous.at > summary.observed_at {
                self.kpis.insert(key.clone(), previous.clone());
                return Change::Kpi(key, previous);
            }
            history = previous.history;
            history.push(KpiSample { at: previous.at, values: previous.values });
            if history.len() > MAX_KPI_HISTORY {
                history.drain(..history.len() - MAX_KPI_HISTORY);
            }
        }
        let state = KpiState {
            domain: summary.domain.clone(),
            commune: summary.commune.clone(),
            at: summary.observed_at.clone(),
            values: finite_values(&key, values),
            history,
        };
        self.kpis.insert(key.clone(), state.clone());
        Change::Kpi(key, state)
    }

    fn command(&mut self, state: CommandState) -> Change {
        let id = state.id.clone();
        self.commands.insert(id.clone(), state.clone());
        let mut evicted = Vec::new();
        while self.commands.len() > MAX_COMMANDS {
            let oldest_finished = self.commands.iter().find(|(_, c)| c.status != "pending").map(|(k, _)| k.clone());
            match oldest_finished {
                Some(key) => {
                    self.commands.remove(&key);
                    evicted.push(key);
                }
                None => break,
            }
        }
        Change::Command(id, state, evicted)
    }
}

/// A KPI's values without those that are not finite numbers: JSON has no infinity nor NaN (they
/// are written as `null` and cannot be read back), and a service that sums forged inputs can
/// send one. Dropped values are logged and counted.
fn finite_values(key: &str, values: &[(&str, f64)]) -> BTreeMap<String, f64> {
    let mut kept = BTreeMap::new();
    for (name, value) in values {
        if value.is_finite() {
            kept.insert((*name).to_owned(), *value);
        } else {
            tracing::warn!(kpi = key, value = name, "a KPI value is not a finite number; dropped");
            crate::metrics::get().kpi_values_dropped.inc();
        }
    }
    kept
}

fn is_closed_report(asset: &AssetState) -> bool {
    matches!(&asset.details, AssetDetails::Report(r) if r.status == "closed")
}

/// An RFC 3339 time as Unix seconds (0 when it is not one: such a report leaves first).
fn unix_seconds(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).map(|t| t.timestamp()).unwrap_or(0)
}

/// The bytes of an asset's free text (a citizen's report is most of it).
fn asset_text_bytes(asset: &AssetState) -> usize {
    let details = match &asset.details {
        AssetDetails::Report(r) => r.description.len() + r.status_notes.len() + r.address.len() + r.media_url.len(),
        _ => 0,
    };
    asset.id.len() + asset.last_event_id.len() + details
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::event::{check, new_event};
    use proto::ids::{AssetId, CommuneId};
    use proto::lighting::{
        LampStatus, PowerState, StatusReport, Streetlight, StreetlightRegistered, StreetlightStatusReported,
    };
    use proto::v1::Position;
    use std::time::{Duration, SystemTime};

    fn registered() -> CheckedEvent {
        let light = Streetlight {
            id: "EP1".into(),
            commune: "34172".into(),
            lat: 43.6,
            lon: 3.88,
            lamp_type: "LANTERNE".into(),
            street: String::new(),
        };
        check(new_event(
            &CommuneId::parse("34172").unwrap(),
            &AssetId::parse("EP1").unwrap(),
            SystemTime::UNIX_EPOCH.into(),
            Some(Position { lat: 43.6, lon: 3.88 }),
            Payload::StreetlightRegistered(StreetlightRegistered { streetlight: Some(light) }),
        ))
        .unwrap()
    }

    fn status(at_secs: u64, level: f64) -> CheckedEvent {
        let at: prost_types::Timestamp = (SystemTime::UNIX_EPOCH + Duration::from_secs(at_secs)).into();
        let report = StatusReport {
            streetlight_id: "EP1".into(),
            observed_at: Some(at),
            status: LampStatus::DefectiveLamp as i32,
            power_state: PowerState::Low as i32,
            illuminance_level: level,
            power_consumption_w: 12.0,
            voltage_v: None,
        };
        check(new_event(
            &CommuneId::parse("34172").unwrap(),
            &AssetId::parse("EP1").unwrap(),
            at,
            Some(Position { lat: 43.6, lon: 3.88 }),
            Payload::StreetlightStatus(StreetlightStatusReported { report: Some(report), ..Default::default() }),
        ))
        .unwrap()
    }

    fn asset(applied: Applied) -> AssetState {
        match applied.change {
            Change::Asset(_, a) => a,
            other => panic!("not an asset change: {other:?}"),
        }
    }

    fn details(a: &AssetState) -> &StreetlightDetails {
        #[allow(irrefutable_let_patterns)]
        let AssetDetails::Streetlight(d) = &a.details else { panic!("not a streetlight") };
        d
    }

    #[test]
    fn latest_observation_wins_and_redeliveries_are_ignored() {
        let mut view = OperationsView::default();
        let a = asset(view.apply(&registered(), 1).unwrap());
        assert_eq!(details(&a).lamp_type, "LANTERNE");
        assert_eq!(details(&a).status, None);
        let b = asset(view.apply(&status(2_000, 0.3), 2).unwrap());
        assert_eq!(details(&b).status.as_deref(), Some("defectiveLamp"));
        assert_eq!(details(&b).power_state.as_deref(), Some("low"));
        assert_eq!(details(&b).lamp_type, "LANTERNE");
        // Late report: delivered as an event, state unchanged.
        let late = view.apply(&status(1_000, 0.9), 3).unwrap();
        assert_eq!(late.event.observed_at, "1970-01-01T00:16:40.000000000Z");
        assert_eq!(details(&asset(late)).illuminance_level, Some(0.3));
        // Redelivery of an applied sequence.
        assert!(view.apply(&status(3_000, 1.0), 3).is_none());
        assert_eq!(view.applied_seq(), 3);
        assert_eq!(view.asset_count(), 1);
        view.skip(10);
        assert!(view.apply(&status(3_000, 1.0), 9).is_none());
    }

    #[test]
    fn kpis_keep_a_short_history() {
        let mut view = OperationsView::default();
        let kpi = |at_s: u64, dark: u32| {
            check(new_event(
                &CommuneId::parse("34172").unwrap(),
                &AssetId::parse("34172").unwrap(),
                (SystemTime::UNIX_EPOCH + Duration::from_secs(at_s)).into(),
                None,
                Payload::LightingKpi(proto::lighting::LightingKpi {
                    commune: "34172".into(),
                    lamps_total: 10,
                    lamps_dark: dark,
                    ..Default::default()
                }),
            ))
            .unwrap()
        };
        for (seq, at) in (1..=70u64).map(|i| (i, 1_000 + i * 60)) {
            view.apply(&kpi(at, seq as u32), seq).unwrap();
        }
        let state = view.kpis().next().unwrap().clone();
        assert_eq!(state.values["lamps_dark"], 70.0);
        assert_eq!(state.history.len(), MAX_KPI_HISTORY);
        assert_eq!(state.history.first().unwrap().values["lamps_dark"], 10.0, "the oldest left first");
        assert_eq!(state.history.last().unwrap().values["lamps_dark"], 69.0);
        // A late KPI changes nothing.
        view.apply(&kpi(500, 1), 71).unwrap();
        assert_eq!(view.kpis().next().unwrap(), &state);
    }
}
