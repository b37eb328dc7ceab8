//! The service's core: validates what comes in, runs the rules, and writes the resulting state
//! and events with the store, in the same order as the rules saw them (one lock around both).

use proto::event::{self, CheckedEvent};
use proto::ids::{AssetId, CommuneId};
use proto::lighting::{
    CommandResult, CommandStatus, DimmingSchedule, FaultReport, LightingCommand, LightingKpi, SendCommandRequest,
    StatusReport, Streetlight, StreetlightFaultReported, StreetlightRegistered, StreetlightStatusReported,
};
use proto::v1::Position;
use proto::v1::event::Payload;
use runtime::error::Error;
use runtime::grpc_auth::{Caller, covers};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use territory::Territory;
use tokio_util::sync::CancellationToken;

use crate::commands::{self, CommandDesk, command_of};
use crate::domain::{self, Invalid, MAX_STREETLIGHTS_PER_CALL};
use crate::kpi::{self, EnergyMeter};
use crate::rules::{AlarmChange, LampPlace, Rules, RulesConfig};
use crate::schedule;
use crate::store::{CommandRecord, LampState, Store, WriteBatch};
use runtime::alarms::AlarmPayloads;

pub struct Lighting {
    store: Store,
    territory: Arc<Territory>,
    rules: Mutex<Rules>,
    energy: Mutex<EnergyMeter>,
    pub desk: Arc<CommandDesk>,
    shutdown: CancellationToken,
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Error {
        Error::Invalid(e.0)
    }
}

/// A shard whose store holds records of a commune another shard serves (its `--communes`
/// changed) must not act on them: their events are the other shard's to publish, and this
/// shard's NATS user may not. Checked after a takeover too (a standby's store is a copy).
pub fn refuse_other_shards_records(store: &Store, territory: &Territory) -> Result<(), Error> {
    if !territory.is_limited() {
        // The whole domain, or a shard of every commune: nothing is another's.
        return Ok(());
    }
    let mut foreign = std::collections::BTreeSet::new();
    let mut check = |commune: &str| {
        if CommuneId::parse(commune).is_ok_and(|c| territory.is_served_elsewhere(&c)) {
            foreign.insert(commune.to_owned());
        }
    };
    store.all_streetlights()?.iter().for_each(|l| check(&l.commune));
    store.all_alarms()?.iter().for_each(|a| check(a.commune.as_str()));
    store.all_energy_hours()?.iter().for_each(|(c, _, _)| check(c));
    store.pending_commands()?.iter().for_each(|r| check(&command_of(r).commune));
    if foreign.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "the store holds records of communes this shard does not serve ({}): put them back in --communes, or move the commune as docs/deploy.md says",
        foreign.into_iter().collect::<Vec<_>>().join(", ")
    )))
}

fn now_ts() -> prost_types::Timestamp {
    event::timestamp(SystemTime::now())
}

impl Lighting {
    /// Opens the core on a store, restoring the rules' state and the pending commands.
    pub async fn open(
        store: Store,
        territory: Arc<Territory>,
        config: RulesConfig,
        shutdown: CancellationToken,
    ) -> Result<Arc<Lighting>, Error> {
        refuse_other_shards_records(&store, &territory)?;
        let mut rules = Rules::new(config);
        for light in store.all_streetlights()? {
            if let Some((id, place)) = place_of(&light) {
                rules.add_lamp(id, place);
            }
        }
        let states = store.all_lamp_states()?;
        let mut energy = EnergyMeter::default();
        for (id, state) in &states {
            let (Ok(id), Some(report)) = (AssetId::parse(id), state.last_report.as_ref()) else { continue };
            let (Some(place), Some(at)) =
                (rules.place(&id), report.observed_at.and_then(|t| SystemTime::try_from(t).ok()))
            else {
                continue;
            };
            energy.restore_lamp(id.clone(), place.commune.clone(), report.power_consumption_w, at);
        }
        for (commune, hour, wh) in store.all_energy_hours()? {
            if let Ok(commune) = CommuneId::parse(&commune) {
                energy.restore_hour(commune, hour, wh);
            }
        }
        let conditions = states
            .into_iter()
            .filter_map(|(id, state)| AssetId::parse(&id).ok().map(|id| (id, state.condition())))
            .collect();
        rules.restore(conditions, store.all_alarms()?);
        // A crash between a lamp's state and the alarms it settles into leaves the alarms behind:
        // bring them in line before serving.
        let repairs = rules.recheck_all();
        if !repairs.is_empty() {
            tracing::warn!(changes = repairs.len(), "alarms brought in line with the lamps' state after a restart");
            let mut batch = WriteBatch::default();
            add_alarm_changes(&mut batch, repairs, now_ts())?;
            store.write(batch)?;
            store.flush().await?;
        }
        let desk = Arc::new(commands::new_desk());
        let pending = store.pending_commands()?;
        tracing::info!(
            lamps = rules.lamps().count(),
            alarms = rules.active_alarms().count(),
            pending_commands = pending.len(),
            "lighting state restored"
        );
        desk.restore(pending.iter().map(|r| (command_of(r).id, r.clone())));
        let core = Arc::new(Lighting {
            store,
            territory,
            rules: Mutex::new(rules),
            energy: Mutex::new(energy),
            desk,
            shutdown,
        });
        for record in pending {
            core.clone().expire_at_deadline(&command_of(&record));
        }
        Ok(core)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn rules(&self) -> MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn energy(&self) -> MutexGuard<'_, EnergyMeter> {
        self.energy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// KPIs of one commune, or of every commune with streetlights, as of `now`.
    pub fn kpis(&self, commune: Option<&CommuneId>, now: SystemTime) -> Vec<LightingKpi> {
        let counts = self.rules().commune_counts();
        let energy = self.energy();
        let hour = kpi::hour_start(now);
        counts
            .into_iter()
            .filter(|(c, _)| commune.is_none_or(|wanted| wanted == c))
            .map(|(c, (total, dark))| LightingKpi {
                commune: c.to_string(),
                at: Some(event::timestamp(now)),
                lamps_total: total as u32,
                lamps_dark: dark as u32,
                availability: kpi::availability(total, dark),
                power_w: energy.power_w(&c),
                hour_start: Some(prost_types::Timestamp { seconds: hour as i64, nanos: 0 }),
                energy_wh_current_hour: energy.energy_wh(&c, hour, now),
                energy_wh_previous_hour: energy.energy_wh(&c, hour.saturating_sub(3600), now),
            })
            .collect()
    }

    /// Publishes the KPIs of every commune and saves the energy counted so far.
    pub async fn publish_kpis(&self, now: SystemTime) -> Result<(), Error> {
        let kpis = self.kpis(None, now);
        let mut batch = WriteBatch::default();
        for kpi in kpis {
            let commune = CommuneId::parse(&kpi.commune).map_err(|e| Error::internal(e.to_string()))?;
            let asset = AssetId::parse(&kpi.commune).map_err(|e| Error::internal(e.to_string()))?;
            batch.events.push(event::check(event::new_event(
                &commune,
                &asset,
                event::timestamp(now),
                None,
                Payload::LightingKpi(kpi),
            ))?);
        }
        if batch.events.is_empty() {
            return Ok(());
        }
        // Two days of hours are kept; those changed since the last write are written.
        let keep_from = kpi::hour_start(now).saturating_sub(48 * 3600);
        let changed = self.energy().take_changed(keep_from);
        batch.energy_hours = changed.iter().map(|((c, h), wh)| (c.to_string(), *h, *wh)).collect();
        if let Err(e) = self.store.write(batch) {
            self.energy().untake(changed.into_iter().map(|(key, _)| key));
            return Err(e.into());
        }
        self.flush().await
    }

    pub async fn flush(&self) -> Result<(), Error> {
        Ok(self.store.flush().await?)
    }

    /// Registers or updates streetlights (all or nothing). Returns (registered, unchanged).
    pub fn register(&self, lights: &[Streetlight]) -> Result<(u32, u32), Error> {
        if lights.is_empty() {
            return Err(Error::invalid("no streetlights in the request"));
        }
        if lights.len() > MAX_STREETLIGHTS_PER_CALL {
            return Err(Error::invalid(format!(
                "{} streetlights in one call; at most {MAX_STREETLIGHTS_PER_CALL}",
                lights.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        let mut batch = WriteBatch::default();
        let mut unchanged = 0u32;
        let now = now_ts();
        let mut rules = self.rules();
        let mut places = Vec::new();
        for light in lights {
            if let Some(commune) = domain::served_elsewhere(light, &self.territory) {
                return Err(Error::NotFound(format!(
                    "streetlight {}: commune {commune} is served by another shard of the lighting service",
                    light.id.chars().take(proto::ids::AssetId::MAX_LEN).collect::<String>()
                )));
            }
            let valid = domain::validate_streetlight(light, &self.territory)?;
            if !seen.insert(valid.id.clone()) {
                return Err(Error::invalid(format!("streetlight {} appears twice in the request", valid.id)));
            }
            let mut stored = valid.to_proto();
            let existing = self.store.streetlight(valid.id.as_str())?;
            // No street given: keep the one already known (e.g. found by the import).
            if stored.street.is_empty()
                && let Some(existing) = &existing
            {
                stored.street = existing.street.clone();
            }
            if existing.as_ref() == Some(&stored) {
                unchanged += 1;
                continue;
            }
            batch.events.push(event::check(event::new_event(
                &valid.commune,
                &valid.id,
                now,
                Some(Position { lat: valid.lat, lon: valid.lon }),
                Payload::StreetlightRegistered(StreetlightRegistered { streetlight: Some(stored.clone()) }),
            ))?);
            places.push((
                valid.id.clone(),
                LampPlace {
                    commune: valid.commune.clone(),
                    lat: valid.lat,
                    lon: valid.lon,
                    street: stored.street.clone(),
                },
            ));
            batch.streetlights.push(stored);
        }
        let registered = batch.streetlights.len() as u32;
        if registered > 0 {
            self.store.write(batch)?;
            for (id, place) in places {
                rules.add_lamp(id, place);
            }
        }
        Ok((registered, unchanged))
    }

    /// Records a status report (not yet committed); returns its event id. `caller`: a lamp of a
    /// commune its credential does not cover is not found.
    pub fn record_status(&self, report: Option<&StatusReport>, caller: Option<&Caller>) -> Result<String, Error> {
        let mut rules = self.rules();
        let (event_id, batch) = self.status_batch(&mut rules, report, caller)?;
        self.store.write(batch)?;
        Ok(event_id)
    }

    /// Records one status report and settles the alarms, in one transaction (not yet committed):
    /// the report's change and the alarms it raises or clears are written together.
    pub fn report_status(&self, report: Option<&StatusReport>, caller: Option<&Caller>) -> Result<String, Error> {
        let mut rules = self.rules();
        let (event_id, mut batch) = self.status_batch(&mut rules, report, caller)?;
        add_alarm_changes(&mut batch, rules.settle(), now_ts())?;
        self.store.write(batch)?;
        Ok(event_id)
    }

    /// A status report's change and event, its rules observed (the caller holds the rules).
    fn status_batch(
        &self,
        rules: &mut Rules,
        report: Option<&StatusReport>,
        caller: Option<&Caller>,
    ) -> Result<(String, WriteBatch), Error> {
        let valid = domain::validate_report(report, SystemTime::now())?;
        let id = valid.streetlight_id;
        let (place, mut state) = self.known_locked(rules, &id, caller)?;
        let report = valid.report;
        if domain::is_newer(&report, state.last_report.as_ref()) {
            let was_lit = state.last_report.as_ref().is_some_and(domain::is_lit);
            let lit = domain::is_lit(&report);
            if lit && !was_lit {
                state.date_last_switching_on = report.observed_at;
            } else if !lit && was_lit {
                state.date_last_switching_off = report.observed_at;
            }
            state.last_report = Some(report.clone());
            rules.observe_status(&id, &report, valid.observed_at);
            self.energy().observe(&id, &place.commune, report.power_consumption_w, valid.observed_at);
            state.on_in_daytime = rules.condition(&id).on_in_daytime;
        }
        let status_event = event::check(event::new_event(
            &place.commune,
            &id,
            event::timestamp(valid.observed_at),
            Some(Position { lat: place.lat, lon: place.lon }),
            Payload::StreetlightStatus(StreetlightStatusReported {
                report: Some(report),
                date_last_switching_on: state.date_last_switching_on,
                date_last_switching_off: state.date_last_switching_off,
            }),
        ))?;
        let event_id = status_event.event.id.clone();
        let batch =
            WriteBatch { lamp_states: vec![(id.to_string(), state)], events: vec![status_event], ..Default::default() };
        Ok((event_id, batch))
    }

    /// Records a TALQ fault report (not yet committed); returns its event id. `caller`: as for
    /// [`Self::record_status`].
    pub fn record_fault(&self, fault: Option<&FaultReport>, caller: Option<&Caller>) -> Result<String, Error> {
        let (id, observed_at, kind) = domain::validate_fault(fault, SystemTime::now())?;
        let Some(fault) = fault else { return Err(Error::invalid("fault is missing")) };
        let mut rules = self.rules();
        let (place, mut state) = self.known_locked(&rules, &id, caller)?;
        rules.observe_fault(&id, kind, fault.active);
        let condition = rules.condition(&id);
        state.faults = condition.faults.iter().copied().collect();
        state.on_in_daytime = condition.on_in_daytime;
        let fault_event = event::check(event::new_event(
            &place.commune,
            &id,
            event::timestamp(observed_at),
            Some(Position { lat: place.lat, lon: place.lon }),
            Payload::StreetlightFault(StreetlightFaultReported { fault: Some(fault.clone()) }),
        ))?;
        let event_id = fault_event.event.id.clone();
        let batch =
            WriteBatch { lamp_states: vec![(id.to_string(), state)], events: vec![fault_event], ..Default::default() };
        self.store.write(batch)?;
        Ok(event_id)
    }

    /// Evaluates the rules on everything recorded since the last settle, and writes the alarm
    /// changes with their events (not yet committed).
    pub fn settle(&self) -> Result<(), Error> {
        let mut rules = self.rules();
        let changes = rules.settle();
        if changes.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        add_alarm_changes(&mut batch, changes, now_ts())?;
        self.store.write(batch)?;
        Ok(())
    }

    /// A registered lamp the caller may write for. Another commune's lamp is, to a credential of
    /// some communes, not there: the same answer as an unknown id, by the same path.
    fn known_locked(
        &self,
        rules: &Rules,
        id: &AssetId,
        caller: Option<&Caller>,
    ) -> Result<(LampPlace, LampState), Error> {
        let place = rules
            .place(id)
            .filter(|place| covers(caller, place.commune.as_str()))
            .cloned()
            .ok_or_else(|| Error::not_found(format!("streetlight {id} is not registered")))?;
        let state = self.store.lamp_state(id.as_str())?.unwrap_or_default();
        Ok((place, state))
    }

    /// Periodic re-evaluation (dusk ends "on in daytime").
    pub async fn tick(&self, now: SystemTime) -> Result<(), Error> {
        {
            let mut rules = self.rules();
            let changes = rules.tick(now);
            if changes.is_empty() {
                return Ok(());
            }
            let mut batch = WriteBatch::default();
            for change in &changes {
                if let AlarmChange::Cleared { alarm, .. } = change {
                    let mut state = self.store.lamp_state(alarm.asset.as_str())?.unwrap_or_default();
                    state.on_in_daytime = rules.condition(&alarm.asset).on_in_daytime;
                    batch.lamp_states.push((alarm.asset.to_string(), state));
                }
            }
            add_alarm_changes(&mut batch, changes, event::timestamp(now))?;
            self.store.write(batch)?;
        }
        self.flush().await
    }

    /// Creates or replaces a dimming schedule.
    pub async fn put_schedule(
        &self,
        mut schedule: DimmingSchedule,
        requested_by: &str,
    ) -> Result<DimmingSchedule, Error> {
        let by = requested_by.trim();
        if by.is_empty() || by.chars().count() > 64 {
            return Err(Error::invalid("requested_by is required (at most 64 characters)"));
        }
        let name = schedule.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(Error::invalid("name is required: 1 to 100 characters of text"));
        }
        // The target is checked as a command's would be.
        let probe = SendCommandRequest {
            target: schedule.target.clone(),
            action: Some(proto::lighting::CommandAction {
                action: Some(proto::lighting::command_action::Action::DimLevel(1.0)),
            }),
            requested_by: by.to_owned(),
            ..Default::default()
        };
        self.validate_command(&probe)?;
        schedule::validate_steps(&schedule.steps, "steps")?;
        if schedule.overrides.len() > schedule::MAX_OVERRIDES {
            return Err(Error::invalid(format!("at most {} overrides", schedule::MAX_OVERRIDES)));
        }
        for o in &schedule.overrides {
            schedule::parse_night(&o.night_of)?;
            if o.reason.chars().count() > domain::MAX_REASON_CHARS || o.reason.chars().any(char::is_control) {
                return Err(Error::invalid(format!(
                    "override of {}: reason must be at most {} characters of text",
                    o.night_of,
                    domain::MAX_REASON_CHARS
                )));
            }
            schedule::validate_steps(&o.steps, &format!("override of {}", o.night_of))?;
        }
        if schedule.id.is_empty() {
            schedule.id = uuid::Uuid::now_v7().to_string();
        } else {
            AssetId::parse_as("schedule id", &schedule.id).map_err(|e| Error::invalid(e.to_string()))?;
            if !self.store.schedules()?.iter().any(|s| s.id == schedule.id) {
                return Err(Error::not_found(format!("schedule {} does not exist", schedule.id)));
            }
        }
        schedule.name = name;
        schedule.updated_by = by.to_owned();
        schedule.updated_at = Some(now_ts());
        // A changed schedule commands its level afresh.
        schedule.last_level = None;
        self.store.put_schedule(&schedule).await?;
        tracing::info!(schedule = %schedule.id, name = %schedule.name, by, "dimming schedule saved");
        Ok(schedule)
    }

    pub fn schedules(&self) -> Result<Vec<DimmingSchedule>, Error> {
        Ok(self.store.schedules()?)
    }

    pub async fn delete_schedule(&self, id: &str, requested_by: &str) -> Result<(), Error> {
        if requested_by.trim().is_empty() {
            return Err(Error::invalid("requested_by is required"));
        }
        if !self.store.delete_schedule(id).await? {
            return Err(Error::not_found(format!("schedule {id} does not exist")));
        }
        tracing::info!(schedule = %id, by = requested_by.trim(), "dimming schedule deleted");
        Ok(())
    }

    /// Sends a command for every enabled schedule whose level changed.
    pub async fn run_schedules(self: &Arc<Self>, now: SystemTime) -> Result<(), Error> {
        for schedule in self.store.schedules()?.into_iter().filter(|s| s.enabled) {
            // One schedule that cannot run (its target gone: a street renamed, a commune moved
            // to another shard) does not keep the others from running.
            let id = schedule.id.clone();
            match self.run_schedule(schedule, now).await {
                Ok(()) => {}
                Err(e @ (Error::NotFound(_) | Error::Invalid(_))) => {
                    tracing::warn!(schedule = %id, error = %e, "a dimming schedule could not run");
                }
                // The store or the replication failing fails the others too: the tick ends.
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn run_schedule(
        self: &Arc<Self>,
        mut schedule: proto::lighting::DimmingSchedule,
        now: SystemTime,
    ) -> Result<(), Error> {
        let overrides: Vec<_> = schedule
            .overrides
            .iter()
            .filter_map(|o| schedule::parse_night(&o.night_of).ok().map(|d| (d, o.steps.clone())))
            .collect();
        let request = SendCommandRequest { target: schedule.target.clone(), ..Default::default() };
        let Some((lat, lon)) = self.centroid(&request)? else { return Ok(()) };
        let Some(level) = schedule::level_at(&schedule.steps, &overrides, lat, lon, now) else { return Ok(()) };
        if schedule.last_level == Some(level) {
            return Ok(());
        }
        let action = if level <= 0.0 {
            proto::lighting::command_action::Action::SwitchOn(false)
        } else {
            proto::lighting::command_action::Action::DimLevel(level)
        };
        let command = SendCommandRequest {
            target: schedule.target.clone(),
            action: Some(proto::lighting::CommandAction { action: Some(action) }),
            requested_by: format!("schedule:{}", schedule.id),
            reason: format!("dimming schedule {}", schedule.name),
            timeout_s: 120,
            allowed_communes: Vec::new(),
        };
        self.send_command(&command).await?;
        schedule.last_level = Some(level);
        self.store.put_schedule(&schedule).await?;
        Ok(())
    }

    /// Checks a command; a commune another shard serves is not this instance's to command.
    fn validate_command(&self, request: &SendCommandRequest) -> Result<domain::ValidCommand, Error> {
        use proto::lighting::command_target::Target;
        if let Some(Target::Commune(c)) = request.target.as_ref().and_then(|t| t.target.as_ref())
            && let Ok(commune) = CommuneId::parse(c)
            && self.territory.is_served_elsewhere(&commune)
        {
            return Err(Error::NotFound(format!(
                "commune {commune} is served by another shard of the lighting service"
            )));
        }
        Ok(domain::validate_command(request, &self.territory)?)
    }

    /// Centre of the lamps a target addresses (where its sun rises and sets).
    fn centroid(&self, request: &SendCommandRequest) -> Result<Option<(f64, f64)>, Error> {
        let mut probe = request.clone();
        probe.requested_by = "schedule".into();
        probe.action = Some(proto::lighting::CommandAction {
            action: Some(proto::lighting::command_action::Action::DimLevel(1.0)),
        });
        let valid = self.validate_command(&probe)?;
        let (mut n, mut lat, mut lon) = (0.0, 0.0, 0.0);
        for (id, place) in self.rules().lamps() {
            if domain::targets(&valid.target, id, &place.commune, place.lat, place.lon, &place.street) {
                n += 1.0;
                lat += place.lat;
                lon += place.lon;
            }
        }
        Ok((n > 0.0).then(|| (lat / n, lon / n)))
    }

    /// Creates the commands (one per commune of the target), stores and dispatches them.
    pub async fn send_command(self: &Arc<Self>, request: &SendCommandRequest) -> Result<Vec<LightingCommand>, Error> {
        let valid = self.validate_command(request)?;
        // Lamps outside the requester's communes are, to the requester, not there: a target
        // reaches only the lamps of its communes, and one that reaches none of them gets the
        // answer an unknown target gets.
        let allowed = |commune: &CommuneId| {
            request.allowed_communes.is_empty() || request.allowed_communes.iter().any(|a| a == commune.as_str())
        };
        let mut by_commune: BTreeMap<CommuneId, Vec<String>> = BTreeMap::new();
        for (id, place) in self.rules().lamps() {
            if allowed(&place.commune)
                && domain::targets(&valid.target, id, &place.commune, place.lat, place.lon, &place.street)
            {
                by_commune.entry(place.commune.clone()).or_default().push(id.to_string());
            }
        }
        if by_commune.is_empty() {
            return Err(Error::not_found("no registered streetlight matches the target"));
        }
        let now = SystemTime::now();
        let deadline = event::timestamp(now + valid.timeout);
        let target = domain::target_proto(&valid.target, request.target.as_ref());
        let mut batch = WriteBatch::default();
        for (commune, mut lamps) in by_commune {
            lamps.sort();
            let command = LightingCommand {
                id: uuid::Uuid::now_v7().to_string(),
                commune: commune.to_string(),
                target: Some(target.clone()),
                action: Some(valid.action),
                requested_by: valid.requested_by.clone(),
                reason: valid.reason.clone(),
                requested_at: Some(event::timestamp(now)),
                updated_at: Some(event::timestamp(now)),
                deadline: Some(deadline),
                status: CommandStatus::Pending as i32,
                lamps_total: lamps.len() as u32,
                lamps_applied: 0,
                lamps_failed: 0,
                failures: Vec::new(),
            };
            batch.events.push(command_event(&command)?);
            batch.commands.push(CommandRecord { command: Some(command), remaining: lamps.clone(), lamps });
        }
        let records = batch.commands.clone();
        self.store.write(batch)?;
        self.flush().await?;
        for record in &records {
            tracing::info!(command = %command_of(record).id, lamps = record.lamps.len(), by = %valid.requested_by, "command sent");
            commands::track(&self.desk, record.clone());
            self.clone().expire_at_deadline(&command_of(record));
        }
        Ok(records.iter().map(command_of).collect())
    }

    /// A controller's result; persisted when it changes the command.
    pub async fn command_result(&self, result: &CommandResult) -> Result<(), Error> {
        if let Some(record) = commands::apply_result(&self.desk, result, now_ts()) {
            self.save_command(record).await?;
        }
        Ok(())
    }

    async fn save_command(&self, record: CommandRecord) -> Result<(), Error> {
        let command = command_of(&record);
        if command.status != CommandStatus::Pending as i32 {
            tracing::info!(command = %command.id, status = ?CommandStatus::try_from(command.status), applied = command.lamps_applied, failed = command.lamps_failed, "command finished");
        }
        let batch = WriteBatch { events: vec![command_event(&command)?], commands: vec![record], ..Default::default() };
        self.store.write(batch)?;
        self.flush().await
    }

    fn expire_at_deadline(self: Arc<Self>, command: &LightingCommand) {
        let id = command.id.clone();
        let stop = self.shutdown.clone();
        runtime::controller::at_deadline(command.deadline, stop, async move {
            if let Some(record) = commands::expire(&self.desk, &id, now_ts())
                && let Err(e) = self.save_command(record).await
            {
                tracing::error!(command = %id, error = %e, "could not record the command's expiry");
            }
        });
    }
}

fn place_of(light: &Streetlight) -> Option<(AssetId, LampPlace)> {
    let id = AssetId::parse(&light.id).ok()?;
    let commune = CommuneId::parse(&light.commune).ok()?;
    Some((id, LampPlace { commune, lat: light.lat, lon: light.lon, street: light.street.clone() }))
}

fn command_event(command: &LightingCommand) -> Result<CheckedEvent, Error> {
    let commune = CommuneId::parse(&command.commune).map_err(|e| Error::internal(e.to_string()))?;
    let asset = AssetId::parse(&command.id).map_err(|e| Error::internal(e.to_string()))?;
    event::check(event::new_event(
        &commune,
        &asset,
        command.updated_at.unwrap_or_else(now_ts),
        None,
        Payload::LightingCommand(command.clone()),
    ))
    .map_err(Error::from)
}

/// The lighting domain's alarm events.
const ALARM_PAYLOADS: AlarmPayloads =
    AlarmPayloads { raised: Payload::LightingAlarmRaised, cleared: Payload::LightingAlarmCleared };

/// Adds the alarm changes, and their events, to a batch.
fn add_alarm_changes(
    batch: &mut WriteBatch,
    changes: Vec<AlarmChange>,
    at: prost_types::Timestamp,
) -> Result<(), Error> {
    runtime::alarms::announce(changes, &ALARM_PAYLOADS, at, &mut batch.events, &mut batch.alarms).map_err(Error::from)
}
