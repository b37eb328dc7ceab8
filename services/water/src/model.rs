//! The network as the service sees it: the EPANET model placed over the territory, its district
//! metered areas (cut at the flow sensors' links) with their communes, and the metering zones.
//! Rebuilt when the set of flow sensors changes.

use proto::ids::CommuneId;
use proto::v1::Position;
use proto::water::Sensor;
use std::collections::HashMap;

use crate::dma::{self, Dma};
use crate::network::{LinkKind, Network};
use crate::placement::PlacedNode;
use crate::quality::Measure;
use crate::zones::{self, ZoneDef};

pub struct NetworkModel {
    pub network: Network,
    pub placed: Vec<PlacedNode>,
    pub dmas: Vec<Dma>,
    /// The commune most of each area's nodes lie in (same order as `dmas`).
    pub dma_communes: Vec<Option<CommuneId>>,
    pub zones: Vec<ZoneDef>,
    /// Node index -> area index.
    node_dma: HashMap<usize, usize>,
    pub metered: Vec<String>,
}

impl NetworkModel {
    pub fn build(network: Network, placed: Vec<PlacedNode>, metered: Vec<String>) -> Result<NetworkModel, String> {
        let refs: Vec<&str> = metered.iter().map(String::as_str).collect();
        let dmas = dma::derive(&network, &refs)?;
        let mut node_dma = HashMap::new();
        let dma_communes = dmas
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let mut counts: HashMap<&CommuneId, usize> = HashMap::new();
                for &i in &d.nodes {
                    node_dma.insert(i, k);
                    if let Some(c) = placed.get(i).and_then(|p| p.commune.as_ref()) {
                        *counts.entry(c).or_default() += 1;
                    }
                }
                counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0))).map(|(c, _)| c.clone())
            })
            .collect();
        let zones = zones::metering_zones(&network, &dmas, &metered);
        Ok(NetworkModel { network, placed, dmas, dma_communes, zones, node_dma, metered })
    }

    pub fn dma_index(&self, id: &str) -> Option<usize> {
        self.dmas.iter().position(|d| d.id == id)
    }

    pub fn zone_of_dma(&self, dma: &str) -> Option<&ZoneDef> {
        self.zones.iter().find(|z| z.dmas.iter().any(|d| d == dma))
    }

    /// A zone's commune: its largest area's.
    pub fn zone_commune(&self, zone: &ZoneDef) -> Option<CommuneId> {
        self.dma_index(&zone.id).and_then(|k| self.dma_communes[k].clone())
    }

    /// Where a network element is: (commune, position, area). Links are placed at their middle
    /// and belong to the area they feed (their `to` end), else the one they leave.
    pub fn place_element(&self, id: &str) -> Result<(CommuneId, Position, String), String> {
        let node = |i: usize| -> Option<(Option<CommuneId>, Position, Option<usize>)> {
            let p = self.placed.get(i)?;
            Some((p.commune.clone(), Position { lat: p.lat, lon: p.lon }, self.node_dma.get(&i).copied()))
        };
        let (commune, position, dma) = if let Some(i) = self.network.node_position(id) {
            node(i).ok_or_else(|| format!("node {id} is not placed"))?
        } else if let Some(link) = self.network.link(id) {
            let ends = [&link.to, &link.from].map(|n| self.network.node_position(n).and_then(node));
            let [Some(to), Some(from)] = ends else { return Err(format!("link {id} has an end that is not placed")) };
            let middle = Position { lat: (to.1.lat + from.1.lat) / 2.0, lon: (to.1.lon + from.1.lon) / 2.0 };
            (to.0.or(from.0), middle, to.2.or(from.2))
        } else {
            return Err(format!("{:?} is neither a node nor a link of the network", shown(id)));
        };
        let commune = commune.ok_or_else(|| format!("{id} lies outside every commune of the territory"))?;
        Ok((commune, position, dma.map(|k| self.dmas[k].id.clone()).unwrap_or_default()))
    }

    /// Checks where a sensor sits and what it reads; fills in its commune, position and area.
    pub fn place_sensor(&self, sensor: &Sensor) -> Result<Sensor, String> {
        proto::ids::AssetId::parse_as("sensor id", &sensor.id).map_err(|e| e.to_string())?;
        if sensor.measures.is_empty() {
            return Err(format!("sensor {}: no measures", sensor.id));
        }
        let on_node = self.network.node(&sensor.element_id);
        let on_link = self.network.link(&sensor.element_id);
        if on_node.is_none() && on_link.is_none() {
            return Err(format!(
                "sensor {}: {:?} is neither a node nor a link of the network",
                sensor.id,
                shown(&sensor.element_id)
            ));
        }
        let mut measures = Vec::new();
        for name in &sensor.measures {
            let measure = Measure::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = Measure::ALL.iter().map(|m| m.name()).collect();
                format!("sensor {}: unknown measure {:?} (one of {})", sensor.id, shown(name), known.join(", "))
            })?;
            let fits = match measure {
                Measure::Flow => on_link.is_some(),
                Measure::Level => on_node.is_some_and(|n| n.tank_levels_m.is_some()),
                _ => on_node.is_some(),
            };
            if !fits {
                let wants = match measure {
                    Measure::Flow => "a link",
                    Measure::Level => "a tank",
                    _ => "a node",
                };
                return Err(format!(
                    "sensor {}: {name} is read on {wants}, and {:?} is not one",
                    sensor.id, sensor.element_id
                ));
            }
            if measures.contains(name) {
                return Err(format!("sensor {}: {name} is listed twice", sensor.id));
            }
            measures.push(name.clone());
        }
        let (commune, position, dma) =
            self.place_element(&sensor.element_id).map_err(|e| format!("sensor {}: {e}", sensor.id))?;
        Ok(Sensor {
            id: sensor.id.clone(),
            element_id: sensor.element_id.clone(),
            measures,
            commune: commune.to_string(),
            position: Some(position),
            dma,
        })
    }

    /// An area as the API gives it, with the convex hull of its nodes.
    pub fn dma_proto(&self, k: usize) -> proto::water::Dma {
        let d = &self.dmas[k];
        let points: Vec<(f64, f64)> =
            d.nodes.iter().filter_map(|&i| self.placed.get(i)).map(|p| (p.lon, p.lat)).collect();
        proto::water::Dma {
            id: d.id.clone(),
            commune: self.dma_communes[k].as_ref().map(|c| c.to_string()).unwrap_or_default(),
            junctions: d.junctions as u32,
            boundary_links: d.boundary_links.clone(),
            metered_links: d.boundary_links.iter().filter(|l| self.metered.contains(l)).cloned().collect(),
            zone: self.zone_of_dma(&d.id).map(|z| z.id.clone()).unwrap_or_default(),
            hull: convex_hull(points).into_iter().map(|(lon, lat)| Position { lat, lon }).collect(),
        }
    }

    /// Whether a link can be operated as a valve: a valve, or a pipe (its isolation valves).
    pub fn operable(&self, link: &str) -> Result<(), String> {
        match self.network.link(link) {
            Some(l) if l.kind == LinkKind::Pump => Err(format!("{link} is a pump, not a valve")),
            Some(_) => Ok(()),
            None => Err(not_in_network(link)),
        }
    }

    /// The links to close to stop a burst seen at a node: every operable link that meets there,
    /// widest first (a burst's pressure drop is felt most at the node of the pipe that broke, and
    /// closing a pipe shuts its isolation valves, so whichever of them broke no longer loses
    /// water). Pumps have no valve and are left out. Of those, the ones `keep` accepts (at most
    /// `MAX_ISOLATION`), and how many it did not.
    pub fn isolation_set(&self, node: &str, keep: impl Fn(&str) -> bool) -> (Vec<String>, usize) {
        let mut links: Vec<&crate::network::Link> =
            self.network.links_at(node).filter(|l| l.kind != LinkKind::Pump).collect();
        links.sort_by(|a, b| b.diameter_mm.total_cmp(&a.diameter_mm).then(a.id.cmp(&b.id)));
        let (kept, left): (Vec<_>, Vec<_>) = links.into_iter().partition(|l| keep(&l.id));
        (kept.into_iter().take(MAX_ISOLATION).map(|l| l.id.clone()).collect(), left.len())
    }
}

/// The most links an isolation proposes (a junction meets a handful of pipes).
pub const MAX_ISOLATION: usize = 8;

/// What a request naming a link the network does not hold is told.
pub fn not_in_network(link: &str) -> String {
    format!("link {:?} is not in the network", shown(link))
}

/// An identifier from a request as an error message echoes it: at most an asset id's length.
fn shown(text: &str) -> String {
    text.chars().take(proto::ids::AssetId::MAX_LEN).collect()
}

/// Convex hull (Andrew's monotone chain), counter-clockwise, not closed.
pub fn convex_hull(mut points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    points.dedup();
    if points.len() < 3 {
        return points;
    }
    let cross = |o: (f64, f64), a: (f64, f64), b: (f64, f64)| (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0);
    let mut hull: Vec<(f64, f64)> = Vec::with_capacity(points.len() * 2);
    for pass in [points.clone(), points.into_iter().rev().collect()] {
        let start = hull.len();
        for p in pass {
            while hull.len() >= start + 2 && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0 {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_at_a_node_proposes_its_pipes_widest_first_and_no_pump() {
        // R - PU (pump) - J1; J1 - P1 (300 mm) - J2; J1 - P2 (150 mm) - J3; J2 - P3 - J3.
        let text = "[RESERVOIRS]\n R 100\n[JUNCTIONS]\n J1 10\n J2 10\n J3 10\n\
            [PIPES]\n P1 J1 J2 10 300 120 0 Open\n P2 J1 J3 10 150 120 0 Open\n P3 J2 J3 10 400 120 0 Open\n\
            [PUMPS]\n PU R J1 POWER 10\n";
        let network = crate::network::Network::parse("t.inp", text).unwrap();
        let model = NetworkModel::build(network, Vec::new(), Vec::new()).unwrap();
        let all = |_: &str| true;
        assert_eq!(model.isolation_set("J1", all), (vec!["P1".to_owned(), "P2".to_owned()], 0));
        assert_eq!(model.isolation_set("J3", all), (vec!["P3".to_owned(), "P2".to_owned()], 0));
        assert_eq!(model.isolation_set("J3", |l| l != "P3"), (vec!["P2".to_owned()], 1), "one left to another commune");
        assert!(model.isolation_set("nope", all).0.is_empty());
    }

    #[test]
    fn hull_of_a_square_and_its_centre() {
        let hull = convex_hull(vec![(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]);
        assert_eq!(hull, [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]);
        assert_eq!(convex_hull(vec![(0.0, 0.0)]), [(0.0, 0.0)]);
    }
}
