//! The README's commands, run as written ("Paste the README"): the set-up
//! command from a fresh working directory with its relative `--data-dir`,
//! then the "Using it" session against that cluster.
//!
//! The only departures from the text, each for a stated reason:
//! - `cargo build --release --workspace &&` is not run: the test runs after
//!   cargo built this profile's binaries; `target/release/eggs` in the fresh
//!   folder is a link to this profile's `eggs` (which finds its daemons
//!   beside its real path).
//! - `--shuckle-port 0 --shard-port-base 0 --cdc-port 0` are appended: other
//!   tests and developers on this machine may hold the default ports. The
//!   session finds shuckle through `EGGS_SHUCKLE`, as a user with a non-default
//!   shuckle would.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{binary, test_bytes};

/// How long the cluster may take to become ready on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(240);

/// The ```sh blocks of the README, in order.
fn readme_blocks() -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).expect("README.md");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => block.push(line.to_owned()),
            (None, _) => {}
        }
    }
    blocks
}

/// The set-up command after `cargo build … &&`, as written.
fn setup_command(blocks: &[Vec<String>]) -> String {
    let line = blocks
        .iter()
        .flatten()
        .find(|line| line.contains("local-cluster"))
        .expect("the README has a local-cluster command");
    let (build, start) = line.split_once(" && ").expect("`cargo build … && target/release/eggs local-cluster …`");
    assert!(build.starts_with("cargo build --release"), "{line}");
    assert!(start.starts_with("target/release/eggs local-cluster"), "{line}");
    assert!(start.contains("--data-dir ./"), "the README's folder is relative; keep testing that: {line}");
    start.to_owned()
}

/// The "Using it" block (the one that uses `$eggs`).
fn session(blocks: &[Vec<String>]) -> String {
    let block = blocks.iter().find(|block| block.iter().any(|line| line.contains("$eggs put"))).expect("usage block");
    block.join("\n")
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

/// Reads `local-cluster`'s stdout until `ready`; returns shuckle's UDP address.
fn wait_ready(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut shuckle = None;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["shuckle", "udp", address, ..] = words.as_slice() {
                shuckle = Some((*address).to_owned());
            }
            if line == "ready" {
                let _ = sender.send(shuckle.take());
                for _ in lines.by_ref() {}
                return;
            }
        }
        let _ = sender.send(None);
    });
    match receiver.recv_timeout(READY_TIMEOUT) {
        Ok(Some(shuckle)) => shuckle,
        Ok(None) => panic!("local-cluster exited (or printed no shuckle address) before `ready`"),
        Err(_) => panic!("local-cluster not ready within {} s", READY_TIMEOUT.as_secs()),
    }
}

// Regression: `target/release/eggs local-cluster --data-dir ./eggsfs-data`
// exited 1 after 0.2 s (glommio could not open `./eggsfs-data/blocks/0/00`).
#[test]
fn readme_setup_and_session_run_as_written_from_a_fresh_folder() {
    let blocks = readme_blocks();
    let command = setup_command(&blocks);
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(work.path().join("target/release")).expect("target/release");
    std::os::unix::fs::symlink(binary("eggs"), work.path().join("target/release/eggs")).expect("link eggs");

    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {command} --shuckle-port 0 --shard-port-base 0 --cdc-port 0"))
        .current_dir(work.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the README's command");
    let mut cluster = Running(child);
    let shuckle = wait_ready(&mut cluster.0);
    assert!(work.path().join("eggsfs-data/cluster.key").is_file(), "the data folder is relative to the working folder");
    assert!(work.path().join("eggsfs-data/blocks/0").is_dir());

    let original = test_bytes(3 << 20, 14);
    std::fs::write(work.path().join("big.bin"), &original).expect("big.bin");
    let output = Command::new("sh")
        .arg("-e")
        .arg("-c")
        .arg(session(&blocks))
        .current_dir(work.path())
        .env("EGGS_SHUCKLE", &shuckle)
        .stdin(Stdio::null())
        .output()
        .expect("run the README's session");
    assert!(
        output.status.success(),
        "the README's session failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let copy = std::fs::read(work.path().join("copy.bin")).expect("copy.bin");
    assert!(copy == original, "`eggs cat` gave back {} bytes, not the {} written", copy.len(), original.len());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.lines().any(|line| line == "big.bin"), "`ls /data` listed the file: {stdout}");

    // SIGTERM stops the whole cluster cleanly.
    // SAFETY: kill(2) of our own child.
    unsafe {
        libc::kill(cluster.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = cluster.0.wait().expect("wait");
    assert!(status.success(), "local-cluster stopped with {status}");
}
