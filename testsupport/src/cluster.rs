//! A whole cluster from `eggs local-cluster`, on run-time ports in a
//! temporary folder, and `eggs` invocations against it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::binary;

/// How long a cluster may take to become ready on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// How long local-cluster may take to stop all its children on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// One line local-cluster printed: `NAME PROTO ADDR pid PID`.
#[derive(Clone, Debug)]
pub struct Printed {
    pub name: String,
    pub proto: String,
    pub addr: String,
    pub pid: u32,
}

/// A running `eggs local-cluster`, stopped with SIGTERM on drop.
pub struct Cluster {
    /// The cluster's data folder.
    pub dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    process: Option<Child>,
    pub daemons: Vec<Printed>,
    /// Shuckle's UDP address, for `eggs --shuckle`.
    pub shuckle: String,
    /// (NAME, URL) of every `metrics NAME URL` line.
    pub metrics: Vec<(String, String)>,
    /// `ADDR` of `metrics gcd http://ADDR/metrics`, when it started gcd.
    pub gcd_metrics: Option<String>,
}

impl Cluster {
    /// A fresh cluster of 2 shards and `block_services` block services.
    pub fn start(block_services: usize) -> Self {
        Self::start_with(block_services, &[])
    }

    /// A fresh cluster with more `local-cluster` flags.
    pub fn start_with(block_services: usize, flags: &[&str]) -> Self {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut cluster = Self::start_in_with(temp.path(), block_services, flags);
        cluster.temp = Some(temp);
        cluster
    }

    /// A fresh cluster of `shards` shards.
    pub fn start_with_shards(block_services: usize, shards: usize) -> Self {
        Self::start_with(block_services, &["--shards", &shards.to_string()])
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
        cluster.temp = Some(temp);
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
        let (daemons, metrics) = match read_until_ready(stdout) {
            Ok(found) => found,
            Err(error) => {
                let _ = process.kill();
                let _ = process.wait();
                panic!("local-cluster did not become ready: {error}");
            }
        };
        let shuckle = daemons
            .iter()
            .find(|daemon| daemon.name == "shuckle" && daemon.proto == "udp")
            .map(|daemon| daemon.addr.clone())
            .expect("shuckle udp address");
        let gcd_metrics = metrics
            .iter()
            .find(|(name, _)| name == "gcd")
            .and_then(|(_, url)| url.strip_prefix("http://")?.strip_suffix("/metrics"))
            .map(str::to_owned);
        Self { dir: dir.to_path_buf(), temp: None, process: Some(process), daemons, shuckle, metrics, gcd_metrics }
    }

    /// Shuckle's HTTP address (web UI and API).
    pub fn shuckle_http(&self) -> String {
        self.daemon("shuckle", "http").addr.clone()
    }

    /// The daemon local-cluster printed as `name proto …`.
    pub fn daemon(&self, name: &str, proto: &str) -> &Printed {
        self.daemons
            .iter()
            .find(|daemon| daemon.name == name && daemon.proto == proto)
            .unwrap_or_else(|| panic!("local-cluster printed no `{name} {proto}`: {:?}", self.daemons))
    }

    /// Runs `eggs --shuckle … args`.
    pub fn eggs(&self, args: &[&str]) -> Output {
        self.eggs_with_input(args, None)
    }

    /// The same, with `input` on its stdin (written from a thread, so a
    /// child that fills its stdout first cannot deadlock the test).
    pub fn eggs_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut child = self.spawn_eggs(args, if input.is_some() { Stdio::piped() } else { Stdio::null() });
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("stdin");
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        child.wait_with_output().expect("eggs output")
    }

    /// Starts `eggs --shuckle … args` with `stdin`, its stdout and stderr
    /// piped, for a test that reads its output as it comes.
    pub fn spawn_eggs(&self, args: &[&str], stdin: Stdio) -> Child {
        Command::new(binary("eggs"))
            .arg("--shuckle")
            .arg(&self.shuckle)
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run eggs")
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

    /// Runs eggs expecting failure; returns stderr, checked to be one line
    /// with no panic or debug dump in it.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.eggs(args);
        assert!(!output.status.success(), "eggs {args:?} should fail");
        let stderr = String::from_utf8(output.stderr).expect("utf-8");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line of error for {args:?}: {stderr:?}");
        assert!(!stderr.contains("panicked") && !stderr.contains("{ "), "no debug dump: {stderr}");
        stderr
    }

    /// `eggs put -f` of `bytes` through a local file in the cluster folder
    /// (replacing a file of that name, which some tests do on purpose).
    pub fn put(&self, path: &str, bytes: &[u8]) {
        let local = self.dir.join("upload");
        std::fs::write(&local, bytes).expect("write upload");
        self.ok(&["put", "-f", local.to_str().expect("utf-8"), path]);
    }

    /// `eggs cat path`.
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
            for block in block_files_in(&self.block_dir(index)) {
                let size = block.metadata().map(|m| m.len()).unwrap_or(0);
                files.insert(block, size);
            }
        }
        files
    }

    /// SIGKILLs one daemon.
    pub fn kill(&self, daemon: &Printed) {
        crate::signal(daemon.pid, libc::SIGKILL).unwrap_or_else(|error| panic!("kill {}: {error}", daemon.name));
    }

    /// SIGTERMs local-cluster and waits for it; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut process) = self.process.take() else { return true };
        let _ = crate::signal(process.id(), libc::SIGTERM);
        crate::wait_exit(&mut process, STOP_TIMEOUT)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The block files of one block service folder: they live in two-hex-digit
/// folders (`tmp/` holds writes in progress).
pub fn block_files_in(dir: &Path) -> Vec<PathBuf> {
    let mut blocks = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return blocks };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() && name.len() == 2 && name.chars().all(|c| c.is_ascii_hexdigit()) {
            blocks.extend(std::fs::read_dir(&path).into_iter().flatten().flatten().map(|block| block.path()));
        }
    }
    blocks
}

/// (NAME, URL) of each `metrics NAME URL` line.
type MetricsLines = Vec<(String, String)>;

/// Reads local-cluster's stdout up to `ready`, in a thread (with a timeout),
/// and keeps draining it afterwards so the cluster never blocks on it.
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
