//! Hostile and careless callers (issue 20): one scenario per hole an outside reading found, each
//! against the real binaries, each asserting the property attacked (no foreign data, the process
//! up, bounded resources).

use anyhow::{Context, Result};
use serde_json::json;
use tests::{LiveClient, Slice, http_get_json_as, http_post_json_as, test_territory};

use crate::transport::{position, write_feed};

/// The alarms (or assets) a caller's REST view holds, by key (or id).
fn keys(gateway: &str, path: &str, token: &str, field: &str) -> Result<Vec<String>> {
    let (status, answer) = http_get_json_as(gateway, path, Some(token))?;
    anyhow::ensure!(status == 200, "{path}: {status} {answer}");
    Ok(answer["items"].as_array().into_iter().flatten().filter_map(|i| i[field].as_str().map(str::to_owned)).collect())
}

/// A vehicle's alarm kept the commune it was first raised in: once the bus crossed into the next
/// commune (its alarm raised again there, same key), the first commune's operators went on seeing
/// it and where it was, and the second's never did; their actions were filed under the first.
/// The view now moves an alarm (and an asset) with its commune: the sessions it leaves get a
/// `removed`, those it enters the object, and REST and actions follow.
#[tokio::test]
async fn a_bus_crossing_into_another_commune_leaves_one_operators_view_and_enters_the_others() -> Result<()> {
    let territory = test_territory()?;
    write_feed(territory.path())?;
    let slice = Slice::start_in(territory).await?;
    let transport = slice.start_transport(&[]).await?;
    let mut client = transport.transport_client().await?;
    let ouest = slice.add_operator("op-ouest", "operator", &["34172"])?;
    let est = slice.add_operator("op-est", "operator", &["34129"])?;
    let url = format!("ws://{}/ws?coalesce=false", slice.gateway_addr);
    let mut west = LiveClient::connect_as(&url, Some(&ouest), None).await?;
    let mut east = LiveClient::connect_as(&url, Some(&est), None).await?;
    assert_eq!(west.next().await?["type"], "snapshot");
    assert_eq!(east.next().await?["type"], "snapshot");
    let key = "transport/off_route/V1";

    // 200 m off its route in Ouest (34172): Ouest's alarm.
    client.report_positions(futures::stream::iter(vec![position("V1", "T1", 450.0, 200.0)])).await?;
    west.until(|f| f["alarm"]["key"] == key && f["alarm"]["commune"] == "34172").await?;
    assert!(keys(&slice.gateway_addr, "/api/v1/alarms", &ouest, "key")?.contains(&key.to_owned()));

    // Eight kilometres east, in Est (34129), still off its route: raised again there.
    client.report_positions(futures::stream::iter(vec![position("V1", "T1", 8000.0, 200.0)])).await?;
    let frames = east.until(|f| f["alarm"]["key"] == key).await?;
    let alarm = &frames[frames.len() - 1]["alarm"];
    assert_eq!(alarm["commune"], "34129", "{alarm}");
    assert!(alarm["position"]["lon"].as_f64().is_some_and(|lon| lon > 3.9), "where it is now: {alarm}");
    // Ouest is told to forget the alarm and the bus, and nothing of where they went.
    let mut removed_alarm = false;
    let mut removed_vehicle = false;
    let frames = west
        .until(|f| {
            removed_alarm |= f["type"] == "removed" && f["alarm"] == key;
            removed_vehicle |= f["type"] == "removed" && f["asset"]["id"] == "V1";
            removed_alarm && removed_vehicle
        })
        .await?;
    for frame in &frames {
        let text = frame.to_string();
        assert!(!text.contains("34129") && !text.contains("3.94"), "Est's data reached Ouest: {text}");
    }

    // REST: each commune sees its own.
    assert!(!keys(&slice.gateway_addr, "/api/v1/alarms", &ouest, "key")?.contains(&key.to_owned()));
    assert!(keys(&slice.gateway_addr, "/api/v1/alarms", &est, "key")?.contains(&key.to_owned()));
    assert!(!keys(&slice.gateway_addr, "/api/v1/assets?domain=transport", &ouest, "id")?.contains(&"V1".to_owned()));
    assert!(keys(&slice.gateway_addr, "/api/v1/assets?domain=transport", &est, "id")?.contains(&"V1".to_owned()));

    // Actions: not Ouest's alarm any more (not found, as any alarm outside one's communes), and
    // Est's acknowledgement is filed under Est.
    let ack = json!({"alarm_key": key, "action": "acknowledge"});
    let (status, answer) = http_post_json_as(&slice.gateway_addr, "/api/v1/alarms/actions", &ack, Some(&ouest))?;
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = http_post_json_as(&slice.gateway_addr, "/api/v1/alarms/actions", &ack, Some(&est))?;
    assert_eq!(status, 200, "{answer}");
    let (_, audit) = http_get_json_as(&slice.gateway_addr, "/api/v1/audit?action=acknowledge", Some(&est))?;
    let entry = audit["items"].as_array().and_then(|items| items.first()).context("Est's acknowledgement audited")?;
    assert_eq!(entry["commune"], "34129", "{entry}");
    let (_, audit) = http_get_json_as(&slice.gateway_addr, "/api/v1/audit", Some(&ouest))?;
    assert!(!audit.to_string().contains(key), "Ouest's audit log holds nothing of it: {audit}");
    Ok(())
}
