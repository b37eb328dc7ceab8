//! District metered areas, derived from the network: cut the metered inflow links and the boundary
//! valves, and each part still connected (by pipes) is an area. An area's inflows are the cut links
//! that feed it; its commune is the one most of its nodes lie in.

use std::collections::{BTreeMap, BTreeSet};

use crate::network::{LinkKind, Network, NodeKind};

#[derive(Debug, Clone, PartialEq)]
pub struct Dma {
    /// `DMA-1`, `DMA-2`... by decreasing size (stable for a given network and meter list).
    pub id: String,
    /// Indices into `network.nodes`.
    pub nodes: Vec<usize>,
    /// The cut links with an end in this area (meters and valves at its boundary).
    pub boundary_links: Vec<String>,
    /// Junctions in the area (reservoirs and tanks are sources, not consumers).
    pub junctions: usize,
}

/// At most this many junctions between a meter and a valve: a chamber, not an area.
const CHAMBER_JUNCTIONS: usize = 2;

/// The areas of a network, given the ids of its metered links (flow meters). Valves are
/// boundaries too; pumps are cut as well (a pump always separates pressure zones).
pub fn derive(network: &Network, metered_links: &[&str]) -> Result<Vec<Dma>, String> {
    for id in metered_links {
        if network.link(id).is_none() {
            return Err(format!("metered link {id:?} is not in the network"));
        }
    }
    let cut: BTreeSet<&str> = network
        .links
        .iter()
        .filter(|l| l.kind != LinkKind::Pipe || metered_links.contains(&l.id.as_str()))
        .map(|l| l.id.as_str())
        .collect();
    // Union-find over the pipes that are not cut.
    let mut parent: Vec<usize> = (0..network.nodes.len()).collect();
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for link in network.links.iter().filter(|l| !cut.contains(l.id.as_str())) {
        let (Some(a), Some(b)) = (network.node_position(&link.from), network.node_position(&link.to)) else { continue };
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra != rb {
            parent[ra] = rb;
        }
    }
    // A part of one or two junctions between a meter and a valve (the meter's chamber, with a
    // connection or two) is not an area: it joins the area its valve feeds.
    let mut junctions: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, node) in network.nodes.iter().enumerate() {
        if node.kind == NodeKind::Junction {
            *junctions.entry(find(&mut parent, i)).or_default() += 1;
        }
    }
    for link in network.links.iter().filter(|l| l.kind == LinkKind::Valve) {
        let (Some(a), Some(b)) = (network.node_position(&link.from), network.node_position(&link.to)) else { continue };
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        let size = |r: usize| junctions.get(&r).copied().unwrap_or(0);
        if ra != rb && (size(ra) <= CHAMBER_JUNCTIONS || size(rb) <= CHAMBER_JUNCTIONS) {
            let merged = size(ra) + size(rb);
            parent[ra] = rb;
            junctions.insert(rb, merged);
        }
    }
    let mut parts: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..network.nodes.len() {
        let root = find(&mut parent, i);
        parts.entry(root).or_default().push(i);
    }
    let mut parts: Vec<Vec<usize>> = parts
        .into_values()
        .filter(|nodes| nodes.iter().any(|&i| network.nodes[i].kind == NodeKind::Junction))
        .collect();
    parts.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(k, nodes)| {
            let members: BTreeSet<&str> = nodes.iter().map(|&i| network.nodes[i].id.as_str()).collect();
            // Links cut at the area's edge (one end inside, one outside).
            let boundary_links = network
                .links
                .iter()
                .filter(|l| cut.contains(l.id.as_str()))
                .filter(|l| members.contains(l.from.as_str()) != members.contains(l.to.as_str()))
                .map(|l| l.id.clone())
                .collect();
            let junctions = nodes.iter().filter(|&&i| network.nodes[i].kind == NodeKind::Junction).count();
            Dma { id: format!("DMA-{}", k + 1), nodes, boundary_links, junctions }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::tests::data;

    #[test]
    fn areas_are_what_the_meters_and_valves_cut() {
        // R feeds, through meter M and its chamber C, a PRV V into J1-J2-J3; J3 feeds J4 through the
        // metered pipe Q.
        let text = "[RESERVOIRS]\n R 100\n[JUNCTIONS]\n C 10\n J1 10 1\n J2 10 1\n J3 5 1\n J4 5 1\n\
            [PIPES]\n M R C 10 200 120 0 Open\n P1 J1 J2 10 200 120 0 Open\n P2 J2 J3 10 200 120 0 Open\n Q J3 J4 10 100 120 0 Open\n\
            [VALVES]\n V C J1 150 PRV 30 0\n";
        let n = Network::parse("t.inp", text).unwrap();
        let dmas = derive(&n, &["M", "Q"]).unwrap();
        let summary: Vec<(String, usize, Vec<String>)> =
            dmas.iter().map(|d| (d.id.clone(), d.junctions, d.boundary_links.clone())).collect();
        assert_eq!(
            summary,
            [
                ("DMA-1".to_owned(), 4, vec!["M".to_owned(), "Q".to_owned()]),
                ("DMA-2".to_owned(), 1, vec!["Q".to_owned()]),
            ],
            "the chamber joins the area its valve feeds"
        );
        assert!(derive(&n, &["nope"]).unwrap_err().contains("nope"));
    }

    /// L-Town's meters (PUMP_1, p227, p235) and PRVs cut it into its pressure areas.
    #[test]
    fn l_town_has_areas() {
        let Some(path) = data("montpellier-mediterranee-metropole/water/L-TOWN.inp") else { return };
        let n = Network::read(&path).unwrap();
        let dmas = derive(&n, &["PUMP_1", "p227", "p235"]).unwrap();
        let sizes: Vec<usize> = dmas.iter().map(|d| d.junctions).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 782, "every junction in one area");
        // The main area fed by both reservoirs' meters (through PRV-1 and PRV-2, whose chambers
        // join it), the area the tank feeds (beyond the pump), and the area beyond PRV-3.
        let summary: Vec<(usize, Vec<String>)> = dmas.iter().map(|d| (d.junctions, d.boundary_links.clone())).collect();
        assert_eq!(
            summary,
            [
                (659, vec!["p227".to_owned(), "p235".to_owned(), "PUMP_1".to_owned(), "PRV-3".to_owned()]),
                (92, vec!["PUMP_1".to_owned()]),
                (31, vec!["PRV-3".to_owned()]),
            ]
        );
    }
}
