//! The GTFS-Realtime feeds (VehiclePositions, TripUpdates, Alerts), built from what the service
//! holds. Pure: the caller gives the vehicles, the alerts and the time.

use proto::transit_realtime as rt;
use proto::transport::{ServiceAlert, VehicleStopStatus};
use std::time::SystemTime;

use crate::network::Network;
use crate::predict;
use crate::tracking::Tracked;

/// A vehicle silent for longer than this (in the service's clock) leaves the feeds: consumers
/// would otherwise show a bus that may have gone back to the depot.
pub const MAX_VEHICLE_AGE_S: u64 = 600;

/// The three feeds of the GTFS-Realtime specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    VehiclePositions,
    TripUpdates,
    Alerts,
}

impl Feed {
    pub const ALL: [Feed; 3] = [Feed::VehiclePositions, Feed::TripUpdates, Feed::Alerts];

    /// The feed's path segment, e.g. `vehicle-positions`.
    pub fn name(self) -> &'static str {
        match self {
            Feed::VehiclePositions => "vehicle-positions",
            Feed::TripUpdates => "trip-updates",
            Feed::Alerts => "alerts",
        }
    }

    pub fn from_name(name: &str) -> Option<Feed> {
        Feed::ALL.into_iter().find(|f| f.name() == name)
    }
}

fn header(now_unix: u64) -> rt::FeedHeader {
    rt::FeedHeader {
        gtfs_realtime_version: "2.0".into(),
        incrementality: Some(rt::feed_header::Incrementality::FullDataset as i32),
        timestamp: Some(now_unix),
        feed_version: None,
    }
}

/// The vehicles a feed shows: heard recently, and still on their trip.
fn in_feed(v: &Tracked, now_unix: u64) -> bool {
    !v.state.trip_finished && now_unix.saturating_sub(v.seen_unix_s) <= MAX_VEHICLE_AGE_S
}

fn trip_descriptor(v: &Tracked, time_zone: &jiff::tz::TimeZone) -> rt::TripDescriptor {
    let position = v.state.position.as_ref();
    // The service day's date: the day whose GTFS time 0 is the observation minus its service time.
    let start_date = jiff::Timestamp::from_second(v.origin_unix() + 12 * 3600)
        .ok()
        .map(|t| t.to_zoned(time_zone.clone()).date().strftime("%Y%m%d").to_string());
    rt::TripDescriptor {
        trip_id: position.map(|p| p.trip_id.clone()),
        route_id: Some(v.state.route_id.clone()),
        direction_id: Some(v.state.direction),
        start_time: None,
        start_date,
        schedule_relationship: Some(rt::trip_descriptor::ScheduleRelationship::Scheduled as i32),
    }
}

fn vehicle_descriptor(v: &Tracked) -> rt::VehicleDescriptor {
    let position = v.state.position.as_ref();
    rt::VehicleDescriptor {
        id: position.map(|p| p.vehicle_id.clone()),
        label: position.map(|p| p.vehicle_label.clone()).filter(|l| !l.is_empty()),
        license_plate: None,
    }
}

fn stop_status(status: i32) -> Option<i32> {
    use rt::vehicle_position::VehicleStopStatus as Rt;
    match VehicleStopStatus::try_from(status).ok()? {
        VehicleStopStatus::Unspecified => None,
        VehicleStopStatus::IncomingAt => Some(Rt::IncomingAt as i32),
        VehicleStopStatus::StoppedAt => Some(Rt::StoppedAt as i32),
        VehicleStopStatus::InTransitTo => Some(Rt::InTransitTo as i32),
    }
}

/// Vehicles sorted by id, so that two fetches of an unchanged state are byte-identical.
fn sorted<'a>(vehicles: impl Iterator<Item = &'a Tracked>, now_unix: u64) -> Vec<&'a Tracked> {
    let mut list: Vec<&Tracked> = vehicles.filter(|v| in_feed(v, now_unix)).collect();
    list.sort_by(|a, b| {
        a.state.position.as_ref().map(|p| &p.vehicle_id).cmp(&b.state.position.as_ref().map(|p| &p.vehicle_id))
    });
    list
}

pub fn vehicle_positions<'a>(
    vehicles: impl Iterator<Item = &'a Tracked>,
    network: &Network,
    time_zone: &jiff::tz::TimeZone,
    now_unix: u64,
) -> rt::FeedMessage {
    let entity = sorted(vehicles, now_unix)
        .into_iter()
        .filter_map(|v| {
            let p = v.state.position.as_ref()?;
            let stop_id = network
                .trips
                .get(&p.trip_id)
                .and_then(|t| t.stop_times.iter().find(|st| st.sequence == p.current_stop_sequence))
                .map(|st| st.stop_id.clone());
            Some(rt::FeedEntity {
                id: p.vehicle_id.clone(),
                vehicle: Some(rt::VehiclePosition {
                    trip: Some(trip_descriptor(v, time_zone)),
                    vehicle: Some(vehicle_descriptor(v)),
                    position: Some(rt::Position {
                        latitude: p.lat as f32,
                        longitude: p.lon as f32,
                        bearing: p.bearing,
                        odometer: None,
                        speed: p.speed,
                    }),
                    current_stop_sequence: (p.current_stop_sequence > 0).then_some(p.current_stop_sequence),
                    stop_id,
                    current_status: stop_status(p.current_status),
                    timestamp: Some(v.seen_unix_s),
                }),
                ..Default::default()
            })
        })
        .collect();
    rt::FeedMessage { header: header(now_unix), entity }
}

pub fn trip_updates<'a>(
    vehicles: impl Iterator<Item = &'a Tracked>,
    network: &Network,
    time_zone: &jiff::tz::TimeZone,
    now_unix: u64,
) -> rt::FeedMessage {
    let entity = sorted(vehicles, now_unix)
        .into_iter()
        .filter_map(|v| {
            use rt::trip_update::stop_time_update::ScheduleRelationship;
            let p = v.state.position.as_ref()?;
            let trip = network.trips.get(&p.trip_id)?;
            // Arrival and departure have the same delay: the departure is the arrival plus the
            // timetable's dwell.
            let event = |a: &predict::Predicted, time: Option<i64>| {
                time.map(|time| rt::trip_update::StopTimeEvent {
                    delay: a.delay_s.map(|d| d.round() as i32),
                    time: Some(time),
                    uncertainty: None,
                    scheduled_time: None,
                })
            };
            // Every vehicle of the positions feed has its trip update (MobilityData's W003): one
            // whose adherence is not known yet (before its first stop, off its shape) says so
            // stop by stop with NO_DATA, which carries no times.
            let mut arrivals = predict::arrivals(trip, Some(v), 0);
            if arrivals.is_empty() {
                // At its last stop: that stop, so that the update is not empty (rule E041).
                let last = trip.stop_times.last()?;
                arrivals.push(predict::Predicted {
                    stop_id: last.stop_id.clone(),
                    stop_sequence: last.sequence,
                    scheduled_unix: 0,
                    predicted_unix: None,
                    predicted_departure_unix: None,
                    delay_s: None,
                });
            }
            let stop_time_update = arrivals
                .iter()
                .map(|a| rt::trip_update::StopTimeUpdate {
                    stop_sequence: Some(a.stop_sequence),
                    stop_id: Some(a.stop_id.clone()),
                    arrival: event(a, a.predicted_unix),
                    departure: event(a, a.predicted_departure_unix),
                    schedule_relationship: Some(if a.predicted_unix.is_some() {
                        ScheduleRelationship::Scheduled
                    } else {
                        ScheduleRelationship::NoData
                    } as i32),
                })
                .collect();
            let delay = v.state.delay_s;
            Some(rt::FeedEntity {
                // The vehicle's, as in the positions feed: two vehicles may be on one trip (a
                // replacement, while the broken-down one is still heard), and ids are unique.
                id: p.vehicle_id.clone(),
                trip_update: Some(rt::TripUpdate {
                    trip: trip_descriptor(v, time_zone),
                    vehicle: Some(vehicle_descriptor(v)),
                    stop_time_update,
                    timestamp: Some(v.seen_unix_s),
                    delay: delay.map(|d| d.round() as i32),
                }),
                ..Default::default()
            })
        })
        .collect();
    rt::FeedMessage { header: header(now_unix), entity }
}

fn unix(t: Option<prost_types::Timestamp>) -> Option<u64> {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

fn translated(texts: &[proto::transport::LocalizedText]) -> Option<rt::TranslatedString> {
    (!texts.is_empty()).then(|| rt::TranslatedString {
        translation: texts
            .iter()
            .map(|t| rt::translated_string::Translation {
                text: t.text.clone(),
                language: (!t.language.is_empty()).then(|| t.language.clone()),
            })
            .collect(),
    })
}

/// The alerts feed: every alert not yet over (those to come included, with their periods, as the
/// specification expects consumers to filter by period).
pub fn alerts<'a>(alerts: impl Iterator<Item = &'a ServiceAlert>, now: SystemTime) -> rt::FeedMessage {
    let now_unix = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut list: Vec<&ServiceAlert> = alerts.filter(|a| !crate::alerts::has_ended(a, now)).collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    let entity = list
        .into_iter()
        .map(|a| rt::FeedEntity {
            id: a.id.clone(),
            alert: Some(rt::Alert {
                active_period: a
                    .active_periods
                    .iter()
                    .map(|p| rt::TimeRange { start: unix(p.start), end: unix(p.end) })
                    .collect(),
                informed_entity: a
                    .informed_entities
                    .iter()
                    .map(|e| rt::EntitySelector {
                        agency_id: (!e.agency_id.is_empty()).then(|| e.agency_id.clone()),
                        route_id: (!e.route_id.is_empty()).then(|| e.route_id.clone()),
                        route_type: e.route_type,
                        trip: (!e.trip_id.is_empty())
                            .then(|| rt::TripDescriptor { trip_id: Some(e.trip_id.clone()), ..Default::default() }),
                        stop_id: (!e.stop_id.is_empty()).then(|| e.stop_id.clone()),
                        direction_id: e.direction_id,
                    })
                    .collect(),
                // Vigie's enums carry the standard's numbers; 0 ("not given") is the standard's
                // unknown value.
                cause: Some(if a.cause == 0 { rt::alert::Cause::UnknownCause as i32 } else { a.cause }),
                effect: Some(if a.effect == 0 { rt::alert::Effect::UnknownEffect as i32 } else { a.effect }),
                url: (!a.url.is_empty()).then(|| rt::TranslatedString {
                    translation: vec![rt::translated_string::Translation { text: a.url.clone(), language: None }],
                }),
                header_text: translated(&a.header),
                description_text: translated(&a.description),
                severity_level: Some(if a.severity == 0 {
                    rt::alert::SeverityLevel::UnknownSeverity as i32
                } else {
                    a.severity
                }),
            }),
            ..Default::default()
        })
        .collect();
    rt::FeedMessage { header: header(now_unix), entity }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::transport::{AlertCause, InformedEntity, LocalizedText, VehiclePosition, VehicleState};

    fn tracked(id: &str, seen: u64, finished: bool) -> Tracked {
        Tracked {
            state: VehicleState {
                position: Some(VehiclePosition {
                    vehicle_id: id.into(),
                    trip_id: "T1".into(),
                    lat: 43.6,
                    lon: 3.87,
                    current_stop_sequence: 2,
                    current_status: VehicleStopStatus::InTransitTo as i32,
                    ..Default::default()
                }),
                route_id: "R".into(),
                delay_s: Some(90.0),
                trip_finished: finished,
                ..Default::default()
            },
            // Seconds since midnight UTC: the service day is the calendar day of `seen`.
            service_s: (seen % 86_400) as f64,
            seen_unix_s: seen,
        }
    }

    #[test]
    fn vehicles_leave_the_feed_when_stale_or_done() {
        let now = 1_700_000_000;
        let vehicles = [
            tracked("B", now - 10, false),
            tracked("A", now - 5, false),
            tracked("C", now - 601, false),
            tracked("D", now, true),
        ];
        let feed = vehicle_positions(vehicles.iter(), &Network::default(), &jiff::tz::TimeZone::UTC, now);
        let ids: Vec<&str> = feed.entity.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["A", "B"], "sorted; stale and finished vehicles left out");
        let v = feed.entity[0].vehicle.as_ref().unwrap();
        assert_eq!(v.current_status, Some(rt::vehicle_position::VehicleStopStatus::InTransitTo as i32));
        let trip = v.trip.as_ref().unwrap();
        assert_eq!(trip.start_date.as_deref(), Some("20231114"), "the service day of 1,700,000,000 in UTC");
        assert_eq!(feed.header.gtfs_realtime_version, "2.0");
    }

    #[test]
    fn every_vehicle_has_its_trip_update_and_times_only_where_predicted() {
        use crate::network::{StopTime, Trip};
        use rt::trip_update::stop_time_update::ScheduleRelationship;
        let now = 1_700_000_000;
        let mut network = Network::default();
        let stop_times = (1..=3)
            .map(|i| StopTime {
                stop_id: format!("S{i}"),
                sequence: i,
                // All three due the same minute (timetables round to minutes).
                arrival_s: 36_000,
                departure_s: 36_000,
                dist_m: None,
            })
            .collect();
        network.trips.insert("T1".into(), Trip::for_tests("T1", stop_times));
        let mut unknown = tracked("B", now, false);
        unknown.state.delay_s = None;
        let vehicles = [tracked("A", now, false), unknown];
        let feed = trip_updates(vehicles.iter(), &network, &jiff::tz::TimeZone::UTC, now);
        assert_eq!(feed.entity.len(), 2, "one update per vehicle of the positions feed");
        let known = feed.entity[0].trip_update.as_ref().unwrap();
        let times: Vec<i64> = known.stop_time_update.iter().filter_map(|u| u.arrival.as_ref()?.time).collect();
        assert_eq!(times.len(), 2, "S2 and S3 ahead");
        assert!(times[1] > times[0], "strictly increasing: {times:?}");
        assert_eq!(known.delay, Some(90));
        let no_data = feed.entity[1].trip_update.as_ref().unwrap();
        assert_eq!(no_data.delay, None);
        assert!(!no_data.stop_time_update.is_empty());
        for update in &no_data.stop_time_update {
            assert_eq!(update.schedule_relationship, Some(ScheduleRelationship::NoData as i32));
            assert!(update.arrival.is_none() && update.departure.is_none(), "NO_DATA carries no times");
        }
    }

    #[test]
    fn alerts_carry_the_standard_numbers() {
        let a = ServiceAlert {
            id: "A1".into(),
            cause: AlertCause::Strike as i32,
            informed_entities: vec![InformedEntity { route_id: "R".into(), ..Default::default() }],
            header: vec![LocalizedText { language: "fr".into(), text: "Grève".into() }],
            ..Default::default()
        };
        let feed = alerts([a].iter(), SystemTime::now());
        let alert = feed.entity[0].alert.as_ref().unwrap();
        assert_eq!(alert.cause, Some(rt::alert::Cause::Strike as i32));
        assert_eq!(alert.effect, Some(rt::alert::Effect::UnknownEffect as i32));
        assert_eq!(alert.header_text.as_ref().unwrap().translation[0].language.as_deref(), Some("fr"));
        assert_eq!(alert.informed_entity[0].route_id.as_deref(), Some("R"));
    }
}
