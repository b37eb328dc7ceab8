//! The gRPC face of the water service (`vigie.water.v1.WaterService`).

use futures::StreamExt;
use proto::ids::CommuneId;
use proto::v1::StreamSummary;
use proto::water::water_service_server::WaterService;
use proto::water::{
    GetValveCommandRequest, GetWaterKpisRequest, GetWaterKpisResponse, ListDmasRequest, ListDmasResponse,
    ListSensorsRequest, ListSensorsResponse, Reading, RegisterSensorsRequest, RegisterSensorsResponse,
    SendValveCommandRequest, ValveCommand, ValveControllerMessage, ValveInstruction,
    valve_controller_message::Message as FromController,
};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
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

type InstructionStream = Pin<Box<dyn futures::Stream<Item = Result<ValveInstruction, Status>> + Send>>;

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

    type ValveControllerSessionStream = InstructionStream;

    async fn valve_controller_session(
        &self,
        request: Request<Streaming<ValveControllerMessage>>,
    ) -> Result<Response<Self::ValveControllerSessionStream>, Status> {
        let mut inbound = request.into_inner();
        let controller_id = match inbound.message().await? {
            Some(ValveControllerMessage { message: Some(FromController::Hello(hello)) })
                if !hello.controller_id.trim().is_empty()
                    && hello.controller_id.chars().count() <= 64
                    && !hello.controller_id.chars().any(char::is_control) =>
            {
                hello.controller_id
            }
            _ => {
                return Err(Status::invalid_argument(
                    "a controller session starts with a hello carrying the controller id (1 to 64 characters of text)",
                ));
            }
        };
        let (sender, receiver) = mpsc::channel(1024);
        let session = self.core.connect(sender.clone())?;
        tracing::info!(controller = %controller_id, "valve controller connected");
        let core = self.core.clone();
        tokio::spawn(async move {
            while let Some(message) = inbound.next().await {
                let outcome = match message {
                    Ok(ValveControllerMessage { message: Some(FromController::Result(result)) }) => {
                        core.valve_result(&controller_id, &result).await
                    }
                    Ok(_) => Err(Status::invalid_argument("only valve results are expected after the hello")),
                    Err(status) => {
                        tracing::info!(controller = %controller_id, error = %status, "controller stream ended");
                        break;
                    }
                };
                if let Err(status) = outcome {
                    tracing::warn!(controller = %controller_id, error = %status, "controller message refused");
                    let _ = sender.send(Err(status)).await;
                    break;
                }
            }
            core.disconnect(session);
            tracing::info!(controller = %controller_id, "valve controller disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
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
