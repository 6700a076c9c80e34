//! `phantom-grpc-api`: the Phantom gRPC API server.

/// mimalloc: the store's writer and the replay allocate per message, and there it is faster
/// than the system allocator (BENCHMARKS.md, history). Its arenas are why THP is off (below).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Turns transparent huge pages off for this process. mimalloc's arenas are large aligned
/// mappings, so with THP on (`always`, common on Linux) each idle event stream's few KiB made
/// whole 2 MiB pages resident: 19.9 KiB of RSS per stream at 10,000 streams instead of 6.9
/// (BENCHMARKS.md). Only pages touched from here on are affected, which is nearly all of them.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes integers only and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        eprintln!(
            "phantom-grpc-api: could not turn transparent huge pages off: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
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
    // Values, listen address, exposure refusals and TLS files, exactly as the server will.
    if let Err(e) = phantom::server::preflight(&cfg) {
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
    match phantom::runtime::block_on(cfg.server.runtime, serve(cfg)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("phantom-grpc-api: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the server, then serves until SIGINT or SIGTERM.
async fn serve(cfg: Config) -> ExitCode {
    let server = match phantom::server::start(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("phantom-grpc-api: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A line scripts and tests can wait for.
    println!("phantom-grpc-api listening on {}", server.local_addr);
    if let Some(m) = server.metrics_addr {
        println!("metrics on http://{m}/metrics");
    }
    wait_for_signal(&server).await;
    tracing::info!("shutting down");
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// Waits for SIGINT or SIGTERM; meanwhile SIGHUP reloads the TLS files.
async fn wait_for_signal(server: &phantom::server::RunningServer) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = term.recv() => return,
            _ = hup.recv() => match server.reload_tls() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => tracing::warn!(error = %e, "TLS reload failed; the old certificates stay"),
            },
        }
    }
}
