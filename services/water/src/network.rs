//! An EPANET network (`.inp`), the sections Vigie needs. Other sections are skipped; a malformed
//! line in a section we read is an error naming the file, the section and the line.

use std::collections::HashMap;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NetworkError {
    #[error("{file}, line {line} ([{section}]): {message}")]
    Line { file: String, section: String, line: usize, message: String },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    Junction,
    Reservoir,
    Tank,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: String,
    pub kind: NodeKind,
    /// Elevation (junctions, tanks) or total head (reservoirs), metres.
    pub elevation_m: f64,
    /// Base demand from [JUNCTIONS] plus [DEMANDS], in the network's flow unit.
    pub base_demand: f64,
    /// Local planar coordinates from [COORDINATES], when given.
    pub xy: Option<(f64, f64)>,
    /// Tanks: (min, max) level, metres.
    pub tank_levels_m: Option<(f64, f64)>,
    /// Tanks: diameter, metres (a cylinder: its area turns a level change into a volume).
    pub tank_diameter_m: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkKind {
    Pipe,
    Pump,
    /// A valve, with its EPANET type (PRV, PSV, PBV, FCV, TCV, GPV).
    Valve,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub id: String,
    pub kind: LinkKind,
    pub from: String,
    pub to: String,
    /// Pipes: length, metres.
    pub length_m: f64,
    /// Pipes and valves: diameter, millimetres.
    pub diameter_mm: f64,
    /// Valves: the type (PRV...); pipes: the initial status (Open, Closed, CV).
    pub detail: String,
}

#[derive(Debug, Default, Clone)]
pub struct Network {
    pub title: String,
    /// The flow unit of [OPTIONS] `Units` (e.g. CMH, LPS, GPM).
    pub flow_unit: String,
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
    node_index: HashMap<String, usize>,
    link_index: HashMap<String, usize>,
}

/// The largest `.inp` read (L-Town is 0.4 MB; a city's network a few tens of MB).
pub const MAX_INP_BYTES: u64 = 256 * 1024 * 1024;

impl Network {
    pub fn read(path: &std::path::Path) -> Result<Network, NetworkError> {
        let file = path.display().to_string();
        let size = std::fs::metadata(path)
            .map_err(|e| NetworkError::File { file: file.clone(), message: e.to_string() })?
            .len();
        if size > MAX_INP_BYTES {
            return Err(NetworkError::File { file, message: format!("{size} bytes, more than {MAX_INP_BYTES}") });
        }
        let bytes =
            std::fs::read(path).map_err(|e| NetworkError::File { file: file.clone(), message: e.to_string() })?;
        Network::parse(&file, &String::from_utf8_lossy(&bytes))
    }

    pub fn parse(file: &str, text: &str) -> Result<Network, NetworkError> {
        let mut network = Network::default();
        let mut section = String::new();
        let mut demands: Vec<(String, f64, usize)> = Vec::new();
        let mut coordinates: Vec<(String, (f64, f64), usize)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split(';').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            if content.starts_with('[') {
                section = content.trim_matches(|c| c == '[' || c == ']').to_ascii_uppercase();
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let error =
                |message: String| NetworkError::Line { file: file.to_owned(), section: section.clone(), line, message };
            let number = |index: usize, what: &str| -> Result<f64, NetworkError> {
                let text = fields.get(index).ok_or_else(|| error(format!("{what} is missing")))?;
                text.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| error(format!("{what} {text:?} is not a number")))
            };
            let text_at = |index: usize, what: &str| -> Result<String, NetworkError> {
                fields.get(index).map(|s| (*s).to_owned()).ok_or_else(|| error(format!("{what} is missing")))
            };
            match section.as_str() {
                "TITLE" if network.title.is_empty() => network.title = content.to_owned(),
                "JUNCTIONS" => {
                    let demand = if fields.len() > 2 { number(2, "demand")? } else { 0.0 };
                    network
                        .add_node(Node {
                            id: text_at(0, "id")?,
                            kind: NodeKind::Junction,
                            elevation_m: number(1, "elevation")?,
                            base_demand: demand,
                            xy: None,
                            tank_levels_m: None,
                            tank_diameter_m: None,
                        })
                        .map_err(error)?;
                }
                "RESERVOIRS" => network
                    .add_node(Node {
                        id: text_at(0, "id")?,
                        kind: NodeKind::Reservoir,
                        elevation_m: number(1, "head")?,
                        base_demand: 0.0,
                        xy: None,
                        tank_levels_m: None,
                        tank_diameter_m: None,
                    })
                    .map_err(error)?,
                "TANKS" => network
                    .add_node(Node {
                        id: text_at(0, "id")?,
                        kind: NodeKind::Tank,
                        elevation_m: number(1, "elevation")?,
                        base_demand: 0.0,
                        xy: None,
                        tank_levels_m: Some((number(3, "minimum level")?, number(4, "maximum level")?)),
                        tank_diameter_m: Some(number(5, "diameter")?),
                    })
                    .map_err(error)?,
                "PIPES" => network
                    .add_link(Link {
                        id: text_at(0, "id")?,
                        kind: LinkKind::Pipe,
                        from: text_at(1, "start node")?,
                        to: text_at(2, "end node")?,
                        length_m: number(3, "length")?,
                        diameter_mm: number(4, "diameter")?,
                        detail: fields.get(7).map(|s| (*s).to_owned()).unwrap_or_else(|| "Open".into()),
                    })
                    .map_err(error)?,
                "PUMPS" => network
                    .add_link(Link {
                        id: text_at(0, "id")?,
                        kind: LinkKind::Pump,
                        from: text_at(1, "start node")?,
                        to: text_at(2, "end node")?,
                        length_m: 0.0,
                        diameter_mm: 0.0,
                        detail: fields[3..].join(" "),
                    })
                    .map_err(error)?,
                "VALVES" => network
                    .add_link(Link {
                        id: text_at(0, "id")?,
                        kind: LinkKind::Valve,
                        from: text_at(1, "start node")?,
                        to: text_at(2, "end node")?,
                        length_m: 0.0,
                        diameter_mm: number(3, "diameter")?,
                        detail: text_at(4, "type")?.to_ascii_uppercase(),
                    })
                    .map_err(error)?,
                "DEMANDS" => demands.push((text_at(0, "junction")?, number(1, "demand")?, line)),
                "COORDINATES" => coordinates.push((text_at(0, "node")?, (number(1, "x")?, number(2, "y")?), line)),
                "OPTIONS" if fields.len() >= 2 && fields[0].eq_ignore_ascii_case("units") => {
                    network.flow_unit = fields[1].to_ascii_uppercase();
                }
                _ => {}
            }
        }
        // [DEMANDS] replaces the demand of [JUNCTIONS] for the junctions it lists (EPANET's rule).
        let mut replaced: HashMap<String, f64> = HashMap::new();
        for (id, demand, line) in demands {
            if !network.node_index.contains_key(&id) {
                return Err(NetworkError::Line {
                    file: file.to_owned(),
                    section: "DEMANDS".into(),
                    line,
                    message: format!("unknown junction {id:?}"),
                });
            }
            *replaced.entry(id).or_default() += demand;
        }
        for (id, demand) in replaced {
            if let Some(&i) = network.node_index.get(&id) {
                network.nodes[i].base_demand = demand;
            }
        }
        for (id, xy, line) in coordinates {
            let i = *network.node_index.get(&id).ok_or_else(|| NetworkError::Line {
                file: file.to_owned(),
                section: "COORDINATES".into(),
                line,
                message: format!("unknown node {id:?}"),
            })?;
            network.nodes[i].xy = Some(xy);
        }
        for link in &network.links {
            for end in [&link.from, &link.to] {
                if !network.node_index.contains_key(end) {
                    return Err(NetworkError::File {
                        file: file.to_owned(),
                        message: format!("link {} ends at unknown node {end:?}", link.id),
                    });
                }
            }
        }
        if network.nodes.is_empty() {
            return Err(NetworkError::File {
                file: file.to_owned(),
                message: "no node: is this an EPANET .inp file?".into(),
            });
        }
        Ok(network)
    }

    fn add_node(&mut self, node: Node) -> Result<(), String> {
        if self.node_index.contains_key(&node.id) {
            return Err(format!("node {:?} is defined twice", node.id));
        }
        self.node_index.insert(node.id.clone(), self.nodes.len());
        self.nodes.push(node);
        Ok(())
    }

    fn add_link(&mut self, link: Link) -> Result<(), String> {
        if self.link_index.contains_key(&link.id) {
            return Err(format!("link {:?} is defined twice", link.id));
        }
        self.link_index.insert(link.id.clone(), self.links.len());
        self.links.push(link);
        Ok(())
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.node_index.get(id).map(|&i| &self.nodes[i])
    }

    pub fn link(&self, id: &str) -> Option<&Link> {
        self.link_index.get(id).map(|&i| &self.links[i])
    }

    /// Whether water can still reach `link`: false when it is closed itself, or when closing the
    /// `closed` links cut both its ends from every source (reservoir or tank). This is what an
    /// isolation by valves achieves: the segment no longer loses water.
    pub fn is_supplied(&self, link: &str, closed: &std::collections::HashSet<String>) -> bool {
        if closed.contains(link) {
            return false;
        }
        let Some(target) = self.link(link) else { return false };
        let mut adjacent: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
        for l in self.links.iter().filter(|l| !closed.contains(&l.id)) {
            if let (Some(a), Some(b)) = (self.node_position(&l.from), self.node_position(&l.to)) {
                adjacent[a].push(b);
                adjacent[b].push(a);
            }
        }
        let mut seen = vec![false; self.nodes.len()];
        let mut queue: std::collections::VecDeque<usize> =
            self.nodes.iter().enumerate().filter(|(_, n)| n.kind != NodeKind::Junction).map(|(i, _)| i).collect();
        for &i in &queue {
            seen[i] = true;
        }
        while let Some(i) = queue.pop_front() {
            for &j in &adjacent[i] {
                if !seen[j] {
                    seen[j] = true;
                    queue.push_back(j);
                }
            }
        }
        [&target.from, &target.to].iter().any(|id| self.node_position(id).is_some_and(|i| seen[i]))
    }

    /// The links that meet at a node.
    pub fn links_at<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Link> + 'a {
        self.links.iter().filter(move |l| l.from == node || l.to == node)
    }

    pub fn node_position(&self, id: &str) -> Option<usize> {
        self.node_index.get(id).copied()
    }

    pub fn count(&self, kind: NodeKind) -> usize {
        self.nodes.iter().filter(|n| n.kind == kind).count()
    }

    pub fn count_links(&self, kind: LinkKind) -> usize {
        self.links.iter().filter(|l| l.kind == kind).count()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn closing_valves_isolates_a_segment() {
        // R - P1 - J1 - P2 - J2 - P3 - J3, and a loop J1 - P4 - J3.
        let text = "[RESERVOIRS]\n R 100\n[JUNCTIONS]\n J1 10\n J2 10\n J3 10\n\
            [PIPES]\n P1 R J1 10 200 120 0 Open\n P2 J1 J2 10 200 120 0 Open\n P3 J2 J3 10 200 120 0 Open\n P4 J1 J3 10 200 120 0 Open\n";
        let n = Network::parse("t.inp", text).unwrap();
        let closed = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<std::collections::HashSet<_>>();
        let cases: [(&str, &[&str], bool, &str); 5] = [
            ("P3", &[], true, "nothing closed"),
            ("P3", &["P3"], false, "the pipe itself closed"),
            ("P3", &["P2"], true, "still fed around the loop"),
            ("P3", &["P2", "P4"], false, "both ways in closed"),
            ("P2", &["P1"], false, "the source cut off"),
        ];
        for (pipe, shut, supplied, why) in cases {
            assert_eq!(n.is_supplied(pipe, &closed(shut)), supplied, "{why}");
        }
        assert!(!n.is_supplied("nope", &closed(&[])));
    }

    pub fn data(relative: &str) -> Option<std::path::PathBuf> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(relative);
        if path.exists() {
            Some(path)
        } else {
            eprintln!("SKIP: {} is absent", path.display());
            None
        }
    }

    /// L-Town: 782 junctions, 2 reservoirs, 1 tank, 905 pipes, 1 pump, 3 PRVs, in CMH.
    #[test]
    fn the_real_l_town_network_loads() {
        let Some(path) = data("montpellier-mediterranee-metropole/water/L-TOWN.inp") else { return };
        let n = Network::read(&path).unwrap();
        assert_eq!(n.count(NodeKind::Junction), 782);
        assert_eq!((n.count(NodeKind::Reservoir), n.count(NodeKind::Tank)), (2, 1));
        assert_eq!(n.count_links(LinkKind::Pipe), 905);
        assert_eq!((n.count_links(LinkKind::Pump), n.count_links(LinkKind::Valve)), (1, 3));
        assert_eq!(n.flow_unit, "CMH");
        assert!(n.nodes.iter().all(|node| node.xy.is_some()), "every node has coordinates");
        assert_eq!(n.link("PRV-1").unwrap().detail, "PRV");
        assert_eq!(n.node("T1").unwrap().tank_levels_m, Some((0.0, 4.0)));
        assert_eq!(n.node("T1").unwrap().tank_diameter_m, Some(16.0));
        // n1's demand comes from [DEMANDS] (three categories), not from [JUNCTIONS].
        assert!((n.node("n1").unwrap().base_demand - 0.66024).abs() < 1e-9);
    }

    #[test]
    fn a_broken_network_names_the_section_and_line() {
        let good = "[JUNCTIONS]\n J1 10 1.0\n J2 12 0.5\n[PIPES]\n P1 J1 J2 100 150 120 0 Open\n[COORDINATES]\n J1 0 0\n J2 100 0\n";
        let n = Network::parse("t.inp", good).unwrap();
        assert_eq!((n.nodes.len(), n.links.len()), (2, 1));
        let cases = [
            (good.replace("J2 12 0.5", "J2 douze 0.5"), "line 3 ([JUNCTIONS]): elevation \"douze\""),
            (good.replace("P1 J1 J2 100", "P1 J1 J9 100"), "unknown node \"J9\""),
            (good.replace(" J2 100 0\n", " J3 100 0\n"), "line 8 ([COORDINATES]): unknown node \"J3\""),
            (good.replace(" J2 12 0.5\n", " J1 12 0.5\n"), "defined twice"),
            ("hello".to_owned(), "no node"),
        ];
        for (text, expected) in cases {
            let err = Network::parse("t.inp", &text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should mention {expected:?}");
        }
    }
}
