//! The gRPC face of the lighting service: validate, apply, store with the outbox, reply.

use proto::event::{self, CheckedEvent};
use proto::ids::{AssetId, CommuneId};
use proto::lighting::lighting_service_server::LightingService;
use proto::lighting::{
    GetStreetlightRequest, GetStreetlightResponse, RegisterStreetlightsRequest, RegisterStreetlightsResponse,
    ReportStatusRequest, ReportStatusResponse, StreetlightRegistered, StreetlightStatusReported,
};
use proto::v1::Position;
use proto::v1::event::Payload;
use std::sync::Arc;
use std::time::SystemTime;
use territory::Territory;
use tonic::{Request, Response, Status};

use crate::domain::{self, Invalid, MAX_STREETLIGHTS_PER_CALL};
use crate::store::{Store, StoreError};

pub struct LightingApi {
    store: Store,
    territory: Arc<Territory>,
}

impl LightingApi {
    pub fn new(store: Store, territory: Arc<Territory>) -> Self {
        LightingApi { store, territory }
    }
}

impl From<Invalid> for Status {
    fn from(e: Invalid) -> Status {
        Status::invalid_argument(e.0)
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        tracing::error!(error = %e, "store failure");
        // Nothing was acknowledged: the caller may retry.
        Status::unavailable(format!("the lighting store could not complete the write: {e}"))
    }
}

fn parsed<T>(result: Result<T, proto::ids::IdError>) -> Result<T, Status> {
    result.map_err(|e| Status::internal(format!("stored identifier no longer valid: {e}")))
}

fn checked(event: proto::v1::Event) -> Result<CheckedEvent, Status> {
    event::check(event).map_err(|e| Status::internal(format!("built an invalid event: {e}")))
}

#[tonic::async_trait]
impl LightingService for LightingApi {
    async fn register_streetlights(
        &self,
        request: Request<RegisterStreetlightsRequest>,
    ) -> Result<Response<RegisterStreetlightsResponse>, Status> {
        let lights = request.into_inner().streetlights;
        if lights.is_empty() {
            return Err(Status::invalid_argument("no streetlights in the request"));
        }
        if lights.len() > MAX_STREETLIGHTS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "{} streetlights in one call; at most {MAX_STREETLIGHTS_PER_CALL}",
                lights.len()
            )));
        }
        let mut changes = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut unchanged = 0u32;
        let now = event::timestamp(SystemTime::now());
        for light in &lights {
            let valid = domain::validate_streetlight(light, &self.territory)?;
            if !seen.insert(valid.id.clone()) {
                return Err(Status::invalid_argument(format!("streetlight {} appears twice in the request", valid.id)));
            }
            let stored = valid.to_proto();
            if self.store.streetlight(valid.id.as_str())?.as_ref() == Some(&stored) {
                unchanged += 1;
                continue;
            }
            let event = checked(event::new_event(
                &valid.commune,
                &valid.id,
                now,
                Some(Position { lat: valid.lat, lon: valid.lon }),
                Payload::StreetlightRegistered(StreetlightRegistered { streetlight: Some(stored.clone()) }),
            ))?;
            changes.push((stored, event));
        }
        let registered = changes.len() as u32;
        if !changes.is_empty() {
            self.store.register(changes).await?;
        }
        Ok(Response::new(RegisterStreetlightsResponse { registered, unchanged }))
    }

    async fn report_status(
        &self,
        request: Request<ReportStatusRequest>,
    ) -> Result<Response<ReportStatusResponse>, Status> {
        let request = request.into_inner();
        let valid = domain::validate_report(request.report.as_ref(), SystemTime::now())?;
        let light = self
            .store
            .streetlight(valid.streetlight_id.as_str())?
            .ok_or_else(|| Status::not_found(format!("streetlight {} is not registered", valid.streetlight_id)))?;
        let commune = parsed(CommuneId::parse(&light.commune))?;
        let asset = parsed(AssetId::parse(&light.id))?;
        let event = checked(event::new_event(
            &commune,
            &asset,
            event::timestamp(valid.observed_at),
            Some(Position { lat: light.lat, lon: light.lon }),
            Payload::StreetlightStatus(StreetlightStatusReported { report: Some(valid.report.clone()) }),
        ))?;
        self.store.record_report(&valid.report, &event).await?;
        Ok(Response::new(ReportStatusResponse { event_id: event.event.id }))
    }

    async fn get_streetlight(
        &self,
        request: Request<GetStreetlightRequest>,
    ) -> Result<Response<GetStreetlightResponse>, Status> {
        let id = request.into_inner().id;
        let id = AssetId::parse_as("streetlight id", &id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let light = self
            .store
            .streetlight(id.as_str())?
            .ok_or_else(|| Status::not_found(format!("streetlight {id} is not registered")))?;
        let last_report = self.store.last_report(id.as_str())?;
        Ok(Response::new(GetStreetlightResponse { streetlight: Some(light), last_report }))
    }
}
