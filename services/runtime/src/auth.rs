//! The installation's tokens, as every process checks them: compact JWS (RFC 7515) signed with
//! EdDSA over Ed25519 (RFC 8037) by the gateway's key. The gateway signs them (operators'
//! sessions, integrators' credentials, see `gateway::auth`); the domain services verify
//! integrators' writes with the public half of the key (`--auth-public-key`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Issuer and audience of every token; a token of another system is refused.
pub const ISSUER: &str = "vigie";
pub const AUDIENCE: &str = "vigie";
/// Largest token accepted (a JWS of ours is a few hundred bytes).
const MAX_TOKEN_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The metropolitan supervisor: every commune, reads and acts.
    Supervisor,
    /// A commune's operator: their communes, reads and acts.
    Operator,
    /// Reads their communes, acts on nothing.
    Viewer,
    /// Manages communes and operators; sees no operational data.
    Admin,
    /// An integrating system: reads (gRPC stream, queries) and writes field data within its
    /// communes and domains; no operator's actions.
    Integrator,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "supervisor" => Role::Supervisor,
            "operator" => Role::Operator,
            "viewer" => Role::Viewer,
            "admin" => Role::Admin,
            "integrator" => Role::Integrator,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Supervisor => "supervisor",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Admin => "admin",
            Role::Integrator => "integrator",
        }
    }

    /// Sees operational data (assets, alarms, KPIs, audit).
    pub fn reads(self) -> bool {
        !matches!(self, Role::Admin)
    }

    /// Acts as an operator: alarm actions, commands, log book.
    pub fn acts(self) -> bool {
        matches!(self, Role::Supervisor | Role::Operator)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenType {
    Access,
    Refresh,
    /// A long-lived integrator credential (revocable by its id).
    Integrator,
    /// The gateway's own token for its calls to the domain services (minutes long; it acts for
    /// its operators and passes their communes in each command).
    Service,
}

/// A token's claims (JWT registered names where there are some).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
    pub typ: TokenType,
    pub sid: String,
    pub role: Role,
    /// The scope: every commune, or these.
    pub all_communes: bool,
    pub communes: Vec<String>,
    #[serde(default)]
    pub domains: Vec<String>,
    /// Refresh tokens: the session's generation they were issued for (rotation).
    #[serde(default)]
    pub generation: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not for this system")]
    WrongAudience,
    #[error("the token is not of the right type")]
    WrongType,
    #[error("the session was closed")]
    Revoked,
}

/// The compact JWS of `claims` signed with `key` (header `{"alg":"EdDSA","typ":"JWT"}`). Only the
/// gateway holds the installation's signing key; tests sign with keys of their own.
pub fn sign_jws(key: &ed25519_dalek::SigningKey, claims: &Claims) -> String {
    use ed25519_dalek::Signer;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()).to_bytes());
    format!("{input}.{signature}")
}

/// The payload of a compact JWS signed with EdDSA by `key`. Only `alg: EdDSA` is accepted (no
/// `none`, no algorithm chosen by the token).
pub fn verify_jws(key: &VerifyingKey, token: &str) -> Result<Vec<u8>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(TokenError::Malformed)?;
    if header.get("alg").and_then(|a| a.as_str()) != Some("EdDSA") {
        return Err(TokenError::Malformed);
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
    let signature = Signature::from_slice(&signature).map_err(|_| TokenError::Malformed)?;
    let signed = &token[..token.len() - token.rsplit('.').next().map_or(0, str::len) - 1];
    key.verify(signed.as_bytes(), &signature).map_err(|_| TokenError::BadSignature)?;
    URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)
}

/// Checks tokens with the installation's public key.
#[derive(Clone)]
pub struct TokenVerifier {
    key: VerifyingKey,
}

impl TokenVerifier {
    pub fn new(key: VerifyingKey) -> TokenVerifier {
        TokenVerifier { key }
    }

    /// The public key the gateway wrote next to its signing key (`<auth-key>.pub`, PEM).
    pub fn from_pem_file(path: &Path) -> anyhow::Result<TokenVerifier> {
        let pem = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let key = VerifyingKey::from_public_key_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{}: not an Ed25519 public key: {e}", path.display()))?;
        Ok(TokenVerifier { key })
    }

    /// The claims of a token of this installation, checked: signature, issuer, audience, expiry
    /// (`now` in seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let payload = verify_jws(&self.key, token)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.iss != ISSUER || claims.aud != AUDIENCE {
            return Err(TokenError::WrongAudience);
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}
