//! Who may call a domain service's gRPC API: every call carries a token of this installation
//! (`authorization: Bearer <token>` metadata), checked with the gateway's public key
//! (`--auth-public-key`) before the handler runs.
//!
//! Two kinds of caller:
//! - **the gateway** (a `service` token it mints for itself, minutes long): reads, and acts for
//!   its operators, whose communes it passes in each command (`allowed_communes`);
//! - **an integrator** (a credential issued by an administrator, revocable): writes field data to
//!   the domains its credential names and, when its scope is a set of communes, only for those.
//!   The handler checks each record's commune with [`check_commune`]. Calls that cannot be
//!   narrowed to a commune (registering a network's assets, a controller that receives every
//!   command, reads of the whole domain) need a credential for every commune. Integrators never
//!   act as operators.
//!
//! Operators' access and refresh tokens are for the gateway and are refused here. An integrator's
//! credential revoked at the gateway is refused as soon as the revocation reaches this process
//! over NATS ([`follow_revocations`]); until the list is loaded, integrators get UNAVAILABLE.

use crate::auth::{Claims, Role, TokenType, TokenVerifier};
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// What a gRPC method does, hence who may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads the domain's state: the gateway, or an integrator of the domain with every commune.
    Read,
    /// Reads or writes records one commune at a time: the handler checks each record's commune
    /// against the integrator's with [`check_commune`].
    PerCommune,
    /// Reference data shared by every commune (a catalogue): any credential of the domain.
    Reference,
    /// Writes that cannot be narrowed to a commune: the gateway, or an integrator of the domain
    /// with every commune.
    WriteEverywhere,
    /// An operator's act (command, schedule, status change): the gateway only.
    Act,
}

/// The verified caller of a call, in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The credential's login (`gateway` for the gateway).
    pub name: String,
    /// `None`: every commune.
    communes: Option<BTreeSet<String>>,
}

impl Caller {
    fn from_claims(claims: &Claims) -> Caller {
        let communes = (!claims.all_communes).then(|| claims.communes.iter().cloned().collect());
        Caller { name: claims.sub.clone(), communes }
    }
}

/// Whether the caller's credential covers `commune` (a call without a caller: every commune). An
/// existing record of a commune not covered must be answered as an unknown one (not found, the
/// same message): a refusal would tell the caller that it exists, and where.
pub fn covers(caller: Option<&Caller>, commune: &str) -> bool {
    caller.and_then(|c| c.communes.as_ref()).is_none_or(|set| set.contains(commune))
}

/// Refuses a write for `commune` by a caller whose credential does not cover it (for a commune
/// the caller named itself: an existing record's commune goes through [`covers`]). A call without a
/// caller (the service runs without `--auth-public-key`) is not limited.
pub fn check_commune(caller: Option<&Caller>, commune: &str) -> Result<(), Status> {
    match caller.and_then(|c| c.communes.as_ref().map(|set| (c, set))) {
        Some((caller, set)) if !set.contains(commune) => Err(Status::permission_denied(format!(
            "credential {} may not write for commune {}",
            caller.name,
            commune.chars().take(32).collect::<String>()
        ))),
        _ => Ok(()),
    }
}

/// The caller of a request, if the service checks credentials.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<Caller> {
    request.extensions().get::<Caller>().cloned()
}

/// The revoked credentials this process knows of.
#[derive(Default)]
pub struct Revocations {
    loaded: AtomicBool,
    revoked: RwLock<HashSet<String>>,
}

impl Revocations {
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn is_revoked(&self, sid: &str) -> bool {
        self.revoked.read().map(|r| r.contains(sid)).unwrap_or(true)
    }

    fn revoke(&self, sid: &str) {
        if let Ok(mut r) = self.revoked.write() {
            r.insert(sid.to_owned());
        }
    }
}

/// The checks of one service: its domain, its gRPC service name, and what each method does.
#[derive(Clone)]
pub struct ServiceAuth {
    /// `None`: calls are not checked (no `--auth-public-key`; development only).
    checks: Option<Arc<Checks>>,
}

struct Checks {
    verifier: TokenVerifier,
    domain: &'static str,
    /// The prefix of the service's paths, `/<package>.<Service>/`.
    prefix: String,
    methods: &'static [(&'static str, Access)],
    revocations: Arc<Revocations>,
}

impl ServiceAuth {
    /// No checks: every call is let through.
    pub fn open() -> ServiceAuth {
        ServiceAuth { checks: None }
    }

    /// Checks calls to `service` (its full name) of `domain`. A method missing from `methods` is
    /// refused: a new method is closed until someone says who may call it.
    pub fn new(
        verifier: TokenVerifier,
        domain: &'static str,
        service: &str,
        methods: &'static [(&'static str, Access)],
        revocations: Arc<Revocations>,
    ) -> ServiceAuth {
        let checks = Checks { verifier, domain, prefix: format!("/{service}/"), methods, revocations };
        ServiceAuth { checks: Some(Arc::new(checks)) }
    }

    /// The caller of a call to `path` with these `headers`, or the refusal. `None`: a path this
    /// layer does not guard (health, reflection), or no checks at all.
    pub fn authorize(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Caller>, Status> {
        let Some(checks) = &self.checks else { return Ok(None) };
        let Some(method) = path.strip_prefix(checks.prefix.as_str()) else { return Ok(None) };
        let access = checks
            .methods
            .iter()
            .find(|(name, _)| *name == method)
            .map(|(_, access)| *access)
            .ok_or_else(|| Status::permission_denied(format!("{method} is not open to any caller")))?;
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("a credential is required: send `authorization: Bearer <token>` metadata")
            })?;
        let claims = checks
            .verifier
            .verify(token.trim(), now_s())
            .map_err(|e| Status::unauthenticated(format!("credential refused: {e}")))?;
        match claims.typ {
            TokenType::Service => return Ok(Some(Caller::from_claims(&claims))),
            TokenType::Integrator if claims.role == Role::Integrator => {}
            _ => {
                return Err(Status::permission_denied(
                    "operators' tokens are for the gateway; a system calling this service needs an integrator credential",
                ));
            }
        }
        if !checks.revocations.is_loaded() {
            return Err(Status::unavailable("the list of revoked credentials is not loaded yet; retry"));
        }
        if checks.revocations.is_revoked(&claims.sid) {
            return Err(Status::unauthenticated("credential refused: it was revoked"));
        }
        if !claims.domains.iter().any(|d| d == checks.domain) {
            return Err(Status::permission_denied(format!(
                "credential {} may not call the {} service",
                claims.sub, checks.domain
            )));
        }
        match access {
            Access::PerCommune | Access::Reference => {}
            Access::Read | Access::WriteEverywhere if claims.all_communes => {}
            Access::Read | Access::WriteEverywhere => {
                return Err(Status::permission_denied(format!(
                    "{method} covers every commune: it needs a credential for every commune (read a commune's data through the gateway)"
                )));
            }
            Access::Act => {
                return Err(Status::permission_denied(format!(
                    "{method} is an operator's act: it goes through the gateway"
                )));
            }
        }
        Ok(Some(Caller::from_claims(&claims)))
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl<S> tower::Layer<S> for ServiceAuth {
    type Service = Authorized<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authorized { auth: self.clone(), inner }
    }
}

/// [`ServiceAuth`] around a service.
#[derive(Clone)]
pub struct Authorized<S> {
    auth: ServiceAuth,
    inner: S,
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for Authorized<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        match self.auth.authorize(request.uri().path(), request.headers()) {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                tracing::info!(path = %request.uri().path(), code = ?status.code(), reason = status.message(), "gRPC call refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// How a domain service's gRPC server is secured (flags shared by the four services).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServiceSecurityConfig {
    /// The gateway's public key (PEM, written next to its signing key as `auth-key.pem.pub`):
    /// every call must then carry a token of this installation. Without it calls are not
    /// checked, which is for development only (logged at start).
    #[arg(long, env = "VIGIE_AUTH_PUBLIC_KEY")]
    pub auth_public_key: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub tls: crate::config::GrpcServerTls,
}

impl ServiceSecurityConfig {
    /// The security of `service` (its full gRPC name) of `domain`; follows the revoked credentials
    /// on the `running` service's NATS connection until its background work stops. Waits a few seconds for the list to load, so that integrators are
    /// not turned away at start; with NATS down the service starts anyway (its outbox takes the
    /// gateway's writes) and integrators get UNAVAILABLE until the list is loaded.
    pub async fn security(
        &self,
        running: &crate::service::Service,
        domain: &'static str,
        service: &str,
        methods: &'static [(&'static str, Access)],
    ) -> anyhow::Result<crate::grpc::Security> {
        let tls = self.tls.server_config()?;
        let auth = match &self.auth_public_key {
            Some(path) => {
                let verifier = TokenVerifier::from_pem_file(path)?;
                let revocations = Arc::new(Revocations::default());
                let (nats, replicas, stop) = (running.nats().clone(), running.stream_replicas(), running.background());
                tokio::spawn(follow_revocations(nats, revocations.clone(), replicas, stop));
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while !revocations.is_loaded() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if !revocations.is_loaded() {
                    tracing::warn!("revoked credentials not loaded yet (NATS unreachable?): integrators wait");
                }
                ServiceAuth::new(verifier, domain, service, methods, revocations)
            }
            None => {
                tracing::warn!("no --auth-public-key: gRPC calls are NOT checked (development only)");
                ServiceAuth::open()
            }
        };
        tracing::info!(tls = tls.is_some(), mutual_tls = self.tls.tls_client_ca.is_some(), "gRPC security");
        Ok(crate::grpc::Security { auth, tls })
    }
}

/// The stream of revoked credentials (created by whichever process comes first), with
/// `replicas` copies (3 on a NATS cluster, as the events stream).
fn revocations_stream_config(replicas: u8) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream;
    stream::Config {
        name: proto::subject::REVOCATIONS_STREAM.to_owned(),
        subjects: vec![proto::subject::REVOKED_CREDENTIALS.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_messages_per_subject: 1,
        // Longer than the longest credential (an integrator's, a year).
        max_age: Duration::from_secs(400 * 86_400),
        num_replicas: usize::from(replicas),
        ..Default::default()
    }
}

/// Creates the revocations stream if it does not exist.
pub async fn ensure_revocations_stream(js: &async_nats::jetstream::Context, replicas: u8) -> anyhow::Result<()> {
    js.get_or_create_stream(revocations_stream_config(replicas))
        .await
        .map_err(|e| anyhow::anyhow!("cannot get or create stream {}: {e}", proto::subject::REVOCATIONS_STREAM))?;
    Ok(())
}

/// Follows the revoked credentials from the stream's start for as long as the process runs. A
/// failure (NATS down) starts it over after a pause growing to 30 s; what was loaded stays.
pub async fn follow_revocations(
    nats: async_nats::Client,
    revocations: Arc<Revocations>,
    replicas: u8,
    stop: CancellationToken,
) {
    crate::bus::follow_forever("following revoked credentials", stop, || {
        follow_revocations_once(nats.clone(), &revocations, replicas)
    })
    .await
}

async fn follow_revocations_once(
    nats: async_nats::Client,
    revocations: &Revocations,
    replicas: u8,
) -> anyhow::Result<()> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    use futures::StreamExt;
    let js = crate::bus::jetstream(&nats);
    ensure_revocations_stream(&js, replicas).await?;
    let stream = js.get_stream(proto::subject::REVOCATIONS_STREAM).await?;
    let mut consumer =
        stream.create_consumer(OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() }).await?;
    let mut pending = consumer.info().await?.num_pending;
    if pending == 0 {
        mark_loaded(revocations);
    }
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        match proto::subject::revoked_sid(&message.subject) {
            Some(sid) => revocations.revoke(sid),
            None => tracing::warn!(subject = %message.subject, "not a revocation subject; skipped"),
        }
        pending = message.info().map(|i| i.pending).unwrap_or(pending.saturating_sub(1));
        if pending == 0 {
            mark_loaded(revocations);
        }
    }
    Ok(())
}

fn mark_loaded(revocations: &Revocations) {
    if !revocations.loaded.swap(true, Ordering::AcqRel) {
        tracing::info!(
            revoked = revocations.revoked.read().map(|r| r.len()).unwrap_or(0),
            "revoked credentials loaded"
        );
    }
}

/// Adds `authorization: Bearer <token>` to every call of a client (the gateway's own tokens, an
/// integrator's credential).
#[derive(Clone)]
pub struct BearerToken {
    source: Arc<dyn Fn() -> Option<String> + Send + Sync>,
}

impl BearerToken {
    /// The same token on every call (none: calls go without a credential).
    pub fn fixed(token: Option<String>) -> BearerToken {
        BearerToken { source: Arc::new(move || token.clone()) }
    }

    /// A token asked of `source` at each call (it may renew it).
    pub fn from_fn(source: impl Fn() -> Option<String> + Send + Sync + 'static) -> BearerToken {
        BearerToken { source: Arc::new(source) }
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = (self.source)() {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("the credential is not valid header text"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A channel whose calls carry a credential.
pub type AuthChannel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>;

pub fn with_token(channel: tonic::transport::Channel, token: BearerToken) -> AuthChannel {
    tonic::service::interceptor::InterceptedService::new(channel, token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::sign_jws as sign;
    use ed25519_dalek::SigningKey;

    const METHODS: &[(&str, Access)] = &[
        ("Write", Access::PerCommune),
        ("Register", Access::WriteEverywhere),
        ("Read", Access::Read),
        ("Command", Access::Act),
        ("Catalogue", Access::Reference),
    ];

    fn claims(typ: TokenType, role: Role, communes: &[&str], domains: &[&str]) -> Claims {
        Claims {
            iss: crate::auth::ISSUER.into(),
            aud: crate::auth::AUDIENCE.into(),
            sub: "someone".into(),
            iat: now_s(),
            exp: now_s() + 60,
            typ,
            sid: "s1".into(),
            role,
            all_communes: communes.is_empty(),
            communes: communes.iter().map(|c| c.to_string()).collect(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            generation: 0,
        }
    }

    fn outcome(auth: &ServiceAuth, method: &str, token: Option<&str>) -> Result<Option<Caller>, tonic::Code> {
        let mut headers = http::HeaderMap::new();
        if let Some(token) = token {
            headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
        }
        auth.authorize(&format!("/vigie.lighting.v1.LightingService/{method}"), &headers).map_err(|s| s.code())
    }

    #[test]
    fn each_caller_gets_what_its_credential_and_the_method_allow() {
        use tonic::Code;
        let key = SigningKey::from_bytes(&[7; 32]);
        let revocations = Arc::new(Revocations::default());
        let auth = ServiceAuth::new(
            TokenVerifier::new(key.verifying_key()),
            "lighting",
            "vigie.lighting.v1.LightingService",
            METHODS,
            revocations.clone(),
        );
        let gateway = sign(&key, &claims(TokenType::Service, Role::Supervisor, &[], &[]));
        let everywhere = sign(&key, &claims(TokenType::Integrator, Role::Integrator, &[], &["lighting"]));
        let commune = sign(&key, &claims(TokenType::Integrator, Role::Integrator, &["34129"], &["lighting"]));
        let water = sign(&key, &claims(TokenType::Integrator, Role::Integrator, &[], &["water"]));
        let operator = sign(&key, &claims(TokenType::Access, Role::Supervisor, &[], &[]));
        let foreign = sign(&SigningKey::from_bytes(&[8; 32]), &claims(TokenType::Service, Role::Supervisor, &[], &[]));
        let expired =
            sign(&key, &Claims { exp: now_s() - 1, ..claims(TokenType::Service, Role::Supervisor, &[], &[]) });

        // Health and reflection are not guarded.
        let mut open = http::HeaderMap::new();
        open.insert("x", "y".parse().expect("header"));
        assert!(matches!(auth.authorize("/grpc.health.v1.Health/Check", &open), Ok(None)));
        for (token, code) in [(None, Code::Unauthenticated), (Some("junk"), Code::Unauthenticated)] {
            assert_eq!(outcome(&auth, "Read", token).err(), Some(code));
        }
        assert_eq!(outcome(&auth, "Read", Some(&foreign)).err(), Some(Code::Unauthenticated));
        assert_eq!(outcome(&auth, "Read", Some(&expired)).err(), Some(Code::Unauthenticated));
        assert_eq!(outcome(&auth, "Read", Some(&operator)).err(), Some(Code::PermissionDenied));
        // A method nobody listed is closed, even to the gateway.
        assert_eq!(outcome(&auth, "NewMethod", Some(&gateway)).err(), Some(Code::PermissionDenied));
        for method in ["Write", "Register", "Read", "Command", "Catalogue"] {
            assert!(outcome(&auth, method, Some(&gateway)).is_ok(), "{method}");
        }
        // Integrators wait until the revocations are loaded.
        assert_eq!(outcome(&auth, "Write", Some(&commune)).err(), Some(Code::Unavailable));
        revocations.loaded.store(true, Ordering::Release);
        let expected = [
            ("Write", Ok(()), Ok(())),
            ("Catalogue", Ok(()), Ok(())),
            ("Register", Ok(()), Err(Code::PermissionDenied)),
            ("Read", Ok(()), Err(Code::PermissionDenied)),
            ("Command", Err(Code::PermissionDenied), Err(Code::PermissionDenied)),
        ];
        for (method, all, one) in expected {
            assert_eq!(outcome(&auth, method, Some(&everywhere)).map(drop), all, "{method}");
            assert_eq!(outcome(&auth, method, Some(&commune)).map(drop), one, "{method}");
            assert_eq!(outcome(&auth, method, Some(&water)).err(), Some(Code::PermissionDenied), "{method}");
        }
        // The commune check of each record.
        let caller = outcome(&auth, "Write", Some(&commune)).ok().flatten();
        assert!(check_commune(caller.as_ref(), "34129").is_ok());
        assert!(check_commune(caller.as_ref(), "34172").is_err());
        assert!(check_commune(caller.as_ref(), "").is_err());
        let caller = outcome(&auth, "Write", Some(&everywhere)).ok().flatten();
        assert!(check_commune(caller.as_ref(), "34172").is_ok());
        // Revoked: refused at once.
        revocations.revoke("s1");
        assert_eq!(outcome(&auth, "Write", Some(&commune)).err(), Some(Code::Unauthenticated));
        assert!(outcome(&auth, "Write", Some(&gateway)).is_ok(), "the gateway's tokens are not revocable credentials");
    }
}
