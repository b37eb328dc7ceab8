//! Public transport from the simulator: vehicles run a timetable along its shape, replayed ×20,
//! reach the gateway as moving vehicles, and a bunching episode raises an alarm that clears; the
//! communes' KPIs (vehicles, punctuality) follow. The
//! GTFS-Realtime feeds decode with Google's official bindings and agree with the service; service
//! alerts go through the feed and survive a restart.

use anyhow::{Context, Result, bail};
use proto::transport::{
    AlertCause, AlertEffect, GetTripArrivalsRequest, InformedEntity, ListServiceAlertsRequest, ListVehiclesRequest,
    LocalizedText, ServiceAlert, WithdrawServiceAlertRequest,
};
use std::collections::HashMap;
use tests::{Slice, decode_gtfs_rt_officially, http_get_bytes, test_territory};

const DEG_PER_M_LON: f64 = 1.0 / (111_320.0 * 0.724_172_6); // cos(43.6°)
const STOPS: u64 = 12;
const HEADWAY_S: u64 = 360;

fn hms(s: u64) -> String {
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// A fixed-offset time zone where it is about 13:00 now: the replayed half hour stays far from
/// midnight and from the timetable day's turn at 03:00 (which the unit tests cover).
fn midday_zone() -> Result<String> {
    let utc_hour = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() / 3600 % 24) as i64;
    let offset = (13 - utc_hour + 12).rem_euclid(24) - 12;
    Ok(match offset {
        0 => "Etc/GMT".to_owned(),
        k if k > 0 => format!("Etc/GMT-{k}"),
        k => format!("Etc/GMT+{}", -k),
    })
}

/// Line R1, in a zone where it is midday: 12 stops 500 m apart eastwards from lon 3.85 (it crosses from commune 34172
/// into 34129), 2 minutes apart; a trip every 6 minutes of every day, from 00:00 to 28:00 (the
/// small hours run the previous day's trips and the day's own), so that any time of a test run,
/// the day's turn included, has trips on the road.
fn write_feed(territory: &std::path::Path) -> Result<()> {
    let lon = |m: f64| 3.85 + m * DEG_PER_M_LON;
    let stops: String = (0..STOPS).map(|i| format!("S{i},Arrêt {i},43.6,{}\n", lon(i as f64 * 500.0))).collect();
    let mut trips = String::new();
    let mut stop_times = String::new();
    for k in 0..(28 * 3600 / HEADWAY_S) {
        let start = k * HEADWAY_S;
        trips.push_str(&format!("R1,DAILY,T{k},0,SH\n"));
        for i in 0..STOPS {
            let t = hms(start + i * 120);
            stop_times.push_str(&format!("T{k},{t},{t},S{i},{},{}\n", i + 1, i * 500));
        }
    }
    let files = [
        ("agency.txt", format!("agency_id,agency_name,agency_url,agency_timezone\nA,Test,http://example.org,{}\n", midday_zone()?)),
        ("routes.txt", "route_id,agency_id,route_short_name,route_long_name,route_type\nR1,A,1,Ligne 1,0\n".to_owned()),
        ("stops.txt", format!("stop_id,stop_name,stop_lat,stop_lon\n{stops}")),
        ("trips.txt", format!("route_id,service_id,trip_id,direction_id,shape_id\n{trips}")),
        (
            "stop_times.txt",
            format!("trip_id,arrival_time,departure_time,stop_id,stop_sequence,shape_dist_traveled\n{stop_times}"),
        ),
        (
            "calendar.txt",
            "service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,start_date,end_date\nDAILY,1,1,1,1,1,1,1,20200101,20991231\n"
                .to_owned(),
        ),
        (
            "shapes.txt",
            format!(
                "shape_id,shape_pt_lat,shape_pt_lon,shape_pt_sequence\nSH,43.6,{},1\nSH,43.6,{},2\n",
                lon(0.0),
                lon((STOPS - 1) as f64 * 500.0)
            ),
        ),
    ];
    tests::write_gtfs_zip(territory, &files)
}

async fn feed(http_addr: &str, name: &str) -> Result<serde_json::Value> {
    let (status, body) = http_get_bytes(http_addr, &format!("/gtfs-rt/{name}")).await?;
    if status != 200 {
        bail!("GET /gtfs-rt/{name}: {status}");
    }
    decode_gtfs_rt_officially(&body)
}

fn entities(feed: &serde_json::Value) -> Vec<serde_json::Value> {
    feed["entity"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn simulated_vehicles_move_bunch_and_recover_and_the_gtfs_rt_feed_agrees() -> Result<()> {
    let territory = test_territory()?;
    write_feed(territory.path())?;
    let slice = Slice::start_in(territory).await?;
    let mut transport = slice.start_transport(&["--kpi-interval", "2s"]).await?;
    let mut live = slice.live_client().await?;
    assert_eq!(live.next().await?["type"], "snapshot");
    let transport_url = format!("http://{}", transport.grpc_addr);
    let mut simulator = slice.start_simulator(&[
        "--parts",
        "transport",
        "--transport-url",
        &transport_url,
        "--replay-from",
        "30m",
        "--speed",
        "20",
        "--bunching-every",
        "1m",
        "--breakdowns-per-hour",
        "0",
        "--late-trips",
        "0",
        "--report-s",
        "10",
        "--seed",
        "4",
    ])?;

    // Vehicles move: one vehicle seen at two places.
    let mut seen: HashMap<String, f64> = HashMap::new();
    live.until(|f| {
        let asset = &f["asset"];
        if asset["details"]["type"] != "vehicle" {
            return false;
        }
        let (id, lon) = (asset["id"].as_str().unwrap_or_default(), asset["position"]["lon"].as_f64().unwrap_or(0.0));
        match seen.insert(id.to_owned(), lon) {
            Some(before) => (lon - before).abs() > 1e-5,
            None => false,
        }
    })
    .await
    .context("a vehicle moving")?;

    // A bunching episode: an alarm on the follower, which clears when the leader recovers.
    let frames = live
        .until(|f| {
            f["alarm"]["key"].as_str().is_some_and(|k| k.starts_with("transport/bunching/"))
                && f["alarm"]["active"] == true
        })
        .await
        .context("a bunching alarm")?;
    let raised = frames[frames.len() - 1]["alarm"].clone();
    let key = raised["key"].as_str().unwrap_or_default().to_owned();
    assert_eq!(raised["alarm_type"], "bunching", "{raised}");
    let frames = live
        .until(|f| f["alarm"]["key"] == key.as_str() && f["alarm"]["active"] == false)
        .await
        .context("the bunching alarm clearing")?;
    assert_eq!(frames[frames.len() - 1]["alarm"]["key"], key.as_str());

    // The KPIs of a commune: vehicles in service and punctuality.
    let frames = live
        .until(|f| {
            f["kpi"]["domain"] == "transport" && f["kpi"]["values"]["vehicles"].as_f64().is_some_and(|v| v > 0.0)
        })
        .await
        .context("transport KPIs")?;
    let kpi = &frames[frames.len() - 1]["kpi"];
    let punctuality = kpi["values"]["punctuality"].as_f64().context("punctuality")?;
    assert!((0.0..=1.0).contains(&punctuality), "{kpi}");
    assert!(["34172", "34129"].contains(&kpi["commune"].as_str().unwrap_or_default()), "{kpi}");

    // The feeds, read with the official bindings, agree with what the service holds (the
    // simulator is stopped first so that nothing moves in between).
    simulator.kill()?;
    let mut client = transport.transport_client().await?;
    let vehicles = client.list_vehicles(ListVehiclesRequest::default()).await?.into_inner().vehicles;
    let positions = feed(&transport.http_addr, "vehicle-positions").await?;
    assert_eq!(positions["header"]["gtfs_realtime_version"], "2.0");
    let in_feed = entities(&positions);
    let running: Vec<_> = vehicles.iter().filter(|v| !v.trip_finished).collect();
    assert!(
        !in_feed.is_empty() && in_feed.len() == running.len(),
        "{} in the feed, {} running: {running:?}",
        in_feed.len(),
        running.len()
    );
    for entity in &in_feed {
        let v = &entity["vehicle"];
        let id = v["vehicle"]["id"].as_str().unwrap_or_default();
        let state = running
            .iter()
            .find(|s| s.position.as_ref().is_some_and(|p| p.vehicle_id == id))
            .with_context(|| format!("vehicle {id} of the feed is not in the service"))?;
        let p = state.position.as_ref().context("a position")?;
        assert_eq!(entity["id"], id);
        assert_eq!(v["trip"]["trip_id"], p.trip_id.as_str());
        assert_eq!(v["trip"]["route_id"], "R1");
        assert!((v["position"]["latitude"].as_f64().unwrap_or(0.0) - p.lat).abs() < 1e-5);
        assert!((v["position"]["longitude"].as_f64().unwrap_or(0.0) - p.lon).abs() < 1e-5);
        assert_eq!(v["current_stop_sequence"].as_u64().unwrap_or(0), u64::from(p.current_stop_sequence));
        assert_eq!(v["timestamp"].as_str().and_then(|t| t.parse::<i64>().ok()), p.timestamp.map(|t| t.seconds));
    }
    // Trip updates: one per running vehicle with its delay, and the same arrivals as the query.
    let updates = feed(&transport.http_addr, "trip-updates").await?;
    // One whose vehicle's delay is known (the others' stops say NO_DATA, without times).
    let update = entities(&updates)
        .into_iter()
        .find(|u| u["trip_update"]["delay"].is_number())
        .context("a trip update with its delay")?;
    let trip_id = update["trip_update"]["trip"]["trip_id"].as_str().unwrap_or_default().to_owned();
    let arrivals = client.get_trip_arrivals(GetTripArrivalsRequest { trip_id: trip_id.clone() }).await?.into_inner();
    let from_feed: Vec<(u64, i64)> = update["trip_update"]["stop_time_update"]
        .as_array()
        .context("stop time updates")?
        .iter()
        .map(|u| {
            (
                u["stop_sequence"].as_u64().unwrap_or(0),
                u["arrival"]["time"].as_str().and_then(|t| t.parse().ok()).unwrap_or(0),
            )
        })
        .collect();
    let from_query: Vec<(u64, i64)> = arrivals
        .arrivals
        .iter()
        .map(|a| (u64::from(a.stop_sequence), a.predicted_arrival.map(|t| t.seconds).unwrap_or(0)))
        .collect();
    assert!(!from_query.is_empty() && from_query.iter().all(|(_, t)| *t > 0), "{from_query:?}");
    assert_eq!(from_feed, from_query, "trip {trip_id}: the feed and the query predict the same arrivals");
    assert!(arrivals.arrivals[0].stop_name.starts_with("Arrêt"));

    // A service alert: refused when it names an unknown stop, published, in the Alerts feed with
    // the standard's numbers, kept across a restart, then withdrawn.
    let mut alert = ServiceAlert {
        id: "travaux-S3".into(),
        cause: AlertCause::Construction as i32,
        effect: AlertEffect::Detour as i32,
        informed_entities: vec![InformedEntity { stop_id: "S404".into(), ..Default::default() }],
        header: vec![LocalizedText { language: "fr".into(), text: "Arrêt 3 déplacé".into() }],
        ..Default::default()
    };
    let refused = client.publish_service_alert(alert.clone()).await.expect_err("unknown stop");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("S404"), "{}", refused.message());
    alert.informed_entities = vec![InformedEntity { route_id: "R1".into(), ..Default::default() }];
    let published = client.publish_service_alert(alert).await?.into_inner();
    assert_eq!(published.communes, ["34129", "34172"], "the line crosses both communes");
    transport.process.kill()?; // SIGKILL: the acknowledged alert was flushed before the reply
    let from = transport.process.restart()?;
    transport.read_addresses(from)?;
    let mut client = transport.transport_client().await?;
    let restored = client.list_vehicles(ListVehiclesRequest::default()).await?.into_inner().vehicles;
    assert_eq!(restored, vehicles, "the vehicles are restored as they were");
    let alerts = feed(&transport.http_addr, "alerts").await?;
    let alert = &entities(&alerts)[0]["alert"];
    assert_eq!(alert["cause"], "CONSTRUCTION");
    assert_eq!(alert["effect"], "DETOUR");
    assert_eq!(alert["header_text"]["translation"][0]["text"], "Arrêt 3 déplacé");
    assert_eq!(alert["informed_entity"][0]["route_id"], "R1");
    client
        .withdraw_service_alert(WithdrawServiceAlertRequest {
            id: "travaux-S3".into(),
            reason: "fin des travaux".into(),
        })
        .await?;
    assert!(client.list_service_alerts(ListServiceAlertsRequest {}).await?.into_inner().alerts.is_empty());
    assert!(entities(&feed(&transport.http_addr, "alerts").await?).is_empty());
    Ok(())
}
