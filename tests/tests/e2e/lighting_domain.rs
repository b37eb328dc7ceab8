//! The lighting domain end to end: commands through the service to the (simulated) controller and
//! back, outage clusters from a feeder failure, restarts, and bad input.

use anyhow::Result;
use proto::lighting::command_action::Action;
use proto::lighting::command_target::Target;
use proto::lighting::telemetry_message::Message as Telemetry;
use proto::lighting::{
    CommandAction, CommandStatus, CommandTarget, FaultReport, GetCommandRequest, Polygon, RegisterStreetlightsRequest,
    ReportStatusRequest, SendCommandRequest, StatusReport, Streetlight, TalqFault, TelemetryMessage,
};
use proto::v1::Position;
use std::collections::HashSet;
use std::time::SystemTime;
use tests::{LiveClient, Slice, street_of_lamps, territory_with_streetlights};
use tonic::Code;

/// A rectangle around the lamps, as a closed ring.
fn around(lamps: &[(String, f64, f64)]) -> Polygon {
    let (mut s, mut w, mut n, mut e) = (90.0f64, 180.0f64, -90.0f64, -180.0f64);
    for (_, lat, lon) in lamps {
        (s, w, n, e) = (s.min(*lat), w.min(*lon), n.max(*lat), e.max(*lon));
    }
    let (s, w, n, e) = (s - 0.0005, w - 0.0005, n + 0.0005, e + 0.0005);
    let ring = [(s, w), (s, e), (n, e), (n, w), (s, w)];
    Polygon { ring: ring.iter().map(|&(lat, lon)| Position { lat, lon }).collect() }
}

fn dim(target: Target, level: f64, timeout_s: u32) -> SendCommandRequest {
    SendCommandRequest {
        target: Some(CommandTarget { target: Some(target) }),
        action: Some(CommandAction { action: Some(Action::DimLevel(level)) }),
        requested_by: "operateur.test".into(),
        reason: "essai de gradation".into(),
        timeout_s,
        allowed_communes: Vec::new(),
    }
}

fn supply_loss(id: &str, active: bool) -> TelemetryMessage {
    TelemetryMessage {
        message: Some(Telemetry::Fault(FaultReport {
            streetlight_id: id.into(),
            observed_at: Some(SystemTime::now().into()),
            fault: TalqFault::SupplyLoss as i32,
            active,
        })),
    }
}

/// Reads frames until `done` is true for one; returns every frame read (bounded in time).
async fn read_until(
    live: &mut LiveClient,
    done: impl FnMut(&serde_json::Value) -> bool,
) -> Result<Vec<serde_json::Value>> {
    live.until(done).await
}

#[tokio::test]
async fn a_dim_command_goes_to_the_controller_and_comes_back_applied() -> Result<()> {
    let lamps = street_of_lamps("RUE", 10, 43.6, 3.85, 25.0);
    let slice = Slice::start_in(territory_with_streetlights(&lamps, "Rue de l'Aiguillerie")?).await?;
    let simulator = slice.start_simulator(&[
        "--lighting-rate",
        "0",
        "--feeder-failures-per-hour",
        "0",
        "--command-failure",
        "0",
        "--lamp-failure",
        "0",
    ])?;
    simulator.wait_for_log("inventory registered", 0)?;
    simulator.wait_for_log("controller session open", 0)?;
    let mut live = slice.live_client().await?;
    assert_eq!(live.next().await?["type"], "snapshot");

    let mut client = slice.lighting_client().await?;
    let reply = client.send_command(dim(Target::Polygon(around(&lamps)), 0.5, 30)).await?.into_inner();
    assert_eq!(reply.commands.len(), 1, "one commune, one command");
    let command = &reply.commands[0];
    assert_eq!((command.lamps_total, command.status), (10, CommandStatus::Pending as i32));
    assert_eq!(command.commune, "34172");

    // Live: the command pending, then applied; the lamps report their new level.
    let mut statuses = Vec::new();
    let mut dimmed = HashSet::new();
    read_until(&mut live, |frame| {
        if frame["command"]["id"] == command.id.as_str() {
            statuses.push(frame["command"]["status"].as_str().unwrap_or_default().to_owned());
            assert_eq!(frame["command"]["requested_by"], "operateur.test");
            assert_eq!(frame["command"]["action"]["type"], "dim");
        }
        if frame["asset"]["details"]["illuminance_level"] == 0.5 {
            dimmed.insert(frame["asset"]["id"].as_str().unwrap_or_default().to_owned());
        }
        statuses.last().map(String::as_str) == Some("applied") && dimmed.len() == 10
    })
    .await?;
    assert_eq!(statuses.first().map(String::as_str), Some("pending"));
    let stored = client.get_command(GetCommandRequest { id: command.id.clone() }).await?.into_inner();
    assert_eq!((stored.status, stored.lamps_applied, stored.lamps_failed), (CommandStatus::Applied as i32, 10, 0));

    // By street name, case and accents aside: the same ten lamps.
    let reply = client.send_command(dim(Target::Street("RUE DE L AIGUILLERIE".into()), 0.8, 30)).await?.into_inner();
    assert_eq!(reply.commands[0].lamps_total, 10);
    // An operator of another commune: its lamps are, to them, not there (the answer an unknown
    // street gets), and nothing is sent.
    let limited = SendCommandRequest {
        allowed_communes: vec!["34129".into()],
        ..dim(Target::Street("RUE DE L AIGUILLERIE".into()), 0.2, 30)
    };
    let refused = client.send_command(limited).await.expect_err("lamps outside the operator's communes");
    let unknown = client
        .send_command(dim(Target::Street("RUE QUI N EXISTE PAS".into()), 0.2, 30))
        .await
        .expect_err("an unknown street");
    assert_eq!((refused.code(), refused.message()), (unknown.code(), unknown.message()));
    assert_eq!(refused.code(), tonic::Code::NotFound, "{}", refused.message());
    Ok(())
}

#[tokio::test]
async fn a_pending_command_survives_a_restart_and_fails_at_its_deadline_without_a_controller() -> Result<()> {
    let mut slice = Slice::start().await?;
    let mut client = slice.lighting_client().await?;
    let light = Streetlight { id: "EP1".into(), lat: 43.6, lon: 3.85, ..Default::default() };
    client.register_streetlights(RegisterStreetlightsRequest { streetlights: vec![light] }).await?;
    let mut live = slice.live_client().await?;
    let reply = client.send_command(dim(Target::StreetlightId("EP1".into()), 0.3, 3)).await?.into_inner();
    let id = reply.commands[0].id.clone();

    // The service dies while the command is pending; the restarted one still tracks it.
    slice.lighting.kill()?;
    let from = slice.lighting.restart()?;
    slice.lighting_addr = slice.lighting.wait_for_addr("gRPC listening", from)?;
    slice.wait_lighting_serving().await?;
    slice.lighting.wait_for_log("pending_commands=1", from)?;

    let frames =
        read_until(&mut live, |f| f["command"]["id"] == id.as_str() && f["command"]["status"] != "pending").await?;
    let last = &frames[frames.len() - 1]["command"];
    assert_eq!(last["status"], "failed");
    assert_eq!(last["lamps_failed"], 1);
    assert!(last["failures"][0].as_str().unwrap_or_default().contains("no lighting controller connected"), "{last}");
    let mut client = slice.lighting_client().await?;
    let stored = client.get_command(GetCommandRequest { id }).await?.into_inner();
    assert_eq!(stored.status, CommandStatus::Failed as i32);
    Ok(())
}

#[tokio::test]
async fn a_feeder_failure_raises_exactly_one_cluster_alarm_which_survives_a_restart_and_clears() -> Result<()> {
    let mut slice = Slice::start().await?;
    let mut client = slice.lighting_client().await?;
    let lamps = street_of_lamps("EP", 8, 43.6, 3.85, 20.0);
    let lights: Vec<Streetlight> = lamps
        .iter()
        .map(|(id, lat, lon)| Streetlight { id: id.clone(), lat: *lat, lon: *lon, ..Default::default() })
        .collect();
    client.register_streetlights(RegisterStreetlightsRequest { streetlights: lights }).await?;
    let mut live = slice.live_client().await?;
    assert_eq!(live.next().await?["type"], "snapshot");

    // The lighting management system reports the feeder failure lamp by lamp, in one stream, with
    // some garbage in it.
    let mut messages: Vec<TelemetryMessage> = lamps[..6].iter().map(|(id, ..)| supply_loss(id, true)).collect();
    messages.push(supply_loss("EP99", true));
    messages.push(TelemetryMessage {
        message: Some(Telemetry::Fault(FaultReport {
            streetlight_id: "EP00".into(),
            observed_at: Some(SystemTime::now().into()),
            fault: 0,
            active: true,
        })),
    });
    messages.push(TelemetryMessage {
        message: Some(Telemetry::Status(StatusReport {
            streetlight_id: "EP07".into(),
            observed_at: Some(SystemTime::now().into()),
            status: 1,
            power_state: 1,
            illuminance_level: 2.0,
            ..Default::default()
        })),
    });
    let summary = client.stream_telemetry(futures::stream::iter(messages)).await?.into_inner();
    assert_eq!((summary.accepted, summary.refused), (6, 3), "{summary:?}");
    let errors: Vec<&str> = summary.errors.iter().map(|e| e.message.as_str()).collect();
    assert!(errors[0].contains("EP99 is not registered"), "{errors:?}");
    assert!(errors[1].contains("fault is missing"), "{errors:?}");
    assert!(errors[2].contains("illuminance_level"), "{errors:?}");
    assert_eq!(summary.errors.iter().map(|e| e.index).collect::<Vec<_>>(), [6, 7, 8]);

    // A sentinel report: when its delta arrives, every alarm event of the stream came before it.
    let sentinel = client.report_status(night_report("EP07")).await?.into_inner().event_id;
    let frames = read_until(&mut live, |f| f["event"]["id"] == sentinel.as_str()).await?;
    let raised: Vec<&serde_json::Value> =
        frames.iter().filter(|f| f["event"]["kind"] == "alarm_raised").map(|f| &f["alarm"]).collect();
    assert_eq!(raised.len(), 1, "exactly one alarm, the cluster: {raised:?}");
    assert_eq!(raised[0]["alarm_type"], "outage_cluster");
    assert_eq!(raised[0]["severity"], "major");
    assert_eq!(raised[0]["asset_ids"].as_array().map(Vec::len), Some(6));
    assert_eq!(raised[0]["details"]["lamps"], "6");
    let key = raised[0]["key"].as_str().unwrap_or_default().to_owned();
    // The streetlights show the fault.
    let faulted = frames
        .iter()
        .filter(|f| f["event"]["kind"] == "streetlight_fault" && f["asset"]["details"]["faults"][0] == "supply_loss")
        .count();
    assert_eq!(faulted, 6);

    // The service dies and comes back: the cluster and the lamps' state are restored, so the
    // seventh dark lamp grows the same alarm.
    slice.lighting.kill()?;
    let from = slice.lighting.restart()?;
    slice.lighting_addr = slice.lighting.wait_for_addr("gRPC listening", from)?;
    slice.wait_lighting_serving().await?;
    let mut client = slice.lighting_client().await?;
    client.stream_telemetry(futures::stream::iter(vec![supply_loss("EP06", true)])).await?;
    let frames = read_until(&mut live, |f| f["event"]["kind"] == "alarm_raised").await?;
    let alarm = &frames[frames.len() - 1]["alarm"];
    assert_eq!(alarm["key"], key.as_str());
    assert_eq!(alarm["asset_ids"].as_array().map(Vec::len), Some(7));
    assert_eq!(alarm["raise_count"], 2);

    // Repaired: the cluster clears, and no lamp alarm is left behind.
    let repairs: Vec<TelemetryMessage> = lamps[..7].iter().map(|(id, ..)| supply_loss(id, false)).collect();
    client.stream_telemetry(futures::stream::iter(repairs)).await?;
    let sentinel = client.report_status(night_report("EP07")).await?.into_inner().event_id;
    let frames = read_until(&mut live, |f| f["event"]["id"] == sentinel.as_str()).await?;
    let alarms: Vec<&serde_json::Value> =
        frames.iter().filter(|f| f["alarm"].is_object()).map(|f| &f["alarm"]).collect();
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!((&alarms[0]["key"], &alarms[0]["active"]), (&serde_json::json!(key), &serde_json::json!(false)));
    // Cleared but not yet acknowledged: still shown, until an operator acknowledges it.
    let mut late = slice.live_client().await?;
    let snapshot = late.next().await?;
    assert_eq!(snapshot["alarms"].as_array().map(Vec::len), Some(1), "{snapshot}");
    assert_eq!(snapshot["alarms"][0]["active"], false);
    let (status, answer) = tests::http_post_json(
        &slice.gateway_addr,
        "/api/v1/alarms/actions",
        &serde_json::json!({"alarm_key": key, "action": "acknowledge"}),
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["alarm"], serde_json::Value::Null, "acknowledged once cleared: closed");
    let frames = read_until(&mut late, |f| f["alarm"]["key"] == key.as_str()).await?;
    let closed = &frames[frames.len() - 1]["alarm"];
    assert_eq!(
        (&closed["closed"], &closed["acknowledged_by"]),
        (&serde_json::json!(true), &serde_json::json!(tests::SUPERVISOR))
    );
    let mut later = slice.live_client().await?;
    assert_eq!(later.next().await?["alarms"], serde_json::json!([]));
    Ok(())
}

fn night_report(id: &str) -> ReportStatusRequest {
    ReportStatusRequest {
        report: Some(StatusReport {
            streetlight_id: id.into(),
            observed_at: Some(SystemTime::now().into()),
            status: 1,
            power_state: 2,
            illuminance_level: 0.0,
            power_consumption_w: 0.0,
            voltage_v: None,
        }),
    }
}

#[tokio::test]
async fn bad_commands_get_clear_errors() -> Result<()> {
    let slice = Slice::start().await?;
    let mut client = slice.lighting_client().await?;
    let light = Streetlight { id: "EP1".into(), lat: 43.6, lon: 3.85, ..Default::default() };
    client.register_streetlights(RegisterStreetlightsRequest { streetlights: vec![light] }).await?;
    let open = Polygon {
        ring: [(43.5, 3.8), (43.5, 3.9), (43.7, 3.9)].iter().map(|&(lat, lon)| Position { lat, lon }).collect(),
    };
    let mut anonymous = dim(Target::StreetlightId("EP1".into()), 0.5, 10);
    anonymous.requested_by = String::new();
    let cases = [
        (dim(Target::StreetlightId("EP1".into()), 1.5, 10), Code::InvalidArgument, "outside 0..1"),
        (dim(Target::Polygon(open), 0.5, 10), Code::InvalidArgument, "at least 4"),
        (dim(Target::Commune("99999".into()), 0.5, 10), Code::InvalidArgument, "not in this territory"),
        (dim(Target::StreetlightId("EP404".into()), 0.5, 10), Code::NotFound, "no registered streetlight"),
        (dim(Target::StreetlightId("EP>".into()), 0.5, 10), Code::InvalidArgument, "'>'"),
        (anonymous, Code::InvalidArgument, "requested_by"),
    ];
    for (request, code, expected) in cases {
        let status = client.send_command(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
        assert!(status.message().contains(expected), "{:?} should mention {expected:?}", status.message());
    }
    let status = client.get_command(GetCommandRequest { id: "0000".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // A controller must say who it is first.
    let status = client.controller_session(futures::stream::iter(Vec::new())).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("hello"), "{}", status.message());
    // Still serving.
    client.report_status(night_report("EP1")).await?;
    Ok(())
}

#[tokio::test]
async fn kpis_count_dark_lamps_and_energy_per_commune() -> Result<()> {
    let slice = Slice::start_with(tests::test_territory()?, &["--kpi-interval", "1s"]).await?;
    let mut client = slice.lighting_client().await?;
    let lamps = street_of_lamps("KPI", 4, 43.6, 3.85, 100.0);
    let lights: Vec<Streetlight> = lamps
        .iter()
        .map(|(id, lat, lon)| Streetlight { id: id.clone(), lat: *lat, lon: *lon, ..Default::default() })
        .collect();
    client.register_streetlights(RegisterStreetlightsRequest { streetlights: lights }).await?;
    let mut live = slice.live_client().await?;
    for (i, (id, ..)) in lamps.iter().enumerate() {
        let mut report = night_report(id);
        if let Some(r) = report.report.as_mut() {
            (r.status, r.power_state, r.illuminance_level, r.power_consumption_w) =
                if i == 0 { (2, 1, 0.0, 0.0) } else { (1, 1, 1.0, 100.0) };
        }
        client.report_status(report).await?;
    }
    // A KPI of commune 34172 that counts all four lamps, one of them dark, and some energy.
    let frames = read_until(&mut live, |f| {
        f["kpi"]["commune"] == "34172"
            && f["kpi"]["values"]["lamps_dark"] == 1.0
            && f["kpi"]["values"]["energy_wh_current_hour"].as_f64().is_some_and(|e| e > 0.0)
    })
    .await?;
    let kpi = &frames[frames.len() - 1]["kpi"];
    assert_eq!(kpi["domain"], "lighting");
    assert_eq!(kpi["values"]["lamps_total"], 4.0);
    assert_eq!(kpi["values"]["availability"], 0.75);
    assert_eq!(kpi["values"]["power_w"], 300.0);
    let kpis = client.get_kpis(proto::lighting::GetKpisRequest { commune: "34172".into() }).await?.into_inner().kpis;
    assert_eq!((kpis.len(), kpis[0].lamps_total, kpis[0].lamps_dark), (1, 4, 1));
    let status = client.get_kpis(proto::lighting::GetKpisRequest { commune: "34.172".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn a_dimming_schedule_commands_its_level() -> Result<()> {
    use proto::lighting::{
        DimmingSchedule, ListSchedulesRequest, PutScheduleRequest, ScheduleOverride, ScheduleStep, SunAnchor,
    };
    let slice = Slice::start_with(tests::test_territory()?, &["--kpi-interval", "1s"]).await?;
    let mut client = slice.lighting_client().await?;
    let light = Streetlight { id: "EP1".into(), lat: 43.6, lon: 3.85, ..Default::default() };
    client.register_streetlights(RegisterStreetlightsRequest { streetlights: vec![light] }).await?;
    let mut live = slice.live_client().await?;
    // 30 % from sunset and from sunrise: 30 % whatever the hour this test runs at.
    let step = |anchor: SunAnchor, level: f64| ScheduleStep { anchor: anchor as i32, offset_minutes: 0, level };
    let schedule = DimmingSchedule {
        name: "Économie d'énergie".into(),
        target: Some(CommandTarget { target: Some(Target::Commune("34172".into())) }),
        steps: vec![step(SunAnchor::Sunset, 0.3), step(SunAnchor::Sunrise, 0.3)],
        enabled: true,
        ..Default::default()
    };
    let saved = client
        .put_schedule(PutScheduleRequest { schedule: Some(schedule.clone()), requested_by: "operateur.test".into() })
        .await?
        .into_inner();
    assert!(!saved.id.is_empty());
    let frames = read_until(&mut live, |f| f["command"]["requested_by"] == format!("schedule:{}", saved.id)).await?;
    let command = &frames[frames.len() - 1]["command"];
    assert_eq!(command["action"], serde_json::json!({"type": "dim", "level": 0.3}));
    assert_eq!(command["target"], serde_json::json!({"type": "commune", "commune": "34172"}));
    let listed = client.list_schedules(ListSchedulesRequest {}).await?.into_inner().schedules;
    assert_eq!(listed.len(), 1);

    // Invalid schedules are refused with what is wrong.
    let mut bad_level = schedule.clone();
    bad_level.steps[0].level = 1.2;
    let mut bad_night = schedule.clone();
    bad_night.overrides =
        vec![ScheduleOverride { night_of: "14/07/2026".into(), steps: schedule.steps.clone(), reason: "fête".into() }];
    let mut no_steps = schedule.clone();
    no_steps.steps.clear();
    for (bad, expected) in [(bad_level, "outside 0..1"), (bad_night, "YYYY-MM-DD"), (no_steps, "steps")] {
        let status = client
            .put_schedule(PutScheduleRequest { schedule: Some(bad), requested_by: "operateur.test".into() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(expected), "{:?} should mention {expected:?}", status.message());
    }
    Ok(())
}

#[tokio::test]
async fn the_territory_inventory_is_imported_at_start_with_communes_and_streets() -> Result<()> {
    // Lamps on both sides of the commune border (lon 3.90), 10 m north of a named street.
    let mut lamps = street_of_lamps("IMP", 3, 43.60009, 3.899, 60.0);
    lamps.push(("FAR".into(), 43.65, 3.85));
    let territory = territory_with_streetlights(&lamps, "")?;
    let streets = serde_json::json!({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "Avenue de la Frontière"},
         "geometry": {"type": "LineString", "coordinates": [[3.89, 43.6], [3.91, 43.6]]}}]});
    std::fs::write(territory.path().join("streets.geojson"), streets.to_string())?;
    let slice = Slice::start_in(territory).await?;
    let mut client = slice.lighting_client().await?;
    let get = |id: &str| proto::lighting::GetStreetlightRequest { id: id.into() };
    let west = client.get_streetlight(get("IMP00")).await?.into_inner().streetlight.unwrap_or_default();
    let east = client.get_streetlight(get("IMP02")).await?.into_inner().streetlight.unwrap_or_default();
    let far = client.get_streetlight(get("FAR")).await?.into_inner().streetlight.unwrap_or_default();
    assert_eq!((west.commune.as_str(), west.street.as_str()), ("34172", "Avenue de la Frontière"));
    assert_eq!((east.commune.as_str(), east.street.as_str()), ("34129", "Avenue de la Frontière"));
    assert_eq!((far.commune.as_str(), far.street.as_str()), ("34172", ""), "no street within 30 m");
    // A command by street reaches the lamps of both communes: one command per commune.
    let reply = client.send_command(dim(Target::Street("avenue de la frontiere".into()), 0.4, 5)).await?.into_inner();
    let mut per_commune: Vec<(String, u32)> =
        reply.commands.iter().map(|c| (c.commune.clone(), c.lamps_total)).collect();
    per_commune.sort();
    assert_eq!(per_commune, [("34129".to_owned(), 1), ("34172".to_owned(), 2)]);
    Ok(())
}

#[tokio::test]
async fn the_simulator_plays_a_feeder_failure_that_becomes_one_cluster_alarm() -> Result<()> {
    let lamps = street_of_lamps("FDR", 10, 43.6, 3.85, 20.0);
    let slice = Slice::start_in(territory_with_streetlights(&lamps, "")?).await?;
    let mut live = slice.live_client().await?;
    // About one feeder failure a second; a feeder is every lamp within 80 m of one.
    let simulator = slice.start_simulator(&[
        "--lighting-rate",
        "0",
        "--feeder-failures-per-hour",
        "3600",
        "--lamp-failure",
        "0",
    ])?;
    simulator.wait_for_log("feeder failure", 0)?;
    let frames = read_until(&mut live, |f| f["alarm"]["alarm_type"] == "outage_cluster").await?;
    let cluster = &frames[frames.len() - 1]["alarm"];
    assert!(cluster["asset_ids"].as_array().map(Vec::len) >= Some(5), "{cluster}");
    assert_eq!(cluster["commune"], "34172");
    Ok(())
}
