//! `metad <SHARD> <DIR>`: runs one metadata shard. Flags and wiring only;
//! the logic is in the library, the plumbing in the `daemon` crate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::Parser;
use daemon::address;
use daemon::folder::{self, FolderLock};
use daemon::signals::StopSignals;
use daemon::{Failure, OrUsage};
use wire::limits::{SHARD_PORT_BASE, SHUCKLE_PORT_DEFAULT};

#[derive(Parser)]
#[command(
    about = "eggsfs metadata shard",
    after_help = "Needs from the OS: the UDP port of --listen, reachable from clients and the CDC; UDP to \
                  shuckle; the cluster key file readable only by this user. Exit codes: 0 stopped by \
                  SIGTERM/SIGINT, 1 runtime failure (incl. a damaged store refused at start), 2 bad usage or configuration (incl. a port in use or a \
                  folder locked by another metad), 3 a read inside the store's map faulted (metad then \
                  refuses to start until `metad --verify` finds the store intact). `metad --verify DIR` checks a stopped shard's store for damage \
                  (exit 0 intact, 1 damaged, 2 unreadable)."
)]
struct Args {
    /// Shard number, 0..=255.
    shard: u8,
    /// State folder (the shard's LMDB lives in `<DIR>/shard-NNN/`, locked
    /// for the daemon's life).
    dir: PathBuf,
    /// UDP address to serve on (default 127.0.0.1:22272+SHARD; port 0 = any).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address registered with shuckle, which clients and the CDC send to:
    /// HOST:PORT, or HOST for the bound port. Default: the --listen address;
    /// required when that is a wildcard (0.0.0.0 or ::). Requests to
    /// shuckle are sent from its IP, so it must be this host's.
    #[arg(long, value_name = "HOST[:PORT]")]
    advertise: Option<String>,
    /// Shuckle's UDP address, HOST:PORT (names resolved at start; default 127.0.0.1:5000).
    #[arg(long)]
    shuckle: Option<String>,
    /// Cluster key file (16 bytes; created if missing). Default `<DIR>/cluster.key`.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free port;
    /// printed as `listening metrics ADDR`).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// I/O threads receiving on the shard's socket (default: one per core).
    #[arg(long)]
    executors: Option<usize>,
    /// An eden file may be expunged this long after its last write step.
    #[arg(long, default_value_t = wire::limits::EDEN_DEADLINE_NS / wire::limits::NS_PER_SECOND)]
    eden_deadline_secs: u64,
    /// A dead entry may be purged this long after it died.
    #[arg(long, default_value_t = wire::limits::PURGE_AGE_MIN_NS / wire::limits::NS_PER_SECOND)]
    purge_age_min_secs: u64,
    /// Size of the shard's write-ahead journal (`<DIR>/shard-NNN/journal`,
    /// zero-filled when created; an existing one keeps its size).
    #[arg(long, default_value_t = daemon::journal::JOURNAL_BYTES >> 20, value_parser = clap::value_parser!(u64).range(1..=4096))]
    journal_mib: u64,
    /// Do not hold a journal sync for the clients just answered. By
    /// default, having answered a batch, the journal holds its next sync
    /// until those clients' next mutations have arrived (at most the last
    /// sync's duration, and 1 ms; a lone client never waits), so that they
    /// share one sync: 5.4 mutations per sync instead of 3.8 with 8 clients
    /// (`perf/results/2026-11-28-s8-gather.md`).
    #[arg(long, default_value_t = false)]
    no_journal_gather: bool,
    /// Journal batches written and synced at once. With one, a mutation
    /// that arrives during a sync waits for it to end before its own
    /// starts; the disk takes concurrent flushes, so by default the next
    /// batch starts on a free lane at once (answers still go out in commit
    /// order).
    #[arg(long, default_value_t = daemon::journal::SYNC_LANES as u64, value_parser = clap::value_parser!(u64).range(1..=daemon::journal::SYNC_LANES_MAX as u64))]
    journal_lanes: u64,
}

fn main() -> ExitCode {
    // `metad --verify DIR`: check a stopped shard's store (metad::verify).
    if let Some(status) = metad::verify::main_hook() {
        return ExitCode::from(status);
    }
    let signals = StopSignals::block();
    let args = Args::parse();
    daemon::log::init(daemon::log::Tag { process: "metad", shard: Some(args.shard) });
    let outcome = signals.map_err(Failure::from).and_then(|signals| run(args, signals));
    daemon::exit_with("metad", outcome)
}

fn run(args: Args, signals: StopSignals) -> Result<(), Failure> {
    let shuckle = match &args.shuckle {
        Some(text) => address::resolve("--shuckle", text)?,
        None => SocketAddr::from(([127, 0, 0, 1], SHUCKLE_PORT_DEFAULT)),
    };
    let advertise = args.advertise.as_deref().map(address::parse_advertise).transpose()?;
    if let Some(listen) = args.listen {
        address::check_listen("--listen", listen, advertise)?;
    }
    if let Some(advertise) = advertise {
        address::check_local(advertise)?;
    }
    let dir = folder::prepare(&args.dir).or_usage()?;
    let shard_folder = folder::prepare(&dir.join(format!("shard-{:03}", args.shard))).or_usage()?;
    let _lock = FolderLock::acquire(&shard_folder, "metad").or_usage()?;
    let key_path = match &args.key_file {
        Some(path) => folder::absolute(path).or_usage()?,
        None => dir.join("cluster.key"),
    };
    let cluster_key = daemon::keyfile::load_or_create(&key_path).or_usage()?;
    // Every acknowledged mutation is already committed: a stop signal needs
    // no flush, and ends the process at once.
    std::thread::Builder::new().name("metad-signals".into()).spawn(move || {
        let _ = signals.wait();
        std::process::exit(i32::from(daemon::exit::EXIT_CLEAN));
    })?;
    let mut registry = daemon::metrics::Registry::default();
    let metrics = metad::metrics::Metrics::new(&mut registry);
    if let Some(address) = args.metrics {
        daemon::metrics::serve(address, registry, "metad")?;
    }
    let listen =
        args.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], SHARD_PORT_BASE + u16::from(args.shard))));
    let config = metad::server::Config {
        shard: args.shard,
        listen,
        advertise,
        shuckle,
        folder: dir,
        cluster_key,
        io_threads: args
            .executors
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
        durations: metad::logic::Durations {
            eden_deadline_ns: args.eden_deadline_secs.saturating_mul(wire::limits::NS_PER_SECOND),
            purge_age_min_ns: args.purge_age_min_secs.saturating_mul(wire::limits::NS_PER_SECOND),
        },
        metrics,
        journal_bytes: args.journal_mib << 20,
        journal_gather: !args.no_journal_gather,
        journal_lanes: args.journal_lanes as usize,
    };
    match metad::server::run(config) {
        Ok(()) => Err(Failure::Runtime(anyhow!("the I/O threads stopped"))),
        Err(error @ metad::server::ServerError::Bind(..)) => Err(Failure::usage(error)),
        Err(error) => Err(Failure::Runtime(error.into())),
    }
}
