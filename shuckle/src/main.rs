//! `shuckle`: flags, key, store and sockets; the logic is in the library.

use std::io::IsTerminal;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use client::keyfile;
use shuckle::Timing;
use shuckle::service::Shuckle;
use shuckle::store::Store;
use wire::limits::{BLOCK_SERVICE_STALE_AFTER_NS, NS_PER_SECOND};

#[derive(Parser, Debug)]
#[command(name = "shuckle", about = "eggsfs registry of block services, shards and the CDC, with a web UI")]
struct Flags {
    /// Folder of the persistent store (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// HTTP address (JSON API and web UI); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:5000")]
    http: SocketAddr,
    /// UDP address for registrations and binary queries.
    #[arg(long, default_value = "127.0.0.1:5000")]
    udp: SocketAddr,
    /// The cluster key (16 bytes); default `<data-dir>/cluster.key`, created if missing.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Each block service is checked about once per this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    check_interval_ms: u64,
    /// A check without an answer within this many milliseconds failed.
    #[arg(long, default_value_t = 2000)]
    check_timeout_ms: u64,
    /// A block service without a good check for this long is stale.
    #[arg(long, default_value_t = BLOCK_SERVICE_STALE_AFTER_NS / NS_PER_SECOND)]
    stale_after_secs: u64,
}

/// Exit codes (ARCHITECTURE.md): 1 runtime failure, 2 configuration.
enum Failure {
    Config(anyhow::Error),
    Runtime(anyhow::Error),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person watching a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let flags = Flags::parse();
    match run(flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(error)) => {
            eprintln!("shuckle: {error:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("shuckle: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn run(flags: Flags) -> Result<(), Failure> {
    use anyhow::Context;
    let config = |error: anyhow::Error| Failure::Config(error);
    if flags.check_interval_ms == 0 || flags.check_timeout_ms == 0 || flags.stale_after_secs == 0 {
        return Err(config(anyhow::anyhow!("intervals and timeouts must be positive")));
    }
    std::fs::create_dir_all(&flags.data_dir)
        .with_context(|| format!("cannot create {}", flags.data_dir.display()))
        .map_err(config)?;
    let key_path = flags.key_file.clone().unwrap_or_else(|| flags.data_dir.join("cluster.key"));
    let cluster_key = keyfile::load_or_create(&key_path).map_err(|e| config(e.into()))?;
    let store = Store::open(&flags.data_dir).map_err(|e| config(e.into()))?;
    let stale_after_ns = flags.stale_after_secs.saturating_mul(NS_PER_SECOND);
    let registry = store.load(stale_after_ns).map_err(|e| config(e.into()))?;
    let shuckle = Arc::new(Shuckle::new(store, registry, &cluster_key, wire::EggsTime::now()));
    let timing = Timing {
        check_period: Duration::from_millis(flags.check_interval_ms),
        check_timeout: Duration::from_millis(flags.check_timeout_ms),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime").map_err(Failure::Runtime)?;
    runtime.block_on(async move {
        let http = tokio::net::TcpListener::bind(flags.http)
            .await
            .with_context(|| format!("cannot bind http {}", flags.http))
            .map_err(config)?;
        let udp = tokio::net::UdpSocket::bind(flags.udp)
            .await
            .with_context(|| format!("cannot bind udp {}", flags.udp))
            .map_err(config)?;
        announce(&http, &udp).context("cannot write to stdout").map_err(Failure::Runtime)?;
        tokio::select! {
            result = shuckle::serve(shuckle, udp, http, timing) => {
                result.context("serving failed").map_err(Failure::Runtime)
            }
            result = stop_signal() => result.context("cannot wait for signals").map_err(Failure::Runtime),
        }
    })
}

fn announce(http: &tokio::net::TcpListener, udp: &tokio::net::UdpSocket) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening http {}", http.local_addr()?)?;
    writeln!(stdout, "listening udp {}", udp.local_addr()?)?;
    writeln!(stdout, "ready")?;
    stdout.flush()
}

/// SIGTERM or SIGINT: a clean stop (everything acknowledged is on disk).
async fn stop_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("stopping");
    Ok(())
}
