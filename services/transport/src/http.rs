//! The HTTP face of the transport service: the GTFS-Realtime feeds, as protobuf (what consumers
//! fetch) and as JSON (the same message in protobuf's JSON mapping, for people debugging).
//!
//! - `GET /gtfs-rt/vehicle-positions`, `/gtfs-rt/trip-updates`, `/gtfs-rt/alerts`: protobuf
//!   (`application/x-protobuf`); append `.json` (or ask `?format=json`) for JSON.
//! - `GET /health`: 200 while the service runs.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use crate::core::Transport;
use crate::gtfs_rt::Feed;

pub fn router(core: Arc<Transport>) -> axum::Router {
    axum::Router::new().route("/gtfs-rt/{feed}", get(feed)).route("/health", get(|| async { "ok" })).with_state(core)
}

/// `transit_realtime.FeedMessage`, from the contract's descriptor set.
static FEED_MESSAGE: LazyLock<Option<MessageDescriptor>> = LazyLock::new(|| {
    DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).ok()?.get_message_by_name("transit_realtime.FeedMessage")
});

async fn feed(
    State(core): State<Arc<Transport>>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (name, json) = match name.strip_suffix(".json") {
        Some(base) => (base, true),
        None => (name.strip_suffix(".pb").unwrap_or(&name), query.get("format").is_some_and(|f| f == "json")),
    };
    let Some(feed) = Feed::from_name(name) else {
        let known: Vec<&str> = Feed::ALL.iter().map(|f| f.name()).collect();
        let message = format!("no GTFS-Realtime feed {name:?}; the feeds are {}", known.join(", "));
        return (StatusCode::NOT_FOUND, message).into_response();
    };
    let bytes = core.feed(feed).encode_to_vec();
    if !json {
        return ([(header::CONTENT_TYPE, "application/x-protobuf")], bytes).into_response();
    }
    match to_json(&bytes) {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "GTFS-Realtime JSON view failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("the JSON view failed: {e}")).into_response()
        }
    }
}

/// A FeedMessage in protobuf's JSON mapping, with the specification's (snake_case) field names.
fn to_json(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let descriptor = FEED_MESSAGE.clone().ok_or("the GTFS-Realtime descriptor is missing")?;
    let message = DynamicMessage::decode(descriptor, bytes).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::pretty(&mut out);
    message
        .serialize_with_options(&mut serializer, &SerializeOptions::new().use_proto_field_name(true))
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::transit_realtime as rt;

    #[test]
    fn the_json_view_uses_the_specification_names() {
        let feed = rt::FeedMessage {
            header: rt::FeedHeader {
                gtfs_realtime_version: "2.0".into(),
                timestamp: Some(1_700_000_000),
                ..Default::default()
            },
            entity: vec![rt::FeedEntity {
                id: "V1".into(),
                vehicle: Some(rt::VehiclePosition {
                    current_stop_sequence: Some(3),
                    current_status: Some(rt::vehicle_position::VehicleStopStatus::StoppedAt as i32),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        };
        let json: serde_json::Value = serde_json::from_slice(&to_json(&feed.encode_to_vec()).unwrap()).unwrap();
        assert_eq!(json["header"]["gtfs_realtime_version"], "2.0");
        assert_eq!(json["entity"][0]["vehicle"]["current_status"], "STOPPED_AT");
        assert_eq!(json["entity"][0]["vehicle"]["current_stop_sequence"], 3);
    }
}
