//! Sharding by commune (issue 22): the lighting service run as two shards, each an active
//! instance (with a standby for one) serving some communes, each with its own NATS user, lease,
//! state bucket and store; the gateway routes operators' commands to the shard of their
//! communes and tells integrators which endpoint serves theirs.

use anyhow::{Context, Result};
use proto::lighting::{RegisterStreetlightsRequest, Streetlight};
use serde_json::json;
use std::time::Duration;
use tests::{NatsServer, Slice, free_port, http_get_json_as, http_post_json_as};

fn lamp(id: &str, lon: f64) -> Streetlight {
    // No commune given: the shard locates it (3.85: Ouest, 34172; 3.95: Est, 34129).
    Streetlight { id: id.into(), lat: 43.6, lon, lamp_type: "LED".into(), ..Default::default() }
}

fn shard_flags<'a>(user: &'a str, shard: &'a str, commune: &'a str, addr: &'a str) -> Vec<&'a str> {
    vec![
        "--nats-user",
        user,
        "--shard",
        shard,
        "--communes",
        commune,
        "--standby",
        "--lease-ttl",
        "4s",
        "--grpc-addr",
        addr,
        "--import-inventory",
        "false",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_serve_their_communes_and_the_gateway_routes_commands_by_commune() -> Result<()> {
    let nats = NatsServer::start_sharded(&["lighting:ouest:34172", "lighting:est:34129"])?;
    let addr = || -> Result<String> { Ok(format!("127.0.0.1:{}", free_port()?)) };
    let (ouest, ouest_b, est) = (addr()?, addr()?, addr()?);
    let routes = [format!("34172=http://{ouest},http://{ouest_b}"), format!("34129=http://{est}")];
    let slice = Slice::start_on(
        nats,
        tests::test_territory()?,
        &shard_flags("lighting-ouest", "ouest", "34172", &ouest),
        &["--lighting-shard", &routes[0], "--lighting-shard", &routes[1]],
    )
    .await?;
    let stores = slice.stores.path();
    let mut est_process = slice
        .start_lighting_instance(&stores.join("lighting-est"), &shard_flags("lighting-est", "est", "34129", &est))?;
    // Each shard holds a lease of its own: both are active at once (one lease for the domain
    // would keep the second standing by). A second instance of a shard stands by for it.
    slice.lighting.wait_for_log("is the active one", 0)?;
    est_process.wait_for_log("is the active one", 0).context("the second shard is active too")?;
    let standby = slice.start_lighting_instance(
        &stores.join("lighting-ouest-b"),
        &shard_flags("lighting-ouest", "ouest", "34172", &ouest_b),
    )?;
    standby.wait_for_log("standing by", 0)?;

    // Each shard takes its communes' writes; another commune's lamp is not found there.
    let mut at_ouest = slice.lighting_client_of(&[&ouest, &ouest_b])?;
    let mut at_est = slice.lighting_client_of(&[&est])?;
    at_ouest.register_streetlights(RegisterStreetlightsRequest { streetlights: vec![lamp("EP-O1", 3.85)] }).await?;
    let refused = at_ouest
        .register_streetlights(RegisterStreetlightsRequest { streetlights: vec![lamp("EP-E1", 3.95)] })
        .await
        .expect_err("Est's lamp at Ouest's shard");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    assert!(refused.message().contains("another shard"), "{refused:?}");
    at_est.register_streetlights(RegisterStreetlightsRequest { streetlights: vec![lamp("EP-E1", 3.95)] }).await?;
    let foreign = at_ouest.report_status(tests::lamp_report("EP-E1", 1.0)).await.expect_err("Est's lamp at Ouest");
    let unknown = at_ouest.report_status(tests::lamp_report("EP-NOPE", 1.0)).await.expect_err("an unknown lamp");
    assert_eq!(
        (foreign.code(), foreign.message().replace("EP-E1", "X")),
        (unknown.code(), unknown.message().replace("EP-NOPE", "X"))
    );
    at_est.report_status(tests::lamp_report("EP-E1", 1.0)).await.context("Est's lamp at its shard")?;

    // The gateway's view has both shards' lamps (one stream).
    let supervisor = tests::login_token(&slice.gateway_addr, tests::SUPERVISOR).await?;
    tests::eventually("both shards' lamps in the view", Duration::from_secs(10), || async {
        let (_, assets) =
            http_get_json_as(&slice.gateway_addr, "/api/v1/assets?domain=lighting", Some(&supervisor)).await?;
        let ids: Vec<String> = assets["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["id"].as_str().map(str::to_owned))
            .collect();
        Ok((ids.contains(&"EP-O1".to_owned()) && ids.contains(&"EP-E1".to_owned())).then_some(()))
    })
    .await?;

    // Commands go to the shard of their commune: a commune's, a lamp's, and one over every
    // commune (each shard takes its part).
    let command =
        |target: serde_json::Value| json!({"target": target, "action": {"switch_on": true}, "reason": "essai"});
    let post = |token: String, body: serde_json::Value| {
        let gateway = slice.gateway_addr.clone();
        async move { http_post_json_as(&gateway, "/api/v1/commands/lighting", &body, Some(&token)).await }
    };
    let communes_of = |answer: &serde_json::Value| -> Vec<String> {
        let mut communes: Vec<String> = answer["commands"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["commune"].as_str().map(str::to_owned))
            .collect();
        communes.sort();
        communes
    };
    // A commune that is not a commune id is refused as without shards (400), not "not found".
    let (status, answer) = post(supervisor.clone(), command(json!({"commune": "34.>"}))).await?;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = post(supervisor.clone(), command(json!({"commune": "34129"}))).await?;
    assert_eq!((status, communes_of(&answer)), (201, vec!["34129".to_owned()]), "{answer}");
    let (status, answer) = post(supervisor.clone(), command(json!({"streetlight_id": "EP-O1"}))).await?;
    assert_eq!((status, communes_of(&answer)), (201, vec!["34172".to_owned()]), "{answer}");
    let everywhere = json!({"polygon": [{"lat": 43.5, "lon": 3.8}, {"lat": 43.5, "lon": 4.0}, {"lat": 43.7, "lon": 4.0}, {"lat": 43.7, "lon": 3.8}, {"lat": 43.5, "lon": 3.8}]});
    let (status, answer) = post(supervisor.clone(), command(everywhere.clone())).await?;
    assert_eq!((status, communes_of(&answer)), (201, vec!["34129".to_owned(), "34172".into()]), "{answer}");
    assert!(answer.get("unreached").is_none(), "{answer}");
    // An operator of Ouest reaches Ouest's shard only: Est's lamp is not found.
    let ouest_operator = slice.add_operator("op-ouest", "operator", &["34172"]).await?;
    let (status, answer) = post(ouest_operator.clone(), command(json!({"streetlight_id": "EP-E1"}))).await?;
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = post(ouest_operator.clone(), command(everywhere)).await?;
    assert_eq!((status, communes_of(&answer)), (201, vec!["34172".to_owned()]), "{answer}");

    // Integrators (and operators) are told the endpoint of their communes.
    let (status, endpoints) = http_get_json_as(&slice.gateway_addr, "/api/v1/endpoints", Some(&ouest_operator)).await?;
    assert_eq!(status, 200, "{endpoints}");
    assert_eq!(
        endpoints["lighting"],
        json!([{"communes": ["34172"], "urls": [format!("http://{ouest}"), format!("http://{ouest_b}")]}])
    );
    let (_, endpoints) = http_get_json_as(&slice.gateway_addr, "/api/v1/endpoints", Some(&supervisor)).await?;
    assert_eq!(endpoints["lighting"].as_array().map(Vec::len), Some(2), "{endpoints}");

    // Each shard's NATS user publishes its communes' events and writes its own state only.
    use async_nats::jetstream;
    let est_js = jetstream::new(slice.nats.client_as("lighting-est").await?);
    let publish = |subject: &'static str| {
        let js = est_js.clone();
        async move {
            let ack = async { js.publish(subject, "x".into()).await?.await.map_err(anyhow::Error::from) };
            tokio::time::timeout(Duration::from_secs(3), ack).await.map_err(anyhow::Error::from).and_then(|r| r)
        }
    };
    publish("lighting.34129.streetlight_status.EP-E1").await.context("Est's shard publishes its commune's events")?;
    for subject in [
        "lighting.34172.streetlight_status.EP-O1",
        "$KV.VIGIE_STATE_LIGHTING_OUEST.streetlights.k00",
        "$KV.VIGIE_LEASES.lighting-ouest",
    ] {
        assert!(publish(subject).await.is_err(), "Est's shard published on {subject}");
    }
    // It reads back its own commune's events only (its outbox's reader, one filter per commune).
    let events = est_js.get_stream(proto::subject::EVENTS_STREAM).await?;
    let reader = |filter: &str| jetstream::consumer::pull::Config {
        name: Some("outbox-lighting-est".into()),
        filter_subject: filter.into(),
        headers_only: true,
        ..Default::default()
    };
    let own = events.create_consumer(reader("lighting.34129.>")).await.context("its commune's read-back")?;
    drop(own);
    for filter in ["lighting.34172.>", "lighting.>"] {
        let read = tokio::time::timeout(Duration::from_secs(10), events.create_consumer(reader(filter))).await;
        assert!(!matches!(read, Ok(Ok(_))), "Est's shard read {filter}");
    }
    // Its state bucket holds its lamps; Ouest's is not its to read.
    let mut own = est_js.get_stream("KV_VIGIE_STATE_LIGHTING_EST").await?;
    assert!(own.info().await?.state.messages > 0, "Est's state bucket holds Est's state");
    let other = tokio::time::timeout(Duration::from_secs(10), est_js.get_stream("KV_VIGIE_STATE_LIGHTING_OUEST")).await;
    assert!(!matches!(other, Ok(Ok(_))), "Est's shard read Ouest's state bucket");

    // A shard's store holds its communes' lamps: started with other communes, it refuses to act
    // on lamps it no longer serves, and says which.
    est_process.kill()?;
    let mut moved = slice.start_lighting_instance(
        &stores.join("lighting-est"),
        &shard_flags("lighting-est", "est", "34172", &addr()?),
    )?;
    moved.wait_for_log("does not serve (34129)", 0)?;
    assert!(!moved.wait_exit()?.success(), "a shard with another commune's lamps stops");
    Ok(())
}
