//! The load: streetlights registered with the lighting service, then their status reports sent
//! open loop at a fixed rate over a few telemetry streams (the path integrators and the
//! simulator use). Each report's `observed_at` is the moment it was due, so a sender that falls
//! behind shows in the latencies instead of hiding them. Some lamps fail every other round (an
//! alarm raised, then cleared); the others report switched off, whatever the hour.

use anyhow::{Context, Result};
use proto::lighting::lighting_service_client::LightingServiceClient;
use proto::lighting::telemetry_message::Message as Telemetry;
use proto::lighting::{
    LampStatus, PowerState, RegisterStreetlightsRequest, StatusReport, Streetlight, TelemetryMessage,
};
use std::time::{Duration, Instant, SystemTime};
use tests::AuthChannel;

type Client = LightingServiceClient<AuthChannel>;

/// The identifier of the benchmark's lamp `i`.
pub fn lamp_id(i: usize) -> String {
    format!("BENCH{i:06}")
}

/// Registers lamps `range` (by their index) on a grid over the test territory's two communes,
/// sized for `range.end` lamps.
pub async fn register(client: &mut Client, range: std::ops::Range<usize>) -> Result<Vec<String>> {
    // An even number of columns: none falls on the border between the communes (3.9°E).
    let side = ((range.end as f64).sqrt().ceil() as usize).next_multiple_of(2);
    let lamps: Vec<Streetlight> = range
        .map(|i| Streetlight {
            id: lamp_id(i),
            lat: 43.51 + 0.18 * ((i / side) as f64 + 0.5) / side as f64,
            lon: 3.81 + 0.18 * ((i % side) as f64 + 0.5) / side as f64,
            lamp_type: "LED".into(),
            ..Default::default()
        })
        .collect();
    for batch in lamps.chunks(10_000) {
        client
            .register_streetlights(RegisterStreetlightsRequest { streetlights: batch.to_vec() })
            .await
            .context("registering the benchmark's lamps")?;
    }
    Ok(lamps.into_iter().map(|l| l.id).collect())
}

/// Open-loop pacing: `total` sends at `rate` a second from the moment it is made, each due at a
/// fixed time whatever the previous ones cost. The timer's granularity is a millisecond, so each
/// wake-up hands out every send due by then.
pub struct Pace {
    rate: f64,
    total: u64,
    start: Instant,
    next: u64,
}

impl Pace {
    pub fn new(rate: f64, duration: Duration) -> Pace {
        Pace { rate, total: (rate * duration.as_secs_f64()).round() as u64, start: Instant::now(), next: 0 }
    }

    /// When send `i` is due, from the start.
    pub fn due(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// The sends due now (after waiting for the next one); none when all were handed out.
    pub async fn next_due(&mut self) -> Option<std::ops::Range<u64>> {
        if self.next >= self.total {
            return None;
        }
        let (due, now) = (self.due(self.next), self.start.elapsed());
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        let now = self.start.elapsed();
        let first = self.next;
        while self.next < self.total && self.due(self.next) <= now {
            self.next += 1;
        }
        Some(first..self.next)
    }

    /// Sends per second achieved so far.
    pub fn achieved(&self) -> f64 {
        self.next as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

pub struct Load {
    /// Reports per second.
    pub rate: f64,
    pub duration: Duration,
    /// One lamp in `alarm_every` fails every other round (0: none).
    pub alarm_every: usize,
    /// Concurrent telemetry streams.
    pub streams: usize,
}

pub struct Sent {
    pub accepted: u64,
    pub refused: u64,
    /// The rate achieved by the sender, reports per second.
    pub achieved: f64,
}

/// How long past its planned duration a load may take to be sent and acknowledged before the
/// run fails (a system that stopped taking reports must not hang the benchmark).
const PLAY_GRACE: Duration = Duration::from_secs(90);

/// Plays `load` on the lamps; `round` continues the alternation of earlier runs (reports must be
/// newer than the lamp's last one: they are, as their time is the time they are due).
pub async fn play(channel: &AuthChannel, lamps: &[String], load: &Load, first: u64) -> Result<(Sent, u64)> {
    let within = load.duration + PLAY_GRACE;
    tokio::time::timeout(within, play_unbounded(channel, lamps, load, first)).await.map_err(|_| {
        anyhow::anyhow!("the load was not sent and acknowledged within {within:?}: the system stopped taking reports")
    })?
}

async fn play_unbounded(channel: &AuthChannel, lamps: &[String], load: &Load, first: u64) -> Result<(Sent, u64)> {
    let (mut senders, mut streams) = (Vec::new(), Vec::new());
    for _ in 0..load.streams.max(1) {
        let (sender, receiver) = tokio::sync::mpsc::channel::<TelemetryMessage>(4096);
        let mut client = Client::new(channel.clone()).max_encoding_message_size(proto::MAX_GRPC_MESSAGE_BYTES);
        streams.push(tokio::spawn(async move {
            client.stream_telemetry(tokio_stream::wrappers::ReceiverStream::new(receiver)).await
        }));
        senders.push(sender);
    }
    let wall = SystemTime::now();
    let mut pace = Pace::new(load.rate, load.duration);
    let n = lamps.len() as u64;
    while let Some(due) = pace.next_due().await {
        for i in due {
            let k = first + i;
            let lamp = (k % n) as usize;
            let round = k / n;
            let failing = load.alarm_every > 0 && lamp.is_multiple_of(load.alarm_every) && round.is_multiple_of(2);
            let observed = wall + pace.due(i);
            // Switched off (a standby draw that varies): a lamp reported lit by day is a
            // `lamp_on_in_daytime` alarm, and a run by day would then hold one alarm per lamp
            // (the figures would depend on the hour).
            let report = StatusReport {
                streetlight_id: lamps[lamp].clone(),
                observed_at: Some(observed.into()),
                status: if failing { LampStatus::DefectiveLamp } else { LampStatus::Ok } as i32,
                power_state: PowerState::Off as i32,
                illuminance_level: 0.0,
                power_consumption_w: 0.5 + (k % 7) as f64 * 0.1,
                voltage_v: None,
            };
            let message = TelemetryMessage { message: Some(Telemetry::Status(report)) };
            senders[(i % senders.len() as u64) as usize].send(message).await.context("a telemetry stream ended")?;
        }
    }
    let (achieved, total) = (pace.achieved(), pace.total());
    drop(senders);
    let (mut accepted, mut refused) = (0, 0);
    for stream in streams {
        let summary = stream.await??.into_inner();
        accepted += summary.accepted;
        refused += summary.refused;
    }
    Ok((Sent { accepted, refused, achieved }, first + total))
}
