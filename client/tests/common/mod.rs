//! Test harness: a real cluster started with `eggs local-cluster` on
//! run-time ports in a temporary folder, and `eggs` invocations against it.
//! The binaries are the ones built beside this test (`target/<profile>/`).

#![allow(dead_code)] // reason: each test binary uses a different part of the harness

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a cluster may take to become ready on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(240);

/// `target/<profile>/<name>`.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build the workspace first (cargo build --workspace --bins)", path.display());
    path
}

/// One daemon as local-cluster printed it.
#[derive(Clone, Debug)]
pub struct Printed {
    pub name: String,
    pub proto: String,
    pub addr: String,
    pub pid: u32,
}

pub struct Cluster {
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    process: Option<Child>,
    pub daemons: Vec<Printed>,
    pub shuckle: String,
    /// (NAME, URL) of every `metrics NAME URL` line.
    pub metrics: Vec<(String, String)>,
}

impl Cluster {
    /// A fresh cluster of 2 shards and `block_services` block services.
    pub fn start(block_services: usize) -> Self {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp.path().to_path_buf();
        let mut cluster = Self::start_in(&dir, block_services);
        cluster._temp = Some(temp);
        cluster
    }

    /// A fresh cluster of `shards` shards and `block_services` block services.
    pub fn start_with_shards(block_services: usize, shards: usize) -> Self {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp.path().to_path_buf();
        let mut cluster = Self::start_in_with(&dir, block_services, &["--shards", &shards.to_string()]);
        cluster._temp = Some(temp);
        cluster
    }

    /// A cluster on `dir` (resumes what is there).
    pub fn start_in(dir: &Path, block_services: usize) -> Self {
        Self::start_in_with(dir, block_services, &[])
    }

    /// A cluster on `dir` with more `local-cluster` flags. Its children stay
    /// down when killed (`--no-restart`): tests kill block services to read
    /// around them.
    pub fn start_in_with(dir: &Path, block_services: usize, flags: &[&str]) -> Self {
        let mut flags = flags.to_vec();
        flags.push("--no-restart");
        Self::spawn(dir, block_services, &flags)
    }

    /// A fresh cluster whose local-cluster restarts a child that dies.
    pub fn start_supervised(block_services: usize) -> Self {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut cluster = Self::spawn(temp.path(), block_services, &[]);
        cluster._temp = Some(temp);
        cluster
    }

    fn spawn(dir: &Path, block_services: usize, flags: &[&str]) -> Self {
        let mut process = Command::new(binary("eggs"))
            .args(["local-cluster", "--data-dir"])
            .arg(dir)
            .args(["--block-services", &block_services.to_string()])
            .args(flags)
            .args(["--shuckle-port", "0", "--shard-port-base", "0", "--cdc-port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start eggs local-cluster");
        let stdout = process.stdout.take().expect("stdout");
        let daemons = read_until_ready(stdout);
        let (daemons, metrics) = match daemons {
            Ok(found) => found,
            Err(error) => {
                let _ = process.kill();
                panic!("local-cluster did not become ready: {error}");
            }
        };
        let shuckle = daemons
            .iter()
            .find(|daemon| daemon.name == "shuckle" && daemon.proto == "udp")
            .map(|daemon| daemon.addr.clone())
            .expect("shuckle udp address");
        Self { dir: dir.to_path_buf(), _temp: None, process: Some(process), daemons, shuckle, metrics }
    }

    /// Runs `eggs --shuckle … args`.
    pub fn eggs(&self, args: &[&str]) -> Output {
        self.eggs_with_input(args, None)
    }

    pub fn eggs_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut child = Command::new(binary("eggs"))
            .arg("--shuckle")
            .arg(&self.shuckle)
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run eggs");
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("stdin");
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        child.wait_with_output().expect("eggs output")
    }

    /// Runs eggs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Vec<u8> {
        let output = self.eggs(args);
        assert!(output.status.success(), "eggs {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    }

    /// Runs eggs and returns stdout as text lines.
    pub fn lines(&self, args: &[&str]) -> Vec<String> {
        String::from_utf8(self.ok(args)).expect("utf-8").lines().map(str::to_owned).collect()
    }

    /// Runs eggs expecting failure; returns stderr, checked to be one line.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.eggs(args);
        assert!(!output.status.success(), "eggs {args:?} should fail");
        let stderr = String::from_utf8(output.stderr).expect("utf-8");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line of error for {args:?}: {stderr:?}");
        assert!(!stderr.contains("panicked") && !stderr.contains("{ "), "no debug dump: {stderr}");
        stderr
    }

    /// The block services, in order.
    pub fn block_services(&self) -> Vec<Printed> {
        self.daemons.iter().filter(|daemon| daemon.name.starts_with("block service")).cloned().collect()
    }

    /// SIGKILLs one daemon.
    pub fn kill(&self, daemon: &Printed) {
        // SAFETY: kill(2) of a pid local-cluster told us about.
        let result = unsafe { libc::kill(daemon.pid as libc::pid_t, libc::SIGKILL) };
        assert_eq!(result, 0, "kill {}", daemon.name);
    }

    /// SIGTERMs local-cluster and waits for it; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut process) = self.process.take() else { return true };
        // SAFETY: kill(2) of our own child.
        unsafe {
            libc::kill(process.id() as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..600 {
            if let Ok(Some(status)) = process.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = process.kill();
        let _ = process.wait();
        false
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// (NAME, URL) of each `metrics NAME URL` line.
type MetricsLines = Vec<(String, String)>;

/// Reads local-cluster's stdout up to `ready`, in a thread (with a timeout).
fn read_until_ready(stdout: ChildStdout) -> Result<(Vec<Printed>, MetricsLines), String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut daemons = Vec::new();
        let mut metrics = Vec::new();
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if line == "ready" {
                let _ = sender.send(Ok((daemons, metrics)));
                // Keep draining so the cluster never blocks on its stdout.
                for _ in lines.by_ref() {}
                return;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            if let ["metrics", name, url] = words.as_slice() {
                metrics.push(((*name).to_owned(), (*url).to_owned()));
                continue;
            }
            if let [name @ .., proto, addr, "pid", pid] = words.as_slice() {
                daemons.push(Printed {
                    name: name.join(" "),
                    proto: (*proto).to_owned(),
                    addr: (*addr).to_owned(),
                    pid: pid.parse().unwrap_or(0),
                });
            }
        }
        let _ = sender.send(Err("local-cluster exited before `ready`".to_owned()));
    });
    receiver.recv_timeout(READY_TIMEOUT).map_err(|_| "timed out".to_owned())?
}

/// Deterministic, non-repeating-looking bytes.
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
