//! `blockd <DIR> --storage-class N`: the block service daemon. Flags,
//! wiring and I/O only; the logic lives in the `blockd` library, the
//! plumbing shared with the other daemons in the `daemon` crate.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;

use anyhow::{Context, anyhow, bail};
use blockd::metrics::Counters;
use blockd::registration::{Announcer, machine_host_name, registration_bytes};
use blockd::server::{self, Shared};
use blockd::space::{BLOCK_SERVICE_RESERVE_BYTES_DEFAULT, SpaceWatch};
use blockd::store::{self, Layout, StoreError};
use clap::Parser;
use daemon::address;
use daemon::announce::{self, Proto};
use daemon::bind::{Transport, reuse_port};
use daemon::folder::{self, FolderLock};
use daemon::signals::StopSignals;
use daemon::{Failure, OrUsage};
use glommio::{LocalExecutorBuilder, Placement};
use wire::mac::{MacKey, block_service_id};
use wire::span::STORAGE_CLASS_BLOCKS_MIN;

#[derive(Parser, Debug)]
#[command(
    name = "blockd",
    about = "eggsfs block service: stores blocks on one disk",
    after_help = "Needs from the OS: a locked-memory limit of at least 8 MiB per executor (glommio registers \
                  its I/O buffers with io_uring: `ulimit -l`, or LimitMEMLOCK=infinity in systemd); a kernel \
                  with io_uring (5.8 or later); the TCP port of --listen, reachable from clients; UDP to \
                  shuckle. Exit codes: 0 stopped by SIGTERM/SIGINT, 1 runtime failure, 2 bad usage or \
                  configuration (incl. a port in use or a folder locked by another blockd)."
)]
struct Args {
    /// Folder of this block service (one per disk); created if missing.
    dir: PathBuf,
    /// Storage class of the blocks stored here (2..=255; 0 and 1 are blockless).
    #[arg(long)]
    storage_class: u8,
    /// TCP address to serve on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address registered with shuckle, which clients connect to: HOST:PORT,
    /// or HOST for the bound port. Default: the --listen address; required
    /// when that is a wildcard (0.0.0.0 or ::). Registrations are sent from
    /// its IP (shuckle records their source), so it must be this host's.
    #[arg(long, value_name = "HOST[:PORT]")]
    advertise: Option<String>,
    /// Shuckle's UDP address, for registrations (HOST:PORT; names resolved at start).
    #[arg(long, default_value = "127.0.0.1:5000")]
    shuckle: String,
    /// Executors (one per core); default: every core this process may use.
    #[arg(long)]
    cores: Option<usize>,
    /// Host name announced to shuckle (the failure domain); default: this machine's.
    #[arg(long)]
    host: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free port;
    /// printed as `listening metrics ADDR`).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Seconds a request may stall (no bytes in or out) before its
    /// connection is dropped.
    #[arg(long, default_value_t = server::STALL_TIMEOUT_DEFAULT.as_secs())]
    stall_timeout_seconds: u64,
    /// Socket send buffer asked for every connection (SO_SNDBUF; the
    /// kernel doubles it for its overhead); 0 leaves the kernel's
    /// autotuning. The default suits one datacenter's round trips; raise
    /// it for long ones.
    #[arg(long, default_value_t = server::SEND_BUFFER_BYTES as u32)]
    send_buffer_bytes: u32,
    /// Bytes of the disk kept free: only the space above this is reported
    /// as free, and with less the service is full (shuckle sends it no
    /// new blocks; it tells shuckle at once).
    #[arg(long, default_value_t = BLOCK_SERVICE_RESERVE_BYTES_DEFAULT)]
    reserve_bytes: u64,
}

fn main() -> ExitCode {
    let signals = StopSignals::block();
    daemon::log::init(daemon::log::Tag { process: "blockd", shard: None });
    let args = Args::parse();
    let outcome = signals.map_err(Failure::from).and_then(|signals| run(args, signals));
    daemon::exit_with("blockd", outcome)
}

fn run(args: Args, signals: StopSignals) -> Result<(), Failure> {
    if args.storage_class < STORAGE_CLASS_BLOCKS_MIN {
        return Err(Failure::usage(anyhow!(
            "storage class {} is not for blocks (0 is inline, 1 is zero-fill); use {STORAGE_CLASS_BLOCKS_MIN}..=255",
            args.storage_class
        )));
    }
    let cpus = allowed_cpus()?;
    let cores = args.cores.unwrap_or(cpus.len());
    if cores == 0 || cores > cpus.len() {
        return Err(Failure::usage(anyhow!("--cores {cores}: this process may use 1..={} cores", cpus.len())));
    }
    if args.stall_timeout_seconds == 0 {
        return Err(Failure::usage(anyhow!("--stall-timeout-seconds must be at least 1")));
    }
    let shuckle = address::resolve("--shuckle", &args.shuckle)?;
    let advertise = args.advertise.as_deref().map(address::parse_advertise).transpose()?;
    address::check_listen("--listen", args.listen, advertise)?;
    if let Some(advertise) = advertise {
        address::check_local(advertise)?;
    }

    let dir = folder::prepare(&args.dir).or_usage()?;
    let _lock = FolderLock::acquire(&dir, "blockd").or_usage()?;
    let layout = Layout::new(&dir);
    let key = match store::open_key(&layout) {
        Ok(holder) => holder,
        Err(e @ (StoreError::Locked { .. } | StoreError::BadKeyLength { .. })) => return Err(Failure::usage(e)),
        Err(e) => return Err(anyhow::Error::from(e).into()),
    };
    let usage = store::prepare(&layout).map_err(anyhow::Error::from)?;
    tracing::info!(
        dir = %dir.display(),
        block_service_id = %block_service_id(&key.key),
        used_blocks = usage.used_blocks,
        used_bytes = usage.used_bytes,
        "block service folder ready"
    );
    let mut registry = daemon::metrics::Registry::default();
    let counters = Arc::new(Counters::new(usage, &mut registry));
    let (space, space_woken) = SpaceWatch::new(args.reserve_bytes);
    let space = Arc::new(space);
    let shared = Arc::new(Shared {
        layout,
        key: MacKey::new(&key.key),
        counters: counters.clone(),
        space: space.clone(),
        stall_timeout: std::time::Duration::from_secs(args.stall_timeout_seconds),
        send_buffer: send_buffer(args.send_buffer_bytes)?,
    });

    let (sockets, bound) = reuse_port(Transport::Tcp, args.listen, cores).context("--listen").or_usage()?;
    let listeners: Vec<OwnedFd> = sockets.into_iter().map(OwnedFd::from).collect();
    announce::listening(Proto::Tcp, bound)?;
    tracing::info!(%bound, cores, "listening");
    if let Some(address) = args.metrics {
        daemon::metrics::serve(address, registry, "blockd")?;
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
    let advertised = address::advertised(advertise, bound);
    let datagram = registration_bytes(&key.key, advertised.port(), args.storage_class, &host);
    // From the advertised IP: shuckle takes a registration's source IP as
    // the block service's (the datagram carries only the port).
    let source = address::source(advertised);
    tracing::info!(%advertised, reserve_bytes = args.reserve_bytes, "registering with shuckle");
    let announcer = Announcer { source, shuckle, datagram, root: dir.clone(), space, woken: space_woken };
    std::thread::Builder::new().name("blockd-register".into()).spawn(move || announcer.run())?;

    announce::ready()?;
    signals.wait()?;
    // Closing the stop sockets ends each executor after its request in flight.
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

type Executors = Vec<glommio::ExecutorJoinHandle<std::io::Result<()>>>;

/// Starts one executor per listener; returns once all accept, with the
/// socket ends whose closing stops them.
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
/// `--send-buffer-bytes`: 0 is the kernel's autotuning.
fn send_buffer(bytes: u32) -> Result<Option<libc::c_int>, Failure> {
    match bytes {
        0 => Ok(None),
        bytes => libc::c_int::try_from(bytes)
            .map(Some)
            .map_err(|_| Failure::usage(anyhow!("--send-buffer-bytes {bytes}: at most {}", libc::c_int::MAX))),
    }
}

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
