//! The field simulator: plays a territory's real data into Vigie's services over their public
//! gRPC APIs, at a configurable rate, reproducibly (seeded).
//!
//! - [`lighting`]: the real streetlight inventory and the reports of a lighting controller.
//! - [`transport`]: vehicles running the real timetable, with delays, breakdowns and bunching.
//! - [`reports`]: citizens reporting problems on the real streets, some of them twice.
//! - [`water`]: the water network's sensors replaying the hydraulic series (with the real leak
//!   schedule), quality probes, a chlorine incident, a burst, and the valve controller.
//!
//! Each part runs when the territory has its layer. Lighting follows the wall clock (the real sun);
//! transport follows a [`transport::SimClock`] that may replay the recent past faster.

mod field_controller;
pub mod lighting;
pub mod reports;
pub mod transport;
pub mod water;

use anyhow::Context;
use proto::lighting::command_action::Action;
use proto::lighting::controller_message::Message as ToService;
use proto::lighting::lighting_service_client::LightingServiceClient;
use proto::lighting::telemetry_message::Message as Telemetry;
use proto::lighting::{
    CommandResult, ControllerHello, ControllerInstruction, ControllerMessage, FaultReport, LampFailure,
    RegisterStreetlightsRequest, Streetlight, TalqFault, TelemetryMessage,
};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

use lighting::LampCondition;

type Client = LightingServiceClient<runtime::grpc_auth::AuthChannel>;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "vigie-simulator", version, about = "Plays a territory's field activity into Vigie's services")]
pub struct Config {
    /// The simulator's credential: an integrator token for every commune and the simulated
    /// domains (`vigie-gateway ... issue-credential`), sent with every call. Needed when the
    /// services check credentials (`--auth-public-key`).
    #[arg(long, env = "VIGIE_SIM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// TLS to the services (https:// URLs).
    #[command(flatten)]
    pub grpc_tls: runtime::config::GrpcClientTls,

    /// gRPC endpoint of the lighting service.
    #[arg(long, env = "VIGIE_SIM_LIGHTING_URL", default_value = "http://127.0.0.1:50061")]
    pub lighting_url: String,

    /// Territory folder (its layers decide what is simulated).
    #[arg(long, env = "VIGIE_TERRITORY")]
    pub territory: PathBuf,

    /// Streetlight status reports per second (besides those that commands and failures cause).
    #[arg(long, env = "VIGIE_SIM_LIGHTING_RATE", default_value_t = 20.0)]
    pub lighting_rate: f64,

    /// Probability that a working lamp reports a failure, per report. The default is accelerated
    /// for demonstrations (about one failure every 4 minutes at 20 reports/s); a real network sees
    /// a few per cent of its lamps fail in a year.
    #[arg(long, env = "VIGIE_SIM_LAMP_FAILURE", default_value_t = 0.0002)]
    pub lamp_failure: f64,

    /// Feeder failures (a whole group of lamps loses power) per hour, on average.
    #[arg(long, env = "VIGIE_SIM_FEEDER_FAILURES_PER_HOUR", default_value_t = 2.0)]
    pub feeder_failures_per_hour: f64,

    /// Radius of the lamps one feeder supplies, metres.
    #[arg(long, env = "VIGIE_SIM_FEEDER_RADIUS_M", default_value_t = 80.0)]
    pub feeder_radius_m: f64,

    /// Probability that a lamp does not apply a command.
    #[arg(long, env = "VIGIE_SIM_COMMAND_FAILURE", default_value_t = 0.02)]
    pub command_failure: f64,

    /// What to simulate: lighting, transport, reports and/or water (each needs its layers).
    #[arg(long, env = "VIGIE_SIM_PARTS", default_value = "lighting,transport,reports,water", value_delimiter = ',')]
    pub parts: Vec<String>,

    /// gRPC endpoint of the water service.
    #[arg(long, env = "VIGIE_SIM_WATER_URL", default_value = "http://127.0.0.1:50063")]
    pub water_url: String,

    /// Water: start this long ago, to replay the recent past (the learning of night flows needs a
    /// week); see --water-speed.
    #[arg(long, env = "VIGIE_SIM_WATER_REPLAY_FROM", value_parser = runtime::config::parse_duration, default_value = "9d")]
    pub water_replay_from: Duration,

    /// Water: simulated time runs this many times faster until it catches up with the present.
    #[arg(long, env = "VIGIE_SIM_WATER_SPEED", default_value_t = 1000.0)]
    pub water_speed: f64,

    /// Water: the series' day (YYYY-MM-DD) the replay starts on; their first day when absent.
    /// BattLeDIM's 2019-06-04 puts the p142 leak (06-12) in a 9-day replay.
    #[arg(long, env = "VIGIE_SIM_WATER_DATA_START")]
    pub water_data_start: Option<String>,

    /// Water: measurement noise, as a multiple of the default (0: the series as they are).
    #[arg(long, env = "VIGIE_SIM_WATER_NOISE", default_value_t = 1.0)]
    pub water_noise: f64,

    /// Water: simulated time after the start when the chlorine-drop incident begins (none when absent).
    #[arg(long, env = "VIGIE_SIM_WATER_CHLORINE_DROP_AFTER", value_parser = runtime::config::parse_duration)]
    pub water_chlorine_drop_after: Option<Duration>,

    /// Water: simulated time after the start when a burst begins (none when absent).
    #[arg(long, env = "VIGIE_SIM_WATER_BURST_AFTER", value_parser = runtime::config::parse_duration)]
    pub water_burst_after: Option<Duration>,

    /// Water: the pipe that bursts; the widest pipe at a pressure sensor of the largest area when absent.
    #[arg(long, env = "VIGIE_SIM_WATER_BURST_PIPE")]
    pub water_burst_pipe: Option<String>,

    /// Time zone of the territory (water series are placed on its local days).
    #[arg(long, env = "VIGIE_TIMEZONE", default_value = "Europe/Paris")]
    pub timezone: String,

    /// gRPC endpoint of the reports service.
    #[arg(long, env = "VIGIE_SIM_REPORTS_URL", default_value = "http://127.0.0.1:50064")]
    pub reports_url: String,

    /// Citizen reports per day over the territory.
    #[arg(long, env = "VIGIE_SIM_REPORTS_PER_DAY", default_value_t = 800.0)]
    pub reports_per_day: f64,

    /// Share of citizen reports that repeat a recent one.
    #[arg(long, env = "VIGIE_SIM_REPORTS_DUPLICATE_SHARE", default_value_t = 0.15)]
    pub reports_duplicate_share: f64,

    /// gRPC endpoint of the transport service.
    #[arg(long, env = "VIGIE_SIM_TRANSPORT_URL", default_value = "http://127.0.0.1:50062")]
    pub transport_url: String,

    /// Transport: start this long ago (e.g. 2h), to replay the recent past; see --speed.
    #[arg(long, env = "VIGIE_SIM_REPLAY_FROM", value_parser = runtime::config::parse_duration, default_value = "0s")]
    pub replay_from: Duration,

    /// Transport: start at the latest past moment at this local time of the feed, optionally on a
    /// weekday (e.g. "tue 08:30"), whatever the hour now; replaces --replay-from. Tests use it
    /// to see a busy network at any hour; at night, it shows the morning's traffic.
    #[arg(long, env = "VIGIE_SIM_REPLAY_AT")]
    pub replay_at: Option<transport::ReplayAt>,

    /// Transport: simulated time runs this many times faster than real time until it catches up
    /// with the present (positions are never in the future), then in real time.
    #[arg(long, env = "VIGIE_SIM_SPEED", default_value_t = 1.0)]
    pub speed: f64,

    /// Transport: simulated seconds between two position reports of a vehicle.
    #[arg(long, env = "VIGIE_SIM_REPORT_S", default_value_t = 15.0)]
    pub report_s: f64,

    /// Transport: vehicle breakdowns per simulated hour, over the whole fleet.
    #[arg(long, env = "VIGIE_SIM_BREAKDOWNS_PER_HOUR", default_value_t = 2.0)]
    pub breakdowns_per_hour: f64,

    /// Transport: simulated time between the starts of two bunching episodes (0s: none).
    #[arg(long, env = "VIGIE_SIM_BUNCHING_EVERY", value_parser = runtime::config::parse_duration, default_value = "20m")]
    pub bunching_every: Duration,

    /// Transport: share of trips that drift far late.
    #[arg(long, env = "VIGIE_SIM_LATE_TRIPS", default_value_t = 0.03)]
    pub late_trips: f64,

    /// Seed of the random generators: the same seed plays the same sequence.
    #[arg(long, env = "VIGIE_SIM_SEED", default_value_t = 1)]
    pub seed: u64,

    /// Stop after this long (e.g. 30s); runs until interrupted when absent.
    #[arg(long, env = "VIGIE_SIM_DURATION", value_parser = runtime::config::parse_duration)]
    pub duration: Option<Duration>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "VIGIE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// Registration batches (the service takes at most 10,000 per call).
const REGISTRATION_BATCH: usize = 5_000;
/// Telemetry is sent in windows of this length, one client stream each.
const WINDOW: Duration = Duration::from_millis(200);

/// The simulated field: the lamps and how each is doing, plus what must be reported soon.
struct Field {
    lights: Vec<Streetlight>,
    index: HashMap<String, usize>,
    conditions: Mutex<Vec<LampCondition>>,
    /// Lamps whose state changed (a command, a failure): reported in the next window.
    urgent: Mutex<Vec<usize>>,
    faults: Mutex<Vec<FaultReport>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    for (name, p) in [
        ("--lamp-failure", config.lamp_failure),
        ("--command-failure", config.command_failure),
        ("--late-trips", config.late_trips),
        ("--reports-duplicate-share", config.reports_duplicate_share),
    ] {
        if !(0.0..=1.0).contains(&p) {
            anyhow::bail!("{name} must be between 0 and 1");
        }
    }
    let non_negative = |x: f64| x.is_finite() && x >= 0.0;
    if !non_negative(config.lighting_rate)
        || !non_negative(config.feeder_failures_per_hour)
        || !non_negative(config.breakdowns_per_hour)
    {
        anyhow::bail!("--lighting-rate, --feeder-failures-per-hour and --breakdowns-per-hour must be numbers >= 0");
    }
    if let Some(unknown) =
        config.parts.iter().find(|p| !["lighting", "transport", "reports", "water"].contains(&p.as_str()))
    {
        anyhow::bail!("--parts: unknown part {unknown:?} (lighting, transport, reports, water)");
    }
    if !(config.water_speed.is_finite() && (1.0..=100_000.0).contains(&config.water_speed)) {
        anyhow::bail!("--water-speed must be between 1 and 100,000");
    }
    if !(config.water_noise.is_finite() && (0.0..=100.0).contains(&config.water_noise)) {
        anyhow::bail!("--water-noise must be between 0 and 100");
    }
    if !(config.reports_per_day.is_finite() && config.reports_per_day > 0.0) {
        anyhow::bail!("--reports-per-day must be more than 0");
    }
    if !(config.speed.is_finite() && (1.0..=1000.0).contains(&config.speed)) {
        anyhow::bail!("--speed must be between 1 and 1000");
    }
    if !(config.report_s.is_finite() && (1.0..=300.0).contains(&config.report_s)) {
        anyhow::bail!("--report-s must be between 1 and 300 seconds");
    }
    let shutdown = match config.duration {
        Some(d) => {
            let stop = shutdown.child_token();
            let timer = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                timer.cancel();
            });
            stop
        }
        None => shutdown,
    };
    let part = |name: &str| config.parts.iter().any(|p| p == name);
    let reports = if part("reports") {
        let settings = reports::ReportSettings {
            url: config.reports_url.clone(),
            grpc: GrpcAccess::of(&config),
            per_day: config.reports_per_day,
            duplicate_share: config.reports_duplicate_share,
            seed: config.seed,
        };
        let streets_path = config.territory.join("streets.geojson");
        let streets = if streets_path.is_file() {
            Some(territory::streets::StreetIndex::read(&streets_path).map_err(anyhow::Error::msg)?)
        } else {
            None
        };
        let inventory = config.territory.join("lighting/streetlights.geojson");
        let lamps = if inventory.is_file() {
            lighting::read_inventory(&inventory)?.iter().map(|l| (l.lat, l.lon)).collect()
        } else {
            Vec::new()
        };
        let stop = shutdown.clone();
        Some(tokio::spawn(async move { reports::run(settings, reports::Places { streets, lamps }, stop).await }))
    } else {
        None
    };
    let transport = if !part("transport") {
        None
    } else if config.territory.join("transit/gtfs.zip").is_file() {
        let settings = transport::TransportSettings {
            url: config.transport_url.clone(),
            grpc: GrpcAccess::of(&config),
            report_s: config.report_s,
            breakdowns_per_hour: config.breakdowns_per_hour,
            bunching_every: config.bunching_every,
            late_trips: config.late_trips,
            seed: config.seed,
            replay_at: config.replay_at,
        };
        let clock = transport::SimClock::new(config.replay_from, config.speed);
        let (territory, stop) = (config.territory.clone(), shutdown.clone());
        Some(tokio::spawn(async move { transport::run(settings, &territory, clock, stop).await }))
    } else {
        tracing::warn!("no transit layer in this territory: nothing to simulate for transport");
        None
    };
    let water_dir = config.territory.join("water");
    let water = if !part("water") {
        None
    } else if water_dir.join("L-TOWN.inp").is_file() && water_dir.join("scada").is_dir() {
        let time_zone = jiff::tz::TimeZone::get(&config.timezone)
            .with_context(|| format!("--timezone {:?} is not a known time zone", config.timezone))?;
        let data_start = match &config.water_data_start {
            Some(day) => {
                Some(day.parse().with_context(|| format!("--water-data-start {day:?} is not a YYYY-MM-DD date"))?)
            }
            None => None,
        };
        let settings = water::WaterSettings {
            url: config.water_url.clone(),
            grpc: GrpcAccess::of(&config),
            time_zone,
            data_start,
            noise: config.water_noise,
            chlorine_drop_after: config.water_chlorine_drop_after,
            burst_after: config.water_burst_after,
            burst_pipe: config.water_burst_pipe.clone(),
            seed: config.seed,
        };
        let clock = transport::SimClock::new(config.water_replay_from, config.water_speed);
        let stop = shutdown.clone();
        Some(tokio::spawn(async move { water::run(settings, &water_dir, clock, stop).await }))
    } else {
        tracing::warn!(
            "no water network with its series (water/L-TOWN.inp, water/scada/) in this territory: nothing to simulate for water"
        );
        None
    };
    let lighting = if part("lighting") {
        run_lighting(&config, &shutdown).await
    } else {
        shutdown.cancelled().await;
        Ok(())
    };
    if lighting.is_err() {
        shutdown.cancel();
    }
    let transport = match transport {
        Some(t) => t.await.context("the transport simulation panicked")?,
        None => Ok(()),
    };
    let reports = match reports {
        Some(r) => r.await.context("the reports simulation panicked")?,
        None => Ok(()),
    };
    let water = match water {
        Some(w) => w.await.context("the water simulation panicked")?,
        None => Ok(()),
    };
    lighting.and(transport).and(reports).and(water)
}

async fn run_lighting(config: &Config, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let shutdown = shutdown.clone();
    let config = config.clone();
    let inventory_path = config.territory.join("lighting/streetlights.geojson");
    if !inventory_path.is_file() {
        tracing::warn!(path = %inventory_path.display(), "no streetlight inventory in this territory: nothing to simulate for lighting");
        shutdown.cancelled().await;
        return Ok(());
    }
    let lights = lighting::read_inventory(&inventory_path)?;
    tracing::info!(streetlights = lights.len(), "inventory read");
    let channel = connect(&config.lighting_url, "lighting", &GrpcAccess::of(&config), &shutdown).await?;
    let mut client = LightingServiceClient::new(channel).max_encoding_message_size(proto::MAX_GRPC_MESSAGE_BYTES);
    let mut registered = 0;
    for batch in lights.chunks(REGISTRATION_BATCH) {
        let request = || {
            let mut client = client.clone();
            async move { client.register_streetlights(RegisterStreetlightsRequest { streetlights: batch.to_vec() }).await }
        };
        let reply = until_available(request).await.context("registering streetlights")?.into_inner();
        registered += reply.registered + reply.unchanged;
    }
    tracing::info!(registered, "inventory registered");

    let normal = LampCondition { faulty: false, unpowered: false, commanded_level: None };
    let field = Arc::new(Field {
        index: lights.iter().enumerate().map(|(i, l)| (l.id.clone(), i)).collect(),
        conditions: Mutex::new(vec![normal; lights.len()]),
        lights,
        urgent: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
    });
    let controller = tokio::spawn(controller(client.clone(), field.clone(), config.clone(), shutdown.clone()));
    let result = telemetry(&mut client, &field, &config, &shutdown).await;
    shutdown.cancel();
    let _ = controller.await;
    result
}

/// Plays the field's reports, lamp failures and feeder failures.
async fn telemetry(
    client: &mut Client,
    field: &Field,
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut ticker = tokio::time::interval(WINDOW);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let per_window = config.lighting_rate * WINDOW.as_secs_f64();
    let feeder_per_window = config.feeder_failures_per_hour / 3600.0 * WINDOW.as_secs_f64();
    let mut owed = 0.0;
    let mut repairs: Vec<(tokio::time::Instant, Vec<usize>)> = Vec::new();
    let (mut accepted, mut refused) = (0u64, 0u64);
    let mut last_log = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let now = SystemTime::now();
        let mut lamps: Vec<usize> = std::mem::take(&mut *lock(&field.urgent));
        let mut faults: Vec<FaultReport> = std::mem::take(&mut *lock(&field.faults));
        {
            let mut conditions = lock(&field.conditions);
            // A feeder fails: every lamp it supplies goes dark at once; it is repaired later.
            if rng.random_bool(feeder_per_window.min(1.0)) {
                let center = rng.random_range(0..field.lights.len());
                let group = lighting::feeder(&field.lights, center, config.feeder_radius_m);
                tracing::info!(lamps = group.len(), around = %field.lights[center].id, "feeder failure");
                for &i in &group {
                    conditions[i].unpowered = true;
                    faults.push(fault(&field.lights[i], TalqFault::SupplyLoss, true, now));
                }
                lamps.extend(&group);
                repairs.push((tokio::time::Instant::now() + Duration::from_secs(rng.random_range(120..600)), group));
            }
            let due = tokio::time::Instant::now();
            repairs.retain(|(at, group)| {
                if *at > due {
                    return true;
                }
                tracing::info!(lamps = group.len(), "feeder repaired");
                for &i in group {
                    conditions[i].unpowered = false;
                    faults.push(fault(&field.lights[i], TalqFault::SupplyLoss, false, now));
                }
                lamps.extend(group);
                false
            });
            // The steady trickle of reports, with lamps failing and being repaired now and then.
            owed += per_window;
            while owed >= 1.0 {
                owed -= 1.0;
                let i = rng.random_range(0..field.lights.len());
                if conditions[i].faulty {
                    conditions[i].faulty = !rng.random_bool(0.05);
                } else if rng.random_bool(config.lamp_failure) {
                    conditions[i].faulty = true;
                }
                lamps.push(i);
            }
        }
        if lamps.is_empty() && faults.is_empty() {
            continue;
        }
        let conditions = lock(&field.conditions).clone();
        let mut messages: Vec<TelemetryMessage> =
            faults.into_iter().map(|f| TelemetryMessage { message: Some(Telemetry::Fault(f)) }).collect();
        messages.extend(lamps.into_iter().map(|i| TelemetryMessage {
            message: Some(Telemetry::Status(lighting::report(&mut rng, &field.lights[i], now, conditions[i]))),
        }));
        match client.stream_telemetry(futures::stream::iter(messages)).await {
            Ok(summary) => {
                let summary = summary.into_inner();
                accepted += summary.accepted;
                refused += summary.refused;
                for error in summary.errors.iter().take(3) {
                    tracing::warn!(index = error.index, message = %error.message, "telemetry refused");
                }
            }
            Err(status) => tracing::warn!(code = ?status.code(), message = status.message(), "telemetry stream failed"),
        }
        if last_log.elapsed() > Duration::from_secs(30) {
            last_log = tokio::time::Instant::now();
            tracing::info!(accepted, refused, "lighting telemetry");
        }
    }
    tracing::info!(accepted, refused, "simulation stopped");
    Ok(())
}

fn fault(light: &Streetlight, fault: TalqFault, active: bool, at: SystemTime) -> FaultReport {
    FaultReport { streetlight_id: light.id.clone(), observed_at: Some(at.into()), fault: fault as i32, active }
}

/// The lighting controller: receives the service's instructions, applies them to the simulated
/// lamps after a realistic delay (some lamps do not answer), and reports the results.
async fn controller(client: Client, field: Arc<Field>, config: Config, shutdown: CancellationToken) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed.wrapping_add(1));
    let hello = || ControllerMessage {
        message: Some(ToService::Hello(ControllerHello { controller_id: "vigie-simulator".into() })),
    };
    let open = |outbound| {
        let mut client = client.clone();
        async move { client.controller_session(outbound).await }
    };
    // Applied at once, reported after the field's delay.
    let answer = |instruction: ControllerInstruction| {
        let delay = Duration::from_millis(rng.random_range(100..800));
        let result = apply(&field, &instruction, &mut rng, config.command_failure);
        let report: Box<dyn FnOnce() -> ControllerMessage + Send> =
            Box::new(move || ControllerMessage { message: Some(ToService::Result(result)) });
        (delay, report)
    };
    field_controller::run("controller", hello, open, answer, shutdown).await
}

fn apply(field: &Field, instruction: &ControllerInstruction, rng: &mut impl Rng, failure: f64) -> CommandResult {
    let level = match instruction.action.and_then(|a| a.action) {
        Some(Action::SwitchOn(true)) => Some(1.0),
        Some(Action::SwitchOn(false)) => Some(0.0),
        Some(Action::DimLevel(level)) => Some(level),
        None => None,
    };
    let mut result = CommandResult { command_id: instruction.command_id.clone(), ..Default::default() };
    let mut conditions = lock(&field.conditions);
    let mut urgent = lock(&field.urgent);
    for id in &instruction.streetlight_ids {
        let Some(&i) = field.index.get(id) else {
            result.failed.push(LampFailure { streetlight_id: id.clone(), reason: "unknown to this controller".into() });
            continue;
        };
        if level.is_none() || conditions[i].unpowered || rng.random_bool(failure) {
            let reason =
                if conditions[i].unpowered { "no power on the feeder" } else { "no answer from the lamp node" };
            result.failed.push(LampFailure { streetlight_id: id.clone(), reason: reason.into() });
        } else {
            conditions[i].commanded_level = level;
            urgent.push(i);
            result.applied.push(id.clone());
        }
    }
    result
}

/// Calls `call` again while the service answers UNAVAILABLE (it is starting), for up to a minute.
pub async fn until_available<T, F, R>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> R,
    R: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Err(status) if status.code() == tonic::Code::Unavailable && std::time::Instant::now() < deadline => {
                tracing::info!(reason = status.message(), "service not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            outcome => return outcome,
        }
    }
}

/// How the simulator reaches the services: TLS and its credential.
#[derive(Debug, Clone)]
pub struct GrpcAccess {
    pub tls: runtime::config::GrpcClientTls,
    pub token: Option<String>,
}

impl GrpcAccess {
    fn of(config: &Config) -> GrpcAccess {
        GrpcAccess { tls: config.grpc_tls.clone(), token: config.token.clone() }
    }
}

/// Connects to a service (`what`: its domain), retrying while it starts.
async fn connect(
    url: &str,
    what: &str,
    access: &GrpcAccess,
    shutdown: &CancellationToken,
) -> anyhow::Result<runtime::grpc_auth::AuthChannel> {
    let token = runtime::grpc_auth::BearerToken::fixed(access.token.clone());
    let mut endpoints = access.tls.endpoints(url).with_context(|| format!("--{what}-url"))?;
    if endpoints.len() > 1 {
        // The instances of a service run with a standby: calls go to the active one.
        let channel = access.tls.channel(url).with_context(|| format!("--{what}-url"))?;
        return Ok(runtime::grpc_auth::with_token(channel, token));
    }
    let endpoint = endpoints.remove(0);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(runtime::grpc_auth::with_token(channel, token)),
            Err(e) => tracing::info!(error = %e, url, "{what} service not reachable yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => anyhow::bail!("interrupted before the {what} service was reachable"),
        }
    }
}

#[cfg(test)]
mod flags {
    /// clap checks its definitions only when asked (two flags with one name panic at start).
    #[test]
    fn the_flags_are_well_formed() {
        <super::Config as clap::CommandFactory>::command().debug_assert();
    }
}
