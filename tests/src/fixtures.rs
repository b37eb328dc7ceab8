//! Territories and feeds for the tests: a small synthetic territory, the real one when the
//! shared data is there, streets of lamps, GTFS archives, and the official GTFS-RT decoder.

use super::*;

/// Two square communes side by side: 34172 ("Ouest", lon 3.80-3.90) and 34129 ("Est",
/// lon 3.90-4.00), lat 43.50-43.70.
pub fn test_territory() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let square = |insee: &str, name: &str, west: f64, east: f64| {
        serde_json::json!({"type": "Feature", "properties": {"insee": insee, "name": name, "population": 1000},
          "geometry": {"type": "Polygon", "coordinates": [[[west, 43.5], [east, 43.5], [east, 43.7], [west, 43.7], [west, 43.5]]]}})
    };
    let communes = serde_json::json!({"type": "FeatureCollection",
        "features": [square("34172", "Ouest", 3.8, 3.9), square("34129", "Est", 3.9, 4.0)]});
    std::fs::write(dir.path().join("communes.geojson"), communes.to_string())?;
    Ok(dir)
}

/// The real territory of `../shared/data` (communes, streets, streetlights, transit feed, water
/// network), as a folder of links the test owns; `None` when the data is absent.
pub fn real_territory() -> Result<Option<tempfile::TempDir>> {
    let data = repo_root().join("../shared/data/montpellier-mediterranee-metropole");
    if !data.join("communes.geojson").is_file() {
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    for name in ["communes.geojson", "streets.geojson", "lighting", "transit", "water"] {
        if data.join(name).exists() {
            std::os::unix::fs::symlink(data.join(name), dir.path().join(name))?;
        }
    }
    Ok(Some(dir))
}

/// A free TCP port on 127.0.0.1 (for a process that must come back on the same address).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Lamps along an east-west street: `n` lamps `spacing_m` apart from (lat, lon), named
/// `<prefix>00`, `<prefix>01`, ...
pub fn street_of_lamps(prefix: &str, n: usize, lat: f64, lon: f64, spacing_m: f64) -> Vec<(String, f64, f64)> {
    let deg_per_m = 1.0 / (111_320.0 * lat.to_radians().cos());
    (0..n).map(|i| (format!("{prefix}{i:02}"), lat, lon + i as f64 * spacing_m * deg_per_m)).collect()
}

/// The test territory plus a streetlight inventory (`lighting/streetlights.geojson`), in the
/// format of the real data: Point features with `id`, `lamp_type` and `street`.
pub fn territory_with_streetlights(lamps: &[(String, f64, f64)], street: &str) -> Result<tempfile::TempDir> {
    let dir = test_territory()?;
    let features: Vec<serde_json::Value> = lamps
        .iter()
        .map(|(id, lat, lon)| {
            serde_json::json!({"type": "Feature", "properties": {"id": id, "lamp_type": "LANTERNE", "street": street},
              "geometry": {"type": "Point", "coordinates": [lon, lat]}})
        })
        .collect();
    std::fs::create_dir_all(dir.path().join("lighting"))?;
    let inventory = serde_json::json!({"type": "FeatureCollection", "features": features});
    std::fs::write(dir.path().join("lighting/streetlights.geojson"), inventory.to_string())?;
    Ok(dir)
}

/// Writes a GTFS feed (file name, text) as the territory's `transit/gtfs.zip`.
pub fn write_gtfs_zip(territory: &Path, files: &[(&str, String)]) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(territory.join("transit"))?;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(territory.join("transit/gtfs.zip"))?);
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, text) in files {
        zip.start_file(*name, options)?;
        zip.write_all(text.as_bytes())?;
    }
    zip.finish()?;
    Ok(())
}

/// A GTFS-Realtime feed message decoded by Google's published bindings (`gtfs-realtime-bindings`
/// on PyPI, built from the official gtfs-realtime.proto; installed by deploy/install-tools.sh), as
/// JSON with the specification's field names. Independent of Vigie's own transcription.
pub fn decode_gtfs_rt_officially(bytes: &[u8]) -> Result<serde_json::Value> {
    use std::io::Write;
    let python = repo_root().join(".tools/venv/bin/python");
    let script = repo_root().join("tests/gtfs_rt_decode.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{} is missing: run deploy/install-tools.sh", python.display()))?;
    child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?.write_all(bytes)?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "the official GTFS-Realtime bindings could not decode the feed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// A lamp working normally, on, at `level` (0 to 1), as its controller reports it now.
pub fn lamp_report(id: &str, level: f64) -> proto::lighting::ReportStatusRequest {
    use proto::lighting::{LampStatus, PowerState, StatusReport};
    proto::lighting::ReportStatusRequest {
        report: Some(StatusReport {
            streetlight_id: id.into(),
            observed_at: Some(std::time::SystemTime::now().into()),
            status: LampStatus::Ok as i32,
            power_state: PowerState::On as i32,
            illuminance_level: level,
            power_consumption_w: 70.0,
            voltage_v: Some(231.0),
        }),
    }
}
