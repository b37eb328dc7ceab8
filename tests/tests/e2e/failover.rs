//! A domain service that survives its machine (issue 22): an active instance and a standby of
//! the lighting service on a 3-node NATS cluster, a lease deciding which one is active
//! (services/runtime/src/replica.rs, lease.rs).

use anyhow::{Context, Result};
use proto::lighting::{GetStreetlightRequest, RegisterStreetlightsRequest, Streetlight};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tests::{NatsServer, Slice, free_port, http_post_json_as, login, read_events_stream};

/// The lease's time to live in these tests (10 s in a deployment): a standby takes over this
/// long after the active instance's last renewal.
const TTL: &str = "4s";

fn lamp(id: &str) -> Streetlight {
    Streetlight {
        id: id.into(),
        commune: "34172".into(),
        lat: 43.6,
        lon: 3.85,
        lamp_type: "LANTERNE".into(),
        street: String::new(),
    }
}

/// A lighting service on a 3-node cluster with a standby: the slice (its lighting service the
/// active instance, on `a`), the standby (on `b`, standing by, connected to another node than
/// the active one's), both addresses, and the active instance's node.
async fn active_and_standby(
    cluster: NatsServer,
    extra: &[&str],
) -> Result<(Slice, tests::Process, String, String, usize)> {
    let (a, b) = (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
    let urls = format!("http://{a},http://{b}");
    let flags = |addr: &str| -> Vec<String> {
        let mut flags: Vec<String> =
            ["--stream-replicas", "3", "--standby", "--lease-ttl", TTL, "--grpc-addr", addr].map(String::from).to_vec();
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    };
    let flags_a = flags(&a);
    let flags_a: Vec<&str> = flags_a.iter().map(String::as_str).collect();
    let slice = Slice::start_on(
        cluster,
        tests::test_territory()?,
        &flags_a,
        &["--stream-replicas", "3", "--lighting-url", &urls],
    )
    .await?;
    slice.lighting.wait_for_log("is the active one", 0)?;
    let node = tests::eventually("the active instance's NATS node", Duration::from_secs(10), || {
        slice.nats.node_of("vigie-lighting")
    })
    .await?;
    let mut flags_b = flags(&b);
    flags_b.extend(["--nats-url".to_owned(), slice.nats.node_url((node + 1) % 3)]);
    let flags_b: Vec<&str> = flags_b.iter().map(String::as_str).collect();
    let standby = slice.start_lighting_instance(&slice.stores.path().join("lighting-b"), &flags_b)?;
    standby.wait_for_log("standing by", 0)?;
    Ok((slice, standby, a, b, node))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_active_instance_and_nothing_acknowledged_is_lost() -> Result<()> {
    let _alone = tests::HEAVY.lock().await;
    let (mut slice, standby, a, b, _) = active_and_standby(NatsServer::start_cluster(3)?, &[]).await?;
    // Callers know both instances (as the gateway does): calls go to whichever listens.
    let mut client = slice.lighting_client_of(&[&a, &b])?;
    client
        .register_streetlights(RegisterStreetlightsRequest { streetlights: vec![lamp("EP00001"), lamp("EP00002")] })
        .await?;

    // A writer, sequential, 100 writes a second, for the whole test.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (mut client, writing) = (client.clone(), writing.clone());
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), 0usize);
            let mut pace = tokio::time::interval(Duration::from_millis(10));
            for i in 0u32.. {
                pace.tick().await;
                if !writing.load(Ordering::Relaxed) {
                    break;
                }
                let call = client.report_status(tests::lamp_report("EP00001", f64::from(i % 10) / 10.0));
                match tokio::time::timeout(Duration::from_secs(30), call).await {
                    Ok(Ok(reply)) => acked.push((Instant::now(), reply.into_inner().event_id)),
                    _ => failed += 1,
                }
            }
            (acked, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await; // writes flow before the loss, not a readiness wait
    // The last write the active instance acknowledges on the second lamp: the standby must know it.
    let last_before = client.report_status(tests::lamp_report("EP00002", 0.37)).await?.into_inner().event_id;
    let killed = Instant::now();
    slice.lighting.kill()?;
    standby.wait_for_log("gRPC listening", 0)?;
    let takeover = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    writing.store(false, Ordering::Relaxed);
    let (acked, failed) = writer.await?;
    let after = acked.iter().filter(|(at, _)| *at > killed + takeover).count();
    assert!(after > 10, "writes acknowledged by the new active instance: {after}");

    // Every acknowledged write is in the stream, once.
    let mut ids: Vec<String> = acked.into_iter().map(|(_, id)| id).collect();
    ids.push(last_before);
    let content = read_events_stream(&slice.nats).await?;
    crate::cluster::assert_each_stored_once(&content, &ids);

    // The new active instance's state is the old one's: the lamps registered there, and the
    // last report it acknowledged.
    let second = client.get_streetlight(GetStreetlightRequest { id: "EP00002".into() }).await?.into_inner();
    let level = second.last_report.map(|r| r.illuminance_level);
    assert_eq!(level, Some(0.37), "the last acknowledged report, as the new active instance knows it");

    // The gateway's commands reach the new active instance.
    let token = login(&slice.gateway_addr, tests::SUPERVISOR).await?;
    let command =
        serde_json::json!({"target": {"streetlight_id": "EP00001"}, "action": {"dim_level": 0.5}, "reason": "essai"});
    let (status, answer) =
        http_post_json_as(&slice.gateway_addr, "/api/v1/commands/lighting", &command, Some(&token)).await?;
    assert_eq!(status, 201, "a command through the gateway after the takeover: {answer}");

    // The old active instance, started again, stands by.
    let from = slice.lighting.restart()?;
    slice.lighting.wait_for_log("standing by", from).context("the old active instance stands by")?;
    eprintln!(
        "[failover] the standby took over {takeover:?} after the active instance was killed (lease {TTL}); {} writes acknowledged, {failed} refused or timed out meanwhile, none lost or doubled",
        ids.len()
    );
    Ok(())
}

/// Fencing: an active instance cut off from the cluster's majority (its NATS node isolated by a
/// network partition, its process still running) keeps writing into its outbox what it cannot
/// publish; the standby takes over on the majority. When the partition heals, the old instance
/// must publish none of it: it stopped acting once its lease could have lapsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_instance_cut_off_from_the_majority_publishes_nothing_once_the_standby_took_over() -> Result<()> {
    let _alone = tests::HEAVY.lock().await;
    // KPIs every second: the cut-off instance has something to publish all along.
    let cluster = NatsServer::start_cluster_partitionable(3)?;
    let (mut slice, standby, _, b, node) = active_and_standby(cluster, &["--kpi-interval", "1s"]).await?;
    let publisher_of = |process: &tests::Process| -> Result<String> {
        let (_, line) = process.wait_for_log("publisher=", 0)?;
        line.split("publisher=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .context("publisher")
    };
    let old = publisher_of(&slice.lighting)?;
    slice.nats.isolate_node(node);
    standby.wait_for_log("gRPC listening", 0)?;
    let mut client = slice.lighting_client_of(&[&b])?;
    client.register_streetlights(RegisterStreetlightsRequest { streetlights: vec![lamp("EP00003")] }).await?;
    let new = publisher_of(&standby)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    slice.nats.heal_node(node);
    // It stopped by itself, saying why.
    let status = tokio::task::block_in_place(|| slice.lighting.wait_exit())?;
    assert!(!status.success(), "the fenced instance exits with a failure (its supervisor starts it as a standby)");
    slice.lighting.wait_for_log("lost its lease", 0)?;
    // Nothing of the old instance's is stored after the new one began (its KPIs of the
    // partition included), once the healed node had time to take what it would have sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // (Read until it holds the new instance's events: a node just healed may answer first.)
    let publishers = tests::eventually("the events stream", Duration::from_secs(30), || async {
        Ok(publishers_in_stream(&slice.nats).await.ok().filter(|p| p.iter().any(|(_, by)| *by == new)))
    })
    .await?;
    let first_of_new = publishers.iter().find(|(_, by)| *by == new).map(|(seq, _)| *seq).with_context(|| {
        let distinct: std::collections::BTreeSet<&String> = publishers.iter().map(|(_, by)| by).collect();
        format!("no event of the new active instance {new:?} in the stream; publishers: {distinct:?}")
    })?;
    let late: Vec<u64> =
        publishers.iter().filter(|(seq, by)| *by == old && *seq > first_of_new).map(|(seq, _)| *seq).collect();
    assert!(late.is_empty(), "the old active instance published after the takeover: sequences {late:?}");
    Ok(())
}

/// Each event's sequence in the stream and the outbox that published it.
async fn publishers_in_stream(nats: &NatsServer) -> Result<Vec<(u64, String)>> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    use futures::StreamExt;
    let js = async_nats::jetstream::new(nats.client_as("gateway").await?);
    let mut stream = js.get_stream(proto::subject::EVENTS_STREAM).await?;
    let last = stream.info().await?.state.last_sequence;
    let consumer =
        stream.create_consumer(OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() }).await?;
    let mut messages = consumer.messages().await?;
    let (mut found, mut seen) = (Vec::new(), 0);
    while seen < last {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next()).await?.context("ended")??;
        seen = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
        let by = message.headers.as_ref().and_then(|h| h.get(runtime::outbox::PUBLISHER_HEADER)).map(|v| v.to_string());
        found.push((seen, by.unwrap_or_default()));
    }
    Ok(found)
}

/// The second fence, which does not depend on clocks: once an instance has taken the state bucket
/// over, the bucket refuses a batch of the instance before it, even one that believes it still
/// holds its lease (its clock stood still, a host suspended).
#[tokio::test]
async fn the_state_bucket_refuses_a_batch_of_an_instance_another_one_took_over_from() -> Result<()> {
    use proto::v1::Domain;
    use runtime::replica::{Publisher, ensure_state_bucket, publish_changes, take_over};
    use runtime::store::{Change, StoreError};
    use std::sync::atomic::AtomicU64;
    let nats = NatsServer::start()?;
    let client = nats.client_as("lighting").await?;
    let js = async_nats::jetstream::new(client.clone());
    let lighting = proto::subject::Unit::whole(Domain::Lighting);
    ensure_state_bucket(&js, &lighting, 1).await?;
    let change = |value: &str| Change { tree: "lamp_states".into(), key: b"EP1".to_vec(), value: Some(value.into()) };
    let (fence_a, fence_b) = (
        runtime::lease::Fence::holding_for(Duration::from_secs(60)),
        runtime::lease::Fence::holding_for(Duration::from_secs(60)),
    );
    let (tail_a, tail_b) = (AtomicU64::new(0), AtomicU64::new(0));
    let a = Publisher { client: &client, js: &js, unit: &lighting, instance: "a", tail: &tail_a, fence: &fence_a };
    let b = Publisher { client: &client, js: &js, unit: &lighting, instance: "b", tail: &tail_b, fence: &fence_b };
    let first = [change("a1")];
    let seq = publish_changes(&a, &[&first]).await.map_err(|p| p.error)?;
    // B takes over at the bucket's end.
    tail_b.store(seq, std::sync::atomic::Ordering::Release);
    take_over(&b).await?;
    // A, whose fence still holds by its clock, writes again: refused, and A knows it lost.
    let second = [change("a2")];
    let refused = publish_changes(&a, &[&second]).await;
    let error = refused.err().context("the bucket took a batch of the instance taken over from")?.error;
    assert!(matches!(error.downcast_ref(), Some(StoreError::Fenced)), "refused as fenced: {error:#}");
    assert!(!fence_a.holds(), "the old instance knows it lost its lease");
    // The record is still A's first value, and B goes on writing.
    let stream = js.get_stream("KV_VIGIE_STATE_LIGHTING").await?;
    let subject = "$KV.VIGIE_STATE_LIGHTING.lamp_states.k455031";
    assert_eq!(stream.get_last_raw_message_by_subject(subject).await?.payload.as_ref(), b"a1");
    let third = [change("b1")];
    publish_changes(&b, &[&third]).await.map_err(|p| p.error)?;
    assert_eq!(stream.get_last_raw_message_by_subject(subject).await?.payload.as_ref(), b"b1");
    Ok(())
}
