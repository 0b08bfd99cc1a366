//! `cdcd <DIR>`: the cross-directory coordinator daemon. Flags, wiring and
//! I/O only; the logic is in the library.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cdcd::commit::{CommitMode, GroupCommit};
use cdcd::coordinator::{Coordinator, RetryPolicy};
use cdcd::store::TxnStore;
use cdcd::udp::{AddressBook, UdpShards, register_with_shuckle, registered_shards};
use clap::Parser;
use daemon::address;
use daemon::announce::{self, Proto};
use daemon::folder::{self, FolderLock};
use daemon::signals::StopSignals;
use daemon::udp::{ClientOptions, DatagramClient};
use daemon::{Failure, OrUsage};
use tokio::net::UdpSocket;
use wire::limits::{CDC_PORT_DEFAULT, SHUCKLE_ANNOUNCE_PERIOD_NS, SHUCKLE_PORT_DEFAULT};
use wire::{MacKey, ShardId};

/// The cross-directory coordinator of eggsfs: mkdir, rmdir and moves as
/// durable transactions over the shards.
#[derive(Parser, Debug)]
#[command(
    name = "cdcd",
    version,
    after_help = "Needs from the OS: the UDP port of --listen, reachable from clients; UDP to the shards and \
                  shuckle; the cluster key file readable only by this user; a folder on a disk that honours \
                  fsync (transactions are persisted before every step). Exit codes: 0 stopped by \
                  SIGTERM/SIGINT, 1 runtime failure, 2 bad usage or configuration (incl. a port in use or a \
                  folder locked by another cdcd)."
)]
struct Args {
    /// Data directory (transaction state goes to DIR/cdc).
    dir: PathBuf,
    /// UDP address to serve on (port 0: any free port).
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], CDC_PORT_DEFAULT)))]
    listen: SocketAddr,
    /// Address registered with shuckle, which clients send to: HOST:PORT,
    /// or HOST for the bound port. Default: the --listen address; required
    /// when that is a wildcard (0.0.0.0 or ::). Requests to the shards and
    /// shuckle are sent from its IP, so it must be this host's.
    #[arg(long, value_name = "HOST[:PORT]")]
    advertise: Option<String>,
    /// Shuckle's UDP address (HOST:PORT; names resolved at start).
    #[arg(long, default_value_t = format!("127.0.0.1:{SHUCKLE_PORT_DEFAULT}"))]
    shuckle: String,
    /// The cluster key (16 raw bytes; created, mode 0600, when missing).
    /// Default: DIR/cluster.key.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Shards new directories may be created on, e.g. `0,1,2`. Default: the
    /// shards registered with shuckle, else 0 and 1.
    #[arg(long, value_delimiter = ',')]
    shards: Vec<ShardId>,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free port;
    /// printed as `listening metrics ADDR`).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// A shard's address, overriding shuckle: `N=HOST:PORT` (repeatable).
    #[arg(long = "shard-addr", value_parser = parse_shard_addr)]
    shard_addr: Vec<(ShardId, SocketAddr)>,
    /// Size of the transaction store's write-ahead journal
    /// (`DIR/cdc/journal`, written with zeros when created; an existing
    /// journal keeps its size), in MiB.
    #[arg(long, default_value_t = daemon::journal::JOURNAL_BYTES >> 20, value_parser = clap::value_parser!(u64).range(1..=4096))]
    journal_mib: u64,
    /// Journal batches written and synced at once
    /// (`daemon::journal::Config::lanes`).
    #[arg(long, default_value_t = daemon::journal::SYNC_LANES as u64, value_parser = clap::value_parser!(u64).range(1..=daemon::journal::SYNC_LANES_MAX as u64))]
    journal_lanes: u64,
}

fn parse_shard_addr(text: &str) -> Result<(ShardId, SocketAddr), String> {
    let (shard, host_port) = text.split_once('=').ok_or("expected N=HOST:PORT")?;
    let shard = shard.parse::<ShardId>().map_err(|e| format!("shard {shard:?}: {e}"))?;
    let address = address::resolve("--shard-addr", host_port).map_err(|failure| failure.line())?;
    Ok((shard, address))
}

fn main() -> ExitCode {
    let signals = StopSignals::block();
    let args = Args::parse();
    daemon::log::init(daemon::log::Tag { process: "cdcd", shard: None });
    let outcome = signals.map_err(Failure::from).and_then(|signals| {
        // One thread for every task (the store's commits run on the
        // blocking pool): with two workers, a third of cdcd's CPU per mkdir
        // was the workers waking each other (futex, epoll) and stealing
        // tasks; on one thread cdcd's CPU per mkdir fell by about a sixth
        // (perf/results/2026-11-27-s6-cdc-profile.md). A transaction's
        // work between two awaits is microseconds, so one core carries
        // thousands of transactions per second.
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime")?;
        runtime.block_on(run(args, signals))
    });
    daemon::exit_with("cdcd", outcome)
}

async fn run(args: Args, signals: StopSignals) -> Result<(), Failure> {
    let advertise = args.advertise.as_deref().map(address::parse_advertise).transpose()?;
    address::check_listen("--listen", args.listen, advertise)?;
    if let Some(advertise) = advertise {
        address::check_local(advertise)?;
    }
    let dir = folder::prepare(&args.dir).or_usage()?;
    // Exactly one CDC per folder: its transactions must run once.
    let state_dir = folder::prepare(&dir.join("cdc")).or_usage()?;
    let _lock = FolderLock::acquire(&state_dir, "cdcd").or_usage()?;
    let key_path = match &args.key_file {
        Some(path) => folder::absolute(path).or_usage()?,
        None => dir.join("cluster.key"),
    };
    let key = MacKey::new(&daemon::keyfile::load_or_create(&key_path).or_usage()?);
    let shuckle = address::resolve("--shuckle", &args.shuckle)?;
    let journal = daemon::journal::Config {
        bytes: args.journal_mib << 20,
        lanes: args.journal_lanes as usize,
        ..daemon::journal::Config::default()
    };
    let store = Arc::new(TxnStore::open_with(&state_dir, true, journal).context("open the transaction store")?);
    // A fault inside the store's map from now on: one line, exit 3 (daemon::fault).
    daemon::fault::guard("cdcd", &state_dir, None).context("install the store's fault guard")?;

    let socket =
        UdpSocket::bind(args.listen).await.with_context(|| format!("cannot bind udp {}", args.listen)).or_usage()?;
    let socket = Arc::new(socket);
    let listen = socket.local_addr()?;
    announce::listening(Proto::Udp, listen)?;
    let advertised = address::advertised(advertise, listen);

    let overrides: HashMap<ShardId, SocketAddr> = args.shard_addr.iter().copied().collect();
    let addresses = Arc::new(AddressBook::new(overrides.clone()));
    // Shuckle is asked at start only when the flags leave something open
    // (the announce loop keeps asking in the background).
    let flags_complete = !args.shards.is_empty() && args.shards.iter().all(|shard| overrides.contains_key(shard));
    // One requester (socket, timeouts, acceptance rules: the client
    // library's) for every request the CDC sends, to shards and shuckle.
    let options = ClientOptions { key: Some(key.clone()), ..ClientOptions::default() };
    // Bound to the advertised IP (any port), so the shards and shuckle see
    // requests from the address the CDC registered.
    let requester = DatagramClient::bind(address::source(advertised), options).context("bind the request socket")?;
    let registered = if flags_complete { None } else { registered_shards(&requester, shuckle).await };
    let mut new_dir_shards = args.shards.clone();
    match &registered {
        Some(shards) => {
            addresses.set_registered(shards);
            if new_dir_shards.is_empty() {
                new_dir_shards = shards.iter().map(|(shard, _)| *shard).collect();
            }
        }
        None if flags_complete => {}
        None => tracing::warn!(%shuckle, "shuckle did not answer; using default shard addresses"),
    }
    new_dir_shards.sort_unstable();
    new_dir_shards.dedup();
    tracing::info!(?new_dir_shards, "new directories go to these shards (empty: 0 and 1)");

    let shards = UdpShards::new(requester.clone(), addresses.clone());
    let mut registry = daemon::metrics::Registry::default();
    store.journal_metrics().register(registry.sub_registry_with_prefix("cdcd"));
    let commits = GroupCommit::new(store, CommitMode::Blocking);
    let metrics = cdcd::metrics::Metrics::new(&mut registry, &commits.stats);
    if let Some(address) = args.metrics {
        daemon::metrics::serve(address, registry, "cdcd")?;
    }
    tokio::spawn(commits.clone().run());
    let coordinator = Arc::new(Coordinator::new(shards, commits, new_dir_shards, RetryPolicy::default(), None));

    tokio::spawn(announce(requester, shuckle, advertised, addresses));
    announce::ready()?;

    tokio::select! {
        result = cdcd::server::serve(socket, coordinator, metrics) => result.context("serving")?,
        () = signals.stopped() => {}
    }
    // Any transaction in progress is persisted and resumes at the next start.
    Ok(())
}

/// Registers with shuckle and refreshes the shard addresses, periodically.
async fn announce(requester: DatagramClient, shuckle: SocketAddr, advertised: SocketAddr, addresses: Arc<AddressBook>) {
    let mut interval = tokio::time::interval(Duration::from_nanos(SHUCKLE_ANNOUNCE_PERIOD_NS));
    loop {
        interval.tick().await;
        if !register_with_shuckle(&requester, shuckle, advertised).await {
            tracing::warn!(%shuckle, "registration with shuckle failed; will retry");
        }
        if let Some(shards) = registered_shards(&requester, shuckle).await {
            addresses.set_registered(&shards);
        }
    }
}
