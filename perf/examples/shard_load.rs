//! One metad figure at a time, with the shard's CPU cost: for profiling
//! and paired A/B runs of two metad builds (issue 12).
//!
//! `cargo run --release -p perf --example shard_load -- MODE CLIENTS SECONDS [METAD]`
//!
//! - MODE `stat`: stat of the root, as eggs-perf's stat rows;
//! - MODE `create`: durable small-file creates, as eggs-perf's create rows
//!   (one create_small_file each; a metad before session 11 refuses it);
//! - MODE `create3`: the same files the way before session 11, three
//!   durable requests each (create_eden_file, add_eden_span, link_eden_file);
//! - MODE `echo`: the UDP echo baseline (no metad);
//! - MODE `fsync`: fsyncs per second of 4 KiB appends in a temporary
//!   folder of /tmp, as eggs-perf's limit row (no metad; CLIENTS ignored).
//!
//! METAD defaults to the `metad` beside this example (`target/release/`);
//! shuckle is always the one beside it. Prints one line: the rate, the
//! shard's CPU seconds per operation (utime + stime of the metad process
//! over the measured interval, from `/proc/PID/stat`), the clients' (this
//! process's, the same way), and for creates the
//! writer's commits, mutations per commit, fsyncs per operation and
//! mutations per fsync, and the I/O threads' datagrams per batched receive,
//! from metad's `/metrics`, and the bytes written to the data folder's
//! disk per operation (`disk_kib_per_op`, from `/sys/dev/block/M:m/stat`:
//! the whole device, so other processes' writes count too; the journal's
//! own share is `journal_kib_per_op`). Not `write_bytes` of
//! `/proc/PID/io`: the kernel counts it when a page-cache folio turns
//! dirty, a whole (large) folio for a 4 KiB write. A metad
//! with the write-ahead journal (session
//! 8) syncs the journal once per batch of commits and twice per checkpoint
//! (`data.mdb`, then the checkpoint slot); an older one fdatasyncs in every
//! commit and once per explicit meta-page sync. Set `SHARD_LOAD_FILL=N`
//! to fill the shard with N files first (64 clients, the mode's way), and
//! `SHARD_LOAD_DIR=PATH` to put the run's folder under PATH instead of
//! /tmp (on a tmpfs, `/dev/shm`, a sync costs nothing: the pipeline
//! around it measured without the shared disk's noise), and
//! `SHARD_LOAD_PAUSE=1` to print metad's pid and wait 2 s before the load
//! (time to attach `perf record -p PID`), and `SHARD_LOAD_METRICS=FILE` to
//! keep metad's whole `/metrics` answer at the end (the histograms'
//! buckets).
//!
//! For creates a second line, `stages_us`, gives where a mutation's time
//! went, as means over the measured interval of metad's stage histograms
//! (`metad::metrics`): receive → queue → apply → hold → commit → journal
//! (itself split into take_wait, lane_wait, sync, deliver_wait) → reply,
//! with `metad_total` (metad's request duration of the kind) and
//! `client_total` (CLIENTS ÷ the rate: a create's time as its client
//! sees it), so `client_total − metad_total` is the loopback and the load
//! client's own share.
//!
//! A filled shard can be kept and reused ([`saved_shard`]):
//! `SHARD_LOAD_SAVE=PATH` copies the run's folder (shuckle's and the
//! shard's data, the cluster key) to PATH after the run, once the daemons
//! have stopped; `SHARD_LOAD_FROM=PATH` starts from a copy of PATH instead
//! of an empty shard (so `SHARD_LOAD_FILL=1000000 SHARD_LOAD_SAVE=PATH`
//! once, then `SHARD_LOAD_FROM=PATH` for every round; the copy is written
//! in 4 KiB writes, `SHARD_LOAD_COPY_BYTES=N` for writes of N bytes;
//! `SHARD_LOAD_COLD=1` drops the copy from the page cache, as a restart
//! after the page cache was lost finds it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use perf::process;
use perf::{limits, shard, udp};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(clients), Some(seconds)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: shard_load stat|create|create3|echo|fsync CLIENTS SECONDS [METAD]");
        std::process::exit(2);
    };
    let clients: usize = clients.parse().expect("CLIENTS is a number");
    let duration = Duration::from_secs_f64(seconds.parse().expect("SECONDS is a number"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if mode == "fsync" {
        let folder = tempfile::Builder::new().prefix("shard-load-fsync-").tempdir_in("/tmp").expect("temporary folder");
        let rate = limits::fsync_rate(folder.path(), duration).expect("fsync rate");
        println!("fsync of 4 KiB appends per_s={rate:.0}");
        return;
    }
    if mode == "echo" {
        let server = limits::EchoServer::start(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
            .expect("echo server");
        let own_before = cpu_seconds(std::process::id());
        let rate = runtime.block_on(udp::echo_rate(server.addr, clients, duration)).expect("echo");
        let own = cpu_seconds(std::process::id()) - own_before;
        // Clients and server are this one process here.
        let per_op = own * 1e6 / (rate * duration.as_secs_f64()).max(1.0);
        println!("echo clients={clients} ops_per_s={rate:.0} clients_and_server_cpu_us_per_op={per_op:.1}");
        return;
    }
    let metad = args.get(3).map(PathBuf::from).unwrap_or_else(|| process::binary("metad").expect("metad"));
    let parent = std::env::var_os("SHARD_LOAD_DIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let folder = tempfile::Builder::new().prefix("shard-load-").tempdir_in(parent).expect("temporary folder");
    let saved = saved_shard::Saved::from_env(folder.path());
    let shuckle = shard::start_shuckle(folder.path()).expect("shuckle starts");
    let shuckle_addr = shuckle.address("udp").expect("shuckle address");
    let daemon =
        shard::start_metad(&metad, folder.path(), shuckle_addr, &["--metrics", "127.0.0.1:0"]).expect("metad starts");
    let addr = daemon.address("udp").expect("metad address");
    let metrics = daemon.address("metrics").expect("metad metrics address");
    if std::env::var_os("SHARD_LOAD_PAUSE").is_some() {
        println!("metad pid {}", daemon.pid());
        std::thread::sleep(Duration::from_secs(2));
    }
    // Warm up (and make sure the shard answers) before measuring.
    runtime
        .block_on(async {
            let mut client = udp::Client::new(addr, wire::datagram::SHARD_MAGIC).await?;
            if mode == "create" {
                shard::create_small_file(&mut client, shard::ROOT, "warm-up", b"warm").await
            } else {
                shard::create_small_file_three_requests(&mut client, shard::ROOT, "warm-up", b"warm").await
            }
        })
        .expect("warm-up create");
    // SHARD_LOAD_FILL=N: first fill the shard with N small files (64
    // clients, the mode's way), as eggs-perf's "shard holding" rows.
    if let Some(fill) = std::env::var("SHARD_LOAD_FILL").ok().and_then(|n| n.parse::<u64>().ok()) {
        let way = if mode == "create" { shard::CreateWay::OneRequest } else { shard::CreateWay::ThreeRequests };
        let long = Duration::from_secs(3600);
        let rate = runtime
            .block_on(shard::create_rate_by(way, addr, shard::ROOT, "fill", 64, long, fill))
            .expect("fill the shard");
        eprintln!("filled with {} files at {:.0}/s", rate.ops, rate.per_second());
    }
    let before = commit_counts(metrics);
    let cpu_before = cpu_seconds(daemon.pid());
    let disk_before = disk_bytes_written(folder.path());
    let own_before = cpu_seconds(std::process::id());
    let rate = match mode.as_str() {
        "stat" => runtime.block_on(shard::stat_rate(addr, clients, duration)),
        "create" | "create3" => {
            let way = if mode == "create" { shard::CreateWay::OneRequest } else { shard::CreateWay::ThreeRequests };
            runtime.block_on(shard::create_rate_by(way, addr, shard::ROOT, "load", clients, duration, u64::MAX))
        }
        other => panic!("unknown mode {other}"),
    }
    .expect("load");
    let cpu = cpu_seconds(daemon.pid()) - cpu_before;
    let written = disk_bytes_written(folder.path()) - disk_before;
    let own = cpu_seconds(std::process::id()) - own_before;
    let after = commit_counts(metrics);
    if let Some(path) = std::env::var_os("SHARD_LOAD_METRICS") {
        std::fs::write(path, &after.text).expect("write metad's metrics");
    }
    let (commits, mutations) = (after.commits - before.commits, after.mutations - before.mutations);
    let syncs = after.syncs - before.syncs;
    let (receives, received) = (after.receives - before.receives, after.received - before.received);
    let per_sync = if syncs > 0.0 { mutations / syncs } else { 0.0 };
    let mean_ms = |seconds: f64, count: f64| if count > 0.0 { seconds * 1e3 / count } else { 0.0 };
    let journal_sync_ms =
        mean_ms(after.journal_sync_s - before.journal_sync_s, after.journal_syncs - before.journal_syncs);
    let checkpoint_ms = mean_ms(after.checkpoint_s - before.checkpoint_s, after.checkpoints - before.checkpoints);
    let per_receive = if receives > 0.0 { received / receives } else { 0.0 };
    let per_commit = if commits > 0.0 { mutations / commits } else { 0.0 };
    let ops = rate.ops.max(1) as f64;
    let journal_bytes = after.journal_bytes - before.journal_bytes;
    println!(
        "{mode} clients={clients} ops_per_s={:.0} metad_cpu_us_per_op={:.1} metad_cpu_s={cpu:.2} clients_cpu_us_per_op={:.1} commits={commits} \
         mutations_per_commit={per_commit:.2} datagrams_per_receive={per_receive:.2} fsyncs={syncs} fsyncs_per_op={:.3} \
         mutations_per_fsync={per_sync:.2} journal={} journal_sync_ms={journal_sync_ms:.3} checkpoints={} checkpoint_ms={checkpoint_ms:.1} \
         commits_per_s={:.0} disk_kib_per_op={:.2} journal_kib_per_op={:.2}",
        rate.per_second(),
        cpu * 1e6 / ops,
        own * 1e6 / ops,
        syncs / ops,
        after.journaled,
        after.checkpoints - before.checkpoints,
        commits / duration.as_secs_f64(),
        written / 1024.0 / ops,
        journal_bytes / 1024.0 / ops,
    );
    if mode == "create" || mode == "create3" {
        let mean_us = |name: &str| {
            let count = after.histogram(name, "_count") - before.histogram(name, "_count");
            let sum = after.histogram(name, "_sum") - before.histogram(name, "_sum");
            if count > 0.0 { sum * 1e6 / count } else { 0.0 }
        };
        let stages: Vec<String> = STAGES.iter().map(|(label, name)| format!("{label}={:.0}", mean_us(name))).collect();
        let client_us = clients as f64 * 1e6 / rate.per_second().max(1.0);
        println!("stages_us {} client_total={client_us:.0}", stages.join(" "));
    }
    drop(daemon);
    drop(shuckle);
    saved.save(folder.path());
}

/// `SHARD_LOAD_FROM` and `SHARD_LOAD_SAVE`: a filled shard kept between
/// runs, so each round of a paired comparison starts from the same 1 M
/// files without filling for minutes.
mod saved_shard {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};

    /// Bytes per write of the copy: 4 KiB, LMDB's page, so that the copy's
    /// page cache is made of small folios (the kernel sizes a folio by the
    /// write that creates it). `SHARD_LOAD_COPY_BYTES=N` copies in writes
    /// of N bytes instead: large folios, to measure what they cost ext4
    /// per later 4 KiB write (perf/results/2026-11-28-s12-md13b.md).
    const COPY_CHUNK_BYTES: usize = 4096;

    fn copy_chunk_bytes() -> usize {
        std::env::var("SHARD_LOAD_COPY_BYTES").ok().and_then(|n| n.parse().ok()).unwrap_or(COPY_CHUNK_BYTES).max(1)
    }

    pub struct Saved {
        save_to: Option<PathBuf>,
    }

    impl Saved {
        /// Copies `SHARD_LOAD_FROM` (if set) into `folder`, synced, and
        /// remembers `SHARD_LOAD_SAVE`.
        pub fn from_env(folder: &Path) -> Saved {
            if let Some(from) = std::env::var_os("SHARD_LOAD_FROM") {
                copy_tree(Path::new(&from), folder);
                eprintln!("started from a copy of {}", Path::new(&from).display());
            }
            Saved { save_to: std::env::var_os("SHARD_LOAD_SAVE").map(PathBuf::from) }
        }

        /// Copies `folder` to `SHARD_LOAD_SAVE` (if set; it must not exist).
        /// Call after the daemons stopped.
        pub fn save(&self, folder: &Path) {
            let Some(to) = &self.save_to else { return };
            assert!(!to.exists(), "SHARD_LOAD_SAVE {} exists already", to.display());
            copy_tree(folder, to);
            eprintln!("saved the shard to {}", to.display());
        }
    }

    /// The next range of `file` from `at` that holds data (not a hole).
    fn next_data(file: &File, at: u64, size: u64) -> Option<(u64, u64)> {
        if at >= size {
            return None;
        }
        let offset = libc::off_t::try_from(at).ok()?;
        // SAFETY: lseek on an open descriptor has no memory-safety preconditions.
        let start = unsafe { libc::lseek(file.as_raw_fd(), offset, libc::SEEK_DATA) };
        if start < 0 {
            return None;
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(file.as_raw_fd(), start, libc::SEEK_HOLE) };
        let end = if end < 0 { size } else { end as u64 };
        Some((start as u64, end.min(size)))
    }

    /// Copies the files and folders under `from` into `to` (created), each
    /// file synced. Lock files are copied too (a stopped daemon's; the
    /// lock is the flock, not the file).
    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("create the copy's folder");
        for entry in std::fs::read_dir(from).expect("read the folder to copy") {
            let entry = entry.expect("folder entry");
            let target = to.join(entry.file_name());
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                copy_tree(&entry.path(), &target);
            } else if kind.is_file() {
                let source = File::open(entry.path()).expect("open a file to copy");
                let copy = File::create(&target).expect("create the copy");
                let size = source.metadata().expect("metadata").len();
                // Only the data: a store opened with MDB_WRITEMAP is as
                // long as its map (a sparse 1 TiB), its holes stay holes.
                let mut at = 0u64;
                while let Some((start, end)) = next_data(&source, at, size) {
                    let mut chunk = vec![0u8; copy_chunk_bytes()];
                    let mut offset = start;
                    while offset < end {
                        let want = chunk.len().min((end - offset) as usize);
                        source.read_exact_at(&mut chunk[..want], offset).expect("read a file to copy");
                        copy.write_all_at(&chunk[..want], offset).expect("write the copy");
                        offset += want as u64;
                    }
                    at = end;
                }
                copy.set_len(size).expect("size the copy");
                copy.set_permissions(source.metadata().expect("metadata").permissions()).expect("permissions");
                copy.sync_all().expect("sync the copy");
                if std::env::var_os("SHARD_LOAD_COLD").is_some() {
                    // SAFETY: posix_fadvise on an open descriptor has no
                    // memory-safety preconditions.
                    unsafe { libc::posix_fadvise(copy.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                }
            }
        }
    }
}

/// The histograms of a create's stages, in order (labels printed, metric
/// names without `_sum`/`_count`).
const STAGES: [(&str, &str); 11] = [
    ("queue", "metad_stage_queue_seconds"),
    ("apply", "metad_stage_apply_seconds"),
    ("hold", "metad_stage_hold_seconds"),
    ("commit", "metad_stage_commit_seconds"),
    ("journal", "metad_stage_journal_seconds"),
    ("take_wait", "metad_journal_take_wait_seconds"),
    ("lane_wait", "metad_journal_lane_wait_seconds"),
    ("sync", "metad_journal_sync_duration_seconds"),
    ("deliver_wait", "metad_journal_deliver_wait_seconds"),
    ("reply", "metad_stage_reply_seconds"),
    ("metad_total", "metad_request_duration_seconds"),
];

/// utime + stime of process `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    perf::process::cpu_seconds(pid).expect("process stat")
}

/// Bytes written so far to the block device holding `path` (its
/// `/sys/dev/block/MAJOR:MINOR/stat`, sectors written × 512; 0 if unknown).
fn disk_bytes_written(path: &std::path::Path) -> f64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(metadata) = std::fs::metadata(path) else { return 0.0 };
    let (major, minor) = (libc::major(metadata.dev()), libc::minor(metadata.dev()));
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).unwrap_or_default();
    // The seventh field: sectors written.
    stat.split_whitespace().nth(6).and_then(|field| field.parse::<f64>().ok()).unwrap_or(0.0) * 512.0
}

/// metad's counters so far.
struct Counts {
    /// Count and sum of `metad_commit_batch_size`.
    commits: f64,
    mutations: f64,
    /// fdatasyncs: with the journal, `metad_journal_syncs_total` plus two
    /// per `metad_journal_checkpoint_duration_seconds`; without, one per
    /// commit plus `metad_sync_duration_seconds`' count (explicit syncs).
    syncs: f64,
    /// Count and sum of `metad_receive_batch_size`.
    receives: f64,
    received: f64,
    journaled: bool,
    /// The journal's syncs and checkpoints: counts and summed seconds.
    journal_syncs: f64,
    journal_sync_s: f64,
    checkpoints: f64,
    checkpoint_s: f64,
    /// `metad_journal_bytes_total`.
    journal_bytes: f64,
    /// The whole answer, for [`Counts::histogram`].
    text: String,
}

impl Counts {
    /// `NAME{SUFFIX}` summed over its labelled series (for the request
    /// duration: every kind; only the measured one moves), 0 if absent.
    fn histogram(&self, name: &str, suffix: &str) -> f64 {
        self.text
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(suffix)?;
                let value = rest.rsplit(' ').next()?;
                (rest.starts_with(' ') || rest.starts_with('{')).then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }
}

fn commit_counts(metrics: SocketAddr) -> Counts {
    let mut stream = TcpStream::connect(metrics).expect("metrics connect");
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").expect("metrics request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("metrics answer");
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    let journaled = text.contains("metad_journal_syncs_total");
    let commits = value("metad_commit_batch_size_count");
    let syncs = if journaled {
        value("metad_journal_syncs_total") + 2.0 * value("metad_journal_checkpoint_duration_seconds_count")
    } else {
        commits + value("metad_sync_duration_seconds_count")
    };
    Counts {
        commits,
        mutations: value("metad_commit_batch_size_sum"),
        syncs,
        receives: value("metad_receive_batch_size_count"),
        received: value("metad_receive_batch_size_sum"),
        journaled,
        journal_syncs: value("metad_journal_sync_duration_seconds_count"),
        journal_sync_s: value("metad_journal_sync_duration_seconds_sum"),
        checkpoints: value("metad_journal_checkpoint_duration_seconds_count"),
        checkpoint_s: value("metad_journal_checkpoint_duration_seconds_sum"),
        journal_bytes: value("metad_journal_bytes_total"),
        text,
    }
}
