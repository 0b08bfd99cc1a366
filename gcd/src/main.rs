//! `gcd`: runs the collector. Prints `listening metrics ADDR` (the
//! `/metrics` endpoint, served by `daemon::metrics`) and `ready`, then one
//! log line per cycle on stderr.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use daemon::udp::{ClientOptions, DatagramClient};
use gcd::collector::{Collector, Config};
use gcd::metrics::Metrics;

#[derive(Parser)]
#[command(about = "eggsfs garbage collector, scrubber and migrator")]
struct Args {
    /// Shuckle's UDP address, HOST:PORT (names resolved at start); like
    /// `eggs`, taken from EGGS_SHUCKLE when the flag is not given.
    #[arg(long, env = "EGGS_SHUCKLE", value_name = "HOST:PORT", default_value_t = format!("127.0.0.1:{}", wire::limits::SHUCKLE_PORT_DEFAULT))]
    shuckle: String,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free port;
    /// printed as `listening metrics ADDR`).
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics: SocketAddr,
    /// Seconds between the end of a collection cycle and the next.
    #[arg(long, default_value_t = 60)]
    gc_interval_secs: u64,
    /// Scrub read rate per block service (disk), bytes/s; 0 = unlimited.
    #[arg(long, default_value_t = 50 << 20)]
    scrub_bytes_per_second: u64,
    /// Seconds between scrub passes; 0 = never scrub.
    #[arg(long, default_value_t = 24 * 3600)]
    scrub_interval_secs: u64,
    /// A block service stale this many seconds is emptied like a terminal one.
    #[arg(long, default_value_t = 24 * 3600)]
    migrate_stale_after_secs: u64,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let code = if error.use_stderr() { 2 } else { 0 };
            let _ = error.print();
            return std::process::ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gcd: cannot start the runtime: {error}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err((code, error)) => {
            eprintln!("gcd: {error:#}");
            std::process::ExitCode::from(code)
        }
    }
}

async fn run(args: Args) -> Result<(), (u8, anyhow::Error)> {
    let shuckle =
        daemon::address::resolve("--shuckle", &args.shuckle).map_err(|failure| (2, anyhow::anyhow!(failure.line())))?;
    let metrics = Metrics::default();
    daemon::metrics::serve(args.metrics, metrics.registry(), "gcd")
        .map_err(|failure| (failure.code(), anyhow::anyhow!(failure.line())))?;
    let udp = DatagramClient::bind_any(ClientOptions::default()).map_err(|error| (1, error.into()))?;
    let config = Config {
        shuckle,
        interval: Duration::from_secs(args.gc_interval_secs),
        scrub_bytes_per_second: args.scrub_bytes_per_second,
        scrub_interval: Duration::from_secs(args.scrub_interval_secs),
        migrate_stale_after: Duration::from_secs(args.migrate_stale_after_secs),
    };
    let collector = Collector::new(udp, config.clone(), metrics.clone());
    println!("ready");
    if !config.scrub_interval.is_zero() {
        let scrubber = collector.clone();
        tokio::spawn(async move {
            loop {
                let started = Instant::now();
                scrubber.scrub_pass().await;
                let metrics = &scrubber.metrics;
                tracing::info!(
                    seconds = started.elapsed().as_secs_f64(),
                    blocks_scrubbed = metrics.blocks_scrubbed.get(),
                    corruptions_found = metrics.corruptions_found.get(),
                    corruptions_repaired = metrics.corruptions_repaired.get(),
                    "scrub pass done (totals since start)"
                );
                tokio::time::sleep(config.scrub_interval).await;
            }
        });
    }
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|error| (1, error.into()))?;
    let mut interrupt =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(|error| (1, error.into()))?;
    loop {
        let started = Instant::now();
        let report = tokio::select! {
            report = collector.cycle() => report,
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
        };
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            eden_due = report.eden_files_due,
            eden_collected = report.eden_files_collected,
            dirents_purged = report.dirents_purged,
            directories_collected = report.directories_collected,
            blocks_migrated = report.blocks_migrated,
            blocks_awaiting_migration = report.blocks_awaiting_migration,
            errors = report.errors,
            "gc cycle"
        );
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
        }
    }
}
