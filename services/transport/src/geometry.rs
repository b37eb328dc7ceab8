//! Shapes as polylines with their cumulative length, and positions projected onto them.

/// Metres per degree of latitude (mean).
const M_PER_DEG_LAT: f64 = 111_132.0;

#[derive(Debug, Clone, PartialEq)]
pub struct Polyline {
    /// (lat, lon), in order.
    points: Vec<(f64, f64)>,
    /// Distance from the first point to each point, metres.
    cumulative_m: Vec<f64>,
}

/// Where a position lies relative to a polyline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// Distance along the polyline to the nearest point on it, metres.
    pub along_m: f64,
    /// Distance from the position to that point, metres.
    pub offset_m: f64,
}

fn local_m(lat0: f64, a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    let m_per_deg_lon = 111_320.0 * lat0.to_radians().cos();
    ((b.1 - a.1) * m_per_deg_lon, (b.0 - a.0) * M_PER_DEG_LAT)
}

impl Polyline {
    pub fn new(points: Vec<(f64, f64)>) -> Polyline {
        let mut cumulative_m = Vec::with_capacity(points.len());
        let mut total = 0.0;
        for (i, p) in points.iter().enumerate() {
            if i > 0 {
                let (dx, dy) = local_m(p.0, points[i - 1], *p);
                total += dx.hypot(dy);
            }
            cumulative_m.push(total);
        }
        Polyline { points, cumulative_m }
    }

    pub fn length_m(&self) -> f64 {
        self.cumulative_m.last().copied().unwrap_or(0.0)
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The point `along_m` metres along the polyline (clamped to its ends), and the bearing there
    /// (degrees clockwise from north). `None` for an empty polyline.
    pub fn point_at(&self, along_m: f64) -> Option<(f64, f64, f64)> {
        let first = *self.points.first()?;
        let i = self.cumulative_m.partition_point(|&c| c < along_m).clamp(1, self.points.len().max(2) - 1);
        let (Some(&a), Some(&b)) = (self.points.get(i - 1), self.points.get(i)) else {
            return Some((first.0, first.1, 0.0));
        };
        let length = self.cumulative_m[i] - self.cumulative_m[i - 1];
        let t = if length > 0.0 { ((along_m - self.cumulative_m[i - 1]) / length).clamp(0.0, 1.0) } else { 0.0 };
        let (dx, dy) = local_m(a.0, a, b);
        let bearing = dx.atan2(dy).to_degrees().rem_euclid(360.0);
        Some((a.0 + t * (b.0 - a.0), a.1 + t * (b.1 - a.1), bearing))
    }

    /// The nearest point of the polyline to (lat, lon). `None` for an empty polyline.
    pub fn project(&self, lat: f64, lon: f64) -> Option<Projection> {
        let p = (lat, lon);
        if self.points.len() == 1 {
            let (dx, dy) = local_m(lat, self.points[0], p);
            return Some(Projection { along_m: 0.0, offset_m: dx.hypot(dy) });
        }
        let mut best: Option<Projection> = None;
        for i in 1..self.points.len() {
            let a = self.points[i - 1];
            let (sx, sy) = local_m(lat, a, self.points[i]);
            let (px, py) = local_m(lat, a, p);
            let length2 = sx * sx + sy * sy;
            let t = if length2 == 0.0 { 0.0 } else { ((px * sx + py * sy) / length2).clamp(0.0, 1.0) };
            let offset_m = (px - t * sx).hypot(py - t * sy);
            if best.is_none_or(|b| offset_m < b.offset_m) {
                let along_m = self.cumulative_m[i - 1] + t * length2.sqrt();
                best = Some(Projection { along_m, offset_m });
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 km due east from (43.6, 3.87).
    fn line() -> Polyline {
        let km_lon = 1000.0 / (111_320.0 * 43.6f64.to_radians().cos());
        Polyline::new(vec![(43.6, 3.87), (43.6, 3.87 + km_lon / 2.0), (43.6, 3.87 + km_lon)])
    }

    #[test]
    fn projection_table() {
        let l = line();
        assert!((l.length_m() - 1000.0).abs() < 0.5, "{}", l.length_m());
        let m_lon = 1.0 / (111_320.0 * 43.6f64.to_radians().cos());
        let cases = [
            ((43.6, 3.87), 0.0, 0.0, "the start"),
            ((43.6, 3.87 + 250.0 * m_lon), 250.0, 0.0, "on the line"),
            ((43.6 + 30.0 / M_PER_DEG_LAT, 3.87 + 700.0 * m_lon), 700.0, 30.0, "30 m north of it"),
            ((43.6, 3.87 - 50.0 * m_lon), 0.0, 50.0, "before the start"),
            ((43.6, 3.87 + 1200.0 * m_lon), 1000.0, 200.0, "past the end"),
        ];
        for ((lat, lon), along, offset, why) in cases {
            let p = l.project(lat, lon).unwrap();
            assert!((p.along_m - along).abs() < 1.0 && (p.offset_m - offset).abs() < 1.0, "{why}: {p:?}");
        }
        assert!(Polyline::new(vec![]).project(43.6, 3.87).is_none());
        // And back: the point 250 m along lies on the line, heading east.
        let (lat, lon, bearing) = l.point_at(250.0).unwrap();
        let p = l.project(lat, lon).unwrap();
        assert!((p.along_m - 250.0).abs() < 0.5 && p.offset_m < 0.5 && (bearing - 90.0).abs() < 0.1, "{p:?} {bearing}");
        let (_, lon_end, _) = l.point_at(5_000.0).unwrap();
        assert!((lon_end - (3.87 + 1000.0 * m_lon)).abs() < 1e-9, "clamped to the end");
    }
}
