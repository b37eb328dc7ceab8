//! What the gateway serves the console besides the live stream: the territory's communes and the
//! offline basemap (built from the territory's files, nothing else of them), log book entries
//! (ops events, in the audit log), and a session that starts under a commune filter. Bad input
//! gets a clear error.

use anyhow::Result;
use serde_json::json;
use tests::{LiveClient, Slice, http_get, http_get_json, http_post_json, http_post_json_as, test_territory};

#[tokio::test]
async fn the_gateway_serves_the_console_its_territory_and_log_book() -> Result<()> {
    let territory = test_territory()?;
    // A street layer with one named street and a property that must not reach the browser.
    let streets = json!({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "Rue de la Loge", "owner_phone": "0400000000"},
         "geometry": {"type": "LineString", "coordinates": [[3.85, 43.6], [3.86, 43.6]]}}]});
    std::fs::write(territory.path().join("streets.geojson"), streets.to_string())?;
    // KPI targets: the defaults' punctuality replaced, and each commune's own delay band.
    let targets = json!({
        "defaults": {"transport_on_time": {"target": 0.92, "warning": 0.88, "alarm": 0.8}},
        "communes": {
            "34129": {"transport_delay": {"target": 120, "warning": 240, "alarm": 360}},
            "34172": {"transport_delay": {"target": 30, "warning": 90, "alarm": 150}},
        },
    });
    let targets_path = territory.path().join("kpi-targets.json");
    std::fs::write(&targets_path, targets.to_string())?;
    let (path, targets_path) = (territory.path().display().to_string(), targets_path.display().to_string());
    let slice = Slice::start_full(territory, &[], &["--territory", &path, "--kpi-targets", &targets_path]).await?;
    let gateway = slice.gateway_addr.clone();

    // The communes for the selector, with their bounding boxes.
    let (status, answer) = http_get_json(&gateway, "/api/v1/territory").await?;
    assert_eq!(status, 200);
    assert_eq!(
        answer["communes"][0],
        json!({"id": "34172", "name": "Ouest", "population": 1000, "bbox": [3.8, 43.5, 3.9, 43.7]})
    );
    assert_eq!(answer["communes"].as_array().map(Vec::len), Some(2));

    // The basemap: boundaries as MultiPolygons, streets with their name only.
    let (status, communes) = http_get_json(&gateway, "/api/v1/basemap/communes.geojson").await?;
    assert_eq!(status, 200);
    assert_eq!(communes["features"][1]["properties"], json!({"insee": "34129", "name": "Est"}));
    assert_eq!(communes["features"][1]["geometry"]["type"], "MultiPolygon");
    let (_, streets) = http_get_json(&gateway, "/api/v1/basemap/streets.geojson").await?;
    assert_eq!(streets["features"][0]["properties"], json!({"name": "Rue de la Loge", "road_type": ""}));

    // No water service configured: the areas' query says so.
    let (status, error) = http_get_json(&gateway, "/api/v1/water/dmas").await?;
    assert_eq!(status, 503, "{error}");
    assert!(error["error"]["message"].as_str().unwrap_or("").contains("water"), "{error}");

    // The KPI targets: the built-in bands, the file's in their place, each commune's own to its
    // operators only.
    let kpi = &answer["kpi_targets"];
    assert_eq!(kpi["defaults"]["transport_on_time"], json!({"target": 0.92, "warning": 0.88, "alarm": 0.8}));
    assert_eq!(kpi["defaults"]["lighting_availability"]["target"], 0.99, "a built-in band: {kpi}");
    assert_eq!(kpi["communes"].as_object().map(|c| c.len()), Some(2), "the supervisor's: every commune's");
    assert_eq!(answer["alarm_flood"], 10, "the flood's threshold, by default");
    let op_sud = slice.add_operator("op-sud", "operator", &["34129"]).await?;
    let (_, theirs) = tests::http_get_json_as(&gateway, "/api/v1/territory", Some(&op_sud)).await?;
    assert_eq!(
        theirs["kpi_targets"]["communes"],
        json!({"34129": {"transport_delay": {"target": 120.0, "warning": 240.0, "alarm": 360.0}}})
    );

    // A log book entry: durable and applied when answered, then in the audit log as a note.
    let entry = json!({"commune": "34129", "text": "Appel du maire : coupure rue de la Loge"});
    let (status, answer) = http_post_json_as(&gateway, "/api/v1/logbook", &entry, Some(&op_sud)).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["entry"]["action"], "note");
    assert_eq!(answer["entry"]["details"]["text"], "Appel du maire : coupure rue de la Loge");
    let (_, audit) = http_get_json(&gateway, "/api/v1/audit?commune=34129&action=note").await?;
    assert_eq!(audit["items"][0]["actor"], "op-sud");
    let (_, audit) = http_get_json(&gateway, "/api/v1/audit?commune=34172&action=note").await?;
    assert_eq!(audit["items"], json!([]), "another commune's log book does not have it");

    // Bad entries get clear errors; the gateway stays up.
    for (body, needle) in [
        (json!({"commune": "34129", "text": "  "}), "text is required"),
        (json!({"commune": "34.*", "text": "x"}), "commune"),
        (json!({"commune": "34129", "text": "x".repeat(1001)}), "at most 1000"),
        (json!({"commune": "34129", "text": "x", "actor": "someone-else"}), "unknown field"),
    ] {
        let (status, error) = http_post_json(&gateway, "/api/v1/logbook", &body).await?;
        assert_eq!(status, 400, "{body}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(needle), "{body}: {message}");
    }

    // The live session can start under a commune filter; a bad one is refused before upgrading.
    let (status, body) = http_get(&gateway, "/ws?communes=34129,../x").await?;
    assert_eq!(status, 400, "{body}");
    let mut client = LiveClient::connect(&format!("ws://{gateway}/ws?communes=34129")).await?;
    let snapshot = client.next().await?;
    assert_eq!(snapshot["type"], "snapshot");
    let (status, _) = http_get(&gateway, "/health").await?;
    assert_eq!(status, 200);
    Ok(())
}

/// An asset's trend: its history is read from the stream by its own subject, within the caller's
/// communes, with its alarms marked; bad requests get clear errors, and an asset of another
/// commune gets the unknown asset's answer.
#[tokio::test]
async fn an_assets_history_is_read_from_its_subject_within_the_callers_communes() -> Result<()> {
    use proto::lighting::{RegisterStreetlightsRequest, ReportStatusRequest, StatusReport, Streetlight};
    use std::time::{Duration, SystemTime};
    let slice = Slice::start().await?;
    let gateway = slice.gateway_addr.clone();
    let mut lighting = slice.lighting_client().await?;
    let lamp = |id: &str, lon: f64| Streetlight { id: id.into(), lat: 43.6, lon, ..Default::default() };
    // EP1 in 34172 (west), EP2 beside it, EP9 in 34129 (east).
    lighting
        .register_streetlights(RegisterStreetlightsRequest {
            streetlights: vec![lamp("EP1", 3.85), lamp("EP2", 3.851), lamp("EP9", 3.95)],
        })
        .await?;
    let report = |id: &str, minutes_ago: u64, level: f64, status: i32| ReportStatusRequest {
        report: Some(StatusReport {
            streetlight_id: id.into(),
            observed_at: Some((SystemTime::now() - Duration::from_secs(minutes_ago * 60)).into()),
            status,
            power_state: 2,
            illuminance_level: level,
            power_consumption_w: 100.0 * level,
            voltage_v: None,
        }),
    };
    // A quarter of an hour of EP1 dimming up, one report a minute, EP2's in between; then EP1 fails.
    for minute in 0..15u64 {
        lighting.report_status(report("EP1", 15 - minute, minute as f64 / 20.0, 1)).await?;
        lighting.report_status(report("EP2", 15 - minute, 0.9, 1)).await?;
    }
    lighting.report_status(report("EP1", 0, 0.0, proto::lighting::LampStatus::DefectiveLamp as i32)).await?;

    // The trend: EP1's reports only, in order, and its failure's alarm.
    let history = tests::eventually("EP1's failure in its history", Duration::from_secs(10), || async {
        let (status, history) = http_get_json(&gateway, "/api/v1/assets/lighting/EP1/history").await?;
        assert_eq!(status, 200, "{history}");
        // (By day a lamp lit also raises `lamp_on_in_daytime`: its failure is the one awaited.)
        if history["alarms"].as_array().is_some_and(|a| a.iter().any(|m| m["alarm_type"] == "lamp_failure")) {
            Ok(Some(history))
        } else {
            Err(anyhow::anyhow!("EP1's history: {history}"))
        }
    })
    .await?;
    let series = history["series"].as_array().cloned().unwrap_or_default();
    let level = series.iter().find(|s| s["name"] == "illuminance_level").cloned().unwrap_or_default();
    assert_eq!(level["unit"], "%");
    let points = level["points"].as_array().cloned().unwrap_or_default();
    assert_eq!(points.len(), 16, "EP1's 16 reports and none of EP2's: {level}");
    let values: Vec<f64> = points.iter().filter_map(|p| p[1].as_f64()).collect();
    assert_eq!(values[..3], [0.0, 5.0, 10.0]);
    let times: Vec<i64> = points.iter().filter_map(|p| p[0].as_i64()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "oldest first: {times:?}");
    assert!(series.iter().any(|s| s["name"] == "power_consumption_w" && s["unit"] == "W"), "{series:?}");
    let alarms = history["alarms"].as_array().cloned().unwrap_or_default();
    let alarm = alarms.iter().find(|m| m["alarm_type"] == "lamp_failure").cloned().unwrap_or_default();
    assert_eq!(
        (&alarm["alarm_type"], &alarm["severity"], &alarm["raised"]),
        (&json!("lamp_failure"), &json!("minor"), &json!(true))
    );
    assert_eq!(history["truncated"], false);
    assert!(history["events"].as_u64().is_some_and(|n| n >= 17), "{history}");

    // An operator of the other commune: EP1 is not theirs, and the answer is the unknown asset's.
    let east = slice.add_operator("op-est", "operator", &["34129"]).await?;
    let (theirs, mine) = (
        tests::http_get_json_as(&gateway, "/api/v1/assets/lighting/EP1/history", Some(&east)).await?,
        tests::http_get_json_as(&gateway, "/api/v1/assets/lighting/NOPE/history", Some(&east)).await?,
    );
    assert_eq!((theirs.0, mine.0), (404, 404), "{} / {}", theirs.1, mine.1);
    assert_eq!(
        theirs.1["error"]["message"].as_str().map(|m| m.replace("EP1", "NOPE")),
        mine.1["error"]["message"].as_str().map(str::to_owned)
    );
    let (status, _) = tests::http_get_json_as(&gateway, "/api/v1/assets/lighting/EP9/history", Some(&east)).await?;
    assert_eq!(status, 200, "their own lamp");

    // Bad requests get clear errors; the gateway stays up.
    for (path, needle) in [
        ("/api/v1/assets/lighting/EP1/history?hours=0", "hours is 1 to 168"),
        ("/api/v1/assets/lighting/EP1/history?hours=169", "hours is 1 to 168"),
        ("/api/v1/assets/lighting/EP1/history?days=1", "unknown field"),
        ("/api/v1/assets/ops/EP1/history", "domain is one of"),
        ("/api/v1/assets/lighting/EP.1/history", "asset id"),
    ] {
        let (status, error) = http_get_json(&gateway, path).await?;
        assert_eq!(status, 400, "{path}: {error}");
        assert!(error["error"]["message"].as_str().unwrap_or("").contains(needle), "{path}: {error}");
    }
    let (status, _) = http_get(&gateway, "/health").await?;
    assert_eq!(status, 200);
    Ok(())
}
