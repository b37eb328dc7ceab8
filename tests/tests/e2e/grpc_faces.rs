//! The gRPC faces as an integrator meets them. Every server (the four domain services and the
//! gateway's OpsView) is tried with a client that is not ours: `tests/grpc_reflection_client.py`
//! (grpcio and grpcio-reflection from PyPI) learns the services and messages by reflection
//! `v1alpha` alone, calls methods from JSON, and checks health. Each server lists its own service
//! only, with health and reflection (the lighting port used to list every Vigie service, the
//! benchmark's echo included, and answered `v1` only). Reflection `v1` (tonic's client) lists the
//! same. And health says NOT_SERVING while a service cannot do its work: its store failed.

use anyhow::{Context, Result};
use proto::lighting::{RegisterStreetlightsRequest, Streetlight};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;
use tests::{Slice, repo_root, test_territory};
use tokio::io::AsyncWriteExt;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// What every server lists besides its own service.
const STANDARD: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Runs the reflection client against `addr`: what it listed, and each call's outcome.
async fn reflect(addr: &str, token: Option<&str>, calls: &[Value]) -> Result<Value> {
    let python = repo_root().join(".tools/venv/bin/python");
    let mut child = tokio::process::Command::new(&python)
        .arg(repo_root().join("tests/grpc_reflection_client.py"))
        .arg(addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{} is missing: run deploy/install-tools.sh --browser", python.display()))?;
    let plan = json!({ "token": token, "calls": calls });
    child.stdin.take().context("stdin")?.write_all(plan.to_string().as_bytes()).await?;
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await??;
    anyhow::ensure!(
        output.status.success(),
        "the reflection client failed on {addr} (grpcio-reflection installed by deploy/install-tools.sh --browser?): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// One request to a server's reflection `v1`, with tonic's reflection client: its answer, or the
/// status the stream ended with (tonic's server ends it with NOT_FOUND for an unknown symbol).
async fn ask_v1(addr: &str, request: MessageRequest) -> Result<Result<MessageResponse, tonic::Status>> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let answer = async {
        let mut answers = client.server_reflection_info(tokio_stream::once(request)).await?.into_inner();
        answers
            .message()
            .await?
            .and_then(|answer| answer.message_response)
            .ok_or_else(|| tonic::Status::internal("an empty answer"))
    };
    Ok(answer.await)
}

/// The services a server lists by reflection `v1`.
async fn list_v1(addr: &str) -> Result<BTreeSet<String>> {
    match ask_v1(addr, MessageRequest::ListServices(String::new())).await?? {
        MessageResponse::ListServicesResponse(list) => Ok(list.service.into_iter().map(|s| s.name).collect()),
        other => anyhow::bail!("not a list of services: {other:?}"),
    }
}

/// Whether a server's reflection `v1` gives a descriptor for `request` (false: NOT_FOUND).
async fn offers_v1(addr: &str, request: MessageRequest) -> Result<bool> {
    let not_found = tonic::Code::NotFound;
    match ask_v1(addr, request).await? {
        Ok(MessageResponse::FileDescriptorResponse(files)) => Ok(!files.file_descriptor_proto.is_empty()),
        Ok(MessageResponse::ErrorResponse(e)) if e.error_code == not_found as i32 => Ok(false),
        Err(status) if status.code() == not_found => Ok(false),
        other => anyhow::bail!("an unexpected answer: {other:?}"),
    }
}

fn call(method: &str, request: Value) -> Value {
    json!({ "method": method, "request": request })
}

fn health(service: &str) -> Value {
    call("grpc.health.v1.Health/Check", json!({ "service": service }))
}

#[tokio::test]
async fn every_grpc_server_is_usable_by_reflection_alone() -> Result<()> {
    let territory = test_territory()?;
    crate::transport::write_feed(territory.path())?;
    let water_data = repo_root().join("../shared/data/montpellier-mediterranee-metropole/water");
    let with_water = water_data.join("L-TOWN.inp").is_file();
    if with_water {
        std::os::unix::fs::symlink(&water_data, territory.path().join("water"))?;
    } else {
        eprintln!("SKIP the water service's face: {} is absent", water_data.display());
    }
    let slice = Slice::start_full(territory, &[], &["--grpc-addr", "127.0.0.1:0"]).await?;
    let ops_addr = slice.gateway.wait_for_addr("gRPC listening", 0)?;
    let transport = slice.start_transport(&[]).await?;
    let reports = slice.start_reports(&[]).await?;
    let water = if with_water { Some(slice.start_water(&[]).await?) } else { None };
    let operator = tests::login_token(&slice.gateway_addr, tests::SUPERVISOR).await?;
    let service = slice.service_token.clone();

    let lamp = json!({ "streetlights": [{ "id": "REFL-1", "lat": 43.6, "lon": 3.85, "lamp_type": "LED" }] });
    let mut faces = vec![
        (
            "vigie.lighting.v1.LightingService",
            slice.lighting_addr.clone(),
            service.clone(),
            vec![
                call("vigie.lighting.v1.LightingService/RegisterStreetlights", lamp),
                call("vigie.lighting.v1.LightingService/GetStreetlight", json!({ "id": "REFL-1" })),
                call("vigie.lighting.v1.LightingService/ListSchedules", json!({})),
            ],
        ),
        (
            "vigie.transport.v1.TransportService",
            transport.grpc_addr.clone(),
            service.clone(),
            vec![call("vigie.transport.v1.TransportService/ListVehicles", json!({}))],
        ),
        (
            "vigie.reports.v1.ReportsService",
            reports.grpc_addr.clone(),
            service.clone(),
            vec![call("vigie.reports.v1.ReportsService/ListServices", json!({ "commune": "34172" }))],
        ),
        (
            "vigie.ops.v1.OpsView",
            ops_addr,
            operator,
            vec![call("vigie.ops.v1.OpsView/ListAssets", json!({ "domain": "lighting", "limit": 10 }))],
        ),
    ];
    if let Some(water) = &water {
        faces.push((
            "vigie.water.v1.WaterService",
            water.grpc_addr.clone(),
            service.clone(),
            vec![call("vigie.water.v1.WaterService/ListDmas", json!({}))],
        ));
    }

    for (name, addr, token, mut calls) in faces {
        calls.extend([health(name), health("")]);
        let seen = reflect(&addr, Some(&token), &calls).await?;
        let expected: BTreeSet<String> = STANDARD.iter().copied().chain([name]).map(str::to_owned).collect();
        let listed: BTreeSet<String> = seen["services"]
            .as_array()
            .context("services")?
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        assert_eq!(listed, expected, "{addr} lists by reflection v1alpha");
        assert_eq!(list_v1(&addr).await?, expected, "{addr} lists by reflection v1");
        let outcomes = seen["calls"].as_array().context("calls")?;
        assert_eq!(outcomes.len(), calls.len(), "{seen}");
        for outcome in outcomes {
            assert_eq!(outcome["code"], "OK", "{name}: {outcome}");
        }
        for health in &outcomes[outcomes.len() - 2..] {
            assert_eq!(health["response"]["status"], "SERVING", "{name}: {health}");
        }
        eprintln!("[grpc faces] {name} at {addr}: {} calls by reflection alone", calls.len());
        if name == "vigie.lighting.v1.LightingService" {
            assert_eq!(outcomes[1]["response"]["streetlight"]["id"], "REFL-1", "{seen}");
            // Its own descriptors and their imports, nothing of the other services'.
            let symbol = |s: &str| MessageRequest::FileContainingSymbol(s.to_owned());
            let file = |f: &str| MessageRequest::FileByFilename(f.to_owned());
            assert!(offers_v1(&addr, symbol(name)).await?);
            assert!(offers_v1(&addr, symbol("vigie.v1.StreamSummary")).await?);
            assert!(offers_v1(&addr, file("google/protobuf/timestamp.proto")).await?);
            assert!(!offers_v1(&addr, symbol("vigie.water.v1.WaterService")).await?);
            assert!(!offers_v1(&addr, file("vigie/v1/event.proto")).await?);
            assert!(!offers_v1(&addr, symbol("vigie.bench.v1.Echo")).await?);
        }
        if name == "vigie.ops.v1.OpsView" {
            let answer: Value = serde_json::from_str(outcomes[0]["response"]["json"].as_str().context("json")?)?;
            assert!(answer["items"].is_array(), "{answer}");
        }
    }
    Ok(())
}

/// A service whose store failed refuses writes (UNAVAILABLE); its health said SERVING all the
/// same, so balancing clients kept sending it calls. It now says NOT_SERVING until it restarts
/// onto a disk with room.
#[tokio::test]
async fn a_service_whose_store_failed_says_not_serving() -> Result<()> {
    let mut slice = Slice::start_full(test_territory()?, &[], &[]).await?;
    slice.lighting.kill()?;
    let Some(disk) = tests::SmallDisk::mount_over(&slice.stores.path().join("lighting"), 32 << 20)? else {
        eprintln!(
            "SKIP a_service_whose_store_failed_says_not_serving: mounting a tmpfs is not allowed here (run as root)"
        );
        return Ok(());
    };
    let from = slice.lighting.restart()?;
    slice.lighting.wait_for_log("gRPC listening", from)?;
    slice.wait_lighting_serving().await?;
    let addr = slice.lighting_addr.clone();
    let health = [health("vigie.lighting.v1.LightingService"), health("")];
    let statuses = async |addr: &str| -> Result<Vec<String>> {
        let seen = reflect(addr, None, &health).await?;
        Ok(seen["calls"]
            .as_array()
            .context("calls")?
            .iter()
            .map(|c| c["response"]["status"].as_str().unwrap_or("none").to_owned())
            .collect())
    };
    assert_eq!(statuses(&addr).await?, ["SERVING", "SERVING"]);

    disk.fill()?;
    let mut client = slice.lighting_client().await?;
    let mut refused = None;
    for k in 0..20_000 {
        let lamp = Streetlight { id: format!("FULL{k:05}"), lat: 43.6, lon: 3.85, ..Default::default() };
        if let Err(status) =
            client.register_streetlights(RegisterStreetlightsRequest { streetlights: vec![lamp] }).await
        {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.context("the store never refused a write on a full disk")?;
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    tests::eventually("health NOT_SERVING", Duration::from_secs(5), || async {
        let now = statuses(&addr).await?;
        if now == ["NOT_SERVING", "NOT_SERVING"] { Ok(Some(())) } else { Err(anyhow::anyhow!("{now:?}")) }
    })
    .await?;
    slice.lighting.wait_for_log("health: NOT_SERVING", from)?;

    // Room again: the service exits for its supervisor (the test) to start it afresh, SERVING.
    disk.free()?;
    let exit = slice.lighting.wait_exit()?;
    assert_eq!(exit.code(), Some(runtime::store_fault::EXIT_STORE_RECOVERED), "{exit:?}");
    let from = slice.lighting.restart()?;
    slice.lighting.wait_for_log("gRPC listening", from)?;
    assert_eq!(statuses(&slice.lighting_addr).await?, ["SERVING", "SERVING"]);
    drop(disk);
    Ok(())
}
