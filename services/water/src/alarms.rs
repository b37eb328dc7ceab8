//! The water service's alarms, built from what the rules found: a tank's level out of its range,
//! drinking water out of its limits, a sensor's data-quality flags, a zone's night-flow leak and a
//! burst. Each function reads the state and returns the alarm changes; the core applies them
//! and writes them with their events (`core::announce`).

use proto::ids::{AssetId, CommuneId};
use proto::v1::{AlarmCleared, AlarmRaised, Position, Severity};
use proto::water::Sensor;
use runtime::alarms::{ActiveAlarm, AlarmChange};
use runtime::error::Error;

use crate::core::{State, WaterConfig, zone_commune};
use crate::domain::series_key;
use crate::leaks::LeakSignal;
use crate::quality::{FlagChange, Measure};
use crate::rules::{self, TankState};
use crate::zones::{self, BurstState};

/// A tank's level against its range: low (major) or high (minor), with hysteresis.
pub(crate) fn tank_level(state: &State, sensor: &Sensor, value: f64) -> Result<Vec<AlarmChange>, Error> {
    let mut changes = Vec::new();
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
                TankState::High => changes.push(raise(sensor, &high, "tank_high", Severity::Minor, &details)?),
                TankState::Normal => {}
            }
        }
    }
    Ok(changes)
}

/// A quality measure against the French drinking-water references: raised once (the value it
/// started at stays in the alarm), cleared once back within the limits.
pub(crate) fn drinking_water_quality(
    state: &State,
    sensor: &Sensor,
    measure: Measure,
    value: f64,
) -> Result<Vec<AlarmChange>, Error> {
    let mut changes = Vec::new();
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
    Ok(changes)
}

/// A burst: within the window, a pressure sensor of the zone fell and the zone's inflow rose.
/// It clears once the inflow falls back as abruptly (the segment isolated or repaired).
pub(crate) fn burst(
    state: &mut State,
    k: usize,
    config: &WaterConfig,
) -> Result<Option<(i64, Vec<AlarmChange>)>, Error> {
    let window = config.burst_window_s;
    let c = &config.burst;
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

pub(crate) fn alarm_key(alarm_type: &str, subject: &str) -> String {
    format!("water/{alarm_type}/{subject}")
}

pub(crate) fn raise(
    sensor: &Sensor,
    key: &str,
    alarm_type: &str,
    severity: Severity,
    details: &[(&str, String)],
) -> Result<AlarmChange, Error> {
    Ok(AlarmChange::Raised(ActiveAlarm {
        commune: CommuneId::parse(&sensor.commune).map_err(Error::internal)?,
        asset: AssetId::parse(&sensor.id).map_err(Error::internal)?,
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

pub(crate) fn clear(state: &State, key: &str, reason: &str) -> Option<AlarmChange> {
    let alarm = state.alarms.get(key)?.clone();
    let cleared =
        AlarmCleared { key: key.to_owned(), alarm_type: alarm.raised.alarm_type.clone(), reason: reason.to_owned() };
    Some(AlarmChange::Cleared { alarm, cleared })
}

/// Data-quality flags become warnings on the sensor, one per measure and flag.
pub(crate) fn flag_alarms(
    state: &State,
    sensor: &Sensor,
    measure: Measure,
    changes: Vec<FlagChange>,
) -> Result<Vec<AlarmChange>, Error> {
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
pub(crate) fn leak_change(
    state: &State,
    k: usize,
    night: &crate::zones::NightFlow,
    signal: LeakSignal,
) -> Result<Vec<AlarmChange>, Error> {
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
                asset: AssetId::parse(&zone.def.id).map_err(Error::internal)?,
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
