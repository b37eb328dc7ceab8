//! The operations view, pure: the latest state of every asset, built by applying checked events in
//! stream order. No I/O here; the consumer feeds it and the store persists what it changed.

use proto::event::CheckedEvent;
use proto::lighting::{CommandStatus, LampStatus, LightingCommand, PowerState, TalqFault};
use proto::live::{
    AlarmComment, AlarmState, AssetDetails, AssetState, AuditEntry, CommandAction, CommandState, CommandTarget,
    EventSummary, KpiSample, KpiState, LatLon, MeasureReading, ReportDetails, StreetlightDetails, VehicleDetails,
    WaterSensorDetails,
};
use proto::ops::{AlarmAction, AlarmActionKind};
use proto::v1::event::Payload;
use proto::v1::{AlarmCleared, AlarmRaised, Severity};
use std::collections::{BTreeMap, BTreeSet, HashMap};

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

/// What applying one event changed.
#[derive(Debug, Clone)]
pub enum Change {
    Asset(String, AssetState),
    /// An alarm raised or updated (`active`), or cleared (`!active`: it left the view).
    Alarm(String, AlarmState),
    /// A command created or updated; `evicted` finished commands left the view to make room.
    Command(String, CommandState, Vec<String>),
    Kpi(String, KpiState),
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
        let summary = summary(event);
        if let Some(entry) = audit_entry(&summary, event, seq) {
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
                let state = command_state(&summary.domain, command);
                self.command(state)
            }
            Payload::ValveCommand(command) => {
                let state = valve_command_state(&summary.domain, command);
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

    fn asset(&mut self, summary: &EventSummary, event: &CheckedEvent) -> Change {
        let key = asset_key(&summary.domain, &summary.asset_id);
        let position = event.event.position.map(|p| LatLon { lat: p.lat, lon: p.lon });
        let asset = self.assets.entry(key.clone()).or_insert_with(|| AssetState {
            domain: summary.domain.clone(),
            id: summary.asset_id.clone(),
            commune: summary.commune.clone(),
            position,
            observed_at: summary.observed_at.clone(),
            recorded_at: summary.recorded_at.clone(),
            last_event_id: summary.id.clone(),
            details: AssetDetails::Streetlight(StreetlightDetails::default()),
        });
        let AssetDetails::Streetlight(details) = &mut asset.details else {
            return Change::Asset(key, asset.clone());
        };
        match event.payload() {
            Payload::StreetlightRegistered(registered) => {
                if let Some(light) = &registered.streetlight {
                    asset.commune = summary.commune.clone();
                    asset.position = position;
                    details.lamp_type = light.lamp_type.clone();
                    details.street = light.street.clone();
                    asset.last_event_id = summary.id.clone();
                    asset.recorded_at = summary.recorded_at.clone();
                }
            }
            Payload::StreetlightStatus(status) => {
                // A late report (observed before the current state) is an event, not a new state.
                // Before the first report, `observed_at` is the registration's and does not count.
                let first_report = details.status.is_none();
                if let Some(report) = &status.report
                    && (first_report || summary.observed_at >= asset.observed_at)
                {
                    details.status = Some(lamp_status_name(report.status).to_owned());
                    details.power_state = Some(power_state_name(report.power_state).to_owned());
                    details.illuminance_level = Some(report.illuminance_level);
                    details.power_consumption_w = Some(report.power_consumption_w);
                    details.voltage_v = report.voltage_v;
                    details.date_last_switching_on = status.date_last_switching_on.as_ref().map(|t| rfc3339(Some(t)));
                    details.date_last_switching_off = status.date_last_switching_off.as_ref().map(|t| rfc3339(Some(t)));
                    asset.observed_at = summary.observed_at.clone();
                    asset.recorded_at = summary.recorded_at.clone();
                    asset.last_event_id = summary.id.clone();
                    if position.is_some() {
                        asset.position = position;
                    }
                }
            }
            Payload::StreetlightFault(fault) => {
                if let Some(fault) = &fault.fault {
                    let name = talq_fault_name(fault.fault).to_owned();
                    details.faults.retain(|f| f != &name);
                    if fault.active {
                        details.faults.push(name);
                        details.faults.sort();
                    }
                    asset.last_event_id = summary.id.clone();
                    asset.recorded_at = summary.recorded_at.clone();
                }
            }
            _ => {}
        }
        Change::Asset(key, asset.clone())
    }

    fn vehicle(
        &mut self,
        summary: &EventSummary,
        event: &CheckedEvent,
        moved: &proto::transport::VehicleMoved,
    ) -> Change {
        let key = asset_key(&summary.domain, &summary.asset_id);
        let state = moved.state.clone().unwrap_or_default();
        let position = state.position.clone().unwrap_or_default();
        let details = VehicleDetails {
            label: position.vehicle_label.clone(),
            trip_id: position.trip_id.clone(),
            route_id: state.route_id.clone(),
            direction: state.direction,
            delay_s: state.delay_s,
            bearing: position.bearing,
            speed: position.speed,
            current_stop_sequence: position.current_stop_sequence,
            offset_m: state.offset_m,
            headway_s: state.headway_s,
            scheduled_headway_s: state.scheduled_headway_s,
        };
        let asset = asset_state(summary, event, AssetDetails::Vehicle(details));
        // The latest observation wins; a late position is an event, not a new state.
        match self.assets.get(&key) {
            Some(current) if current.observed_at > asset.observed_at => Change::Asset(key, current.clone()),
            _ => {
                self.assets.insert(key.clone(), asset.clone());
                Change::Asset(key, asset)
            }
        }
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

    fn report(&mut self, summary: &EventSummary, event: &CheckedEvent, r: &proto::reports::ServiceRequest) -> Change {
        let key = asset_key(&summary.domain, &summary.asset_id);
        let status = proto::reports::ReportStatus::try_from(r.status).unwrap_or_default();
        let details = ReportDetails {
            service_request_id: r.service_request_id.clone(),
            service_code: r.service_code.clone(),
            service_name: r.service_name.clone(),
            status: status.open311().to_owned(),
            detailed_status: status.token().to_owned(),
            status_notes: r.status_notes.clone(),
            description: r.description.clone(),
            address: r.address.clone(),
            media_url: r.media_url.clone(),
            requested_at: rfc3339(r.requested_datetime.as_ref()),
            duplicate_of: r.duplicate_of.clone(),
            duplicate_count: r.duplicate_count,
            linked_alarm_key: r.linked_alarm_key.clone(),
        };
        let asset = asset_state(summary, event, AssetDetails::Report(details));
        if let Some(at) = self.closed_at.remove(&key) {
            self.closed_reports.remove(&(at, key.clone()));
        }
        if is_closed_report(&asset) {
            // The stream's clock; a view restored from its store has its reports' recorded
            // times instead, close enough.
            let at = if self.stream_time > 0 { self.stream_time } else { unix_seconds(&asset.recorded_at) };
            self.closed_at.insert(key.clone(), at);
            self.closed_reports.insert((at, key.clone()));
        }
        self.assets.insert(key.clone(), asset.clone());
        Change::Asset(key, asset)
    }

    fn raise(&mut self, summary: &EventSummary, event: &CheckedEvent, raised: &AlarmRaised) -> Change {
        let position = event.event.position.map(|p| LatLon { lat: p.lat, lon: p.lon });
        let alarm = self
            .alarms
            .entry(raised.key.clone())
            .and_modify(|a| {
                a.raise_count += 1;
                a.last_raised_at = summary.observed_at.clone();
                // The condition is back (or still there): active again.
                a.active = true;
                a.cleared_at = None;
                a.clear_reason = None;
            })
            .or_insert_with(|| AlarmState {
                key: raised.key.clone(),
                domain: summary.domain.clone(),
                alarm_type: raised.alarm_type.clone(),
                severity: String::new(),
                commune: summary.commune.clone(),
                asset_id: summary.asset_id.clone(),
                asset_ids: Vec::new(),
                position,
                details: BTreeMap::new(),
                active: true,
                first_raised_at: summary.observed_at.clone(),
                last_raised_at: summary.observed_at.clone(),
                raise_count: 1,
                cleared_at: None,
                clear_reason: None,
                acknowledged: false,
                acknowledged_by: None,
                acknowledged_at: None,
                assignee: None,
                shelved_until: None,
                comments: Vec::new(),
                closed: false,
                resolved_by: None,
            });
        // Raised again under the same key, the alarm may be somewhere else now (a late bus in
        // the next commune): it belongs where it was last raised, and nothing of where it was
        // (its position) follows it there.
        let moved = alarm.commune != summary.commune;
        if moved {
            // The first commune's operators' work on it (their logins, comments, an
            // acknowledgement or a shelving) is theirs: the alarm starts afresh where it is now.
            alarm.first_raised_at = summary.observed_at.clone();
            alarm.raise_count = 1;
            alarm.acknowledged = false;
            alarm.acknowledged_by = None;
            alarm.acknowledged_at = None;
            alarm.assignee = None;
            alarm.shelved_until = None;
            alarm.comments.clear();
            alarm.resolved_by = None;
        }
        alarm.commune = summary.commune.clone();
        alarm.asset_id = summary.asset_id.clone();
        alarm.severity = severity_name(raised.severity).to_owned();
        alarm.asset_ids = raised.asset_ids.clone();
        alarm.details = raised.details.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        alarm.position = if moved { position } else { position.or(alarm.position) };
        Change::Alarm(raised.key.clone(), alarm.clone())
    }

    /// `None` for an alarm the view does not hold (cleared twice, or raised before the stream's
    /// retention): nothing changes.
    fn clear(&mut self, summary: &EventSummary, cleared: &AlarmCleared) -> Option<Change> {
        let alarm = self.alarms.get_mut(&cleared.key)?;
        alarm.active = false;
        alarm.cleared_at = Some(summary.observed_at.clone());
        alarm.clear_reason = Some(cleared.reason.clone());
        // Cleared and acknowledged: done.
        alarm.closed = alarm.acknowledged;
        let state = alarm.clone();
        if state.closed {
            self.alarms.remove(&cleared.key);
        }
        Some(Change::Alarm(cleared.key.clone(), state))
    }

    /// An operator's action on an alarm. `None` for an alarm the view does not hold (closed
    /// meanwhile, by another operator or replica): the audit log still has it.
    fn alarm_action(&mut self, summary: &EventSummary, action: &AlarmAction) -> Option<Change> {
        // An action belongs to the commune the operator acted in: an alarm that moved to another
        // commune meanwhile is not theirs to change (the audit log still records the action).
        let alarm = self.alarms.get_mut(&action.alarm_key).filter(|a| a.commune == summary.commune)?;
        let at = summary.observed_at.clone();
        match AlarmActionKind::try_from(action.action).ok()? {
            AlarmActionKind::Acknowledge => {
                if !alarm.acknowledged {
                    alarm.acknowledged = true;
                    alarm.acknowledged_by = Some(action.actor.clone());
                    alarm.acknowledged_at = Some(at.clone());
                }
                alarm.closed = !alarm.active;
            }
            AlarmActionKind::Assign => {
                alarm.assignee = (!action.assignee.is_empty()).then(|| action.assignee.clone());
            }
            AlarmActionKind::Comment => {}
            AlarmActionKind::Shelve => alarm.shelved_until = action.shelved_until.as_ref().map(|t| rfc3339(Some(t))),
            AlarmActionKind::Unshelve => alarm.shelved_until = None,
            AlarmActionKind::Resolve => {
                alarm.closed = true;
                alarm.resolved_by = Some(action.actor.clone());
            }
            AlarmActionKind::Unspecified => return None,
        }
        if !action.comment.is_empty() {
            if alarm.comments.len() >= MAX_COMMENTS {
                alarm.comments.remove(0);
            }
            alarm.comments.push(AlarmComment { by: action.actor.clone(), at, text: action.comment.clone() });
        }
        let state = alarm.clone();
        if state.closed {
            self.alarms.remove(&action.alarm_key);
        }
        Some(Change::Alarm(action.alarm_key.clone(), state))
    }

    /// A water sensor's reading: its measure's latest value (a late reading changes nothing).
    fn water_reading(
        &mut self,
        summary: &EventSummary,
        event: &CheckedEvent,
        observed: &proto::water::WaterReadingObserved,
    ) -> Option<Change> {
        let reading = observed.reading.as_ref()?;
        let key = asset_key(&summary.domain, &summary.asset_id);
        let asset = self
            .assets
            .entry(key.clone())
            .or_insert_with(|| asset_state(summary, event, AssetDetails::WaterSensor(WaterSensorDetails::default())));
        let AssetDetails::WaterSensor(details) = &mut asset.details else { return None };
        let observed_at = rfc3339(reading.observed_at.as_ref());
        if details.measures.get(&reading.measure).is_some_and(|m| m.observed_at > observed_at) {
            return Some(Change::Asset(key, asset.clone()));
        }
        details.measures.insert(
            reading.measure.clone(),
            MeasureReading { value: reading.value, unit: reading.unit.clone(), observed_at: observed_at.clone() },
        );
        details.element_id = observed.element_id.clone();
        details.dma = observed.dma.clone();
        details.flags = observed.flags.clone();
        if observed_at >= asset.observed_at {
            asset.observed_at = observed_at;
        }
        asset.recorded_at = summary.recorded_at.clone();
        asset.last_event_id = summary.id.clone();
        asset.commune = summary.commune.clone();
        if let Some(p) = event.event.position {
            asset.position = Some(LatLon { lat: p.lat, lon: p.lon });
        }
        Some(Change::Asset(key, asset.clone()))
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

pub fn valve_command_state(domain: &str, c: &proto::water::ValveCommand) -> CommandState {
    use proto::water::{ValveAction, ValveCommandStatus};
    let operation = match ValveAction::try_from(c.action) {
        Ok(ValveAction::Close) => "close",
        Ok(ValveAction::Open) => "open",
        Ok(ValveAction::Unspecified) | Err(_) => "unknown",
    };
    let status = match ValveCommandStatus::try_from(c.status) {
        Ok(ValveCommandStatus::Pending) => "pending",
        Ok(ValveCommandStatus::Applied) => "applied",
        Ok(ValveCommandStatus::Failed) => "failed",
        Ok(ValveCommandStatus::Unspecified) | Err(_) => "unknown",
    };
    CommandState {
        id: c.id.clone(),
        domain: domain.to_owned(),
        commune: c.commune.clone(),
        target: CommandTarget::Valve { link_id: c.link_id.clone() },
        action: CommandAction::OperateValve { operation: operation.to_owned() },
        requested_by: c.requested_by.clone(),
        reason: c.reason.clone(),
        requested_at: rfc3339(c.requested_at.as_ref()),
        updated_at: rfc3339(c.updated_at.as_ref()),
        deadline: rfc3339(c.deadline.as_ref()),
        status: status.to_owned(),
        lamps_total: 0,
        lamps_applied: 0,
        lamps_failed: 0,
        failures: if c.failure.is_empty() { Vec::new() } else { vec![c.failure.clone()] },
    }
}

pub fn command_state(domain: &str, c: &LightingCommand) -> CommandState {
    use proto::lighting::command_action::Action;
    use proto::lighting::command_target::Target;
    let target = match c.target.as_ref().and_then(|t| t.target.as_ref()) {
        Some(Target::StreetlightId(id)) => CommandTarget::Streetlight { id: id.clone() },
        Some(Target::Commune(commune)) => CommandTarget::Commune { commune: commune.clone() },
        Some(Target::Street(name)) => CommandTarget::Street { name: name.clone() },
        Some(Target::Polygon(p)) => {
            CommandTarget::Polygon { ring: p.ring.iter().map(|p| LatLon { lat: p.lat, lon: p.lon }).collect() }
        }
        None => CommandTarget::Unknown,
    };
    let action = match c.action.as_ref().and_then(|a| a.action.as_ref()) {
        Some(Action::SwitchOn(on)) => CommandAction::Switch { on: *on },
        Some(Action::DimLevel(level)) => CommandAction::Dim { level: *level },
        None => CommandAction::Unknown,
    };
    let status = match CommandStatus::try_from(c.status) {
        Ok(CommandStatus::Pending) => "pending",
        Ok(CommandStatus::Applied) => "applied",
        Ok(CommandStatus::PartiallyApplied) => "partially_applied",
        Ok(CommandStatus::Failed) => "failed",
        Ok(CommandStatus::Unspecified) | Err(_) => "unknown",
    };
    CommandState {
        id: c.id.clone(),
        domain: domain.to_owned(),
        commune: c.commune.clone(),
        target,
        action,
        requested_by: c.requested_by.clone(),
        reason: c.reason.clone(),
        requested_at: rfc3339(c.requested_at.as_ref()),
        updated_at: rfc3339(c.updated_at.as_ref()),
        deadline: rfc3339(c.deadline.as_ref()),
        status: status.to_owned(),
        lamps_total: c.lamps_total,
        lamps_applied: c.lamps_applied,
        lamps_failed: c.lamps_failed,
        failures: c.failures.clone(),
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

/// The audit entry an event makes, if it records an operator's act: an alarm action, a log book
/// entry (`note`), a command requested, a report's status changed by someone other than the
/// citizen.
fn audit_entry(summary: &EventSummary, event: &CheckedEvent, seq: u64) -> Option<AuditEntry> {
    let entry = |actor: &str, action: &str, target: &str, details: Vec<(&str, String)>| AuditEntry {
        seq,
        event_id: summary.id.clone(),
        at: summary.observed_at.clone(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        commune: summary.commune.clone(),
        domain: summary.domain.clone(),
        target: target.to_owned(),
        details: details.into_iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.to_owned(), v)).collect(),
    };
    match event.payload() {
        Payload::AlarmAction(a) => {
            let action = match AlarmActionKind::try_from(a.action).ok()? {
                AlarmActionKind::Acknowledge => "acknowledge",
                AlarmActionKind::Assign => "assign",
                AlarmActionKind::Comment => "comment",
                AlarmActionKind::Shelve => "shelve",
                AlarmActionKind::Unshelve => "unshelve",
                AlarmActionKind::Resolve => "resolve",
                AlarmActionKind::Unspecified => return None,
            };
            let until = a.shelved_until.as_ref().map(|t| rfc3339(Some(t))).unwrap_or_default();
            Some(entry(
                &a.actor,
                action,
                &a.alarm_key,
                vec![("assignee", a.assignee.clone()), ("comment", a.comment.clone()), ("shelved_until", until)],
            ))
        }
        Payload::LogbookEntry(e) => Some(entry(&e.actor, "note", "logbook", vec![("text", e.text.clone())])),
        // A command's first event: requested, nothing confirmed yet.
        Payload::LightingCommand(c)
            if c.status == CommandStatus::Pending as i32 && c.lamps_applied + c.lamps_failed == 0 =>
        {
            let state = command_state(&summary.domain, c);
            let details = vec![
                ("target", serde_json::to_string(&state.target).unwrap_or_default()),
                ("action", serde_json::to_string(&state.action).unwrap_or_default()),
                ("reason", c.reason.clone()),
            ];
            Some(entry(&c.requested_by, "command", &c.id, details))
        }
        Payload::ValveCommand(c) if c.status == proto::water::ValveCommandStatus::Pending as i32 => {
            let state = valve_command_state(&summary.domain, c);
            let details = vec![
                ("target", serde_json::to_string(&state.target).unwrap_or_default()),
                ("action", serde_json::to_string(&state.action).unwrap_or_default()),
                ("reason", c.reason.clone()),
            ];
            Some(entry(&c.requested_by, "command", &c.id, details))
        }
        Payload::ReportUpdated(proto::reports::ReportUpdated { request: Some(r), change: Some(change) })
            if change.actor != "citizen" =>
        {
            let token = |s: i32| proto::reports::ReportStatus::try_from(s).unwrap_or_default().token().to_owned();
            let details = vec![("from", token(change.from)), ("to", token(change.to)), ("note", change.note.clone())];
            Some(entry(&change.actor, "report_status", &r.service_request_id, details))
        }
        _ => None,
    }
}

/// RFC 3339 with nanoseconds and `Z`: fixed width, so the strings order like the times.
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// An asset's state as the event tells it.
fn asset_state(summary: &EventSummary, event: &CheckedEvent, details: AssetDetails) -> AssetState {
    AssetState {
        domain: summary.domain.clone(),
        id: summary.asset_id.clone(),
        commune: summary.commune.clone(),
        position: event.event.position.map(|p| LatLon { lat: p.lat, lon: p.lon }),
        observed_at: summary.observed_at.clone(),
        recorded_at: summary.recorded_at.clone(),
        last_event_id: summary.id.clone(),
        details,
    }
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

fn summary(event: &CheckedEvent) -> EventSummary {
    EventSummary {
        id: event.event.id.clone(),
        domain: event.domain().token().to_owned(),
        kind: event.kind.token().to_owned(),
        commune: event.commune.to_string(),
        asset_id: event.asset_id.to_string(),
        observed_at: rfc3339(event.event.observed_at.as_ref()),
        recorded_at: rfc3339(event.event.recorded_at.as_ref()),
    }
}

pub fn severity_name(value: i32) -> &'static str {
    match Severity::try_from(value) {
        Ok(Severity::Warning) => "warning",
        Ok(Severity::Minor) => "minor",
        Ok(Severity::Major) => "major",
        Ok(Severity::Critical) => "critical",
        Ok(Severity::Unspecified) | Err(_) => "indeterminate",
    }
}

fn talq_fault_name(value: i32) -> &'static str {
    match TalqFault::try_from(value) {
        Ok(TalqFault::LampFailure) => "lamp_failure",
        Ok(TalqFault::DimmingFailure) => "dimming_failure",
        Ok(TalqFault::RelayFailure) => "relay_failure",
        Ok(TalqFault::SupplyLoss) => "supply_loss",
        Ok(TalqFault::LampOnInDaytime) => "lamp_on_in_daytime",
        Ok(TalqFault::LowPowerFactor) => "low_power_factor",
        Ok(TalqFault::Unspecified) | Err(_) => "unknown",
    }
}

/// NGSI-LD Streetlight `status` values.
fn lamp_status_name(value: i32) -> &'static str {
    match LampStatus::try_from(value) {
        Ok(LampStatus::Ok) => "ok",
        Ok(LampStatus::DefectiveLamp) => "defectiveLamp",
        Ok(LampStatus::BrokenLantern) => "brokenLantern",
        Ok(LampStatus::ColumnIssue) => "columnIssue",
        Ok(LampStatus::Unspecified) | Err(_) => "unknown",
    }
}

/// NGSI-LD Streetlight `powerState` values.
fn power_state_name(value: i32) -> &'static str {
    match PowerState::try_from(value) {
        Ok(PowerState::On) => "on",
        Ok(PowerState::Off) => "off",
        Ok(PowerState::Low) => "low",
        Ok(PowerState::BootingUp) => "bootingUp",
        Ok(PowerState::Unspecified) | Err(_) => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::event::{check, new_event};
    use proto::ids::{AssetId, CommuneId};
    use proto::lighting::{StatusReport, Streetlight, StreetlightRegistered, StreetlightStatusReported};
    use proto::v1::{AlarmCleared, AlarmRaised, Position, Severity};
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

    fn alarm_event(payload: Payload) -> CheckedEvent {
        check(new_event(
            &CommuneId::parse("34172").unwrap(),
            &AssetId::parse("EP1").unwrap(),
            SystemTime::now().into(),
            Some(Position { lat: 43.6, lon: 3.88 }),
            payload,
        ))
        .unwrap()
    }

    fn action(kind: AlarmActionKind, actor: &str, assignee: &str, comment: &str) -> CheckedEvent {
        alarm_event(Payload::AlarmAction(AlarmAction {
            alarm_key: "lighting/outage_cluster/EP1".into(),
            action: kind as i32,
            actor: actor.into(),
            assignee: assignee.into(),
            comment: comment.into(),
            shelved_until: None,
        }))
    }

    fn alarm_of(applied: Option<Applied>) -> AlarmState {
        match applied.map(|a| a.change) {
            Some(Change::Alarm(_, alarm)) => alarm,
            other => panic!("alarm expected, got {other:?}"),
        }
    }

    #[test]
    fn alarms_are_deduplicated_by_key_and_leave_once_cleared_and_acknowledged() {
        let mut view = OperationsView::default();
        let raised = AlarmRaised {
            key: "lighting/outage_cluster/EP1".into(),
            alarm_type: "outage_cluster".into(),
            severity: Severity::Major as i32,
            asset_ids: vec!["EP1".into(), "EP2".into()],
            details: Default::default(),
        };
        view.apply(&alarm_event(Payload::LightingAlarmRaised(raised.clone())), 1).unwrap();
        let mut grown = raised.clone();
        grown.asset_ids.push("EP3".into());
        let alarm = alarm_of(view.apply(&alarm_event(Payload::LightingAlarmRaised(grown)), 2));
        assert_eq!(
            (alarm.raise_count, alarm.asset_ids.len(), alarm.severity.as_str(), alarm.active),
            (2, 3, "major", true)
        );
        assert_eq!(view.alarms().count(), 1);
        let cleared =
            AlarmCleared { key: raised.key.clone(), alarm_type: raised.alarm_type.clone(), reason: "repaired".into() };
        let alarm = alarm_of(view.apply(&alarm_event(Payload::LightingAlarmCleared(cleared.clone())), 3));
        assert_eq!((alarm.active, alarm.closed, alarm.clear_reason.as_deref()), (false, false, Some("repaired")));
        assert_eq!(view.alarms().count(), 1, "cleared, not yet acknowledged: still shown");
        // Raised again: active again, the count goes on.
        let alarm = alarm_of(view.apply(&alarm_event(Payload::LightingAlarmRaised(raised.clone())), 4));
        assert_eq!((alarm.active, alarm.raise_count, alarm.cleared_at.as_deref()), (true, 3, None));
        // The operators' workflow, each step with who and when; the audit log records it.
        let alarm = alarm_of(view.apply(&action(AlarmActionKind::Assign, "op-a", "op-b", ""), 5));
        assert_eq!(alarm.assignee.as_deref(), Some("op-b"));
        let alarm = alarm_of(view.apply(&action(AlarmActionKind::Comment, "op-b", "", "équipe en route"), 6));
        assert_eq!((alarm.comments[0].by.as_str(), alarm.comments[0].text.as_str()), ("op-b", "équipe en route"));
        let alarm = alarm_of(view.apply(&action(AlarmActionKind::Acknowledge, "op-b", "", ""), 7));
        assert_eq!((alarm.acknowledged, alarm.acknowledged_by.as_deref(), alarm.closed), (true, Some("op-b"), false));
        let audit = view.take_audit();
        let steps: Vec<(u64, &str, &str)> =
            audit.iter().map(|e| (e.seq, e.actor.as_str(), e.action.as_str())).collect();
        assert_eq!(steps, [(5, "op-a", "assign"), (6, "op-b", "comment"), (7, "op-b", "acknowledge")]);
        assert_eq!(audit[1].details.get("comment").map(String::as_str), Some("équipe en route"));
        assert!(view.take_audit().is_empty(), "taken once");
        // Acknowledged, then cleared: closed, it leaves.
        let alarm = alarm_of(view.apply(&alarm_event(Payload::LightingAlarmCleared(cleared.clone())), 8));
        assert_eq!((alarm.active, alarm.closed), (false, true));
        assert_eq!(view.alarms().count(), 0);
        assert!(
            view.apply(&alarm_event(Payload::LightingAlarmCleared(cleared)), 9).is_none(),
            "cleared twice: nothing"
        );
        // An action on an alarm no longer in the view changes nothing, but is audited.
        assert!(view.apply(&action(AlarmActionKind::Acknowledge, "op-c", "", ""), 10).is_none());
        assert_eq!(view.take_audit().len(), 1);
        // Resolved by an operator while still active: it leaves.
        view.apply(&alarm_event(Payload::LightingAlarmRaised(raised)), 11).unwrap();
        let alarm = alarm_of(view.apply(&action(AlarmActionKind::Resolve, "op-a", "", "faux positif"), 12));
        assert_eq!((alarm.closed, alarm.resolved_by.as_deref(), alarm.active), (true, Some("op-a"), true));
        assert_eq!(view.alarms().count(), 0);
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
