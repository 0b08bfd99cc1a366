//! Starting the real binaries and reading what they print.
//!
//! Every daemon follows ARCHITECTURE.md: `listening <proto> <ip:port>` lines
//! on stdout, then `ready`. A daemon that exits first (a stub prints "not
//! implemented yet" and exits 2) becomes a [`PerfError::Component`] carrying
//! its exit status and the last line it wrote on stderr.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{PerfError, Result};

/// The folder holding the workspace's binaries: the one `eggs-perf` runs
/// from (`target/release/`).
pub fn binary_folder() -> PathBuf {
    let folder = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    // An example (`target/release/examples/`) uses the binaries beside it.
    match folder.file_name() {
        Some(name) if name == "examples" => folder.parent().map(Path::to_path_buf).unwrap_or(folder),
        _ => folder,
    }
}

/// The path of binary `name` beside eggs-perf, if it was built.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = binary_folder().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(PerfError::Component(format!(
            "{} not found (run `cargo build --release --workspace` first)",
            path.display()
        )))
    }
}

/// A line a daemon printed on stdout.
enum Line {
    Listening(String, SocketAddr),
    Ready,
    Other(String),
}

fn parse_line(line: &str) -> Line {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("ready"), None, None) => Line::Ready,
        (Some("listening"), Some(proto), Some(addr)) => match addr.parse() {
            Ok(addr) => Line::Listening(proto.to_string(), addr),
            Err(_) => Line::Other(line.to_string()),
        },
        _ => Line::Other(line.to_string()),
    }
}

/// Starts `eggs local-cluster` with its data in `data`, every port chosen
/// at run time (the machine is shared, and the default ports may be taken
/// by someone else's cluster), and `extra` flags; logs go to `log_folder`.
pub fn start_local_cluster(
    name: &str,
    data: &Path,
    extra: &[&str],
    log_folder: &Path,
    timeout: Duration,
) -> Result<Daemon> {
    let eggs = binary("eggs")?;
    let mut args: Vec<String> = ["local-cluster", "--data-dir"].map(String::from).to_vec();
    args.push(data.display().to_string());
    for flag in ["--shuckle-port", "--shard-port-base", "--cdc-port"] {
        args.extend([flag.to_string(), "0".to_string()]);
    }
    args.extend(extra.iter().map(|word| (*word).to_string()));
    Daemon::start(name, &eggs, &args, &[], log_folder, timeout)
}

/// A child process that printed `ready`; stopped (SIGTERM, then SIGKILL)
/// when dropped.
pub struct Daemon {
    pub name: String,
    child: Child,
    /// Every `listening` line, in order.
    pub listening: Vec<(String, SocketAddr)>,
    /// Other stdout lines before `ready` (local-cluster's address lines).
    pub other_lines: Vec<String>,
    /// Time from spawn to the `ready` line.
    pub ready_after: Duration,
    stderr_path: PathBuf,
}

impl Daemon {
    /// Spawns `program args…` with stderr to `log_folder/<name>.stderr` and
    /// waits up to `timeout` for `ready`.
    pub fn start(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        log_folder: &Path,
        timeout: Duration,
    ) -> Result<Self> {
        let stderr_path = log_folder.join(format!("{name}.stderr"));
        let stderr = File::create(&stderr_path).map_err(PerfError::io(format!("create {}", stderr_path.display())))?;
        let started = Instant::now();
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr);
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn().map_err(PerfError::io(format!("spawn {}", program.display())))?;
        let stdout = child.stdout.take().ok_or_else(|| PerfError::Component(format!("{name}: no stdout pipe")))?;
        let (sender, receiver) = mpsc::channel();
        // Drains stdout for the daemon's whole life so it never blocks on a
        // full pipe; lines after `ready` are dropped.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    // Nobody listens any more; keep draining.
                }
            }
        });
        let mut daemon = Daemon {
            name: name.to_string(),
            child,
            listening: Vec::new(),
            other_lines: Vec::new(),
            ready_after: Duration::ZERO,
            stderr_path,
        };
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            match receiver.recv_timeout(left) {
                Ok(line) => match parse_line(&line) {
                    Line::Ready => break,
                    Line::Listening(proto, addr) => daemon.listening.push((proto, addr)),
                    Line::Other(text) => daemon.other_lines.push(text),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(PerfError::Timeout(format!(
                        "{name} printed no `ready` within {:.0} s{}",
                        timeout.as_secs_f64(),
                        daemon.last_stderr_line().map(|l| format!(" (stderr: {l})")).unwrap_or_default()
                    )));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = daemon.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    return Err(PerfError::Component(format!(
                        "{name} exited before `ready` ({status}){}",
                        daemon.last_stderr_line().map(|l| format!(": {l}")).unwrap_or_default()
                    )));
                }
            }
        }
        daemon.ready_after = started.elapsed();
        Ok(daemon)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first listening address of protocol `proto` (`tcp`, `udp`, `http`).
    pub fn address(&self, proto: &str) -> Result<SocketAddr> {
        self.listening
            .iter()
            .find(|(p, _)| p == proto)
            .map(|(_, addr)| *addr)
            .ok_or_else(|| PerfError::Protocol(format!("{} printed no `listening {proto} …` line", self.name)))
    }

    /// The first address in the lines printed before `ready` that start
    /// with `keyword` (case-insensitive), e.g. local-cluster's
    /// `shard 1 udp 127.0.0.1:PORT`.
    pub fn printed_address(&self, keyword: &str) -> Result<SocketAddr> {
        let keyword = keyword.to_lowercase();
        self.other_lines
            .iter()
            .filter(|line| line.to_lowercase().starts_with(&keyword))
            .find_map(|line| line.split_whitespace().find_map(|word| word.parse::<SocketAddr>().ok()))
            .ok_or_else(|| PerfError::Protocol(format!("{} printed no `{keyword} <ip:port>` line", self.name)))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn last_stderr_line(&self) -> Option<String> {
        let text = fs::read_to_string(&self.stderr_path).ok()?;
        text.lines().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim().chars().take(300).collect())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if !self.is_running() {
            return;
        }
        signal(self.child.id(), libc::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < grace {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Sends `signal` to `pid` (a process this run started or one of its
/// children).
pub fn signal(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// `(pid, parent pid, command name)` of every process, from /proc.
fn processes() -> Vec<(u32, u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // comm is in parentheses and may contain spaces: split at the last ')'.
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let comm = stat.get(open + 1..close)?.to_string();
            let ppid = stat.get(close + 2..)?.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid, comm))
        })
        .collect()
}

/// Every descendant of `root` (not `root` itself), with its command name.
pub fn descendants(root: u32) -> Vec<(u32, String)> {
    let all = processes();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid, comm) in &all {
            if *ppid == parent {
                found.push((*pid, comm.clone()));
                frontier.push(*pid);
            }
        }
    }
    found
}

/// CPU seconds (user + system) `pid` has used, from `/proc/PID/stat`;
/// `None` if it is gone or the line does not parse.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name's closing parenthesis: utime and
    // stime are the 12th and 13th of them (fields 14 and 15 of the line).
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (user + system) / ticks as f64)
}

/// CPU seconds (user + system) this process's threads have used.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is valid for the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Resident memory of `pid` in bytes (VmRSS), 0 if it is gone.
pub fn resident_bytes(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")
                    .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's CPU time reads from /proc and from getrusage, and
    /// grows with work; a pid that does not exist reads as none.
    #[test]
    fn cpu_seconds_of_a_live_process_grow_and_a_gone_one_has_none() {
        let me = std::process::id();
        let (before, own_before) = (cpu_seconds(me).expect("this process"), own_cpu_seconds());
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
        assert!(cpu_seconds(me).expect("this process") > before, "{x}");
        assert!(own_cpu_seconds() > own_before);
        assert_eq!(cpu_seconds(u32::MAX), None);
    }

    #[test]
    fn parses_the_conventional_lines() {
        assert!(matches!(parse_line("ready"), Line::Ready));
        match parse_line("listening udp 127.0.0.1:22273") {
            Line::Listening(proto, addr) => {
                assert_eq!(proto, "udp");
                assert_eq!(addr, "127.0.0.1:22273".parse().unwrap());
            }
            _ => panic!("not a listening line"),
        }
        assert!(matches!(parse_line("listening tcp nonsense"), Line::Other(_)));
        assert!(matches!(parse_line("shard 1 127.0.0.1:22273"), Line::Other(_)));
    }

    #[test]
    fn a_process_that_exits_early_is_reported_with_its_stderr() {
        let folder = tempfile::tempdir().unwrap();
        let error = Daemon::start(
            "stub",
            Path::new("/bin/sh"),
            &["-c".into(), "echo not implemented yet >&2; exit 2".into()],
            &[],
            folder.path(),
            Duration::from_secs(30),
        )
        .err()
        .unwrap();
        let text = error.to_string();
        assert!(text.contains("not implemented yet"), "{text}");
        assert!(text.contains("exit status: 2"), "{text}");
    }

    #[test]
    fn ready_and_listening_lines_are_read_and_the_child_is_stopped() {
        let folder = tempfile::tempdir().unwrap();
        let mut daemon = Daemon::start(
            "fake",
            Path::new("/bin/sh"),
            &["-c".into(), "echo listening udp 127.0.0.1:9; echo ready; exec sleep 600".into()],
            &[],
            folder.path(),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(daemon.address("udp").unwrap(), "127.0.0.1:9".parse().unwrap());
        assert!(daemon.address("tcp").is_err());
        assert!(resident_bytes(daemon.pid()) > 0);
        daemon.stop(Duration::from_secs(10));
        assert!(!daemon.is_running());
    }
}
