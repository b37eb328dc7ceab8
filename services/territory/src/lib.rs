//! A territory: the communes of one intermunicipal body, read from open data at start.
//!
//! A territory is a folder (see `../shared/data/README.md`): `communes.geojson` (required for any
//! commune-bound write) and optional layers (streetlights, transit, water, streets). Nothing about
//! one city is known to the code: everything comes from the folder. A missing folder or layer is not
//! an error (the system starts and says which layers are missing); a present but broken file is.

pub mod basemap;
pub mod streetlights;
pub mod streets;

use geo::{BoundingRect, Contains, MultiPolygon, Point, Rect};
use proto::ids::CommuneId;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Largest `communes.geojson` we read (the real ones are 25-35 KB).
pub const MAX_COMMUNES_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// The data layers a territory folder may hold, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Communes,
    Streets,
    Streetlights,
    Transit,
    Water,
}

impl Layer {
    pub const ALL: [Layer; 5] = [Layer::Communes, Layer::Streets, Layer::Streetlights, Layer::Transit, Layer::Water];

    /// Path of the layer's main file inside the territory folder.
    pub fn relative_path(self) -> &'static str {
        match self {
            Layer::Communes => "communes.geojson",
            Layer::Streets => "streets.geojson",
            Layer::Streetlights => "lighting/streetlights.geojson",
            Layer::Transit => "transit/gtfs.zip",
            Layer::Water => "water/L-TOWN.inp",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layer::Communes => "communes",
            Layer::Streets => "streets",
            Layer::Streetlights => "streetlights",
            Layer::Transit => "transit",
            Layer::Water => "water",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TerritoryError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is {size} bytes, more than the {max} bytes allowed")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{path} is not a GeoJSON FeatureCollection: {message}")]
    NotGeoJson { path: PathBuf, message: String },
    #[error("{path}, feature {index}: {message}")]
    BadFeature { path: PathBuf, index: usize, message: String },
    #[error("{path}: commune {id} appears twice")]
    Duplicate { path: PathBuf, id: CommuneId },
    #[error("commune {0} is not one of the territory's")]
    UnknownCommune(String),
}

#[derive(Debug, Clone)]
pub struct Commune {
    pub id: CommuneId,
    pub name: String,
    pub population: Option<u64>,
    pub boundary: MultiPolygon<f64>,
    bbox: Option<Rect<f64>>,
}

impl Commune {
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        let point = Point::new(lon, lat);
        match self.bbox {
            Some(bbox) if bbox.contains(&point) || on_rect_edge(&bbox, &point) => self.boundary.contains(&point),
            _ => false,
        }
    }
}

fn on_rect_edge(r: &Rect<f64>, p: &Point<f64>) -> bool {
    (p.x() == r.min().x || p.x() == r.max().x || p.y() == r.min().y || p.y() == r.max().y)
        && p.x() >= r.min().x
        && p.x() <= r.max().x
        && p.y() >= r.min().y
        && p.y() <= r.max().y
}

#[derive(Debug, Clone)]
pub struct LayerStatus {
    pub layer: Layer,
    pub path: PathBuf,
    pub present: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Territory {
    dir: Option<PathBuf>,
    communes: Vec<Commune>,
    by_id: HashMap<CommuneId, usize>,
    layers: Vec<LayerStatus>,
    /// The territory's communes another shard serves (see [`Territory::limit_to`]).
    elsewhere: Vec<Commune>,
}

impl Territory {
    /// Reads the territory in `dir`. A missing folder or file gives a territory without that layer.
    pub fn load(dir: &Path) -> Result<Territory, TerritoryError> {
        let layers: Vec<LayerStatus> = Layer::ALL
            .iter()
            .map(|&layer| {
                let path = dir.join(layer.relative_path());
                LayerStatus { layer, present: path.is_file(), path }
            })
            .collect();
        let communes_path = dir.join(Layer::Communes.relative_path());
        let communes = if communes_path.is_file() { read_communes(&communes_path)? } else { Vec::new() };
        let by_id = communes.iter().enumerate().map(|(i, c)| (c.id.clone(), i)).collect();
        Ok(Territory { dir: Some(dir.to_owned()), communes, by_id, layers, elsewhere: Vec::new() })
    }

    /// A territory from communes already in memory (tests, tools).
    pub fn from_communes(communes: Vec<Commune>) -> Territory {
        let by_id = communes.iter().enumerate().map(|(i, c)| (c.id.clone(), i)).collect();
        Territory { dir: None, communes, by_id, layers: Vec::new(), elsewhere: Vec::new() }
    }

    /// The communes served here (all of the territory's, unless [`Territory::limit_to`]).
    pub fn communes(&self) -> &[Commune] {
        &self.communes
    }

    /// Limits the territory to `ids` (a shard's communes): the others are no longer its
    /// communes ([`Territory::communes`], [`Territory::locate`], [`Territory::contains`] ignore
    /// them), but [`Territory::served_elsewhere`] still tells a place in one of them from a
    /// place outside the territory. Every id must be one of the territory's communes.
    pub fn limit_to(&mut self, ids: &[CommuneId]) -> Result<(), TerritoryError> {
        if let Some(unknown) = ids.iter().find(|id| !self.by_id.contains_key(id)) {
            return Err(TerritoryError::UnknownCommune(unknown.to_string()));
        }
        let (kept, elsewhere): (Vec<Commune>, Vec<Commune>) =
            std::mem::take(&mut self.communes).into_iter().partition(|c| ids.contains(&c.id));
        self.by_id = kept.iter().enumerate().map(|(i, c)| (c.id.clone(), i)).collect();
        self.communes = kept;
        self.elsewhere.extend(elsewhere);
        Ok(())
    }

    /// Whether some of the territory's communes are served elsewhere ([`Territory::limit_to`]).
    pub fn is_limited(&self) -> bool {
        !self.elsewhere.is_empty()
    }

    /// The commune of the territory, served by another shard, whose boundary contains the point.
    pub fn served_elsewhere(&self, lat: f64, lon: f64) -> Option<&Commune> {
        self.elsewhere.iter().find(|c| c.contains(lat, lon))
    }

    /// Whether `id` is a commune of the territory that another shard serves.
    pub fn is_served_elsewhere(&self, id: &CommuneId) -> bool {
        self.elsewhere.iter().any(|c| &c.id == id)
    }

    pub fn commune(&self, id: &CommuneId) -> Option<&Commune> {
        self.by_id.get(id).map(|&i| &self.communes[i])
    }

    pub fn contains(&self, id: &CommuneId) -> bool {
        self.by_id.contains_key(id)
    }

    /// The commune whose boundary contains the point, if any.
    pub fn locate(&self, lat: f64, lon: f64) -> Option<&Commune> {
        self.communes.iter().find(|c| c.contains(lat, lon))
    }

    /// The file of a layer, when the territory has it.
    pub fn layer_path(&self, layer: Layer) -> Option<&Path> {
        self.layers.iter().find(|s| s.layer == layer && s.present).map(|s| s.path.as_path())
    }

    pub fn layers(&self) -> &[LayerStatus] {
        &self.layers
    }

    /// Logs what was found, so that an operator sees at once which layers are missing.
    pub fn log_summary(&self) {
        let dir = self.dir.as_deref().map(|d| d.display().to_string()).unwrap_or_else(|| "(in memory)".into());
        if self.communes.is_empty() {
            tracing::warn!(
                territory = %dir,
                "territory has no communes: every write that names a commune will be refused \
                 (expected {})",
                Layer::Communes.relative_path()
            );
        } else {
            tracing::info!(territory = %dir, communes = self.communes.len(), "territory loaded");
        }
        for status in &self.layers {
            if status.present {
                tracing::info!(layer = status.layer.name(), path = %status.path.display(), "territory layer present");
            } else {
                tracing::warn!(layer = status.layer.name(), path = %status.path.display(), "territory layer missing");
            }
        }
    }
}

fn read_communes(path: &Path) -> Result<Vec<Commune>, TerritoryError> {
    let io = |source| TerritoryError::Io { path: path.to_owned(), source };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_COMMUNES_FILE_BYTES {
        return Err(TerritoryError::TooLarge { path: path.to_owned(), size, max: MAX_COMMUNES_FILE_BYTES });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse_communes(path, &text)
}

/// Parses a communes FeatureCollection (properties `insee`, `name`, `population`; Polygon or
/// MultiPolygon geometries in WGS84, longitude first).
pub fn parse_communes(path: &Path, text: &str) -> Result<Vec<Commune>, TerritoryError> {
    let not_geojson = |message: String| TerritoryError::NotGeoJson { path: path.to_owned(), message };
    let collection = match text.parse::<geojson::GeoJson>().map_err(|e| not_geojson(e.to_string()))? {
        geojson::GeoJson::FeatureCollection(fc) => fc,
        _ => return Err(not_geojson("the top level is not a FeatureCollection".into())),
    };
    let mut communes = Vec::with_capacity(collection.features.len());
    let mut seen = HashMap::new();
    for (index, feature) in collection.features.into_iter().enumerate() {
        let bad = |message: String| TerritoryError::BadFeature { path: path.to_owned(), index, message };
        let insee = feature
            .property("insee")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("property \"insee\" is missing or not a string".into()))?;
        let id = CommuneId::parse(insee).map_err(|e| bad(e.to_string()))?;
        let name = feature
            .property("name")
            .and_then(|v| v.as_str())
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| bad(format!("commune {id}: property \"name\" is missing or empty")))?
            .to_owned();
        let population = feature.property("population").and_then(|v| v.as_u64());
        let geometry = feature.geometry.ok_or_else(|| bad(format!("commune {id} has no geometry")))?;
        let boundary = match geo::Geometry::<f64>::try_from(geometry.value) {
            Ok(geo::Geometry::Polygon(p)) => MultiPolygon(vec![p]),
            Ok(geo::Geometry::MultiPolygon(mp)) => mp,
            Ok(_) => return Err(bad(format!("commune {id}: geometry is not a Polygon or MultiPolygon"))),
            Err(e) => return Err(bad(format!("commune {id}: {e}"))),
        };
        let bbox = boundary.bounding_rect();
        if bbox.is_none() {
            return Err(bad(format!("commune {id}: empty boundary")));
        }
        // Degrees on Earth: one stray vertex would make every point-in-polygon answer wrong.
        use geo::CoordsIter;
        if let Some(c) = boundary.coords_iter().find(|c| proto::event::check_position(c.y, c.x).is_err()) {
            return Err(bad(format!("commune {id}: vertex [{}, {}] is not a longitude and a latitude", c.x, c.y)));
        }
        if population.is_some_and(|p| p > 100_000_000) {
            return Err(bad(format!("commune {id}: population {population:?} is not a commune's")));
        }
        if seen.insert(id.clone(), index).is_some() {
            return Err(TerritoryError::Duplicate { path: path.to_owned(), id });
        }
        communes.push(Commune { id, name, population, boundary, bbox });
    }
    Ok(communes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_SQUARES: &str = r#"{"type":"FeatureCollection","features":[
      {"type":"Feature","properties":{"insee":"00001","name":"West","population":10},
       "geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1],[0,0]]]}},
      {"type":"Feature","properties":{"insee":"00002","name":"East"},
       "geometry":{"type":"MultiPolygon","coordinates":[[[[1,0],[2,0],[2,1],[1,1],[1,0]]]]}}]}"#;

    fn parse(text: &str) -> Result<Vec<Commune>, TerritoryError> {
        parse_communes(Path::new("communes.geojson"), text)
    }

    #[test]
    fn locates_points() {
        let t = Territory::from_communes(parse(TWO_SQUARES).unwrap());
        assert_eq!(t.locate(0.5, 0.5).map(|c| c.id.as_str()), Some("00001"));
        assert_eq!(t.locate(0.5, 1.5).map(|c| c.id.as_str()), Some("00002"));
        assert!(t.locate(0.5, 2.5).is_none());
        assert!(t.locate(5.0, 0.5).is_none());
        assert!(t.contains(&CommuneId::parse("00002").unwrap()));
        assert!(!t.contains(&CommuneId::parse("00003").unwrap()));
        assert_eq!(t.communes()[0].population, Some(10));
    }

    #[test]
    fn a_shard_serves_its_communes_and_knows_the_others() {
        let mut t = Territory::from_communes(parse(TWO_SQUARES).unwrap());
        let (west, east) = (CommuneId::parse("00001").unwrap(), CommuneId::parse("00002").unwrap());
        let unknown = CommuneId::parse("00003").unwrap();
        assert!(t.clone().limit_to(&[unknown]).unwrap_err().to_string().contains("00003"));
        t.limit_to(std::slice::from_ref(&east)).unwrap();
        assert_eq!(t.communes().len(), 1);
        assert!(t.contains(&east) && !t.contains(&west));
        assert_eq!(t.locate(0.5, 1.5).map(|c| c.id.as_str()), Some("00002"));
        assert!(t.locate(0.5, 0.5).is_none(), "served elsewhere: not this shard's");
        assert_eq!(t.served_elsewhere(0.5, 0.5).map(|c| c.id.as_str()), Some("00001"));
        assert!(t.is_served_elsewhere(&west) && !t.is_served_elsewhere(&east));
        assert!(t.is_limited());
        assert!(t.served_elsewhere(5.0, 0.5).is_none(), "outside the territory");
    }

    #[test]
    fn broken_files_name_the_feature() {
        let err = parse(&TWO_SQUARES.replace("\"00002\"", "\"00.02\"")).unwrap_err().to_string();
        assert!(err.contains("feature 1") && err.contains("00.02"), "{err}");
        let err = parse(&TWO_SQUARES.replace("\"00002\"", "\"00001\"")).unwrap_err().to_string();
        assert!(err.contains("appears twice"), "{err}");
        let err = parse(&TWO_SQUARES.replace("\"name\":\"East\"", "\"nom\":\"East\"")).unwrap_err().to_string();
        assert!(err.contains("feature 1") && err.contains("name"), "{err}");
        assert!(parse("[1,2]").is_err());
        assert!(parse("{not json").is_err());
    }

    #[test]
    fn a_missing_folder_is_an_empty_territory() {
        let dir = tempfile::tempdir().unwrap();
        let t = Territory::load(&dir.path().join("nowhere")).unwrap();
        assert!(t.communes().is_empty());
        assert!(t.layers().iter().all(|l| !l.present));
    }

    /// The real territories in ../shared/data, when present.
    #[test]
    fn real_territories_load() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
        if !data.is_dir() {
            eprintln!("SKIP real_territories_load: {} is absent", data.display());
            return;
        }
        let mtp = Territory::load(&data.join("montpellier-mediterranee-metropole")).unwrap();
        assert_eq!(mtp.communes().len(), 31);
        // Place de la Comédie, Montpellier.
        assert_eq!(mtp.locate(43.6086, 3.8797).map(|c| c.name.as_str()), Some("Montpellier"));
        assert!(mtp.layer_path(Layer::Streetlights).is_some());
        let dijon = Territory::load(&data.join("dijon-metropole")).unwrap();
        assert_eq!(dijon.communes().len(), 23);
        assert!(dijon.layer_path(Layer::Streetlights).is_none());
        // Place de la Libération, Dijon.
        assert_eq!(dijon.locate(47.3216, 5.0415).map(|c| c.id.as_str()), Some("21231"));
    }
}
