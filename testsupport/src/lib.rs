//! The integration tests' harness, shared by every crate's `tests/`: a
//! dev-dependency only, never linked into a daemon or the client.
//!
//! - [`binary`]: the workspace's binaries, from the test's own target folder;
//! - [`Daemon`]: one real daemon started and waited for until it prints
//!   `ready`, with its `listening PROTO ADDR` lines;
//! - [`cluster::Cluster`]: a whole cluster from `eggs local-cluster` on
//!   run-time ports in a temporary folder, and `eggs` invocations against it;
//! - [`test_bytes`] and [`Rng`]: seeded, reproducible data;
//! - [`wait_for`], [`wait_exit`] and [`mount_tmpfs`]: the small waits and
//!   set-ups several suites need.
//!
//! It depends on no workspace crate, so a change to `wire` does not rebuild
//! it, and it cannot drift into a second implementation of the protocol.

pub mod cluster;
mod daemon;

pub use cluster::{Cluster, Printed};
pub use daemon::Daemon;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `target/<profile>/<name>`: a binary built beside the running test
/// (`target/<profile>/deps/<test>`). Panics, saying what to build, when it
/// is missing.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe.parent().and_then(Path::parent).expect("target/<profile>").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`, or `cargo test --workspace`)",
        path.display()
    );
    path
}

/// Deterministic bytes that do not look repetitive (xorshift64 of `seed`):
/// the same `(len, seed)` gives the same bytes in every test and run.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A tiny seeded generator (splitmix64): randomised tests print their seed
/// and replay exactly from it.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough below `bound` (> 0) for tests.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// An index below `len` (> 0).
    pub fn index(&mut self, len: usize) -> usize {
        (self.next_u64() % len as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Polls `check` every 250 ms until it returns `Some`; panics naming `what`
/// after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits up to `timeout` for `child` to exit; SIGKILLs it after that.
/// Returns whether it exited by itself with status 0.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Sends `signal` to a process the test started or was told about.
pub fn signal(pid: u32, signal: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory preconditions; a wrong pid is an error
    // return, not undefined behaviour.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// `mount -t tmpfs -o size=BYTES tmpfs DIR` (creating `dir`); false when it
/// is not allowed here (not root, no mount(8)). The caller skips with a
/// message, or fails under `CI=true`.
pub fn mount_tmpfs(dir: &Path, bytes: u64) -> bool {
    std::fs::create_dir_all(dir).expect("create the tmpfs mount point");
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|status| status.success())
}

/// Fills the file system holding `dir` with `dir/filler` up to its last
/// bytes (64 KiB writes, then 512-byte ones into the last pages), synced.
pub fn fill_filesystem(dir: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join("filler")).expect("create the filler");
    let chunk = vec![0x5au8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    while file.write_all(&chunk[..512]).is_ok() {}
    let _ = file.sync_all();
}

/// Whether tests that can skip (no root, no chromium, no namespaces) must
/// not: `CI=true` turns every such skip into a failure.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_bytes_are_reproducible_and_seed_dependent() {
        assert_eq!(test_bytes(1000, 7), test_bytes(1000, 7));
        assert_ne!(test_bytes(1000, 7), test_bytes(1000, 8));
        assert_eq!(test_bytes(10, 7), test_bytes(1000, 7)[..10]);
    }

    #[test]
    fn rng_replays_from_its_seed() {
        let (mut a, mut b) = (Rng(42), Rng(42));
        let first: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..100).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert!((0..1000).all(|_| a.below(7) < 7));
        assert_ne!(Rng(1).next_u64(), Rng(2).next_u64());
    }
}
