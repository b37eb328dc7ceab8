//! Test harness: real processes on ephemeral ports.
//!
//! - [`NatsServer`]: `nats-server -js -p -1` with `--ports_file_dir`, so the port is learnt
//!   without a race; stopped, restarted on the same port and store, killed on drop.
//! - [`Process`]: a Vigie binary from the same `target/` folder as the test, its stderr captured;
//!   readiness is a log line, then a health check. Killed on drop.
//! - [`LiveClient`]: a WebSocket client of the gateway's live protocol.
//! - [`test_territory`]: a small synthetic territory, so the tests need no shared data.
//!
//! Nothing here sleeps to wait for readiness: every wait polls a condition under a deadline.

use anyhow::{Context, Result, anyhow, bail};
use futures::{SinkExt, StreamExt};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use proto;

mod http;
mod link;
mod wait;
pub use http::*;
pub use link::{Link, LinkState};
pub use wait::{block_on, eventually};

/// How long any single wait in the harness may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// How long a test may read frames waiting for a condition, even while frames keep coming
/// (periodic KPIs would otherwise keep a failing wait alive for ever).
pub const UNTIL: Duration = Duration::from_secs(90);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The nats-server binary: `$VIGIE_NATS_SERVER`, else `.tools/bin/nats-server` (installed by
/// `deploy/install-tools.sh`), else `nats-server` on the PATH.
pub fn nats_server_binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("VIGIE_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let local = repo_root().join(".tools/bin/nats-server");
    if local.is_file() {
        return Ok(local);
    }
    if Command::new("nats-server").arg("--version").output().is_ok() {
        return Ok(PathBuf::from("nats-server"));
    }
    bail!("nats-server not found: run deploy/install-tools.sh (or tests/run.sh), or set VIGIE_NATS_SERVER")
}

/// A Vigie binary built in the same profile as this test.
pub fn vigie_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>; a binary of this crate (the
    // benchmark) is in target/<profile> itself.
    let parent = exe.parent().ok_or_else(|| anyhow!("unexpected path {}", exe.display()))?;
    let dir = if parent.ends_with("deps") { parent.parent().unwrap_or(parent) } else { parent };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build the binaries first (`cargo build --workspace --bins`, as tests/run.sh does)",
            path.display()
        );
    }
    Ok(path)
}

fn poll<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, sig)?;
    Ok(())
}

fn wait_exit(child: &mut Child, what: &str) -> Result<ExitStatus> {
    poll(what, WAIT, || child.try_wait().ok().flatten())
}

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

/// The password of the operators the harness creates (tests are not about password strength).
pub const TEST_PASSWORD: &str = "a test password of the harness";

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

/// A running Vigie binary with its stderr captured (and echoed, prefixed, for failing tests).
pub struct Process {
    name: String,
    binary: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub fn start(binary: &str, args: &[String]) -> Result<Process> {
        let mut process = Process {
            name: binary.to_owned(),
            binary: vigie_binary(binary)?,
            args: args.to_vec(),
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
        };
        process.spawn()?;
        Ok(process)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut child = Command::new(&self.binary)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let log = self.log.clone();
        let name = self.name.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                if let Ok(mut log) = log.lock() {
                    log.push(line);
                }
            }
        });
        self.child = Some(child);
        Ok(())
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits for a log line containing `needle` after line `from`; returns its index and text.
    pub fn wait_for_log(&self, needle: &str, from: usize) -> Result<(usize, String)> {
        poll(&format!("{} to log {needle:?}", self.name), WAIT, || {
            let log = self.log.lock().ok()?;
            log.iter().enumerate().skip(from).find(|(_, l)| l.contains(needle)).map(|(i, l)| (i, l.clone()))
        })
    }

    pub fn log_len(&self) -> usize {
        self.log.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// The `addr=` of the first log line containing `needle` after line `from`.
    pub fn wait_for_addr(&self, needle: &str, from: usize) -> Result<String> {
        let (_, line) = self.wait_for_log(needle, from)?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no addr= in {line:?}"))
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Freezes the process (SIGSTOP): alive, connections open, silent. `resume` undoes it.
    pub fn pause(&self) -> Result<()> {
        signal(
            self.child.as_ref().ok_or_else(|| anyhow!("{} is not running", self.name))?,
            nix::sys::signal::Signal::SIGSTOP,
        )
    }

    pub fn resume(&self) -> Result<()> {
        signal(
            self.child.as_ref().ok_or_else(|| anyhow!("{} is not running", self.name))?,
            nix::sys::signal::Signal::SIGCONT,
        )
    }

    /// SIGKILL: no cleanup at all.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Waits for the process to exit by itself; its exit status.
    pub fn wait_exit(&mut self) -> Result<ExitStatus> {
        let child = self.child.as_mut().ok_or_else(|| anyhow!("{} is not running", self.name))?;
        let status = wait_exit(child, &format!("{} to exit by itself", self.name))?;
        self.child = None;
        Ok(status)
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("{} is not running", self.name))?;
        signal(&child, nix::sys::signal::Signal::SIGTERM)?;
        wait_exit(&mut child, &format!("{} to exit", self.name))
    }

    /// Starts the process again; it must have stopped (killed or terminated) first, so that a
    /// test never leaves a second copy running.
    pub fn restart(&mut self) -> Result<usize> {
        if self.is_running() {
            bail!("{} is still running: kill or terminate it before restarting it", self.name);
        }
        let from = self.log_len();
        self.spawn()?;
        Ok(from)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Held by the tests that load the machine most (the browser test, the fault suite, the
/// benchmark's smoke run) for their whole run, so that they never overlap: on two cores, a
/// browser drawing 30,000 lamps next to a fault schedule's write load misses its own deadlines.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A size-limited tmpfs mounted over a folder (the folder's files are carried over), to fill a
/// process's disk in a test; unmounted when dropped. Needs root (CI runs as root).
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mounts `bytes` of tmpfs over `path` with its current contents; `None` when mounting is
    /// not allowed here.
    pub fn mount_over(path: &Path, bytes: u64) -> Result<Option<SmallDisk>> {
        let saved = tempfile::tempdir()?;
        let copy = |from: &Path, to: &Path| -> Result<()> {
            let status = Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).status()?;
            if !status.success() {
                bail!("copying {} to {}", from.display(), to.display());
            }
            Ok(())
        };
        copy(path, saved.path())?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()?;
        if !mounted.success() {
            return Ok(None);
        }
        let disk = SmallDisk { path: path.to_owned() };
        copy(saved.path(), path)?;
        Ok(Some(disk))
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Fills the disk: a file takes every byte left.
    pub fn fill(&self) -> Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(self.filler())?;
        let block = vec![0u8; 64 * 1024];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let _ = file.sync_all();
        Ok(())
    }

    /// Frees what [`SmallDisk::fill`] took.
    pub fn free(&self) -> Result<()> {
        std::fs::remove_file(self.filler())?;
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Two square communes side by side: 34172 ("Ouest", lon 3.80-3.90) and 34129 ("Est",
/// lon 3.90-4.00), lat 43.50-43.70.
pub fn test_territory() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let square = |insee: &str, name: &str, west: f64, east: f64| {
        serde_json::json!({"type": "Feature", "properties": {"insee": insee, "name": name, "population": 1000},
          "geometry": {"type": "Polygon", "coordinates": [[[west, 43.5], [east, 43.5], [east, 43.7], [west, 43.7], [west, 43.5]]]}})
    };
    let communes = serde_json::json!({"type": "FeatureCollection",
        "features": [square("34172", "Ouest", 3.8, 3.9), square("34129", "Est", 3.9, 4.0)]});
    std::fs::write(dir.path().join("communes.geojson"), communes.to_string())?;
    Ok(dir)
}

/// The real territory of `../shared/data` (communes, streets, streetlights, transit feed, water
/// network), as a folder of links the test owns; `None` when the data is absent.
pub fn real_territory() -> Result<Option<tempfile::TempDir>> {
    let data = repo_root().join("../shared/data/montpellier-mediterranee-metropole");
    if !data.join("communes.geojson").is_file() {
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    for name in ["communes.geojson", "streets.geojson", "lighting", "transit", "water"] {
        if data.join(name).exists() {
            std::os::unix::fs::symlink(data.join(name), dir.path().join(name))?;
        }
    }
    Ok(Some(dir))
}

/// A free TCP port on 127.0.0.1 (for a process that must come back on the same address).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Lamps along an east-west street: `n` lamps `spacing_m` apart from (lat, lon), named
/// `<prefix>00`, `<prefix>01`, ...
pub fn street_of_lamps(prefix: &str, n: usize, lat: f64, lon: f64, spacing_m: f64) -> Vec<(String, f64, f64)> {
    let deg_per_m = 1.0 / (111_320.0 * lat.to_radians().cos());
    (0..n).map(|i| (format!("{prefix}{i:02}"), lat, lon + i as f64 * spacing_m * deg_per_m)).collect()
}

/// The test territory plus a streetlight inventory (`lighting/streetlights.geojson`), in the
/// format of the real data: Point features with `id`, `lamp_type` and `street`.
pub fn territory_with_streetlights(lamps: &[(String, f64, f64)], street: &str) -> Result<tempfile::TempDir> {
    let dir = test_territory()?;
    let features: Vec<serde_json::Value> = lamps
        .iter()
        .map(|(id, lat, lon)| {
            serde_json::json!({"type": "Feature", "properties": {"id": id, "lamp_type": "LANTERNE", "street": street},
              "geometry": {"type": "Point", "coordinates": [lon, lat]}})
        })
        .collect();
    std::fs::create_dir_all(dir.path().join("lighting"))?;
    let inventory = serde_json::json!({"type": "FeatureCollection", "features": features});
    std::fs::write(dir.path().join("lighting/streetlights.geojson"), inventory.to_string())?;
    Ok(dir)
}

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
        let target = nats.url().trim_start_matches("nats://").to_owned();
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
        let mut args = common("lighting");
        args.extend(["--auth-public-key".into(), gateway::auth::public_key_path(&key).display().to_string()]);
        // A test that restarts the service under the gateway gives it a fixed port.
        if !lighting_flags.contains(&"--grpc-addr") {
            args.extend(["--grpc-addr".into(), "127.0.0.1:0".into()]);
        }
        args.extend(["--territory".into(), territory.path().display().to_string()]);
        args.extend(lighting_flags.iter().map(|s| s.to_string()));
        let lighting = Process::start("vigie-lighting", &args)?;
        let lighting_addr = lighting.wait_for_addr("gRPC listening", 0)?;
        let mut args = common("gateway");
        let ui = repo_root().join("ui-client/dist").display().to_string();
        // A test that restarts the gateway under a browser gives it a fixed port.
        if !gateway_flags.contains(&"--http-addr") {
            args.extend(["--http-addr".into(), "127.0.0.1:0".into()]);
        }
        args.extend(["--ui-dir".into(), ui]);
        // The communes its operators may be given, and the console's basemap.
        if !gateway_flags.contains(&"--territory") {
            args.extend(["--territory".into(), territory.path().display().to_string()]);
        }
        // Operators' lighting commands go through the gateway to this slice's lighting service.
        args.extend(["--lighting-url".into(), format!("http://{lighting_addr}")]);
        args.extend(gateway_flags.iter().map(|s| s.to_string()));
        // The slice's operator: the metropolitan supervisor, logged in once the gateway is up.
        add_operator(&stores.path().join("gateway"), territory.path(), SUPERVISOR, "supervisor", &[])?;
        add_operator(&stores.path().join("gateway"), territory.path(), ADMIN, "admin", &[])?;
        let gateway = Process::start("vigie-gateway", &args)?;
        let gateway_addr = gateway.wait_for_addr("HTTP listening", 0)?;
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

    pub async fn lighting_client(&self) -> Result<LightingClient> {
        Ok(LightingClient::new(channel_with_token(&self.lighting_addr, Some(&self.service_token)).await?))
    }

    /// A live client that receives every update (not coalesced): tests count events.
    pub async fn live_client(&self) -> Result<LiveClient> {
        LiveClient::connect(&format!("ws://{}/ws?coalesce=false", self.gateway_addr)).await
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

/// Writes a GTFS feed (file name, text) as the territory's `transit/gtfs.zip`.
pub fn write_gtfs_zip(territory: &Path, files: &[(&str, String)]) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(territory.join("transit"))?;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(territory.join("transit/gtfs.zip"))?);
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, text) in files {
        zip.start_file(*name, options)?;
        zip.write_all(text.as_bytes())?;
    }
    zip.finish()?;
    Ok(())
}

/// A GTFS-Realtime feed message decoded by Google's published bindings (`gtfs-realtime-bindings`
/// on PyPI, built from the official gtfs-realtime.proto; installed by deploy/install-tools.sh), as
/// JSON with the specification's field names. Independent of Vigie's own transcription.
pub fn decode_gtfs_rt_officially(bytes: &[u8]) -> Result<serde_json::Value> {
    use std::io::Write;
    let python = repo_root().join(".tools/venv/bin/python");
    let script = repo_root().join("tests/gtfs_rt_decode.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{} is missing: run deploy/install-tools.sh", python.display()))?;
    child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?.write_all(bytes)?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "the official GTFS-Realtime bindings could not decode the feed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

pub type TransportClient = proto::transport::transport_service_client::TransportServiceClient<AuthChannel>;

pub type LightingClient = proto::lighting::lighting_service_client::LightingServiceClient<AuthChannel>;

pub use runtime::grpc_auth::AuthChannel;

/// A channel to `addr` (host:port) whose calls carry `token`.
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

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A client of the live protocol. Frames are read as plain JSON, not with the gateway's types,
/// so a change of the wire format shows up here.
pub struct LiveClient {
    socket: Socket,
}

impl LiveClient {
    /// Connects with the test's token at that gateway (see [`login`]).
    pub async fn connect(url: &str) -> Result<LiveClient> {
        let host = url.split("://").nth(1).and_then(|rest| rest.split('/').next()).unwrap_or("");
        LiveClient::connect_as(url, token_for(host).as_deref(), None).await
    }

    /// Connects offering this token (as the `bearer.<token>` subprotocol) and this Origin.
    pub async fn connect_as(url: &str, token: Option<&str>, origin: Option<&str>) -> Result<LiveClient> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request()?;
        let protocols = match token {
            Some(t) => format!("vigie.v1, bearer.{t}"),
            None => "vigie.v1".to_owned(),
        };
        request.headers_mut().insert("sec-websocket-protocol", protocols.parse()?);
        if let Some(origin) = origin {
            request.headers_mut().insert("origin", origin.parse()?);
        }
        let (socket, _) =
            tokio_tungstenite::connect_async(request).await.with_context(|| format!("connecting to {url}"))?;
        Ok(LiveClient { socket })
    }

    /// The next text frame as JSON.
    pub async fn next(&mut self) -> Result<serde_json::Value> {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .map_err(|_| anyhow!("no frame from the gateway within {WAIT:?}"))?
                .ok_or_else(|| anyhow!("the gateway closed the connection"))??;
            match message {
                tokio_tungstenite::tungstenite::Message::Text(text) => return Ok(serde_json::from_str(&text)?),
                tokio_tungstenite::tungstenite::Message::Close(frame) => bail!("closed by the gateway: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Reads frames until `done` is true for one; returns every frame read. Fails after
    /// [`UNTIL`], even while frames keep coming.
    pub async fn until(&mut self, mut done: impl FnMut(&serde_json::Value) -> bool) -> Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + UNTIL;
        let mut frames = Vec::new();
        loop {
            if Instant::now() > deadline {
                let last: Vec<_> = frames.iter().rev().take(3).collect();
                bail!("condition not met within {UNTIL:?}; last frames: {last:?}");
            }
            let frame = self.next().await?;
            let stop = done(&frame);
            frames.push(frame);
            if stop {
                return Ok(frames);
            }
        }
    }

    /// Reads until the gateway closes the connection; returns its close code (frames meanwhile
    /// are skipped).
    pub async fn close_code(&mut self) -> Result<u16> {
        loop {
            let message = tokio::time::timeout(UNTIL, self.socket.next())
                .await
                .map_err(|_| anyhow!("the gateway did not close the connection within {UNTIL:?}"))?
                .ok_or_else(|| anyhow!("the connection ended without a close frame"))?;
            match message {
                Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame))) => return Ok(frame.code.into()),
                Ok(tokio_tungstenite::tungstenite::Message::Close(None)) => bail!("closed without a code"),
                Ok(_) => continue,
                Err(e) => bail!("the connection failed before a close frame: {e}"),
            }
        }
    }

    /// The WebSocket itself, for a test that reads and writes at once (split it).
    pub fn into_socket(self) -> Socket {
        self.socket
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.socket.send(tokio_tungstenite::tungstenite::Message::Text(text.into())).await?;
        Ok(())
    }

    /// Reads frames until `done` says so; returns the event id of every delta of this kind of
    /// event seen meanwhile (in order). Fails after [`UNTIL`], even while frames keep coming.
    pub async fn collect_event_ids(
        &mut self,
        kind: &str,
        mut done: impl FnMut(&[String]) -> bool,
    ) -> Result<Vec<String>> {
        let deadline = Instant::now() + UNTIL;
        let mut ids = Vec::new();
        while !done(&ids) {
            if Instant::now() > deadline {
                bail!("condition not met within {UNTIL:?}; {} {kind} events seen", ids.len());
            }
            let frame = self.next().await?;
            if frame["type"] == "delta" && frame["event"]["kind"] == kind {
                let id = frame["event"]["id"].as_str().ok_or_else(|| anyhow!("delta without event id: {frame}"))?;
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }
}

/// What the stream holds: event id -> how many times, the ids of lamp status events, and its
/// last sequence.
pub struct StreamContent {
    pub ids: HashMap<String, usize>,
    /// When each sequence was stored (the server's clock, which libfaketime does not shift: a
    /// Go binary reads the time without libc).
    pub published: BTreeMap<u64, std::time::SystemTime>,
    /// When each event was first stored, by its id.
    pub published_by_id: HashMap<String, std::time::SystemTime>,
    pub status_ids: std::collections::HashSet<String>,
    pub last: u64,
}

/// Reads the whole events stream (as the gateway, which may).
pub async fn read_events_stream(nats: &NatsServer) -> Result<StreamContent> {
    let client = nats.client_as("gateway").await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(proto::subject::EVENTS_STREAM).await?;
    let last = stream.info().await?.state.last_sequence;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut status_ids = std::collections::HashSet::new();
    let mut published = BTreeMap::new();
    let mut published_by_id = HashMap::new();
    let mut seen = 0;
    while seen < last {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("reading the stream")?
            .context("the stream ended")??;
        let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        seen = info.stream_sequence;
        let nanos = u64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0);
        published.insert(seen, std::time::UNIX_EPOCH + Duration::from_nanos(nanos));
        if let Ok(event) = proto::event::decode(&message.payload) {
            published_by_id
                .entry(event.event.id.clone())
                .or_insert(std::time::UNIX_EPOCH + Duration::from_nanos(nanos));
            if event.event.kind == "streetlight_status" {
                status_ids.insert(event.event.id.clone());
            }
            *ids.entry(event.event.id.clone()).or_default() += 1;
        }
    }
    Ok(StreamContent { ids, published, published_by_id, status_ids, last })
}
