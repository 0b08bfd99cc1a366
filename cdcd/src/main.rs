//! `cdcd <DIR>`: the cross-directory coordinator daemon. Flags, wiring and
//! I/O only; the logic is in the library.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use cdcd::commit::{CommitMode, GroupCommit};
use cdcd::coordinator::{Coordinator, RetryPolicy};
use cdcd::store::TxnStore;
use cdcd::udp::{AddressBook, UdpShards, register_with_shuckle, registered_shards};
use clap::Parser;
use client::udp::{ClientOptions, DatagramClient};
use tokio::net::UdpSocket;
use wire::limits::{CDC_PORT_DEFAULT, SHUCKLE_ANNOUNCE_PERIOD_NS, SHUCKLE_PORT_DEFAULT};
use wire::{MacKey, ShardId};

/// The cross-directory coordinator of eggsfs: mkdir, rmdir and moves as
/// durable transactions over the shards.
#[derive(Parser, Debug)]
#[command(name = "cdcd", version)]
struct Args {
    /// Data directory (transaction state goes to DIR/cdc).
    dir: PathBuf,
    /// UDP address to serve on (port 0: any free port).
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], CDC_PORT_DEFAULT)))]
    listen: SocketAddr,
    /// Shuckle's UDP address (host:port).
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
    /// A shard's address, overriding shuckle: `N=IP:PORT` (repeatable).
    #[arg(long = "shard-addr", value_parser = parse_shard_addr)]
    shard_addr: Vec<(ShardId, SocketAddr)>,
}

fn parse_shard_addr(text: &str) -> Result<(ShardId, SocketAddr), String> {
    let (shard, address) = text.split_once('=').ok_or("expected N=IP:PORT")?;
    let shard = shard.parse::<ShardId>().map_err(|e| format!("shard {shard:?}: {e}"))?;
    let address = address.parse::<SocketAddr>().map_err(|e| format!("address {address:?}: {e}"))?;
    Ok((shard, address))
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person watching a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cdcd: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(error)) => {
            eprintln!("cdcd: {error:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("cdcd: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Exit codes (ARCHITECTURE.md): 2 bad configuration, 1 runtime failure.
enum Failure {
    Config(anyhow::Error),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Runtime(error)
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::Runtime(error.into())
    }
}

/// Takes an exclusive lock on `DIR/cdc/lock` for the life of the process:
/// exactly one CDC runs per directory.
fn lock_directory(state_dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = state_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        bail!("{} is locked: another cdcd runs on this directory", path.display());
    }
    Ok(file)
}

async fn run(args: Args) -> Result<(), Failure> {
    let state_dir = args.dir.join("cdc");
    std::fs::create_dir_all(&state_dir).with_context(|| format!("create {}", state_dir.display()))?;
    let _lock = lock_directory(&state_dir)?;
    let key_path = args.key_file.clone().unwrap_or_else(|| args.dir.join("cluster.key"));
    let key = MacKey::new(&client::keyfile::load_or_create(&key_path).map_err(|e| Failure::Config(e.into()))?);
    let shuckle = args
        .shuckle
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| Failure::Config(anyhow!("cannot resolve shuckle address {:?}", args.shuckle)))?;
    let store = Arc::new(TxnStore::open(&state_dir, true).context("open the transaction store")?);

    let socket = Arc::new(UdpSocket::bind(args.listen).await.with_context(|| format!("bind {}", args.listen))?);
    let listen = socket.local_addr()?;
    println!("listening udp {listen}");

    let overrides: HashMap<ShardId, SocketAddr> = args.shard_addr.iter().copied().collect();
    let addresses = Arc::new(AddressBook::new(overrides.clone()));
    // Shuckle is asked at start only when the flags leave something open
    // (the announce loop keeps asking in the background).
    let flags_complete = !args.shards.is_empty() && args.shards.iter().all(|shard| overrides.contains_key(shard));
    // One requester (socket, timeouts, acceptance rules: the client
    // library's) for every request the CDC sends, to shards and shuckle.
    let options = ClientOptions { key: Some(key.clone()), ..ClientOptions::default() };
    let requester = DatagramClient::bind_any(options).context("bind the request socket")?;
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
    let commits = GroupCommit::new(store, CommitMode::Blocking);
    tokio::spawn(commits.clone().run());
    let coordinator = Arc::new(Coordinator::new(shards, commits, new_dir_shards, RetryPolicy::default(), None));

    tokio::spawn(announce(requester, shuckle, listen, addresses));
    println!("ready");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = cdcd::server::serve(socket, coordinator) => result.context("serving")?,
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    // Any transaction in progress is persisted and resumes at the next start.
    Ok(())
}

/// Registers with shuckle and refreshes the shard addresses, periodically.
async fn announce(requester: DatagramClient, shuckle: SocketAddr, listen: SocketAddr, addresses: Arc<AddressBook>) {
    let mut interval = tokio::time::interval(Duration::from_nanos(SHUCKLE_ANNOUNCE_PERIOD_NS));
    loop {
        interval.tick().await;
        if !register_with_shuckle(&requester, shuckle, listen).await {
            tracing::warn!(%shuckle, "registration with shuckle failed; will retry");
        }
        if let Some(shards) = registered_shards(&requester, shuckle).await {
            addresses.set_registered(&shards);
        }
    }
}
