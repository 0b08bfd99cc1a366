//! Issue 13 ("bad input and faults"): a block service that refuses an
//! erase certificate. The shards certify erases with the key shuckle gave
//! them; here the block service at that address is restarted on the same
//! folder and port with another key, so it refuses the certificate (blockd
//! closes the connection). gcd logs and counts the refusal, the block stays
//! on its disk, the file stays listed in eden (nothing is removed from the
//! metadata without every erase proof), and gcd keeps retrying: once the
//! service has its own key back, the next cycle erases the block and
//! collects the file.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Cluster, scrape, test_bytes, wait_for};

/// The command line of a running process (from /proc).
fn command_line(pid: u32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    bytes
        .split(|byte| *byte == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect()
}

/// A blockd this test started, stopped when dropped (also on a failed
/// assertion, so it never outlives the test).
struct Blockd(Child);

impl Drop for Blockd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a blockd with `args` and waits for its `ready` line.
fn start_blockd(args: &[String]) -> Blockd {
    let mut child =
        Command::new(common::binary("blockd")).args(&args[1..]).stdout(Stdio::piped()).spawn().expect("start blockd");
    let stdout = child.stdout.take().expect("stdout");
    let blockd = Blockd(child);
    let ready = BufReader::new(stdout).lines().map_while(Result::ok).any(|line| line == "ready");
    assert!(ready, "blockd printed ready");
    blockd
}

fn eden_listing(cluster: &Cluster) -> String {
    let mut out = String::from_utf8(cluster.ok(&["visit-eden", "--shard", "0"])).expect("utf-8");
    out.push_str(&String::from_utf8(cluster.ok(&["visit-eden", "--shard", "1"])).expect("utf-8"));
    out
}

fn blocks_in(dir: &Path, blocks: &[std::path::PathBuf]) -> usize {
    blocks.iter().filter(|block| block.starts_with(dir) && block.exists()).count()
}

#[test]
fn a_refused_erase_keeps_the_block_listed_and_is_retried() {
    let cluster = Cluster::start(6, &["--eden-deadline-secs", "2", "--purge-age-min-secs", "1", "--no-gcd"]);
    cluster.ok(&["policy", "/", "--retention-secs", "0"]);
    let before = cluster.block_files();
    cluster.put("/doomed", &test_bytes(300_000, 5));
    let inode = {
        let out = String::from_utf8(cluster.ok(&["stat", "/doomed"])).expect("utf-8");
        out.lines().find_map(|line| line.strip_prefix("inode=")).expect("inode").to_owned()
    };
    let doomed_blocks: Vec<_> = cluster.block_files().into_keys().filter(|path| !before.contains_key(path)).collect();
    assert_eq!(doomed_blocks.len(), 6, "RS 4+2: one block per service");
    // Block service 0 comes back on its folder and port with another key.
    let victim = cluster.block_services()[0].clone();
    let victim_dir = cluster.block_dir(0);
    let args = command_line(victim.pid);
    cluster.kill(&victim);
    std::thread::sleep(Duration::from_millis(200));
    let key = victim_dir.join("secret.key");
    let own_key = std::fs::read(&key).expect("secret.key");
    let mut other_key = own_key.clone();
    other_key.iter_mut().for_each(|byte| *byte ^= 0x5a);
    std::fs::write(&key, &other_key).expect("replace the key");
    let impostor = start_blockd(&args);

    cluster.ok(&["rm", "/doomed"]);
    std::thread::sleep(Duration::from_secs(2));
    let gcd = cluster.start_gcd(&["--gc-interval-secs", "1", "--scrub-interval-secs", "0"]);
    let refused = wait_for(Duration::from_secs(60), "a refused erase", || {
        let counters = scrape(&gcd.metrics);
        (counters.get("gcd_erase_failures").copied().unwrap_or(0.0) >= 1.0).then_some(counters)
    });
    assert!(refused["gcd_errors"] >= 1.0, "the refusal is counted as an error: {refused:?}");
    // Two more cycles: still refused, still listed.
    let cycles = refused["gcd_cycles"];
    wait_for(Duration::from_secs(60), "two more cycles", || {
        (scrape(&gcd.metrics)["gcd_cycles"] >= cycles + 2.0).then_some(())
    });
    assert_eq!(blocks_in(&victim_dir, &doomed_blocks), 1, "the refused block stays on its disk");
    assert!(eden_listing(&cluster).contains(&inode), "the file stays listed in eden, its span condemned");
    assert!(scrape(&gcd.metrics)["gcd_erase_failures"] >= 3.0, "retried every cycle");

    // The service gets its own key back: the next cycle erases and collects.
    drop(impostor);
    std::fs::write(&key, &own_key).expect("restore the key");
    let restored = start_blockd(&args);
    wait_for(Duration::from_secs(60), "the file collected after the key came back", || {
        (!eden_listing(&cluster).contains(&inode)).then_some(())
    });
    assert_eq!(blocks_in(&victim_dir, &doomed_blocks), 0, "the block is erased");
    assert!(doomed_blocks.iter().all(|block| !block.exists()), "every block of the file is erased");
    drop(restored);
}
