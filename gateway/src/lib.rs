//! Vigie's gateway.
//!
//! - [`view`]: the operations view, pure (latest state per asset from events in stream order).
//! - [`store`]: the view persisted in sled with the stream sequence it is current at.
//! - [`consumer`]: the ordered JetStream consumer that feeds the view, exactly once, from the
//!   view's stored sequence.
//! - [`live`]: the view shared with sessions, and the broadcast of deltas; [`subscription`]: one
//!   live subscription, carried by the WebSocket (`http`) and the gRPC stream (`opsview`).
//! - [`opsview`]: the gRPC face (`vigie.ops.v1.OpsView`): the live stream and the queries.
//! - [`metrics`]: the gateway's Prometheus metrics (served at `/metrics` with the common ones).
//! - [`http`]: `/health`, `/ws` (live protocol v1, see `proto::live`), the console's files.
//! - [`auth`]: roles, scopes ([`auth::Scope::narrow`], the one scope filter), passwords and
//!   signed tokens; [`access`]: login, refresh, logout, the admin API and the middleware.
//! - [`basemap`]: the territory for the console (communes, offline basemap as GeoJSON).
//! - [`rest`]: the REST API under `/api/v1` (queries, audit log, alarm actions), with its OpenAPI
//!   document; [`ngsild`]: the same view as NGSI-LD entities (`/ngsi-ld/v1/`, read only);
//!   [`commands`]: operators' commands over REST, routed to the services over gRPC.

pub mod access;
pub mod auth;
pub mod basemap;
pub mod checkpoint;
pub mod commands;
pub mod consumer;
pub mod directory;
pub mod history;
pub mod http;
pub mod live;
pub mod metrics;
pub mod ngsild;
pub mod opsview;
pub mod rest;
pub mod routes;
pub mod snapshots;
pub mod store;
pub mod subscription;
pub mod targets;
pub mod throttle;
pub mod view;

use anyhow::Context;
use runtime::config::CommonConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "vigie-gateway", version, about = "Vigie gateway: operations view, live WebSocket, console")]
pub struct Config {
    /// Address of the HTTP server (console, WebSocket, health). Port 0 picks a free port (logged).
    #[arg(long, env = "VIGIE_GATEWAY_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Folder of the gateway's sled database (created if missing).
    #[arg(long, env = "VIGIE_GATEWAY_STORE", default_value = "var/gateway")]
    pub store: PathBuf,

    /// gRPC endpoint of the lighting service, for operators' commands (none: refused with 503).
    /// Comma-separated: the instances of a service run with a standby (`--standby`).
    #[arg(long, env = "VIGIE_GATEWAY_LIGHTING_URL", conflicts_with = "lighting_shards")]
    pub lighting_url: Option<String>,

    /// The lighting service's shards instead (`--shard`/`--communes` at the service), one flag
    /// each: `<communes>=<urls>`, e.g. `34172,34057=http://a:50061,http://a2:50061`. Commands go
    /// to the shards of the communes they may reach; `GET /api/v1/endpoints` tells integrators.
    /// In the environment: shards separated by `;`.
    #[arg(long = "lighting-shard", env = "VIGIE_GATEWAY_LIGHTING_SHARDS", value_delimiter = ';', value_parser = routes::parse_shard)]
    pub lighting_shards: Vec<routes::ShardRoute>,

    /// gRPC endpoint(s) of the water service, for valve commands.
    #[arg(long, env = "VIGIE_GATEWAY_WATER_URL")]
    pub water_url: Option<String>,

    /// gRPC endpoint(s) of the reports service, for report status changes.
    #[arg(long, env = "VIGIE_GATEWAY_REPORTS_URL")]
    pub reports_url: Option<String>,

    /// Address of the gRPC face for integrators (`vigie.ops.v1.OpsView`); not served when absent.
    /// Port 0 picks a free port (logged).
    #[arg(long, env = "VIGIE_GATEWAY_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,

    #[command(flatten)]
    pub grpc_tls: runtime::config::GrpcServerTls,

    /// How it reaches the domain services over TLS (https:// URLs).
    #[command(flatten)]
    pub grpc_client: runtime::config::GrpcClientTls,

    /// How often each live session gets a heartbeat; a client silent for six of them is closed.
    #[arg(long, env = "VIGIE_GATEWAY_HEARTBEAT", default_value = "5s", value_parser = runtime::config::parse_duration)]
    pub heartbeat: std::time::Duration,

    /// Territory folder (communes.geojson, streets.geojson): the console's commune selector and
    /// offline basemap. Without it the console shows the live assets on a blank background.
    #[arg(long, env = "VIGIE_TERRITORY")]
    pub territory: Option<PathBuf>,

    /// Folder of the built console (served at `/` when present).
    #[arg(long, env = "VIGIE_UI_DIR", default_value = "ui-client/dist")]
    pub ui_dir: PathBuf,

    /// The installation's signing key (Ed25519, PKCS#8 PEM), generated there at first start;
    /// its public half is written to `<path>.pub` for the services. Default: `<store>/auth-key.pem`.
    /// Replicas share one key.
    #[arg(long, env = "VIGIE_GATEWAY_AUTH_KEY")]
    pub auth_key: Option<PathBuf>,

    /// How long an access token lives (a refresh gives a new one).
    #[arg(long, env = "VIGIE_GATEWAY_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = runtime::config::parse_duration)]
    pub access_token_ttl: std::time::Duration,

    /// How long a login session lives (a shift): past it, log in again.
    #[arg(long, env = "VIGIE_GATEWAY_SESSION_TTL", default_value = "12h", value_parser = runtime::config::parse_duration)]
    pub session_ttl: std::time::Duration,

    /// Origins a browser may open the live WebSocket from (`https://ops.example.fr`,
    /// comma-separated); by default only the gateway's own.
    #[arg(long, env = "VIGIE_GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Reverse proxies in front of the gateway (IP addresses, comma-separated) whose
    /// `X-Forwarded-For` gives the client's address (login throttling); others' is ignored.
    #[arg(long, env = "VIGIE_GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// How far ahead an operator may shelve an alarm (a shelve hides it from the list and the
    /// map until then); EEMUA 191 advises a shift at most.
    #[arg(long, env = "VIGIE_GATEWAY_MAX_SHELVE", default_value = "8h", value_parser = runtime::config::parse_duration)]
    pub max_shelve: std::time::Duration,

    /// KPI targets and bands per commune (a JSON file, see `targets`): the console colours a KPI
    /// tile out of its band. Without it, built-in bands for lamps lit, punctuality and delay.
    #[arg(long, env = "VIGIE_GATEWAY_KPI_TARGETS")]
    pub kpi_targets: Option<std::path::PathBuf>,

    /// The console's alarm flood: this many alarms raised in 10 minutes in an operator's communes
    /// (EEMUA 191 counts 10 per operator), and its banner, grouped rows and one call begin.
    #[arg(long, env = "VIGIE_GATEWAY_ALARM_FLOOD", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub alarm_flood: u32,

    /// How long a closed citizen report stays in the live view (by the stream's clock); the
    /// reports service keeps it, and its Open311 API serves it.
    #[arg(long, env = "VIGIE_GATEWAY_CLOSED_REPORTS_KEPT", default_value = "24h", value_parser = runtime::config::parse_duration)]
    pub closed_reports_kept: std::time::Duration,

    /// The view's size budget (memory it may take, approximately; e.g. 512MiB): past 80 %, a
    /// system notice tells the supervisors, and `gateway_view_bytes` shows it.
    #[arg(long, env = "VIGIE_GATEWAY_VIEW_BUDGET", default_value = "512MiB", value_parser = runtime::config::parse_bytes)]
    pub view_budget: u64,

    /// A checkpoint of the view (in the object store VIGIE_VIEW, which every replica reads) is
    /// written once the view has moved this many events past the latest one, and at least every
    /// hour while it moves; a replica whose store is empty starts from it and replays only the
    /// events after it. 0: no checkpoint is written or read (a new replica replays the stream).
    #[arg(long, env = "VIGIE_GATEWAY_VIEW_CHECKPOINT_EVERY", default_value_t = 100_000)]
    pub view_checkpoint_every: u64,

    /// Snapshots one login may ask for at once (over every WebSocket and gRPC stream it opens);
    /// then one every 2 s. A resume after a disconnection is not counted.
    #[arg(long, env = "VIGIE_GATEWAY_SNAPSHOTS_PER_LOGIN", default_value_t = snapshots::BURST,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub snapshots_per_login: u32,

    /// Administration commands (add-operator, …) write to the running deployment's access
    /// directory over NATS (`--nats-url`, the gateway's NATS user), not to a stopped gateway's
    /// store: for a gateway that runs, e.g. in its pod.
    #[arg(long, global = true)]
    pub online: bool,

    #[command(flatten)]
    pub common: CommonConfig,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Administration on the gateway's store, while the gateway is stopped (sled allows one process):
/// the next start uploads it to the shared access directory. With `--online`, on the running
/// deployment's directory over NATS instead (or use the admin API `/api/v1/admin/...`).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Adds a commune to the deployment (one the territory does not have yet).
    AddCommune {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
    },
    /// Adds an operator; the password is read from standard input (one line).
    AddOperator {
        #[arg(long)]
        login: String,
        /// supervisor, operator, viewer or admin.
        #[arg(long)]
        role: String,
        /// The operator's communes (INSEE codes, comma-separated).
        #[arg(long, value_delimiter = ',')]
        communes: Vec<String>,
        /// Every commune (a supervisor always has them).
        #[arg(long)]
        all_communes: bool,
    },
    /// Lists the operators (without their password hashes).
    ListOperators,
    /// Issues an integrating system's credential (valid a year, revoked by removing the login)
    /// and prints it: the token it sends as `authorization: Bearer` metadata to the services.
    AddIntegrator {
        #[arg(long)]
        login: String,
        /// The domains it may write (lighting, transport, water, reports; comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        domains: Vec<String>,
        /// Its communes (INSEE codes, comma-separated).
        #[arg(long, value_delimiter = ',')]
        communes: Vec<String>,
        /// Every commune.
        #[arg(long)]
        all_communes: bool,
    },
}

/// The signing key's file (`--auth-key`, by default in the store).
fn key_path(config: &Config) -> std::path::PathBuf {
    config.auth_key.clone().unwrap_or_else(|| config.store.join("auth-key.pem"))
}

impl Command {
    /// The login an operator or integrator command adds.
    fn login(&self) -> Option<&str> {
        match self {
            Command::AddOperator { login, .. } | Command::AddIntegrator { login, .. } => Some(login),
            Command::AddCommune { .. } | Command::ListOperators => None,
        }
    }
}

/// What an administration command does, its input checked: the same whether it goes to a stopped
/// gateway's store or, with `--online`, to the access directory.
enum Change {
    Commune {
        id: proto::ids::CommuneId,
        name: String,
    },
    Operator(auth::OperatorRecord),
    /// An integrator, its credential, and the credential's token (printed).
    Integrator(auth::OperatorRecord, auth::SessionRecord, String),
    List,
}

impl Change {
    /// Checks the command against the deployment's communes (an operator's password is read
    /// from standard input); `keys` gives the signing key an integrator's credential is signed
    /// with.
    fn of(
        config: &Config,
        command: &Command,
        communes: &std::collections::BTreeMap<String, String>,
        keys: impl FnOnce() -> anyhow::Result<auth::Keys>,
    ) -> anyhow::Result<Change> {
        Ok(match command {
            Command::AddCommune { id, name } => {
                let id = proto::ids::CommuneId::parse(id)?;
                let name = access::commune_name(name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
                Change::Commune { id, name: name.to_owned() }
            }
            Command::AddOperator { login, role, communes: scope, all_communes } => {
                let role = auth::Role::parse(role)
                    .filter(|r| *r != auth::Role::Integrator)
                    .ok_or_else(|| anyhow::anyhow!("--role is supervisor, operator, viewer or admin"))?;
                let hash = password_from_stdin()?;
                let operator = access::new_operator(communes, login, hash, role, *all_communes, scope, &[])
                    .map_err(anyhow::Error::msg)?;
                Change::Operator(operator)
            }
            Command::AddIntegrator { login, domains, communes: scope, all_communes } => {
                let record = access::new_operator(
                    communes,
                    login,
                    String::new(),
                    auth::Role::Integrator,
                    *all_communes,
                    scope,
                    domains,
                )
                .map_err(anyhow::Error::msg)?;
                let authority = auth::Authority::new(
                    keys().context("the signing key (--auth-key)")?,
                    config.access_token_ttl,
                    config.session_ttl,
                    Default::default(),
                );
                let (session, token) = access::integrator_credential(&authority, &record);
                Change::Integrator(record, session, token)
            }
            Command::ListOperators => Change::List,
        })
    }
}

fn print_operators(operators: &[auth::OperatorRecord]) {
    for o in operators {
        let scope = if o.all_communes { "all communes".to_owned() } else { o.communes.join(",") };
        println!("{}\t{}\t{scope}", o.login, o.role.as_str());
    }
}

/// Runs an administration command on the store, or with `--online` on the access directory
/// (see [`Command`]).
pub async fn administer(config: &Config, command: &Command) -> anyhow::Result<()> {
    if config.online {
        return administer_online(config, command).await;
    }
    let store = store::Store::open(&config.store)
        .with_context(|| format!("opening the store {} (is the gateway running?)", config.store.display()))?;
    let mut communes = basemap::Basemap::load(config.territory.as_deref())?.commune_names();
    communes.extend(store.tenants()?);
    // Before the password is asked for.
    if let Some(login) = command.login()
        && store.operator(login)?.is_some()
    {
        anyhow::bail!("login {login} exists already");
    }
    match Change::of(config, command, &communes, || auth::Keys::load_or_generate(&key_path(config)))? {
        Change::Commune { id, name } => {
            directory::offline::put_commune(&store, id.as_str(), &name)?;
            println!("commune {id} added");
        }
        Change::Operator(operator) => {
            directory::offline::put_operator(&store, &operator)?;
            println!("operator {} added ({})", operator.login, operator.role.as_str());
        }
        Change::Integrator(record, session, token) => {
            directory::offline::put_operator(&store, &record)?;
            directory::offline::put_session(&store, &session)?;
            println!("{token}");
        }
        Change::List => print_operators(&store.operators()?),
    }
    Ok(())
}

/// Reads an operator's password from standard input (one line) and hashes it.
fn password_from_stdin() -> anyhow::Result<String> {
    let mut password = String::new();
    std::io::stdin().read_line(&mut password).context("reading the password from standard input")?;
    let password = password.trim_end_matches(['\n', '\r']);
    access::check_password(password).map_err(anyhow::Error::msg)?;
    auth::hash_password(password)
}

/// An administration command on the running deployment's access directory, over NATS. Its copy
/// of the directory lives in a scratch store under `--store`, removed after.
async fn administer_online(config: &Config, command: &Command) -> anyhow::Result<()> {
    use directory::PATIENCE;
    let nats = tokio::time::timeout(PATIENCE, runtime::bus::connect(&config.common, "vigie-gateway-admin"))
        .await
        .context("NATS did not answer within 10 s (--nats-url)")??;
    let scratch = config.store.join(format!("admin-{}", std::process::id()));
    let result = async {
        let store = store::Store::open(&scratch)?;
        let communes = basemap::Basemap::load(config.territory.as_deref())?.commune_names();
        let communes: access::Communes = Arc::new(std::sync::RwLock::new(communes));
        let directory = directory::Directory::new(store, None, communes.clone());
        let stop = CancellationToken::new();
        let following = tokio::spawn(directory.clone().follow(
            runtime::bus::jetstream(&nats),
            usize::from(config.common.stream.replicas),
            stop.clone(),
        ));
        let done = async {
            anyhow::ensure!(directory.caught_up(PATIENCE).await, "the access directory did not answer within 10 s");
            // The territory's communes and those the directory holds (its copy, caught up).
            let communes = communes.read().map(|c| c.clone()).unwrap_or_default();
            let exists = |login: &str| anyhow::anyhow!("login {login} exists already");
            match Change::of(config, command, &communes, || auth::Keys::load(&key_path(config)))? {
                Change::Commune { id, name } => {
                    directory.put_commune(id.as_str(), &name).await?;
                    println!("commune {id} added");
                }
                Change::Operator(operator) => {
                    if !directory.create_operator(&operator).await? {
                        return Err(exists(&operator.login));
                    }
                    println!("operator {} added ({})", operator.login, operator.role.as_str());
                }
                Change::Integrator(record, session, token) => {
                    if !directory.create_operator(&record).await? {
                        return Err(exists(&record.login));
                    }
                    directory.create_session(&session).await?;
                    println!("{token}");
                }
                Change::List => print_operators(&directory.operators()?),
            }
            Ok(())
        }
        .await;
        stop.cancel();
        let _ = following.await;
        done
    }
    .await;
    let _ = nats.flush().await;
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

pub async fn run(config: Config, listener: tokio::net::TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let basemap = basemap::Basemap::load(config.territory.as_deref()).context("reading --territory")?;

    if config.access_token_ttl < std::time::Duration::from_secs(10) || config.session_ttl < config.access_token_ttl {
        anyhow::bail!("--access-token-ttl must be at least 10s, and --session-ttl at least as long");
    }
    let store =
        store::Store::open(&config.store).with_context(|| format!("opening the store {}", config.store.display()))?;
    store.watch_faults(&config.store);
    let loaded = store.load_or_forget().context("loading the view")?;
    tracing::info!(
        assets = loaded.assets.len(),
        alarms = loaded.alarms.len(),
        applied_seq = loaded.applied_seq,
        "view restored from the store"
    );
    let view = view::OperationsView::from(loaded);
    let live = Arc::new(live::Live::new(
        view,
        live::max_lag(config.heartbeat),
        config.snapshots_per_login,
        Some(config.closed_reports_kept),
    ));
    live.set_notices(store.notices().context("reading the system notices")?.len());
    tokio::spawn(watch_view_size(live.clone(), store.clone(), config.view_budget, shutdown.clone()));

    let nats = runtime::bus::connect(&config.common, "vigie-gateway").await?;
    let consumer = consumer::Consumer {
        js: runtime::bus::jetstream(&nats),
        live: live.clone(),
        store: store.clone(),
        stream: config.common.stream.clone(),
        checkpoints: config.view_checkpoint_every > 0,
    };
    let consuming = tokio::spawn(consumer.run(shutdown.clone()));
    if config.view_checkpoint_every > 0 {
        tokio::spawn(checkpoint::keep_writing(
            runtime::bus::jetstream(&nats),
            usize::from(config.common.stream.replicas),
            live.clone(),
            store.clone(),
            config.view_checkpoint_every,
            shutdown.clone(),
        ));
    }

    let keys = auth::Keys::load_or_generate(&key_path(&config)).context("the signing key (--auth-key)")?;
    let revoked = store.sessions()?.into_iter().filter(|s| s.revoked).map(|s| s.sid).collect();
    let authority = Arc::new(auth::Authority::new(keys, config.access_token_ttl, config.session_ttl, revoked));
    let revoked_now = {
        let store = store.clone();
        move || {
            let now = auth::now_s();
            let sessions = store.sessions().unwrap_or_default();
            sessions.into_iter().filter(|s| s.revoked && s.expires_at > now).map(|s| s.sid).collect()
        }
    };
    tokio::spawn(auth::announce_revocations(
        nats.clone(),
        revoked_now,
        authority.revocations.subscribe(),
        config.common.stream.replicas,
        shutdown.clone(),
    ));
    let mut communes = basemap.commune_names();
    communes.extend(store.tenants()?);
    let communes: access::Communes = Arc::new(std::sync::RwLock::new(communes));
    let directory = directory::Directory::new(store.clone(), Some(authority.clone()), communes.clone());
    tokio::spawn(directory.clone().follow(
        runtime::bus::jetstream(&nats),
        usize::from(config.common.stream.replicas),
        shutdown.clone(),
    ));
    // Serving with a copy the other replicas have moved past would accept a session revoked
    // meanwhile: wait for it to catch up, unless the bus is away (then the copy serves at once).
    if !directory_caught_up(&directory, &nats).await {
        tracing::warn!("the access directory is not reachable: this replica's copy serves until it is");
    }
    let targets = {
        let communes = communes.read().map(|c| c.clone()).unwrap_or_default();
        targets::KpiTargets::load(config.kpi_targets.as_deref(), &communes).context("reading --kpi-targets")?
    };
    if directory.operators()?.is_empty() {
        tracing::warn!("no operator yet: add one with `vigie-gateway --store ... add-operator` (see README)");
    }
    let access = access::Access {
        authority: authority.clone(),
        directory,
        communes,
        trusted_proxies: Arc::new(config.trusted_proxies.clone()),
    };
    let api = rest::ApiState {
        live: live.clone(),
        store: store.clone(),
        js: runtime::bus::jetstream(&nats),
        max_shelve: config.max_shelve,
    };
    if config.heartbeat < std::time::Duration::from_millis(100) {
        anyhow::bail!("--heartbeat must be at least 100ms");
    }
    let feed = subscription::Feed {
        live: live.clone(),
        nats: nats.clone(),
        authority: authority.clone(),
        heartbeat: config.heartbeat,
        shutdown: shutdown.clone(),
    };
    let grpc = match config.grpc_addr {
        Some(addr) => {
            use proto::ops::ops_view_server::OpsViewServer;
            use tonic::server::NamedService;
            let listener = tokio::net::TcpListener::bind(addr).await.context("binding --grpc-addr")?;
            tracing::info!(addr = %listener.local_addr()?, "gRPC listening");
            let ops = opsview::OpsViewApi { api: api.clone(), feed: feed.clone() };
            let routes = tonic::service::Routes::new(OpsViewServer::new(ops));
            // The OpsView checks its callers' tokens itself (scope filter, invariant 20).
            let security = runtime::grpc::Security {
                auth: runtime::grpc_auth::ServiceAuth::open(),
                tls: config.grpc_tls.server_config()?,
            };
            let (stop, timeout) = (shutdown.clone(), config.common.shutdown_timeout);
            Some(tokio::spawn(async move {
                let names = [<OpsViewServer<opsview::OpsViewApi> as NamedService>::NAME];
                // Always SERVING while it runs: when its NATS link or its store fails, the
                // OpsView still serves the last view, marked stale (`upstream` in its frames).
                let ready = runtime::grpc::always_ready();
                if let Err(e) =
                    runtime::grpc::serve_until_shutdown(listener, routes, &names, ready, security, stop, timeout).await
                {
                    tracing::error!(error = format!("{e:#}"), "gRPC server failed");
                }
            }))
        }
        None => None,
    };
    let services = commands::Services::connect(
        config.lighting_url.as_deref(),
        &config.lighting_shards,
        config.water_url.as_deref(),
        config.reports_url.as_deref(),
        &config.grpc_client,
        {
            let authority = authority.clone();
            runtime::grpc_auth::BearerToken::from_fn(move || Some(authority.service_token()))
        },
    )?;
    let scraped = live.clone();
    let history = history::HistoryState::new(
        live.clone(),
        // The library's own timeout (10 s), not the 2 s of the view's requests: an asset's history
        // is a consumer from a start time, which a large stream takes longer to place.
        async_nats::jetstream::new(nats.clone()),
    );
    let state = http::AppState { feed, allowed_origins: Arc::new(config.allowed_origins.clone()) };
    let app = rest::router(api, access.clone())
        .merge(history::router(history, access.clone()))
        .merge(commands::router(services, access.clone()))
        .merge(basemap::router(
            basemap,
            basemap::ConsoleSettings { targets, alarm_flood: config.alarm_flood },
            access.clone(),
        ))
        .merge(ngsild::router(ngsild::NgsiState::new(live.clone(), access.clone())))
        .merge(access::router(access))
        .merge(runtime::metrics::router(move || {
            metrics::get().applied_seq.set(scraped.applied_seq() as i64);
        }))
        .merge(http::router(state, Some(config.ui_dir.clone())));
    tracing::info!(addr = %listener.local_addr()?, "HTTP listening");
    let timeout = config.common.shutdown_timeout;
    // The client's address reaches the handlers (logins are throttled per address).
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let serving = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let served = tokio::select! {
        result = serving => result.context("HTTP server"),
        _ = async { shutdown.cancelled().await; tokio::time::sleep(timeout).await } => Ok(()),
    };
    if let Some(grpc) = grpc {
        let _ = grpc.await;
    }
    if let Err(e) = consuming.await {
        tracing::error!(error = %e, "consumer task failed");
    }
    match tokio::time::timeout(timeout, nats.drain()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "NATS drain failed"),
        Err(_) => tracing::warn!("NATS drain timed out"),
    }
    store.flush().await.context("flushing the store")?;
    tracing::info!("stopped");
    served
}

/// How long a start waits for its copy of the access directory to catch up with the bus.
const DIRECTORY_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits for the directory's copy to catch up, at most [`DIRECTORY_CATCH_UP`], and no longer
/// than half a second once the client is seen not connected (a start while NATS is away would
/// otherwise wait the whole time for nothing).
async fn directory_caught_up(directory: &directory::Directory, nats: &async_nats::Client) -> bool {
    const STEP: std::time::Duration = std::time::Duration::from_millis(250);
    let started = tokio::time::Instant::now();
    loop {
        if directory.caught_up(STEP).await {
            return true;
        }
        let away = nats.connection_state() != async_nats::connection::State::Connected;
        if started.elapsed() >= DIRECTORY_CATCH_UP || (away && started.elapsed() >= 2 * STEP) {
            return false;
        }
    }
}

/// How often the view's size is checked against its budget.
const VIEW_SIZE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Checks the view's size against its budget: past 80 %, a system notice (once, until it has
/// gone back under 70 %).
async fn watch_view_size(live: Arc<live::Live>, store: store::Store, budget: u64, shutdown: CancellationToken) {
    let mut armed = true;
    let mut every = tokio::time::interval(VIEW_SIZE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let bytes = u64::try_from(live.read(|v| v.approximate_bytes())).unwrap_or(u64::MAX);
        metrics::get().view_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        if armed && bytes > budget / 10 * 8 {
            tracing::warn!(bytes, budget, "the view nears its size budget (--view-budget)");
            match consumer::record_notice(&store, &live, proto::live::NoticeKind::ViewNearBudget, None) {
                Ok(()) => armed = false,
                Err(e) => tracing::warn!(error = %e, "cannot record the notice of the view's size"),
            }
        } else if bytes < budget / 10 * 7 {
            armed = true;
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
