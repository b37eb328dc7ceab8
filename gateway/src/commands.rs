//! Operators' commands over REST, routed to the domain services over gRPC: dim or switch lights,
//! operate a valve, move a citizen report on. The service validates and records the command (who,
//! why, when); its events then reach the view and the audit log like any other. The answer is the
//! command as the service accepted it (pending), or the service's refusal with its reason.
//!
//! Also the one query the view does not hold: the water network's district metered areas (their
//! outline on the console's map), asked of the water service.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use proto::lighting::lighting_service_client::LightingServiceClient;
use proto::live::{CommandState, LatLon};
use proto::reports::reports_service_client::ReportsServiceClient;
use proto::water::water_service_client::WaterServiceClient;
use runtime::grpc_auth::{AuthChannel, BearerToken};
use serde::{Deserialize, Serialize};

use crate::access::{Access, actor, reader, require_principal};
use crate::auth::Principal;
use crate::rest::{ApiError, MAX_BODY_BYTES};
use crate::routes::{Routes, ShardRoute};
use axum::Extension;

/// The domain services' gRPC endpoints (connected lazily: a service down gives a 503, not a
/// gateway that cannot start).
#[derive(Clone, Default)]
pub struct Services {
    /// The lighting service may be sharded by commune (see [`Routes`]); water and reports are
    /// one unit each.
    pub lighting: Routes,
    pub water: Routes,
    pub reports: Routes,
}

impl Services {
    /// Every call carries `token` (the gateway's own, see `auth::Authority::service_token`);
    /// https:// URLs use `tls`.
    pub fn connect(
        lighting: Option<&str>,
        lighting_shards: &[ShardRoute],
        water: Option<&str>,
        reports: Option<&str>,
        tls: &runtime::config::GrpcClientTls,
        token: BearerToken,
    ) -> anyhow::Result<Services> {
        // Several URLs (comma-separated): the instances of a service run with a standby.
        let connect = |urls: &str| -> anyhow::Result<AuthChannel> {
            Ok(runtime::grpc_auth::with_token(tls.channel(urls)?, token.clone()))
        };
        let whole = |urls: Option<&str>, flag: &str| -> anyhow::Result<Routes> {
            match urls {
                Some(urls) => Routes::whole(urls, connect).map_err(|e| anyhow::anyhow!("{flag}: {e:#}")),
                None => Ok(Routes::default()),
            }
        };
        let lighting = if lighting_shards.is_empty() {
            whole(lighting, "--lighting-url")?
        } else {
            Routes::sharded(lighting_shards, connect).map_err(|e| anyhow::anyhow!("--lighting-shard: {e:#}"))?
        };
        Ok(Services { lighting, water: whole(water, "--water-url")?, reports: whole(reports, "--reports-url")? })
    }
}

pub fn router(services: Services, access: Access) -> Router {
    Router::new()
        .route("/api/v1/commands/lighting", post(lighting))
        .route("/api/v1/commands/valve", post(valve))
        .route("/api/v1/reports/status", post(report_status))
        .route("/api/v1/water/dmas", axum::routing::get(water_dmas))
        .route("/api/v1/endpoints", axum::routing::get(endpoints))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(access, require_principal))
        .with_state(services)
}

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn body<T>(body: Body<T>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(ApiError::from_json)
}

/// A service's refusal, in the API's terms.
fn refused(service: &str, status: tonic::Status) -> ApiError {
    use tonic::Code;
    let message = format!("{service}: {}", status.message());
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => ApiError::bad_request(message),
        Code::NotFound => ApiError::not_found(message),
        Code::PermissionDenied => crate::access::forbidden(message),
        Code::ResourceExhausted => ApiError::bad_request(message),
        _ => ApiError::unavailable(format!(
            "{service} did not take the command ({:?}: {}); retry",
            status.code(),
            status.message()
        )),
    }
}

/// The channel of a service that is one unit (water, reports).
fn channel(routes: &Routes, service: &str) -> Result<AuthChannel, ApiError> {
    routes
        .whole_channel()
        .ok_or_else(|| ApiError::unavailable(format!("this gateway has no {service} service configured")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum LightingTarget {
    StreetlightId(String),
    Commune(String),
    Street(String),
    Polygon(Vec<LatLon>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum LightingAction {
    SwitchOn(bool),
    DimLevel(f64),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LightingCommandRequest {
    target: LightingTarget,
    action: LightingAction,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    timeout_s: u32,
    /// Limits the target to this commune (INSEE code): a street's name is not unique across
    /// communes, and "this street" from a lamp's details means the lamp's commune's.
    #[serde(default)]
    commune: Option<String>,
}

#[derive(Serialize)]
struct Commands {
    /// One command per commune the target spans.
    commands: Vec<CommandState>,
    /// With a sharded service: the shards that did not take their part of the command, and
    /// why (the others did; retry for these communes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unreached: Vec<Unreached>,
}

#[derive(Serialize)]
struct Unreached {
    communes: Vec<String>,
    error: String,
}

async fn lighting(
    State(services): State<Services>,
    Extension(p): Extension<Principal>,
    request: Body<LightingCommandRequest>,
) -> Result<Response, ApiError> {
    use proto::lighting::{CommandAction, CommandTarget, Polygon, SendCommandRequest, command_action, command_target};
    actor(&p)?;
    let request = body(request)?;
    let target = match request.target {
        LightingTarget::StreetlightId(id) => command_target::Target::StreetlightId(id),
        // A commune named outright is refused as asking for it is on every path (the other
        // targets reach only the lamps of the operator's communes: the service's answer).
        LightingTarget::Commune(c) if !p.scope.allows(&c) => {
            return Err(crate::access::forbidden(format!(
                "commune {} is outside your communes",
                c.chars().take(16).collect::<String>()
            )));
        }
        LightingTarget::Commune(c) => command_target::Target::Commune(c),
        LightingTarget::Street(s) => command_target::Target::Street(s),
        LightingTarget::Polygon(ring) => command_target::Target::Polygon(Polygon {
            ring: ring.into_iter().map(|p| proto::v1::Position { lat: p.lat, lon: p.lon }).collect(),
        }),
    };
    // The communes the command may reach: the caller's, or the one named (if it is theirs), or
    // the commune targeted (checked above; with shards, only its shard is asked).
    let allowed_communes = match (&target, &request.commune) {
        (command_target::Target::Commune(c), None) => {
            let c = proto::ids::CommuneId::parse(c).map_err(|e| ApiError::bad_request(format!("commune: {e}")))?;
            vec![c.to_string()]
        }
        (_, None) => p.scope.allowed_communes(),
        (_, Some(c)) => {
            let c = proto::ids::CommuneId::parse(c).map_err(|e| ApiError::bad_request(format!("commune: {e}")))?;
            if !p.scope.allows(c.as_str()) {
                return Err(crate::access::forbidden(format!("commune {c} is outside your communes")));
            }
            vec![c.to_string()]
        }
    };
    let action = match request.action {
        LightingAction::SwitchOn(on) => command_action::Action::SwitchOn(on),
        LightingAction::DimLevel(level) => command_action::Action::DimLevel(level),
    };
    if !services.lighting.is_configured() {
        return Err(ApiError::unavailable("this gateway has no lighting service configured"));
    }
    // Sharded: each shard serving some of those communes gets the command for its part of them.
    let units = services.lighting.reaching(&allowed_communes);
    let calls = units.into_iter().map(|(channel, communes)| {
        let request = SendCommandRequest {
            target: Some(CommandTarget { target: Some(target.clone()) }),
            action: Some(CommandAction { action: Some(action) }),
            requested_by: p.login.clone(),
            reason: request.reason.clone(),
            timeout_s: request.timeout_s,
            allowed_communes: communes.clone(),
        };
        async move { (communes, LightingServiceClient::new(channel).send_command(request).await) }
    });
    let (mut commands, mut unreached, mut refusals) = (Vec::new(), Vec::new(), Vec::new());
    for (communes, outcome) in futures::future::join_all(calls).await {
        match outcome {
            Ok(answer) => commands.extend(
                answer.into_inner().commands.iter().map(|c| proto::live::from_proto::lighting_command("lighting", c)),
            ),
            Err(status) => {
                if status.code() != tonic::Code::NotFound {
                    unreached
                        .push(Unreached { communes, error: refused("lighting", status.clone()).message().to_owned() });
                }
                refusals.push(status);
            }
        }
    }
    if commands.is_empty() {
        // No shard took it: the most telling refusal (one that is not "not found", when a shard
        // gave one), else the target is unknown in every commune it may reach.
        let status = match refusals.iter().position(|s| s.code() != tonic::Code::NotFound) {
            Some(i) => refusals.swap_remove(i),
            None => refusals.pop().unwrap_or_else(|| {
                tonic::Status::not_found("no lighting shard serves the communes this command may reach")
            }),
        };
        return Err(refused("lighting", status));
    }
    Ok((StatusCode::CREATED, Json(Commands { commands, unreached })).into_response())
}

/// `GET /api/v1/endpoints`: the gRPC endpoints that serve the caller's communes, per domain (a
/// sharded service has one per shard). Integrators write field data there.
async fn endpoints(State(services): State<Services>, Extension(p): Extension<Principal>) -> Result<Response, ApiError> {
    reader(&p)?;
    let mut answer = serde_json::Map::new();
    for (domain, routes) in
        [("lighting", &services.lighting), ("water", &services.water), ("reports", &services.reports)]
    {
        let endpoints = routes.endpoints(|c| p.scope.allows(c));
        if !endpoints.is_empty() {
            answer.insert(domain.into(), serde_json::json!(endpoints));
        }
    }
    Ok(Json(answer).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValveCommandRequest {
    link_id: String,
    /// `close` or `open`.
    action: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    timeout_s: u32,
}

async fn valve(
    State(services): State<Services>,
    Extension(p): Extension<Principal>,
    request: Body<ValveCommandRequest>,
) -> Result<Response, ApiError> {
    use proto::water::{SendValveCommandRequest, ValveAction};
    actor(&p)?;
    let request = body(request)?;
    let action = match request.action.as_str() {
        "close" => ValveAction::Close,
        "open" => ValveAction::Open,
        _ => return Err(ApiError::bad_request("action is close or open")),
    };
    let mut client = WaterServiceClient::new(channel(&services.water, "water")?);
    let command = client
        .send_valve_command(SendValveCommandRequest {
            link_id: request.link_id,
            action: action as i32,
            requested_by: p.login.clone(),
            reason: request.reason,
            timeout_s: request.timeout_s,
            allowed_communes: p.scope.allowed_communes(),
        })
        .await
        .map_err(|s| refused("water", s))?
        .into_inner();
    let commands = vec![proto::live::from_proto::valve_command("water", &command)];
    Ok((StatusCode::CREATED, Json(Commands { commands, unreached: Vec::new() })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportStatusRequest {
    service_request_id: String,
    /// `open`, `confirmed`, `investigating`, `action_scheduled`, `in_progress`, `fixed`,
    /// `closed`, `duplicate`, `not_responsible`.
    status: String,
    #[serde(default)]
    note: String,
}

#[derive(Serialize)]
struct ReportAnswer {
    service_request_id: String,
    /// Open311: `open` or `closed`.
    status: String,
    detailed_status: String,
    status_notes: String,
}

async fn report_status(
    State(services): State<Services>,
    Extension(p): Extension<Principal>,
    request: Body<ReportStatusRequest>,
) -> Result<Response, ApiError> {
    use proto::reports::{ChangeStatusRequest, ReportStatus};
    actor(&p)?;
    let request = body(request)?;
    let status = [
        ReportStatus::Open,
        ReportStatus::Confirmed,
        ReportStatus::Investigating,
        ReportStatus::ActionScheduled,
        ReportStatus::InProgress,
        ReportStatus::Fixed,
        ReportStatus::Closed,
        ReportStatus::Duplicate,
        ReportStatus::NotResponsible,
    ]
    .into_iter()
    .find(|s| s.token() == request.status)
    .ok_or_else(|| {
        ApiError::bad_request(
            "status is one of open, confirmed, investigating, action_scheduled, in_progress, fixed, closed, duplicate, not_responsible",
        )
    })?;
    let mut client = ReportsServiceClient::new(channel(&services.reports, "reports")?);
    let changed = client
        .change_status(ChangeStatusRequest {
            service_request_id: request.service_request_id,
            status: status as i32,
            note: request.note,
            actor: p.login.clone(),
            allowed_communes: p.scope.allowed_communes(),
        })
        .await
        .map_err(|s| refused("reports", s))?
        .into_inner();
    let now = ReportStatus::try_from(changed.status).unwrap_or_default();
    Ok(Json(ReportAnswer {
        service_request_id: changed.service_request_id,
        status: now.open311().to_owned(),
        detailed_status: now.token().to_owned(),
        status_notes: changed.status_notes,
    })
    .into_response())
}

/// `GET /api/v1/water/dmas`: the water service's district metered areas, with their outline.
async fn water_dmas(
    State(services): State<Services>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    reader(&p)?;
    let mut client = WaterServiceClient::new(channel(&services.water, "water")?);
    let answer = client
        .list_dmas(proto::water::ListDmasRequest {})
        .await
        .map_err(|status| refused("water", status))?
        .into_inner();
    let dmas: Vec<serde_json::Value> = answer
        .dmas
        .iter()
        .filter(|d| p.scope.allows(&d.commune))
        .map(|d| {
            let hull: Vec<[f64; 2]> = d.hull.iter().map(|p| [p.lon, p.lat]).collect();
            serde_json::json!({"id": d.id, "commune": d.commune, "zone": d.zone, "junctions": d.junctions, "hull": hull})
        })
        .collect();
    Ok(Json(serde_json::json!({"dmas": dmas, "flow_unit": answer.flow_unit})).into_response())
}
