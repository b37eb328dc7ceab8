//! The gRPC face of the water service (`vigie.water.v1.WaterService`).

use proto::ids::CommuneId;
use proto::v1::StreamSummary;
use proto::water::water_service_server::WaterService;
use proto::water::{
    GetValveCommandRequest, GetWaterKpisRequest, GetWaterKpisResponse, ListDmasRequest, ListDmasResponse,
    ListSensorsRequest, ListSensorsResponse, Reading, RegisterSensorsRequest, RegisterSensorsResponse,
    SendValveCommandRequest, ValveCommand, ValveControllerMessage, ValveInstruction, ValveResult,
    valve_controller_message::Message as FromController,
};
use runtime::controller::{self, FromController as Received};
use std::sync::Arc;
use std::time::SystemTime;
use tonic::{Request, Response, Status, Streaming};

use crate::core::Water;

/// Readings made durable together (one flush per group).
const READINGS_GROUP_COMMIT: u64 = 256;

pub struct WaterApi {
    core: Arc<Water>,
}

impl WaterApi {
    pub fn new(core: Arc<Water>) -> Self {
        WaterApi { core }
    }
}

#[tonic::async_trait]
impl WaterService for WaterApi {
    async fn stream_readings(&self, request: Request<Streaming<Reading>>) -> Result<Response<StreamSummary>, Status> {
        let core = &self.core;
        let record = |reading: Reading| core.record_reading(reading);
        // The burst rule runs once per group, on every zone that got new samples.
        let commit = || core.settle();
        Ok(Response::new(runtime::grpc::ingest(request.into_inner(), record, READINGS_GROUP_COMMIT, commit).await?))
    }

    async fn register_sensors(
        &self,
        request: Request<RegisterSensorsRequest>,
    ) -> Result<Response<RegisterSensorsResponse>, Status> {
        Ok(Response::new(self.core.register(&request.into_inner().sensors).await?))
    }

    async fn list_sensors(
        &self,
        request: Request<ListSensorsRequest>,
    ) -> Result<Response<ListSensorsResponse>, Status> {
        Ok(Response::new(ListSensorsResponse { sensors: self.core.sensors(&request.into_inner().commune) }))
    }

    async fn list_dmas(&self, _request: Request<ListDmasRequest>) -> Result<Response<ListDmasResponse>, Status> {
        let (dmas, flow_unit) = self.core.dmas();
        Ok(Response::new(ListDmasResponse { dmas, flow_unit }))
    }

    async fn send_valve_command(
        &self,
        request: Request<SendValveCommandRequest>,
    ) -> Result<Response<ValveCommand>, Status> {
        Ok(Response::new(self.core.send_valve_command(request.get_ref()).await?))
    }

    async fn get_valve_command(
        &self,
        request: Request<GetValveCommandRequest>,
    ) -> Result<Response<ValveCommand>, Status> {
        let id = request.into_inner().id;
        let id =
            proto::ids::AssetId::parse_as("command id", &id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(self.core.command(id.as_str())?))
    }

    type ValveControllerSessionStream = controller::InstructionStream<ValveInstruction>;

    async fn valve_controller_session(
        &self,
        request: Request<Streaming<ValveControllerMessage>>,
    ) -> Result<Response<Self::ValveControllerSessionStream>, Status> {
        let core = self.core.clone();
        let on_result = move |controller: String, result: ValveResult| {
            let core = core.clone();
            async move { core.valve_result(&controller, &result).await }
        };
        let read = |message: ValveControllerMessage| match message.message {
            Some(FromController::Hello(hello)) => Received::Hello { controller_id: hello.controller_id },
            Some(FromController::Result(result)) => Received::Result(result),
            None => Received::Other,
        };
        let stream = controller::session(request.into_inner(), self.core.desk(), read, on_result).await?;
        Ok(Response::new(stream))
    }

    async fn get_kpis(&self, request: Request<GetWaterKpisRequest>) -> Result<Response<GetWaterKpisResponse>, Status> {
        let commune = request.into_inner().commune;
        let commune = if commune.is_empty() {
            None
        } else {
            Some(CommuneId::parse(&commune).map_err(|e| Status::invalid_argument(e.to_string()))?)
        };
        Ok(Response::new(GetWaterKpisResponse { kpis: self.core.kpis(commune.as_ref(), SystemTime::now()) }))
    }
}
