//! A real `nats-server` with JetStream on an ephemeral port (learnt from its ports file, so
//! without a race), per-process users, stopped and restarted on the same port and store.

use super::*;

/// The NATS users of deploy/nats/authorization.conf: one per process.
pub const NATS_USERS: [&str; 5] = ["lighting", "transport", "water", "reports", "gateway"];

/// A real nats-server with JetStream, on loopback, with the deployment's users and subject
/// permissions (deploy/nats/authorization.conf), each with a password of this server's own.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    passwords: BTreeMap<&'static str, String>,
    /// With the deployment's users and permissions (every test's server), or open (the
    /// benchmark's baselines).
    authorization: bool,
    /// Lines added to the server's configuration (e.g. a smaller `max_payload`).
    extra_config: String,
}

impl NatsServer {
    pub fn start() -> Result<NatsServer> {
        NatsServer::start_with("")
    }

    /// A server with the deployment's users and these lines added to its configuration.
    pub fn start_with(extra_config: &str) -> Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let passwords = NATS_USERS.iter().map(|u| (*u, format!("v{:032x}", rand::random::<u128>()))).collect();
        let extra_config = extra_config.to_owned();
        let mut server = NatsServer { child: None, port: 0, dir, passwords, authorization: true, extra_config };
        server.spawn(None)?;
        Ok(server)
    }

    /// A server without users: anyone may do anything (the benchmark's raw baselines).
    pub fn start_open() -> Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let mut server = NatsServer {
            child: None,
            port: 0,
            dir,
            passwords: BTreeMap::new(),
            authorization: false,
            extra_config: String::new(),
        };
        server.spawn(None)?;
        Ok(server)
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
        Ok(async_nats::ConnectOptions::with_user_and_password(user.into(), password)
            .custom_inbox_prefix(proto::subject::inbox_prefix(user))
            .connect(self.url())
            .await?)
    }

    fn spawn(&mut self, port: Option<u16>) -> Result<()> {
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir)?;
        // The deployment's authorization (copied: nats-server includes files relative to the
        // config), and this server's ports and store.
        std::fs::copy(repo_root().join("deploy/nats/authorization.conf"), self.dir.path().join("authorization.conf"))?;
        let include = if self.authorization { "include \"./authorization.conf\"\n" } else { "" };
        let config = format!(
            "{include}host: 127.0.0.1\nport: {}\nhttp_port: -1\nports_file_dir: {:?}\njetstream {{ store_dir: {:?} }}\n{}\n",
            port.map(i64::from).unwrap_or(-1),
            ports_dir.display().to_string(),
            self.dir.path().join("jetstream").display().to_string(),
            self.extra_config,
        );
        let config_path = self.dir.path().join("nats.conf");
        std::fs::write(&config_path, config)?;
        let mut command = Command::new(nats_server_binary()?);
        for (user, password) in &self.passwords {
            command.env(format!("VIGIE_NATS_{}_PASSWORD", user.to_uppercase()), password);
        }
        let log = std::fs::File::create(self.dir.path().join("nats.log"))?;
        let child = command
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting nats-server")?;
        let pid = child.id();
        self.child = Some(child);
        // Named after the executable and its pid: <name>_<pid>.ports.
        let suffix = format!("_{pid}.ports");
        let log = self.dir.path().join("nats.log");
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
        let url = ports["nats"][0].as_str().ok_or_else(|| anyhow!("no client port in {text}"))?;
        self.port = url.rsplit(':').next().and_then(|p| p.parse().ok()).ok_or_else(|| anyhow!("bad url {url}"))?;
        // The ports file is written once the listeners are up; JetStream is ready when the
        // monitoring endpoint says so.
        let monitor = ports["monitoring"][0].as_str().unwrap_or_default().trim_start_matches("http://").to_owned();
        block_on(eventually("JetStream ready", WAIT, || async {
            Ok(http_get(&monitor, "/healthz?js-enabled-only=true").await?.0 == 200).map(|ready| ready.then_some(()))
        }))?;
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server gracefully (its JetStream store stays).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            signal(&child, nix::sys::signal::Signal::SIGTERM)?;
            wait_exit(&mut child, "nats-server to stop")?;
        }
        Ok(())
    }

    /// Stops the server, deletes its JetStream store (every stream is gone) and starts it again
    /// on the same port: the processes recreate the events stream, which begins at 1 again.
    pub fn restart_without_streams(&mut self) -> Result<()> {
        self.stop()?;
        std::fs::remove_dir_all(self.dir.path().join("jetstream"))?;
        self.spawn(Some(self.port))
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn(Some(self.port))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
