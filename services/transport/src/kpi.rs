//! Public-transport KPIs per commune, pure: vehicles in service and punctuality.

use proto::transport::TransportKpi;
use std::collections::BTreeMap;

use crate::gtfs_rt::MAX_VEHICLE_AGE_S;
use crate::tracking::Tracked;

/// On time: from 1 minute early to 5 minutes late (the usual French definition).
pub const ON_TIME_S: (f64, f64) = (-60.0, 300.0);

/// The KPIs of every commune with a vehicle in service at `now_unix` (in the service's clock).
pub fn per_commune<'a>(vehicles: impl Iterator<Item = &'a Tracked>, now_unix: u64) -> BTreeMap<String, TransportKpi> {
    let mut out: BTreeMap<String, (TransportKpi, f64)> = BTreeMap::new();
    for v in vehicles {
        if v.state.trip_finished || now_unix.saturating_sub(v.seen_unix_s) > MAX_VEHICLE_AGE_S {
            continue;
        }
        let (kpi, delay_sum) = out.entry(v.state.commune.clone()).or_default();
        kpi.vehicles += 1;
        if let Some(d) = v.state.delay_s {
            kpi.with_adherence += 1;
            *delay_sum += d;
            if (ON_TIME_S.0..=ON_TIME_S.1).contains(&d) {
                kpi.on_time += 1;
            }
        }
    }
    out.into_iter()
        .map(|(commune, (mut kpi, delay_sum))| {
            if kpi.with_adherence > 0 {
                kpi.punctuality = f64::from(kpi.on_time) / f64::from(kpi.with_adherence);
                kpi.mean_delay_s = delay_sum / f64::from(kpi.with_adherence);
            } else {
                kpi.punctuality = 1.0;
            }
            (commune, kpi)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::transport::VehicleState;

    fn vehicle(commune: &str, delay: Option<f64>, seen: u64, finished: bool) -> Tracked {
        Tracked {
            state: VehicleState {
                commune: commune.into(),
                delay_s: delay,
                trip_finished: finished,
                ..Default::default()
            },
            service_s: 0.0,
            seen_unix_s: seen,
        }
    }

    #[test]
    fn punctuality_per_commune() {
        let now = 10_000;
        let vehicles = [
            vehicle("34172", Some(30.0), now, false),
            vehicle("34172", Some(-90.0), now, false),     // early: not on time
            vehicle("34172", Some(400.0), now, false),     // late
            vehicle("34172", None, now, false),            // no adherence
            vehicle("34172", Some(0.0), now - 601, false), // stale: out
            vehicle("34129", Some(300.0), now, false),     // 5 min late: on time
            vehicle("34129", Some(0.0), now, true),        // finished: out
        ];
        let kpis = per_commune(vehicles.iter(), now);
        let west = &kpis["34172"];
        assert_eq!((west.vehicles, west.with_adherence, west.on_time), (4, 3, 1));
        assert!((west.punctuality - 1.0 / 3.0).abs() < 1e-9 && (west.mean_delay_s - 340.0 / 3.0).abs() < 1e-9);
        assert_eq!((kpis["34129"].vehicles, kpis["34129"].punctuality), (1, 1.0));
        assert_eq!(kpis.len(), 2);
    }
}
