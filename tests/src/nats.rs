//! A real `nats-server` with JetStream on an ephemeral port (learnt from its ports file, so
//! without a race), per-process users, stopped and restarted on the same port and store; or a
//! cluster of them, whose nodes a test kills and starts again one by one.

use super::*;

/// The NATS users of deploy/nats/authorization.conf: one per process.
pub const NATS_USERS: [&str; 5] = ["lighting", "transport", "water", "reports", "gateway"];

/// A real nats-server with JetStream, on loopback, with the deployment's users and subject
/// permissions (deploy/nats/authorization.conf), each with a password of this server's own; or a
/// cluster of such nodes ([`NatsServer::start_cluster`]), which processes reach by the list of
/// every node's URL.
pub struct NatsServer {
    nodes: Vec<Node>,
    passwords: BTreeMap<String, String>,
    /// Shards of domain services with a NATS user each (`<domain>:<shard>:<communes>`, see
    /// deploy/nats/shard-users.py).
    shards: Vec<String>,
    /// With the deployment's users and permissions (every test's server), or open (the
    /// benchmark's baselines).
    authorization: bool,
    /// Lines added to each node's configuration (e.g. a smaller `max_payload`).
    extra_config: String,
    /// When JetStream writes reach the disk (see [`JetStreamSync`]).
    sync: JetStreamSync,
    /// A cluster whose routes pass through links ([`NatsServer::start_cluster_partitionable`]):
    /// `route_links[i][j]` carries node i's route to node j (none for i == j).
    route_links: Vec<Vec<Option<Link>>>,
}

/// One nats-server process: its ports (kept across restarts), its store and its log.
struct Node {
    child: Option<Child>,
    port: u16,
    /// The port its cluster routes listen on (0: not a cluster, or not started yet).
    cluster_port: u16,
    monitor: String,
    dir: tempfile::TempDir,
}

/// When JetStream syncs what it stores to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JetStreamSync {
    /// Before each acknowledgement (`sync_interval: always`), as the deployment runs it
    /// (deploy/nats/): an acknowledged event survives a power cut.
    Always,
    /// nats-server's default (every 2 minutes): the tests', where nothing cuts the power.
    Default,
}

impl NatsServer {
    pub fn start() -> Result<NatsServer> {
        NatsServer::start_with("")
    }

    /// A server with the deployment's users and these lines added to its configuration.
    pub fn start_with(extra_config: &str) -> Result<NatsServer> {
        let mut server = NatsServer::new(1, true, extra_config)?;
        server.spawn(0)?;
        Ok(server)
    }

    /// A server with the deployment's users and a user per shard of a domain service
    /// (`<domain>:<shard>:<communes>`, e.g. `lighting:est:34129`; the user is `lighting-est`).
    pub fn start_sharded(shards: &[&str]) -> Result<NatsServer> {
        let mut server = NatsServer::new(1, true, "")?;
        for spec in shards {
            let mut parts = spec.split(':');
            let (Some(domain), Some(shard)) = (parts.next(), parts.next()) else {
                bail!("{spec:?} is not <domain>:<shard>:<communes>");
            };
            server.passwords.insert(format!("{domain}-{shard}"), format!("v{:032x}", rand::random::<u128>()));
            server.shards.push(spec.to_string());
        }
        server.spawn(0)?;
        Ok(server)
    }

    /// A server without users: anyone may do anything (the benchmark's raw baselines).
    pub fn start_open() -> Result<NatsServer> {
        NatsServer::start_open_synced(1, JetStreamSync::Default)
    }

    /// [`NatsServer::start_open`] (or a cluster of `nodes` such servers), syncing as told.
    pub fn start_open_synced(nodes: usize, sync: JetStreamSync) -> Result<NatsServer> {
        NatsServer::started(NatsServer::new(nodes, false, "")?, sync)
    }

    /// [`NatsServer::start`], syncing as told.
    pub fn start_synced(sync: JetStreamSync) -> Result<NatsServer> {
        NatsServer::started(NatsServer::new(1, true, "")?, sync)
    }

    /// A cluster of `nodes` servers with JetStream on each (routes between them, as
    /// deploy/nats/cluster/ configures), once its JetStream meta group has a leader.
    pub fn start_cluster(nodes: usize) -> Result<NatsServer> {
        NatsServer::start_cluster_synced(nodes, JetStreamSync::Default)
    }

    /// [`NatsServer::start_cluster`], syncing as told.
    pub fn start_cluster_synced(nodes: usize, sync: JetStreamSync) -> Result<NatsServer> {
        NatsServer::started(NatsServer::new(nodes, true, "")?, sync)
    }

    /// `server`'s every node started, syncing as told, and its JetStream cluster formed.
    fn started(mut server: NatsServer, sync: JetStreamSync) -> Result<NatsServer> {
        server.sync = sync;
        for node in 0..server.nodes.len() {
            server.spawn(node)?;
        }
        if server.nodes.len() > 1 {
            server.wait_jetstream_cluster()?;
        }
        Ok(server)
    }

    /// A cluster whose every route (each pair, each way) passes through a [`Link`], so that a
    /// test cuts one node off from the others ([`NatsServer::isolate_node`]) while its clients
    /// stay connected to it: a network partition. The nodes advertise a route address nobody
    /// answers, so that none learns a way round the links.
    pub fn start_cluster_partitionable(nodes: usize) -> Result<NatsServer> {
        let mut cluster = NatsServer::new(nodes, true, "")?;
        for node in &mut cluster.nodes {
            node.cluster_port = crate::free_port()?;
        }
        let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.cluster_port).collect();
        cluster.route_links = (0..nodes)
            .map(|i| {
                (0..nodes)
                    .map(|j| (i != j).then(|| Link::to(&format!("127.0.0.1:{}", ports[j]))).transpose())
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        for node in 0..nodes {
            cluster.spawn(node)?;
        }
        cluster.wait_jetstream_cluster()?;
        Ok(cluster)
    }

    /// Cuts every route of node `index` (both ways): its clients stay connected to it, it reaches
    /// no other node.
    pub fn isolate_node(&self, index: usize) {
        self.set_routes_of(index, LinkState::Cut);
    }

    /// Opens node `index`'s routes again.
    pub fn heal_node(&self, index: usize) {
        self.set_routes_of(index, LinkState::Open);
    }

    fn set_routes_of(&self, index: usize, state: LinkState) {
        for (i, links) in self.route_links.iter().enumerate() {
            for (j, link) in links.iter().enumerate() {
                if let Some(link) = link.as_ref().filter(|_| i == index || j == index) {
                    link.set(state);
                }
            }
        }
    }

    fn new(nodes: usize, authorization: bool, extra_config: &str) -> Result<NatsServer> {
        let passwords = if authorization {
            NATS_USERS.iter().map(|u| (u.to_string(), format!("v{:032x}", rand::random::<u128>()))).collect()
        } else {
            BTreeMap::new()
        };
        let nodes = (0..nodes)
            .map(|_| {
                Ok(Node { child: None, port: 0, cluster_port: 0, monitor: String::new(), dir: tempfile::tempdir()? })
            })
            .collect::<Result<Vec<Node>>>()?;
        Ok(NatsServer {
            nodes,
            passwords,
            shards: Vec::new(),
            authorization,
            extra_config: extra_config.to_owned(),
            sync: JetStreamSync::Default,
            route_links: Vec::new(),
        })
    }

    /// The flags a process connects as `user` with (`--nats-url`, `--nats-user`, `--nats-password`).
    pub fn credentials(&self, user: &str) -> Vec<String> {
        vec![
            "--nats-url".into(),
            self.url(),
            "--nats-user".into(),
            user.into(),
            "--nats-password".into(),
            self.passwords.get(user).cloned().unwrap_or_default(),
        ]
    }

    /// A client connected as `user`, as that process would be.
    pub async fn client_as(&self, user: &str) -> Result<async_nats::Client> {
        let password = self.passwords.get(user).cloned().ok_or_else(|| anyhow!("no NATS user {user}"))?;
        let servers: Vec<async_nats::ServerAddr> =
            self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port).parse()).collect::<Result<_, _>>()?;
        Ok(async_nats::ConnectOptions::with_user_and_password(user.into(), password)
            .custom_inbox_prefix(proto::subject::inbox_prefix(user))
            .connect(servers)
            .await?)
    }

    fn spawn(&mut self, index: usize) -> Result<()> {
        let clustered = self.nodes.len() > 1;
        // Routes to every other node whose cluster port is known. The first node, started before
        // the others' ports exist, gets a route nobody answers (nats-server starts clustered
        // JetStream only with a route configured): the others route to it, and it learns them.
        let mut routes: Vec<String> = match self.route_links.get(index) {
            Some(links) => {
                links.iter().flatten().map(|l| format!("\"{}\"", l.url().replace("nats://", "nats-route://"))).collect()
            }
            None => (self.nodes.iter().enumerate())
                .filter(|(i, n)| *i != index && n.cluster_port != 0)
                .map(|(_, n)| format!("\"nats-route://127.0.0.1:{}\"", n.cluster_port))
                .collect(),
        };
        // Through links, a node must not tell the others its own address (they would route to
        // it directly, round the links).
        let advertise = if self.route_links.is_empty() { "" } else { ", advertise: \"127.0.0.1:1\"" };
        if routes.is_empty() {
            routes.push("\"nats-route://127.0.0.1:1\"".to_owned());
        }
        let node = &mut self.nodes[index];
        let dir = node.dir.path().to_owned();
        let ports_dir = dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)?;
        // The deployment's authorization (copied: nats-server includes files relative to the
        // config), and this server's ports and store.
        let authorization = repo_root().join("deploy/nats/authorization.conf");
        if self.shards.is_empty() {
            std::fs::copy(&authorization, dir.join("authorization.conf"))?;
        } else {
            // With a user per shard, as a sharded deployment generates it.
            let script = repo_root().join("deploy/nats/shard-users.py");
            let out = Command::new("python3").arg(script).arg(&authorization).args(&self.shards).output()?;
            if !out.status.success() {
                bail!("shard-users.py: {}", String::from_utf8_lossy(&out.stderr));
            }
            std::fs::write(dir.join("authorization.conf"), out.stdout)?;
        }
        let include = if self.authorization { "include \"./authorization.conf\"\n" } else { "" };
        let cluster = if clustered {
            format!(
                "server_name: n{index}\ncluster {{ name: vigie-test, listen: \"127.0.0.1:{}\", routes: [{}]{advertise} }}\n",
                if node.cluster_port == 0 { -1 } else { i64::from(node.cluster_port) },
                routes.join(", "),
            )
        } else {
            String::new()
        };
        let config = format!(
            "{include}{cluster}host: 127.0.0.1\nport: {}\nhttp_port: -1\nports_file_dir: {:?}\njetstream {{ store_dir: {:?}{} }}\n{}\n",
            if node.port == 0 { -1 } else { i64::from(node.port) },
            ports_dir.display().to_string(),
            dir.join("jetstream").display().to_string(),
            if self.sync == JetStreamSync::Always { ", sync_interval: always" } else { "" },
            self.extra_config,
        );
        let config_path = dir.join("nats.conf");
        std::fs::write(&config_path, config)?;
        let mut command = Command::new(nats_server_binary()?);
        for (user, password) in &self.passwords {
            command.env(format!("VIGIE_NATS_{}_PASSWORD", user.to_uppercase().replace('-', "_")), password);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("nats.log"))?;
        let child = command
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        let pid = child.id();
        node.child = Some(child);
        // Named after the executable and its pid: <name>_<pid>.ports.
        let suffix = format!("_{pid}.ports");
        let log = dir.join("nats.log");
        let text = poll("nats-server ports file", WAIT, || {
            let entry = std::fs::read_dir(&ports_dir)
                .ok()?
                .flatten()
                .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))?;
            std::fs::read_to_string(entry.path()).ok().filter(|t| t.contains("\"nats\""))
        })
        .map_err(|e| {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            anyhow!("{e}; nats-server said: {tail:?}")
        })?;
        let ports: serde_json::Value = serde_json::from_str(&text)?;
        let port_of = |key: &str| -> Option<u16> { ports[key][0].as_str()?.rsplit(':').next()?.parse().ok() };
        node.port = port_of("nats").ok_or_else(|| anyhow!("no client port in {text}"))?;
        if clustered {
            node.cluster_port = port_of("cluster").ok_or_else(|| anyhow!("no cluster port in {text}"))?;
        }
        // The ports file is written once the listeners are up; JetStream is ready when the
        // monitoring endpoint says so.
        node.monitor = ports["monitoring"][0].as_str().unwrap_or_default().trim_start_matches("http://").to_owned();
        let monitor = node.monitor.clone();
        block_on(eventually("JetStream ready", WAIT, || async {
            Ok(http_get(&monitor, "/healthz?js-enabled-only=true").await?.0 == 200).map(|ready| ready.then_some(()))
        }))?;
        Ok(())
    }

    /// Waits until every running node says JetStream is healthy: on a cluster, the meta group
    /// has a leader and every stream its quorum.
    fn wait_jetstream_cluster(&self) -> Result<()> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            block_on(eventually("the JetStream cluster healthy", Duration::from_secs(30), || async {
                Ok((http_get(&node.monitor, "/healthz").await?.0 == 200).then_some(()))
            }))?;
        }
        Ok(())
    }

    /// Every node's URL, comma-separated (what `--nats-url` takes).
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect();
        urls.join(",")
    }

    /// Node `index`'s URL.
    pub fn node_url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[index].port)
    }

    /// The (first) server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.nodes[0].child.as_ref().map(Child::id)
    }

    /// Stops every node gracefully (their JetStream stores stay).
    pub fn stop(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                signal(&child, nix::sys::signal::Signal::SIGTERM)?;
                wait_exit(&mut child, "nats-server to stop")?;
            }
        }
        Ok(())
    }

    /// Stops the server, deletes its JetStream store (every stream is gone) and starts it again
    /// on the same port: the processes recreate the events stream, which begins at 1 again.
    pub fn restart_without_streams(&mut self) -> Result<()> {
        self.stop()?;
        for node in &self.nodes {
            std::fs::remove_dir_all(node.dir.path().join("jetstream"))?;
        }
        self.start_stopped()
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_stopped()
    }

    fn start_stopped(&mut self) -> Result<()> {
        for index in 0..self.nodes.len() {
            self.spawn(index)?;
        }
        if self.nodes.len() > 1 {
            self.wait_jetstream_cluster()?;
        }
        Ok(())
    }

    /// Kills node `index` of a cluster (SIGKILL: a machine lost).
    pub fn kill_node(&mut self, index: usize) -> Result<()> {
        let node = self.nodes.get_mut(index).ok_or_else(|| anyhow!("no NATS node {index}"))?;
        if let Some(mut child) = node.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops node `index` gracefully (SIGTERM: a maintenance) and starts it again on its ports
    /// with its store; returns once it has rejoined the cluster and every node is healthy.
    pub fn restart_node(&mut self, index: usize) -> Result<()> {
        let node = self.nodes.get_mut(index).ok_or_else(|| anyhow!("no NATS node {index}"))?;
        if let Some(mut child) = node.child.take() {
            signal(&child, nix::sys::signal::Signal::SIGTERM)?;
            wait_exit(&mut child, "nats-server node to stop")?;
        }
        self.start_node(index)
    }

    /// Starts node `index` again on its ports with its store; returns once it has rejoined the
    /// cluster and every node says JetStream is healthy (its copies of the streams caught up).
    pub fn start_node(&mut self, index: usize) -> Result<()> {
        self.spawn(index)?;
        self.wait_jetstream_cluster()
    }

    /// The node a client named `client_name` is connected to, from each node's `/connz`.
    pub async fn node_of(&self, client_name: &str) -> Result<Option<usize>> {
        for (index, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.child.is_some()) {
            let (status, body) = http_get(&node.monitor, "/connz?limit=1024").await?;
            if status != 200 {
                continue;
            }
            let connz: serde_json::Value = serde_json::from_str(&body)?;
            let connections = connz["connections"].as_array().cloned().unwrap_or_default();
            if connections.iter().any(|c| c["name"] == client_name) {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    /// The last `lines` lines of each node's log (for a test's failure message).
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let log = std::fs::read_to_string(node.dir.path().join("nats.log")).unwrap_or_default();
            let all: Vec<&str> = log.lines().collect();
            out.push_str(&format!("--- NATS node {index}\n{}\n", all[all.len().saturating_sub(lines)..].join("\n")));
        }
        out
    }

    /// The last sequence of `stream` in node `index`'s copy (`/jsz`), if it has one.
    /// A stream as node `index` reports it (`/jsz?streams=true`: its state, its leader).
    pub async fn stream_detail(&self, index: usize, stream: &str) -> Result<Option<serde_json::Value>> {
        let node = &self.nodes[index];
        let (_, body) = http_get(&node.monitor, "/jsz?streams=true").await?;
        let jsz: serde_json::Value = serde_json::from_str(&body)?;
        let accounts = jsz["account_details"].as_array().cloned().unwrap_or_default();
        Ok(accounts
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
            .find(|s| s["name"] == stream))
    }

    pub async fn stream_last_seq(&self, index: usize, stream: &str) -> Result<Option<u64>> {
        Ok(self.stream_detail(index, stream).await?.and_then(|s| s["state"]["last_seq"].as_u64()))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
