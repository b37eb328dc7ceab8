//! Where the network lies: its local planar coordinates placed over the territory by the
//! transform of `placement.json` (a rotation, a scale and a translation onto a WGS84 origin), and
//! the commune each node is in.

use proto::ids::CommuneId;
use serde::Deserialize;

use crate::network::Network;

#[derive(Debug, Clone, Deserialize)]
pub struct Origin {
    pub lat: f64,
    pub lon: f64,
}

/// `placement.json` (the fields the transform needs; others are documentation).
#[derive(Debug, Clone, Deserialize)]
pub struct Placement {
    pub local_reference_xy: [f64; 2],
    pub origin: Origin,
    pub rotation_deg: f64,
    pub scale: f64,
    pub meters_per_degree_lat: f64,
    pub meters_per_degree_lon: f64,
}

impl Placement {
    pub fn read(path: &std::path::Path) -> Result<Placement, String> {
        // A placement is a few numbers; anything larger is not one.
        const MAX_BYTES: u64 = 1024 * 1024;
        let size = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
        if size > MAX_BYTES {
            return Err(format!("{}: {size} bytes, more than {MAX_BYTES}", path.display()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let p: Placement = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let finite =
            [p.rotation_deg, p.scale, p.meters_per_degree_lat, p.meters_per_degree_lon, p.origin.lat, p.origin.lon]
                .iter()
                .chain(p.local_reference_xy.iter())
                .all(|v| v.is_finite());
        if !finite || p.scale <= 0.0 || p.meters_per_degree_lat <= 0.0 || p.meters_per_degree_lon <= 0.0 {
            return Err(format!("{}: the transform needs finite numbers and positive scales", path.display()));
        }
        proto::event::check_position(p.origin.lat, p.origin.lon)
            .map_err(|e| format!("{}: origin: {e}", path.display()))?;
        Ok(p)
    }

    /// WGS84 (lat, lon) of a local point.
    pub fn to_wgs84(&self, (x, y): (f64, f64)) -> (f64, f64) {
        let (dx, dy) = (x - self.local_reference_xy[0], y - self.local_reference_xy[1]);
        let (sin, cos) = self.rotation_deg.to_radians().sin_cos();
        let east = self.scale * (cos * dx - sin * dy);
        let north = self.scale * (sin * dx + cos * dy);
        (self.origin.lat + north / self.meters_per_degree_lat, self.origin.lon + east / self.meters_per_degree_lon)
    }
}

/// A node placed on the territory.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedNode {
    pub lat: f64,
    pub lon: f64,
    /// `None` outside every commune of the territory.
    pub commune: Option<CommuneId>,
}

/// Places every node (in the network's order); a node without coordinates is an error.
pub fn place(
    network: &Network,
    placement: &Placement,
    locate: impl Fn(f64, f64) -> Option<CommuneId>,
) -> Result<Vec<PlacedNode>, String> {
    network
        .nodes
        .iter()
        .map(|node| {
            let xy = node.xy.ok_or_else(|| format!("node {} has no coordinates", node.id))?;
            let (lat, lon) = placement.to_wgs84(xy);
            Ok(PlacedNode { lat, lon, commune: locate(lat, lon) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::tests::data;

    #[test]
    fn the_transform_rotates_scales_and_moves() {
        let p = Placement {
            local_reference_xy: [100.0, 100.0],
            origin: Origin { lat: 43.6, lon: 3.9 },
            rotation_deg: 90.0,
            scale: 2.0,
            meters_per_degree_lat: 111_000.0,
            meters_per_degree_lon: 80_000.0,
        };
        assert_eq!(p.to_wgs84((100.0, 100.0)), (43.6, 3.9));
        // 10 m east locally, turned a quarter counter-clockwise and doubled: 20 m north.
        let (lat, lon) = p.to_wgs84((110.0, 100.0));
        assert!((lat - (43.6 + 20.0 / 111_000.0)).abs() < 1e-12 && (lon - 3.9).abs() < 1e-12);
    }

    /// The real placement agrees with the precomputed nodes.geojson, and L-Town lies in Lattes.
    #[test]
    fn l_town_is_placed_over_lattes() {
        let Some(dir) = data("montpellier-mediterranee-metropole/water") else { return };
        let network = Network::read(&dir.join("L-TOWN.inp")).unwrap();
        let placement = Placement::read(&dir.join("placement.json")).unwrap();
        let geojson: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("nodes.geojson")).unwrap()).unwrap();
        let features = geojson["features"].as_array().unwrap();
        assert_eq!(features.len(), network.nodes.len());
        for f in features {
            let node = network.node(f["properties"]["id"].as_str().unwrap()).unwrap();
            let (lat, lon) = placement.to_wgs84(node.xy.unwrap());
            let c = &f["geometry"]["coordinates"];
            assert!(
                (lon - c[0].as_f64().unwrap()).abs() < 2e-7 && (lat - c[1].as_f64().unwrap()).abs() < 2e-7,
                "{}",
                node.id
            );
        }
        let Some(territory_dir) = data("montpellier-mediterranee-metropole") else { return };
        let territory = territory::Territory::load(&territory_dir).unwrap();
        let placed = place(&network, &placement, |lat, lon| territory.locate(lat, lon).map(|c| c.id.clone())).unwrap();
        let in_lattes = placed.iter().filter(|p| p.commune.as_ref().is_some_and(|c| c.as_str() == "34129")).count();
        assert!(in_lattes * 10 >= placed.len() * 9, "{in_lattes} of {} nodes in Lattes", placed.len());
    }
}
