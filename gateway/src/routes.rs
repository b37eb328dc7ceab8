//! Where the gateway sends a domain's commands: to the one unit of the domain (`--lighting-url`),
//! or, for a territory too large for one instance, to the shards that serve the communes a
//! command may reach (`--lighting-shard <communes>=<urls>`, one per shard: the routing table).
//! The same table tells integrators which endpoint serves their communes
//! (`GET /api/v1/endpoints`).

use runtime::grpc_auth::AuthChannel;
use serde::Serialize;
use std::collections::BTreeSet;

/// One unit of a domain: its communes (`None`: every commune), its URLs, its channel.
#[derive(Clone)]
struct Unit {
    communes: Option<BTreeSet<String>>,
    urls: Vec<String>,
    channel: AuthChannel,
}

/// A domain's routing table. Empty: the domain is not configured (its commands get 503).
#[derive(Clone, Default)]
pub struct Routes {
    units: Vec<Unit>,
}

/// A shard as configured: its communes and its URLs (comma-separated: an instance and its
/// standbys).
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRoute {
    pub communes: Vec<String>,
    pub urls: String,
}

/// Parses `<INSEE>[,<INSEE>…]=<url>[,<url>…]`.
pub fn parse_shard(text: &str) -> Result<ShardRoute, String> {
    let (communes, urls) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: a shard is <communes>=<urls>, e.g. 34172,34057=http://host:50061"))?;
    let mut list = Vec::new();
    for c in communes.split(',').map(str::trim) {
        let id = proto::ids::CommuneId::parse(c).map_err(|e| format!("{text:?}: {e}"))?;
        if !list.contains(&id.to_string()) {
            list.push(id.to_string());
        }
    }
    if urls.split(',').all(|u| u.trim().is_empty()) {
        return Err(format!("{text:?}: no URL after '='"));
    }
    Ok(ShardRoute { communes: list, urls: urls.trim().to_owned() })
}

/// What an integrator is told: the endpoint(s) that serve these communes.
#[derive(Debug, Serialize, PartialEq)]
pub struct Endpoint {
    /// The communes this endpoint serves, within the caller's (absent: every commune).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub communes: Option<Vec<String>>,
    /// gRPC URLs: an active instance and its standbys (the one that answers is the active one).
    pub urls: Vec<String>,
}

fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect()
}

impl Routes {
    /// The whole domain at `urls`.
    pub fn whole(urls: &str, connect: impl Fn(&str) -> anyhow::Result<AuthChannel>) -> anyhow::Result<Routes> {
        Ok(Routes { units: vec![Unit { communes: None, urls: split_urls(urls), channel: connect(urls)? }] })
    }

    /// The domain's shards. A commune belongs to at most one.
    pub fn sharded(
        shards: &[ShardRoute],
        connect: impl Fn(&str) -> anyhow::Result<AuthChannel>,
    ) -> anyhow::Result<Routes> {
        let mut seen = BTreeSet::new();
        let mut units = Vec::new();
        for shard in shards {
            if let Some(twice) = shard.communes.iter().find(|c| !seen.insert((*c).clone())) {
                anyhow::bail!("commune {twice} is in two shards");
            }
            units.push(Unit {
                communes: Some(shard.communes.iter().cloned().collect()),
                urls: split_urls(&shard.urls),
                channel: connect(&shard.urls)?,
            });
        }
        Ok(Routes { units })
    }

    pub fn is_configured(&self) -> bool {
        !self.units.is_empty()
    }

    /// The channel of a domain that is one unit (not sharded).
    pub fn whole_channel(&self) -> Option<AuthChannel> {
        match self.units.as_slice() {
            [Unit { communes: None, channel, .. }] => Some(channel.clone()),
            _ => None,
        }
    }

    /// The units a request limited to `allowed` (empty: every commune) reaches, each with the
    /// communes it may reach there (empty: every commune; never empty for a shard).
    pub fn reaching(&self, allowed: &[String]) -> Vec<(AuthChannel, Vec<String>)> {
        self.units
            .iter()
            .filter_map(|unit| match (&unit.communes, allowed.is_empty()) {
                (None, _) => Some((unit.channel.clone(), allowed.to_vec())),
                (Some(served), true) => Some((unit.channel.clone(), served.iter().cloned().collect())),
                (Some(served), false) => {
                    let both: Vec<String> = allowed.iter().filter(|c| served.contains(*c)).cloned().collect();
                    (!both.is_empty()).then(|| (unit.channel.clone(), both))
                }
            })
            .collect()
    }

    /// The endpoints serving the communes `allows` lets through (a unit of every commune: to
    /// anyone).
    pub fn endpoints(&self, allows: impl Fn(&str) -> bool) -> Vec<Endpoint> {
        self.units
            .iter()
            .filter_map(|unit| match &unit.communes {
                None => Some(Endpoint { communes: None, urls: unit.urls.clone() }),
                Some(served) => {
                    let mine: Vec<String> = served.iter().filter(|c| allows(c)).cloned().collect();
                    (!mine.is_empty()).then(|| Endpoint { communes: Some(mine), urls: unit.urls.clone() })
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(_: &str) -> anyhow::Result<AuthChannel> {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        Ok(runtime::grpc_auth::with_token(channel, runtime::grpc_auth::BearerToken::from_fn(|| None)))
    }

    #[test]
    fn a_shard_is_communes_then_urls() {
        assert_eq!(
            parse_shard("34172, 34057=http://a:1,http://b:1").unwrap(),
            ShardRoute { communes: vec!["34172".into(), "34057".into()], urls: "http://a:1,http://b:1".into() }
        );
        assert!(parse_shard("34172").unwrap_err().contains("<communes>=<urls>"));
        assert!(parse_shard("34172=").unwrap_err().contains("no URL"));
        assert!(parse_shard("34.72=http://a:1").is_err());
    }

    #[tokio::test]
    async fn commands_reach_the_shards_of_their_communes() {
        let shard = |communes: &[&str], url: &str| ShardRoute {
            communes: communes.iter().map(|c| c.to_string()).collect(),
            urls: url.into(),
        };
        let routes =
            Routes::sharded(&[shard(&["00001", "00002"], "http://a:1"), shard(&["00003"], "http://b:1")], channel)
                .unwrap();
        let reach = |allowed: &[&str]| -> Vec<Vec<String>> {
            let allowed: Vec<String> = allowed.iter().map(|c| c.to_string()).collect();
            routes.reaching(&allowed).into_iter().map(|(_, communes)| communes).collect()
        };
        assert_eq!(reach(&[]), [vec!["00001".to_owned(), "00002".into()], vec!["00003".into()]], "every commune");
        assert_eq!(reach(&["00002"]), [vec!["00002".to_owned()]]);
        assert_eq!(reach(&["00003", "00001"]), [vec!["00001".to_owned()], vec!["00003".into()]]);
        assert!(reach(&["00009"]).is_empty(), "a commune no shard serves");
        assert!(
            Routes::sharded(&[shard(&["00001"], "http://a:1"), shard(&["00001"], "http://b:1")], channel).is_err(),
            "a commune in two shards"
        );
        let told = routes.endpoints(|c| c == "00002");
        assert_eq!(told, [Endpoint { communes: Some(vec!["00002".into()]), urls: vec!["http://a:1".into()] }]);
        assert_eq!(routes.endpoints(|_| true).len(), 2);
    }
}
