//! A GTFS feed, loaded with `gtfs-structures` into the model the transport rules need.

use chrono::{Datelike, NaiveDate, Weekday};
use std::collections::HashMap;
use std::path::Path;

use crate::geometry::Polyline;

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("GTFS feed {path}: {file}, line {line}: {message}")]
    Line { path: String, file: String, line: u64, message: String },
    #[error("GTFS feed {path}: {message}")]
    Feed { path: String, message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub id: String,
    /// The agency running it (the feed's only agency when routes.txt leaves it out).
    pub agency_id: String,
    pub short_name: String,
    pub long_name: String,
    /// GTFS `route_type` (0 tram, 3 bus, ...).
    pub route_type: i16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stop {
    pub id: String,
    pub name: String,
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StopTime {
    pub stop_id: String,
    pub sequence: u32,
    /// Seconds after the service day's noon minus 12 h (GTFS time; may exceed 24 h).
    pub arrival_s: u32,
    pub departure_s: u32,
    /// Distance along the trip's shape, metres, when the feed gives it.
    pub dist_m: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    pub id: String,
    pub route_id: String,
    pub service_id: String,
    /// 0 or 1 (GTFS `direction_id`; 0 when absent).
    pub direction: u8,
    pub shape_id: Option<String>,
    pub headsign: String,
    pub stop_times: Vec<StopTime>,
}

#[cfg(test)]
impl Trip {
    /// A trip of route "R" and service "S", direction 0, without shape or headsign (unit tests).
    pub fn for_tests(id: &str, stop_times: Vec<StopTime>) -> Trip {
        Trip {
            id: id.into(),
            route_id: "R".into(),
            service_id: "S".into(),
            direction: 0,
            shape_id: None,
            headsign: String::new(),
            stop_times,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct ServiceCalendar {
    weekdays: [bool; 7],
    start: NaiveDate,
    end: NaiveDate,
}

/// The network of one feed.
#[derive(Debug, Default)]
pub struct Network {
    pub agencies: Vec<String>,
    pub agency_ids: std::collections::BTreeSet<String>,
    /// The feed's time zone (first agency's `agency_timezone`), e.g. "Europe/Paris".
    pub timezone: String,
    pub routes: HashMap<String, Route>,
    pub stops: HashMap<String, Stop>,
    pub trips: HashMap<String, Trip>,
    pub shapes: HashMap<String, Polyline>,
    calendars: HashMap<String, ServiceCalendar>,
    /// service id -> (date, true: added / false: removed)
    exceptions: HashMap<String, Vec<(NaiveDate, bool)>>,
}

fn date(d: impl std::fmt::Display) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(&d.to_string(), "%Y-%m-%d").ok()
}

impl Network {
    /// Loads a GTFS zip (or folder). Optional files may be absent; a broken file is an error that
    /// names the file and the line.
    pub fn load(path: &Path) -> Result<Network, FeedError> {
        let name = path.display().to_string();
        let gtfs = gtfs_structures::GtfsReader::default().read_from_path(path).map_err(|e| feed_error(&name, e))?;
        let mut network = Network {
            agencies: gtfs.agencies.iter().map(|a| a.name.clone()).collect(),
            agency_ids: gtfs.agencies.iter().filter_map(|a| a.id.clone()).collect(),
            timezone: gtfs.agencies.first().map(|a| a.timezone.clone()).unwrap_or_default(),
            ..Default::default()
        };
        let only_agency = match &gtfs.agencies[..] {
            [only] => only.id.clone(),
            _ => None,
        };
        for (id, r) in &gtfs.routes {
            let route_type = route_type_number(&r.route_type);
            network.routes.insert(
                id.clone(),
                Route {
                    id: id.clone(),
                    agency_id: r.agency_id.clone().or_else(|| only_agency.clone()).unwrap_or_default(),
                    short_name: r.short_name.clone().unwrap_or_default(),
                    long_name: r.long_name.clone().unwrap_or_default(),
                    route_type,
                },
            );
        }
        for (id, s) in &gtfs.stops {
            if let (Some(lat), Some(lon)) = (s.latitude, s.longitude) {
                if proto::event::check_position(lat, lon).is_err() {
                    return Err(FeedError::Feed {
                        path: name,
                        message: format!("stops.txt: stop {id} is at [{lat}, {lon}], not a latitude and a longitude"),
                    });
                }
                network
                    .stops
                    .insert(id.clone(), Stop { id: id.clone(), name: s.name.clone().unwrap_or_default(), lat, lon });
            }
        }
        for (id, points) in &gtfs.shapes {
            if let Some(p) = points.iter().find(|p| proto::event::check_position(p.latitude, p.longitude).is_err()) {
                return Err(FeedError::Feed {
                    path: name,
                    message: format!(
                        "shapes.txt: shape {id} has a point at [{}, {}], not a latitude and a longitude",
                        p.latitude, p.longitude
                    ),
                });
            }
            let mut points: Vec<&gtfs_structures::Shape> = points.iter().collect();
            points.sort_by_key(|p| p.sequence);
            network
                .shapes
                .insert(id.clone(), Polyline::new(points.iter().map(|p| (p.latitude, p.longitude)).collect()));
        }
        for (id, c) in &gtfs.calendar {
            let (Some(start), Some(end)) = (date(c.start_date), date(c.end_date)) else {
                return Err(FeedError::Feed {
                    path: name,
                    message: format!("calendar.txt: service {id} has an invalid date"),
                });
            };
            let weekdays = [c.monday, c.tuesday, c.wednesday, c.thursday, c.friday, c.saturday, c.sunday];
            network.calendars.insert(id.clone(), ServiceCalendar { weekdays, start, end });
        }
        for (id, dates) in &gtfs.calendar_dates {
            let list = dates
                .iter()
                .filter_map(|d| date(d.date).map(|day| (day, d.exception_type == gtfs_structures::Exception::Added)))
                .collect();
            network.exceptions.insert(id.clone(), list);
        }
        for (id, t) in gtfs.trips {
            let stop_times = t
                .stop_times
                .iter()
                .filter_map(|st| {
                    let arrival = st.arrival_time.or(st.departure_time)?;
                    Some(StopTime {
                        stop_id: st.stop.id.clone(),
                        sequence: st.stop_sequence,
                        arrival_s: arrival,
                        departure_s: st.departure_time.unwrap_or(arrival),
                        dist_m: st.shape_dist_traveled.map(f64::from),
                    })
                })
                .collect();
            let direction = match t.direction_id {
                Some(gtfs_structures::DirectionType::Inbound) => 1,
                _ => 0,
            };
            network.trips.insert(
                id.clone(),
                Trip {
                    id,
                    route_id: t.route_id,
                    service_id: t.service_id,
                    direction,
                    shape_id: t.shape_id,
                    headsign: t.trip_headsign.unwrap_or_default(),
                    stop_times,
                },
            );
        }
        Ok(network)
    }

    /// Whether a service runs on a day: its calendar (weekday within the date range), then the
    /// exceptions of calendar_dates.
    pub fn runs_on(&self, service_id: &str, day: NaiveDate) -> bool {
        if let Some(&(_, added)) = self.exceptions.get(service_id).and_then(|e| e.iter().find(|(d, _)| *d == day)) {
            return added;
        }
        self.calendars.get(service_id).is_some_and(|c| {
            let weekday = match day.weekday() {
                Weekday::Mon => 0,
                Weekday::Tue => 1,
                Weekday::Wed => 2,
                Weekday::Thu => 3,
                Weekday::Fri => 4,
                Weekday::Sat => 5,
                Weekday::Sun => 6,
            };
            day >= c.start && day <= c.end && c.weekdays[weekday]
        })
    }

    /// The feed day whose timetable runs on `today`: `today` itself when the feed covers it,
    /// else the day of the same weekday in the feed's period with the most trips (a feed from
    /// last season still gives a realistic day).
    pub fn service_day_for(&self, today: NaiveDate) -> Option<NaiveDate> {
        let trips_on = |day: NaiveDate| self.trips.values().filter(|t| self.runs_on(&t.service_id, day)).count();
        if trips_on(today) > 0 {
            return Some(today);
        }
        let (first, last) = self.service_period()?;
        first
            .iter_days()
            .take_while(|d| *d <= last)
            .filter(|d| d.weekday() == today.weekday())
            .map(|d| (trips_on(d), d))
            .filter(|(n, _)| *n > 0)
            .max_by_key(|(n, d)| (*n, std::cmp::Reverse(*d)))
            .map(|(_, d)| d)
    }

    /// Adds a service running every day of a period (tests build small networks by hand).
    pub fn add_daily_service(&mut self, service_id: &str, start: NaiveDate, end: NaiveDate) {
        self.calendars.insert(service_id.to_owned(), ServiceCalendar { weekdays: [true; 7], start, end });
    }

    /// The first and last days any service runs (from calendar.txt and calendar_dates.txt).
    pub fn service_period(&self) -> Option<(NaiveDate, NaiveDate)> {
        let days = self
            .calendars
            .values()
            .flat_map(|c| [c.start, c.end])
            .chain(self.exceptions.values().flatten().filter(|(_, added)| *added).map(|(d, _)| *d));
        let (mut first, mut last) = (None::<NaiveDate>, None::<NaiveDate>);
        for d in days {
            first = Some(first.map_or(d, |f| f.min(d)));
            last = Some(last.map_or(d, |l| l.max(d)));
        }
        Some((first?, last?))
    }
}

/// `route_type` as its GTFS number (extended types included, e.g. 715 for on-demand service).
fn route_type_number(t: &gtfs_structures::RouteType) -> i16 {
    use gtfs_structures::RouteType::*;
    match t {
        Tramway => 0,
        Subway => 1,
        Rail => 2,
        Bus => 3,
        Ferry => 4,
        CableCar => 5,
        Gondola => 6,
        Funicular => 7,
        Extended(ert) => *ert as i16,
        Other(i) => *i,
    }
}

fn feed_error(path: &str, e: gtfs_structures::Error) -> FeedError {
    match e {
        gtfs_structures::Error::CSVError { file_name, source, .. } => {
            let line = source.position().map(|p| p.line()).unwrap_or(0);
            FeedError::Line { path: path.to_owned(), file: file_name, line, message: source.to_string() }
        }
        other => {
            // Keep the whole chain: the outer message often only says which file.
            let mut message = other.to_string();
            let mut source = std::error::Error::source(&other);
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            FeedError::Feed { path: path.to_owned(), message }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(relative: &str) -> Option<std::path::PathBuf> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(relative);
        if path.exists() {
            Some(path)
        } else {
            eprintln!("SKIP: {} is absent", path.display());
            None
        }
    }

    /// The TaM feed: the counts its README gives (routes 42, stops 2,098, trips 15,883, shapes 127).
    #[test]
    fn the_real_tam_feed_loads_with_its_counts() {
        let Some(path) = data("montpellier-mediterranee-metropole/transit/gtfs.zip") else { return };
        let network = Network::load(&path).unwrap();
        assert_eq!(network.routes.len(), 42);
        assert_eq!(network.stops.len(), 2_098);
        assert_eq!(network.trips.len(), 15_883);
        assert_eq!(network.shapes.len(), 127);
        assert_eq!(network.routes.values().filter(|r| r.route_type == 0).count(), 5, "5 tram lines");
        assert_eq!(network.routes.values().filter(|r| r.route_type == 715).count(), 5, "5 on-demand lines");
        assert_eq!(network.trips.values().map(|t| t.stop_times.len()).sum::<usize>(), 355_995);
        let (first, last) = network.service_period().unwrap();
        assert_eq!((first.to_string(), last.to_string()), ("2026-01-05".into(), "2026-03-08".into()));
        assert_eq!(network.timezone, "Europe/Paris");
        // Today (outside the feed's period) runs the busiest day of the same weekday in it.
        let sunday_after = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        let day = network.service_day_for(sunday_after).unwrap();
        assert_eq!(day.weekday(), Weekday::Sun);
        assert!(day >= first && day <= last);
        // Some service runs on a weekday of the period, matched trips carry distances along shapes.
        let monday = NaiveDate::from_ymd_opt(2026, 2, 2).unwrap();
        assert!(network.trips.values().any(|t| network.runs_on(&t.service_id, monday)));
        let with_shape =
            network.trips.values().filter(|t| t.shape_id.as_deref().is_some_and(|s| !s.is_empty())).count();
        assert_eq!(with_shape, 15_103);
    }

    /// Transcollines (Québec): BOM-prefixed files, an empty frequencies.txt. Its routes.txt holds
    /// 10 routes, all used by trips (the data folder's README says 9).
    #[test]
    fn another_real_feed_loads() {
        let Some(path) = data("fixtures/gtfs-transcollines/transcollines.zip") else { return };
        let network = Network::load(&path).unwrap();
        assert_eq!((network.routes.len(), network.trips.len(), network.stops.len()), (10, 113, 420));
    }

    #[test]
    fn a_broken_feed_names_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("vigie-gtfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = [
            ("agency.txt", "agency_id,agency_name,agency_url,agency_timezone\nA,Test,http://x,Europe/Paris\n"),
            ("routes.txt", "route_id,route_short_name,route_type\nR1,1,3\n"),
            ("stops.txt", "stop_id,stop_name,stop_lat,stop_lon\nS1,One,43.6,3.87\nS2,Two,43.61,3.88\n"),
            ("trips.txt", "route_id,service_id,trip_id\nR1,WK,T1\n"),
            (
                "stop_times.txt",
                "trip_id,arrival_time,departure_time,stop_id,stop_sequence\nT1,08:00:00,08:00:00,S1,1\nT1,8h10,08:10:00,S2,2\n",
            ),
            (
                "calendar.txt",
                "service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,start_date,end_date\nWK,1,1,1,1,1,0,0,20260101,20261231\n",
            ),
        ];
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let err = Network::load(&dir).unwrap_err().to_string();
        assert!(err.contains("stop_times.txt"), "{err}");
        // The good version loads, and its calendar works.
        std::fs::write(dir.join("stop_times.txt"), files[4].1.replace("8h10", "08:10:00")).unwrap();
        let network = Network::load(&dir).unwrap();
        let trip = &network.trips["T1"];
        assert_eq!((trip.stop_times[1].arrival_s, trip.direction), (8 * 3600 + 600, 0));
        assert!(network.runs_on("WK", NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()), "a Monday");
        assert!(!network.runs_on("WK", NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()), "a Sunday");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
