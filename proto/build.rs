//! Compiles `vigie/**/*.proto` (and the GTFS-Realtime messages of `transit_realtime/`) with protox (pure Rust, no `protoc`) and generates prost messages and
//! tonic services. The encoded descriptor set is kept for gRPC server reflection.
use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "vigie/v1/common.proto",
    "vigie/v1/event.proto",
    "vigie/lighting/v1/lighting.proto",
    "vigie/transport/v1/transport.proto",
    "vigie/reports/v1/reports.proto",
    "vigie/water/v1/water.proto",
    "vigie/ops/v1/ops.proto",
    "transit_realtime/gtfs-realtime.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("vigie_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
