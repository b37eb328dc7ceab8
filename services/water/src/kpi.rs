//! The water KPIs of each commune: its sensors (and those flagged), its active leaks, bursts
//! and quality breaches, and its zones' last night flow against their baseline.

use proto::event;
use proto::ids::{AssetId, CommuneId};
use proto::v1::event::Payload;
use proto::water::{WaterKpi, ZoneNightFlow};
use runtime::error::Error;
use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::core::{Water, sensor_flags, zone_commune};
use crate::store::WriteBatch;

impl Water {
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
    pub async fn publish_kpis(&self, now: SystemTime) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        for kpi in self.kpis(None, now) {
            let commune = CommuneId::parse(&kpi.commune).map_err(Error::internal)?;
            let asset = AssetId::parse(&kpi.commune).map_err(Error::internal)?;
            batch.events.push(event::check(event::new_event(
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
        self.flush().await
    }
}
