//! The gRPC face of the reports service (`vigie.reports.v1.ReportsService`).

use proto::reports::reports_service_server::ReportsService;
use proto::reports::{
    ChangeStatusRequest, CreateRequestRequest, CreateRequestResponse, GetRequestRequest, ListRequestsRequest,
    ListRequestsResponse, ListServicesRequest, ListServicesResponse, ReportStatus, ServiceRequest,
};
use std::sync::Arc;
use std::time::SystemTime;
use tonic::{Request, Response, Status};

use crate::core::Reports;

pub struct ReportsApi {
    core: Arc<Reports>,
}

impl ReportsApi {
    pub fn new(core: Arc<Reports>) -> Self {
        ReportsApi { core }
    }
}

#[tonic::async_trait]
impl ReportsService for ReportsApi {
    async fn list_services(
        &self,
        request: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let services = self.core.services(&request.into_inner().commune)?.to_vec();
        Ok(Response::new(ListServicesResponse { services }))
    }

    async fn create_request(
        &self,
        request: Request<CreateRequestRequest>,
    ) -> Result<Response<CreateRequestResponse>, Status> {
        let caller = runtime::grpc_auth::caller(&request);
        Ok(Response::new(self.core.create(request.into_inner(), caller.as_ref(), SystemTime::now()).await?))
    }

    async fn get_request(&self, request: Request<GetRequestRequest>) -> Result<Response<ServiceRequest>, Status> {
        let caller = runtime::grpc_auth::caller(&request);
        let id = request.into_inner().service_request_id;
        let found = self.core.get(&id).await?;
        // Another commune's request is, to this credential, not there.
        if runtime::grpc_auth::check_commune(caller.as_ref(), &found.commune).is_err() {
            return Err(Status::not_found(format!("no service request {:?}", id.chars().take(64).collect::<String>())));
        }
        Ok(Response::new(found))
    }

    async fn list_requests(
        &self,
        request: Request<ListRequestsRequest>,
    ) -> Result<Response<ListRequestsResponse>, Status> {
        let requests = self.core.list(&request.into_inner(), SystemTime::now()).await?;
        Ok(Response::new(ListRequestsResponse { requests }))
    }

    async fn change_status(&self, request: Request<ChangeStatusRequest>) -> Result<Response<ServiceRequest>, Status> {
        let r = request.into_inner();
        let status = ReportStatus::try_from(r.status)
            .map_err(|_| Status::invalid_argument(format!("unknown status {}", r.status)))?;
        let changed = self
            .core
            .change_status(&r.service_request_id, status, &r.note, &r.actor, &r.allowed_communes, SystemTime::now())
            .await?;
        Ok(Response::new(changed))
    }
}
