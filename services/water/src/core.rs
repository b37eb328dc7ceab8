//! The service's core: sensors, and readings through their data-quality checks into the rules
//! (tank levels, drinking-water quality, the zones' night flow and bursts) and their alarms. Each
//! change is written with its events by the store, in the order the rules saw it (one lock around
//! both). Valve commands are in `valves`, the KPIs in `kpi`, the alarms built in `alarms`.

use proto::event;
use proto::ids::{AssetId, CommuneId};
use proto::v1::event::Payload;
use proto::water::{
    MeasureValue, Reading, RegisterSensorsResponse, Sensor, SensorState, ValveCommand, ValveCommandStatus,
    WaterReadingObserved,
};
use runtime::alarms::{ActiveAlarm, AlarmChange, AlarmOp, AlarmPayloads};
use runtime::error::Error;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

use crate::alarms;
use crate::domain::{self, MAX_SENSORS_PER_CALL, metered_links, series_key};
use crate::leaks::LeakThreshold;
use crate::model::NetworkModel;
use crate::network::Network;
use crate::placement::PlacedNode;
use crate::quality::{Flag, FlagChange, Measure, QualityConfig, QualityTracker};
use crate::rules::BurstConfig;
use crate::store::{Store, WriteBatch};
use crate::valves::{self, ValveDesk};
use crate::zones::{NightWindow, Series, ZoneBalance, ZoneMemory};

const PAYLOADS: AlarmPayloads =
    AlarmPayloads { raised: Payload::WaterAlarmRaised, cleared: Payload::WaterAlarmCleared };

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

fn wall_seconds() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) struct State {
    pub(crate) model: NetworkModel,
    pub(crate) sensors: BTreeMap<String, SensorState>,
    pub(crate) quality: QualityTracker,
    pub(crate) zones: Vec<ZoneBalance>,
    /// Usable pressure readings per sensor, for the burst rule.
    pub(crate) pressures: HashMap<String, Series>,
    pub(crate) alarms: BTreeMap<String, ActiveAlarm>,
    /// Zones with new inflow samples since the burst rule last looked.
    pub(crate) dirty_zones: BTreeSet<String>,
}

pub struct Water {
    pub(crate) store: Store,
    config: WaterConfig,
    state: Mutex<State>,
    pub(crate) desk: Arc<ValveDesk>,
    pub(crate) shutdown: CancellationToken,
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
        let desk = valves::new_desk();
        desk.restore(pending.iter().map(|c| (c.id.clone(), c.clone())));
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
            desk: Arc::new(desk),
            shutdown,
        });
        if !initial_sensors.is_empty() {
            let answer = core.register(&initial_sensors).await?;
            tracing::info!(registered = answer.registered, unchanged = answer.unchanged, "sensors of the layout file");
        }
        for command in pending {
            core.clone().expire_at_deadline(&command);
        }
        Ok(core)
    }

    /// The valve desk, for a controller's session.
    pub fn desk(&self) -> Arc<ValveDesk> {
        self.desk.clone()
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn flush(&self) -> Result<(), Error> {
        Ok(self.store.flush().await?)
    }

    /// Registers or updates sensors (all or nothing). New flow sensors re-cut the areas.
    pub async fn register(&self, sensors: &[Sensor]) -> Result<RegisterSensorsResponse, Error> {
        if sensors.is_empty() {
            return Err(Error::invalid("no sensors in the request"));
        }
        if sensors.len() > MAX_SENSORS_PER_CALL {
            return Err(Error::invalid(format!(
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
                let placed = state.model.place_sensor(sensor).map_err(Error::invalid)?;
                if !seen.insert(sensor.id.clone()) {
                    return Err(Error::invalid(format!("sensor {} appears twice in the request", sensor.id)));
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
                    .map_err(Error::invalid)?;
                changed = replaced;
                let mut moved = Vec::new();
                for entry in state.sensors.values() {
                    let Some(known) = &entry.sensor else { continue };
                    if changed.iter().any(|c| c.id == known.id) {
                        continue;
                    }
                    let placed = state.model.place_sensor(known).map_err(Error::invalid)?;
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
        self.flush().await?;
        Ok(response)
    }

    /// Cuts the areas again for a new set of meters; zones keep their memory by id.
    fn recut(&self, state: &mut State, metered: Vec<String>) -> Result<(), Error> {
        state.model = NetworkModel::build(state.model.network.clone(), state.model.placed.clone(), metered)
            .map_err(Error::invalid)?;
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
    pub fn record_reading(&self, reading: Reading) -> Result<(), Error> {
        let checked = domain::check_reading(&reading, SystemTime::now()).map_err(Error::invalid)?;
        let (measure, observed) = (checked.measure, checked.observed_at);
        // Echoed in refusals: never more than an id's length.
        let shown: String = reading.sensor_id.chars().take(proto::ids::AssetId::MAX_LEN).collect();
        let at = observed.seconds;
        let mut state = self.state();
        let state = &mut *state;
        let entry = state
            .sensors
            .get(&reading.sensor_id)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("unknown sensor {shown:?}")))?;
        let sensor = entry.sensor.clone().unwrap_or_default();
        if !sensor.measures.contains(&reading.measure) {
            return Err(Error::invalid(format!(
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
        let mut changes = alarms::flag_alarms(state, &sensor, measure, flag_changes)?;
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
        let commune = CommuneId::parse(&sensor.commune).map_err(Error::internal)?;
        let asset = AssetId::parse(&sensor.id).map_err(Error::internal)?;
        batch.events.push(event::check(event::new_event(
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
    ) -> Result<Vec<AlarmChange>, Error> {
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
                            changes.extend(alarms::leak_change(state, k, &night_flow, signal)?);
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
                changes.extend(alarms::tank_level(state, sensor, value)?);
            }
            Measure::FreeChlorine | Measure::Turbidity | Measure::Ph | Measure::Conductivity | Measure::Temperature => {
                changes.extend(alarms::drinking_water_quality(state, sensor, measure, value)?);
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
    ) -> Result<(), Error> {
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
        runtime::alarms::announce(changes, &PAYLOADS, at, &mut batch.events, &mut ops)?;
        batch.alarms.extend(ops);
        Ok(())
    }

    /// The burst rule over the zones that got new samples, then a commit. Called after each group
    /// of readings.
    pub async fn settle(&self) -> Result<(), Error> {
        {
            let mut state = self.state();
            let state = &mut *state;
            let mut batch = WriteBatch::default();
            let dirty = std::mem::take(&mut state.dirty_zones);
            let mut at = None;
            for zone_id in dirty {
                let Some(k) = state.zones.iter().position(|z| z.def.id == zone_id) else { continue };
                if let Some((t, changes)) = alarms::burst(state, k, &self.config)? {
                    at = Some(t);
                    batch.zones.push((zone_id.clone(), state.zones[k].memory.clone()));
                    self.announce(state, changes, prost_types::Timestamp { seconds: t, nanos: 0 }, &mut batch)?;
                }
            }
            if at.is_some() {
                self.store.write(batch)?;
            }
        }
        self.flush().await
    }

    /// Periodic work: sensors gone silent (nothing received for too long).
    pub async fn tick(&self) -> Result<(), Error> {
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
                changes.extend(alarms::flag_alarms(state, &sensor, measure, vec![change])?);
            }
            let mut batch = WriteBatch::default();
            self.announce(state, changes, event::timestamp(SystemTime::now()), &mut batch)?;
            self.store.write(batch)?;
        }
        self.flush().await
    }
}

/// A sensor's flags: those of its measures.
pub(crate) fn sensor_flags(state: &State, entry: &SensorState) -> Vec<String> {
    let Some(sensor) = &entry.sensor else { return Vec::new() };
    let mut flags: BTreeSet<&'static str> = BTreeSet::new();
    for name in &sensor.measures {
        if let Some(m) = Measure::from_name(name) {
            flags.extend(state.quality.flags(&series_key(&sensor.id, m)).iter().map(|f| f.name()));
        }
    }
    flags.into_iter().map(str::to_owned).collect()
}

pub(crate) fn zone_commune(state: &State, zone: &str) -> Option<CommuneId> {
    state.model.zones.iter().find(|z| z.id == zone).and_then(|z| state.model.zone_commune(z))
}
