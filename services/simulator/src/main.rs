use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = simulator::Config::parse();
    runtime::telemetry::init(&config.log_format);
    let result = async {
        let shutdown = runtime::shutdown::on_signal()?;
        simulator::run(config, shutdown).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "vigie-simulator failed");
            ExitCode::FAILURE
        }
    }
}
