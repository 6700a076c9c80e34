//! `phantom-grpc-api`: the Phantom gRPC API server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use phantom::config::Config;

/// Serves phantom.v1.PhantomController, PhantomAdmin, health and reflection.
#[derive(Parser, Debug)]
#[command(name = "phantom-grpc-api", version, about)]
struct Args {
    /// Config file; a missing file at the default path means the embedded defaults.
    #[arg(long, default_value = "config.toml")]
    config: PathBuf,
    /// Listen address, host:port or unix:/path (overrides [server] listen).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory (overrides [storage] data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let explicit = args.config != std::path::Path::new("config.toml");
    let mut cfg = match Config::load(&args.config, explicit) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("phantom-grpc-api: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(l) = args.listen {
        cfg.server.listen = l;
    }
    if let Some(d) = args.data_dir {
        cfg.storage.data_dir = d;
    }
    if let Err(e) = cfg
        .validate()
        .and_then(|_| phantom::server::Listen::parse(&cfg.server.listen).map(|_| ()))
    {
        eprintln!("phantom-grpc-api: {}: {e}", args.config.display());
        return ExitCode::from(2);
    }
    if args.check_config {
        println!("{}: ok", args.config.display());
        return ExitCode::SUCCESS;
    }
    if let Err(e) = phantom::telemetry::init(&cfg.log) {
        eprintln!("phantom-grpc-api: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("phantom-grpc-api: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let server = match phantom::server::start(cfg).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("phantom-grpc-api: {e}");
                return ExitCode::FAILURE;
            }
        };
        // A line scripts and tests can wait for.
        println!("phantom-grpc-api listening on {}", server.local_addr);
        wait_for_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
