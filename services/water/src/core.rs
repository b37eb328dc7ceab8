//! The service's core: sensors, readings through their data-quality checks into the rules (tank
//! levels, drinking-water quality, the zones' night flow and bursts), alarms, valve commands and
//! KPIs. Each change is written with its events by the store, in the order the rules saw it (one
//! lock around both).

use proto::event::{self, CheckedEvent};
use proto::ids::{AssetId, CommuneId};
use proto::v1::event::Payload;
use proto::v1::{AlarmCleared, AlarmRaised, Position, Severity};
use proto::water::{
    MeasureValue, Reading, RegisterSensorsResponse, SendValveCommandRequest, Sensor, SensorState, ValveAction,
    ValveCommand, ValveCommandStatus, ValveInstruction, ValveResult, WaterKpi, WaterReadingObserved, ZoneNightFlow,
};
use runtime::alarms::{ActiveAlarm, AlarmChange, AlarmOp, AlarmPayloads};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::leaks::{LeakSignal, LeakThreshold};
use crate::model::NetworkModel;
use crate::network::Network;
use crate::placement::PlacedNode;
use crate::quality::{self, Flag, FlagChange, Measure, QualityConfig, QualityTracker};
use crate::rules::{self, BurstConfig, TankState};
use crate::store::{Store, StoreError, WriteBatch};
use crate::zones::{self, BurstState, NightWindow, Series, ZoneBalance, ZoneMemory};

const PAYLOADS: AlarmPayloads =
    AlarmPayloads { raised: Payload::WaterAlarmRaised, cleared: Payload::WaterAlarmCleared };

/// Readings later than this past the wall clock are refused (clock skew allowance).
const MAX_FUTURE: Duration = Duration::from_secs(300);
/// Sensors registered in one call.
pub const MAX_SENSORS_PER_CALL: usize = 10_000;
const MAX_REASON_CHARS: usize = 500;
/// How long pressure readings are kept for the burst rule, seconds.
const PRESSURE_KEEP_S: i64 = 3600;

#[derive(Debug, Clone)]
pub struct WaterConfig {
    pub quality: QualityConfig,
    pub night: NightWindow,
    pub leak: LeakThreshold,
    pub burst: BurstConfig,
    /// The window over which a burst's pressure drop and inflow rise are measured, seconds.
    pub burst_window_s: i64,
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        tracing::error!(error = %e, "store failure");
        if let StoreError::Sled(e) = &e {
            runtime::store_fault::report(e);
        }
        Status::unavailable(format!("the water store could not complete the operation: {e}"))
    }
}

fn checked(event: proto::v1::Event) -> Result<CheckedEvent, Status> {
    event::check(event).map_err(|e| Status::internal(format!("built an invalid event: {e}")))
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn wall_seconds() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

struct State {
    model: NetworkModel,
    sensors: BTreeMap<String, SensorState>,
    quality: QualityTracker,
    zones: Vec<ZoneBalance>,
    /// Usable pressure readings per sensor, for the burst rule.
    pressures: HashMap<String, Series>,
    alarms: BTreeMap<String, ActiveAlarm>,
    /// Zones with new inflow samples since the burst rule last looked.
    dirty_zones: BTreeSet<String>,
}

pub type InstructionSender = mpsc::Sender<Result<ValveInstruction, Status>>;

pub struct Water {
    store: Store,
    config: WaterConfig,
    state: Mutex<State>,
    controllers: Mutex<HashMap<u64, InstructionSender>>,
    next_controller: std::sync::atomic::AtomicU64,
    shutdown: CancellationToken,
}

fn alarm_key(alarm_type: &str, subject: &str) -> String {
    format!("water/{alarm_type}/{subject}")
}

/// The quality tracker's key of one measure of one sensor.
fn series_key(sensor: &str, measure: Measure) -> String {
    format!("{sensor}:{}", measure.name())
}

impl Water {
    /// Opens the core: the network model with the stored sensors' meters, then the sensors, the
    /// alarms, the zones' memory, the closed links and the pending commands.
    pub async fn open(
        store: Store,
        network: Network,
        placed: Vec<PlacedNode>,
        initial_sensors: Vec<Sensor>,
        config: WaterConfig,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Water>> {
        let mut sensors: BTreeMap<String, SensorState> = BTreeMap::new();
        for state in store.sensors()? {
            if let Some(s) = &state.sensor {
                sensors.insert(s.id.clone(), state.clone());
            }
        }
        let metered = metered_links(sensors.values().filter_map(|s| s.sensor.as_ref()).chain(initial_sensors.iter()));
        let model = NetworkModel::build(network, placed, metered).map_err(anyhow::Error::msg)?;
        let alarms: BTreeMap<String, ActiveAlarm> =
            store.alarms()?.into_iter().map(|a| (a.raised.key.clone(), a)).collect();
        let memories: HashMap<String, ZoneMemory> = store.zones()?.into_iter().collect();
        let zones = model
            .zones
            .iter()
            .filter(|z| z.has_balance())
            .map(|z| {
                let mut memory = memories.get(&z.id).cloned().unwrap_or_else(|| ZoneMemory::new(config.leak));
                memory.detector.set_threshold(config.leak);
                ZoneBalance::new(z.clone(), memory)
            })
            .collect();
        let mut quality = QualityTracker::new(config.quality.clone());
        // Flags raised before the restart stay until the readings clear them.
        for alarm in alarms.values() {
            let (Some(flag), Some(subject)) = (
                alarm.raised.alarm_type.strip_prefix("sensor_").and_then(Flag::from_name),
                alarm.raised.key.rsplit('/').next(),
            ) else {
                continue;
            };
            quality.restore(subject, vec![flag], wall_seconds());
        }
        let pending: Vec<ValveCommand> =
            store.commands()?.into_iter().filter(|c| c.status == ValveCommandStatus::Pending as i32).collect();
        tracing::info!(
            sensors = sensors.len(),
            areas = model.dmas.len(),
            zones = model.zones.len(),
            alarms = alarms.len(),
            pending_commands = pending.len(),
            "water state restored"
        );
        let core = Arc::new(Water {
            store,
            config,
            state: Mutex::new(State {
                model,
                sensors,
                quality,
                zones,
                pressures: HashMap::new(),
                alarms,
                dirty_zones: BTreeSet::new(),
            }),
            controllers: Mutex::new(HashMap::new()),
            next_controller: std::sync::atomic::AtomicU64::new(0),
            shutdown,
        });
        if !initial_sensors.is_empty() {
            let answer = core.register(&initial_sensors).await.map_err(|s| anyhow::anyhow!(s.message().to_owned()))?;
            tracing::info!(registered = answer.registered, unchanged = answer.unchanged, "sensors of the layout file");
        }
        for command in pending {
            core.clone().expire_at_deadline(&command);
        }
        Ok(core)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn commit(&self) -> Result<(), Status> {
        Ok(self.store.commit().await?)
    }

    /// Registers or updates sensors (all or nothing). New flow sensors re-cut the areas.
    pub async fn register(&self, sensors: &[Sensor]) -> Result<RegisterSensorsResponse, Status> {
        if sensors.is_empty() {
            return Err(Status::invalid_argument("no sensors in the request"));
        }
        if sensors.len() > MAX_SENSORS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "{} sensors in one call; at most {MAX_SENSORS_PER_CALL}",
                sensors.len()
            )));
        }
        let mut response = RegisterSensorsResponse::default();
        {
            let mut state = self.state();
            let mut batch = WriteBatch::default();
            let mut seen = BTreeSet::new();
            let mut changed = Vec::new();
            for sensor in sensors {
                // Placing checks the id first (its length among the rest).
                let placed = state.model.place_sensor(sensor).map_err(Status::invalid_argument)?;
                if !seen.insert(sensor.id.clone()) {
                    return Err(Status::invalid_argument(format!("sensor {} appears twice in the request", sensor.id)));
                }
                if state.sensors.get(&placed.id).and_then(|s| s.sensor.as_ref()) == Some(&placed) {
                    response.unchanged += 1;
                    continue;
                }
                changed.push(placed);
            }
            let all = state
                .sensors
                .values()
                .filter_map(|s| s.sensor.as_ref())
                .filter(|s| !changed.iter().any(|c| c.id == s.id))
                .chain(changed.iter());
            let metered = metered_links(all);
            if metered != state.model.metered {
                self.recut(&mut state, metered)?;
                response.areas_changed = true;
                // Every sensor's area follows the new cut: the new ones, and those already known
                // whose area changed (stored again, not counted as registered).
                let replaced: Vec<Sensor> = changed
                    .iter()
                    .map(|s| state.model.place_sensor(s))
                    .collect::<Result<_, _>>()
                    .map_err(Status::invalid_argument)?;
                changed = replaced;
                let mut moved = Vec::new();
                for entry in state.sensors.values() {
                    let Some(known) = &entry.sensor else { continue };
                    if changed.iter().any(|c| c.id == known.id) {
                        continue;
                    }
                    let placed = state.model.place_sensor(known).map_err(Status::invalid_argument)?;
                    if &placed != known {
                        moved.push(placed);
                    }
                }
                for sensor in moved {
                    if let Some(entry) = state.sensors.get_mut(&sensor.id) {
                        entry.sensor = Some(sensor);
                        batch.sensors.push(entry.clone());
                    }
                }
            }
            for sensor in changed {
                let mut entry = state.sensors.remove(&sensor.id).unwrap_or_default();
                // Values of measures the sensor no longer reads go.
                entry.latest.retain(|v| sensor.measures.contains(&v.measure));
                entry.sensor = Some(sensor.clone());
                batch.sensors.push(entry.clone());
                state.sensors.insert(sensor.id.clone(), entry);
                response.registered += 1;
            }
            self.store.write(batch)?;
        }
        self.commit().await?;
        Ok(response)
    }

    /// Cuts the areas again for a new set of meters; zones keep their memory by id.
    fn recut(&self, state: &mut State, metered: Vec<String>) -> Result<(), Status> {
        state.model = NetworkModel::build(state.model.network.clone(), state.model.placed.clone(), metered)
            .map_err(Status::invalid_argument)?;
        let mut memories: HashMap<String, ZoneMemory> =
            std::mem::take(&mut state.zones).into_iter().map(|z| (z.def.id.clone(), z.memory)).collect();
        state.zones = state
            .model
            .zones
            .iter()
            .filter(|z| z.has_balance())
            .map(|z| {
                ZoneBalance::new(z.clone(), memories.remove(&z.id).unwrap_or_else(|| ZoneMemory::new(self.config.leak)))
            })
            .collect();
        tracing::info!(areas = state.model.dmas.len(), zones = state.zones.len(), meters = ?state.model.metered, "district metered areas cut again");
        Ok(())
    }

    pub fn sensors(&self, commune: &str) -> Vec<SensorState> {
        let state = self.state();
        let mut out: Vec<SensorState> = state
            .sensors
            .values()
            .filter(|s| commune.is_empty() || s.sensor.as_ref().is_some_and(|s| s.commune == commune))
            .cloned()
            .collect();
        for s in &mut out {
            s.flags = sensor_flags(&state, s);
        }
        out
    }

    pub fn dmas(&self) -> (Vec<proto::water::Dma>, String) {
        let state = self.state();
        let dmas = (0..state.model.dmas.len()).map(|k| state.model.dma_proto(k)).collect();
        // Readings' flows are in m³/h whatever the model's unit.
        (dmas, Measure::Flow.unit().to_owned())
    }

    /// Records one reading (not yet committed).
    pub fn record_reading(&self, reading: Reading) -> Result<(), Status> {
        // Echoed in refusals: never more than an id's length.
        let shown: String = reading.sensor_id.chars().take(proto::ids::AssetId::MAX_LEN).collect();
        let refuse = |message: String| Status::invalid_argument(format!("sensor {shown:?}: {message}"));
        let measure = quality::check(&reading.measure, &reading.unit, reading.value).map_err(refuse)?;
        let observed = reading.observed_at.ok_or_else(|| refuse("observed_at is missing".into()))?;
        let at_time = SystemTime::try_from(observed).map_err(|_| refuse("observed_at is not a valid time".into()))?;
        if at_time > SystemTime::now() + MAX_FUTURE {
            return Err(refuse("observed_at is in the future".into()));
        }
        if at_time < SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800) {
            return Err(refuse("observed_at is before 2000".into()));
        }
        let at = observed.seconds;
        let mut state = self.state();
        let state = &mut *state;
        let entry = state
            .sensors
            .get(&reading.sensor_id)
            .cloned()
            .ok_or_else(|| Status::invalid_argument(format!("unknown sensor {shown:?}")))?;
        let sensor = entry.sensor.clone().unwrap_or_default();
        if !sensor.measures.contains(&reading.measure) {
            return Err(Status::invalid_argument(format!(
                "sensor {} does not read {} (it reads {})",
                sensor.id,
                reading.measure,
                sensor.measures.join(", ")
            )));
        }
        let key = series_key(&sensor.id, measure);
        let (usable, flag_changes) =
            state.quality.observe(&key, measure, reading.value, at.max(0) as u64, wall_seconds());
        let mut batch = WriteBatch::default();
        let mut changes = flag_alarms(state, &sensor, measure, flag_changes)?;
        let mut entry = entry;
        let newer = entry
            .latest
            .iter()
            .find(|v| v.measure == reading.measure)
            .is_none_or(|v| v.observed_at.is_none_or(|t| t.seconds <= at));
        if newer {
            entry.latest.retain(|v| v.measure != reading.measure);
            entry.latest.push(MeasureValue {
                measure: reading.measure.clone(),
                value: reading.value,
                unit: reading.unit.clone(),
                observed_at: Some(observed),
            });
            entry.latest.sort_by(|a, b| a.measure.cmp(&b.measure));
        }
        if usable && newer {
            changes.extend(self.apply_rules(state, &sensor, measure, reading.value, at, &mut batch)?);
        }
        entry.flags = Vec::new();
        state.sensors.insert(sensor.id.clone(), entry.clone());
        let flags = sensor_flags(state, &entry);
        let commune = CommuneId::parse(&sensor.commune).map_err(internal)?;
        let asset = AssetId::parse(&sensor.id).map_err(internal)?;
        batch.events.push(checked(event::new_event(
            &commune,
            &asset,
            observed,
            sensor.position,
            Payload::WaterReading(WaterReadingObserved {
                reading: Some(reading),
                dma: sensor.dma.clone(),
                flags,
                element_id: sensor.element_id.clone(),
            }),
        ))?);
        batch.sensors.push(entry);
        self.announce(state, changes, observed, &mut batch)?;
        self.store.write(batch)?;
        Ok(())
    }

    /// The rules a usable reading feeds.
    fn apply_rules(
        &self,
        state: &mut State,
        sensor: &Sensor,
        measure: Measure,
        value: f64,
        at: i64,
        batch: &mut WriteBatch,
    ) -> Result<Vec<AlarmChange>, Status> {
        let mut changes = Vec::new();
        match measure {
            Measure::Pressure => {
                state.pressures.entry(sensor.id.clone()).or_default().push(at, value, PRESSURE_KEEP_S);
            }
            Measure::Flow => {
                let night = self.config.night.clone();
                for k in 0..state.zones.len() {
                    let zone = &mut state.zones[k];
                    if !zone.def.meters.iter().any(|(l, _)| *l == sensor.element_id) {
                        continue;
                    }
                    let closed = zone.flow(&sensor.element_id, at, value, &night);
                    let zone_id = zone.def.id.clone();
                    state.dirty_zones.insert(zone_id.clone());
                    if let Some((night_flow, signal)) = closed {
                        tracing::info!(zone = %zone_id, night = %night_flow.date, flow = night_flow.night_flow, baseline = ?night_flow.baseline, "night flow");
                        if let Some(signal) = signal {
                            changes.extend(leak_change(state, k, &night_flow, signal)?);
                        }
                    }
                    batch.zones.push((zone_id, state.zones[k].memory.clone()));
                }
            }
            Measure::Level => {
                let night = self.config.night.clone();
                for zone in state.zones.iter_mut().filter(|z| z.def.tanks.iter().any(|(t, _)| *t == sensor.element_id))
                {
                    zone.level(&sensor.element_id, at, value, &night);
                    batch.zones.push((zone.def.id.clone(), zone.memory.clone()));
                }
                let range = state.model.network.node(&sensor.element_id).and_then(|n| n.tank_levels_m);
                if let Some(range) = range {
                    let low = alarm_key("tank_low", &sensor.id);
                    let high = alarm_key("tank_high", &sensor.id);
                    let previous = if state.alarms.contains_key(&low) {
                        TankState::Low
                    } else if state.alarms.contains_key(&high) {
                        TankState::High
                    } else {
                        TankState::Normal
                    };
                    let now = rules::tank_state(value, range, previous);
                    if now != previous {
                        for (was, key) in [(TankState::Low, &low), (TankState::High, &high)] {
                            if previous == was {
                                changes.extend(clear(state, key, "level back within range"));
                            }
                        }
                        let details = [
                            ("level_m", format!("{value:.2}")),
                            ("min_m", format!("{:.2}", range.0)),
                            ("max_m", format!("{:.2}", range.1)),
                        ];
                        match now {
                            TankState::Low => changes.push(raise(sensor, &low, "tank_low", Severity::Major, &details)?),
                            TankState::High => {
                                changes.push(raise(sensor, &high, "tank_high", Severity::Minor, &details)?)
                            }
                            TankState::Normal => {}
                        }
                    }
                }
            }
            Measure::FreeChlorine | Measure::Turbidity | Measure::Ph | Measure::Conductivity | Measure::Temperature => {
                let key = alarm_key("quality_breach", &series_key(&sensor.id, measure));
                let breached = state.alarms.contains_key(&key);
                match rules::quality_breach(measure, value, breached) {
                    Some(breach) => {
                        let details = [
                            ("measure", measure.name().to_owned()),
                            ("value", format!("{value}")),
                            ("unit", measure.unit().to_owned()),
                            ("side", breach.side.to_owned()),
                            ("limit", format!("{}", breach.limit)),
                        ];
                        // Raised once; the value it started at stays in the alarm.
                        if !breached {
                            changes.push(raise(sensor, &key, "quality_breach", Severity::Major, &details)?);
                        }
                    }
                    None if breached => changes.extend(clear(state, &key, "back within the drinking-water limits")),
                    None => {}
                }
            }
        }
        Ok(changes)
    }

    /// Applies alarm changes to the state and adds them (and their events) to the batch.
    fn announce(
        &self,
        state: &mut State,
        changes: Vec<AlarmChange>,
        at: prost_types::Timestamp,
        batch: &mut WriteBatch,
    ) -> Result<(), Status> {
        for change in &changes {
            match change {
                AlarmChange::Raised(a) => {
                    tracing::info!(key = %a.raised.key, "alarm raised");
                    state.alarms.insert(a.raised.key.clone(), a.clone());
                }
                AlarmChange::Cleared { cleared, .. } => {
                    tracing::info!(key = %cleared.key, reason = %cleared.reason, "alarm cleared");
                    state.alarms.remove(&cleared.key);
                }
            }
        }
        let mut ops: Vec<AlarmOp> = Vec::new();
        runtime::alarms::announce(changes, &PAYLOADS, at, &mut batch.events, &mut ops).map_err(internal)?;
        batch.alarms.extend(ops);
        Ok(())
    }

    /// The burst rule over the zones that got new samples, then a commit. Called after each group
    /// of readings.
    pub async fn settle(&self) -> Result<(), Status> {
        {
            let mut state = self.state();
            let state = &mut *state;
            let mut batch = WriteBatch::default();
            let dirty = std::mem::take(&mut state.dirty_zones);
            let mut at = None;
            for zone_id in dirty {
                let Some(k) = state.zones.iter().position(|z| z.def.id == zone_id) else { continue };
                if let Some((t, changes)) = self.burst_rule(state, k)? {
                    at = Some(t);
                    batch.zones.push((zone_id.clone(), state.zones[k].memory.clone()));
                    self.announce(state, changes, prost_types::Timestamp { seconds: t, nanos: 0 }, &mut batch)?;
                }
            }
            if at.is_some() {
                self.store.write(batch)?;
            }
        }
        self.commit().await
    }

    /// A burst: within the window, a pressure sensor of the zone fell and the zone's inflow rose.
    /// It clears once the inflow falls back as abruptly (the segment isolated or repaired).
    fn burst_rule(&self, state: &mut State, k: usize) -> Result<Option<(i64, Vec<AlarmChange>)>, Status> {
        let window = self.config.burst_window_s;
        let c = &self.config.burst;
        let zone = &state.zones[k];
        let zone_id = zone.def.id.clone();
        let key = alarm_key("burst", &zone_id);
        if let Some(burst) = &zone.memory.burst {
            if zones::burst_is_over(&zone.inflow, burst, window, c) {
                let at = zone.inflow.latest().map_or(burst.since, |(t, _)| t);
                state.zones[k].memory.burst = None;
                let reason = "the zone's inflow fell back: the burst is isolated or repaired";
                return Ok(Some((at, clear(state, &key, reason).into_iter().collect())));
            }
            return Ok(None);
        }
        let dmas = zone.def.dmas.clone();
        let in_zone =
            |id: &String| state.sensors.get(id).and_then(|s| s.sensor.as_ref()).is_some_and(|s| dmas.contains(&s.dma));
        let pressures = state.pressures.iter().filter(|(id, _)| in_zone(id));
        let Some(found) = zones::find_burst(&zone.inflow, pressures, window, c) else { return Ok(None) };
        let Some(sensor) = state.sensors.get(&found.sensor).and_then(|s| s.sensor.clone()) else { return Ok(None) };
        // What to close is proposed with the alarm: the pipes meeting where pressure fell, of the
        // alarm's commune only (its operators may operate those; another commune's pipes are not
        // theirs to learn of).
        let alarm_commune = zone_commune(state, &zone_id).map_or_else(|| sensor.commune.clone(), |c| c.to_string());
        let in_commune =
            |link: &str| state.model.place_element(link).is_ok_and(|(commune, _, _)| commune.as_str() == alarm_commune);
        let (isolation, elsewhere) = state.model.isolation_set(&sensor.element_id, in_commune);
        let isolation = isolation.join(", ");
        state.zones[k].memory.burst = Some(BurstState {
            sensor: found.sensor.clone(),
            since: found.at,
            reference_inflow: found.inflow_before,
            reference_pressure: found.pressure_before,
            pressure_drop_m: found.pressure_drop_m,
            inflow_rise: found.inflow_rise,
        });
        let mut alarm = raise(
            &sensor,
            &key,
            "burst",
            Severity::Critical,
            &[
                ("zone", zone_id.clone()),
                ("dmas", dmas.join(", ")),
                ("sensor", found.sensor.clone()),
                ("pressure_drop_m", format!("{:.1}", found.pressure_drop_m)),
                ("inflow_rise", format!("{:.1}", found.inflow_rise)),
                ("window_min", format!("{}", window / 60)),
                (proto::water::ISOLATION_DETAIL, isolation),
                // Pipes there of another commune: not proposed (not this commune's to operate),
                // but the operator is told that the proposal is not the whole junction.
                (proto::water::ISOLATION_ELSEWHERE_DETAIL, elsewhere.to_string()),
            ],
        )?;
        // A zone-wide alarm belongs to the zone's commune.
        if let (AlarmChange::Raised(a), Some(commune)) = (&mut alarm, zone_commune(state, &zone_id)) {
            a.commune = commune;
        }
        Ok(Some((found.at, vec![alarm])))
    }

    /// Periodic work: sensors gone silent (nothing received for too long).
    pub async fn tick(&self) -> Result<(), Status> {
        {
            let mut state = self.state();
            let state = &mut *state;
            let now = wall_seconds();
            let flag_changes = state.quality.silent(now);
            if flag_changes.is_empty() {
                return Ok(());
            }
            let mut changes = Vec::new();
            for change in flag_changes {
                let key = match &change {
                    FlagChange::Raised { sensor, .. } | FlagChange::Cleared { sensor, .. } => sensor.clone(),
                };
                let Some((sensor_id, measure)) = key.split_once(':') else { continue };
                let (Some(sensor), Some(measure)) =
                    (state.sensors.get(sensor_id).and_then(|s| s.sensor.clone()), Measure::from_name(measure))
                else {
                    continue;
                };
                changes.extend(flag_alarms(state, &sensor, measure, vec![change])?);
            }
            let mut batch = WriteBatch::default();
            self.announce(state, changes, event::timestamp(SystemTime::now()), &mut batch)?;
            self.store.write(batch)?;
        }
        self.commit().await
    }

    /// KPIs of one commune, or of every commune with sensors.
    pub fn kpis(&self, commune: Option<&CommuneId>, now: SystemTime) -> Vec<WaterKpi> {
        let state = self.state();
        let mut by_commune: BTreeMap<String, WaterKpi> = BTreeMap::new();
        let entry = |map: &mut BTreeMap<String, WaterKpi>, c: &str| -> Option<()> {
            if commune.is_some_and(|wanted| wanted.as_str() != c) || c.is_empty() {
                return None;
            }
            map.entry(c.to_owned()).or_insert_with(|| WaterKpi {
                commune: c.to_owned(),
                at: Some(event::timestamp(now)),
                ..Default::default()
            });
            Some(())
        };
        for s in state.sensors.values() {
            let Some(sensor) = &s.sensor else { continue };
            if entry(&mut by_commune, &sensor.commune).is_none() {
                continue;
            }
            let kpi = by_commune.get_mut(&sensor.commune).expect("inserted above");
            kpi.sensors_total += 1;
            if !sensor_flags(&state, s).is_empty() {
                kpi.sensors_flagged += 1;
            }
        }
        for alarm in state.alarms.values() {
            let c = alarm.commune.to_string();
            if entry(&mut by_commune, &c).is_none() {
                continue;
            }
            let kpi = by_commune.get_mut(&c).expect("inserted above");
            match alarm.raised.alarm_type.as_str() {
                "leak_suspected" => kpi.active_leaks += 1,
                "burst" => kpi.active_bursts += 1,
                "quality_breach" => kpi.quality_breaches += 1,
                _ => {}
            }
        }
        for zone in &state.zones {
            let Some(c) = zone_commune(&state, &zone.def.id).map(|c| c.to_string()) else { continue };
            if entry(&mut by_commune, &c).is_none() {
                continue;
            }
            if let Some(night) = &zone.memory.last_night {
                let kpi = by_commune.get_mut(&c).expect("inserted above");
                kpi.zones.push(ZoneNightFlow {
                    zone: zone.def.id.clone(),
                    dmas: zone.def.dmas.clone(),
                    night_of: night.date.clone(),
                    night_flow: night.night_flow,
                    baseline: zone.memory.detector.baseline(night.weekday).unwrap_or_default(),
                    unit: "m3/h".into(),
                });
            }
        }
        by_commune.into_values().collect()
    }

    /// Publishes every commune's KPIs.
    pub async fn publish_kpis(&self, now: SystemTime) -> Result<(), Status> {
        let mut batch = WriteBatch::default();
        for kpi in self.kpis(None, now) {
            let commune = CommuneId::parse(&kpi.commune).map_err(internal)?;
            let asset = AssetId::parse(&kpi.commune).map_err(internal)?;
            batch.events.push(checked(event::new_event(
                &commune,
                &asset,
                event::timestamp(now),
                None,
                Payload::WaterKpi(kpi),
            ))?);
        }
        if batch.events.is_empty() {
            return Ok(());
        }
        self.store.write(batch)?;
        self.commit().await
    }

    // Valve commands.

    /// Accepts a valve command: durable and pending on return, then sent to the controllers.
    pub async fn send_valve_command(
        self: &Arc<Self>,
        request: &SendValveCommandRequest,
    ) -> Result<ValveCommand, Status> {
        let by = request.requested_by.trim();
        if by.is_empty() || by.chars().count() > 64 || by.chars().any(char::is_control) {
            return Err(Status::invalid_argument("requested_by is required: 1 to 64 characters of text"));
        }
        if request.reason.chars().count() > MAX_REASON_CHARS
            || request.reason.chars().any(|c| c.is_control() && c != '\n')
        {
            return Err(Status::invalid_argument(format!("reason: at most {MAX_REASON_CHARS} characters of text")));
        }
        let action = match ValveAction::try_from(request.action) {
            Ok(ValveAction::Close) => ValveAction::Close,
            Ok(ValveAction::Open) => ValveAction::Open,
            _ => return Err(Status::invalid_argument("action must be VALVE_ACTION_CLOSE or VALVE_ACTION_OPEN")),
        };
        let timeout_s = match request.timeout_s {
            0 => 300,
            t if t > 86_400 => return Err(Status::invalid_argument("timeout_s: at most 86,400 seconds")),
            t => t,
        };
        let command = {
            let state = self.state();
            // A link outside the requester's communes is, to the requester, not in the network:
            // the answer an unknown link gets (neither its commune nor its kind is told).
            let outside = state.model.place_element(&request.link_id).is_ok_and(|(commune, _, _)| {
                !request.allowed_communes.is_empty() && !request.allowed_communes.iter().any(|a| a == commune.as_str())
            });
            if outside {
                return Err(Status::invalid_argument(crate::model::not_in_network(&request.link_id)));
            }
            state.model.operable(&request.link_id).map_err(Status::invalid_argument)?;
            let (commune, _, dma) = state.model.place_element(&request.link_id).map_err(Status::invalid_argument)?;
            let now = SystemTime::now();
            ValveCommand {
                id: uuid::Uuid::now_v7().to_string(),
                commune: commune.to_string(),
                link_id: request.link_id.clone(),
                action: action as i32,
                requested_by: by.to_owned(),
                reason: request.reason.clone(),
                requested_at: Some(event::timestamp(now)),
                updated_at: Some(event::timestamp(now)),
                deadline: Some(event::timestamp(now + Duration::from_secs(u64::from(timeout_s)))),
                status: ValveCommandStatus::Pending as i32,
                failure: String::new(),
                applied_by: String::new(),
                dma,
            }
        };
        self.save_command(&command, None).await?;
        tracing::info!(command = %command.id, link = %command.link_id, action = ?action, by = %command.requested_by, "valve command pending");
        self.dispatch(&command);
        self.clone().expire_at_deadline(&command);
        Ok(command)
    }

    pub fn command(&self, id: &str) -> Result<ValveCommand, Status> {
        self.store.command(id)?.ok_or_else(|| Status::not_found(format!("valve command {id} does not exist")))
    }

    async fn save_command(&self, command: &ValveCommand, link: Option<(String, bool)>) -> Result<(), Status> {
        let commune = CommuneId::parse(&command.commune).map_err(internal)?;
        let asset = AssetId::parse(&command.id).map_err(internal)?;
        let mut batch = WriteBatch::default();
        batch.events.push(checked(event::new_event(
            &commune,
            &asset,
            command.updated_at.unwrap_or_else(|| event::timestamp(SystemTime::now())),
            None,
            Payload::ValveCommand(command.clone()),
        ))?);
        batch.commands.push(command.clone());
        batch.links.extend(link);
        self.store.write(batch)?;
        self.commit().await
    }

    fn instruction(command: &ValveCommand) -> ValveInstruction {
        ValveInstruction {
            command_id: command.id.clone(),
            link_id: command.link_id.clone(),
            action: command.action,
            deadline: command.deadline,
        }
    }

    fn dispatch(&self, command: &ValveCommand) {
        let controllers = self.controllers.lock().unwrap_or_else(|p| p.into_inner());
        if controllers.is_empty() {
            tracing::warn!(command = %command.id, "no valve controller connected; the command waits until its deadline");
        }
        for (id, sender) in controllers.iter() {
            if let Err(e) = sender.try_send(Ok(Self::instruction(command))) {
                tracing::warn!(controller = id, error = %e, "valve controller not keeping up; instruction dropped (sent again when it reconnects)");
            }
        }
    }

    /// A controller connected: it gets every pending instruction, then the new ones.
    pub fn connect(&self, sender: InstructionSender) -> Result<u64, Status> {
        let id = self.next_controller.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for command in self.store.commands()?.iter().filter(|c| c.status == ValveCommandStatus::Pending as i32) {
            let _ = sender.try_send(Ok(Self::instruction(command)));
        }
        self.controllers.lock().unwrap_or_else(|p| p.into_inner()).insert(id, sender);
        Ok(id)
    }

    pub fn disconnect(&self, id: u64) {
        self.controllers.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// What a controller reports. A result for a command no longer pending is ignored.
    pub async fn valve_result(&self, controller: &str, result: &ValveResult) -> Result<(), Status> {
        let id =
            AssetId::parse_as("command id", &result.command_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let Some(mut command) = self.store.command(id.as_str())? else {
            return Err(Status::not_found(format!("valve command {id} does not exist")));
        };
        if command.status != ValveCommandStatus::Pending as i32 {
            return Ok(());
        }
        command.updated_at = Some(event::timestamp(SystemTime::now()));
        command.applied_by = controller.chars().filter(|c| !c.is_control()).take(64).collect();
        let link = if result.applied {
            command.status = ValveCommandStatus::Applied as i32;
            Some((command.link_id.clone(), command.action == ValveAction::Close as i32))
        } else {
            command.status = ValveCommandStatus::Failed as i32;
            let reason: String = result.reason.chars().filter(|c| !c.is_control()).take(MAX_REASON_CHARS).collect();
            command.failure = if reason.is_empty() { "refused by the field unit".into() } else { reason };
            None
        };
        tracing::info!(command = %command.id, status = command.status, "valve command result");
        self.save_command(&command, link).await
    }

    fn expire_at_deadline(self: Arc<Self>, command: &ValveCommand) {
        let id = command.id.clone();
        let wait = command
            .deadline
            .and_then(|d| SystemTime::try_from(d).ok())
            .and_then(|d| d.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::ZERO);
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return,
            }
            let expired = async {
                let Some(mut command) = self.store.command(&id)? else { return Ok(()) };
                if command.status != ValveCommandStatus::Pending as i32 {
                    return Ok(());
                }
                command.status = ValveCommandStatus::Failed as i32;
                command.updated_at = Some(event::timestamp(SystemTime::now()));
                command.failure = if self.controllers.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                    "no valve controller connected before the deadline".into()
                } else {
                    "not confirmed by the field before the deadline".into()
                };
                self.save_command(&command, None).await
            };
            if let Err(e) = expired.await {
                tracing::error!(command = %id, error = %e, "could not record the command's expiry");
            }
        });
    }
}

/// The links metered by flow sensors, sorted.
fn metered_links<'a>(sensors: impl Iterator<Item = &'a Sensor>) -> Vec<String> {
    let set: BTreeSet<String> = sensors
        .filter(|s| s.measures.iter().any(|m| m == Measure::Flow.name()))
        .map(|s| s.element_id.clone())
        .collect();
    set.into_iter().collect()
}

/// A sensor's flags: those of its measures.
fn sensor_flags(state: &State, entry: &SensorState) -> Vec<String> {
    let Some(sensor) = &entry.sensor else { return Vec::new() };
    let mut flags: BTreeSet<&'static str> = BTreeSet::new();
    for name in &sensor.measures {
        if let Some(m) = Measure::from_name(name) {
            flags.extend(state.quality.flags(&series_key(&sensor.id, m)).iter().map(|f| f.name()));
        }
    }
    flags.into_iter().map(str::to_owned).collect()
}

fn zone_commune(state: &State, zone: &str) -> Option<CommuneId> {
    state.model.zones.iter().find(|z| z.id == zone).and_then(|z| state.model.zone_commune(z))
}

fn raise(
    sensor: &Sensor,
    key: &str,
    alarm_type: &str,
    severity: Severity,
    details: &[(&str, String)],
) -> Result<AlarmChange, Status> {
    Ok(AlarmChange::Raised(ActiveAlarm {
        commune: CommuneId::parse(&sensor.commune).map_err(internal)?,
        asset: AssetId::parse(&sensor.id).map_err(internal)?,
        position: sensor.position,
        raised: AlarmRaised {
            key: key.to_owned(),
            alarm_type: alarm_type.to_owned(),
            severity: severity as i32,
            asset_ids: vec![sensor.id.clone()],
            details: details.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
        },
    }))
}

fn clear(state: &State, key: &str, reason: &str) -> Option<AlarmChange> {
    let alarm = state.alarms.get(key)?.clone();
    let cleared =
        AlarmCleared { key: key.to_owned(), alarm_type: alarm.raised.alarm_type.clone(), reason: reason.to_owned() };
    Some(AlarmChange::Cleared { alarm, cleared })
}

/// Data-quality flags become warnings on the sensor, one per measure and flag.
fn flag_alarms(
    state: &State,
    sensor: &Sensor,
    measure: Measure,
    changes: Vec<FlagChange>,
) -> Result<Vec<AlarmChange>, Status> {
    let mut out = Vec::new();
    for change in changes {
        match change {
            FlagChange::Raised { flag, .. } => {
                let key = alarm_key(&format!("sensor_{}", flag.name()), &series_key(&sensor.id, measure));
                out.push(raise(
                    sensor,
                    &key,
                    &format!("sensor_{}", flag.name()),
                    Severity::Warning,
                    &[("measure", measure.name().to_owned())],
                )?);
            }
            FlagChange::Cleared { flag, .. } => {
                let key = alarm_key(&format!("sensor_{}", flag.name()), &series_key(&sensor.id, measure));
                out.extend(clear(state, &key, "the sensor reads plausibly again"));
            }
        }
    }
    Ok(out)
}

/// A zone's leak alarm, raised (again) or cleared on a night's signal.
fn leak_change(
    state: &State,
    k: usize,
    night: &crate::zones::NightFlow,
    signal: LeakSignal,
) -> Result<Vec<AlarmChange>, Status> {
    let zone = &state.zones[k];
    let key = alarm_key("leak_suspected", &zone.def.id);
    match signal {
        LeakSignal::Cleared => Ok(clear(state, &key, "night flow back to its baseline").into_iter().collect()),
        LeakSignal::Suspected { excess } => {
            let Some(commune) = zone_commune(state, &zone.def.id) else { return Ok(Vec::new()) };
            let Some(dma) = state.model.dma_index(&zone.def.id) else { return Ok(Vec::new()) };
            let hull = state.model.dma_proto(dma).hull;
            let position = (!hull.is_empty()).then(|| Position {
                lat: hull.iter().map(|p| p.lat).sum::<f64>() / hull.len() as f64,
                lon: hull.iter().map(|p| p.lon).sum::<f64>() / hull.len() as f64,
            });
            Ok(vec![AlarmChange::Raised(ActiveAlarm {
                commune,
                asset: AssetId::parse(&zone.def.id).map_err(internal)?,
                position,
                raised: AlarmRaised {
                    key,
                    alarm_type: "leak_suspected".into(),
                    severity: Severity::Major as i32,
                    asset_ids: zone.def.dmas.clone(),
                    details: [
                        ("zone", zone.def.id.clone()),
                        ("dmas", zone.def.dmas.join(", ")),
                        ("night_of", night.date.clone()),
                        ("night_flow", format!("{:.1}", night.night_flow)),
                        ("baseline", night.baseline.map(|b| format!("{b:.1}")).unwrap_or_default()),
                        ("excess", format!("{excess:.1}")),
                        ("unit", "m3/h".to_owned()),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
                },
            })])
        }
    }
}
