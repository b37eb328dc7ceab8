//! Public transport end to end: positions streamed by an AVL system reach the gateway as moving
//! vehicles with their schedule adherence; an off-route vehicle raises an alarm that clears;
//! bad positions are refused and counted.

use anyhow::Result;
use proto::transport::{ListVehiclesRequest, VehiclePosition};
use std::time::{SystemTime, UNIX_EPOCH};
use tests::{Slice, test_territory};

const DEG_PER_M_LON: f64 = 1.0 / (111_320.0 * 0.724_172_6); // cos(43.6°)

fn hms(s: u64) -> String {
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// A one-line network in commune 34172, in UTC: trip T1 left S0 two minutes ago and serves S1 and
/// S2 every 5 minutes, 1 km apart.
pub(crate) fn write_feed(territory: &std::path::Path) -> Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() % 86_400;
    // Just after midnight, the trip belongs to yesterday's service (GTFS times past 24:00).
    let start = if now < 300 { now + 86_400 - 120 } else { now - 120 };
    let lon = |m: f64| 3.85 + m * DEG_PER_M_LON;
    let stops: String = (0..3).map(|i| format!("S{i},Arrêt {i},43.6,{}\n", lon(f64::from(i) * 1000.0))).collect();
    let stop_times: String =
        (0..3u64).map(|i| format!("T1,{t},{t},S{i},{},{}\n", i + 1, i * 1000, t = hms(start + i * 300))).collect();
    let files = [
        ("agency.txt", "agency_id,agency_name,agency_url,agency_timezone\nA,Test,http://example.org,UTC\n".to_owned()),
        ("routes.txt", "route_id,route_short_name,route_long_name,route_type\nR1,1,Ligne 1,3\n".to_owned()),
        ("stops.txt", format!("stop_id,stop_name,stop_lat,stop_lon\n{stops}")),
        ("trips.txt", "route_id,service_id,trip_id,direction_id,shape_id\nR1,DAILY,T1,0,SH\n".to_owned()),
        ("stop_times.txt", format!("trip_id,arrival_time,departure_time,stop_id,stop_sequence,shape_dist_traveled\n{stop_times}")),
        ("calendar.txt", "service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,start_date,end_date\nDAILY,1,1,1,1,1,1,1,20200101,20991231\n".to_owned()),
        ("shapes.txt", format!("shape_id,shape_pt_lat,shape_pt_lon,shape_pt_sequence\nSH,43.6,{},1\nSH,43.6,{},2\n", lon(0.0), lon(2000.0))),
    ];
    tests::write_gtfs_zip(territory, &files)
}

/// A position `east_m` along the line and `north_m` off it, now. T1 is due at 400 m now.
pub(crate) fn position(vehicle: &str, trip: &str, east_m: f64, north_m: f64) -> VehiclePosition {
    VehiclePosition {
        vehicle_id: vehicle.into(),
        vehicle_label: "Bus 1".into(),
        trip_id: trip.into(),
        lat: 43.6 + north_m / 111_132.0,
        lon: 3.85 + east_m * DEG_PER_M_LON,
        current_stop_sequence: 1,
        timestamp: Some(SystemTime::now().into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn vehicles_move_live_off_route_alarms_raise_and_clear_bad_positions_are_counted() -> Result<()> {
    let territory = test_territory()?;
    write_feed(territory.path())?;
    let slice = Slice::start_in(territory).await?;
    let transport = slice.start_transport(&[]).await?;
    let mut client = transport.transport_client().await?;
    let mut live = slice.live_client().await?;
    assert_eq!(live.next().await?["type"], "snapshot");

    // On time at 400 m (two minutes after leaving S0, 1 km per 5 minutes).
    let summary =
        client.report_positions(futures::stream::iter(vec![position("V1", "T1", 400.0, 0.0)])).await?.into_inner();
    assert_eq!((summary.accepted, summary.refused), (1, 0), "{summary:?}");
    let frames = live.until(|f| f["asset"]["details"]["type"] == "vehicle").await?;
    let vehicle = &frames[frames.len() - 1]["asset"];
    assert_eq!(vehicle["id"], "V1");
    assert_eq!(vehicle["commune"], "34172");
    assert_eq!(vehicle["details"]["trip_id"], "T1");
    assert_eq!(vehicle["details"]["route_id"], "R1");
    let delay = vehicle["details"]["delay_s"].as_f64().expect("a delay");
    assert!(delay.abs() < 30.0, "on time, give or take the test's own seconds: {delay}");

    // 200 m off its route: an alarm; back on it: cleared.
    client.report_positions(futures::stream::iter(vec![position("V1", "T1", 450.0, 200.0)])).await?;
    let frames = live.until(|f| f["alarm"].is_object()).await?;
    let alarm = &frames[frames.len() - 1]["alarm"];
    assert_eq!(
        (alarm["key"].as_str(), alarm["severity"].as_str(), alarm["active"].as_bool()),
        (Some("transport/off_route/V1"), Some("major"), Some(true))
    );
    client.report_positions(futures::stream::iter(vec![position("V1", "T1", 500.0, 0.0)])).await?;
    let frames = live.until(|f| f["alarm"].is_object()).await?;
    let cleared = &frames[frames.len() - 1]["alarm"];
    assert_eq!((cleared["key"].as_str(), cleared["active"].as_bool()), (Some("transport/off_route/V1"), Some(false)));

    // Bad positions are refused, counted, and do not end the stream.
    let mut nan = position("V1", "T1", 600.0, 0.0);
    nan.lat = f64::NAN;
    let mut unknown_status = position("V1", "T1", 600.0, 0.0);
    unknown_status.current_status = 99;
    let batch = vec![
        nan,
        position("V1", "T404", 600.0, 0.0),
        position("V.1", "T1", 600.0, 0.0),
        unknown_status,
        position("V1", "T1", 600.0, 0.0),
    ];
    let summary = client.report_positions(futures::stream::iter(batch)).await?.into_inner();
    assert_eq!((summary.accepted, summary.refused), (1, 4), "{summary:?}");
    assert!(summary.errors.iter().any(|e| e.index == 3 && e.message.contains("current_status")), "{summary:?}");
    let messages: Vec<&str> = summary.errors.iter().map(|e| e.message.as_str()).collect();
    assert!(
        messages[0].contains("WGS84") && messages[1].contains("T404") && messages[2].contains("'.'"),
        "{messages:?}"
    );

    let vehicles = client.list_vehicles(ListVehiclesRequest { route_id: "R1".into() }).await?.into_inner().vehicles;
    assert_eq!(vehicles.len(), 1);
    assert!((vehicles[0].along_m - 600.0).abs() < 2.0, "{:?}", vehicles[0]);
    Ok(())
}
