//! Figures of `eggs mount`, each against the `eggs` CLI doing the same work
//! on the same cluster in the same run: streaming read (`cat MOUNT/big >
//! /dev/null` against `eggs cat > /dev/null`), streaming write (`cp local MOUNT/` against `eggs
//! put`), `ls -l` of a directory of 10 000 files (against `eggs ls`), and
//! `stat` with a warm attribute cache.
//!
//! Self-contained: its own local cluster and mount in the run's folder.
//! Each pair alternates which side goes first over [`ROUNDS`] rounds and
//! reports medians, so neither side always gets the warmer block services.
//! Every file read is also read back untimed and checked against the
//! input's CRC.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use crate::error::{PerfError, Result};
use crate::files;
use crate::limits::mb_per_second;
use crate::process::{binary, start_local_cluster};
use crate::report::{Report, Row, Target};

/// Rounds of each pair; medians are reported.
pub const ROUNDS: usize = 3;
/// Files in the listed directory.
pub const LISTED_FILES: u64 = 10_000;
/// Warm stats timed.
const STATS: u32 = 20_000;
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Where the big files go: a directory with a Reed–Solomon 4+2 policy, the
/// same for the mount and the CLI.
const DIRECTORY: &str = "perf-mount";

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Why the mount cannot be measured here, if it cannot.
fn fuse_missing() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    let found = Command::new("fusermount3").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
    (!found.is_ok_and(|status| status.success())).then(|| "fusermount3 is missing (apt-get install fuse3)".into())
}

struct Mounted {
    dir: PathBuf,
    child: Child,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.dir).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mount(eggs: &Path, shuckle: SocketAddr, dir: &Path, log: &Path) -> Result<Mounted> {
    std::fs::create_dir_all(dir).map_err(PerfError::io(format!("create {}", dir.display())))?;
    let log_file = std::fs::File::create(log).map_err(PerfError::io(format!("create {}", log.display())))?;
    let mut child = Command::new(eggs)
        .arg("--shuckle")
        .arg(shuckle.to_string())
        .arg("mount")
        .arg(dir)
        .arg("-f")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(PerfError::io("run eggs mount"))?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or_else(|| PerfError::Component("eggs mount: no stdout".into()))?;
    BufReader::new(stdout).read_line(&mut line).map_err(PerfError::io("eggs mount stdout"))?;
    if line.trim() != "mounted" {
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(log).unwrap_or_default();
        return Err(PerfError::Component(format!("eggs mount failed: {}", text.lines().last().unwrap_or(""))));
    }
    Ok(Mounted { dir: dir.to_path_buf(), child })
}

fn eggs_ok(eggs: &Path, shuckle: SocketAddr, args: &[&str]) -> Result<Vec<u8>> {
    let output = Command::new(eggs)
        .arg("--shuckle")
        .arg(shuckle.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(PerfError::io("run eggs"))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        return Err(PerfError::Component(format!("eggs {args:?}: {}", text.trim())));
    }
    Ok(output.stdout)
}

/// `cp local target`: MB/s.
fn copy(local: &Path, target: &Path, bytes: usize) -> Result<f64> {
    let started = Instant::now();
    let status = Command::new("cp").arg(local).arg(target).status().map_err(PerfError::io("run cp"))?;
    if !status.success() {
        return Err(PerfError::Component(format!("cp to {} failed ({status})", target.display())));
    }
    Ok(mb_per_second(bytes as u64, started.elapsed()))
}

/// Reads `path` to its end in 1 MiB reads, checking size and CRC: MB/s.
fn read_through(path: &Path, bytes: usize, crc: u32) -> Result<f64> {
    let started = Instant::now();
    let mut file = std::fs::File::open(path).map_err(PerfError::io(format!("open {}", path.display())))?;
    // Page-aligned, as coreutils `cat` aligns its buffer.
    let mut storage = vec![0u8; (1 << 20) + crate::limits::PAGE_BYTES];
    let buffer = crate::limits::page_aligned(&mut storage, 1 << 20);
    let (mut total, mut sum) = (0usize, 0u32);
    loop {
        let read = file.read(buffer).map_err(PerfError::io(format!("read {}", path.display())))?;
        if read == 0 {
            break;
        }
        sum = wire::crc::crc32c_append(sum, &buffer[..read]);
        total += read;
    }
    let elapsed = started.elapsed();
    if total != bytes || sum != crc {
        return Err(PerfError::Component(format!(
            "{}: {total} bytes read, CRC {sum:#x} (expected {crc:#x})",
            path.display()
        )));
    }
    Ok(mb_per_second(bytes as u64, elapsed))
}

/// Seconds a command takes, its output discarded.
fn timed(program: &str, args: &[&str], envs: &[(&str, String)]) -> Result<f64> {
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(key, value)| (*key, value)))
        .stdout(Stdio::null())
        .status()
        .map_err(PerfError::io(format!("run {program}")))?;
    if !status.success() {
        return Err(PerfError::Component(format!("{program} {args:?} failed ({status})")));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Everything measured: (mount, CLI) pairs.
struct Figures {
    cat: (f64, f64),
    put: (f64, f64),
    /// With whether the CLI listing was `ls -l`.
    ls: (f64, f64, bool),
    stat_micros: f64,
}

/// Measures the mount and pushes its rows to `report`.
pub fn figures(file_bytes: usize, folder: &Path, runtime: &Runtime, report: &mut Report) {
    let size = format!("{} MiB", file_bytes >> 20);
    let figures = match fuse_missing() {
        Some(reason) => Err(reason),
        None => measure(file_bytes, folder, runtime).map_err(|error| error.to_string()),
    };
    let pick = |choose: fn(&Figures) -> (f64, f64)| match &figures {
        Ok(figures) => (Ok(choose(figures).0), Ok(choose(figures).1)),
        Err(error) => (Err(error.clone()), Err(error.clone())),
    };
    let (cat_mounted, cat_cli) = pick(|figures| figures.cat);
    report.push(Row::against(
        format!("cat MOUNT/file > /dev/null, {size}, RS 4+2 (limit: eggs cat, same run, medians of {ROUNDS})"),
        "MB/s",
        cat_mounted,
        Some(cat_cli),
        Target::RatioAtLeast(0.7),
    ));
    let (put_mounted, put_cli) = pick(|figures| figures.put);
    report.push(Row::against(
        format!("cp local MOUNT/, {size}, RS 4+2 (limit: eggs put, same run, medians of {ROUNDS})"),
        "MB/s",
        put_mounted,
        Some(put_cli),
        Target::RatioAtLeast(0.7),
    ));
    let (ls_mounted, ls_cli) = pick(|figures| (figures.ls.0, figures.ls.1));
    let long = figures.as_ref().is_ok_and(|figures| figures.ls.2);
    report.push(Row::against(
        format!(
            "ls -l MOUNT/dir, {LISTED_FILES} files (limit: eggs ls{}, same run; ≥ 50% is ≤ 2× its time)",
            if long { " -l" } else { "" }
        ),
        "entries/s",
        ls_mounted,
        Some(ls_cli),
        Target::RatioAtLeast(0.5),
    ));
    report.push(Row::against(
        "stat through the mount, warm attribute cache",
        "µs",
        figures.as_ref().map(|figures| figures.stat_micros).map_err(Clone::clone),
        None,
        Target::None,
    ));
}

fn measure(file_bytes: usize, folder: &Path, runtime: &Runtime) -> Result<Figures> {
    let eggs = binary("eggs")?;
    let data = folder.join("mount-cluster");
    let cluster = start_local_cluster("eggs local-cluster (mount)", &data, &[], folder, READY_TIMEOUT)?;
    let address = |keyword: &str| cluster.printed_address(keyword);
    let shuckle = address("shuckle udp")?;
    let root_shard = address("shard 1 udp")?;
    let dir = folder.join("mnt");
    let mounted = mount(&eggs, shuckle, &dir, &folder.join("eggs-mount.stderr"))?;
    eggs_ok(&eggs, shuckle, &["mkdir", &format!("/{DIRECTORY}")])?;
    eggs_ok(&eggs, shuckle, &["policy", "set", &format!("/{DIRECTORY}"), "--parity", "4+2"])?;

    let input = folder.join("mount-input");
    let crc = files::make_input(&input, file_bytes)?;
    let envs = vec![("EGGS_SHUCKLE".to_string(), shuckle.to_string())];

    // Writes: eggs put and cp, alternating which goes first.
    let (mut put_cli, mut put_mounted) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let cli = |put_cli: &mut Vec<f64>| -> Result<()> {
            let remote = format!("/{DIRECTORY}/cli-{round}");
            put_cli.push(files::put(&eggs, &envs, &[], &input, &remote, file_bytes)?);
            Ok(())
        };
        let through = |put_mounted: &mut Vec<f64>| -> Result<()> {
            put_mounted.push(copy(&input, &dir.join(DIRECTORY).join(format!("mounted-{round}")), file_bytes)?);
            Ok(())
        };
        if round % 2 == 0 {
            cli(&mut put_cli)?;
            through(&mut put_mounted)?;
        } else {
            through(&mut put_mounted)?;
            cli(&mut put_cli)?;
        }
    }
    let put = (median(put_mounted), median(put_cli));

    // Reads: each round reads a file neither side read before (the mount's
    // and the kernel's caches are cold for it); `cp` wrote through the mount
    // with direct I/O, so nothing of it is in the page cache.
    let (mut cat_cli, mut cat_mounted) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Both timed into /dev/null, as the issue states the figure; each
        // file is then read back and CRC-checked, untimed.
        let cli = |cat_cli: &mut Vec<f64>| -> Result<()> {
            let remote = format!("/{DIRECTORY}/mounted-{round}");
            let run = files::cat_measured(&eggs, &envs, &remote, file_bytes, crc, files::CatOutput::DevNull)?;
            cat_cli.push(run.mb_per_second);
            files::cat(&eggs, &envs, &remote, file_bytes, crc)?;
            Ok(())
        };
        let through = |cat_mounted: &mut Vec<f64>| -> Result<()> {
            let path = dir.join(DIRECTORY).join(format!("cli-{round}"));
            let seconds = timed("cat", &[&path.display().to_string()], &[])?;
            cat_mounted.push(mb_per_second(file_bytes as u64, Duration::from_secs_f64(seconds)));
            read_through(&path, file_bytes, crc)?;
            Ok(())
        };
        if round % 2 == 0 {
            through(&mut cat_mounted)?;
            cli(&mut cat_cli)?;
        } else {
            cli(&mut cat_cli)?;
            through(&mut cat_mounted)?;
        }
    }
    let cat = (median(cat_mounted), median(cat_cli));
    let _ = std::fs::remove_file(&input);

    // Listing: 10 000 small files in the root, made straight on its shard.
    let made = runtime.block_on(crate::shard::create_rate(
        root_shard,
        crate::shard::ROOT,
        "listed",
        16,
        Duration::from_secs(600),
        LISTED_FILES,
    ))?;
    if made.ops < LISTED_FILES {
        return Err(PerfError::Component(format!("only {} of {LISTED_FILES} files made", made.ops)));
    }
    let entries = LISTED_FILES as f64;
    let long = eggs_ok(&eggs, shuckle, &["ls", "-l", "/"]).is_ok();
    let eggs_text = eggs.display().to_string();
    let cli_args: Vec<&str> = if long { vec!["ls", "-l", "/"] } else { vec!["ls", "/"] };
    let shuckle_env = [("EGGS_SHUCKLE", shuckle.to_string())];
    let dir_text = dir.display().to_string();
    let (mut ls_cli, mut ls_mounted) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        // Past the attribute and entry timeouts (1 s): the kernel asks again.
        std::thread::sleep(Duration::from_millis(1200));
        ls_mounted.push(entries / timed("ls", &["-l", &dir_text], &[])?);
        ls_cli.push(entries / timed(&eggs_text, &cli_args, &shuckle_env)?);
    }
    let ls = (median(ls_mounted), median(ls_cli), long);

    // Warm stat: the kernel answers from its attribute cache.
    let target = dir.join(DIRECTORY).join("cli-0");
    std::fs::metadata(&target).map_err(PerfError::io("stat"))?;
    let started = Instant::now();
    for _ in 0..STATS {
        std::fs::metadata(&target).map_err(PerfError::io("stat"))?;
    }
    let stat_micros = started.elapsed().as_secs_f64() * 1e6 / f64::from(STATS);
    drop(mounted);
    drop(cluster);
    Ok(Figures { cat, put, ls, stat_micros })
}
