//! The street layer of a territory (`streets.geojson`: LineStrings with a `name`), indexed to
//! find the street nearest to a point.

use std::collections::HashMap;
use std::path::Path;

pub const MAX_STREETS_BYTES: u64 = 256 * 1024 * 1024;
const CELL_M: f64 = 50.0;

/// Street segments in a grid of 50 m cells, in a local metric projection.
pub struct StreetIndex {
    lat0: f64,
    names: Vec<String>,
    /// (x1, y1, x2, y2, name index) per segment.
    segments: Vec<(f64, f64, f64, f64, usize)>,
    grid: HashMap<(i64, i64), Vec<usize>>,
}

impl StreetIndex {
    /// Reads the streets of a territory; unnamed features are left out.
    pub fn read(path: &Path) -> Result<StreetIndex, String> {
        let size = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
        if size > MAX_STREETS_BYTES {
            return Err(format!("{} is {size} bytes, more than {MAX_STREETS_BYTES}", path.display()));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<StreetIndex, String> {
        /// The longest segment indexed, metres.
        const MAX_SEGMENT_M: f64 = 5_000.0;
        let collection = match text.parse::<geojson::GeoJson>().map_err(|e| e.to_string())? {
            geojson::GeoJson::FeatureCollection(fc) => fc,
            _ => return Err("the top level is not a FeatureCollection".into()),
        };
        let mut lines: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for feature in &collection.features {
            let Some(name) = feature.property("name").and_then(|v| v.as_str()).map(str::trim).filter(|n| !n.is_empty())
            else {
                continue;
            };
            let parts: Vec<&Vec<Vec<f64>>> = match feature.geometry.as_ref().map(|g| &g.value) {
                Some(geojson::Value::LineString(line)) => vec![line],
                Some(geojson::Value::MultiLineString(lines)) => lines.iter().collect(),
                _ => continue,
            };
            for part in parts {
                // Points off the Earth are skipped: one NaN would spoil the whole index's scale.
                let points: Vec<(f64, f64)> = part
                    .iter()
                    .filter(|p| p.len() >= 2 && proto::event::check_position(p[1], p[0]).is_ok())
                    .map(|p| (p[1], p[0]))
                    .collect();
                lines.push((name.to_owned(), points));
            }
        }
        let count = lines.iter().map(|(_, p)| p.len()).sum::<usize>().max(1);
        let lat0 = lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).sum::<f64>() / count as f64;
        let mut index = StreetIndex { lat0, names: Vec::new(), segments: Vec::new(), grid: HashMap::new() };
        let mut name_ids: HashMap<String, usize> = HashMap::new();
        for (name, points) in lines {
            let next = name_ids.len();
            let id = *name_ids.entry(name.clone()).or_insert(next);
            if id == index.names.len() {
                index.names.push(name);
            }
            for pair in points.windows(2) {
                let (x1, y1) = index.project(pair[0].0, pair[0].1);
                let (x2, y2) = index.project(pair[1].0, pair[1].1);
                // A street's segment spans metres, not countries: a longer one is a mistake in
                // the file, and would fill the grid with millions of cells.
                if (x2 - x1).hypot(y2 - y1) > MAX_SEGMENT_M {
                    continue;
                }
                let segment = index.segments.len();
                index.segments.push((x1, y1, x2, y2, id));
                let (cx1, cy1) = cell(x1.min(x2), y1.min(y2));
                let (cx2, cy2) = cell(x1.max(x2), y1.max(y2));
                for cx in cx1..=cx2 {
                    for cy in cy1..=cy2 {
                        index.grid.entry((cx, cy)).or_default().push(segment);
                    }
                }
            }
        }
        Ok(index)
    }

    fn project(&self, lat: f64, lon: f64) -> (f64, f64) {
        (lon * 111_320.0 * self.lat0.to_radians().cos(), lat * 111_132.0)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// How many segments the streets have (see [`StreetIndex::segment_middle`]).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The middle (lat, lon) of segment `i`, and its street's name: places on real streets.
    pub fn segment_middle(&self, i: usize) -> Option<((f64, f64), &str)> {
        let &(x1, y1, x2, y2, name) = self.segments.get(i)?;
        Some((self.unproject((x1 + x2) / 2.0, (y1 + y2) / 2.0), self.names[name].as_str()))
    }

    fn unproject(&self, x: f64, y: f64) -> (f64, f64) {
        (y / 111_132.0, x / (111_320.0 * self.lat0.to_radians().cos()))
    }

    /// The street named in an address (the longest street name the address contains, case and
    /// accents ignored), with the middle of each of its segments (lat, lon).
    pub fn find_in_address(&self, address: &str) -> Option<(&str, Vec<(f64, f64)>)> {
        let padded = format!(" {} ", normalize(address));
        let (id, _) = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (i, normalize(n)))
            .filter(|(_, n)| n.len() >= 4 && padded.contains(&format!(" {n} ")))
            .max_by_key(|(_, n)| n.len())?;
        let points = self
            .segments
            .iter()
            .filter(|s| s.4 == id)
            .map(|&(x1, y1, x2, y2, _)| self.unproject((x1 + x2) / 2.0, (y1 + y2) / 2.0))
            .collect();
        Some((self.names[id].as_str(), points))
    }

    /// The name of the street nearest to the point, if one is within `max_m` metres.
    pub fn nearest(&self, lat: f64, lon: f64, max_m: f64) -> Option<&str> {
        let (x, y) = self.project(lat, lon);
        let reach = (max_m / CELL_M).ceil() as i64;
        let (cx, cy) = cell(x, y);
        let mut best: Option<(f64, usize)> = None;
        for dx in -reach..=reach {
            for dy in -reach..=reach {
                for &s in self.grid.get(&(cx + dx, cy + dy)).into_iter().flatten() {
                    let (x1, y1, x2, y2, name) = self.segments[s];
                    let d = distance_to_segment(x, y, x1, y1, x2, y2);
                    if d <= max_m && best.is_none_or(|(b, _)| d < b) {
                        best = Some((d, name));
                    }
                }
            }
        }
        best.map(|(_, name)| self.names[name].as_str())
    }
}

/// A name as compared for search: lower case, without accents, words separated by one space.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'à' | 'â' | 'ä' | 'á' | 'ã' => 'a',
            'ç' => 'c',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'î' | 'ï' | 'í' => 'i',
            'ô' | 'ö' | 'ó' => 'o',
            'ù' | 'û' | 'ü' | 'ú' => 'u',
            'ÿ' => 'y',
            'œ' => {
                out.push('o');
                'e'
            }
            c if c.is_alphanumeric() => c,
            _ => ' ',
        };
        if c != ' ' || !out.ends_with(' ') {
            out.push(c);
        }
    }
    out.trim().to_owned()
}

fn cell(x: f64, y: f64) -> (i64, i64) {
    ((x / CELL_M).floor() as i64, (y / CELL_M).floor() as i64)
}

fn distance_to_segment(px: f64, py: f64, x1: f64, y1: f64, x2: f64, y2: f64) -> f64 {
    let (dx, dy) = (x2 - x1, y2 - y1);
    let length2 = dx * dx + dy * dy;
    let t = if length2 == 0.0 { 0.0 } else { (((px - x1) * dx + (py - y1) * dy) / length2).clamp(0.0, 1.0) };
    (px - (x1 + t * dx)).hypot(py - (y1 + t * dy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_street_table() {
        // Two parallel east-west streets about 111 m apart.
        let text = r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"name":"Rue Nord"},"geometry":{"type":"LineString","coordinates":[[3.870,43.601],[3.880,43.601]]}},
          {"type":"Feature","properties":{"name":"Rue Sud"},"geometry":{"type":"LineString","coordinates":[[3.870,43.600],[3.880,43.600]]}},
          {"type":"Feature","properties":{"name":null},"geometry":{"type":"LineString","coordinates":[[3.870,43.6005],[3.880,43.6005]]}}]}"#;
        let index = StreetIndex::parse(text).unwrap();
        assert_eq!(index.len(), 2, "unnamed streets are left out");
        let cases = [
            ((43.60090, 3.875), Some("Rue Nord")),
            ((43.60010, 3.875), Some("Rue Sud")),
            ((43.60050, 3.875), None),             // 55 m from both: beyond 30 m
            ((43.60000, 3.8803), Some("Rue Sud")), // 24 m past its end
            ((43.60000, 3.8805), None),            // 40 m past its end
            ((43.60000, 3.8900), None),
        ];
        for ((lat, lon), expected) in cases {
            assert_eq!(index.nearest(lat, lon, 30.0), expected, "({lat}, {lon})");
        }
    }

    #[test]
    fn a_street_is_found_in_an_address() {
        let text = r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"name":"Rue de la Loge"},"geometry":{"type":"LineString","coordinates":[[3.870,43.601],[3.880,43.601]]}},
          {"type":"Feature","properties":{"name":"Rue de l'Église"},"geometry":{"type":"LineString","coordinates":[[3.870,43.600],[3.872,43.600]]}},
          {"type":"Feature","properties":{"name":"Rue"},"geometry":{"type":"LineString","coordinates":[[3.870,43.600],[3.872,43.600]]}}]}"#;
        let index = StreetIndex::parse(text).unwrap();
        let (name, points) = index.find_in_address("12, RUE DE LA LOGE 34000 Montpellier").unwrap();
        assert_eq!(name, "Rue de la Loge");
        assert!((points[0].0 - 43.601).abs() < 1e-9 && (points[0].1 - 3.875).abs() < 1e-9, "{points:?}");
        assert_eq!(index.find_in_address("3 rue de l eglise").unwrap().0, "Rue de l'Église", "accents and apostrophes");
        assert!(index.find_in_address("Rue de la Logette").is_none(), "whole words only");
        assert_eq!(normalize("  Œuvre  d'Art—Saint-Éloi "), "oeuvre d art saint eloi");
    }
}
