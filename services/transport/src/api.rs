//! The gRPC face of the transport service (`vigie.transport.v1.TransportService`).

use proto::transport::transport_service_server::TransportService;
use proto::transport::{ListVehiclesRequest, ListVehiclesResponse, PositionError, PositionSummary, VehiclePosition};
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

use crate::core::Transport;

/// Positions written between two flushes of the store.
const GROUP_COMMIT: u64 = 256;
const MAX_LISTED_ERRORS: usize = 100;

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
    ) -> Result<Response<PositionSummary>, Status> {
        let mut stream = request.into_inner();
        let mut summary = PositionSummary::default();
        let (mut index, mut uncommitted) = (0u64, 0u64);
        let refuse = |summary: &mut PositionSummary, index: u64, message: String| {
            summary.refused += 1;
            if summary.errors.len() < MAX_LISTED_ERRORS {
                summary.errors.push(PositionError { index, message });
            }
        };
        loop {
            let position = match stream.message().await {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(status) => {
                    refuse(&mut summary, index, format!("stream ended: {}", status.message()));
                    break;
                }
            };
            match self.core.record(&position) {
                Ok(()) => {
                    summary.accepted += 1;
                    uncommitted += 1;
                }
                Err(status) => refuse(&mut summary, index, status.message().to_owned()),
            }
            index += 1;
            if uncommitted >= GROUP_COMMIT {
                self.core.commit().await?;
                uncommitted = 0;
            }
        }
        // Everything counted as accepted is durable before the summary is sent.
        self.core.commit().await?;
        if summary.refused > 0 {
            tracing::info!(accepted = summary.accepted, refused = summary.refused, "position stream with refusals");
        }
        Ok(Response::new(summary))
    }

    async fn list_vehicles(
        &self,
        request: Request<ListVehiclesRequest>,
    ) -> Result<Response<ListVehiclesResponse>, Status> {
        let route = request.into_inner().route_id;
        Ok(Response::new(ListVehiclesResponse { vehicles: self.core.vehicles(&route) }))
    }
}
