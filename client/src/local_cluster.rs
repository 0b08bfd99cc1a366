//! `eggs local-cluster`: a whole eggsfs cluster on this machine, as child
//! processes on loopback, in one folder.
//!
//! ```text
//! DIR/cluster.key     the cluster key (16 random bytes, 0600), given to shuckle, shards and CDC
//! DIR/operator.token  shuckle's operator token (0600; `eggs block-service --token-file`)
//! DIR/shuckle/        shuckle's store
//! DIR/meta/           the shards' and the CDC's data
//! DIR/blocks/<i>/     block service i
//! DIR/blocks/<i>.port its TCP port, reused on restart (the shards' tables hold it)
//! ```
//!
//! Binaries are found next to the running `eggs`. Each child prints
//! `listening <proto> <ip:port>` lines then `ready` (ARCHITECTURE.md); we
//! wait for them, then until a shard accepts a span with D+P blocks, set
//! the root directory's policy if it has none, print every address, one
//! `metrics NAME http://ADDR/metrics` line per child (every child serves
//! Prometheus metrics on a free loopback port, `--metrics 127.0.0.1:0`) and
//! `ready`.
//!
//! Supervision: a child that exits is restarted with the same flags, on the
//! ports it bound at its first start (a port given as 0 is pinned to the one
//! it got) and the same folder, so shuckle and the shards see the same
//! service at the same address. Restarts back off from
//! [`RESTART_BACKOFF_MIN`] doubling to [`RESTART_BACKOFF_MAX`], reset once a
//! child has stayed up for [`RESTART_STABLE_AFTER`]; each is said on stderr
//! (`restarted NAME (exit status …), attempt N`). `--no-restart` only reports
//! exits (tests that need a daemon to stay down). SIGINT/SIGTERM stops every
//! child (SIGTERM, then SIGKILL after a grace period). Started again on the
//! same folder, the cluster resumes its data.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use wire::limits::{CDC_PORT_DEFAULT, SHARD_COUNT, SHARD_PORT_BASE, SHUCKLE_PORT_DEFAULT};
use wire::policy::Policy;
use wire::span::Parity;
use wire::{ErrorKind, InodeId, InodeType};

use client::client::{Addresses, Client, discover};
use client::plan::{INLINE_THRESHOLD_BYTES, block_span};
use client::udp::{ClientOptions, DatagramClient};
use client::write::add_span;

/// Flags of `eggs local-cluster`.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterConfig {
    /// Folder of the whole cluster (created if missing; reused on restart).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Number of metadata shards (0..N; the root lives on shard 1, so ≥ 2).
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Number of block services.
    #[arg(long, default_value_t = 6)]
    pub block_services: usize,
    /// Storage class of the block services.
    #[arg(long, default_value_t = 2)]
    pub storage_class: u8,
    /// Each block service's reserve (`blockd --reserve-bytes`): with less
    /// free space it is full. Unset: blockd's default.
    #[arg(long)]
    pub block_reserve_bytes: Option<u64>,
    /// Each block service's stall limit (`blockd --stall-timeout-seconds`):
    /// a connection whose peer neither reads nor sends for this long is
    /// closed. Unset: blockd's default.
    #[arg(long)]
    pub block_stall_timeout_secs: Option<u64>,
    /// Shuckle's HTTP and UDP port (0: any free port).
    #[arg(long, default_value_t = SHUCKLE_PORT_DEFAULT)]
    pub shuckle_port: u16,
    /// Shard N listens on this + N (0: any free ports).
    #[arg(long, default_value_t = SHARD_PORT_BASE)]
    pub shard_port_base: u16,
    /// The CDC's port (0: any free port).
    #[arg(long, default_value_t = CDC_PORT_DEFAULT)]
    pub cdc_port: u16,
    /// Give up if the cluster cannot take a write within this many seconds.
    #[arg(long, default_value_t = 180)]
    pub ready_timeout_secs: u64,
    /// Do not restart a child that exits; only report it (tests that need a daemon to stay down).
    #[arg(long)]
    pub no_restart: bool,
    #[command(flatten)]
    pub gc: GcConfig,
}

/// The cluster's time rules and the collector (passed to the shards and to
/// gcd; unset = the daemons' production defaults).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GcConfig {
    /// The shards' eden deadline: an unfinished write is collected this long after its last step.
    #[arg(long)]
    pub eden_deadline_secs: Option<u64>,
    /// The shards' minimum age of a dead entry before it may be purged.
    #[arg(long)]
    pub purge_age_min_secs: Option<u64>,
    /// gcd's pause between collection cycles.
    #[arg(long)]
    pub gc_interval_secs: Option<u64>,
    /// gcd's pause between scrub passes.
    #[arg(long)]
    pub scrub_interval_secs: Option<u64>,
    /// Do not start gcd (tests that run their own).
    #[arg(long)]
    pub no_gcd: bool,
    /// Shuckle's stale-after time: a block service without a good check
    /// for this long is stale (and only then may be terminated).
    #[arg(long)]
    pub stale_after_secs: Option<u64>,
}

impl GcConfig {
    fn shard_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(secs) = self.eden_deadline_secs {
            args.extend(["--eden-deadline-secs".to_owned(), secs.to_string()]);
        }
        if let Some(secs) = self.purge_age_min_secs {
            args.extend(["--purge-age-min-secs".to_owned(), secs.to_string()]);
        }
        args
    }

    fn shuckle_args(&self) -> Vec<String> {
        self.stale_after_secs.map(|secs| vec!["--stale-after-secs".to_owned(), secs.to_string()]).unwrap_or_default()
    }

    /// Starts gcd (after everything else) unless `--no-gcd`.
    async fn start_gcd(&self, shuckle_udp: SocketAddr) -> anyhow::Result<Option<Daemon>> {
        if self.no_gcd {
            return Ok(None);
        }
        let mut args = vec!["--shuckle".to_owned(), shuckle_udp.to_string(), METRICS_FLAG.into(), loopback(0)];
        if let Some(secs) = self.gc_interval_secs {
            args.extend(["--gc-interval-secs".to_owned(), secs.to_string()]);
        }
        if let Some(secs) = self.scrub_interval_secs {
            args.extend(["--scrub-interval-secs".to_owned(), secs.to_string()]);
        }
        Ok(Some(start("gcd".into(), &binary("gcd")?, &args).await?))
    }
}

/// The flag giving a child its metrics address (always port 0 here).
const METRICS_FLAG: &str = "--metrics";

/// How long a child has to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a child has to print `ready`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between write probes while waiting for the shards to see block services.
const PROBE_PAUSE: Duration = Duration::from_millis(500);
/// Bytes per data block of a span in the default policy: 32 MiB spans
/// for RS 4+2. Larger spans spread each span's fixed costs (add and
/// certify, and per block an fsync, a rename and a folder fsync, and the
/// wait for the slowest of D+P writes, one span in flight) over more
/// bytes: with 4 MiB blocks (16 MiB spans) a put of 1 GiB read 553–645
/// MiB/s, with 8 MiB 793–823, with 16 MiB 809–855 (session 19's lead,
/// caches dropped first), and the cats of the file were no slower
/// (`perf/results/2026-11-29-s19-dp20s.md`). 8 MiB, not 16: the same put
/// with 192 MiB of write buffers, not 288 (`client::write::WRITE_BUFFER_BYTES`).
const DEFAULT_BLOCK_BYTES: u32 = 8 << 20;
/// First pause before restarting a child that exited.
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The pause doubles per failed restart up to this.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A child up this long is well again: its next exit starts the backoff over.
pub const RESTART_STABLE_AFTER: Duration = Duration::from_secs(10);
/// How often the children are looked at.
const WATCH_PERIOD: Duration = Duration::from_millis(100);

/// A child, running or waiting to be restarted.
struct Daemon {
    name: String,
    child: Child,
    /// `listening` addresses it printed, as (proto, address).
    addresses: Vec<(String, SocketAddr)>,
    exited: bool,
    program: PathBuf,
    /// Its flags, with every listening port pinned to the one it bound.
    args: Vec<String>,
    /// When it last printed `ready`.
    up_since: Instant,
    /// Restarts since it was last well (for the backoff and the message).
    attempts: u32,
    /// The exit being recovered from and when to try next, while down.
    restart: Option<(std::process::ExitStatus, tokio::time::Instant)>,
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the eggs executable")?;
    let dir = exe.parent().ok_or_else(|| anyhow!("the eggs executable has no folder"))?;
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} not found (build the workspace: cargo build --release)", path.display());
    }
    Ok(path)
}

/// Creates the cluster key (staged and hard-linked, 0600) if missing; checks an existing one.
pub fn ensure_key_file(path: &Path) -> anyhow::Result<()> {
    client::keyfile::load_or_create(path)?;
    Ok(())
}

/// Starts `program args`, waits for its `ready`, collects its `listening` lines.
async fn start(name: String, program: &Path, args: &[String]) -> anyhow::Result<Daemon> {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to send
    // SIGTERM to the child when this thread (the one running local-cluster's
    // main future) exits, so a killed local-cluster leaves no daemons behind.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = command.spawn().with_context(|| format!("cannot start {}", program.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("{name}: no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut addresses = Vec::new();
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .map_err(|_| anyhow!("{name} did not become ready within {} s", START_TIMEOUT.as_secs()))?
            .with_context(|| format!("{name}: reading its output"))?;
        let Some(line) = line else {
            let status = child.wait().await.ok();
            bail!("{name} exited before it was ready ({})", status.map_or("unknown status".into(), |s| s.to_string()));
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["ready"] => break,
            ["listening", proto, addr] => {
                let addr: SocketAddr = addr.parse().with_context(|| format!("{name}: bad address in `{line}`"))?;
                addresses.push(((*proto).to_owned(), addr));
            }
            _ => tracing::debug!(%name, %line, "unexpected output"),
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let mut daemon = Daemon {
        name,
        child,
        addresses,
        exited: false,
        program: program.to_path_buf(),
        args: args.to_vec(),
        up_since: Instant::now(),
        attempts: 0,
        restart: None,
    };
    // A restarted child keeps its metrics port (scrapers are pointed at it).
    daemon.pin(METRICS_FLAG, "metrics");
    Ok(daemon)
}

impl Daemon {
    /// Counts one more restart attempt and schedules it after the backoff
    /// for that attempt, recovering from the exit `status`; returns the
    /// pause.
    fn schedule_restart(&mut self, status: std::process::ExitStatus) -> Duration {
        self.attempts += 1;
        let pause = restart_backoff(self.attempts);
        self.restart = Some((status, tokio::time::Instant::now() + pause));
        pause
    }

    /// Restarts give `flag` the address this child printed for `proto`
    /// (a port 0 becomes the port it got).
    fn pin(&mut self, flag: &str, proto: &str) {
        let Some(bound) = self.addresses.iter().find(|(p, _)| p == proto).map(|(_, addr)| addr.to_string()) else {
            return;
        };
        if let Some(position) = self.args.iter().position(|arg| arg == flag)
            && let Some(value) = self.args.get_mut(position + 1)
        {
            *value = bound;
        }
    }

    fn address(&self, proto: &str) -> anyhow::Result<SocketAddr> {
        self.addresses
            .iter()
            .find(|(p, _)| p == proto)
            .map(|(_, addr)| *addr)
            .ok_or_else(|| anyhow!("{} printed no `listening {proto}` line", self.name))
    }
}

/// A child's name in its `metrics NAME URL` line: `shuckle`, `shard-0`,
/// `cdc`, `block-3`, `gcd`.
fn metrics_name(name: &str) -> String {
    if let Some(index) = name.strip_prefix("block service ") {
        format!("block-{index}")
    } else {
        name.replace(' ', "-")
    }
}

fn loopback(port: u16) -> String {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port)).to_string()
}

/// The default root policy for `block_services` services: Reed–Solomon 4+2
/// with six or more, fewer data blocks with fewer services, mirroring with two.
pub fn default_policy(block_services: usize, storage_class: u8) -> Option<Policy> {
    let (data, parity) = match block_services {
        0 => return None,
        1 => (1, 0),
        2 => (1, 1),
        3..=5 => (block_services as u8 - 2, 2),
        _ => (4, 2),
    };
    let parity = Parity::new(data, parity)?;
    Policy::new(storage_class, parity, DEFAULT_BLOCK_BYTES * data as u32)
}

/// Runs the cluster until SIGINT/SIGTERM.
pub async fn run(mut config: ClusterConfig) -> anyhow::Result<()> {
    // The children get absolute folders: glommio cannot open relative
    // directory paths on some kernels (the daemons also make their own
    // folders absolute), and the README's command uses `./eggsfs-data`.
    config.data_dir = daemon::folder::absolute(&config.data_dir)?;
    if config.shards < 2 || config.shards > SHARD_COUNT {
        bail!("--shards must be between 2 and {SHARD_COUNT} (the root directory lives on shard 1)");
    }
    if config.block_services == 0 {
        bail!("--block-services must be at least 1");
    }
    let dir = &config.data_dir;
    for sub in ["shuckle", "meta", "blocks"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("{}: cannot create", dir.join(sub).display()))?;
    }
    let key_file = dir.join("cluster.key");
    ensure_key_file(&key_file)?;
    let key_arg = key_file.display().to_string();
    let mut daemons: Vec<Daemon> = Vec::new();
    let result = start_all(&config, &key_arg, &mut daemons).await;
    let outcome = match result {
        Ok(addresses) => supervise(&config, addresses, &mut daemons).await,
        Err(error) => Err(error),
    };
    stop_all(&mut daemons).await;
    outcome
}

async fn start_all(config: &ClusterConfig, key_arg: &str, daemons: &mut Vec<Daemon>) -> anyhow::Result<Addresses> {
    let dir = &config.data_dir;
    let shuckle_bin = binary("shuckle")?;
    let metad_bin = binary("metad")?;
    let cdcd_bin = binary("cdcd")?;
    let blockd_bin = binary("blockd")?;
    let shuckle_addr = loopback(config.shuckle_port);
    let mut shuckle_args = vec![
        "--data-dir".into(),
        dir.join("shuckle").display().to_string(),
        "--http".into(),
        shuckle_addr.clone(),
        "--udp".into(),
        shuckle_addr,
        "--key-file".into(),
        key_arg.into(),
        METRICS_FLAG.into(),
        loopback(0),
        "--token-file".into(),
        token_file(dir).display().to_string(),
    ];
    shuckle_args.extend(config.gc.shuckle_args());
    let mut shuckle = start("shuckle".into(), &shuckle_bin, &shuckle_args).await?;
    shuckle.pin("--http", "http");
    shuckle.pin("--udp", "udp");
    let shuckle_udp = shuckle.address("udp")?;
    daemons.push(shuckle);
    let meta = dir.join("meta").display().to_string();
    let mut addresses = Addresses::local_defaults(shuckle_udp);
    for shard in 0..config.shards {
        let port = if config.shard_port_base == 0 { 0 } else { config.shard_port_base + shard as u16 };
        let mut daemon = start(
            format!("shard {shard}"),
            &metad_bin,
            &[
                shard.to_string(),
                meta.clone(),
                "--executors".into(),
                "1".into(),
                "--listen".into(),
                loopback(port),
                "--shuckle".into(),
                shuckle_udp.to_string(),
                "--key-file".into(),
                key_arg.into(),
                METRICS_FLAG.into(),
                loopback(0),
            ]
            .into_iter()
            .chain(config.gc.shard_args())
            .collect::<Vec<String>>(),
        )
        .await?;
        daemon.pin("--listen", "udp");
        addresses.shards[shard] = daemon.address("udp")?;
        daemons.push(daemon);
    }
    let shard_list: Vec<String> = (0..config.shards).map(|shard| shard.to_string()).collect();
    let mut cdc_args = vec![
        meta.clone(),
        "--listen".into(),
        loopback(config.cdc_port),
        "--shuckle".into(),
        shuckle_udp.to_string(),
        "--key-file".into(),
        key_arg.into(),
        "--shards".into(),
        shard_list.join(","),
        METRICS_FLAG.into(),
        loopback(0),
    ];
    for shard in 0..config.shards {
        cdc_args.push("--shard-addr".into());
        cdc_args.push(format!("{shard}={}", addresses.shards[shard]));
    }
    let mut cdc = start("cdc".into(), &cdcd_bin, &cdc_args).await?;
    cdc.pin("--listen", "udp");
    addresses.cdc = cdc.address("udp")?;
    daemons.push(cdc);
    for index in 0..config.block_services {
        let block_dir = dir.join("blocks").join(index.to_string());
        let port_file = dir.join("blocks").join(format!("{index}.port"));
        let remembered = std::fs::read_to_string(&port_file).ok().and_then(|text| text.trim().parse::<u16>().ok());
        let name = format!("block service {index}");
        let args = |port: u16| {
            let mut args = vec![
                block_dir.display().to_string(),
                "--storage-class".into(),
                config.storage_class.to_string(),
                "--listen".into(),
                loopback(port),
                "--shuckle".into(),
                shuckle_udp.to_string(),
                "--cores".into(),
                "1".into(),
                METRICS_FLAG.into(),
                loopback(0),
            ];
            if let Some(bytes) = config.block_reserve_bytes {
                args.extend(["--reserve-bytes".to_owned(), bytes.to_string()]);
            }
            if let Some(secs) = config.block_stall_timeout_secs {
                args.extend(["--stall-timeout-seconds".to_owned(), secs.to_string()]);
            }
            args
        };
        let mut daemon = match remembered {
            Some(port) => match start(name.clone(), &blockd_bin, &args(port)).await {
                Ok(daemon) => daemon,
                Err(error) => {
                    eprintln!("eggs local-cluster: {name} cannot reuse port {port} ({error}); taking a new one");
                    start(name, &blockd_bin, &args(0)).await?
                }
            },
            None => start(name, &blockd_bin, &args(0)).await?,
        };
        // Block addresses are in the shards' tables: keep the port across
        // restarts so existing blocks stay reachable at once.
        daemon.pin("--listen", "tcp");
        let port = daemon.address("tcp")?.port();
        std::fs::write(&port_file, port.to_string()).with_context(|| format!("{}", port_file.display()))?;
        daemons.push(daemon);
    }
    if let Some(gcd) = config.gc.start_gcd(shuckle_udp).await? {
        daemons.push(gcd);
    }
    Ok(addresses)
}

/// Waits until a write can succeed, sets the root policy, prints the
/// addresses and `ready`, then watches the children until a signal.
async fn supervise(config: &ClusterConfig, addresses: Addresses, daemons: &mut [Daemon]) -> anyhow::Result<()> {
    let client = Client::with_addresses(DatagramClient::bind_any(ClientOptions::default())?, addresses.clone());
    let policy = match client.effective_policy(InodeId::ROOT).await? {
        Some((policy, _)) => policy,
        None => {
            let policy = default_policy(config.block_services, config.storage_class)
                .ok_or_else(|| anyhow!("no policy fits {} block services", config.block_services))?;
            client.set_directory_policy(InodeId::ROOT, &policy.encode()).await?;
            policy
        }
    };
    let timeout = Duration::from_secs(config.ready_timeout_secs);
    wait_registered(&client, &addresses, config.shards, timeout).await?;
    for shard in 0..config.shards {
        wait_writable(&client, shard as u8, policy, timeout).await?;
    }
    for daemon in daemons.iter() {
        // The metrics addresses get their own `metrics NAME URL` lines below.
        for (proto, addr) in daemon.addresses.iter().filter(|(proto, _)| proto != "metrics") {
            let pid = daemon.child.id().map_or(String::new(), |pid| format!(" pid {pid}"));
            println!("{} {proto} {addr}{pid}", daemon.name);
        }
    }
    for daemon in daemons.iter() {
        let metrics = daemon.address("metrics")?;
        println!("metrics {} http://{metrics}/metrics", metrics_name(&daemon.name));
        if daemon.name == "gcd" {
            // Issue 13's line, which scripts rely on, beside issue 14's.
            println!("listening gcd-metrics {metrics}");
        }
    }
    println!("operator-token {}", token_file(&config.data_dir).display());
    println!(
        "policy / storage_class={} parity={} span_size={}",
        policy.storage_class, policy.parity, policy.span_size_bytes
    );
    println!("ready");
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    loop {
        // A signal during a restart drops it; the half-started child is
        // killed with it (kill_on_drop).
        tokio::select! {
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
            () = watch(daemons, !config.no_restart) => {}
        }
    }
}

/// Where local-cluster keeps shuckle's operator token: beside the cluster key.
fn token_file(dir: &Path) -> PathBuf {
    dir.join("operator.token")
}

/// The pause before restart attempt `attempt` (1, 2, …).
pub fn restart_backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    RESTART_BACKOFF_MIN.saturating_mul(1 << doublings).min(RESTART_BACKOFF_MAX)
}

/// One look at the children: reports exits and, when `restart`, restarts
/// the children whose backoff has passed.
async fn watch(daemons: &mut [Daemon], restart: bool) {
    tokio::time::sleep(WATCH_PERIOD).await;
    for daemon in daemons.iter_mut() {
        if daemon.exited && daemon.restart.is_none() {
            continue;
        }
        if daemon.restart.is_none() {
            let Ok(Some(status)) = daemon.child.try_wait() else { continue };
            daemon.exited = true;
            if !restart {
                eprintln!("eggs local-cluster: {} exited ({status}); the others keep running", daemon.name);
                continue;
            }
            if daemon.up_since.elapsed() >= RESTART_STABLE_AFTER {
                daemon.attempts = 0;
            }
            let pause = daemon.schedule_restart(status);
            eprintln!(
                "eggs local-cluster: {} exited ({status}); restarting in {:.1} s, attempt {}",
                daemon.name,
                pause.as_secs_f64(),
                daemon.attempts
            );
        }
        let Some((status, due)) = daemon.restart else { continue };
        if tokio::time::Instant::now() < due {
            continue;
        }
        match start(daemon.name.clone(), &daemon.program, &daemon.args).await {
            Ok(started) => {
                eprintln!(
                    "eggs local-cluster: restarted {} ({status}), attempt {}{}",
                    daemon.name,
                    daemon.attempts,
                    started.child.id().map_or(String::new(), |pid| format!(", pid {pid}"))
                );
                daemon.child = started.child;
                daemon.up_since = Instant::now();
                daemon.exited = false;
                daemon.restart = None;
            }
            Err(error) => {
                let pause = daemon.schedule_restart(status);
                eprintln!(
                    "eggs local-cluster: restarting {} failed ({error}); next try in {:.1} s, attempt {}",
                    daemon.name,
                    pause.as_secs_f64(),
                    daemon.attempts
                );
            }
        }
    }
}

/// Waits until shuckle lists every shard and the CDC at their addresses,
/// so that clients find them through shuckle.
async fn wait_registered(
    client: &Client,
    expected: &Addresses,
    shards: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let found = discover(client.datagram_client(), expected.shuckle).await;
        let shards_match = found.shards.get(..shards) == expected.shards.get(..shards);
        if shards_match && found.cdc == expected.cdc {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("the shards and the CDC did not register with shuckle within {} s", timeout.as_secs());
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

/// Probes with an add_eden_span of D+P blocks (never written, never
/// linked: the eden file is collected after its deadline) until `shard`
/// has enough block services (a refused add makes it refresh its table).
async fn wait_writable(client: &Client, shard: u8, policy: Policy, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let eden = client.create_eden_file(shard, InodeType::File).await?;
    let probe_bytes = (INLINE_THRESHOLD_BYTES + 1).max(policy.parity.data_blocks());
    let span = block_span(0, vec![1u8; probe_bytes], policy.into())?;
    loop {
        match add_span(client, eden, &span, &[]).await {
            Ok(_) => return Ok(()),
            Err(error) if error.error_kind() == Some(ErrorKind::NotEnoughBlockServices) => {
                if started.elapsed() > timeout {
                    bail!("the shards still see too few block services after {} s: {error}", timeout.as_secs());
                }
                tokio::time::sleep(PROBE_PAUSE).await;
            }
            Err(error) => return Err(error).context("probing whether the cluster takes writes"),
        }
    }
}

/// SIGTERM to every child (block services first, shuckle last), then
/// SIGKILL to those still running after the grace period.
async fn stop_all(daemons: &mut [Daemon]) {
    for daemon in daemons.iter_mut().rev() {
        if let Some(pid) = daemon.child.id() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for daemon in daemons.iter_mut().rev() {
        match tokio::time::timeout_at(deadline, daemon.child.wait()).await {
            Ok(Ok(status)) if !status.success() && !daemon.exited => {
                eprintln!("eggs local-cluster: {} stopped ({status})", daemon.name);
            }
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "eggs local-cluster: {} did not stop within {} s; killing it",
                    daemon.name,
                    STOP_GRACE.as_secs()
                );
                let _ = daemon.child.kill().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_names_have_no_spaces() {
        assert_eq!(metrics_name("shuckle"), "shuckle");
        assert_eq!(metrics_name("shard 12"), "shard-12");
        assert_eq!(metrics_name("block service 3"), "block-3");
        assert_eq!(metrics_name("cdc"), "cdc");
    }

    #[test]
    fn default_policy_fits_the_block_services() {
        let six = default_policy(6, 2).expect("policy");
        assert_eq!(six.parity, Parity::new(4, 2).expect("parity"));
        assert_eq!(six.span_size_bytes, 4 * DEFAULT_BLOCK_BYTES);
        for services in 1..=20 {
            let policy = default_policy(services, 2).expect("policy");
            assert!(policy.parity.total_blocks() <= services, "{services}: {}", policy.parity);
        }
        assert!(default_policy(0, 2).is_none());
    }

    #[test]
    fn restart_backoff_doubles_from_a_tenth_to_five_seconds() {
        let pauses: Vec<u128> = (1..=9).map(|attempt| restart_backoff(attempt).as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(restart_backoff(u32::MAX), RESTART_BACKOFF_MAX);
    }

    #[test]
    fn key_file_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        use wire::mac::KEY_BYTES;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cluster.key");
        ensure_key_file(&path).expect("create");
        let first = std::fs::read(&path).expect("read");
        assert_eq!(first.len(), KEY_BYTES);
        assert_eq!(std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777, 0o600);
        ensure_key_file(&path).expect("reuse");
        assert_eq!(std::fs::read(&path).expect("read"), first, "an existing key is kept");
        std::fs::write(&path, b"short").expect("write");
        assert!(ensure_key_file(&path).is_err());
    }
}
