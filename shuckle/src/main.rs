//! `shuckle`: flags, key, store and sockets; the logic is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Parser;
use daemon::announce::{self, Proto};
use daemon::folder::{self, FolderLock};
use daemon::keyfile;
use daemon::signals::StopSignals;
use daemon::{Failure, OrUsage};
use shuckle::Timing;
use shuckle::service::Shuckle;
use shuckle::store::Store;
use wire::limits::{BLOCK_SERVICE_STALE_AFTER_NS, NS_PER_SECOND};

#[derive(Parser, Debug)]
#[command(
    name = "shuckle",
    about = "eggsfs registry of block services, shards and the CDC, with a web UI",
    after_help = "Needs from the OS: the UDP port of --udp, reachable from every daemon and client; the TCP \
                  port of --http for operators; TCP to every block service (checks); the cluster key file \
                  readable only by this user. Exit codes: 0 stopped by SIGTERM/SIGINT, 1 runtime failure, \
                  2 bad usage or configuration (incl. a port in use or a folder locked by another shuckle)."
)]
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
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free port;
    /// printed as `listening metrics ADDR`).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// The operator token that drain/resume/terminate need over HTTP (32 hex digits);
    /// default `<data-dir>/operator.token`, created (0600) if missing.
    #[arg(long)]
    token_file: Option<PathBuf>,
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

fn main() -> ExitCode {
    let signals = StopSignals::block();
    daemon::log::init(daemon::log::Tag { process: "shuckle", shard: None });
    let flags = Flags::parse();
    let outcome = signals.map_err(Failure::from).and_then(|signals| run(flags, signals));
    daemon::exit_with("shuckle", outcome)
}

fn run(flags: Flags, signals: StopSignals) -> Result<(), Failure> {
    if flags.check_interval_ms == 0 || flags.check_timeout_ms == 0 || flags.stale_after_secs == 0 {
        return Err(Failure::usage(anyhow!("intervals and timeouts must be positive")));
    }
    let data_dir = folder::prepare(&flags.data_dir).or_usage()?;
    let _lock = FolderLock::acquire(&data_dir, "shuckle").or_usage()?;
    let key_path = match &flags.key_file {
        Some(path) => folder::absolute(path).or_usage()?,
        None => data_dir.join("cluster.key"),
    };
    let cluster_key = keyfile::load_or_create(&key_path).or_usage()?;
    let token_path = match &flags.token_file {
        Some(path) => folder::absolute(path).or_usage()?,
        None => data_dir.join("operator.token"),
    };
    let operator = keyfile::load_or_create_token(&token_path).or_usage()?;
    let store = Store::open(&data_dir).or_usage()?;
    // A fault inside the store's map from now on: one line, exit 3 (daemon::fault).
    daemon::fault::guard("shuckle", &data_dir, None)?;
    let stale_after_ns = flags.stale_after_secs.saturating_mul(NS_PER_SECOND);
    let registry = store.load(stale_after_ns).or_usage()?;
    let shuckle = Arc::new(Shuckle::new(store, registry, &cluster_key, wire::EggsTime::now()));
    let metrics = match flags.metrics {
        Some(address) => {
            let mut registry = daemon::metrics::Registry::default();
            let metrics = shuckle::metrics::Metrics::new(&mut registry, Arc::clone(&shuckle));
            daemon::metrics::serve(address, registry, "shuckle")?;
            metrics
        }
        None => shuckle::metrics::Metrics::unregistered(),
    };
    let timing = Timing {
        check_period: Duration::from_millis(flags.check_interval_ms),
        check_timeout: Duration::from_millis(flags.check_timeout_ms),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    runtime.block_on(async move {
        let http = tokio::net::TcpListener::bind(flags.http)
            .await
            .with_context(|| format!("cannot bind http {}", flags.http))
            .or_usage()?;
        let udp = tokio::net::UdpSocket::bind(flags.udp)
            .await
            .with_context(|| format!("cannot bind udp {}", flags.udp))
            .or_usage()?;
        announce::listening(Proto::Http, http.local_addr()?)?;
        announce::listening(Proto::Udp, udp.local_addr()?)?;
        announce::ready()?;
        tokio::select! {
            result = shuckle::serve(shuckle, udp, http, timing, metrics, operator) => {
                result.context("serving failed").map_err(Failure::Runtime)
            }
            // Everything acknowledged is already in the store.
            () = signals.stopped() => Ok(()),
        }
    })
}
