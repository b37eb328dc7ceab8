//! Service alerts (GTFS-Realtime `Alert`), pure: validation against the timetable, the communes an
//! alert concerns, and whether it is still to be published.

use proto::ids::{AssetId, CommuneId};
use proto::transport::{AlertCause, AlertEffect, AlertSeverity, InformedEntity, LocalizedText, ServiceAlert};
use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

use crate::network::Network;

const MAX_ENTITIES: usize = 100;
const MAX_PERIODS: usize = 20;
const MAX_TRANSLATIONS: usize = 10;
const MAX_HEADER_CHARS: usize = 300;
const MAX_DESCRIPTION_CHARS: usize = 4_000;
const MAX_URL_CHARS: usize = 500;
pub const MAX_REASON_CHARS: usize = 200;

/// The communes each stop and route of the network lies in (stops outside the territory have none).
#[derive(Debug, Default)]
pub struct Coverage {
    stops: HashMap<String, CommuneId>,
    routes: HashMap<String, BTreeSet<CommuneId>>,
}

impl Coverage {
    /// `locate` says which commune a point lies in.
    pub fn new(network: &Network, locate: impl Fn(f64, f64) -> Option<CommuneId>) -> Coverage {
        let stops: HashMap<String, CommuneId> =
            network.stops.values().filter_map(|s| Some((s.id.clone(), locate(s.lat, s.lon)?))).collect();
        let mut routes: HashMap<String, BTreeSet<CommuneId>> = HashMap::new();
        for trip in network.trips.values() {
            let communes = routes.entry(trip.route_id.clone()).or_default();
            communes.extend(trip.stop_times.iter().filter_map(|st| stops.get(&st.stop_id).cloned()));
        }
        Coverage { stops, routes }
    }

    fn of_trip(&self, network: &Network, trip_id: &str) -> BTreeSet<CommuneId> {
        network
            .trips
            .get(trip_id)
            .map(|t| t.stop_times.iter().filter_map(|st| self.stops.get(&st.stop_id).cloned()).collect())
            .unwrap_or_default()
    }

    fn of_routes<'a>(&self, routes: impl Iterator<Item = &'a str>) -> BTreeSet<CommuneId> {
        routes.filter_map(|r| self.routes.get(r)).flatten().cloned().collect()
    }
}

fn check_text(what: &str, texts: &[LocalizedText], max_chars: usize, required: bool) -> Result<(), String> {
    if required && texts.iter().all(|t| t.text.trim().is_empty()) {
        return Err(format!("{what}: at least one text is required"));
    }
    if texts.len() > MAX_TRANSLATIONS {
        return Err(format!("{what}: at most {MAX_TRANSLATIONS} translations"));
    }
    for t in texts {
        if t.text.chars().count() > max_chars {
            return Err(format!("{what}: a text is longer than {max_chars} characters"));
        }
        if t.text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(format!("{what}: control characters are not allowed"));
        }
        let language_ok = t.language.len() <= 16 && t.language.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !language_ok {
            return Err(format!("{what}: language {:?} is not a BCP-47 tag", t.language));
        }
    }
    Ok(())
}

/// Checks an alert and every id it names against the timetable; returns it with the communes it
/// concerns and its publication time set.
pub fn validate(
    mut alert: ServiceAlert,
    network: &Network,
    coverage: &Coverage,
    now: SystemTime,
) -> Result<ServiceAlert, String> {
    AssetId::parse_as("alert id", &alert.id).map_err(|e| e.to_string())?;
    let id = alert.id.clone();
    let named = |what: &str| format!("alert {id}: {what}");
    AlertCause::try_from(alert.cause).map_err(|_| named(&format!("unknown cause {}", alert.cause)))?;
    AlertEffect::try_from(alert.effect).map_err(|_| named(&format!("unknown effect {}", alert.effect)))?;
    AlertSeverity::try_from(alert.severity).map_err(|_| named(&format!("unknown severity {}", alert.severity)))?;
    check_text("header", &alert.header, MAX_HEADER_CHARS, true).map_err(|e| named(&e))?;
    check_text("description", &alert.description, MAX_DESCRIPTION_CHARS, false).map_err(|e| named(&e))?;
    if !alert.url.is_empty()
        && (alert.url.chars().count() > MAX_URL_CHARS
            || !(alert.url.starts_with("https://") || alert.url.starts_with("http://"))
            || alert.url.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(named(&format!("url must be an http(s) address of at most {MAX_URL_CHARS} characters")));
    }
    if alert.active_periods.len() > MAX_PERIODS {
        return Err(named(&format!("at most {MAX_PERIODS} active periods")));
    }
    for p in &alert.active_periods {
        let start = p.start.map(SystemTime::try_from).transpose().map_err(|_| named("a period's start is invalid"))?;
        let end = p.end.map(SystemTime::try_from).transpose().map_err(|_| named("a period's end is invalid"))?;
        if let (Some(s), Some(e)) = (start, end)
            && e <= s
        {
            return Err(named("a period ends before it starts"));
        }
    }
    if alert.informed_entities.is_empty() || alert.informed_entities.len() > MAX_ENTITIES {
        return Err(named(&format!("informed_entities must hold 1 to {MAX_ENTITIES} entities")));
    }
    let mut communes = BTreeSet::new();
    for (i, e) in alert.informed_entities.iter().enumerate() {
        communes
            .extend(entity_communes(e, network, coverage).map_err(|e| named(&format!("informed entity {i}: {e}")))?);
    }
    if communes.is_empty() {
        return Err(named("its informed entities serve no commune of the territory"));
    }
    alert.communes = communes.iter().map(ToString::to_string).collect();
    alert.published_at = Some(now.into());
    Ok(alert)
}

/// The communes one informed entity concerns; an error names an id the timetable lacks.
fn entity_communes(e: &InformedEntity, network: &Network, coverage: &Coverage) -> Result<BTreeSet<CommuneId>, String> {
    let given = !e.agency_id.is_empty()
        || !e.route_id.is_empty()
        || e.route_type.is_some()
        || !e.trip_id.is_empty()
        || !e.stop_id.is_empty();
    if !given {
        return Err("names nothing (give an agency, a route, a route type, a trip or a stop)".into());
    }
    if let Some(d) = e.direction_id
        && (d > 1 || e.route_id.is_empty())
    {
        return Err("direction_id must be 0 or 1, with a route_id".into());
    }
    // The most specific id decides the communes; the others must still exist.
    if !e.agency_id.is_empty() && !network.agency_ids.contains(&e.agency_id) {
        return Err(format!("agency {:?} is not in the timetable", e.agency_id));
    }
    if !e.route_id.is_empty() && !network.routes.contains_key(&e.route_id) {
        return Err(format!("route {:?} is not in the timetable", e.route_id));
    }
    if !e.trip_id.is_empty() && !network.trips.contains_key(&e.trip_id) {
        return Err(format!("trip {:?} is not in the timetable", e.trip_id));
    }
    if !e.stop_id.is_empty() {
        if !network.stops.contains_key(&e.stop_id) {
            return Err(format!("stop {:?} is not in the timetable", e.stop_id));
        }
        return Ok(coverage.stops.get(&e.stop_id).cloned().into_iter().collect());
    }
    if !e.trip_id.is_empty() {
        return Ok(coverage.of_trip(network, &e.trip_id));
    }
    if !e.route_id.is_empty() {
        return Ok(coverage.of_routes(std::iter::once(e.route_id.as_str())));
    }
    let routes = network
        .routes
        .values()
        .filter(|r| e.route_type.is_none_or(|t| i32::from(r.route_type) == t))
        .filter(|r| e.agency_id.is_empty() || r.agency_id == e.agency_id);
    let communes = coverage.of_routes(routes.map(|r| r.id.as_str()));
    if communes.is_empty() && e.route_type.is_some() {
        return Err(format!("no route of type {} in the timetable", e.route_type.unwrap_or_default()));
    }
    Ok(communes)
}

/// Whether an alert is over: it has periods and every one has ended.
pub fn has_ended(alert: &ServiceAlert, now: SystemTime) -> bool {
    !alert.active_periods.is_empty()
        && alert
            .active_periods
            .iter()
            .all(|p| p.end.and_then(|e| SystemTime::try_from(e).ok()).is_some_and(|end| end <= now))
}

/// Checks a withdrawal's reason (free text for the log book).
pub fn check_reason(reason: &str) -> Result<(), String> {
    if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
        return Err(format!("reason must be at most {MAX_REASON_CHARS} characters of text"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{Route, Stop, StopTime, Trip};
    use proto::transport::ActivePeriod;
    use std::time::Duration;

    /// Route R serves stop A (commune 34172) and stop B (commune 34129); stop Z is outside.
    fn network() -> Network {
        let mut n = Network::default();
        n.agency_ids.insert("TAM".into());
        n.routes.insert(
            "R".into(),
            Route {
                id: "R".into(),
                agency_id: "TAM".into(),
                short_name: "1".into(),
                long_name: String::new(),
                route_type: 0,
            },
        );
        for (id, lon) in [("A", 3.85), ("B", 3.95), ("Z", 5.0)] {
            n.stops.insert(id.into(), Stop { id: id.into(), name: id.into(), lat: 43.6, lon });
        }
        let stop_times = ["A", "B"]
            .iter()
            .enumerate()
            .map(|(i, s)| StopTime {
                stop_id: (*s).into(),
                sequence: i as u32 + 1,
                arrival_s: 0,
                departure_s: 0,
                dist_m: None,
            })
            .collect();
        n.trips.insert("T".into(), Trip::for_tests("T", stop_times));
        n
    }

    fn coverage(n: &Network) -> Coverage {
        Coverage::new(n, |_, lon| match lon {
            l if l < 3.9 => CommuneId::parse("34172").ok(),
            l if l < 4.0 => CommuneId::parse("34129").ok(),
            _ => None,
        })
    }

    fn alert(entity: InformedEntity) -> ServiceAlert {
        ServiceAlert {
            id: "travaux-1".into(),
            cause: AlertCause::Construction as i32,
            effect: AlertEffect::Detour as i32,
            informed_entities: vec![entity],
            header: vec![LocalizedText { language: "fr".into(), text: "Travaux".into() }],
            ..Default::default()
        }
    }

    #[test]
    fn the_communes_of_an_alert_follow_its_entities() {
        let n = network();
        let c = coverage(&n);
        let now = SystemTime::now();
        let cases = [
            (InformedEntity { stop_id: "A".into(), ..Default::default() }, vec!["34172"]),
            (InformedEntity { stop_id: "B".into(), ..Default::default() }, vec!["34129"]),
            (InformedEntity { route_id: "R".into(), ..Default::default() }, vec!["34129", "34172"]),
            (InformedEntity { trip_id: "T".into(), ..Default::default() }, vec!["34129", "34172"]),
            (InformedEntity { agency_id: "TAM".into(), ..Default::default() }, vec!["34129", "34172"]),
            (InformedEntity { route_type: Some(0), ..Default::default() }, vec!["34129", "34172"]),
            (
                InformedEntity { route_id: "R".into(), direction_id: Some(1), ..Default::default() },
                vec!["34129", "34172"],
            ),
        ];
        for (entity, expected) in cases {
            let checked = validate(alert(entity.clone()), &n, &c, now).unwrap();
            assert_eq!(checked.communes, expected, "{entity:?}");
            assert!(checked.published_at.is_some());
        }
    }

    #[test]
    fn bad_alerts_are_refused_with_the_reason() {
        let n = network();
        let c = coverage(&n);
        let now = SystemTime::now();
        let stop = |s: &str| InformedEntity { stop_id: s.into(), ..Default::default() };
        type Change = Box<dyn Fn(&mut ServiceAlert)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|a| a.id = "travaux 1".into()), "alert id"),
            (Box::new(move |a| a.informed_entities = vec![stop("Q")]), "stop \"Q\" is not in the timetable"),
            (Box::new(move |a| a.informed_entities = vec![stop("Z")]), "no commune"),
            (Box::new(|a| a.informed_entities = vec![]), "1 to 100"),
            (Box::new(|a| a.informed_entities = vec![InformedEntity::default()]), "names nothing"),
            (
                Box::new(|a| a.informed_entities = vec![InformedEntity { route_id: "X".into(), ..Default::default() }]),
                "route \"X\"",
            ),
            (
                Box::new(|a| a.informed_entities = vec![InformedEntity { route_type: Some(3), ..Default::default() }]),
                "no route of type 3",
            ),
            (
                Box::new(|a| {
                    a.informed_entities =
                        vec![InformedEntity { stop_id: "A".into(), direction_id: Some(0), ..Default::default() }]
                }),
                "with a route_id",
            ),
            (Box::new(|a| a.header = vec![]), "header: at least one"),
            (Box::new(|a| a.header[0].text = "x".repeat(301)), "longer than 300"),
            (Box::new(|a| a.header[0].text = "bip\u{7}".into()), "control"),
            (Box::new(|a| a.header[0].language = "fr FR".into()), "BCP-47"),
            (Box::new(|a| a.cause = 99), "unknown cause"),
            (Box::new(|a| a.effect = -1), "unknown effect"),
            (Box::new(|a| a.url = "javascript:alert(1)".into()), "url"),
            (
                Box::new(move |a| {
                    a.active_periods =
                        vec![ActivePeriod { start: Some(now.into()), end: Some((now - Duration::from_secs(1)).into()) }]
                }),
                "ends before it starts",
            ),
        ];
        for (change, expected) in cases {
            let mut a = alert(stop("A"));
            change(&mut a);
            let err = validate(a, &n, &c, now).unwrap_err();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }

    #[test]
    fn an_alert_ends_when_all_its_periods_have() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let period = |start: Option<SystemTime>, end: Option<SystemTime>| ActivePeriod {
            start: start.map(Into::into),
            end: end.map(Into::into),
        };
        let cases = [
            (vec![], false, "no period: until withdrawn"),
            (vec![period(Some(now - 2 * hour), Some(now - hour))], true, "over"),
            (vec![period(Some(now - 2 * hour), Some(now + hour))], false, "running"),
            (vec![period(Some(now + hour), None)], false, "to come, open-ended"),
            (
                vec![period(None, Some(now - hour)), period(Some(now + hour), Some(now + 2 * hour))],
                false,
                "again later",
            ),
        ];
        for (periods, ended, why) in cases {
            let a = ServiceAlert { active_periods: periods, ..Default::default() };
            assert_eq!(has_ended(&a, now), ended, "{why}");
        }
        assert!(check_reason("fin des travaux").is_ok());
        assert!(check_reason(&"x".repeat(201)).is_err());
    }
}
