//! A running slice of Vigie: NATS, the lighting service and the gateway (and the other
//! services on demand), with operators, tokens and gRPC clients.

use super::*;

/// The login of the supervisor every slice's gateway has (the harness's session), and of its
/// administrator.
pub const SUPERVISOR: &str = "supervisor";
pub const ADMIN: &str = "admin";

/// The lighting service and the gateway around one NATS server, each with its own store.
pub struct Slice {
    pub nats: NatsServer,
    pub lighting: Process,
    pub lighting_addr: String,
    pub gateway: Process,
    pub gateway_addr: String,
    pub territory: tempfile::TempDir,
    pub stores: tempfile::TempDir,
    /// A token acting as the gateway does towards the services (every call is allowed).
    pub service_token: String,
    /// An integrator's credential for every commune and domain (the simulator's).
    pub integrator_token: String,
    /// The links the lighting service and the gateway reach NATS through, when the slice was
    /// started with links ([`Slice::start_linked`]): a test cuts or stalls them.
    pub lighting_link: Option<Link>,
    pub gateway_link: Option<Link>,
}

impl Slice {
    pub async fn start() -> Result<Slice> {
        Slice::start_in(test_territory()?).await
    }

    /// Starts the slice on a territory of the test's own.
    pub async fn start_in(territory: tempfile::TempDir) -> Result<Slice> {
        Slice::start_with(territory, &[]).await
    }

    /// Starts the slice with extra flags for the lighting service.
    pub async fn start_with(territory: tempfile::TempDir, lighting_flags: &[&str]) -> Result<Slice> {
        Slice::start_full(territory, lighting_flags, &[]).await
    }

    /// Starts the slice with extra flags for the lighting service and for the gateway.
    pub async fn start_full(
        territory: tempfile::TempDir,
        lighting_flags: &[&str],
        gateway_flags: &[&str],
    ) -> Result<Slice> {
        Slice::start_on(NatsServer::start()?, territory, lighting_flags, gateway_flags).await
    }

    /// Starts the slice on a NATS server of the test's own (e.g. [`NatsServer::start_with`]).
    pub async fn start_on(
        nats: NatsServer,
        territory: tempfile::TempDir,
        lighting_flags: &[&str],
        gateway_flags: &[&str],
    ) -> Result<Slice> {
        Slice::start_inner(nats, territory, lighting_flags, gateway_flags, false).await
    }

    /// Starts the slice with the lighting service and the gateway each reaching NATS through a
    /// [`Link`] of its own (`slice.lighting_link`, `slice.gateway_link`).
    pub async fn start_linked(
        nats: NatsServer,
        territory: tempfile::TempDir,
        lighting_flags: &[&str],
        gateway_flags: &[&str],
    ) -> Result<Slice> {
        Slice::start_inner(nats, territory, lighting_flags, gateway_flags, true).await
    }

    async fn start_inner(
        nats: NatsServer,
        territory: tempfile::TempDir,
        lighting_flags: &[&str],
        gateway_flags: &[&str],
        linked: bool,
    ) -> Result<Slice> {
        let stores = tempfile::tempdir()?;
        // On a cluster, the links go to its first node: the processes learn the others from it.
        let target = nats.node_url(0).trim_start_matches("nats://").to_owned();
        let lighting_link = linked.then(|| Link::to(&target)).transpose()?;
        let gateway_link = linked.then(|| Link::to(&target)).transpose()?;
        let common = |store: &str| {
            // The store's name is the process's NATS user (lighting, gateway).
            let mut args = nats.credentials(store);
            let link = if store == "gateway" { &gateway_link } else { &lighting_link };
            if let Some(link) = link {
                args[1] = link.url();
            }
            args.extend([
                "--store".to_owned(),
                stores.path().join(store).display().to_string(),
                "--shutdown-timeout".to_owned(),
                "10s".to_owned(),
            ]);
            args
        };
        // The installation key, as the gateway's first start would create it: every service
        // checks its callers' tokens with its public half.
        let key = stores.path().join("gateway").join("auth-key.pem");
        let service_token = mint_token(&key, runtime::auth::TokenType::Service)?;
        let integrator_token = mint_token(&key, runtime::auth::TokenType::Integrator)?;
        let (credentials, lighting_flags) = lighting_credentials(&nats, lighting_flags);
        let mut args = common("lighting");
        // As the lighting user, or the one the flags name (a shard's); through its link, if any.
        args[3] = credentials[3].clone();
        args[5] = credentials[5].clone();
        if lighting_link.is_none() {
            args[1] = credentials[1].clone();
        }
        args.extend(["--auth-public-key".into(), gateway::auth::public_key_path(&key).display().to_string()]);
        // On the port it takes at first, for good (pinned below): the gateway's commands find it
        // there after a restart.
        if !lighting_flags.contains(&"--grpc-addr") {
            args.extend(["--grpc-addr".into(), "127.0.0.1:0".into()]);
        }
        args.extend(["--territory".into(), territory.path().display().to_string()]);
        args.extend(lighting_flags.iter().map(|s| s.to_string()));
        let mut lighting = Process::start("vigie-lighting", &args)?;
        let lighting_addr = lighting.wait_for_addr("gRPC listening", 0)?;
        lighting.pin_arg("--grpc-addr", &lighting_addr);
        let mut args = common("gateway");
        let ui = repo_root().join("ui-client/dist").display().to_string();
        // On the port it takes at first, for good (pinned below): a browser reconnects there.
        if !gateway_flags.contains(&"--http-addr") {
            args.extend(["--http-addr".into(), "127.0.0.1:0".into()]);
        }
        args.extend(["--ui-dir".into(), ui]);
        // The communes its operators may be given, and the console's basemap.
        if !gateway_flags.contains(&"--territory") {
            args.extend(["--territory".into(), territory.path().display().to_string()]);
        }
        // Operators' lighting commands go through the gateway to this slice's lighting service.
        if !gateway_flags.contains(&"--lighting-url") && !gateway_flags.contains(&"--lighting-shard") {
            args.extend(["--lighting-url".into(), format!("http://{lighting_addr}")]);
        }
        args.extend(gateway_flags.iter().map(|s| s.to_string()));
        // The slice's operator: the metropolitan supervisor, logged in once the gateway is up.
        add_operator(&stores.path().join("gateway"), territory.path(), SUPERVISOR, "supervisor", &[])?;
        add_operator(&stores.path().join("gateway"), territory.path(), ADMIN, "admin", &[])?;
        let mut gateway = Process::start("vigie-gateway", &args)?;
        let gateway_addr = gateway.wait_for_addr("HTTP listening", 0)?;
        gateway.pin_arg("--http-addr", &gateway_addr);
        login(&gateway_addr, SUPERVISOR).await?;
        let slice = Slice {
            nats,
            lighting,
            lighting_addr,
            gateway,
            gateway_addr,
            territory,
            stores,
            service_token,
            integrator_token,
            lighting_link,
            gateway_link,
        };
        slice.wait_lighting_serving().await?;
        slice.wait_gateway_consuming()?;
        Ok(slice)
    }

    /// Waits until the lighting service answers SERVING on the standard health service.
    pub async fn wait_lighting_serving(&self) -> Result<()> {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        eventually("the lighting service SERVING", WAIT, || async {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.lighting_addr))?.connect().await?;
            let request = HealthCheckRequest { service: "vigie.lighting.v1.LightingService".into() };
            let status = HealthClient::new(channel).check(request).await?.into_inner().status;
            Ok((status == 1).then_some(()))
        })
        .await
    }

    /// Starts the gateway again (it must have been killed or terminated): waits for its new
    /// address and its consumer, and logs the supervisor in there. Returns where its log resumed.
    pub async fn restart_gateway(&mut self) -> Result<usize> {
        let from = self.gateway.restart()?;
        self.gateway_addr = self.gateway.wait_for_addr("HTTP listening", from)?;
        self.gateway.wait_for_log("consuming events", from)?;
        login(&self.gateway_addr, SUPERVISOR).await?;
        Ok(from)
    }

    /// Waits until the gateway has a JetStream consumer (it logs "consuming events").
    pub fn wait_gateway_consuming(&self) -> Result<()> {
        self.gateway.wait_for_log("consuming events", 0)?;
        Ok(())
    }

    /// Starts the simulator against this slice's lighting service and territory: lighting only,
    /// unless `extra` names the parts (never the default addresses of a running quick start).
    pub fn start_simulator(&self, extra: &[&str]) -> Result<Process> {
        let mut args = vec![
            "--lighting-url".to_owned(),
            format!("http://{}", self.lighting_addr),
            "--territory".to_owned(),
            self.territory.path().display().to_string(),
        ];
        if !extra.contains(&"--token") {
            args.extend(["--token".to_owned(), self.integrator_token.clone()]);
        }
        if !extra.contains(&"--parts") {
            args.extend(["--parts".to_owned(), "lighting".to_owned()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Process::start("vigie-simulator", &args)
    }

    /// The slice gateway's signing key: replicas started with `--auth-key` it accept its tokens.
    pub fn auth_key(&self) -> PathBuf {
        self.stores.path().join("gateway").join("auth-key.pem")
    }

    /// Starts another replica of the gateway on the slice's stream: its own store (`store`), the
    /// installation's key (a token of one replica is good at the other), the same territory and
    /// lighting service. Returns it with its HTTP address, once it consumes.
    pub fn start_gateway_replica(&self, store: &Path, extra: &[&str]) -> Result<(Process, String)> {
        let mut args = self.nats.credentials("gateway");
        args.extend(
            [
                "--store",
                &store.display().to_string(),
                "--http-addr",
                "127.0.0.1:0",
                "--ui-dir",
                &repo_root().join("ui-client/dist").display().to_string(),
                "--auth-key",
                &self.auth_key().display().to_string(),
                "--territory",
                &self.territory.path().display().to_string(),
                "--lighting-url",
                &format!("http://{}", self.lighting_addr),
                "--shutdown-timeout",
                "10s",
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut replica = Process::start("vigie-gateway", &args)?;
        let addr = replica.wait_for_addr("HTTP listening", 0)?;
        replica.pin_arg("--http-addr", &addr);
        replica.wait_for_log("consuming events", 0)?;
        Ok((replica, addr))
    }

    /// Adds an operator through the admin API (`communes` empty: every commune) and logs them in;
    /// returns their access token.
    pub async fn add_operator(&self, login: &str, role: &str, communes: &[&str]) -> Result<String> {
        let admin = login_token(&self.gateway_addr, ADMIN).await?;
        let body = serde_json::json!({"login": login, "password": TEST_PASSWORD, "role": role,
            "communes": communes, "all_communes": communes.is_empty()});
        let (status, answer) =
            http_post_json_as(&self.gateway_addr, "/api/v1/admin/operators", &body, Some(&admin)).await?;
        if status != 201 {
            bail!("adding operator {login}: {status} {answer}");
        }
        login_token(&self.gateway_addr, login).await
    }

    /// Starts another instance of the lighting service on the slice's NATS and territory, with
    /// its own store (e.g. a standby: `--standby`); it logs "gRPC listening" once active.
    pub fn start_lighting_instance(&self, store: &Path, extra: &[&str]) -> Result<Process> {
        let (mut args, extra) = lighting_credentials(&self.nats, extra);
        args.extend([
            "--store".to_owned(),
            store.display().to_string(),
            "--shutdown-timeout".to_owned(),
            "10s".to_owned(),
        ]);
        args.extend([
            "--auth-public-key".into(),
            gateway::auth::public_key_path(&self.auth_key()).display().to_string(),
        ]);
        args.extend(["--territory".into(), self.territory.path().display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Process::start("vigie-lighting", &args)
    }

    /// A client of the lighting service that calls whichever of `addrs` answers (the instances
    /// of a service run with a standby), as the gateway does.
    pub fn lighting_client_of(&self, addrs: &[&str]) -> Result<LightingClient> {
        let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
        let channel = runtime::config::GrpcClientTls::default().channel(&urls.join(","))?;
        let token = runtime::grpc_auth::BearerToken::fixed(Some(self.service_token.clone()));
        Ok(LightingClient::new(runtime::grpc_auth::with_token(channel, token)))
    }

    pub async fn lighting_client(&self) -> Result<LightingClient> {
        Ok(LightingClient::new(channel_with_token(&self.lighting_addr, Some(&self.service_token)).await?))
    }

    /// A live client that receives every update (not coalesced): tests count events. Its
    /// snapshot has come (and is its first message), so every later event arrives as a delta.
    pub async fn live_client(&self) -> Result<LiveClient> {
        LiveClient::subscribed(&format!("ws://{}/ws?coalesce=false", self.gateway_addr)).await
    }
}

/// A running domain service with a gRPC and an HTTP face (transport: GTFS-Realtime; reports:
/// Open311): the process and its addresses.
pub struct ServiceProcess {
    pub process: Process,
    pub grpc_addr: String,
    /// Empty for a service without an HTTP face (water).
    pub http_addr: String,
    has_http: bool,
    /// What its clients send (see `Slice::service_token`).
    pub token: String,
}

pub type ReportsClient = proto::reports::reports_service_client::ReportsServiceClient<AuthChannel>;
pub type WaterClient = proto::water::water_service_client::WaterServiceClient<AuthChannel>;

impl ServiceProcess {
    /// Waits for the addresses logged after line `from` (0 at start; after a restart, what
    /// `restart` returned).
    pub fn read_addresses(&mut self, from: usize) -> Result<()> {
        self.grpc_addr = self.process.wait_for_addr("gRPC listening", from)?;
        if self.has_http {
            self.http_addr = self.process.wait_for_addr("HTTP listening", from)?;
        }
        Ok(())
    }

    pub async fn water_client(&self) -> Result<WaterClient> {
        Ok(WaterClient::new(channel_with_token(&self.grpc_addr, Some(&self.token)).await?))
    }

    pub async fn transport_client(&self) -> Result<TransportClient> {
        Ok(TransportClient::new(channel_with_token(&self.grpc_addr, Some(&self.token)).await?))
    }

    pub async fn reports_client(&self) -> Result<ReportsClient> {
        Ok(ReportsClient::new(channel_with_token(&self.grpc_addr, Some(&self.token)).await?))
    }
}

impl Slice {
    /// Starts a domain service binary on this slice's NATS and territory, with its own store,
    /// free ports, and extra flags.
    fn start_service(&self, binary: &str, store: &str, extra: &[&str]) -> Result<ServiceProcess> {
        let mut args = self.nats.credentials(store);
        args.extend([
            "--store".to_owned(),
            self.stores.path().join(store).display().to_string(),
            "--territory".to_owned(),
            self.territory.path().display().to_string(),
            "--auth-public-key".to_owned(),
            gateway::auth::public_key_path(&self.auth_key()).display().to_string(),
        ]);
        // A free port unless the test gives one (the gateway's URL for it is set beforehand).
        if !extra.contains(&"--grpc-addr") {
            args.extend(["--grpc-addr".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        // The water service has no HTTP face (its field data come over gRPC).
        if binary != "vigie-water" {
            args.extend(["--http-addr".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = Process::start(binary, &args)?;
        let has_http = binary != "vigie-water";
        let mut service = ServiceProcess {
            process,
            grpc_addr: String::new(),
            http_addr: String::new(),
            has_http,
            token: self.service_token.clone(),
        };
        service.read_addresses(0)?;
        Ok(service)
    }

    pub async fn start_transport(&self, extra: &[&str]) -> Result<ServiceProcess> {
        self.start_service("vigie-transport", "transport", extra)
    }

    pub async fn start_reports(&self, extra: &[&str]) -> Result<ServiceProcess> {
        self.start_service("vigie-reports", "reports", extra)
    }

    pub async fn start_water(&self, extra: &[&str]) -> Result<ServiceProcess> {
        self.start_service("vigie-water", "water", extra)
    }
}

pub type TransportClient = proto::transport::transport_service_client::TransportServiceClient<AuthChannel>;

pub type LightingClient = proto::lighting::lighting_service_client::LightingServiceClient<AuthChannel>;

pub use runtime::grpc_auth::AuthChannel;

/// A channel to `addr` (host:port) whose calls carry `token`.
/// The flags a lighting instance connects to NATS with, and the rest of `extra`: the lighting
/// user, unless `extra` names another (`--nats-user lighting-est`, a shard's), on every node,
/// unless `extra` names one (`--nats-url`, one node of a cluster).
fn lighting_credentials<'a>(nats: &NatsServer, extra: &[&'a str]) -> (Vec<String>, Vec<&'a str>) {
    let mut extra = extra.to_vec();
    let mut take = |flag: &str| {
        let i = extra.iter().position(|a| *a == flag).filter(|i| i + 1 < extra.len())?;
        let value = extra[i + 1];
        extra.drain(i..=i + 1);
        Some(value)
    };
    let user = take("--nats-user").unwrap_or("lighting");
    let url = take("--nats-url");
    let mut args = nats.credentials(user);
    if let Some(url) = url {
        args[1] = url.to_owned();
    }
    (args, extra)
}

pub async fn channel_with_token(addr: &str, token: Option<&str>) -> Result<AuthChannel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    Ok(runtime::grpc_auth::with_token(channel, runtime::grpc_auth::BearerToken::fixed(token.map(str::to_owned))))
}

/// A token signed with the installation key at `key_path` (created when missing, as the gateway
/// does at first start): the services accept it as they accept the gateway's (`service`) or an
/// integrator's credential for every commune and domain (`integrator`).
pub fn mint_token(key_path: &Path, typ: runtime::auth::TokenType) -> Result<String> {
    use runtime::auth::{Role, TokenType};
    let keys = gateway::auth::Keys::load_or_generate(key_path)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let (sub, role) = match typ {
        TokenType::Service => ("gateway", Role::Supervisor),
        _ => ("harness-integrator", Role::Integrator),
    };
    Ok(keys.sign(&runtime::auth::Claims {
        iss: runtime::auth::ISSUER.into(),
        aud: runtime::auth::AUDIENCE.into(),
        sub: sub.into(),
        iat: now,
        exp: now + 6 * 3600,
        typ,
        sid: format!("harness-{}", rand::random::<u64>()),
        role,
        all_communes: true,
        communes: Vec::new(),
        domains: ["lighting", "transport", "water", "reports"].map(String::from).to_vec(),
        generation: 0,
    }))
}

/// Adds an operator to a gateway's store with the gateway's own CLI (the gateway must be stopped,
/// or not yet started). `communes` empty with a role that needs some: every commune.
pub fn add_operator(store: &Path, territory: &Path, login: &str, role: &str, communes: &[&str]) -> Result<()> {
    use std::io::Write;
    let mut args = vec![
        "--store".to_owned(),
        store.display().to_string(),
        "--territory".to_owned(),
        territory.display().to_string(),
        "add-operator".to_owned(),
        "--login".to_owned(),
        login.to_owned(),
        "--role".to_owned(),
        role.to_owned(),
    ];
    if communes.is_empty() {
        args.push("--all-communes".to_owned());
    } else {
        args.extend(["--communes".to_owned(), communes.join(",")]);
    }
    let mut child = Command::new(vigie_binary("vigie-gateway")?)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?.write_all(format!("{TEST_PASSWORD}\n").as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("add-operator {login}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}
