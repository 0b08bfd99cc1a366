//! Acceptance 2 of issue 13, on real binaries: one block file corrupted and
//! another deleted on disk; gcd's scrub finds both, rebuilds them from
//! their spans onto a block service, swaps them in, and the rotten copy is
//! erased with a certificate. Every file then reads back identical with no
//! reconstruction (`eggs -v cat`).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Cluster, scrape, test_bytes, wait_for};

#[test]
fn a_corrupted_and_a_deleted_block_are_found_and_repaired() {
    let cluster = Cluster::start(6, &["--eden-deadline-secs", "2", "--purge-age-min-secs", "1", "--no-gcd"]);
    let mut files = HashMap::new();
    for index in 0..4u64 {
        let path = format!("/scrub-{index}");
        let bytes = test_bytes(100_000 + index as usize * 30_000, 500 + index);
        cluster.put(&path, &bytes);
        files.insert(path, bytes);
    }
    // local-cluster's write probes are eden files with blocks that were
    // never written: let them pass their deadline so gcd collects them first.
    std::thread::sleep(Duration::from_secs(3));
    let mut blocks: Vec<_> = cluster.block_files().into_keys().collect();
    blocks.sort();
    assert_eq!(blocks.len(), 24, "4 files × (4 + 2) blocks");
    let corrupted = blocks[3].clone();
    let deleted = blocks[17].clone();
    let mut bytes = std::fs::read(&corrupted).expect("read block");
    for byte in bytes.iter_mut().take(64) {
        *byte ^= 0x5a;
    }
    std::fs::write(&corrupted, &bytes).expect("corrupt block");
    std::fs::remove_file(&deleted).expect("delete block");

    let gcd =
        cluster.start_gcd(&["--gc-interval-secs", "1", "--scrub-interval-secs", "1", "--scrub-bytes-per-second", "0"]);
    wait_for(Duration::from_secs(60), "two repairs", || {
        let counters = scrape(&gcd.metrics);
        (counters.get("gcd_corruptions_repaired").copied().unwrap_or(0.0) >= 2.0).then_some(())
    });
    // The swapped-out copies are erased by eden collection.
    wait_for(Duration::from_secs(30), "the rotten copy erased", || (!corrupted.exists()).then_some(()));
    let counters = scrape(&gcd.metrics);
    assert_eq!(counters["gcd_corruptions_found"], 2.0, "exactly the two damaged blocks: {counters:?}");
    assert_eq!(cluster.block_files().len(), 24, "every block is back, nothing extra is left");
    for (path, contents) in &files {
        let output = cluster.eggs(&["-v", "cat", path]);
        assert!(output.status.success(), "{path}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(output.stdout == *contents, "{path} reads back identical");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("reconstructed"), "{path} needs no reconstruction: {stderr}");
    }
}
