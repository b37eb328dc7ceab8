//! Citizens reporting: Poisson arrivals of reports by category at a realistic daily rate, placed on
//! the territory's real streets (lamp reports at real streetlights), a share of them duplicates of
//! a recent report, sent to the reports service over its gRPC API.

use proto::reports::reports_service_client::ReportsServiceClient;
use proto::reports::{Contact, CreateRequestRequest, ListServicesRequest, ServiceDefinition};
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use territory::streets::StreetIndex;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct ReportSettings {
    pub url: String,
    pub grpc: crate::GrpcAccess,
    /// Reports per day over the territory (OnDijon receives 700 to 1,000).
    pub per_day: f64,
    /// Share of reports that repeat a recent one (same problem, a few metres away).
    pub duplicate_share: f64,
    pub seed: u64,
}

/// (service code, share of reports, descriptions).
const CATEGORIES: [(&str, f64, &[&str]); 7] = [
    (
        "voirie-nid-de-poule",
        0.28,
        &["Nid-de-poule profond sur la chaussée", "Trottoir défoncé, danger pour les poussettes"],
    ),
    (
        "proprete-depot-sauvage",
        0.25,
        &["Dépôt de sacs poubelle au pied du conteneur", "Encombrants abandonnés sur le trottoir"],
    ),
    ("eclairage-panne", 0.15, &["Lampadaire éteint depuis plusieurs soirs", "Le lampadaire clignote"]),
    ("mobilier-urbain", 0.10, &["Banc cassé", "Potelet arraché"]),
    ("espaces-verts", 0.09, &["Branche menaçant de tomber", "Pelouse non tondue"]),
    ("signalisation", 0.08, &["Panneau stop tordu", "Feu tricolore en panne"]),
    ("eau-fuite", 0.05, &["De l'eau s'écoule de la chaussée", "Fuite au niveau d'une bouche à clé"]),
];

/// Places on real streets, and the real streetlights.
pub struct Places {
    pub streets: Option<StreetIndex>,
    pub lamps: Vec<(f64, f64)>,
}

fn pick_category(rng: &mut impl Rng) -> (&'static str, &'static [&'static str]) {
    let mut x = rng.random_range(0.0..1.0);
    for (code, share, texts) in CATEGORIES {
        if x < share {
            return (code, texts);
        }
        x -= share;
    }
    (CATEGORIES[0].0, CATEGORIES[0].2)
}

/// Answers to a service's required attributes (the first value of each list).
fn answers(service: Option<&ServiceDefinition>, rng: &mut impl Rng) -> HashMap<String, String> {
    service
        .map(|s| {
            s.attributes
                .iter()
                .filter(|a| a.variable && a.required && !a.values.is_empty())
                .map(|a| (a.code.clone(), a.values[rng.random_range(0..a.values.len())].key.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// A point a few metres from another (a duplicate's reporter stands elsewhere).
fn near(rng: &mut impl Rng, (lat, lon): (f64, f64), max_m: f64) -> (f64, f64) {
    let (dx, dy) = (rng.random_range(-max_m..max_m), rng.random_range(-max_m..max_m));
    (lat + dy / 111_132.0, lon + dx / (111_320.0 * lat.to_radians().cos()))
}

pub async fn run(settings: ReportSettings, places: Places, shutdown: CancellationToken) -> anyhow::Result<()> {
    let segments = places.streets.as_ref().map_or(0, StreetIndex::segment_count);
    if segments == 0 && places.lamps.is_empty() {
        tracing::warn!("no streets nor streetlights in this territory: nothing to place citizen reports on");
        shutdown.cancelled().await;
        return Ok(());
    }
    let channel = crate::connect(&settings.url, "reports", &settings.grpc, &shutdown).await?;
    let mut client = ReportsServiceClient::new(channel);
    let request = || {
        let mut client = client.clone();
        async move { client.list_services(ListServicesRequest::default()).await }
    };
    let services = crate::until_available(request).await?.into_inner().services;
    let mut rng = rand::rngs::StdRng::seed_from_u64(settings.seed.wrapping_add(11));
    let mut recent: VecDeque<(&'static str, (f64, f64))> = VecDeque::new();
    let mean_gap_s = 86_400.0 / settings.per_day.max(1e-6);
    let (mut accepted, mut refused, mut duplicates) = (0u64, 0u64, 0u64);
    let mut last_log = Instant::now();
    loop {
        // Poisson arrivals: exponential gaps.
        let gap = -mean_gap_s * (1.0 - rng.random_range(0.0..1.0f64)).ln();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(gap.min(86_400.0))) => {}
            _ = shutdown.cancelled() => break,
        }
        let repeat = !recent.is_empty() && rng.random_bool(settings.duplicate_share.clamp(0.0, 1.0));
        let (code, at) = if repeat {
            let (code, at) = recent[rng.random_range(0..recent.len())];
            (code, near(&mut rng, at, 20.0))
        } else {
            let (code, _) = pick_category(&mut rng);
            let at = if code == "eclairage-panne" && !places.lamps.is_empty() {
                places.lamps[rng.random_range(0..places.lamps.len())]
            } else if let Some(streets) = places.streets.as_ref().filter(|_| segments > 0) {
                streets.segment_middle(rng.random_range(0..segments)).map(|(p, _)| p).unwrap_or_default()
            } else {
                places.lamps[rng.random_range(0..places.lamps.len())]
            };
            (code, at)
        };
        let texts = CATEGORIES.iter().find(|c| c.0 == code).map(|c| c.2).unwrap_or(&[]);
        let description = texts.get(rng.random_range(0..texts.len().max(1))).copied().unwrap_or_default();
        let address = places.streets.as_ref().and_then(|s| s.nearest(at.0, at.1, 30.0)).unwrap_or_default();
        let request = CreateRequestRequest {
            service_code: code.into(),
            lat: Some(at.0),
            lon: Some(at.1),
            address_string: address.into(),
            description: description.into(),
            attributes: answers(services.iter().find(|s| s.service_code == code), &mut rng),
            contact: Some(Contact { device_id: format!("sim-{:08x}", rng.random::<u32>()), ..Default::default() }),
            ..Default::default()
        };
        match client.create_request(request).await {
            Ok(created) => {
                accepted += 1;
                let created = created.into_inner();
                if created.request.as_ref().is_some_and(|r| !r.duplicate_of.is_empty()) {
                    duplicates += 1;
                }
                recent.push_back((code, at));
                if recent.len() > 20 {
                    recent.pop_front();
                }
            }
            Err(status) => {
                // A point just outside the communes' (simplified) boundaries, say.
                refused += 1;
                tracing::debug!(code = ?status.code(), message = status.message(), "report refused");
            }
        }
        if last_log.elapsed() > Duration::from_secs(60) {
            last_log = Instant::now();
            tracing::info!(accepted, refused, duplicates, "citizen reports");
        }
    }
    tracing::info!(accepted, refused, duplicates, "citizen reports stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_share_the_whole() {
        let total: f64 = CATEGORIES.iter().map(|c| c.1).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for _ in 0..10_000 {
            *counts.entry(pick_category(&mut rng).0).or_default() += 1;
        }
        let share = |code: &str| counts[code] as f64 / 10_000.0;
        assert!((share("voirie-nid-de-poule") - 0.28).abs() < 0.02);
        assert!((share("eau-fuite") - 0.05).abs() < 0.01);
        let (lat, lon) = near(&mut rng, (43.6, 3.87), 20.0);
        assert!(((lat - 43.6) * 111_132.0).abs() <= 20.0 && ((lon - 3.87) * 80_614.0).abs() <= 20.1);
    }
}
