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
    let path = territory.path().display().to_string();
    let slice = Slice::start_full(territory, &[], &["--territory", &path]).await?;
    let gateway = slice.gateway_addr.clone();

    // The communes for the selector, with their bounding boxes.
    let (status, answer) = http_get_json(&gateway, "/api/v1/territory")?;
    assert_eq!(status, 200);
    assert_eq!(
        answer["communes"][0],
        json!({"id": "34172", "name": "Ouest", "population": 1000, "bbox": [3.8, 43.5, 3.9, 43.7]})
    );
    assert_eq!(answer["communes"].as_array().map(Vec::len), Some(2));

    // The basemap: boundaries as MultiPolygons, streets with their name only.
    let (status, communes) = http_get_json(&gateway, "/api/v1/basemap/communes.geojson")?;
    assert_eq!(status, 200);
    assert_eq!(communes["features"][1]["properties"], json!({"insee": "34129", "name": "Est"}));
    assert_eq!(communes["features"][1]["geometry"]["type"], "MultiPolygon");
    let (_, streets) = http_get_json(&gateway, "/api/v1/basemap/streets.geojson")?;
    assert_eq!(streets["features"][0]["properties"], json!({"name": "Rue de la Loge", "road_type": ""}));

    // No water service configured: the areas' query says so.
    let (status, error) = http_get_json(&gateway, "/api/v1/water/dmas")?;
    assert_eq!(status, 503, "{error}");
    assert!(error["error"]["message"].as_str().unwrap_or("").contains("water"), "{error}");

    // A log book entry: durable and applied when answered, then in the audit log as a note.
    let entry = json!({"commune": "34129", "text": "Appel du maire : coupure rue de la Loge"});
    let op_sud = slice.add_operator("op-sud", "operator", &["34129"])?;
    let (status, answer) = http_post_json_as(&gateway, "/api/v1/logbook", &entry, Some(&op_sud))?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["entry"]["action"], "note");
    assert_eq!(answer["entry"]["details"]["text"], "Appel du maire : coupure rue de la Loge");
    let (_, audit) = http_get_json(&gateway, "/api/v1/audit?commune=34129&action=note")?;
    assert_eq!(audit["items"][0]["actor"], "op-sud");
    let (_, audit) = http_get_json(&gateway, "/api/v1/audit?commune=34172&action=note")?;
    assert_eq!(audit["items"], json!([]), "another commune's log book does not have it");

    // Bad entries get clear errors; the gateway stays up.
    for (body, needle) in [
        (json!({"commune": "34129", "text": "  "}), "text is required"),
        (json!({"commune": "34.*", "text": "x"}), "commune"),
        (json!({"commune": "34129", "text": "x".repeat(1001)}), "at most 1000"),
        (json!({"commune": "34129", "text": "x", "actor": "someone-else"}), "unknown field"),
    ] {
        let (status, error) = http_post_json(&gateway, "/api/v1/logbook", &body)?;
        assert_eq!(status, 400, "{body}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(needle), "{body}: {message}");
    }

    // The live session can start under a commune filter; a bad one is refused before upgrading.
    let (status, body) = http_get(&gateway, "/ws?communes=34129,../x")?;
    assert_eq!(status, 400, "{body}");
    let mut client = LiveClient::connect(&format!("ws://{gateway}/ws?communes=34129")).await?;
    let snapshot = client.next().await?;
    assert_eq!(snapshot["type"], "snapshot");
    let (status, _) = http_get(&gateway, "/health")?;
    assert_eq!(status, 200);
    Ok(())
}
