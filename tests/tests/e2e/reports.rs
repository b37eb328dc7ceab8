//! Citizen reports end to end: an Open311 client written from the specification exercises every
//! endpoint against the real service (routing at a commune border, duplicates within and beyond
//! 50 m, errors); the reports reach the gateway in their communes; an operator's status changes
//! are recorded with their history and survive a SIGKILL; addresses are placed on the streets;
//! a client posting too fast is slowed down.

use anyhow::{Context, Result, bail};
use proto::reports::{ChangeStatusRequest, CreateRequestRequest, GetRequestRequest, ReportStatus};
use tests::{Slice, http_get, http_post_form, repo_root, test_territory};

/// A street of commune 34172 (lon 3.85-3.86 at lat 43.65) for addresses.
fn write_streets(territory: &std::path::Path) -> Result<()> {
    let streets = r#"{"type":"FeatureCollection","features":[
      {"type":"Feature","properties":{"name":"Rue de la Mairie"},"geometry":{"type":"LineString","coordinates":[[3.85,43.65],[3.86,43.65]]}}]}"#;
    std::fs::write(territory.join("streets.geojson"), streets)?;
    Ok(())
}

#[tokio::test]
async fn open311_clients_report_and_operators_follow_up() -> Result<()> {
    let territory = test_territory()?;
    write_streets(territory.path())?;
    let slice = Slice::start_in(territory).await?;
    let mut reports = slice.start_reports(&["--rate-per-minute", "40", "--kpi-interval", "1s"]).await?;
    // It follows the lighting alarms on the bus, which its NATS permissions allow.
    reports.process.wait_for_log("following lighting alarms", 0)?;
    let mut live = slice.live_client().await?;
    assert_eq!(live.next().await?["type"], "snapshot");

    // The independent client: the border between 34172 and 34129 runs along lon 3.90.
    let points = r#"{"a": [43.6, 3.8999, "34172"], "b": [43.6, 3.90015, "34129"], "outside": [43.6, 4.5]}"#;
    let output = std::process::Command::new("python3")
        .arg(repo_root().join("tests/open311_client.py"))
        .arg(format!("http://{}/open311/v2", reports.http_addr))
        .arg(points)
        .output()
        .context("running python3")?;
    if !output.status.success() {
        bail!("the Open311 client failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let ids: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let first = ids["first"].as_str().context("first id")?.to_owned();
    let other = ids["other_commune"].as_str().context("other id")?.to_owned();

    // Both reach the gateway, each in its commune, without the reporter's contact.
    let first_asset = format!("report-{first}");
    let other_asset = format!("report-{other}");
    let mut communes = std::collections::HashMap::new();
    live.until(|f| {
        let asset = &f["asset"];
        if asset["details"]["type"] == "report" {
            communes.insert(asset["id"].as_str().unwrap_or_default().to_owned(), asset["commune"].clone());
            assert!(!f.to_string().contains("habitant@example.org"), "no contact on the live stream");
        }
        communes.contains_key(&first_asset) && communes.contains_key(&other_asset)
    })
    .await?;
    assert_eq!((communes[&first_asset].as_str(), communes[&other_asset].as_str()), (Some("34172"), Some("34129")));

    // An operator moves the first report on; the history records who and when.
    let mut client = reports.reports_client().await?;
    for (status, note) in [(ReportStatus::InProgress, ""), (ReportStatus::Fixed, "Dépôt enlevé par la propreté")] {
        client
            .change_status(ChangeStatusRequest {
                service_request_id: first.clone(),
                status: status as i32,
                note: note.into(),
                actor: "agent.proprete".into(),
                allowed_communes: Vec::new(),
            })
            .await?;
    }
    let refused = client
        .change_status(ChangeStatusRequest {
            service_request_id: first.clone(),
            status: ReportStatus::Fixed as i32,
            note: String::new(),
            actor: "x".into(),
            allowed_communes: Vec::new(),
        })
        .await
        .expect_err("fixed already");
    assert!(refused.message().contains("fixed already"), "{}", refused.message());
    let refused = client
        .change_status(ChangeStatusRequest {
            service_request_id: first.clone(),
            status: ReportStatus::Closed as i32,
            note: String::new(),
            actor: String::new(),
            allowed_communes: Vec::new(),
        })
        .await
        .expect_err("who");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // An operator limited to other communes does not find this request.
    let hidden = client
        .change_status(ChangeStatusRequest {
            service_request_id: first.clone(),
            status: ReportStatus::Closed as i32,
            note: String::new(),
            actor: "op".into(),
            allowed_communes: vec!["99999".into()],
        })
        .await
        .expect_err("another commune's");
    assert_eq!(hidden.code(), tonic::Code::NotFound);
    let frames = live
        .until(|f| f["asset"]["id"] == first_asset.as_str() && f["asset"]["details"]["detailed_status"] == "fixed")
        .await?;
    assert_eq!(frames[frames.len() - 1]["asset"]["details"]["status"], "closed");
    // The commune's KPIs count it closed, with the time it took.
    let frames = live
        .until(|f| {
            f["kpi"]["domain"] == "reports"
                && f["kpi"]["commune"] == "34172"
                && f["kpi"]["values"]["closed_last_7d"].as_f64().is_some_and(|v| v >= 1.0)
        })
        .await?;
    let kpi = &frames[frames.len() - 1]["kpi"]["values"];
    assert!(kpi["median_time_to_close_s"].as_f64().is_some_and(|s| (0.0..600.0).contains(&s)), "{kpi}");
    assert!(kpi["open"].as_f64().is_some_and(|n| n >= 1.0), "{kpi}");

    // SIGKILL: what was acknowledged is there after a restart.
    reports.process.kill()?;
    let from = reports.process.restart()?;
    reports.read_addresses(from)?;
    let mut client = reports.reports_client().await?;
    let request = client.get_request(GetRequestRequest { service_request_id: first.clone() }).await?.into_inner();
    let history: Vec<(String, i32)> = request.history.iter().map(|h| (h.actor.clone(), h.to)).collect();
    assert_eq!(
        history,
        [
            ("citizen".to_owned(), ReportStatus::Open as i32),
            ("system".to_owned(), ReportStatus::Open as i32),
            ("system".to_owned(), ReportStatus::Open as i32),
            ("agent.proprete".to_owned(), ReportStatus::InProgress as i32),
            ("agent.proprete".to_owned(), ReportStatus::Fixed as i32),
        ],
        "created, two duplicates linked, then the operator's two steps"
    );
    assert!(request.contact.is_none(), "the contact is not published over gRPC either");
    let (status, body) = http_get(&reports.http_addr, &format!("/open311/v2/requests/{first}.json")).await?;
    let open311: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(status, 200);
    assert_eq!(open311[0]["status"], "closed");
    assert_eq!(open311[0]["status_notes"], "Dépôt enlevé par la propreté");

    // An address placed on the territory's streets.
    let placed = client
        .create_request(CreateRequestRequest {
            service_code: "voirie-nid-de-poule".into(),
            address_string: "12 rue de la mairie".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .request
        .context("a request")?;
    assert_eq!(placed.commune, "34172");
    assert!((placed.lat - 43.65).abs() < 1e-6 && (3.85..=3.86).contains(&placed.lon), "{placed:?}");
    let unknown = client
        .create_request(CreateRequestRequest {
            service_code: "voirie-nid-de-poule".into(),
            address_string: "1 boulevard Inconnu".into(),
            ..Default::default()
        })
        .await
        .expect_err("no such street");
    assert!(unknown.message().contains("lat and long"), "{}", unknown.message());

    // A client posting too fast gets 429, in the Open311 error format; others are not affected.
    let mut throttled = false;
    for _ in 0..60 {
        let (status, body) =
            http_post_form(&reports.http_addr, "/open311/v2/requests.json", "service_code=eau-fuite").await?;
        if status == 429 {
            assert!(body.contains("\"code\":429"), "{body}");
            throttled = true;
            break;
        }
        assert_eq!(status, 400, "{body}");
    }
    assert!(throttled, "40 per minute, then 429");
    let (status, _) = http_get(&reports.http_addr, "/open311/v2/services.json").await?;
    assert_eq!(status, 200, "reading is not limited");
    Ok(())
}
