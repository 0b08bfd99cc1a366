//! One CDC figure at a time on a fresh `eggs local-cluster`, with where
//! the time and the CPU of one operation go (issue 12).
//!
//! `cargo run --release -p perf --example cdc_load -- MODE CLIENTS SECONDS`
//!
//! - MODE `mkdir`: mkdir in the root, as eggs-perf's CDC mkdir rows;
//! - MODE `mv-same`: file moves from the root into a directory on the
//!   root's shard (one move_file_in_shard each), MODE `mv-other`: into a
//!   directory on another shard (acquire, inject, kill), as eggs-perf's two
//!   mv file rows (the files are made first, through shard 1; the target is
//!   the first of `load-target-N` that lands where asked).
//!
//! Prints the rate, then per operation: the CPU seconds of every cluster
//! process and of this client (utime + stime from `/proc/PID/stat` over
//! the measured interval), and from every child's `/metrics` each
//! histogram that moved: how many per operation, and its mean (for the
//! `_duration_seconds` ones, the mean time of one request, commit or sync),
//! and the bytes written to the data folder's disk per operation (the
//! whole device's count, `/sys/dev/block/M:m/stat`: other processes'
//! writes count too).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use perf::process;
use perf::{cdc, shard};

/// Files made for the mv modes: more than 5 s of moves at 6 000/s.
const MV_FILES: u64 = 30_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(clients), Some(seconds)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: cdc_load mkdir|mv-same|mv-other CLIENTS SECONDS");
        std::process::exit(2);
    };
    let clients: usize = clients.parse().expect("CLIENTS is a number");
    let duration = Duration::from_secs_f64(seconds.parse().expect("SECONDS is a number"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let folder = tempfile::Builder::new().prefix("cdc-load-").tempdir_in("/tmp").expect("temporary folder");
    // gcd's cycles would only add noise to the CDC's figures.
    let data = folder.path().join("cluster");
    let cluster = process::start_local_cluster(
        "eggs local-cluster",
        &data,
        &["--no-gcd"],
        folder.path(),
        Duration::from_secs(60),
    )
    .expect("cluster starts");
    let address = |keyword: &str| -> SocketAddr { cluster.printed_address(keyword).expect("local-cluster's address") };
    let (cdc_addr, shard_addr) = (address("cdc udp"), address("shard 1 udp"));
    let metrics: Vec<(String, SocketAddr)> = cluster
        .other_lines
        .iter()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("metrics")).then_some(())?;
            let name = words.next()?.to_string();
            let url = words.next()?;
            let addr = url.strip_prefix("http://")?.split('/').next()?.parse().ok()?;
            Some((name, addr))
        })
        .collect();
    let (same, other) = runtime.block_on(cdc::mv_targets(cdc_addr, "load-target")).expect("target directories");
    let target = if mode == "mv-other" { other } else { same };
    let files = if mode.starts_with("mv") {
        runtime
            .block_on(shard::create_rate(shard_addr, shard::ROOT, "load-mv", 64, duration * 10, MV_FILES))
            .expect("files to move")
            .ops
    } else {
        0
    };
    let processes: Vec<(u32, String)> = process::descendants(cluster.pid());
    let scrape_all = || metrics.iter().map(|(name, addr)| (name.clone(), scrape(*addr))).collect::<Vec<_>>();
    let before = scrape_all();
    let cpu_before: Vec<f64> = processes.iter().map(|(pid, _)| cpu_seconds(*pid)).collect();
    let disk_before = disk_bytes_written(folder.path());
    let self_before = cpu_seconds(std::process::id());
    let rate = match mode.as_str() {
        "mkdir" => runtime.block_on(cdc::mkdir_rate(cdc_addr, "load", clients, duration)),
        "mv-same" | "mv-other" => {
            runtime.block_on(cdc::mv_rate(cdc_addr, shard::ROOT, "load-mv", files, target, clients, duration))
        }
        other => panic!("unknown mode {other}"),
    }
    .expect("load");
    let cpu: Vec<f64> =
        processes.iter().zip(&cpu_before).map(|((pid, _), before)| cpu_seconds(*pid) - before).collect();
    let self_cpu = cpu_seconds(std::process::id()) - self_before;
    let written = disk_bytes_written(folder.path()) - disk_before;
    let after = scrape_all();
    let ops = rate.ops.max(1) as f64;
    println!(
        "{mode} clients={clients} target_shard={} ops={} ops_per_s={:.0} latency_us={:.0}",
        target.shard(),
        rate.ops,
        rate.per_second(),
        clients as f64 * 1e6 / rate.per_second().max(f64::MIN_POSITIVE)
    );
    let mut total = self_cpu;
    println!("  cpu_us_per_op client(eggs-perf)={:.0}", self_cpu * 1e6 / ops);
    for ((_, name), cpu) in processes.iter().zip(&cpu) {
        if *cpu > 0.0 {
            println!("  cpu_us_per_op {name}={:.0}", cpu * 1e6 / ops);
        }
        total += cpu;
    }
    println!("  cpu_us_per_op total={:.0} (2 cores: at most {:.0} ops/s)", total * 1e6 / ops, 2.0 * ops / total);
    println!("  disk_kib_per_op (the whole device)={:.2}", written / 1024.0 / ops);
    for ((name, before), (_, after)) in before.iter().zip(&after) {
        for (key, value) in after {
            // `NAME_count` or `NAME_count{LABELS}` (per request kind).
            let (series, labels) = key.split_at(key.find('{').unwrap_or(key.len()));
            let Some(base) = series.strip_suffix("_count") else { continue };
            let count = value - before.get(key).copied().unwrap_or(0.0);
            if count <= 0.0 {
                continue;
            }
            let sum_key = format!("{base}_sum{labels}");
            let sum = after.get(&sum_key).copied().unwrap_or(0.0) - before.get(&sum_key).copied().unwrap_or(0.0);
            let mean = sum / count;
            let shown = if base.contains("seconds") { format!("{:.0} µs", mean * 1e6) } else { format!("{mean:.2}") };
            println!("  {name} {key}: {:.3}/op, mean {shown}", count / ops);
        }
    }
}

/// Every sample line of a Prometheus text page, by its name with labels.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let mut stream = TcpStream::connect(addr).expect("metrics connect");
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").expect("metrics request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("metrics answer");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
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

/// utime + stime of process `pid`, in seconds (0 if it is gone).
fn cpu_seconds(pid: u32) -> f64 {
    perf::process::cpu_seconds(pid).unwrap_or(0.0)
}
