//! `metad <SHARD> <DIR>`: runs one metadata shard. See the library docs.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use wire::limits::{SHARD_PORT_BASE, SHUCKLE_PORT_DEFAULT};

#[derive(Parser)]
#[command(about = "eggsfs metadata shard")]
struct Args {
    /// Shard number, 0..=255.
    shard: u8,
    /// State folder (the shard's LMDB lives in `<DIR>/shard-NNN/`).
    dir: PathBuf,
    /// UDP address to serve on (default 127.0.0.1:22272+SHARD; port 0 = any).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Shuckle's UDP address.
    #[arg(long)]
    shuckle: Option<SocketAddr>,
    /// Cluster key file (16 bytes; created if missing). Default `<DIR>/cluster.key`.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// I/O executors (default: one per core).
    #[arg(long)]
    executors: Option<usize>,
    /// An eden file may be expunged this long after its last write step.
    #[arg(long, default_value_t = wire::limits::EDEN_DEADLINE_NS / wire::limits::NS_PER_SECOND)]
    eden_deadline_secs: u64,
    /// A dead entry may be purged this long after it died.
    #[arg(long, default_value_t = wire::limits::PURGE_AGE_MIN_NS / wire::limits::NS_PER_SECOND)]
    purge_age_min_secs: u64,
}

extern "C" fn exit_cleanly(_signal: libc::c_int) {
    // Every acknowledged mutation is already committed; nothing to flush.
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

fn main() {
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
            std::process::exit(code);
        }
    };
    // SAFETY: installing a handler that only calls _exit.
    unsafe {
        libc::signal(libc::SIGTERM, exit_cleanly as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, exit_cleanly as *const () as libc::sighandler_t);
    }
    if let Err(error) = std::fs::create_dir_all(&args.dir) {
        eprintln!("metad: cannot create {}: {error}", args.dir.display());
        std::process::exit(2);
    }
    let key_path = args.key_file.clone().unwrap_or_else(|| args.dir.join("cluster.key"));
    let cluster_key = match client::keyfile::load_or_create(&key_path) {
        Ok(key) => key,
        Err(error) => {
            eprintln!("metad: {error}");
            std::process::exit(2);
        }
    };
    let config = metad::server::Config {
        shard: args.shard,
        listen: args
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], SHARD_PORT_BASE + u16::from(args.shard)))),
        shuckle: args.shuckle.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], SHUCKLE_PORT_DEFAULT))),
        folder: args.dir,
        cluster_key,
        executors: args.executors.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
        durations: metad::logic::Durations {
            eden_deadline_ns: args.eden_deadline_secs.saturating_mul(wire::limits::NS_PER_SECOND),
            purge_age_min_ns: args.purge_age_min_secs.saturating_mul(wire::limits::NS_PER_SECOND),
        },
    };
    if let Err(error) = metad::server::run(config) {
        eprintln!("metad: {error}");
        std::process::exit(1);
    }
}
