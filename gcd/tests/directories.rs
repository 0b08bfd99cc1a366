//! Issue 13 item 3 on real binaries: removed directories are collected.
//!
//! Retention 0 at the root. `rmdir`ed directories — one empty, one whose
//! file was deleted first — lose their records (and the file its blocks)
//! once gcd has run after the shards' purge age; a removed directory whose
//! own policy keeps an hour, one that inherited an hour from its old
//! parent, a living empty directory and a directory rmdir refused (not
//! empty) are all untouched, and every living file reads back.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Cluster, scrape, test_bytes, wait_for};

const PURGE_AGE_MIN_SECS: u64 = 1;

/// The inode of `path` (`eggs stat`'s `inode=` line).
fn inode_of(cluster: &Cluster, path: &str) -> String {
    let out = String::from_utf8(cluster.ok(&["stat", path])).expect("utf-8");
    out.lines().find_map(|line| line.strip_prefix("inode=")).expect("inode= line").to_owned()
}

/// Every inode the shards list (both shards of the test cluster).
fn all_inodes(cluster: &Cluster) -> HashSet<String> {
    let mut inodes = HashSet::new();
    for shard in ["0", "1"] {
        let out = String::from_utf8(cluster.ok(&["visit-inodes", "--shard", shard])).expect("utf-8");
        inodes.extend(out.lines().map(str::to_owned));
    }
    inodes
}

#[test]
fn removed_directories_are_collected_and_nothing_else() {
    let cluster = Cluster::start(
        6,
        &["--eden-deadline-secs", "2", "--purge-age-min-secs", &PURGE_AGE_MIN_SECS.to_string(), "--no-gcd"],
    );
    cluster.ok(&["policy", "/", "--retention-secs", "0"]);
    // Garbage: two removed directories.
    cluster.ok(&["mkdir", "/gone-empty", "/gone-full"]);
    let file_bytes = test_bytes(200_000, 1);
    cluster.put("/gone-full/f", &file_bytes);
    let gone = [inode_of(&cluster, "/gone-empty"), inode_of(&cluster, "/gone-full")];
    let blocks_with_file = cluster.block_files();
    cluster.ok(&["rm", "/gone-full/f"]);
    cluster.ok(&["rmdir", "/gone-empty", "/gone-full"]);
    // Not garbage: removed but within their retention (their own, or their
    // old parent's), living, and not removable.
    cluster.ok(&["mkdir", "/own-hour", "/parent-hour", "/living", "/busy"]);
    cluster.ok(&["policy", "/own-hour", "--retention-secs", "3600"]);
    cluster.ok(&["policy", "/parent-hour", "--retention-secs", "3600"]);
    cluster.ok(&["mkdir", "/parent-hour/sub"]);
    let busy_bytes = test_bytes(150_000, 2);
    cluster.put("/busy/f", &busy_bytes);
    let kept = [
        inode_of(&cluster, "/own-hour"),
        inode_of(&cluster, "/parent-hour/sub"),
        inode_of(&cluster, "/living"),
        inode_of(&cluster, "/busy"),
    ];
    cluster.ok(&["rmdir", "/own-hour", "/parent-hour/sub"]);
    assert!(!cluster.eggs(&["rmdir", "/busy"]).status.success(), "rmdir of a directory with a file is refused");
    let before = all_inodes(&cluster);
    for inode in gone.iter().chain(&kept) {
        assert!(before.contains(inode), "{inode} is listed before gcd runs");
    }

    std::thread::sleep(Duration::from_secs(PURGE_AGE_MIN_SECS + 1));
    let gcd = cluster.start_gcd(&["--gc-interval-secs", "1", "--scrub-interval-secs", "0"]);
    let collected = wait_for(Duration::from_secs(90), "both removed directories collected", || {
        let counters = scrape(&gcd.metrics);
        (counters.get("gcd_directories_collected").copied().unwrap_or(0.0) >= 2.0).then_some(counters)
    });
    // One more cycle: nothing else goes.
    let cycles = scrape(&gcd.metrics)["gcd_cycles"];
    wait_for(Duration::from_secs(60), "two more cycles", || {
        (scrape(&gcd.metrics)["gcd_cycles"] >= cycles + 2.0).then_some(())
    });
    let after = all_inodes(&cluster);
    for inode in &gone {
        assert!(!after.contains(inode), "removed, empty directory {inode} is gone ({collected:?})");
    }
    for inode in &kept {
        assert!(after.contains(inode), "{inode} (within retention, living, or not empty) is kept");
    }
    let counters = scrape(&gcd.metrics);
    assert_eq!(counters["gcd_directories_collected"], 2.0, "{counters:?}");
    assert!(counters["gcd_files_collected"] >= 1.0, "the removed directory's file was collected: {counters:?}");
    // The removed directory's file took its blocks with it.
    let now = cluster.block_files();
    let file_blocks: Vec<_> = blocks_with_file.keys().filter(|path| !now.contains_key(*path)).collect();
    assert!(!file_blocks.is_empty(), "the deleted file's blocks were erased");
    assert_eq!(cluster.cat("/busy/f"), busy_bytes, "the living file reads back");
    assert!(cluster.eggs(&["stat", "/living"]).status.success(), "the living directory is there");
    // The kept removed directories are still named in their parents' dead
    // maps; the entries naming the collected ones went after them.
    cluster.ok(&["resolve", "/own-hour", "--dead-ge", "0"]);
    cluster.ok(&["resolve", "/parent-hour/sub", "--dead-ge", "0"]);
    for path in ["/gone-empty", "/gone-full"] {
        assert!(!cluster.eggs(&["resolve", path, "--dead-ge", "0"]).status.success(), "{path}'s dead entry is purged");
    }
}

/// A directory removed inside a directory removed since keeps the
/// retention of that chain: `/outer/mid/inner` under a root that keeps
/// nothing all go (innermost first, with a file deleted in `inner`), while
/// `/hour/inner`, removed inside `/hour` whose own policy keeps an hour, is
/// kept with it (it does not fall through to the root's 0).
#[test]
fn directories_removed_inside_removed_ones_inherit_their_retention() {
    let cluster = Cluster::start(
        6,
        &["--eden-deadline-secs", "2", "--purge-age-min-secs", &PURGE_AGE_MIN_SECS.to_string(), "--no-gcd"],
    );
    cluster.ok(&["policy", "/", "--retention-secs", "0"]);
    cluster.ok(&["mkdir", "/outer"]);
    cluster.ok(&["mkdir", "/outer/mid"]);
    cluster.ok(&["mkdir", "/outer/mid/inner"]);
    cluster.ok(&["mkdir", "/hour"]);
    cluster.ok(&["policy", "/hour", "--retention-secs", "3600"]);
    cluster.ok(&["mkdir", "/hour/inner"]);
    let file_bytes = test_bytes(200_000, 3);
    cluster.put("/outer/mid/inner/f", &file_bytes);
    let blocks_with_file = cluster.block_files();
    let gone = [inode_of(&cluster, "/outer"), inode_of(&cluster, "/outer/mid"), inode_of(&cluster, "/outer/mid/inner")];
    let kept = [inode_of(&cluster, "/hour"), inode_of(&cluster, "/hour/inner")];
    cluster.ok(&["rm", "/outer/mid/inner/f"]);
    for path in ["/outer/mid/inner", "/outer/mid", "/outer", "/hour/inner", "/hour"] {
        cluster.ok(&["rmdir", path]);
    }

    std::thread::sleep(Duration::from_secs(PURGE_AGE_MIN_SECS + 1));
    let gcd = cluster.start_gcd(&["--gc-interval-secs", "1", "--scrub-interval-secs", "0"]);
    let collected = wait_for(Duration::from_secs(90), "the three nested removed directories collected", || {
        let counters = scrape(&gcd.metrics);
        (counters.get("gcd_directories_collected").copied().unwrap_or(0.0) >= 3.0).then_some(counters)
    });
    let cycles = scrape(&gcd.metrics)["gcd_cycles"];
    wait_for(Duration::from_secs(60), "two more cycles", || {
        (scrape(&gcd.metrics)["gcd_cycles"] >= cycles + 2.0).then_some(())
    });
    let after = all_inodes(&cluster);
    for inode in &gone {
        assert!(!after.contains(inode), "nested removed directory {inode} is gone ({collected:?})");
    }
    for inode in &kept {
        assert!(
            after.contains(inode),
            "{inode}, removed within an hour's retention (its own or its old parent's), is kept"
        );
    }
    let counters = scrape(&gcd.metrics);
    assert_eq!(counters["gcd_directories_collected"], 3.0, "{counters:?}");
    let now = cluster.block_files();
    assert!(
        blocks_with_file.keys().any(|path| !now.contains_key(path)),
        "the file deleted in the innermost directory lost its blocks"
    );
    cluster.ok(&["resolve", "/hour", "--dead-ge", "0"]);
    assert!(!cluster.eggs(&["resolve", "/outer", "--dead-ge", "0"]).status.success(), "/outer's dead entry is purged");
}
