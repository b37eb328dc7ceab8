//! The gRPC face of the lighting service (`vigie.lighting.v1.LightingService`).

use proto::ids::{AssetId, CommuneId};
use proto::lighting::CommandResult;
use proto::lighting::controller_message::Message as FromController;
use proto::lighting::lighting_service_server::LightingService;
use proto::lighting::telemetry_message::Message as Telemetry;
use proto::lighting::{
    ControllerInstruction, ControllerMessage, DeleteScheduleRequest, DeleteScheduleResponse, DimmingSchedule,
    GetCommandRequest, GetKpisRequest, GetKpisResponse, GetStreetlightRequest, GetStreetlightResponse, LightingCommand,
    ListSchedulesRequest, ListSchedulesResponse, PutScheduleRequest, RegisterStreetlightsRequest,
    RegisterStreetlightsResponse, ReportStatusRequest, ReportStatusResponse, SendCommandRequest, SendCommandResponse,
    TelemetryMessage,
};
use proto::v1::StreamSummary;
use runtime::controller::{self, FromController as Received};
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

use crate::core::Lighting;

/// Telemetry messages written between two flushes of the store.
const TELEMETRY_GROUP_COMMIT: u64 = 256;

pub struct LightingApi {
    core: Arc<Lighting>,
}

impl LightingApi {
    pub fn new(core: Arc<Lighting>) -> Self {
        LightingApi { core }
    }
}

#[tonic::async_trait]
impl LightingService for LightingApi {
    async fn register_streetlights(
        &self,
        request: Request<RegisterStreetlightsRequest>,
    ) -> Result<Response<RegisterStreetlightsResponse>, Status> {
        let (registered, unchanged) = self.core.register(&request.into_inner().streetlights)?;
        if registered > 0 {
            self.core.flush().await?;
        }
        Ok(Response::new(RegisterStreetlightsResponse { registered, unchanged }))
    }

    async fn report_status(
        &self,
        request: Request<ReportStatusRequest>,
    ) -> Result<Response<ReportStatusResponse>, Status> {
        let caller = runtime::grpc_auth::caller(&request);
        let event_id = self.core.report_status(request.into_inner().report.as_ref(), caller.as_ref())?;
        self.core.flush().await?;
        Ok(Response::new(ReportStatusResponse { event_id }))
    }

    async fn get_streetlight(
        &self,
        request: Request<GetStreetlightRequest>,
    ) -> Result<Response<GetStreetlightResponse>, Status> {
        let id = request.into_inner().id;
        let id = AssetId::parse_as("streetlight id", &id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let store = self.core.store();
        let light = store
            .streetlight(id.as_str())?
            .ok_or_else(|| Status::not_found(format!("streetlight {id} is not registered")))?;
        let last_report = store.lamp_state(id.as_str())?.and_then(|s| s.last_report);
        Ok(Response::new(GetStreetlightResponse { streetlight: Some(light), last_report }))
    }

    async fn stream_telemetry(
        &self,
        request: Request<Streaming<TelemetryMessage>>,
    ) -> Result<Response<StreamSummary>, Status> {
        let core = &self.core;
        let caller = runtime::grpc_auth::caller(&request);
        let caller = caller.as_ref();
        let record = |message: TelemetryMessage| match message.message {
            Some(Telemetry::Status(report)) => core.record_status(Some(&report), caller).map(drop),
            Some(Telemetry::Fault(fault)) => core.record_fault(Some(&fault), caller).map(drop),
            None => Err(runtime::error::Error::invalid("empty telemetry message: status or fault expected")),
        };
        // Alarms are settled once per group: a feeder failure reported lamp by lamp is one alarm.
        let commit = || async {
            core.settle()?;
            core.flush().await
        };
        Ok(Response::new(runtime::grpc::ingest(request.into_inner(), record, TELEMETRY_GROUP_COMMIT, commit).await?))
    }

    async fn send_command(
        &self,
        request: Request<SendCommandRequest>,
    ) -> Result<Response<SendCommandResponse>, Status> {
        let commands = self.core.send_command(request.get_ref()).await?;
        Ok(Response::new(SendCommandResponse { commands }))
    }

    async fn get_command(&self, request: Request<GetCommandRequest>) -> Result<Response<LightingCommand>, Status> {
        let id = request.into_inner().id;
        let id = AssetId::parse_as("command id", &id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let record = self
            .core
            .store()
            .command(id.as_str())?
            .ok_or_else(|| Status::not_found(format!("command {id} does not exist")))?;
        Ok(Response::new(record.command.unwrap_or_default()))
    }

    async fn get_kpis(&self, request: Request<GetKpisRequest>) -> Result<Response<GetKpisResponse>, Status> {
        let commune = request.into_inner().commune;
        let commune = if commune.is_empty() {
            None
        } else {
            Some(CommuneId::parse(&commune).map_err(|e| Status::invalid_argument(e.to_string()))?)
        };
        Ok(Response::new(GetKpisResponse { kpis: self.core.kpis(commune.as_ref(), std::time::SystemTime::now()) }))
    }

    async fn put_schedule(&self, request: Request<PutScheduleRequest>) -> Result<Response<DimmingSchedule>, Status> {
        let request = request.into_inner();
        let schedule = request.schedule.ok_or_else(|| Status::invalid_argument("schedule is missing"))?;
        Ok(Response::new(self.core.put_schedule(schedule, &request.requested_by).await?))
    }

    async fn list_schedules(
        &self,
        _: Request<ListSchedulesRequest>,
    ) -> Result<Response<ListSchedulesResponse>, Status> {
        Ok(Response::new(ListSchedulesResponse { schedules: self.core.schedules()? }))
    }

    async fn delete_schedule(
        &self,
        request: Request<DeleteScheduleRequest>,
    ) -> Result<Response<DeleteScheduleResponse>, Status> {
        let request = request.into_inner();
        let id = AssetId::parse_as("schedule id", &request.id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.core.delete_schedule(id.as_str(), &request.requested_by).await?;
        Ok(Response::new(DeleteScheduleResponse {}))
    }

    type ControllerSessionStream = controller::InstructionStream<ControllerInstruction>;

    async fn controller_session(
        &self,
        request: Request<Streaming<ControllerMessage>>,
    ) -> Result<Response<Self::ControllerSessionStream>, Status> {
        let core = self.core.clone();
        let on_result = move |_controller: String, result: CommandResult| {
            let core = core.clone();
            async move { core.command_result(&result).await }
        };
        let read = |message: ControllerMessage| match message.message {
            Some(FromController::Hello(hello)) => Received::Hello { controller_id: hello.controller_id },
            Some(FromController::Result(result)) => Received::Result(result),
            None => Received::Other,
        };
        let stream = controller::session(request.into_inner(), self.core.desk.clone(), read, on_result).await?;
        Ok(Response::new(stream))
    }
}
