//! The gRPC face of the transport service (`vigie.transport.v1.TransportService`).

use proto::transport::transport_service_server::TransportService;
use proto::transport::{
    GetTripArrivalsRequest, ListServiceAlertsRequest, ListServiceAlertsResponse, ListVehiclesRequest,
    ListVehiclesResponse, ServiceAlert, TripArrivals, VehiclePosition, WithdrawServiceAlertRequest,
    WithdrawServiceAlertResponse,
};
use proto::v1::StreamSummary;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

use crate::core::Transport;

/// Positions written between two flushes of the store.
const GROUP_COMMIT: u64 = 256;

pub struct TransportApi {
    core: Arc<Transport>,
}

impl TransportApi {
    pub fn new(core: Arc<Transport>) -> Self {
        TransportApi { core }
    }
}

#[tonic::async_trait]
impl TransportService for TransportApi {
    async fn report_positions(
        &self,
        request: Request<Streaming<VehiclePosition>>,
    ) -> Result<Response<StreamSummary>, Status> {
        let core = &self.core;
        let record = |position: VehiclePosition| core.record(&position);
        let commit = || core.flush();
        Ok(Response::new(runtime::grpc::ingest(request.into_inner(), record, GROUP_COMMIT, commit).await?))
    }

    async fn list_vehicles(
        &self,
        request: Request<ListVehiclesRequest>,
    ) -> Result<Response<ListVehiclesResponse>, Status> {
        let route = request.into_inner().route_id;
        Ok(Response::new(ListVehiclesResponse { vehicles: self.core.vehicles(&route) }))
    }

    async fn get_trip_arrivals(
        &self,
        request: Request<GetTripArrivalsRequest>,
    ) -> Result<Response<TripArrivals>, Status> {
        Ok(Response::new(self.core.trip_arrivals(&request.into_inner().trip_id)?))
    }

    async fn publish_service_alert(&self, request: Request<ServiceAlert>) -> Result<Response<ServiceAlert>, Status> {
        Ok(Response::new(self.core.publish_alert(request.into_inner()).await?))
    }

    async fn withdraw_service_alert(
        &self,
        request: Request<WithdrawServiceAlertRequest>,
    ) -> Result<Response<WithdrawServiceAlertResponse>, Status> {
        let request = request.into_inner();
        self.core.withdraw_alert(&request.id, &request.reason).await?;
        Ok(Response::new(WithdrawServiceAlertResponse {}))
    }

    async fn list_service_alerts(
        &self,
        _request: Request<ListServiceAlertsRequest>,
    ) -> Result<Response<ListServiceAlertsResponse>, Status> {
        Ok(Response::new(ListServiceAlertsResponse { alerts: self.core.service_alerts() }))
    }
}
