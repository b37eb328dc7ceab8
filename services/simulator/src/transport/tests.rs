use super::*;
use transport::geometry::Polyline;
use transport::network::StopTime;

#[test]
fn a_replay_starts_at_the_latest_past_local_time_asked() {
    let paris = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
    // Sunday 2026-12-06 03:07 in Paris (UTC+1).
    let now = 1_796_522_820.0;
    let at = |text: &str| text.parse::<ReplayAt>().unwrap().latest_before(&paris, now).unwrap();
    let local = |unix: f64| jiff::Timestamp::from_second(unix as i64).unwrap().to_zoned(paris.clone()).to_string();
    assert!(local(now).starts_with("2026-12-06T03:07"), "{}", local(now));
    assert!(local(at("08:30")).starts_with("2026-12-05T08:30"), "yesterday's: {}", local(at("08:30")));
    assert!(local(at("02:00")).starts_with("2026-12-06T02:00"), "today's: {}", local(at("02:00")));
    assert!(local(at("tue 08:30")).starts_with("2026-12-01T08:30"), "{}", local(at("tue 08:30")));
    assert!(local(at("Sun 03:00")).starts_with("2026-12-06T03:00"), "{}", local(at("Sun 03:00")));
    for bad in ["8h30", "25:00", "tue", "tues 08:30", "08:61", ""] {
        assert!(bad.parse::<ReplayAt>().is_err(), "{bad:?} accepted");
    }
}

/// One line east from (43.6, 3.85): stops every 500 m, 2 minutes apart; trips every 6 minutes.
fn network(trips: usize) -> Network {
    let mut n = Network::default();
    let deg_per_m = 1.0 / (111_320.0 * 43.6f64.to_radians().cos());
    n.shapes.insert("SH".into(), Polyline::new(vec![(43.6, 3.85), (43.6, 3.85 + 5_000.0 * deg_per_m)]));
    for k in 0..trips {
        let start = 8 * 3600 + k as u32 * 360;
        let stop_times = (0..10u32)
            .map(|i| StopTime {
                stop_id: format!("S{i}"),
                sequence: i + 1,
                arrival_s: start + i * 120,
                departure_s: start + i * 120,
                dist_m: Some(f64::from(i) * 500.0),
            })
            .collect();
        let id = format!("T{k}");
        n.trips.insert(
            id.clone(),
            Trip {
                id,
                route_id: "R".into(),
                service_id: "S".into(),
                direction: 0,
                shape_id: Some("SH".into()),
                headsign: String::new(),
                stop_times,
            },
        );
    }
    n
}

#[test]
fn a_vehicle_is_where_its_timetable_says() {
    let n = network(1);
    let trip = &n.trips["T0"];
    let cases = [
        (8.0 * 3600.0 - 60.0, 0.0, 1, VehicleStopStatus::StoppedAt, "waiting at its first stop"),
        (8.0 * 3600.0 + 60.0, 250.0, 2, VehicleStopStatus::InTransitTo, "halfway to the second stop"),
        (8.0 * 3600.0 + 240.0, 1_000.0, 3, VehicleStopStatus::StoppedAt, "at the third stop"),
        (8.0 * 3600.0 + 2_000.0, 4_500.0, 10, VehicleStopStatus::StoppedAt, "at the terminus"),
    ];
    for (t, along, sequence, status, why) in cases {
        let (lat, lon, _, a, s, st) = locate(&n, trip, t).unwrap();
        assert!((a - along).abs() < 1.0 && s == sequence && st == status, "{why}: {a} {s} {st:?}");
        let p = n.shapes["SH"].project(lat, lon).unwrap();
        assert!((p.along_m - along).abs() < 1.0 && p.offset_m < 1.0, "{why}: on the shape");
    }
}

#[test]
fn vehicles_chain_trips_and_a_day_is_reproducible() {
    // Trips every 6 minutes, 18 minutes long (+3 of layover): 4 vehicles run 12 trips.
    let mut n = network(12);
    let day = chrono::NaiveDate::from_ymd_opt(2026, 2, 2).unwrap();
    n.add_daily_service("S", day, day);
    // (The feed runs on 2026-02-02 only: the previous day adds no trip.)
    let date = chrono::NaiveDate::from_ymd_opt(2026, 2, 2).unwrap();
    let utc = jiff::tz::TimeZone::UTC;
    let plan = |seed| plan_day(&n, &utc, date, &mut rand::rngs::StdRng::seed_from_u64(seed), 0.1);
    let a = plan(1);
    assert_eq!(a.runs.len(), 12);
    assert_eq!(a.vehicles.len(), 4, "{:?}", a.vehicles);
    assert_eq!(a.vehicles[0].0, "LR-01");
    let b = plan(1);
    let delays = |d: &Day| d.runs.iter().map(|r| (r.delay_s, r.target_delay_s)).collect::<Vec<_>>();
    assert_eq!(delays(&a), delays(&b), "the same seed, the same day");
    assert_ne!(delays(&a), delays(&plan(2)));
    assert_eq!(a.runs[0].origin_unix, 1_769_990_400.0, "2026-02-02 00:00 UTC");
}

#[test]
fn the_next_day_joins_with_the_same_fleet() {
    let mut n = network(12);
    let (first, last) =
        (chrono::NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(), chrono::NaiveDate::from_ymd_opt(2026, 2, 3).unwrap());
    n.add_daily_service("S", first, last);
    let utc = jiff::tz::TimeZone::UTC;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut day = plan_day(&n, &utc, chrono::NaiveDate::from_ymd_opt(2026, 2, 2).unwrap(), &mut rng, 0.0);
    assert_eq!((day.runs.len(), day.vehicles.len()), (24, 4), "the day before and the day");
    assert_eq!(add_day(&mut day, &n, &utc, chrono::NaiveDate::from_ymd_opt(2026, 2, 3).unwrap(), &mut rng, 0.0), 12);
    assert_eq!(day.vehicles.len(), 4, "the same vehicles run the next day");
    assert_eq!(day.calendar, chrono::NaiveDate::from_ymd_opt(2026, 2, 3).unwrap());
    let origins: Vec<f64> = day.runs.iter().map(|r| r.origin_unix).collect();
    assert!(origins.windows(2).all(|w| w[0] <= w[1]), "days in order");
    assert_eq!(day.runs[23].origin_unix + 86_400.0, day.runs[24].origin_unix);
}

#[test]
fn a_bunching_episode_brings_the_next_vehicle_close_then_recovers() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let settings = TransportSettings {
        url: String::new(),
        grpc: crate::GrpcAccess { tls: Default::default(), token: None },
        report_s: 15.0,
        breakdowns_per_hour: 0.0,
        bunching_every: Duration::from_secs(60),
        late_trips: 0.0,
        seed: 3,
        replay_at: None,
    };
    let run = |trip: &str, start_s: f64| Run {
        trip: trip.into(),
        vehicle: 0,
        route: "R".into(),
        direction: 0,
        origin_unix: 0.0,
        start_s,
        end_s: start_s + 1_320.0,
        target_delay_s: 0.0,
        active: false,
        done: false,
        waited: false,
        delay_s: 0.0,
        extra_s: 0.0,
        broken_at_s: None,
        last_report_s: f64::NEG_INFINITY,
        last_along_m: None,
        arrival_reported: false,
    };
    let mut runs = vec![run("T0", 28_800.0), run("T1", 29_160.0)];
    runs[1].vehicle = 1;
    let mut day = Day {
        calendar: chrono::NaiveDate::from_ymd_opt(2026, 2, 2).unwrap(),
        fleets: HashMap::new(),
        runs,
        vehicles: vec![("A".into(), String::new()), ("B".into(), String::new())],
        busy: vec![None, None],
    };
    let mut s = 28_800.0;
    step(&mut day, s, 0.0, &settings, &mut rng);
    let mut e = start_episode(&day, s, &mut rng).expect("T0 is early in its trip, T1 follows");
    assert_eq!((e.leader, e.follower, e.headway_s), (0, 1, 360.0));
    let mut closest: f64 = f64::MAX;
    while advance_episode(&mut day, &mut e, s, 1.0) {
        s += 1.0;
        step(&mut day, s, 1.0, &settings, &mut rng);
        let (l, f) = (&day.runs[0], &day.runs[1]);
        if f.active {
            // The follower's lag behind the leader, in time, at the same place.
            let lag = (f.start_s + f.delay_s + f.extra_s) - (l.start_s + l.delay_s + l.extra_s);
            closest = closest.min(lag);
        }
        assert!(s < 28_800.0 + 3_600.0, "the episode ends");
    }
    assert!(closest < 0.25 * 360.0, "bunching: the follower came within {closest} s");
    assert_eq!(day.runs[0].extra_s, 0.0, "recovered");
}
