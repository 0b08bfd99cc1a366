//! `blockd <DIR> --storage-class N`: the block service daemon. Flags,
//! wiring and I/O only; the logic lives in the `blockd` library.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;

use anyhow::{Context, anyhow, bail};
use blockd::metrics::Counters;
use blockd::registration::{announce_forever, machine_host_name, registration_bytes};
use blockd::server::{self, Shared};
use blockd::store::{self, Layout, StoreError};
use clap::Parser;
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use wire::mac::{MacKey, block_service_id};
use wire::span::STORAGE_CLASS_BLOCKS_MIN;

/// Listen backlog of each executor's socket.
const LISTEN_BACKLOG: i32 = 1024;

#[derive(Parser, Debug)]
#[command(name = "blockd", about = "eggsfs block service: stores blocks on one disk")]
struct Args {
    /// Folder of this block service (one per disk); created if missing.
    dir: PathBuf,
    /// Storage class of the blocks stored here (2..=255; 0 and 1 are blockless).
    #[arg(long)]
    storage_class: u8,
    /// TCP address to serve on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Shuckle's UDP address, for registrations.
    #[arg(long, default_value = "127.0.0.1:5000")]
    shuckle: String,
    /// Executors (one per core); default: every core this process may use.
    #[arg(long)]
    cores: Option<usize>,
    /// Host name announced to shuckle (the failure domain); default: this machine's.
    #[arg(long)]
    host: Option<String>,
    /// Serve Prometheus text metrics on this HTTP address.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Seconds a request may stall (no bytes in or out) before its
    /// connection is dropped.
    #[arg(long, default_value_t = server::STALL_TIMEOUT_DEFAULT.as_secs())]
    stall_timeout_seconds: u64,
}

/// A failure that is the operator's to fix (exit 2) rather than a runtime one (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("blockd: {error:#}");
            if error.downcast_ref::<UsageError>().is_some() { ExitCode::from(2) } else { ExitCode::from(1) }
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.storage_class < STORAGE_CLASS_BLOCKS_MIN {
        return Err(UsageError(format!(
            "storage class {} is not for blocks (0 is inline, 1 is zero-fill); use {STORAGE_CLASS_BLOCKS_MIN}..=255",
            args.storage_class
        ))
        .into());
    }
    let signals = block_stop_signals()?;
    let cpus = allowed_cpus()?;
    let cores = args.cores.unwrap_or(cpus.len());
    if cores == 0 || cores > cpus.len() {
        return Err(UsageError(format!("--cores {cores}: this process may use 1..={} cores", cpus.len())).into());
    }
    let shuckle = args
        .shuckle
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| UsageError(format!("--shuckle {}: not an address", args.shuckle)))?;

    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let layout = Layout::new(&args.dir);
    let key = match store::open_key(&layout) {
        Ok(holder) => holder,
        Err(e @ (StoreError::Locked { .. } | StoreError::BadKeyLength { .. })) => {
            return Err(UsageError(e.to_string()).into());
        }
        Err(e) => return Err(e.into()),
    };
    let usage = store::prepare(&layout)?;
    tracing::info!(
        dir = %args.dir.display(),
        block_service_id = %block_service_id(&key.key),
        used_blocks = usage.used_blocks,
        used_bytes = usage.used_bytes,
        "block service folder ready"
    );
    let counters = Arc::new(Counters::new(usage));
    if args.stall_timeout_seconds == 0 {
        return Err(UsageError("--stall-timeout-seconds must be at least 1".into()).into());
    }
    let shared = Arc::new(Shared {
        layout,
        key: MacKey::new(&key.key),
        counters: counters.clone(),
        stall_timeout: std::time::Duration::from_secs(args.stall_timeout_seconds),
    });

    let (listeners, bound) = bind_listeners(args.listen, cores)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening tcp {bound}")?;
    tracing::info!(%bound, cores, "listening");
    if let Some(address) = args.metrics {
        let listener = TcpListener::bind(address).map_err(|e| UsageError(format!("--metrics {address}: {e}")))?;
        writeln!(stdout, "listening http {}", listener.local_addr()?)?;
        let counters = counters.clone();
        std::thread::Builder::new()
            .name("blockd-metrics".into())
            .spawn(move || blockd::metrics::serve(listener, counters))?;
    }

    // Pinned when there is one executor per core. With fewer (several
    // daemons sharing a machine, as in a local cluster), they float: pinning
    // each daemon to the first cores would pile them all on the same ones.
    let placements: Vec<Placement> = if cores == cpus.len() {
        cpus.iter().map(|&cpu| Placement::Fixed(cpu)).collect()
    } else {
        (0..cores).map(|_| Placement::Unbound).collect()
    };
    let (executors, stops) = start_executors(&shared, listeners, placements)?;

    let host = args.host.unwrap_or_else(machine_host_name);
    let datagram = registration_bytes(&key.key, bound.port(), args.storage_class, &host);
    // From the listening IP: shuckle takes a registration's source address
    // as the block service's address.
    let source = SocketAddr::new(bound.ip(), 0);
    std::thread::Builder::new()
        .name("blockd-register".into())
        .spawn(move || announce_forever(source, shuckle, datagram))?;

    writeln!(stdout, "ready")?;
    stdout.flush()?;
    drop(stdout);

    let signal = wait_for_signal(&signals)?;
    tracing::info!(signal, "stopping");
    drop(stops);
    for executor in executors {
        match executor.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "executor failed"),
            Err(e) => tracing::error!(error = %e, "executor failed"),
        }
    }
    tracing::info!("stopped");
    drop(key);
    Ok(())
}

/// Binds one SO_REUSEPORT listener per executor on the same address (the
/// first one picks the port when it is 0).
fn bind_listeners(listen: SocketAddr, count: usize) -> anyhow::Result<(Vec<OwnedFd>, SocketAddr)> {
    if listen.port() != 0 {
        // SO_REUSEPORT would let us share a port that another daemon of the
        // same user listens on (connections then split between two disks):
        // first make sure nobody listens there.
        let probe = Socket::new(Domain::for_address(listen), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&listen.into()).map_err(|e| UsageError(format!("--listen {listen}: {e}")))?;
    }
    let mut listeners = Vec::with_capacity(count);
    let mut address = listen;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_port(true)?;
        socket.set_reuse_address(true)?;
        socket.bind(&address.into()).map_err(|e| UsageError(format!("--listen {listen}: {e}")))?;
        socket.listen(LISTEN_BACKLOG)?;
        address = socket.local_addr()?.as_socket().ok_or_else(|| anyhow!("listener has no IP address"))?;
        listeners.push(OwnedFd::from(socket));
    }
    Ok((listeners, address))
}

type Executors = Vec<glommio::ExecutorJoinHandle<std::io::Result<()>>>;

/// Starts one pinned executor per listener; returns once all accept, with
/// the socket ends whose closing stops them.
fn start_executors(
    shared: &Arc<Shared>,
    listeners: Vec<OwnedFd>,
    placements: Vec<Placement>,
) -> anyhow::Result<(Executors, Vec<UnixStream>)> {
    let (ready_sender, ready_receiver) = mpsc::channel::<()>();
    let mut executors = Vec::with_capacity(listeners.len());
    let mut stops = Vec::with_capacity(listeners.len());
    for (index, (listener, placement)) in listeners.into_iter().zip(placements).enumerate() {
        let (stop_here, stop_there) = UnixStream::pair()?;
        stops.push(stop_here);
        let shared = shared.clone();
        let ready = ready_sender.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("blockd-{index}"))
            .io_memory(blockd::IO_MEMORY_BYTES)
            .spawn(move || async move {
                let stop = OwnedFd::from(stop_there);
                let ready = move || {
                    let _ = ready.send(());
                };
                // SAFETY: `listener` is a listening TCP socket and `stop` a
                // connected Unix stream socket, both owned only by this executor.
                unsafe { server::run(index, shared, listener, stop, ready) }.await
            })
            .map_err(std::io::Error::from)
            .with_context(|| format!("starting executor {index}"))?;
        executors.push(handle);
    }
    drop(ready_sender);
    for _ in 0..executors.len() {
        if ready_receiver.recv().is_err() {
            // An executor ended before accepting: report its error.
            for executor in executors {
                if let Ok(Err(e)) = executor.join() {
                    bail!("executor failed to start: {e}");
                }
            }
            bail!("an executor failed to start");
        }
    }
    Ok((executors, stops))
}

/// The CPUs this process may run on.
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and the call writes
    // at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading the CPU affinity");
    }
    // SAFETY: `set` was filled by sched_getaffinity; CPU_ISSET only reads it.
    let cpus: Vec<usize> =
        (0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect();
    if cpus.is_empty() {
        bail!("no CPU available");
    }
    Ok(cpus)
}

/// Blocks SIGTERM and SIGINT in this thread and every thread started after,
/// so that only `sigwait` takes them.
fn block_stop_signals() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: sigset_t manipulation on a local value, then the thread mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let result = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if result != 0 {
            return Err(std::io::Error::from_raw_os_error(result)).context("blocking signals");
        }
        Ok(set)
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> anyhow::Result<i32> {
    let mut signal = 0;
    // SAFETY: `set` is a valid signal set and `signal` a valid out-parameter.
    let result = unsafe { libc::sigwait(set, &mut signal) };
    if result != 0 {
        return Err(std::io::Error::from_raw_os_error(result)).context("waiting for a signal");
    }
    Ok(signal)
}
