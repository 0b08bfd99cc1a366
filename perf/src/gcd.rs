//! gcd's rates (issue 13): dead files collected and blocks erased per
//! second, scrub bandwidth against the disk's sequential read, migration
//! bandwidth against its sequential write.
//!
//! Each phase runs a `gcd` of its own against a local cluster started with
//! `--no-gcd` and short time rules, and reads gcd's progress from its
//! `/metrics` counters, polled every [`POLL`]. A rate is taken between the
//! first poll that saw progress and the one that saw the phase complete, so
//! gcd's start-up, its first pause and the eden deadline are not counted.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{PerfError, Result};
use crate::limits::{self, MIB};
use crate::process::{self, Daemon};

/// How often the gcd counters are read.
const POLL: Duration = Duration::from_millis(50);
/// The longest a phase may take before it counts as failed.
const PHASE_TIMEOUT: Duration = Duration::from_secs(600);
/// Block services of the cluster: 8, so that one can be emptied onto the
/// other 7 under RS 4+2.
const BLOCK_SERVICES: usize = 8;

/// The sizes of one gcd run.
#[derive(Clone, Copy, Debug)]
pub struct GcPlan {
    /// Files put, then removed, for the collection rate.
    pub dead_files: usize,
    /// Size of each (one span: 6 blocks under RS 4+2).
    pub dead_file_bytes: usize,
    /// Living bytes for the scrub and the migration.
    pub living_bytes: usize,
}

/// The measured rates.
#[derive(Clone, Debug)]
pub struct GcRates {
    pub files_collected_per_second: std::result::Result<f64, String>,
    pub blocks_erased_per_second: std::result::Result<f64, String>,
    pub scrub_mb_per_second: std::result::Result<f64, String>,
    pub migration_mb_per_second: std::result::Result<f64, String>,
}

/// A local cluster with gcd's time rules short, and `eggs` against it.
struct GcCluster {
    eggs: PathBuf,
    gcd: PathBuf,
    cluster: Daemon,
    shuckle_udp: SocketAddr,
    shuckle_http: SocketAddr,
    folder: PathBuf,
}

impl GcCluster {
    fn start(folder: &Path, ready_timeout: Duration) -> Result<Self> {
        let eggs = process::binary("eggs")?;
        let gcd = process::binary("gcd")?;
        let blocks = BLOCK_SERVICES.to_string();
        let extra = [
            "--block-services",
            &blocks,
            "--no-gcd",
            "--eden-deadline-secs",
            "1",
            "--purge-age-min-secs",
            "0",
            "--stale-after-secs",
            "2",
        ];
        let data = folder.join("gc-cluster");
        let cluster = process::start_local_cluster("eggs local-cluster (gcd)", &data, &extra, folder, ready_timeout)?;
        let shuckle_udp = cluster.printed_address("shuckle udp")?;
        let shuckle_http = cluster.printed_address("shuckle http")?;
        Ok(Self { eggs, gcd, cluster, shuckle_udp, shuckle_http, folder: folder.to_path_buf() })
    }

    fn eggs(&self, args: &[&str]) -> Result<String> {
        let output = Command::new(&self.eggs)
            .arg("--shuckle")
            .arg(self.shuckle_udp.to_string())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(PerfError::io(format!("run {}", self.eggs.display())))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(PerfError::Component(format!("eggs {}: {}", args.join(" "), stderr.trim())));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn put(&self, local: &Path, remote: &str) -> Result<()> {
        self.eggs(&["put", &local.display().to_string(), remote]).map(drop)
    }

    /// A gcd of its own, with `flags`.
    fn start_gcd(&self, name: &str, flags: &[&str]) -> Result<Gcd> {
        let mut args: Vec<String> =
            vec!["--shuckle".into(), self.shuckle_udp.to_string(), "--metrics".into(), "127.0.0.1:0".into()];
        args.extend(flags.iter().map(|flag| (*flag).to_owned()));
        let daemon = Daemon::start(name, &self.gcd, &args, &[], &self.folder, Duration::from_secs(60))?;
        let metrics = daemon
            .address("http")
            .or_else(|_| daemon.address("metrics"))
            .map_err(|_| PerfError::Protocol("gcd printed no metrics address".into()))?;
        Ok(Gcd { _daemon: daemon, metrics })
    }
}

struct Gcd {
    _daemon: Daemon,
    metrics: SocketAddr,
}

impl Gcd {
    /// gcd's counters, `gcd_` prefix and `_total` suffix removed.
    fn counters(&self) -> Result<HashMap<String, f64>> {
        let text = http(self.metrics, "GET", "/metrics", &[], "")?.1;
        Ok(text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (name, value) = line.split_once(' ')?;
                let name = name.strip_prefix("gcd_")?.trim_end_matches("_total");
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// Polls `counter` until it reaches `goal`. The progress is taken from
    /// the first poll that saw `counter` move to the poll that saw it reach
    /// `goal`; `also` is read at the same two polls.
    fn follow(&self, counter: &str, goal: f64, also: Option<&str>) -> Result<Progress> {
        let started = Instant::now();
        let read = |counters: &HashMap<String, f64>, name: &str| counters.get(name).copied().unwrap_or(0.0);
        let initial = read(&self.counters()?, counter);
        let mut first: Option<(f64, f64, Instant)> = None;
        loop {
            let counters = self.counters()?;
            let (value, other) = (read(&counters, counter), also.map(|name| read(&counters, name)).unwrap_or(0.0));
            let now = Instant::now();
            if value > initial && first.is_none() {
                first = Some((value, other, now));
            }
            if value >= goal {
                let (first_value, first_other, first_at) = first.unwrap_or((initial, 0.0, started));
                return Ok(Progress {
                    amount: value - first_value,
                    also: other - first_other,
                    elapsed: now - first_at,
                });
            }
            if started.elapsed() > PHASE_TIMEOUT {
                return Err(PerfError::Timeout(format!("gcd's {counter} reached {value} of {goal}")));
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Progress between two polls.
struct Progress {
    amount: f64,
    /// The change of the `also` counter over the same time.
    also: f64,
    elapsed: Duration,
}

impl Progress {
    fn seconds(&self) -> f64 {
        self.elapsed.as_secs_f64().max(POLL.as_secs_f64())
    }

    fn per_second(&self) -> f64 {
        self.amount / self.seconds()
    }
}

/// Runs the three phases on one cluster; a phase that fails says why in
/// its own figure, and the next phases still run.
pub fn rates(plan: GcPlan, folder: &Path, ready_timeout: Duration) -> Result<GcRates> {
    let cluster = GcCluster::start(folder, ready_timeout)?;
    let (files, blocks) = match collection(&cluster, plan, folder) {
        Ok((files, blocks)) => (Ok(files), Ok(blocks)),
        Err(error) => (Err(error.to_string()), Err(error.to_string())),
    };
    let scrub = scrub(&cluster, plan, folder).map_err(|error| error.to_string());
    // Migration: the fullest block service stops answering (SIGSTOP: a hung
    // disk; a killed one would be restarted by local-cluster), is drained
    // and, once stale, terminated; gcd rebuilds its blocks on the others.
    let migration = fullest_block_service(&cluster).and_then(|(victim_pid, victim_addr, victim_bytes)| {
        process::signal(victim_pid, libc::SIGSTOP);
        let result = migrate(&cluster, victim_addr, victim_bytes);
        process::signal(victim_pid, libc::SIGKILL);
        process::signal(victim_pid, libc::SIGCONT);
        result
    });
    Ok(GcRates {
        files_collected_per_second: files,
        blocks_erased_per_second: blocks,
        scrub_mb_per_second: scrub,
        migration_mb_per_second: migration.map_err(|error| error.to_string()),
    })
}

/// Files put, removed, purged at once (retention 0), then collected from
/// eden past its 1 s deadline: (files/s, blocks/s).
fn collection(cluster: &GcCluster, plan: GcPlan, folder: &Path) -> Result<(f64, f64)> {
    cluster.eggs(&["policy", "/", "--retention-secs", "0"])?;
    cluster.eggs(&["mkdir", "/dead"])?;
    let input = folder.join("gc-input");
    crate::files::make_input(&input, plan.dead_file_bytes)?;
    for index in 0..plan.dead_files {
        cluster.put(&input, &format!("/dead/{index}"))?;
    }
    for index in 0..plan.dead_files {
        cluster.eggs(&["rm", &format!("/dead/{index}")])?;
    }
    let gcd = cluster.start_gcd("gcd (collection)", &["--gc-interval-secs", "1", "--scrub-interval-secs", "86400"])?;
    // local-cluster's write probes are eden files too, with blocks never
    // written: the rate counts from the first collection gcd reports.
    let files = gcd.follow("files_collected", plan.dead_files as f64, Some("blocks_erased"))?;
    Ok((files.per_second(), files.also / files.seconds()))
}

/// Every block of the living files, CRC checked next to the data,
/// unthrottled: MB/s.
fn scrub(cluster: &GcCluster, plan: GcPlan, folder: &Path) -> Result<f64> {
    let input = folder.join("gc-input");
    let chunk = (64 * MIB).min(plan.living_bytes.max(MIB));
    crate::files::make_input(&input, chunk)?;
    for index in 0..plan.living_bytes.div_ceil(chunk) {
        cluster.put(&input, &format!("/living-{index}"))?;
    }
    let stored = stored_bytes(&cluster.folder.join("gc-cluster").join("blocks"));
    drop_page_cache();
    let gcd = cluster.start_gcd(
        "gcd (scrub)",
        &["--gc-interval-secs", "86400", "--scrub-interval-secs", "1", "--scrub-bytes-per-second", "0"],
    )?;
    let scrubbed = gcd.follow("bytes_scrubbed", stored as f64, None)?;
    Ok(scrubbed.per_second() / 1e6)
}

fn migrate(cluster: &GcCluster, victim: SocketAddr, victim_bytes: u64) -> Result<f64> {
    let listing = cluster.eggs(&["block-services"])?;
    let id = listing
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            let id = words.next()?;
            (words.next()? == victim.to_string()).then(|| id.to_owned())
        })
        .ok_or_else(|| PerfError::Protocol(format!("shuckle does not list the block service at {victim}")))?;
    // local-cluster keeps shuckle's operator token beside the cluster key.
    let token_file = cluster.folder.join("gc-cluster").join("operator.token");
    let token = std::fs::read_to_string(&token_file).map_err(PerfError::io(format!("{}", token_file.display())))?;
    let action = |what: &str| {
        let path = format!("/api/block_services/{id}/{what}");
        http(cluster.shuckle_http, "POST", &path, b"{}", token.trim())
    };
    let (status, body) = action("drain")?;
    if status != 200 {
        return Err(PerfError::Component(format!("drain answered {status}: {body}")));
    }
    let started = Instant::now();
    loop {
        let (status, body) = action("terminate")?;
        match status {
            200 => break,
            409 if started.elapsed() < Duration::from_secs(60) => std::thread::sleep(Duration::from_millis(200)),
            _ => return Err(PerfError::Component(format!("terminate answered {status}: {body}"))),
        }
    }
    let gcd = cluster.start_gcd("gcd (migration)", &["--gc-interval-secs", "1", "--scrub-interval-secs", "86400"])?;
    let moved = gcd.follow("bytes_migrated", victim_bytes as f64, None)?;
    Ok(moved.per_second() / 1e6)
}

/// The block service holding the most bytes: (blockd pid, address, bytes),
/// from local-cluster's `block service N tcp ADDR pid PID` lines (its
/// folder is `blocks/N`).
fn fullest_block_service(cluster: &GcCluster) -> Result<(u32, SocketAddr, u64)> {
    let blocks = cluster.folder.join("gc-cluster").join("blocks");
    let mut best: Option<(u32, SocketAddr, u64)> = None;
    for line in &cluster.cluster.other_lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["block", "service", index, "tcp", addr, "pid", pid] = words.as_slice() else { continue };
        let (Ok(addr), Ok(pid)) = (addr.parse::<SocketAddr>(), pid.parse::<u32>()) else { continue };
        let bytes = stored_bytes(&blocks.join(index));
        if best.as_ref().is_none_or(|(_, _, most)| bytes > *most) {
            best = Some((pid, addr, bytes));
        }
    }
    best.filter(|(_, _, bytes)| *bytes > 0)
        .ok_or_else(|| PerfError::Component("no block service of the cluster holds blocks".into()))
}

/// Bytes of the block files under `folder` (its two-hex-digit folders).
fn stored_bytes(folder: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![folder.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() && name != "tmp" {
                stack.push(entry.path());
            } else if kind.is_file() && dir.file_name().is_some_and(|parent| is_block_folder(&parent.to_string_lossy()))
            {
                total += entry.metadata().map(|meta| meta.len()).unwrap_or(0);
            }
        }
    }
    total
}

fn is_block_folder(name: &str) -> bool {
    name.len() == 2 && name.chars().all(|c| c.is_ascii_hexdigit())
}

/// One HTTP/1.1 request with `Connection: close`: (status, body).
/// One HTTP exchange; `token` (shuckle's operator token) goes as the bearer.
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8], token: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).map_err(PerfError::io(format!("connect to {addr}")))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(PerfError::io("socket timeout"))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).map_err(PerfError::io("HTTP request"))?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(PerfError::io("HTTP response"))?;
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// Asks the kernel to drop clean pages (root only; otherwise the scrub's
/// reads may come partly from the page cache, and the figure says more
/// than the disk can).
fn drop_page_cache() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    if std::fs::write("/proc/sys/vm/drop_caches", "1").is_err() {
        eprintln!("eggs-perf: cannot drop the page cache (not root): the scrub may read cached blocks");
    }
}

/// Sequential read bandwidth of `folder`'s disk, MB/s: a file of `bytes`
/// written and fsynced, dropped from the page cache, then read in 1 MiB
/// reads.
pub fn sequential_read(folder: &Path, bytes: usize) -> Result<f64> {
    use std::os::fd::AsRawFd;
    let path = folder.join("perf-sequential-read");
    {
        let mut file = std::fs::File::create(&path).map_err(PerfError::io(format!("create {}", path.display())))?;
        let chunk = limits::pseudo_random_bytes(MIB, 11);
        for _ in 0..bytes.div_ceil(MIB) {
            file.write_all(&chunk).map_err(PerfError::io("write before the read"))?;
        }
        file.sync_all().map_err(PerfError::io("fsync before the read"))?;
        // SAFETY: posix_fadvise on an open descriptor we own.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    let mut file = std::fs::File::open(&path).map_err(PerfError::io(format!("open {}", path.display())))?;
    let mut buffer = vec![0u8; MIB];
    let started = Instant::now();
    let mut read = 0u64;
    loop {
        let count = file.read(&mut buffer).map_err(PerfError::io("sequential read"))?;
        if count == 0 {
            break;
        }
        read += count as u64;
    }
    let elapsed = started.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(limits::mb_per_second(read, elapsed))
}
