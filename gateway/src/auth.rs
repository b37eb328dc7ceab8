//! Who may see and do what: operators with a role and a scope (the communes they may see), their
//! passwords (argon2id), and the tokens that carry them (JWS, EdDSA over Ed25519, RFC 8037).
//!
//! - The signing key is generated per installation at first start (`--auth-key`, PKCS#8 PEM, mode
//!   0600); there is no default key. Its public half is written next to it for the services,
//!   which check integrators' tokens with it.
//! - An access token lives minutes (`--access-token-ttl`); a refresh token, a shift
//!   (`--session-ttl`). Each refresh rotates the refresh token; presenting an old one revokes the
//!   session (it was stolen or replayed). Logout revokes the session: its access tokens stop
//!   working at once, and its open WebSockets are closed.
//! - [`Scope::narrow`] is the one place that turns what a request asks for into what the caller
//!   may see; every outgoing path of the gateway builds its `Filter` with it.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
pub use runtime::auth::{AUDIENCE, Claims, ISSUER, Role, TokenError, TokenType, TokenVerifier, verify_jws};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A password shorter than this is refused when an operator is created.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// The communes a principal may see and act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Communes(BTreeSet<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutOfScope {
    #[error("commune {0} is outside your communes")]
    Commune(String),
    #[error("you have no commune")]
    NoCommune,
}

impl Scope {
    pub fn allows(&self, commune: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Communes(set) => set.contains(commune),
        }
    }

    /// The communes a request may see, as a filter's list (empty = every commune): what it asked
    /// for when all of it is in scope, else a refusal; everything in scope when it asked for
    /// nothing. Never an empty list for a limited scope (that would mean "all").
    pub fn narrow(&self, requested: &[String]) -> Result<Vec<String>, OutOfScope> {
        match self {
            Scope::All => Ok(requested.to_vec()),
            Scope::Communes(set) if set.is_empty() => Err(OutOfScope::NoCommune),
            Scope::Communes(set) => {
                if let Some(outside) = requested.iter().find(|c| !set.contains(*c)) {
                    return Err(OutOfScope::Commune(outside.chars().take(32).collect()));
                }
                Ok(if requested.is_empty() { set.iter().cloned().collect() } else { requested.to_vec() })
            }
        }
    }

    /// The list the services' `allowed_communes` take (empty = no limit).
    pub fn allowed_communes(&self) -> Vec<String> {
        match self {
            Scope::All => Vec::new(),
            Scope::Communes(set) => set.iter().cloned().collect(),
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub login: String,
    pub role: Role,
    pub scope: Scope,
    /// The session (operators) or the credential (integrators) the token belongs to.
    pub sid: String,
    /// When the token expires (seconds since the epoch).
    pub expires_at: u64,
    /// Integrators: the domains they may write (empty = none).
    pub domains: Vec<String>,
}

/// A token's scope.
pub fn scope_of(claims: &Claims) -> Scope {
    if claims.all_communes { Scope::All } else { Scope::Communes(claims.communes.iter().cloned().collect()) }
}

/// The installation's signing key.
pub struct Keys {
    signing: SigningKey,
    verifier: TokenVerifier,
}

impl Keys {
    /// Reads the key at `path`, or generates one there (and its public half at `<path>.pub`)
    /// when the file does not exist.
    pub fn load_or_generate(path: &Path) -> anyhow::Result<Keys> {
        Keys::load_or(path, true)
    }

    /// Reads the key at `path`, which must exist (an administration command of a running
    /// deployment never makes a key of its own).
    pub fn load(path: &Path) -> anyhow::Result<Keys> {
        Keys::load_or(path, false)
    }

    fn load_or(path: &Path, generate: bool) -> anyhow::Result<Keys> {
        use anyhow::Context;
        if !generate && !path.exists() {
            anyhow::bail!("no signing key at {} (--auth-key)", path.display());
        }
        let signing = if path.exists() {
            let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 key: {e}", path.display()))?
        } else {
            let signing = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let pem = signing.to_pkcs8_pem(Default::default()).map_err(|e| anyhow::anyhow!("encoding the key: {e}"))?;
            write_private(path, pem.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated this installation's signing key");
            signing
        };
        let verifying = signing.verifying_key();
        let public = verifying.to_public_key_pem(Default::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
        // Written unless it is there already (a mounted Secret is read-only and holds both).
        let public_path = public_key_path(path);
        if std::fs::read_to_string(&public_path).ok().as_deref() != Some(public.as_str()) {
            std::fs::write(&public_path, public).with_context(|| format!("writing {}", public_path.display()))?;
        }
        Ok(Keys { signing, verifier: TokenVerifier::new(verifying) })
    }

    #[cfg(test)]
    fn from_seed(seed: [u8; 32]) -> Keys {
        let signing = SigningKey::from_bytes(&seed);
        Keys { verifier: TokenVerifier::new(signing.verifying_key()), signing }
    }

    /// The compact JWS of `claims` (header `{"alg":"EdDSA","typ":"JWT"}`).
    pub fn sign(&self, claims: &Claims) -> String {
        runtime::auth::sign_jws(&self.signing, claims)
    }

    /// The claims of a token this installation signed, checked: signature, issuer, audience,
    /// expiry (`now` in seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        self.verifier.verify(token, now)
    }
}

/// The file holding the public half of the key at `path`.
pub fn public_key_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
        .to_string())
}

pub fn password_matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A stored operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorRecord {
    pub login: String,
    pub role: Role,
    pub all_communes: bool,
    pub communes: Vec<String>,
    /// Integrators: the domains they may write.
    #[serde(default)]
    pub domains: Vec<String>,
    pub password_hash: String,
    pub created_at: u64,
}

/// A login session (operators), or an integrator's credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub sid: String,
    pub login: String,
    pub generation: u32,
    pub expires_at: u64,
    pub revoked: bool,
    /// A random number of each write to the access directory: a write whose answer was lost
    /// (a timeout during a NATS election) is recognised as ours when read back.
    #[serde(default)]
    pub rotation: u64,
}

/// The gateway's authority: keys, the sessions revoked, login throttling.
pub struct Authority {
    pub keys: Keys,
    pub access_ttl: Duration,
    pub session_ttl: Duration,
    revoked: RwLock<HashSet<String>>,
    /// Password checks and failed attempts (see `throttle`).
    pub logins: crate::throttle::LoginThrottle,
    service_token: Mutex<Option<(String, u64)>>,
    /// Announces each revoked session, so that its open WebSockets are closed.
    pub revocations: tokio::sync::broadcast::Sender<String>,
}

/// When a token expiring at `expires_at` (seconds since the epoch) stops being valid, on tokio's
/// clock.
pub fn deadline(expires_at: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(expires_at.saturating_sub(now_s()))
}

pub fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Authority {
    pub fn new(keys: Keys, access_ttl: Duration, session_ttl: Duration, revoked: HashSet<String>) -> Authority {
        Authority {
            keys,
            access_ttl,
            session_ttl,
            revoked: RwLock::new(revoked),
            logins: crate::throttle::LoginThrottle::default(),
            service_token: Mutex::new(None),
            revocations: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// The principal an access (or integrator) token names.
    pub fn principal(&self, token: &str) -> Result<Principal, TokenError> {
        let claims = self.keys.verify(token, now_s())?;
        // Refresh tokens only refresh; the gateway's own service tokens are for the services.
        if !matches!(claims.typ, TokenType::Access | TokenType::Integrator) {
            return Err(TokenError::WrongType);
        }
        if self.is_revoked(&claims.sid) {
            return Err(TokenError::Revoked);
        }
        Ok(Principal {
            login: claims.sub.clone(),
            role: claims.role,
            scope: scope_of(&claims),
            sid: claims.sid.clone(),
            expires_at: claims.exp,
            domains: claims.domains.clone(),
        })
    }

    /// The gateway's own token for its calls to the domain services: minted when the last one
    /// is past half its life (five minutes), so that a stolen one is short-lived.
    pub fn service_token(&self) -> String {
        const LIFE: u64 = 300;
        let now = now_s();
        let mut cached = self.service_token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, exp)) = cached.as_ref()
            && *exp > now + LIFE / 2
        {
            return token.clone();
        }
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "gateway".into(),
            iat: now,
            exp: now + LIFE,
            typ: TokenType::Service,
            sid: new_sid(),
            role: Role::Supervisor,
            all_communes: true,
            communes: Vec::new(),
            domains: Vec::new(),
            generation: 0,
        };
        let token = self.keys.sign(&claims);
        *cached = Some((token.clone(), claims.exp));
        token
    }

    pub fn is_revoked(&self, sid: &str) -> bool {
        self.revoked.read().map(|r| r.contains(sid)).unwrap_or(true)
    }

    pub fn revoke(&self, sid: &str) {
        if let Ok(mut r) = self.revoked.write() {
            r.insert(sid.to_owned());
        }
        let _ = self.revocations.send(sid.to_owned());
    }

    /// Claims for an operator's session.
    pub fn claims(&self, operator: &OperatorRecord, session: &SessionRecord, typ: TokenType) -> Claims {
        let now = now_s();
        let exp = match typ {
            TokenType::Access => (now + self.access_ttl.as_secs()).min(session.expires_at),
            TokenType::Refresh | TokenType::Integrator | TokenType::Service => session.expires_at,
        };
        Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: operator.login.clone(),
            iat: now,
            exp,
            typ,
            sid: session.sid.clone(),
            role: operator.role,
            all_communes: operator.all_communes,
            communes: operator.communes.clone(),
            domains: operator.domains.clone(),
            generation: session.generation,
        }
    }
}

/// A login: 1 to 64 characters among letters, digits, `.`, `-`, `_`, `@`.
pub fn check_login(login: &str) -> Result<(), String> {
    let ok = !login.is_empty()
        && login.len() <= 64
        && login.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'));
    if ok { Ok(()) } else { Err("a login is 1 to 64 letters, digits, '.', '-', '_' or '@'".into()) }
}

/// A new session id (also the integrator credential's id).
/// Announces revoked sessions and credentials on NATS (`auth.revoked.<sid>`), so that the
/// domain services refuse them too: first every unexpired one `revoked_now` lists (again at each
/// start, so that a stream lost or recreated is refilled; announcing twice is harmless), then each
/// one as it is revoked. A publish is retried until JetStream acknowledges it.
pub async fn announce_revocations(
    nats: async_nats::Client,
    revoked_now: impl Fn() -> Vec<String>,
    mut revocations: tokio::sync::broadcast::Receiver<String>,
    replicas: u8,
    stop: tokio_util::sync::CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    let js = runtime::bus::jetstream(&nats);
    let pause = || async {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => true,
            _ = stop.cancelled() => false,
        }
    };
    while let Err(e) = runtime::grpc_auth::ensure_revocations_stream(&js, replicas).await {
        tracing::warn!(error = format!("{e:#}"), "cannot set up the revocations stream; retrying");
        if !pause().await {
            return;
        }
    }
    let announce = |sid: String| {
        let js = &js;
        async move {
            let Some(subject) = proto::subject::revoked_credential(&sid) else {
                tracing::error!("a session id that is not a subject token; not announced");
                return true;
            };
            loop {
                let acknowledged = match js.publish(subject.clone(), bytes::Bytes::new()).await {
                    Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match acknowledged {
                    Ok(()) => return true,
                    Err(error) => tracing::warn!(error, "announcing a revocation failed; retrying"),
                }
                if !pause().await {
                    return false;
                }
            }
        }
    };
    let mut backlog = revoked_now();
    tracing::info!(revoked = backlog.len(), "announcing revoked sessions and credentials");
    loop {
        for sid in std::mem::take(&mut backlog) {
            if !announce(sid).await {
                return;
            }
        }
        tokio::select! {
            received = revocations.recv() => match received {
                Ok(sid) => backlog.push(sid),
                // Missed some: announce them all again.
                Err(RecvError::Lagged(_)) => backlog = revoked_now(),
                Err(RecvError::Closed) => return,
            },
            _ = stop.cancelled() => return,
        }
    }
}

pub fn new_sid() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 18]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(typ: TokenType, exp: u64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: "op".into(),
            iat: 1,
            exp,
            typ,
            sid: "s1".into(),
            role: Role::Operator,
            all_communes: false,
            communes: vec!["34172".into()],
            domains: vec![],
            generation: 0,
        }
    }

    /// RFC 8037, appendix A.4: the Ed25519 signature of the example JWS, so that our tokens are
    /// standard JWS any library verifies.
    #[test]
    fn signs_like_rfc_8037() {
        let seed: [u8; 32] =
            URL_SAFE_NO_PAD.decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A").unwrap().try_into().unwrap();
        let key = SigningKey::from_bytes(&seed);
        assert_eq!(
            URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let signature = URL_SAFE_NO_PAD.encode(ed25519_dalek::Signer::sign(&key, input.as_bytes()).to_bytes());
        assert_eq!(signature, "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg");
        let token = format!("{input}.{signature}");
        assert_eq!(verify_jws(&key.verifying_key(), &token).unwrap(), b"Example of Ed25519 signing");
    }

    #[test]
    fn tokens_are_checked() {
        let keys = Keys::from_seed([7; 32]);
        let token = keys.sign(&claims(TokenType::Access, 1000));
        assert_eq!(keys.verify(&token, 999).unwrap().sub, "op");
        assert_eq!(keys.verify(&token, 1000), Err(TokenError::Expired));
        // Another installation's key.
        assert_eq!(Keys::from_seed([8; 32]).verify(&token, 1), Err(TokenError::BadSignature));
        // A payload changed after signing.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&Claims { all_communes: true, ..claims(TokenType::Access, 1000) }).unwrap());
        parts[1] = &forged;
        assert_eq!(keys.verify(&parts.join("."), 1), Err(TokenError::BadSignature));
        // alg none, or anything but EdDSA.
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), token.split('.').nth(1).unwrap());
        assert_eq!(keys.verify(&none, 1), Err(TokenError::Malformed));
        for junk in ["", "a.b", "a.b.c.d", "...", &"x".repeat(5000)] {
            assert_eq!(keys.verify(junk, 1), Err(TokenError::Malformed), "{junk:.20}");
        }
        // Another system's token.
        let other = keys.sign(&Claims { aud: "thingsboard".into(), ..claims(TokenType::Access, 1000) });
        assert_eq!(keys.verify(&other, 1), Err(TokenError::WrongAudience));
    }

    #[test]
    fn refresh_tokens_and_revoked_sessions_give_no_principal() {
        let authority =
            Authority::new(Keys::from_seed([7; 32]), Duration::from_secs(60), Duration::from_secs(600), HashSet::new());
        let far = now_s() + 100;
        let refresh = authority.keys.sign(&claims(TokenType::Refresh, far));
        assert_eq!(authority.principal(&refresh).unwrap_err(), TokenError::WrongType);
        let access = authority.keys.sign(&claims(TokenType::Access, far));
        let principal = authority.principal(&access).unwrap();
        assert_eq!(principal.scope, Scope::Communes(["34172".to_string()].into()));
        let mut closed = authority.revocations.subscribe();
        authority.revoke("s1");
        assert_eq!(authority.principal(&access).unwrap_err(), TokenError::Revoked);
        assert_eq!(closed.try_recv().unwrap(), "s1");
    }

    #[test]
    fn passwords_are_hashed_with_a_salt() {
        let a = hash_password("correct horse battery").unwrap();
        let b = hash_password("correct horse battery").unwrap();
        assert_ne!(a, b, "salted");
        assert!(a.starts_with("$argon2id$"));
        assert!(password_matches("correct horse battery", &a));
        assert!(!password_matches("correct horse batterz", &a));
        assert!(!password_matches("x", "not a hash"));
    }

    #[test]
    fn login_names_are_plain() {
        assert!(check_login("jean.dupont@montpellier").is_ok());
        for bad in ["", "a b", "é", "a/b", &"a".repeat(65), "a\n"] {
            assert!(check_login(bad).is_err(), "{bad:?}");
        }
    }

    /// Property tests of the one scope filter: over generated scopes, requests and commune ids
    /// (real ones, wildcards, subjects' dots, Unicode, empty, case variants), whatever the filter
    /// built from a scope lets through belongs to the scope.
    mod scope_properties {
        use super::super::*;
        use proptest::prelude::*;
        use proto::live::{Filter, KpiState};

        /// Commune ids as attackers and typos write them.
        fn commune_id() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => prop::sample::select(vec!["34172", "34129", "2A004", "2B033", "34022", "75056"]).prop_map(str::to_owned),
                1 => Just("*".to_owned()),
                1 => Just(">".to_owned()),
                1 => Just("34.*".to_owned()),
                1 => Just("34172.>".to_owned()),
                1 => Just(String::new()),
                1 => Just("2a004".to_owned()),
                1 => Just(" 34172".to_owned()),
                1 => Just("３４１７２".to_owned()),
                1 => Just("34172\u{0}".to_owned()),
                1 => "\\PC{0,12}",
            ]
        }

        fn scope() -> impl Strategy<Value = Scope> {
            prop_oneof![
                1 => Just(Scope::All),
                4 => prop::collection::btree_set(commune_id(), 0..4).prop_map(Scope::Communes),
            ]
        }

        fn kpi(commune: &str) -> KpiState {
            KpiState {
                domain: "lighting".into(),
                commune: commune.into(),
                at: String::new(),
                values: Default::default(),
                history: Vec::new(),
            }
        }

        proptest! {
            #[test]
            fn a_narrowed_filter_lets_through_only_the_scope(
                scope in scope(),
                requested in prop::collection::vec(commune_id(), 0..4),
                item in commune_id(),
            ) {
                match scope.narrow(&requested) {
                    Ok(communes) => {
                        if let Scope::Communes(set) = &scope {
                            prop_assert!(!communes.is_empty(), "a limited scope never becomes 'every commune'");
                            prop_assert!(communes.iter().all(|c| set.contains(c)));
                        }
                        let filter = Filter { communes, ..Default::default() };
                        if filter.allows_kpi(&kpi(&item)) {
                            prop_assert!(scope.allows(&item), "{item:?} let through for {scope:?}");
                        }
                    }
                    Err(OutOfScope::NoCommune) => prop_assert_eq!(&scope, &Scope::Communes(Default::default())),
                    Err(OutOfScope::Commune(_)) => {
                        prop_assert!(requested.iter().any(|c| !scope.allows(c)));
                    }
                }
            }

            #[test]
            fn matching_is_exact(scope in scope(), item in commune_id()) {
                // No prefix, pattern, case or Unicode folding: only the very id.
                if let Scope::Communes(set) = &scope {
                    prop_assert_eq!(scope.allows(&item), set.contains(&item));
                }
            }
        }
    }
}
