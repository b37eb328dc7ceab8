//! The four domain services and the gateway together: field data of each domain (a lamp's
//! report, a vehicle's position, a citizen's report, a water quality reading) reach one unified
//! operations view, with their alarms and each domain's KPIs per commune, over REST and the live
//! WebSocket; an operator acknowledges the water alarm and the audit log has it. Needs the water
//! network of `../shared/data` (skipped without it).

use anyhow::{Context, Result};
use proto::lighting::{
    LampStatus, PowerState, RegisterStreetlightsRequest, ReportStatusRequest, StatusReport, Streetlight,
};
use proto::reports::CreateRequestRequest;
use proto::water::{Reading, RegisterSensorsRequest, Sensor};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime};
use tests::{Slice, http_get_json, http_post_json, repo_root, test_territory};

use crate::transport::{position, write_feed};

async fn items(gateway: &str, path: &str) -> Result<Vec<Value>> {
    let (status, body) = http_get_json(gateway, path).await?;
    anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
    Ok(body["items"].as_array().context("items")?.clone())
}

/// Polls a REST list until `done` holds for it.
async fn wait_for(gateway: &str, path: &str, done: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
    tests::eventually(&format!("{path} to satisfy the condition"), Duration::from_secs(30), || async {
        let list = items(gateway, path).await?;
        if done(&list) { Ok(Some(list)) } else { Err(anyhow::anyhow!("{path}: {list:?}")) }
    })
    .await
}

#[tokio::test]
async fn every_domain_reaches_one_operations_view() -> Result<()> {
    let water_data = repo_root().join("../shared/data/montpellier-mediterranee-metropole/water");
    if !water_data.join("L-TOWN.inp").is_file() {
        eprintln!("SKIP every_domain_reaches_one_operations_view: {} is absent", water_data.display());
        return Ok(());
    }
    let territory = test_territory()?;
    write_feed(territory.path())?;
    std::os::unix::fs::symlink(&water_data, territory.path().join("water"))?;
    let slice = Slice::start_full(territory, &["--kpi-interval", "1s"], &[]).await?;
    let transport = slice.start_transport(&["--kpi-interval", "1s"]).await?;
    let reports = slice.start_reports(&["--kpi-interval", "1s"]).await?;
    let water = slice.start_water(&["--kpi-interval", "1s"]).await?;
    let gateway = slice.gateway_addr.clone();

    // Lighting: a lamp and its report.
    let mut lighting = slice.lighting_client().await?;
    let lamp = Streetlight { id: "EP-1".into(), lat: 43.6, lon: 3.85, ..Default::default() };
    lighting.register_streetlights(RegisterStreetlightsRequest { streetlights: vec![lamp] }).await?;
    lighting
        .report_status(ReportStatusRequest {
            report: Some(StatusReport {
                streetlight_id: "EP-1".into(),
                observed_at: Some(SystemTime::now().into()),
                status: LampStatus::Ok as i32,
                power_state: PowerState::On as i32,
                illuminance_level: 1.0,
                power_consumption_w: 70.0,
                voltage_v: None,
            }),
        })
        .await?;
    // Transport: a vehicle on its trip.
    let mut avl = transport.transport_client().await?;
    avl.report_positions(futures::stream::iter(vec![position("V1", "T1", 400.0, 0.0)])).await?;
    // Reports: a citizen's report.
    let mut citizens = reports.reports_client().await?;
    citizens
        .create_request(CreateRequestRequest {
            service_code: "voirie-nid-de-poule".into(),
            lat: Some(43.62),
            lon: Some(3.86),
            description: "Nid-de-poule".into(),
            ..Default::default()
        })
        .await?;
    // Water: a quality probe reads too little chlorine.
    let mut scada = water.water_client().await?;
    let probe = Sensor {
        id: "Q-1".into(),
        element_id: "n1".into(),
        measures: vec!["freeChlorine".into()],
        ..Default::default()
    };
    scada.register_sensors(RegisterSensorsRequest { sensors: vec![probe] }).await?;
    let reading = Reading {
        sensor_id: "Q-1".into(),
        observed_at: Some(SystemTime::now().into()),
        measure: "freeChlorine".into(),
        value: 0.02,
        unit: "mg/L".into(),
    };
    let summary = scada.stream_readings(futures::stream::iter([reading])).await?.into_inner();
    assert_eq!(summary.accepted, 1);

    // One view: every domain's assets...
    for domain in ["lighting", "transport", "reports", "water"] {
        wait_for(&gateway, &format!("/api/v1/assets?domain={domain}"), |l| !l.is_empty()).await?;
    }
    // ...their KPIs per commune (lamps working, punctuality, open reports, water sensors)...
    let kpis = wait_for(&gateway, "/api/v1/kpis", |l| {
        ["lighting", "transport", "reports", "water"].iter().all(|d| l.iter().any(|k| k["domain"] == *d))
    })
    .await?;
    let value = |domain: &str, name: &str| -> Option<f64> {
        kpis.iter().filter(|k| k["domain"] == domain).find_map(|k| k["values"][name].as_f64())
    };
    assert!(value("lighting", "availability").is_some() && value("transport", "vehicles").is_some());
    assert!(value("reports", "open").is_some_and(|n| n >= 1.0) && value("water", "sensors_total").is_some());
    // ...and the water alarm, which an operator acknowledges.
    let alarms = wait_for(&gateway, "/api/v1/alarms?domain=water", |l| !l.is_empty()).await?;
    let key = alarms[0]["key"].as_str().context("key")?.to_owned();
    assert_eq!(key, "water/quality_breach/Q-1:freeChlorine");
    let mut live = slice.live_client().await?;
    assert_eq!(live.next().await?["type"], "snapshot");
    let (status, answer) =
        http_post_json(&gateway, "/api/v1/alarms/actions", &json!({"alarm_key": key, "action": "acknowledge"})).await?;
    assert_eq!(status, 200, "{answer}");
    live.until(|f| f["alarm"]["key"] == key.as_str() && f["alarm"]["acknowledged"] == true).await?;
    // The acting operator is the one logged in: the slice's supervisor.
    let audit = items(&gateway, "/api/v1/audit?actor=supervisor").await?;
    assert_eq!((audit.len(), &audit[0]["target"]), (1, &json!(key)));

    // The same view over NGSI-LD, each domain with its Smart Data Models type.
    let ngsi = |query: &str| {
        let path = format!("/ngsi-ld/v1/entities?{query}");
        let gateway = gateway.clone();
        async move {
            let (status, body) = http_get_json(&gateway, &path).await?;
            anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
            match body.as_array().map(Vec::as_slice) {
                Some([entity]) => Ok(entity.clone()),
                _ => anyhow::bail!("GET {path}: not one entity: {body}"),
            }
        }
    };
    let lamp = ngsi("type=Streetlight&id=urn:ngsi-ld:Streetlight:EP-1").await?;
    assert_eq!((&lamp["id"], &lamp["powerState"]["value"]), (&json!("urn:ngsi-ld:Streetlight:EP-1"), &json!("on")));
    assert_eq!(lamp["powerConsumption"]["unitCode"], "WTT", "{lamp}");
    let vehicle = ngsi("type=Vehicle&id=urn:ngsi-ld:Vehicle:V1").await?;
    assert_eq!(vehicle["id"], "urn:ngsi-ld:Vehicle:V1", "{vehicle}");
    assert_eq!(vehicle["location"]["type"], "GeoProperty", "{vehicle}");
    assert_eq!(vehicle["tripId"]["value"], "T1", "{vehicle}");
    let request = ngsi("type=Open311ServiceRequest").await?;
    assert_eq!(request["service_code"]["value"], "voirie-nid-de-poule", "{request}");
    assert_eq!(request["status"]["value"], "open", "{request}");
    let quality = ngsi("type=WaterQualityObserved&id=urn:ngsi-ld:WaterQualityObserved:Q-1").await?;
    assert_eq!(quality["id"], "urn:ngsi-ld:WaterQualityObserved:Q-1", "{quality}");
    assert_eq!((&quality["freeChlorine"]["value"], &quality["freeChlorine"]["unitCode"]), (&json!(0.02), &json!("M1")));
    // By day the lamp, lit, has an alarm too (lit in daytime): the water one is asked for by id.
    let alert = ngsi(&format!("type=Alert&id=urn:ngsi-ld:Alert:{key}&attrs=alertSource,category,severity")).await?;
    assert_eq!(alert["id"], format!("urn:ngsi-ld:Alert:{key}"), "{alert}");
    assert_eq!(alert["alertSource"]["object"], "urn:ngsi-ld:WaterQualityObserved:Q-1", "{alert}");
    assert_eq!(alert["category"]["value"], "environment", "{alert}");
    // The alert by its id, slashes and all.
    let (status, by_id) = http_get_json(&gateway, &format!("/ngsi-ld/v1/entities/urn:ngsi-ld:Alert:{key}")).await?;
    assert_eq!((status, &by_id["subCategory"]["value"]), (200, &json!("quality_breach")), "{by_id}");
    Ok(())
}
