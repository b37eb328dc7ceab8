/// mimalloc rather than glibc's allocator: the hot paths allocate and free many small values
/// (events, frames, view entries), and glibc spent a third of the gateway's time rebuilding its
/// view in malloc and free, and kept freed memory (see docs/benchmarks-notes.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = reports::Config::parse();
    runtime::telemetry::init(&config.common.log_format);
    let result = async {
        let shutdown = runtime::shutdown::on_signal()?;
        reports::run(config, shutdown).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "vigie-reports failed");
            ExitCode::FAILURE
        }
    }
}
