//! Acceptance 1 and 4 of issue 13, on real binaries: space comes back, and
//! a gcd SIGKILLed again and again during collection ends in the same state.
//!
//! 20 files (RS 4+2), 10 overwritten, 5 deleted, a `put` killed mid-file;
//! retention 0 at the root, an hour in `/keep` (its old version must stay),
//! and "the newest dead version" in `/count`. After one full gcd cycle
//! that began once every deadline had passed, the blockd folders hold
//! exactly the blocks of the living files and of the versions retention
//! keeps (paths and bytes), and every living file reads back identical.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Cluster, scrape, test_bytes, wait_for};
use wire::span::{Parity, SpanLayout};

/// The shards' eden deadline and purge age in these tests.
const EDEN_DEADLINE_SECS: u64 = 3;
const PURGE_AGE_MIN_SECS: u64 = 1;

/// Bytes a file of `size` takes on the block services under RS 4+2 (one span).
fn stored_bytes(size: usize) -> u64 {
    let layout = SpanLayout::new(size as u64, Parity::new(4, 2).expect("4+2")).expect("layout");
    (0..6).map(|index| layout.block_size(index)).sum()
}

struct Expected {
    /// Living path → contents.
    living: HashMap<String, Vec<u8>>,
    /// Sizes of the dead versions retention keeps.
    kept_dead_sizes: Vec<usize>,
}

impl Expected {
    fn block_files(&self) -> usize {
        6 * (self.living.len() + self.kept_dead_sizes.len())
    }

    fn block_bytes(&self) -> u64 {
        self.living.values().map(|bytes| stored_bytes(bytes.len())).sum::<u64>()
            + self.kept_dead_sizes.iter().map(|size| stored_bytes(*size)).sum::<u64>()
    }
}

/// Sizes above the inline threshold, below one span (32 MiB with the root policy).
fn size_of_file(index: u64) -> usize {
    40_000 + (index as usize * 7919) % 150_000
}

/// Writes the scenario; returns what must survive.
fn make_garbage(cluster: &Cluster) -> Expected {
    cluster.ok(&["policy", "/", "--retention-secs", "0"]);
    let mut living = HashMap::new();
    for index in 0..20u64 {
        let path = format!("/file-{index}");
        let bytes = test_bytes(size_of_file(index), index);
        cluster.put(&path, &bytes);
        living.insert(path, bytes);
    }
    for index in 0..10u64 {
        let path = format!("/file-{index}");
        let bytes = test_bytes(size_of_file(index + 100), index + 100);
        cluster.put(&path, &bytes);
        living.insert(path, bytes);
    }
    for index in 10..15u64 {
        let path = format!("/file-{index}");
        cluster.ok(&["rm", &path]);
        living.remove(&path);
    }
    // Retention keeps an overwritten version for an hour in /keep…
    cluster.ok(&["mkdir", "/keep"]);
    cluster.ok(&["policy", "/keep", "--retention-secs", "3600"]);
    let old = test_bytes(50_000, 900);
    cluster.put("/keep/a", &old);
    let new = test_bytes(60_000, 901);
    cluster.put("/keep/a", &new);
    living.insert("/keep/a".into(), new);
    // …and the newest dead version, however old, in /count.
    cluster.ok(&["mkdir", "/count"]);
    cluster.ok(&["policy", "/count", "--retention-secs", "0", "--retention-versions", "1"]);
    for (version, size) in [(0u64, 70_000usize), (1, 80_000), (2, 90_000)] {
        let bytes = test_bytes(size, 910 + version);
        cluster.put("/count/b", &bytes);
        if version == 2 {
            living.insert("/count/b".into(), bytes);
        }
    }
    kill_a_put_mid_file(cluster);
    Expected { living, kept_dead_sizes: vec![50_000, 80_000] }
}

/// The span size of the killed put, given on its command line so that the
/// test does not depend on the root policy's (RS 4+2 of the root policy:
/// four 4 MiB data blocks).
const VICTIM_SPAN_BYTES: u32 = 16 << 20;

/// Starts `eggs put - /victim`, feeds it more than one span, waits until
/// that span's blocks are on disk, and SIGKILLs it: an eden file with blocks.
fn kill_a_put_mid_file(cluster: &Cluster) {
    // gcd may be erasing other garbage meanwhile: look for new files, not a count.
    let before = cluster.block_files();
    let mut put = Command::new(common::binary("eggs"))
        .args(["--shuckle", &cluster.shuckle, "put", "-", "/victim", "--span-size", &VICTIM_SPAN_BYTES.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("eggs put");
    let mut stdin = put.stdin.take().expect("stdin");
    // One span and a little more makes the writer send the span and wait
    // for the rest.
    stdin.write_all(&test_bytes(VICTIM_SPAN_BYTES as usize + (1 << 20), 999)).expect("feed put");
    stdin.flush().expect("flush");
    wait_for(Duration::from_secs(60), "the killed put's first span on disk", || {
        let new = cluster.block_files().keys().filter(|path| !before.contains_key(*path)).count();
        (new >= 6).then_some(())
    });
    put.kill().expect("SIGKILL put");
    let _ = put.wait();
    drop(stdin);
}

/// Waits for one full gcd cycle that began after every deadline passed.
fn one_full_cycle_after_the_deadlines(metrics: &str) {
    std::thread::sleep(Duration::from_secs(EDEN_DEADLINE_SECS.max(PURGE_AGE_MIN_SECS) + 1));
    let start = scrape(metrics).get("gcd_cycles").copied().unwrap_or(0.0);
    wait_for(Duration::from_secs(60), "two more gcd cycles", || {
        (scrape(metrics).get("gcd_cycles").copied().unwrap_or(0.0) >= start + 2.0).then_some(())
    });
}

fn assert_space_came_back(cluster: &Cluster, expected: &Expected) {
    let files = cluster.block_files();
    let bytes: u64 = files.values().sum();
    assert_eq!(
        (files.len(), bytes),
        (expected.block_files(), expected.block_bytes()),
        "block files and bytes on the block services = those of the living files and the retained versions"
    );
    for (path, contents) in &expected.living {
        assert!(cluster.cat(path) == *contents, "{path} reads back identical");
    }
    let victim = cluster.eggs(&["cat", "/victim"]);
    assert!(!victim.status.success(), "the killed put never became a file");
}

#[test]
fn space_comes_back_within_one_cycle() {
    let cluster = Cluster::start(
        6,
        &[
            "--eden-deadline-secs",
            &EDEN_DEADLINE_SECS.to_string(),
            "--purge-age-min-secs",
            &PURGE_AGE_MIN_SECS.to_string(),
            "--gc-interval-secs",
            "1",
        ],
    );
    let metrics = cluster.gcd_metrics.clone().expect("local-cluster prints `metrics gcd http://ADDR/metrics`");
    let expected = make_garbage(&cluster);
    one_full_cycle_after_the_deadlines(&metrics);
    assert_space_came_back(&cluster, &expected);
    let counters = scrape(&metrics);
    // 10 overwritten + 5 deleted + 1 in /count + the killed put; local-cluster's probes add more.
    assert!(counters["gcd_files_collected"] >= 17.0, "{counters:?}");
    assert!(counters["gcd_blocks_erased"] >= 17.0 * 6.0, "{counters:?}");
    assert!(counters["gcd_dirents_purged"] >= 16.0, "{counters:?}");
    assert_eq!(counters["gcd_erase_failures"], 0.0, "{counters:?}");
}

#[test]
fn gcd_sigkilled_ten_times_during_collection_ends_in_the_same_state() {
    let cluster = Cluster::start(
        6,
        &[
            "--eden-deadline-secs",
            &EDEN_DEADLINE_SECS.to_string(),
            "--purge-age-min-secs",
            &PURGE_AGE_MIN_SECS.to_string(),
            "--no-gcd",
        ],
    );
    let expected = make_garbage(&cluster);
    std::thread::sleep(Duration::from_secs(EDEN_DEADLINE_SECS + 1));
    let flags = ["--gc-interval-secs", "0", "--scrub-interval-secs", "0"];
    for kill in 0..10u64 {
        let mut gcd = cluster.start_gcd(&flags);
        // Kill at different points of the cycle: 50 ms to 500 ms in.
        std::thread::sleep(Duration::from_millis(50 + (kill * 97) % 450));
        gcd.sigkill();
    }
    let gcd = cluster.start_gcd(&flags);
    let start = scrape(&gcd.metrics).get("gcd_cycles").copied().unwrap_or(0.0);
    wait_for(Duration::from_secs(60), "two gcd cycles after the kills", || {
        (scrape(&gcd.metrics).get("gcd_cycles").copied().unwrap_or(0.0) >= start + 2.0).then_some(())
    });
    assert_space_came_back(&cluster, &expected);
}
