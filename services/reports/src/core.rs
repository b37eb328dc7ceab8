//! The service's core: routes a report to its commune, checks it, links duplicates and known lamp
//! faults, and writes it with its events (flushed before the answer). Both faces (Open311 HTTP and
//! gRPC) call it.

use proto::event::{self, CheckedEvent};
use proto::ids::{AssetId, CommuneId};
use proto::reports::{
    CreateRequestRequest, CreateRequestResponse, ListRequestsRequest, ReportCreated, ReportStatus, ReportUpdated,
    ServiceDefinition, ServiceRequest, StatusChange,
};
use proto::v1::Position;
use proto::v1::event::Payload;
use runtime::grpc_auth::{Caller, check_commune};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use territory::Territory;
use territory::streets::{StreetIndex, normalize};

use crate::catalogue::Catalogue;
use crate::domain::{self, DUPLICATE_RADIUS_M};
use crate::store::{Store, StoreError};
use runtime::error::Error;

/// Requests listed without ids or dates cover this much (GeoReport v2 suggests 90 days).
pub const DEFAULT_LIST_WINDOW: Duration = Duration::from_secs(90 * 24 * 3600);
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1_000;
/// `service_request_id`s one query may list (each is looked up by its key).
pub const MAX_IDS_PER_QUERY: usize = 100;

/// A lighting alarm the service heard of: where, and in which commune.
#[derive(Debug, Clone)]
struct LampAlarm {
    commune: String,
    lat: f64,
    lon: f64,
}

struct State {
    requests: BTreeMap<u64, ServiceRequest>,
    tokens: HashMap<String, u64>,
    next_id: u64,
}

pub struct Reports {
    store: Store,
    territory: Arc<Territory>,
    streets: Option<StreetIndex>,
    catalogue: Catalogue,
    /// Services whose reports are about a lamp (linked to lighting alarms nearby).
    lighting_services: Vec<String>,
    state: Mutex<State>,
    /// Lighting alarms by key: the stream sequence of the latest event about each, and the
    /// alarm while it is raised (raised and cleared alarms arrive on two consumers, whose order
    /// between them is not the stream's: the later sequence wins).
    lamp_alarms: Mutex<HashMap<String, (u64, Option<LampAlarm>)>>,
}

fn invalid(m: impl Into<String>) -> Error {
    Error::invalid(m)
}

/// A request as anyone may see it: without its reporter's contact.
pub fn public(r: &ServiceRequest) -> ServiceRequest {
    ServiceRequest { contact: None, ..r.clone() }
}

impl Reports {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn open(
        store: Store,
        territory: Arc<Territory>,
        streets: Option<StreetIndex>,
        catalogue: Catalogue,
        lighting_services: Vec<String>,
    ) -> Result<Reports, StoreError> {
        let mut requests = BTreeMap::new();
        let mut tokens = HashMap::new();
        for r in store.requests()? {
            let Ok(id) = r.service_request_id.parse::<u64>() else { continue };
            tokens.insert(r.token.clone(), id);
            requests.insert(id, r);
        }
        let next_id = requests.keys().next_back().map_or(1, |last| last + 1);
        Ok(Reports {
            store,
            territory,
            streets,
            catalogue,
            lighting_services,
            state: Mutex::new(State { requests, tokens, next_id }),
            lamp_alarms: Mutex::new(HashMap::new()),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The services of a commune (all communes share them unless configured otherwise).
    pub fn services(&self, commune: &str) -> Result<&[ServiceDefinition], Error> {
        if !commune.is_empty() {
            self.commune(commune)?;
        }
        Ok(self.catalogue.services(commune))
    }

    fn commune(&self, id: &str) -> Result<&territory::Commune, Error> {
        CommuneId::parse(id)
            .ok()
            .and_then(|c| self.territory.commune(&c))
            .ok_or_else(|| Error::NotFound(format!("jurisdiction_id {id:?} is not a commune of this territory")))
    }

    /// Places an address on the territory's streets: the street it names, in the commune it names
    /// (or `commune`, or the only one the street runs through).
    fn geocode(&self, address: &str, commune: &str) -> Result<(f64, f64), Error> {
        let streets = self.streets.as_ref().ok_or_else(|| {
            invalid("this territory has no street layer to place an address_string: give lat and long")
        })?;
        let (street, points) = streets
            .find_in_address(address)
            .ok_or_else(|| invalid(format!("no street of the territory found in {address:?}: give lat and long")))?;
        let mut by_commune: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for p in points {
            if let Some(c) = self.territory.locate(p.0, p.1) {
                by_commune.entry(c.id.to_string()).or_default().push(p);
            }
        }
        let padded = format!(" {} ", normalize(address));
        let named = || {
            by_commune
                .keys()
                .filter(|id| {
                    CommuneId::parse(id)
                        .ok()
                        .and_then(|c| self.territory.commune(&c))
                        .is_some_and(|c| padded.contains(&format!(" {} ", normalize(&c.name))))
                })
                .cloned()
                .collect::<Vec<_>>()
        };
        let chosen = if !commune.is_empty() {
            commune.to_owned()
        } else if by_commune.len() == 1 {
            by_commune.keys().next().cloned().unwrap_or_default()
        } else {
            match &named()[..] {
                [one] => one.clone(),
                _ => {
                    let names: Vec<&str> = by_commune.keys().map(String::as_str).collect();
                    return Err(invalid(format!(
                        "{street} runs through several communes ({}): name the commune, or give lat and long",
                        names.join(", ")
                    )));
                }
            }
        };
        let points = by_commune
            .get(&chosen)
            .ok_or_else(|| invalid(format!("{street} does not run through commune {chosen}")))?;
        Ok(points[points.len() / 2])
    }

    /// Accepts a citizen's report: durable (flushed) when this returns.
    pub async fn create(
        &self,
        input: CreateRequestRequest,
        caller: Option<&Caller>,
        now: SystemTime,
    ) -> Result<CreateRequestResponse, Error> {
        if input.service_code.is_empty() {
            return Err(invalid("service_code is required"));
        }
        if !self.catalogue.knows(&input.service_code) {
            return Err(Error::NotFound(format!(
                "service_code {:?} is not a service of this territory",
                input.service_code
            )));
        }
        if !input.commune.is_empty() {
            self.commune(&input.commune)?;
        }
        let address =
            domain::clean_text("address_string", &input.address_string, domain::MAX_ADDRESS_CHARS).map_err(invalid)?;
        let (lat, lon) = match (input.lat, input.lon) {
            (Some(lat), Some(lon)) => {
                event::check_position(lat, lon).map_err(|e| invalid(format!("lat/long: {e}")))?;
                (lat, lon)
            }
            (None, None) if !address.is_empty() => self.geocode(&address, &input.commune)?,
            (None, None) => return Err(invalid("a location is required: lat and long, or address_string")),
            _ => return Err(invalid("lat and long go together")),
        };
        let commune = self.territory.locate(lat, lon).ok_or_else(|| {
            invalid(format!("the location ({lat}, {lon}) is outside every commune of this territory"))
        })?;
        if !input.commune.is_empty() && input.commune != commune.id.as_str() {
            return Err(invalid(format!(
                "the location lies in commune {} ({}), not in jurisdiction_id {}",
                commune.id, commune.name, input.commune
            )));
        }
        check_commune(caller, commune.id.as_str()).map_err(|s| Error::Forbidden(s.message().to_owned()))?;
        let service = self.catalogue.service(commune.id.as_str(), &input.service_code).ok_or_else(|| {
            Error::NotFound(format!("service_code {:?} is not offered in commune {}", input.service_code, commune.id))
        })?;
        let description =
            domain::clean_text("description", &input.description, domain::MAX_DESCRIPTION_CHARS).map_err(invalid)?;
        let media_url = domain::check_url(&input.media_url).map_err(invalid)?;
        let attributes = domain::check_attributes(service, &input.attributes).map_err(invalid)?;
        let contact = domain::check_contact(&input.contact.unwrap_or_default()).map_err(invalid)?;

        let at = event::timestamp(now);
        let mut notices = Vec::new();
        let linked_alarm_key = if self.lighting_services.contains(&service.service_code) {
            self.lamp_alarm_near(commune.id.as_str(), (lat, lon))
        } else {
            None
        };
        if linked_alarm_key.is_some() {
            notices.push("La panne de ce lampadaire est déjà connue de nos équipes.".to_owned());
        }
        // Ids are given and written in order under the lock; the flush is shared, after it.
        let (request, id) = {
            let mut state = self.state();
            let id = state.next_id;
            let original =
                domain::find_duplicate(state.requests.values(), commune.id.as_str(), &service.service_code, (lat, lon))
                    .cloned();
            let status = if original.is_some() { ReportStatus::Duplicate } else { ReportStatus::Open };
            let mut request = ServiceRequest {
                service_request_id: id.to_string(),
                token: uuid::Uuid::now_v7().to_string(),
                service_code: service.service_code.clone(),
                service_name: service.service_name.clone(),
                commune: commune.id.to_string(),
                agency_responsible: commune.name.clone(),
                status: status as i32,
                status_notes: String::new(),
                description,
                lat,
                lon,
                address,
                media_url,
                attributes,
                requested_datetime: Some(at),
                updated_datetime: Some(at),
                duplicate_of: String::new(),
                duplicate_count: 0,
                linked_alarm_key: linked_alarm_key.unwrap_or_default(),
                history: vec![StatusChange {
                    at: Some(at),
                    actor: "citizen".into(),
                    from: ReportStatus::Unspecified as i32,
                    to: status as i32,
                    note: String::new(),
                }],
                contact: Some(contact),
            };
            let mut changed = Vec::new();
            let mut events = Vec::new();
            if let Some(mut original) = original {
                request.duplicate_of = original.service_request_id.clone();
                request.status_notes = format!("Doublon de la demande {}.", original.service_request_id);
                notices.insert(
                0,
                format!(
                    "Ce problème a déjà été signalé (demande {}, à moins de {DUPLICATE_RADIUS_M:.0} m) : votre signalement y est rattaché.",
                    original.service_request_id
                ),
            );
                original.duplicate_count += 1;
                original.updated_datetime = Some(at);
                let change = StatusChange {
                    at: Some(at),
                    actor: "system".into(),
                    from: original.status,
                    to: original.status,
                    note: format!("doublon {id} rattaché"),
                };
                domain::record_change(&mut original.history, change.clone());
                events.push(self.event(
                    &original,
                    Payload::ReportUpdated(ReportUpdated { request: Some(public(&original)), change: Some(change) }),
                    now,
                )?);
                changed.push(original);
            }
            events.insert(
                0,
                self.event(&request, Payload::ReportCreated(ReportCreated { request: Some(public(&request)) }), now)?,
            );
            changed.insert(0, request.clone());
            self.store.write(&changed, &events)?;
            for r in changed {
                if let Ok(n) = r.service_request_id.parse::<u64>() {
                    state.tokens.insert(r.token.clone(), n);
                    state.requests.insert(n, r);
                }
            }
            state.next_id = id + 1;
            (request, id)
        };
        self.store.flush().await?;
        tracing::info!(id, commune = %request.commune, service = %request.service_code, duplicate_of = %request.duplicate_of, "report accepted");
        Ok(CreateRequestResponse { request: Some(public(&request)), service_notice: notices.join(" ") })
    }

    /// Publishes every commune's KPIs (see [`crate::kpi`]).
    pub async fn publish_kpis(&self, now: SystemTime) -> Result<(), Error> {
        let kpis = crate::kpi::per_commune(self.state().requests.values(), now);
        let mut events = Vec::with_capacity(kpis.len());
        for kpi in kpis {
            let commune = CommuneId::parse(&kpi.commune).map_err(Error::internal)?;
            let asset = AssetId::parse(&kpi.commune).map_err(Error::internal)?;
            let e = event::new_event(&commune, &asset, event::timestamp(now), None, Payload::ReportsKpi(kpi));
            events.push(event::check(e)?);
        }
        if !events.is_empty() {
            self.store.write(&[], &events)?;
            self.store.flush().await?;
        }
        Ok(())
    }

    fn event(&self, r: &ServiceRequest, payload: Payload, now: SystemTime) -> Result<CheckedEvent, Error> {
        let commune = CommuneId::parse(&r.commune).map_err(Error::internal)?;
        let asset = AssetId::parse(&format!("report-{}", r.service_request_id)).map_err(Error::internal)?;
        let e = event::new_event(
            &commune,
            &asset,
            event::timestamp(now),
            Some(Position { lat: r.lat, lon: r.lon }),
            payload,
        );
        event::check(e).map_err(Error::from)
    }

    pub async fn get(&self, id: &str) -> Result<ServiceRequest, Error> {
        let n = id.parse::<u64>().map_err(|_| Error::NotFound(format!("no service request {id:?}")))?;
        let state = self.state();
        state.requests.get(&n).map(public).ok_or_else(|| Error::NotFound(format!("no service request {id:?}")))
    }

    /// The request id a creation token stands for.
    pub async fn token(&self, token: &str) -> Result<String, Error> {
        let state = self.state();
        state.tokens.get(token).map(ToString::to_string).ok_or_else(|| Error::NotFound(format!("no token {token:?}")))
    }

    /// Requests matching a query, newest first, one page.
    pub async fn list(&self, q: &ListRequestsRequest, now: SystemTime) -> Result<Vec<ServiceRequest>, Error> {
        if !q.commune.is_empty() {
            self.commune(&q.commune)?;
        }
        let page_size = match q.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => return Err(invalid(format!("page_size is at most {MAX_PAGE_SIZE}"))),
            n => n,
        } as usize;
        let page = q.page.max(1) as usize;
        let secs = |t: Option<prost_types::Timestamp>| t.map(|t| t.seconds);
        let (mut start, end) = (secs(q.start_date), secs(q.end_date));
        if start.is_none() && end.is_none() && q.service_request_ids.is_empty() {
            start = Some(event::timestamp(now - DEFAULT_LIST_WINDOW).seconds);
        }
        let statuses: Vec<&str> = q.status.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        if let Some(bad) = statuses.iter().find(|s| **s != "open" && **s != "closed") {
            return Err(invalid(format!("status {bad:?} is neither open nor closed")));
        }
        if q.service_request_ids.len() > MAX_IDS_PER_QUERY {
            return Err(invalid(format!("at most {MAX_IDS_PER_QUERY} service_request_id per query")));
        }
        // Ids name reports by their key; one that is not a number names none.
        let mut ids: Vec<u64> = q.service_request_ids.iter().filter_map(|id| id.parse().ok()).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.dedup();
        let codes: Vec<&str> = q.service_code.split(',').map(str::trim).filter(|c| !c.is_empty()).collect();
        let state = self.state();
        let wanted = |r: &&ServiceRequest| {
            let requested = r.requested_datetime.map(|t| t.seconds).unwrap_or(0);
            let status = ReportStatus::try_from(r.status).unwrap_or(ReportStatus::Unspecified);
            (q.commune.is_empty() || r.commune == q.commune)
                && (codes.is_empty() || codes.contains(&r.service_code.as_str()))
                && start.is_none_or(|s| requested >= s)
                && end.is_none_or(|e| requested <= e)
                && (statuses.is_empty() || statuses.contains(&status.open311()))
        };
        let one_page = |matching: &mut dyn Iterator<Item = &ServiceRequest>| {
            matching.skip((page - 1) * page_size).take(page_size).map(public).collect::<Vec<_>>()
        };
        if !q.service_request_ids.is_empty() {
            // Newest first, like the other lists: the keys grow with time.
            return Ok(one_page(&mut ids.iter().filter_map(|n| state.requests.get(n)).filter(wanted)));
        }
        // Keys grow with time: newest first, and nothing older than the window is looked at.
        let in_window = state
            .requests
            .values()
            .rev()
            .take_while(|r| start.is_none_or(|s| r.requested_datetime.map(|t| t.seconds).unwrap_or(0) >= s));
        Ok(one_page(&mut in_window.filter(wanted)))
    }

    /// An operator moves a report on; recorded in its history and published.
    pub async fn change_status(
        &self,
        id: &str,
        status: ReportStatus,
        note: &str,
        actor: &str,
        allowed_communes: &[String],
        now: SystemTime,
    ) -> Result<ServiceRequest, Error> {
        if status == ReportStatus::Unspecified {
            return Err(invalid("status is required"));
        }
        let actor = domain::clean_text("actor", actor, 64).map_err(invalid)?;
        if actor.is_empty() {
            return Err(invalid("actor (who changes the status) is required"));
        }
        let note = domain::clean_text("note", note, domain::MAX_NOTE_CHARS).map_err(invalid)?;
        let n = id.parse::<u64>().map_err(|_| Error::NotFound(format!("no service request {id:?}")))?;
        let request = {
            let mut state = self.state();
            let mut request =
                state.requests.get(&n).cloned().ok_or_else(|| Error::NotFound(format!("no service request {id:?}")))?;
            // Another commune's request is, to this operator, not there.
            if !allowed_communes.is_empty() && !allowed_communes.contains(&request.commune) {
                return Err(Error::NotFound(format!("no service request {id:?}")));
            }
            if request.status == status as i32 && note.is_empty() {
                return Err(invalid(format!("request {id} is {} already", status.token())));
            }
            let at = event::timestamp(now);
            let change =
                StatusChange { at: Some(at), actor, from: request.status, to: status as i32, note: note.clone() };
            request.status = status as i32;
            if !note.is_empty() {
                request.status_notes = note;
            }
            request.updated_datetime = Some(at);
            domain::record_change(&mut request.history, change.clone());
            let e = self.event(
                &request,
                Payload::ReportUpdated(ReportUpdated { request: Some(public(&request)), change: Some(change) }),
                now,
            )?;
            self.store.write(std::slice::from_ref(&request), &[e])?;
            state.requests.insert(n, request.clone());
            request
        };
        self.store.flush().await?;
        Ok(public(&request))
    }

    /// Notes a lighting alarm raised or cleared (from the bus, at stream sequence `seq`), for
    /// linking lamp reports; an event older than the latest one about its alarm changes nothing.
    pub fn lighting_event(&self, event: &CheckedEvent, seq: u64) {
        let (key, alarm) = match event.payload() {
            Payload::LightingAlarmRaised(raised) => {
                let alarm = event.event.position.map(|p| LampAlarm {
                    commune: event.commune.to_string(),
                    lat: p.lat,
                    lon: p.lon,
                });
                (raised.key.clone(), alarm)
            }
            Payload::LightingAlarmCleared(cleared) => (cleared.key.clone(), None),
            _ => return,
        };
        let mut alarms = self.lamp_alarms.lock().unwrap_or_else(|p| p.into_inner());
        if alarms.get(&key).is_none_or(|(latest, _)| *latest < seq) {
            alarms.insert(key, (seq, alarm));
        }
    }

    /// The nearest lighting alarm of the commune within the duplicate radius.
    fn lamp_alarm_near(&self, commune: &str, at: (f64, f64)) -> Option<String> {
        let alarms = self.lamp_alarms.lock().unwrap_or_else(|p| p.into_inner());
        alarms
            .iter()
            .filter_map(|(k, (_, a))| a.as_ref().map(|a| (k, a)))
            .filter(|(_, a)| a.commune == commune)
            .map(|(k, a)| (domain::distance_m((a.lat, a.lon), at), k))
            .filter(|(d, _)| *d <= DUPLICATE_RADIUS_M)
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, k)| k.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::reports::Contact;
    use proto::v1::{AlarmCleared, AlarmRaised};

    fn territory() -> Territory {
        let text = r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"insee":"34172","name":"Ouest"},
          "geometry":{"type":"Polygon","coordinates":[[[3.8,43.5],[3.9,43.5],[3.9,43.7],[3.8,43.7],[3.8,43.5]]]}}]}"#;
        Territory::from_communes(territory::parse_communes(std::path::Path::new("test"), text).unwrap())
    }

    fn lamp_event(payload: Payload) -> CheckedEvent {
        let e = event::new_event(
            &CommuneId::parse("34172").unwrap(),
            &AssetId::parse("EP1").unwrap(),
            event::timestamp(SystemTime::now()),
            Some(Position { lat: 43.6, lon: 3.85 }),
            payload,
        );
        event::check(e).unwrap()
    }

    fn lamp_out(lat: f64) -> CreateRequestRequest {
        CreateRequestRequest {
            service_code: "eclairage-panne".into(),
            lat: Some(lat),
            lon: Some(3.85),
            contact: Some(Contact { email: "a@b.fr".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_lamp_out_report_near_a_known_fault_is_linked_to_its_alarm() {
        let dir = tempfile::tempdir().unwrap();
        let core = Reports::open(
            Store::open(dir.path()).unwrap(),
            Arc::new(territory()),
            None,
            Catalogue::with_defaults(),
            vec!["eclairage-panne".into()],
        )
        .unwrap();
        let key = "lighting/lamp_failure/EP1";
        core.lighting_event(
            &lamp_event(Payload::LightingAlarmRaised(AlarmRaised {
                key: key.into(),
                alarm_type: "lamp_failure".into(),
                ..Default::default()
            })),
            10,
        );
        // A clear older than the raise (its consumer was ahead): ignored.
        core.lighting_event(
            &lamp_event(Payload::LightingAlarmCleared(AlarmCleared {
                key: key.into(),
                alarm_type: "lamp_failure".into(),
                reason: "repaired".into(),
            })),
            9,
        );
        // 30 m from the faulty lamp: linked, and the reporter is told.
        let created = core.create(lamp_out(43.6 + 30.0 / 111_132.0), None, SystemTime::now()).await.unwrap();
        let request = created.request.unwrap();
        assert_eq!(request.linked_alarm_key, key);
        assert!(created.service_notice.contains("déjà connue"), "{}", created.service_notice);
        assert!(request.contact.is_none(), "answers never carry the contact");
        // 200 m away: not that lamp.
        let far = core.create(lamp_out(43.6 + 200.0 / 111_132.0), None, SystemTime::now()).await.unwrap();
        assert_eq!(far.request.unwrap().linked_alarm_key, "");
        // Once the alarm clears, a new report (a duplicate of the first) is not linked.
        core.lighting_event(
            &lamp_event(Payload::LightingAlarmCleared(AlarmCleared {
                key: key.into(),
                alarm_type: "lamp_failure".into(),
                reason: "repaired".into(),
            })),
            11,
        );
        let after = core.create(lamp_out(43.6), None, SystemTime::now()).await.unwrap().request.unwrap();
        assert_eq!(
            (after.linked_alarm_key.as_str(), after.duplicate_of.as_str()),
            ("", request.service_request_id.as_str())
        );
        // The contact is kept in the store for the commune's team.
        let stored = core.store().requests().unwrap();
        assert_eq!(stored[0].contact.as_ref().map(|c| c.email.as_str()), Some("a@b.fr"));
    }
}
