//! Flags shared by every process. Each has an environment variable; flags win over variables.

use proto::ids::CommuneId;
use proto::subject::{Shard, Unit};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct CommonConfig {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "VIGIE_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// The NATS user of this process (each has its subject permissions, see
    /// deploy/nats/authorization.conf); none: connect without credentials.
    #[arg(long, env = "VIGIE_NATS_USER")]
    pub nats_user: Option<String>,

    /// Its password (prefer the environment variable: a flag shows in the process list).
    #[arg(long, env = "VIGIE_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,

    /// Log format on stderr: `text` or `json`. Verbosity comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "VIGIE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// How long a graceful shutdown may take (finish requests, drain the outbox and NATS) before the
    /// process exits anyway. What is left in the outbox is published at the next start.
    #[arg(long, env = "VIGIE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Address of the Prometheus `/metrics` endpoint (none: not served; the gateway also serves it
    /// on its HTTP address). Port 0 picks a free port (logged).
    #[arg(long, env = "VIGIE_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub stream: StreamSettings,
}

/// TLS of a process's gRPC server, and mutual TLS.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GrpcServerTls {
    /// Certificate chain (PEM) of the gRPC server: it then speaks TLS only (clients use https://).
    #[arg(long = "grpc-tls-cert", env = "VIGIE_GRPC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Its private key (PEM).
    #[arg(long = "grpc-tls-key", env = "VIGIE_GRPC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: the CA (PEM) clients' certificates must chain to; a client without such a
    /// certificate is refused at the handshake. Tokens are still checked.
    #[arg(long = "grpc-tls-client-ca", env = "VIGIE_GRPC_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl GrpcServerTls {
    /// tonic's configuration for these files (none: plain TCP).
    pub fn server_config(&self) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &self.tls_client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(Some(config))
    }
}

/// How a process reaches the gRPC services it calls over TLS (`https://` URLs).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GrpcClientTls {
    /// The CA (PEM) that the services' certificates chain to (default: the system's roots are
    /// not used; an https:// URL needs this CA).
    #[arg(long = "grpc-ca", env = "VIGIE_GRPC_CA")]
    pub grpc_ca: Option<PathBuf>,

    /// This process's client certificate (PEM), for services that require mutual TLS.
    #[arg(long = "grpc-client-cert", env = "VIGIE_GRPC_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// Its private key (PEM).
    #[arg(long = "grpc-client-key", env = "VIGIE_GRPC_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl GrpcClientTls {
    /// An endpoint for `url`, with TLS when it is an https:// URL.
    pub fn endpoint(&self, url: &str) -> anyhow::Result<tonic::transport::Endpoint> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|e| anyhow::anyhow!("{url:?} is not a URL: {e}"))?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let ca = self.grpc_ca.as_ref().ok_or_else(|| anyhow::anyhow!("{url}: an https:// service needs --grpc-ca"))?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint.tls_config(tls).map_err(|e| anyhow::anyhow!("{url}: TLS settings refused: {e}"))
    }
}

impl GrpcClientTls {
    /// The endpoints of a comma-separated list of URLs (the instances of a service run with a
    /// standby, or one URL).
    pub fn endpoints(&self, urls: &str) -> anyhow::Result<Vec<tonic::transport::Endpoint>> {
        let endpoints = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| self.endpoint(u).map(|e| e.connect_timeout(std::time::Duration::from_secs(2))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!endpoints.is_empty(), "no URL in {urls:?}");
        Ok(endpoints)
    }

    /// A channel to a service, connected at its first call: to its one URL, or to whichever of
    /// its instances listens (a standby does not listen until it is the active one; see
    /// [`follow_instances`]). Call within a Tokio runtime.
    pub fn channel(&self, urls: &str) -> anyhow::Result<tonic::transport::Channel> {
        let mut endpoints = self.endpoints(urls)?;
        if endpoints.len() == 1 {
            return Ok(endpoints.remove(0).connect_lazy());
        }
        let (channel, changes) = tonic::transport::Channel::balance_channel(endpoints.len());
        tokio::spawn(follow_instances(endpoints, changes));
        Ok(channel)
    }
}

/// Keeps in a balanced channel only the instances that answer SERVING on the standard health
/// service within a second, checked every 500 ms, until the channel is dropped. (tonic's own list
/// keeps an endpoint whose connection fails, and sends it every other call; a TCP connection
/// alone would keep a frozen process, whose kernel still accepts.)
async fn follow_instances(
    endpoints: Vec<tonic::transport::Endpoint>,
    changes: tokio::sync::mpsc::Sender<tonic::transport::channel::Change<usize, tonic::transport::Endpoint>>,
) {
    use tonic::transport::channel::Change;
    let mut listening = vec![false; endpoints.len()];
    loop {
        for (i, endpoint) in endpoints.iter().enumerate() {
            let up = serving(endpoint).await;
            if up != listening[i] {
                let change = if up { Change::Insert(i, endpoint.clone()) } else { Change::Remove(i) };
                if changes.send(change).await.is_err() {
                    return;
                }
                listening[i] = up;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = changes.closed() => return,
        }
    }
}

/// Whether the instance at `endpoint` answers SERVING within a second.
async fn serving(endpoint: &tonic::transport::Endpoint) -> bool {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let probe = async {
        let channel = endpoint.connect().await.ok()?;
        let answer = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.ok()?;
        Some(answer.into_inner().status == ServingStatus::Serving as i32)
    };
    matches!(tokio::time::timeout(std::time::Duration::from_secs(1), probe).await, Ok(Some(true)))
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}

/// Settings of the JetStream events stream, used by whichever process creates it first.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamSettings {
    /// Window in which JetStream drops a re-published event with the same `Nats-Msg-Id`. An outbox
    /// entry whose publish was stored but not acknowledged is published again within this window.
    #[arg(long = "stream-duplicate-window", env = "VIGIE_STREAM_DUPLICATE_WINDOW", default_value = "10m", value_parser = parse_duration)]
    pub duplicate_window: Duration,

    /// How long events stay in the stream (and so how far back a view can be rebuilt).
    #[arg(long = "stream-max-age", env = "VIGIE_STREAM_MAX_AGE", default_value = "7d", value_parser = parse_duration)]
    pub max_age: Duration,

    /// Replicas of the stream (1 on one machine, 3 on a NATS cluster).
    #[arg(long = "stream-replicas", env = "VIGIE_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
}

/// Parses `250ms`, `10s`, `5m`, `2h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 500ms, 10s, 5m, 2h or 7d"))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use ms, s, m, h or d")),
    };
    n.checked_mul(unit_ms).map(Duration::from_millis).ok_or_else(|| format!("{text:?} is too long"))
}

/// Parses a size: `4096`, `64KiB`, `512MiB`, `2GiB` (bytes).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a size such as 4096, 64KiB, 512MiB or 2GiB"))?;
    let unit_bytes: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use KiB, MiB or GiB")),
    };
    n.checked_mul(unit_bytes).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert!(parse_bytes("5MB").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("99999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}

/// A shard of a domain service: an instance (with its standbys) limited to some communes, for a
/// territory too large for one. It accepts only their writes; another commune's asset is
/// unknown to it (NOT_FOUND, as an unknown id). Each shard has its own store, lease, state
/// bucket and outbox reader (see [`proto::subject::Unit`]); the gateway routes commands to it
/// by commune (`--lighting-shard`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ShardConfig {
    /// This instance's shard: 1 to 16 lowercase letters and digits (with `--communes`).
    #[arg(long, env = "VIGIE_SHARD", requires = "communes")]
    pub shard: Option<String>,

    /// The communes (INSEE codes, comma-separated) of `--shard`.
    #[arg(long, env = "VIGIE_COMMUNES", value_delimiter = ',', requires = "shard")]
    pub communes: Vec<String>,
}

impl ShardConfig {
    /// The unit this instance serves in `domain`: the whole domain, or its shard's communes.
    pub fn unit(&self, domain: proto::v1::Domain) -> anyhow::Result<Unit> {
        let Some(shard) = &self.shard else {
            return Ok(Unit::whole(domain));
        };
        proto::subject::check_shard_name(shard).map_err(|e| anyhow::anyhow!("--shard: {e}"))?;
        let mut communes = Vec::new();
        for c in &self.communes {
            let id = CommuneId::parse(c.trim()).map_err(|e| anyhow::anyhow!("--communes: {e}"))?;
            if !communes.contains(&id) {
                communes.push(id);
            }
        }
        if communes.is_empty() {
            anyhow::bail!("--communes: a shard serves at least one commune");
        }
        Ok(Unit { domain, shard: Some(Shard { name: shard.clone(), communes }) })
    }
}
