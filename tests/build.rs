//! Compiles the benchmark's own gRPC service (`proto/vigie/bench/v1/echo.proto`, the raw tonic
//! baseline B3). It lives here, not in the `proto` crate: no production binary carries it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/vigie/bench/v1/echo.proto");
    let descriptors = protox::compile(["vigie/bench/v1/echo.proto"], ["proto"])?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(descriptors)?;
    Ok(())
}
