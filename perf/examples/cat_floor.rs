//! The floor under `eggs cat` on this machine (issue 11): how fast can a
//! reader that does as little as possible fetch one file's data blocks
//! from the real block services, measured in the same run as the 2-stream
//! loopback TCP limit the cat's target is set against, and as `eggs cat`.
//!
//! `cargo run --release -p perf --example cat_floor -- SHUCKLE PATH ROUNDS [EGGS ...]`
//!
//! against a running cluster (`eggs local-cluster`; SHUCKLE is its UDP
//! address) holding the file PATH. Each round measures, one after the
//! other: the 2-stream loopback limit (`perf::limits::tcp_loopback`, 2 s),
//! the floor reader, and for each `eggs` binary given `eggs cat PATH` into
//! a drained pipe (`perf::files::cat_measured`, the figure eggs-perf
//! reports) and into `/dev/null`. It prints every round, then the medians
//! and each figure's ratio to the loopback limit of its own round.
//!
//! The floor reader learns where the data blocks live with the client
//! library (`fetch_spans`), then only fetches: one blocking TCP connection
//! per block service, one thread each, every fetch request of the file
//! sent up front (the protocol answers in order), each block received
//! straight into one reused 2 MiB-aligned buffer in reads of up to 1 MiB,
//! with the CRC32C of every read taken right after it (as `eggs cat` does)
//! and each block's CRC checked. Nothing is written out; no span order is
//! kept, no span CRC combined, no parity read. Its CPU is this process's
//! user + system time over the fetch (`getrusage`); the loopback's is both
//! ends' (this process runs its senders and receivers); with
//! `CAT_FLOOR_BLOCKD=TEXT` set, the block services' CPU during the floor
//! read is reported too (every `blockd` process whose command line
//! contains TEXT, e.g. the cluster's data folder). The floor's buffers are
//! made once for all rounds, so its figures never include their first
//! touch (the kernel zeroing fresh pages), which every `eggs` process
//! pays; with `CAT_FLOOR_FRESH=1` each round first hands their pages back
//! (`MADV_DONTNEED`), inside the timed read, so that the receives fault in
//! fresh zeroed pages as an `eggs` process's do; with `CAT_FLOOR_FRESH=both`
//! each round reads the floor both ways, one after the other.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use client::client::{Client, FileSpanBody};
use client::path::EggsPath;
use wire::block::{FetchReq, FetchRespHead, TAG_FETCHED};
use wire::crc::{crc32c_append, crc32c_combine};
use zerocopy::{FromBytes, IntoBytes};

/// Most bytes asked of one `read`, as `client::pool` reads.
const READ_BYTES: usize = 1 << 20;
/// Buffer alignment: a huge page, as `eggs cat`'s span buffers.
const ALIGN: usize = 2 << 20;
const LOOPBACK_SECONDS: Duration = Duration::from_secs(2);

/// One data block to fetch.
#[derive(Clone, Copy)]
struct Block {
    block_id: wire::BlockId,
    size: u32,
    crc: u32,
}

/// The file's data blocks grouped by block service, in file order, and
/// the file's size and CRC.
struct Plan {
    services: Vec<(SocketAddr, Vec<Block>)>,
    bytes: u64,
    crc: u32,
}

async fn plan(shuckle: SocketAddr, path: &str) -> Plan {
    let client = Client::connect(shuckle).await.expect("connect to shuckle");
    let inode = client.resolve_path(&EggsPath::parse(path).expect("an eggsfs path")).await.expect("resolve");
    let mut services: Vec<(SocketAddr, Vec<Block>)> = Vec::new();
    let (mut bytes, mut crc, mut offset) = (0u64, 0u32, 0u64);
    loop {
        let page = client.fetch_spans(inode, offset).await.expect("fetch_spans");
        for span in page.spans {
            let FileSpanBody::Blocks { parity, blocks, .. } = &span.body else {
                panic!("span at {} is not stored in blocks", span.offset);
            };
            assert!(!parity.is_mirroring(), "the floor reads Reed–Solomon spans");
            for block in &blocks[..parity.data_blocks()] {
                let addr = block.address.socket_addr();
                let entry = Block { block_id: block.block_id, size: block.size.get(), crc: block.crc.get() };
                match services.iter_mut().find(|(known, _)| *known == addr) {
                    Some((_, list)) => list.push(entry),
                    None => services.push((addr, vec![entry])),
                }
            }
            bytes += u64::from(span.size);
            crc = crc32c_combine(crc, span.crc, u64::from(span.size));
        }
        if page.next_offset == 0 {
            break;
        }
        offset = page.next_offset;
    }
    Plan { services, bytes, crc }
}

/// A buffer of `size` bytes starting on a 2 MiB boundary, marked for huge
/// pages; leaked (one per connection per run).
fn aligned_buffer(size: usize) -> &'static mut [u8] {
    let layout = std::alloc::Layout::from_size_align(size.next_multiple_of(ALIGN), ALIGN).expect("layout");
    // SAFETY: a non-zero layout; the memory is zeroed, so a valid [u8].
    unsafe {
        let start = std::alloc::alloc_zeroed(layout);
        assert!(!start.is_null(), "allocation");
        libc::madvise(start.cast(), layout.size(), libc::MADV_HUGEPAGE);
        std::slice::from_raw_parts_mut(start, size)
    }
}

/// Fetches every block of one service over one connection; returns the
/// bytes received. Panics on any wrong byte: the floor is only a floor if
/// it checks what it reads.
fn fetch_all(addr: SocketAddr, blocks: &[Block], buffer: &mut [u8]) -> u64 {
    let mut stream = TcpStream::connect(addr).expect("connect to blockd");
    stream.set_nodelay(true).expect("nodelay");
    let mut requests = Vec::new();
    for block in blocks {
        requests.extend_from_slice(FetchReq::new(block.block_id).as_bytes());
    }
    stream.write_all(&requests).expect("send the fetch requests");
    let mut total = 0u64;
    for block in blocks {
        let mut head = [0u8; size_of::<FetchRespHead>()];
        stream.read_exact(&mut head).expect("fetch answer head");
        let head = FetchRespHead::read_from_bytes(&head).expect("fetch answer head");
        assert_eq!(head.tag, TAG_FETCHED, "block {}: not a fetch answer", block.block_id);
        assert_eq!(head.size.get(), block.size, "block {}: size", block.block_id);
        let size = block.size as usize;
        let (mut filled, mut crc) = (0usize, 0u32);
        while filled < size {
            let want = (size - filled).min(READ_BYTES);
            let read = stream.read(&mut buffer[filled..filled + want]).expect("receive a block");
            assert!(read > 0, "block {}: connection closed", block.block_id);
            crc = crc32c_append(crc, &buffer[filled..filled + read]);
            filled += read;
        }
        assert_eq!(crc, block.crc, "block {}: CRC", block.block_id);
        total += size as u64;
    }
    total
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    perf::process::own_cpu_seconds()
}

/// One floor read of the whole file: MB/s and CPU seconds per GiB.
fn floor(plan: &Plan, buffers: &mut [&'static mut [u8]], fresh: bool) -> (f64, f64) {
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    if fresh {
        for buffer in buffers.iter_mut() {
            // SAFETY: the buffer's own pages; they read as zeroes after.
            unsafe { libc::madvise(buffer.as_mut_ptr().cast(), buffer.len(), libc::MADV_DONTNEED) };
        }
    }
    let received: u64 = std::thread::scope(|scope| {
        let threads: Vec<_> = plan
            .services
            .iter()
            .zip(buffers.iter_mut())
            .map(|((addr, blocks), buffer)| scope.spawn(move || fetch_all(*addr, blocks, buffer)))
            .collect();
        threads.into_iter().map(|thread| thread.join().expect("fetch thread")).sum()
    });
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    assert_eq!(received, plan.bytes, "every data byte once");
    let gib = plan.bytes as f64 / f64::from(1u32 << 30);
    (perf::limits::mb_per_second(plan.bytes, elapsed), cpu / gib)
}

/// CPU seconds so far of every process whose command line contains
/// `pattern` and whose name is `blockd` (the cluster's block services),
/// from `/proc/PID/stat` (clock ticks of 10 ms).
fn blockd_cpu_seconds(pattern: &str) -> f64 {
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        if comm.trim() != "blockd" || !String::from_utf8_lossy(&cmdline).contains(pattern) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // Fields after the command name in parentheses: utime and stime
        // are the 12th and 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for index in [11, 12] {
            ticks += fields.get(index).and_then(|field| field.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    ticks as f64 / 100.0
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(shuckle), Some(path), Some(rounds)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: cat_floor SHUCKLE PATH ROUNDS [EGGS ...]");
        std::process::exit(2);
    };
    let shuckle: SocketAddr = shuckle.parse().expect("SHUCKLE is HOST:PORT");
    let rounds: usize = rounds.parse().expect("ROUNDS is a number");
    let eggs: Vec<PathBuf> = args[3..].iter().map(PathBuf::from).collect();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let plan = runtime.block_on(plan(shuckle, path));
    drop(runtime);
    let largest = plan.services.iter().flat_map(|(_, blocks)| blocks.iter().map(|b| b.size)).max().unwrap_or(0);
    let mut buffers: Vec<&'static mut [u8]> = plan.services.iter().map(|_| aligned_buffer(largest as usize)).collect();
    let fresh = std::env::var_os("CAT_FLOOR_FRESH").is_some_and(|value| value == "1");
    let both = std::env::var_os("CAT_FLOOR_FRESH").is_some_and(|value| value == "both");
    let mut fresh_floors: Vec<(f64, f64)> = Vec::new();
    println!("{path}: {} bytes, {} block services, largest block {largest} bytes", plan.bytes, plan.services.len());
    let envs = vec![("EGGS_SHUCKLE".to_string(), shuckle.to_string())];
    // Block services' CPU is counted when their command line is told apart.
    let blockd = std::env::var("CAT_FLOOR_BLOCKD").ok();
    let gib = plan.bytes as f64 / f64::from(1u32 << 30);
    let (mut loopback_cpus, mut blockd_cpus) = (Vec::new(), Vec::new());
    // Per round: loopback, floor (MB/s, CPU), each eggs (MB/s, CPU).
    let mut loopbacks = Vec::new();
    let mut floors = Vec::new();
    let mut cats: Vec<Vec<(f64, f64)>> = vec![Vec::new(); eggs.len()];
    let mut nulls: Vec<Vec<(f64, f64)>> = vec![Vec::new(); eggs.len()];
    for round in 0..rounds {
        let cpu_before = cpu_seconds();
        let loopback = perf::limits::tcp_loopback(2, LOOPBACK_SECONDS).expect("loopback");
        // Senders and receivers: both ends of the loopback CPU, per GiB moved.
        let loopback_cpu =
            (cpu_seconds() - cpu_before) / (loopback * 1e6 * LOOPBACK_SECONDS.as_secs_f64() / f64::from(1u32 << 30));
        let blockd_before = blockd.as_deref().map(blockd_cpu_seconds);
        let (floor_rate, floor_cpu) = floor(&plan, &mut buffers, fresh);
        let blockd_cpu =
            blockd_before.map(|before| (blockd_cpu_seconds(blockd.as_deref().unwrap_or("")) - before) / gib);
        let mut line = format!(
            "round {round}: loopback 2 streams {loopback:.0} MB/s, {loopback_cpu:.3} CPU s/GiB; floor {floor_rate:.0} MB/s ({:.2}), {floor_cpu:.3} CPU s/GiB",
            floor_rate / loopback
        );
        if let Some(cpu) = blockd_cpu {
            line += &format!(" + blockd {cpu:.3}");
            blockd_cpus.push(cpu);
        }
        if both {
            let (rate, cpu) = floor(&plan, &mut buffers, true);
            line += &format!("; floor, fresh buffers {rate:.0} MB/s ({:.2}), {cpu:.3} CPU s/GiB", rate / loopback);
            fresh_floors.push((rate, cpu));
        }
        loopback_cpus.push(loopback_cpu);
        for (index, binary) in eggs.iter().enumerate() {
            let gib = plan.bytes as f64 / f64::from(1u32 << 30);
            let cat = |output| {
                perf::files::cat_measured(binary, &envs, path, plan.bytes as usize, plan.crc, output).expect("eggs cat")
            };
            let run = cat(perf::files::CatOutput::Checked);
            let cpu = run.cpu_seconds / gib;
            line += &format!(
                "; eggs[{index}] {:.0} MB/s ({:.2}), {cpu:.3} CPU s/GiB",
                run.mb_per_second,
                run.mb_per_second / loopback
            );
            cats[index].push((run.mb_per_second, cpu));
            let null = cat(perf::files::CatOutput::DevNull);
            let (null_rate, null_cpu) = (null.mb_per_second, null.cpu_seconds / gib);
            line += &format!(
                "; eggs[{index}] > /dev/null {null_rate:.0} MB/s ({:.2}), {null_cpu:.3} CPU s/GiB",
                null_rate / loopback
            );
            nulls[index].push((null_rate, null_cpu));
        }
        println!("{line}");
        loopbacks.push(loopback);
        floors.push((floor_rate, floor_cpu));
    }
    let ratios = |rates: &[f64]| median(rates.iter().zip(&loopbacks).map(|(rate, limit)| rate / limit).collect());
    let floor_rates: Vec<f64> = floors.iter().map(|f| f.0).collect();
    println!("medians of {rounds} rounds:");
    println!(
        "  loopback TCP, 2 streams: {:.0} MB/s, {:.3} CPU s/GiB (both ends)",
        median(loopbacks.clone()),
        median(loopback_cpus)
    );
    if !blockd_cpus.is_empty() {
        println!("  block services during the floor read: {:.3} CPU s/GiB", median(blockd_cpus));
    }
    println!(
        "  floor reader: {:.0} MB/s, {:.3} CPU s/GiB, floor / loopback (per round) {:.2}",
        median(floor_rates.clone()),
        median(floors.iter().map(|f| f.1).collect()),
        ratios(&floor_rates)
    );
    if !fresh_floors.is_empty() {
        let rates: Vec<f64> = fresh_floors.iter().map(|f| f.0).collect();
        let paired: Vec<f64> = fresh_floors.iter().zip(&floors).map(|(fresh, floor)| fresh.0 / floor.0).collect();
        println!(
            "  floor reader, fresh buffers: {:.0} MB/s, {:.3} CPU s/GiB, / loopback (per round) {:.2}, / floor (per round) {:.2}",
            median(rates.clone()),
            median(fresh_floors.iter().map(|f| f.1).collect()),
            ratios(&rates),
            median(paired)
        );
    }
    for (index, binary) in eggs.iter().enumerate() {
        for (what, runs) in [("into a pipe", &cats[index]), ("> /dev/null", &nulls[index])] {
            let rates: Vec<f64> = runs.iter().map(|r| r.0).collect();
            println!(
                "  eggs[{index}] {} {what}: {:.0} MB/s, {:.3} CPU s/GiB, cat / loopback (per round) {:.2}",
                binary.display(),
                median(rates.clone()),
                median(runs.iter().map(|r| r.1).collect()),
                ratios(&rates)
            );
        }
    }
}
