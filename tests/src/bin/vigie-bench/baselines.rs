//! The baselines, run in the same session so that Vigie's figures are ratios:
//! - **B1**: raw async-nats JetStream, publish (acknowledged, pipelined) to consume (an ordered
//!   pull consumer): how fast the bus itself carries events of Vigie's size on this machine.
//! - **B2**: a raw axum + tokio-tungstenite broadcast of pre-serialised frames: what a WebSocket
//!   fan-out costs with no view, no filter, no coalescing.
//! - **B3**: a raw tonic streaming echo: what gRPC streams carry on this machine with nothing
//!   behind them.

use anyhow::{Context, Result};

/// B3's echo service (`tests/proto/vigie/bench/v1/echo.proto`, compiled by `tests/build.rs`).
#[allow(clippy::all)]
mod bench {
    tonic::include_proto!("vigie.bench.v1");
}
use async_nats::jetstream::{self, stream};
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use futures::StreamExt;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::broadcast;

/// B1: publishes `count` messages of `size` bytes to a stream of `replicas` copies and consumes
/// them; events per second from the first publish to the last message consumed.
pub async fn raw_jetstream(url: &str, count: usize, size: usize, replicas: usize) -> Result<f64> {
    // One URL, or a cluster's, comma-separated.
    let servers: Vec<async_nats::ServerAddr> = url.split(',').map(str::parse).collect::<Result<_, _>>()?;
    let client = async_nats::connect(servers).await?;
    let js = jetstream::new(client);
    let _ = js.delete_stream("BENCH_B1").await;
    let stream = js
        .create_stream(stream::Config {
            name: "BENCH_B1".into(),
            subjects: vec!["bench.>".into()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .context("creating the B1 consumer")?;
    let mut messages = consumer.messages().await?;
    let start = Instant::now();
    let consuming = tokio::spawn(async move {
        let mut seen = 0;
        while seen < count {
            match messages.next().await {
                Some(Ok(_)) => seen += 1,
                _ => break,
            }
        }
        seen
    });
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let mut acks = Vec::with_capacity(256);
    for i in 0..count {
        acks.push(js.publish(format!("bench.{}.status", i % 31), payload.clone()).await?);
        if acks.len() == 256 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    let seen = consuming.await?;
    anyhow::ensure!(seen == count, "B1 consumed {seen} of {count}");
    Ok(count as f64 / start.elapsed().as_secs_f64())
}

/// B2: a WebSocket server broadcasting what is sent on the returned channel.
pub async fn broadcast_server() -> Result<(String, broadcast::Sender<axum::extract::ws::Utf8Bytes>)> {
    let (sender, _) = broadcast::channel(8192);
    let app = axum::Router::new().route("/ws", axum::routing::get(upgrade)).with_state(sender.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/ws", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, sender))
}

async fn upgrade(
    ws: WebSocketUpgrade,
    State(frames): State<broadcast::Sender<axum::extract::ws::Utf8Bytes>>,
) -> axum::response::Response {
    ws.on_upgrade(move |socket| forward(socket, frames.subscribe()))
}

async fn forward(mut socket: WebSocket, mut frames: broadcast::Receiver<axum::extract::ws::Utf8Bytes>) {
    loop {
        match frames.recv().await {
            Ok(frame) => {
                if socket.send(Message::Text(frame)).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Sends `rate` frames a second for `duration`, each stamped with the moment it was due, padded
/// to the size of a real delta.
pub async fn play(frames: &broadcast::Sender<axum::extract::ws::Utf8Bytes>, rate: f64, duration: Duration) -> u64 {
    let wall = SystemTime::now();
    let mut pace = crate::load::Pace::new(rate, duration);
    let padding = "x".repeat(300);
    while let Some(due) = pace.next_due().await {
        for i in due {
            let due_at: chrono::DateTime<chrono::Utc> = (wall + pace.due(i)).into();
            let frame = format!(
                r#"{{"v":1,"type":"delta","seq":{i},"event":{{"kind":"bench","observed_at":"{}"}},"pad":"{padding}"}}"#,
                due_at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
            );
            let _ = frames.send(frame.into());
        }
    }
    pace.total()
}

/// B3's server: echoes every message of a stream.
struct Echo;

type EchoStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<bench::Blob, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl bench::echo_server::Echo for Echo {
    type EchoStream = EchoStream;

    async fn echo(
        &self,
        request: tonic::Request<tonic::Streaming<bench::Blob>>,
    ) -> Result<tonic::Response<EchoStream>, tonic::Status> {
        Ok(tonic::Response::new(Box::pin(request.into_inner())))
    }
}

/// B3: a raw tonic streaming echo, `streams` bidirectional streams at once, each sending
/// `count / streams` messages of `size` bytes as fast as the stream takes them; messages echoed
/// per second.
pub async fn raw_tonic_echo(count: usize, size: usize, streams: usize) -> Result<f64> {
    use bench::echo_client::EchoClient;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(bench::echo_server::EchoServer::new(Echo))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let per_stream = count / streams.max(1);
    let start = Instant::now();
    let mut running = Vec::new();
    for _ in 0..streams.max(1) {
        let mut client = EchoClient::new(channel.clone());
        running.push(tokio::spawn(async move {
            let blob = bench::Blob { data: vec![b'x'; size] };
            let outgoing = futures::stream::iter(std::iter::repeat_n(blob, per_stream));
            let mut echoed = client.echo(outgoing).await?.into_inner();
            let mut received = 0usize;
            while echoed.message().await?.is_some() {
                received += 1;
            }
            anyhow::Ok(received)
        }));
    }
    let mut received = 0;
    for stream in running {
        received += stream.await??;
    }
    anyhow::ensure!(received == per_stream * streams.max(1), "B3 echoed {received} messages");
    Ok(received as f64 / start.elapsed().as_secs_f64())
}
