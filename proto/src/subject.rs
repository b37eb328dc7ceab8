//! The NATS subject scheme. Every subject Vigie publishes or subscribes to is spelled here and
//! nowhere else.
//!
//! Events: `<domain>.<commune>.<kind>.<asset>`, e.g. `lighting.34172.streetlight_status.EP00001`.
//! The subject begins with the domain and the commune so that a subscription or a NATS permission
//! can be scoped to a domain, a commune, or both (`*.34172.>`); it ends with the asset (an asset
//! id is a valid subject token: ASCII letters, digits, '-', '_', ':') so that one asset's history
//! is read from the stream by its subject, without scanning its commune's events.
//!
//! Streams written before the asset token hold `<domain>.<commune>.<kind>` subjects; readers
//! accept both ([`crate::event::CheckedEvent::published_on`]).

use crate::ids::{AssetId, CommuneId};
use crate::v1::Domain;

/// The JetStream stream that holds every domain event.
pub const EVENTS_STREAM: &str = "VIGIE_EVENTS";

/// The JetStream stream of revoked credentials: one message per revoked token id (the last per
/// subject is kept), published by the gateway, followed by every domain service so that a
/// revoked integrator credential stops working there too.
pub const REVOCATIONS_STREAM: &str = "VIGIE_REVOCATIONS";

/// Every subject of the revocations stream.
pub const REVOKED_CREDENTIALS: &str = "auth.revoked.*";

/// The subject announcing that the token id `sid` is revoked; none for an id that is not a
/// plain subject token (the gateway's ids are URL-safe base64).
pub fn revoked_credential(sid: &str) -> Option<String> {
    let plain =
        !sid.is_empty() && sid.len() <= 64 && sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plain.then(|| format!("auth.revoked.{sid}"))
}

/// The token id a revocation subject names.
pub fn revoked_sid(subject: &str) -> Option<&str> {
    subject.strip_prefix("auth.revoked.").filter(|sid| revoked_credential(sid).is_some())
}

/// The key-value bucket that holds a domain service's state for its standby instances (its
/// stream is `KV_<bucket>`; keys `<tree>.k<hex key>`): `VIGIE_STATE_LIGHTING` and so on. Only
/// that service's NATS user may touch it (deploy/nats/authorization.conf).
pub fn state_bucket(domain: Domain) -> String {
    Unit::whole(domain).state_bucket()
}

/// What one domain service instance (with its standbys) serves: its whole domain, or a shard of
/// it, a named set of communes (`--shard`). The unit's name spells everything the instances of
/// one unit share and the instances of two units must not: the lease key, the state bucket, the
/// outbox's reader consumer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Unit {
    pub domain: Domain,
    /// `None`: the whole domain.
    pub shard: Option<Shard>,
}

/// A shard of a domain service: its name and its communes (never empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shard {
    pub name: String,
    pub communes: Vec<CommuneId>,
}

/// A shard's name: 1 to 16 lowercase ASCII letters and digits (it becomes part of a consumer's,
/// a key's and a stream's name, where `-`, `_` and `.` already mean something).
pub fn check_shard_name(name: &str) -> Result<(), String> {
    let ok = (1..=16).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok { Ok(()) } else { Err(format!("shard name {name:?}: 1 to 16 lowercase letters and digits")) }
}

impl Unit {
    pub fn whole(domain: Domain) -> Unit {
        Unit { domain, shard: None }
    }

    /// `lighting`, or `lighting-est` for the shard `est`: the key of its lease.
    pub fn name(&self) -> String {
        match &self.shard {
            None => self.domain.token().to_owned(),
            Some(shard) => format!("{}-{}", self.domain.token(), shard.name),
        }
    }

    /// The subjects of the events it publishes: its domain's, or its communes' of its domain (a
    /// shard's NATS user may read back only those: one filter each).
    pub fn event_filters(&self) -> Vec<String> {
        match &self.shard {
            None => vec![domain_events(self.domain)],
            Some(shard) => shard.communes.iter().map(|c| format!("{}.{c}.>", self.domain.token())).collect(),
        }
    }

    /// `VIGIE_STATE_LIGHTING`, or `VIGIE_STATE_LIGHTING_EST` for a shard.
    pub fn state_bucket(&self) -> String {
        format!("VIGIE_STATE_{}", self.name().replace('-', "_").to_ascii_uppercase())
    }

    /// The durable name of the consumer with which its outbox reads back what it published.
    pub fn outbox_reader(&self) -> String {
        format!("outbox-{}", self.name())
    }
}

/// The key-value bucket of the domain services' leases: which instance of each is active (key:
/// the domain's token). Its `max_age` is the lease's time to live.
pub const LEASES_BUCKET: &str = "VIGIE_LEASES";

/// The inbox prefix of a NATS user: replies to its requests (JetStream acknowledgements, API
/// answers, what its consumers deliver) come under `<prefix>.>`, where NATS lets only that user
/// subscribe (deploy/nats/authorization.conf).
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// Every domain that publishes events, in subject order (`ops`: operators' actions, published by
/// the gateway).
pub const DOMAINS: [Domain; 5] = [Domain::Transport, Domain::Lighting, Domain::Water, Domain::Reports, Domain::Ops];

impl Domain {
    /// The domain's subject token and its name in the live protocol.
    pub fn token(self) -> &'static str {
        match self {
            Domain::Unspecified => "unspecified",
            Domain::Transport => "transport",
            Domain::Lighting => "lighting",
            Domain::Water => "water",
            Domain::Reports => "reports",
            Domain::Ops => "ops",
        }
    }

    pub fn from_token(token: &str) -> Option<Domain> {
        DOMAINS.into_iter().find(|d| d.token() == token)
    }
}

/// The subject of one event. `kind` comes from [`crate::event::EventKind::token`].
pub fn event(domain: Domain, commune: &CommuneId, kind: &str, asset: &AssetId) -> String {
    format!("{}.{}.{}.{}", domain.token(), commune, kind, asset.as_str())
}

/// Whether `subject` is [`event`]'s for these, or the one of a stream written before the asset
/// token (`<domain>.<commune>.<kind>`). Token by token, building no string: every event a
/// consumer reads is checked so.
pub fn is_event(subject: &str, domain: Domain, commune: &CommuneId, kind: &str, asset: &AssetId) -> bool {
    let mut tokens = subject.split('.');
    let head =
        tokens.next() == Some(domain.token()) && tokens.next() == Some(commune.as_str()) && tokens.next() == Some(kind);
    head && match (tokens.next(), tokens.next()) {
        (None, _) => true,
        (Some(token), None) => token == asset.as_str(),
        _ => false,
    }
}

/// The subjects bound to the events stream: one wildcard per domain.
pub fn events_stream_subjects() -> Vec<String> {
    DOMAINS.iter().map(|d| format!("{}.>", d.token())).collect()
}

/// Every event of one commune, all domains.
pub fn commune_events(commune: &CommuneId) -> String {
    format!("*.{commune}.>")
}

/// Every event of one domain, all communes (what a domain service may publish).
pub fn domain_events(domain: Domain) -> String {
    format!("{}.>", domain.token())
}

/// One kind of event of one domain, all communes and assets (e.g. every lighting `alarm_raised`).
pub fn kind_events(domain: Domain, kind: &str) -> String {
    format!("{}.*.{kind}.*", domain.token())
}

/// One kind of event of one domain in streams written before the asset token.
pub fn legacy_kind_events(domain: Domain, kind: &str) -> String {
    format!("{}.*.{kind}", domain.token())
}

/// Every event of one asset of a domain in one commune, all kinds.
pub fn asset_events_in(domain: Domain, commune: &CommuneId, asset: &AssetId) -> String {
    format!("{}.{}.*.{}", domain.token(), commune, asset.as_str())
}

/// Every event of one asset of a domain, all communes (an asset can change commune) and kinds.
pub fn asset_events(domain: Domain, asset: &AssetId) -> String {
    format!("{}.*.*.{}", domain.token(), asset.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_names_its_own_lease_bucket_and_reader() {
        let whole = Unit::whole(Domain::Lighting);
        assert_eq!((whole.name(), whole.state_bucket()), ("lighting".into(), "VIGIE_STATE_LIGHTING".into()));
        assert_eq!(whole.outbox_reader(), "outbox-lighting");
        assert_eq!(whole.event_filters(), ["lighting.>"]);
        let communes = vec![CommuneId::parse("34129").unwrap(), CommuneId::parse("34057").unwrap()];
        let est = Unit { domain: Domain::Lighting, shard: Some(Shard { name: "est2".into(), communes }) };
        assert_eq!(est.name(), "lighting-est2");
        assert_eq!(est.event_filters(), ["lighting.34129.>", "lighting.34057.>"]);
        assert_eq!(est.state_bucket(), "VIGIE_STATE_LIGHTING_EST2");
        assert_eq!(est.outbox_reader(), "outbox-lighting-est2");
        for bad in ["", "Est", "e-st", "e.st", "e_st", "abcdefghijklmnopq"] {
            assert!(check_shard_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_shard_name("nord2").is_ok());
    }

    #[test]
    fn scheme() {
        let c = CommuneId::parse("34172").unwrap();
        let lamp = AssetId::parse("EP:00-1_a").unwrap();
        assert_eq!(
            event(Domain::Lighting, &c, "streetlight_status", &lamp),
            "lighting.34172.streetlight_status.EP:00-1_a"
        );
        let is = |subject: &str| is_event(subject, Domain::Lighting, &c, "streetlight_status", &lamp);
        assert!(is(&event(Domain::Lighting, &c, "streetlight_status", &lamp)));
        assert!(is("lighting.34172.streetlight_status"), "a stream written before the asset token");
        for other in [
            "lighting.34172.streetlight_status.EP2",
            "lighting.34129.streetlight_status.EP:00-1_a",
            "water.34172.streetlight_status.EP:00-1_a",
            "lighting.34172.streetlight_fault.EP:00-1_a",
            "lighting.34172.streetlight_status.EP:00-1_a.x",
            "lighting.34172",
        ] {
            assert!(!is(other), "{other}");
        }
        assert_eq!(kind_events(Domain::Lighting, "alarm_raised"), "lighting.*.alarm_raised.*");
        assert_eq!(legacy_kind_events(Domain::Lighting, "alarm_raised"), "lighting.*.alarm_raised");
        assert_eq!(asset_events(Domain::Lighting, &lamp), "lighting.*.*.EP:00-1_a");
        assert_eq!(asset_events_in(Domain::Lighting, &c, &lamp), "lighting.34172.*.EP:00-1_a");
        assert_eq!(commune_events(&c), "*.34172.>");
        assert_eq!(domain_events(Domain::Water), "water.>");
        assert_eq!(events_stream_subjects(), ["transport.>", "lighting.>", "water.>", "reports.>", "ops.>"]);
        for d in DOMAINS {
            assert_eq!(Domain::from_token(d.token()), Some(d));
        }
        assert_eq!(Domain::from_token("unspecified"), None);
    }
}
