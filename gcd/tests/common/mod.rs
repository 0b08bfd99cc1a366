//! Test harness: a real cluster started with `eggs local-cluster` on
//! run-time ports in a temporary folder, `eggs` invocations against it, a
//! gcd the test can start and SIGKILL, and views of the block services'
//! folders. The binaries are the ones built beside this test
//! (`target/<profile>/`): `cargo build -p gcd -p client -p metad -p blockd -p cdcd -p shuckle`.

#![allow(dead_code)] // reason: each test binary uses a different part of the harness

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// One line local-cluster printed: `NAME PROTO ADDR pid PID`.
#[derive(Clone, Debug)]
pub struct Printed {
    pub name: String,
    pub proto: String,
    pub addr: String,
    pub pid: u32,
}

pub struct Cluster {
    pub dir: PathBuf,
    _temp: tempfile::TempDir,
    process: Option<Child>,
    pub daemons: Vec<Printed>,
    pub shuckle: String,
    /// From `metrics gcd http://ADDR/metrics`, when local-cluster started gcd.
    pub gcd_metrics: Option<String>,
}

impl Cluster {
    /// A fresh cluster of 2 shards, `block_services` block services and
    /// the given extra `local-cluster` flags.
    pub fn start(block_services: usize, flags: &[&str]) -> Self {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp.path().to_path_buf();
        let mut process = Command::new(binary("eggs"))
            .args(["local-cluster", "--data-dir"])
            .arg(&dir)
            .args(["--block-services", &block_services.to_string()])
            .args(flags)
            // Tests kill block services to see them gone: they stay down.
            .arg("--no-restart")
            .args(["--shuckle-port", "0", "--shard-port-base", "0", "--cdc-port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start eggs local-cluster");
        let stdout = process.stdout.take().expect("stdout");
        let (daemons, gcd_metrics) = match read_until_ready(stdout) {
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
        Self { dir, _temp: temp, process: Some(process), daemons, shuckle, gcd_metrics }
    }

    pub fn shuckle_http(&self) -> String {
        self.daemons
            .iter()
            .find(|daemon| daemon.name == "shuckle" && daemon.proto == "http")
            .map(|daemon| daemon.addr.clone())
            .expect("shuckle http address")
    }

    pub fn eggs(&self, args: &[&str]) -> Output {
        Command::new(binary("eggs"))
            .arg("--shuckle")
            .arg(&self.shuckle)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run eggs")
    }

    /// Runs eggs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Vec<u8> {
        let output = self.eggs(args);
        assert!(output.status.success(), "eggs {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    }

    /// `eggs put -f` of `bytes` (through a local file; replaces a file of
    /// that name, which the collection tests do on purpose).
    pub fn put(&self, path: &str, bytes: &[u8]) {
        let local = self.dir.join("upload");
        std::fs::write(&local, bytes).expect("write upload");
        self.ok(&["put", "-f", local.to_str().expect("utf-8"), path]);
    }

    pub fn cat(&self, path: &str) -> Vec<u8> {
        self.ok(&["cat", path])
    }

    /// The block services, in order.
    pub fn block_services(&self) -> Vec<Printed> {
        self.daemons
            .iter()
            .filter(|daemon| daemon.name.starts_with("block service") && daemon.proto == "tcp")
            .cloned()
            .collect()
    }

    /// The folder of block service `index`.
    pub fn block_dir(&self, index: usize) -> PathBuf {
        self.dir.join("blocks").join(index.to_string())
    }

    /// Every block file of every block service: path → size.
    pub fn block_files(&self) -> HashMap<PathBuf, u64> {
        let mut files = HashMap::new();
        for index in 0..self.block_services().len() {
            collect_block_files(&self.block_dir(index), &mut files);
        }
        files
    }

    /// Starts a gcd of our own against this cluster.
    pub fn start_gcd(&self, flags: &[&str]) -> Gcd {
        let mut child = Command::new(binary("gcd"))
            .args(["--shuckle", &self.shuckle, "--metrics", "127.0.0.1:0"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start gcd");
        let stdout = child.stdout.take().expect("stdout");
        let mut metrics = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("gcd stdout");
            if let Some(addr) = line.strip_prefix("listening metrics ") {
                metrics = Some(addr.to_owned());
            }
            if line == "ready" {
                break;
            }
        }
        Gcd { child, metrics: metrics.expect("gcd printed its metrics address") }
    }

    pub fn kill(&self, daemon: &Printed) {
        // SAFETY: kill(2) of a pid local-cluster told us about.
        let result = unsafe { libc::kill(daemon.pid as libc::pid_t, libc::SIGKILL) };
        assert_eq!(result, 0, "kill {}", daemon.name);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let Some(mut process) = self.process.take() else { return };
        // SAFETY: kill(2) of our own child.
        unsafe {
            libc::kill(process.id() as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..300 {
            if let Ok(Some(_)) = process.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = process.kill();
        let _ = process.wait();
    }
}

fn collect_block_files(dir: &Path, files: &mut HashMap<PathBuf, u64>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // Blocks live in two-hex-digit folders (`tmp/` holds writes in progress).
        if path.is_dir() && name.len() == 2 && name.chars().all(|c| c.is_ascii_hexdigit()) {
            for block in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                let size = block.metadata().map(|m| m.len()).unwrap_or(0);
                files.insert(block.path(), size);
            }
        }
    }
}

/// A gcd the test started.
pub struct Gcd {
    pub child: Child,
    pub metrics: String,
}

impl Gcd {
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gcd {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// GET /metrics at `addr`: counter name (without `_total`) → value.
pub fn scrape(addr: &str) -> HashMap<String, f64> {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    assert!(text.starts_with("HTTP/1.1 200"), "metrics answer: {text}");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.trim_end_matches("_total").to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Polls `check` until it returns `Some` or `timeout` passes.
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

/// Reads local-cluster's stdout up to `ready`, in a thread (with a timeout).
fn read_until_ready(stdout: ChildStdout) -> Result<(Vec<Printed>, Option<String>), String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut daemons = Vec::new();
        let mut gcd_metrics = None;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if line == "ready" {
                let _ = sender.send(Ok((daemons, gcd_metrics)));
                for _ in lines.by_ref() {}
                return;
            }
            if let Some(url) = line.strip_prefix("metrics gcd ") {
                gcd_metrics =
                    url.strip_prefix("http://").and_then(|rest| rest.strip_suffix("/metrics")).map(str::to_owned);
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
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
