//! Water end to end, on the real L-Town network and its SCADA series (from `../shared/data`, the
//! test is skipped without them) placed over the test territory's two communes: bad readings are
//! refused with their reasons and counted; the simulator replays the series ×1500 with a staged
//! burst and a chlorine incident; the burst raises a critical alarm on the gateway's WebSocket, a
//! valve command isolates it (pending, then applied by the simulated field controller) and the
//! alarm clears; the chlorine breach is raised and cleared; a night's flow is learned; after a
//! SIGKILL the service restores its sensors, the night's baseline, its commands and an open alarm.

use anyhow::{Context, Result};
use proto::water::{
    GetValveCommandRequest, GetWaterKpisRequest, ListDmasRequest, ListSensorsRequest, Reading, RegisterSensorsRequest,
    SendValveCommandRequest, Sensor, ValveAction, ValveCommandStatus,
};
use std::time::{Duration, SystemTime};
use tests::{Slice, repo_root, test_territory};

/// The pipe the simulator bursts (the widest pipe at a pressure sensor of L-Town's main area).
const BURST_PIPE: &str = "p346";

fn water_data() -> Option<std::path::PathBuf> {
    let dir = repo_root().join("../shared/data/montpellier-mediterranee-metropole/water");
    if dir.join("L-TOWN.inp").is_file() && dir.join("scada").is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIP water tests: {} (L-TOWN.inp and scada/) is absent", dir.display());
        None
    }
}

fn reading(sensor: &str, measure: &str, value: f64, unit: &str, at: SystemTime) -> Reading {
    Reading {
        sensor_id: sensor.into(),
        observed_at: Some(at.into()),
        measure: measure.into(),
        value,
        unit: unit.into(),
    }
}

#[tokio::test]
async fn a_burst_is_seen_live_and_isolated_by_a_valve() -> Result<()> {
    let Some(data) = water_data() else { return Ok(()) };
    let territory = test_territory()?;
    std::os::unix::fs::symlink(&data, territory.path().join("water"))?;
    let slice = Slice::start_in(territory).await?;
    let mut water = slice.start_water(&["--kpi-interval", "2s"]).await?;
    let mut client = water.water_client().await?;
    let mut live = slice.live_client().await?;
    assert_eq!(live.next().await?["type"], "snapshot");

    // The network lies across the test territory's two communes; its areas are cut where the
    // sensors meter it once flow sensors are known.
    let bad_sensors = [
        (
            Sensor {
                id: "x".into(),
                element_id: "nope".into(),
                measures: vec!["pressure".into()],
                ..Default::default()
            },
            "neither a node nor a link",
        ),
        (
            Sensor { id: "x".into(), element_id: "n1".into(), measures: vec!["flow".into()], ..Default::default() },
            "flow is read on a link",
        ),
        (
            Sensor { id: "x".into(), element_id: "n1".into(), measures: vec!["level".into()], ..Default::default() },
            "level is read on a tank",
        ),
        (
            Sensor {
                id: "x/y".into(),
                element_id: "n1".into(),
                measures: vec!["pressure".into()],
                ..Default::default()
            },
            "sensor id",
        ),
        (
            Sensor { id: "x".into(), element_id: "n1".into(), measures: vec!["pression".into()], ..Default::default() },
            "unknown measure",
        ),
    ];
    for (sensor, expected) in bad_sensors {
        let status = client.register_sensors(RegisterSensorsRequest { sensors: vec![sensor] }).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(expected), "{:?} should say {expected:?}", status.message());
    }
    let probe = Sensor {
        id: "Q-test".into(),
        element_id: "n1".into(),
        measures: vec!["freeChlorine".into(), "pH".into()],
        ..Default::default()
    };
    let answer = client.register_sensors(RegisterSensorsRequest { sensors: vec![probe] }).await?.into_inner();
    assert_eq!(answer.registered, 1);

    // Bad readings: refused one by one with their reason and counted; the good ones are kept.
    let now = SystemTime::now();
    let stream = vec![
        reading("nobody", "freeChlorine", 0.3, "mg/L", now),
        reading("Q-test", "freeChlorine", 0.3, "mg/l", now),
        reading("Q-test", "freeChlorine", f64::NAN, "mg/L", now),
        reading("Q-test", "turbidity", 0.3, "NTU", now),
        reading("Q-test", "freeChlorine", 0.3, "mg/L", now + Duration::from_secs(3600)),
        reading("Q-test", "freeChlorine", 1e300, "mg/L", now),
        reading("Q-test", "pH", 7.0, "", SystemTime::UNIX_EPOCH + Duration::from_secs(631_152_000)),
        reading("Q-test", "pH", 7.6, "", now),
        reading("Q-test", "freeChlorine", 0.02, "mg/L", now),
    ];
    let summary = client.stream_readings(futures::stream::iter(stream)).await?.into_inner();
    assert_eq!((summary.accepted, summary.refused), (2, 7), "{summary:?}");
    let reasons: Vec<(u64, &str)> = summary.errors.iter().map(|e| (e.index, e.message.as_str())).collect();
    for (index, expected) in [
        (0, "unknown sensor"),
        (1, "not \"mg/l\""),
        (2, "not a number"),
        (3, "does not read turbidity"),
        (4, "in the future"),
        (5, "what an instrument can read"),
        (6, "before 2000"),
    ] {
        assert!(
            reasons.iter().any(|(i, m)| *i == index && m.contains(expected)),
            "refusal {index} should say {expected:?}: {reasons:?}"
        );
    }
    // The low chlorine reading raised a quality alarm, seen live.
    let frames = live
        .until(|f| f["alarm"]["key"] == "water/quality_breach/Q-test:freeChlorine" && f["alarm"]["active"] == true)
        .await?;
    let alarm = &frames.last().context("no frame")?["alarm"];
    assert_eq!((alarm["severity"].as_str(), alarm["details"]["side"].as_str()), (Some("major"), Some("below")));

    // The field: 26 hours of the series replayed ×1500 (a night included), a burst 2 hours in,
    // a chlorine drop at a probe 30 minutes in.
    let mut simulator = slice.start_simulator(&[
        "--parts",
        "water",
        "--water-url",
        &format!("http://{}", water.grpc_addr),
        "--water-replay-from",
        "26h",
        "--water-speed",
        "1500",
        "--water-data-start",
        "2019-06-20",
        "--water-burst-after",
        "2h",
        "--water-burst-pipe",
        BURST_PIPE,
        "--water-chlorine-drop-after",
        "30m",
        "--seed",
        "5",
    ])?;
    let mut quality_seen = (false, false);
    let mut sensor_seen = false;
    let frames = live
        .until(|f| {
            if f["asset"]["details"]["type"] == "water_sensor"
                && f["asset"]["details"]["measures"]["pressure"]["unit"] == "m"
            {
                sensor_seen = true;
            }
            if f["alarm"]["key"] == "water/quality_breach/Q-T1:freeChlorine" {
                if f["alarm"]["active"] == true {
                    quality_seen.0 = true;
                } else {
                    quality_seen.1 = true;
                }
            }
            f["alarm"]["key"] == "water/burst/DMA-1" && f["alarm"]["active"] == true
        })
        .await?;
    let burst = &frames.last().context("no frame")?["alarm"];
    assert_eq!(burst["severity"], "critical");
    assert_eq!(burst["details"]["zone"], "DMA-1");
    let drop: f64 = burst["details"]["pressure_drop_m"].as_str().context("drop")?.parse()?;
    let rise: f64 = burst["details"]["inflow_rise"].as_str().context("rise")?.parse()?;
    assert!(drop > 5.0 && rise > 20.0, "drop {drop} m, rise {rise} m3/h");
    assert!(sensor_seen, "water sensors appear as assets with their measures");
    // The alarm proposes what to close: the pipes meeting where pressure fell, the broken one among them.
    let isolation = burst["details"][proto::water::ISOLATION_DETAIL].as_str().context("isolation")?;
    let proposed: Vec<&str> = isolation.split(", ").collect();
    assert!(proposed.contains(&BURST_PIPE), "isolation proposed: {isolation}");

    // An operator of another commune may not touch this pipe, nor learn that it exists: to them
    // it is not in the network, the answer an unknown link gets.
    let neighbour = |link_id: &str| SendValveCommandRequest {
        link_id: link_id.into(),
        action: ValveAction::Close as i32,
        requested_by: "opérateur voisin".into(),
        reason: "isoler la casse".into(),
        timeout_s: 60,
        allowed_communes: vec!["99999".into()],
    };
    let refused = client.send_valve_command(neighbour(BURST_PIPE)).await.expect_err("outside the operator's communes");
    let unknown = client.send_valve_command(neighbour("NOPE")).await.expect_err("an unknown link");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{}", refused.message());
    assert_eq!(refused.message(), unknown.message().replace("NOPE", BURST_PIPE));
    // The operator isolates the burst pipe.
    let command = client
        .send_valve_command(SendValveCommandRequest {
            link_id: BURST_PIPE.into(),
            action: ValveAction::Close as i32,
            requested_by: "opératrice test".into(),
            reason: "isoler la casse".into(),
            timeout_s: 60,
            allowed_communes: Vec::new(),
        })
        .await?
        .into_inner();
    assert_eq!(command.status, ValveCommandStatus::Pending as i32);
    let mut statuses = Vec::new();
    let mut burst_cleared = false;
    live.until(|f| {
        if f["command"]["id"] == command.id.as_str() {
            statuses.push(f["command"]["status"].as_str().unwrap_or_default().to_owned());
            assert_eq!(f["command"]["target"]["link_id"], BURST_PIPE);
            assert_eq!(f["command"]["action"]["operation"], "close");
        }
        if f["alarm"]["key"] == "water/quality_breach/Q-T1:freeChlorine" {
            if f["alarm"]["active"] == true {
                quality_seen.0 = true;
            } else {
                quality_seen.1 = true;
            }
        }
        if f["alarm"]["key"] == "water/burst/DMA-1" && f["alarm"]["active"] == false {
            burst_cleared = true;
        }
        burst_cleared && statuses.last().is_some_and(|s| s == "applied")
    })
    .await?;
    assert_eq!(statuses.first().map(String::as_str), Some("pending"), "{statuses:?}");
    let applied = client.get_valve_command(GetValveCommandRequest { id: command.id.clone() }).await?.into_inner();
    assert_eq!((applied.status, applied.applied_by.as_str()), (ValveCommandStatus::Applied as i32, "vigie-simulator"));
    // A pump has no valve.
    let status = client
        .send_valve_command(SendValveCommandRequest {
            link_id: "PUMP_1".into(),
            action: ValveAction::Close as i32,
            requested_by: "opératrice test".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(status.message().contains("pump"), "{}", status.message());

    // The chlorine incident raised its alarm and cleared it; a night was closed.
    live.until(|f| {
        if f["alarm"]["key"] == "water/quality_breach/Q-T1:freeChlorine" && f["alarm"]["active"] == false {
            quality_seen.1 = true;
        }
        quality_seen == (true, true)
    })
    .await?;
    let night_flow = |kpis: &proto::water::GetWaterKpisResponse| {
        kpis.kpis.iter().flat_map(|k| &k.zones).find(|z| z.zone == "DMA-1").map(|z| (z.night_of.clone(), z.night_flow))
    };
    let learned = tests::eventually("DMA-1's night flow after the replay", Duration::from_secs(120), || async {
        let kpis = client.clone().get_kpis(GetWaterKpisRequest::default()).await?.into_inner();
        night_flow(&kpis).map(Some).ok_or_else(|| anyhow::anyhow!("no night flow for DMA-1: {kpis:?}"))
    })
    .await?;
    assert!(learned.1 > 50.0 && learned.1 < 300.0, "night flow {learned:?}");
    let dmas = client.list_dmas(ListDmasRequest {}).await?.into_inner();
    let zones: Vec<(&str, &str)> = dmas.dmas.iter().map(|d| (d.id.as_str(), d.zone.as_str())).collect();
    assert_eq!(zones, [("DMA-1", "DMA-1"), ("DMA-2", "DMA-2"), ("DMA-3", "DMA-1")]);
    assert!(dmas.dmas.iter().all(|d| d.hull.len() >= 3 && !d.commune.is_empty()));
    // Sensors registered before the flow meters were known follow the new cut.
    let sensors = client.list_sensors(ListSensorsRequest::default()).await?.into_inner().sensors;
    for s in sensors.iter().filter_map(|s| s.sensor.as_ref()) {
        assert!(dmas.dmas.iter().any(|d| d.id == s.dma), "{s:?}: no such area");
        assert!(!s.commune.is_empty() && s.position.is_some(), "{s:?}");
    }
    let area_of =
        |id: &str| sensors.iter().filter_map(|s| s.sensor.as_ref()).find(|s| s.id == id).map(|s| s.dma.clone());
    assert_eq!(area_of("Q-test"), area_of("Q-n1"), "two probes on n1, registered before and after the meters");

    // SIGKILL: everything acknowledged is still there, and the open alarm clears normally.
    simulator.kill()?;
    let sensors_before = client.list_sensors(ListSensorsRequest::default()).await?.into_inner().sensors.len();
    water.process.kill()?;
    let from = water.process.restart()?;
    water.read_addresses(from)?;
    let mut client = water.water_client().await?;
    let sensors = client.list_sensors(ListSensorsRequest::default()).await?.into_inner().sensors;
    assert_eq!(sensors.len(), sensors_before);
    assert!(sensors.iter().any(|s| s.sensor.as_ref().is_some_and(|s| s.id == "Q-test")));
    let kpis = client.get_kpis(GetWaterKpisRequest::default()).await?.into_inner();
    assert_eq!(night_flow(&kpis), Some(learned), "the zone's night is restored");
    let again = client.get_valve_command(GetValveCommandRequest { id: command.id.clone() }).await?.into_inner();
    assert_eq!(again, applied);
    // A client connected now (the first one was left unread while the night was awaited: the
    // gateway closes clients that stay silent).
    let mut live = slice.live_client().await?;
    assert_eq!(live.next().await?["type"], "snapshot");
    let summary = client
        .stream_readings(futures::stream::iter([reading("Q-test", "freeChlorine", 0.4, "mg/L", SystemTime::now())]))
        .await?
        .into_inner();
    assert_eq!(summary.accepted, 1);
    live.until(|f| f["alarm"]["key"] == "water/quality_breach/Q-test:freeChlorine" && f["alarm"]["active"] == false)
        .await?;
    Ok(())
}
