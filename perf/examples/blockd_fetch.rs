//! blockd's cached fetch alone, paired A/B between blockd binaries
//! (issue 11's "blockd cached fetch × 16 connections" row).
//!
//! `cargo run --release -p perf --example blockd_fetch -- ROUNDS BLOCKD [BLOCKD ...]`
//!
//! Each round measures the 2-stream loopback limit (`perf::limits::tcp_loopback`,
//! 2 s), then for each blockd binary, in an order that alternates between
//! rounds: starts it on a fresh temporary folder and runs
//! `perf::blocks::write_and_fetch` (the function eggs-perf's figure comes
//! from) for 1 MiB and 64 MiB blocks × 16 and × 1 connection, 2 s phases; it prints
//! the fetch rate, its ratio to the round's loopback limit, and blockd's
//! CPU seconds (user + system, from `/proc`) over the cell, how many
//! distinct blocks the fetches cycled through (the page cache they read
//! from), and the fetch phase's window on `CLOCK_MONOTONIC` (for
//! `perf record -k CLOCK_MONOTONIC` and `perf report --time START,END`).
//!
//! `BLOCKD_FETCH_CELLS=1x16,64x16` runs only those cells (MiB × connections);
//! `BLOCKD_FETCH_SECONDS=N` sets the phases' length (default 2).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use perf::blocks;

const MIB: usize = 1 << 20;

/// Seconds on `CLOCK_MONOTONIC` (perf's `-k CLOCK_MONOTONIC` clock) of `instant`.
fn monotonic_seconds(instant: std::time::Instant) -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let now_seconds = now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9;
    now_seconds - instant.elapsed().as_secs_f64()
}

fn cells() -> Vec<(usize, usize)> {
    let Ok(text) = std::env::var("BLOCKD_FETCH_CELLS") else {
        return vec![(MIB, 16usize), (64 * MIB, 16), (MIB, 1), (64 * MIB, 1)];
    };
    text.split(',')
        .map(|cell| {
            let (mib, connections) = cell.split_once('x').expect("cells as MIBxCONNECTIONS");
            (mib.parse::<usize>().expect("MiB") * MIB, connections.parse().expect("connections"))
        })
        .collect()
}

fn cpu_seconds(pid: u32) -> f64 {
    perf::process::cpu_seconds(pid).unwrap_or(0.0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).expect("ROUNDS");
    let binaries: Vec<PathBuf> = args.map(PathBuf::from).collect();
    assert!(!binaries.is_empty(), "BLOCKD binaries");
    let phase =
        Duration::from_secs(std::env::var("BLOCKD_FETCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2));
    let cells = cells();
    let largest = cells.iter().map(|&(size, _)| size).max().unwrap_or(MIB);
    let data = Arc::new(perf::limits::pseudo_random_bytes(largest, 17));
    for round in 0..rounds {
        let loopback = perf::limits::tcp_loopback(2, phase).expect("loopback");
        println!("round {round}: loopback 2 streams {loopback:.0} MB/s");
        let mut order: Vec<usize> = (0..binaries.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for b in order {
            let folder = tempfile::tempdir().expect("tempdir");
            let sink = std::net::UdpSocket::bind("127.0.0.1:0").expect("sink");
            let (mut daemon, service) = blocks::start_blockd(
                &binaries[b],
                folder.path(),
                sink.local_addr().expect("sink addr"),
                Duration::from_secs(60),
            )
            .expect("start blockd");
            for &(size, connections) in &cells {
                let before = cpu_seconds(daemon.pid());
                let cell = blocks::write_and_fetch(&service, Arc::new(data[..size].to_vec()), connections, phase)
                    .expect("cell");
                let cpu = cpu_seconds(daemon.pid()) - before;
                println!(
                    "  bin {b} {} MiB x {connections}: fetch {:.0} MB/s = {:.0} %  (write {:.0} MB/s, blockd cpu {cpu:.2} s; \
                     {} blocks = {} MiB fetched round-robin; fetch window {:.3}..{:.3})",
                    size / MIB,
                    cell.fetch_mb_per_second,
                    100.0 * cell.fetch_mb_per_second / loopback,
                    cell.write_mb_per_second,
                    cell.blocks,
                    cell.blocks * size / MIB,
                    monotonic_seconds(cell.fetch_window.0),
                    monotonic_seconds(cell.fetch_window.1),
                );
            }
            daemon.stop(Duration::from_secs(5));
        }
    }
}
