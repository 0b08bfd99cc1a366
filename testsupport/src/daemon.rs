//! One real daemon process, started and waited for until it says `ready`.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a daemon has to print `ready` on a small, loaded machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running daemon, SIGKILLed on drop.
pub struct Daemon {
    pub name: String,
    pub child: Child,
    /// `(PROTO, ADDR)` of each `listening PROTO ADDR` line before `ready`.
    pub listening: Vec<(String, String)>,
    /// Every other line it printed before `ready`, in order.
    pub other_lines: Vec<String>,
}

impl Daemon {
    /// Starts `program args…` (logging at `warn` unless `RUST_LOG` says
    /// otherwise) and waits for `ready`; see [`Daemon::spawn`].
    pub fn start<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> Daemon {
        let mut command = Command::new(program);
        command.args(args);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        let name = program.file_name().map_or_else(|| program.display().to_string(), |n| n.to_string_lossy().into());
        Self::spawn(&name, command)
    }

    /// Spawns `command` (stdout piped and read here, stderr inherited, stdin
    /// closed) and waits up to [`READY_TIMEOUT`] for its `ready` line. Its
    /// stdout is drained afterwards, so it never blocks on a full pipe.
    /// Panics, naming it, when it exits or stays silent instead.
    pub fn spawn(name: &str, mut command: Command) -> Daemon {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // After `ready` nobody listens: keep draining anyway.
                let _ = sender.send(line);
            }
        });
        let mut daemon = Daemon { name: name.to_owned(), child, listening: Vec::new(), other_lines: Vec::new() };
        loop {
            let line = match receiver.recv_timeout(READY_TIMEOUT) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("{name} printed no `ready` in {READY_TIMEOUT:?}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = daemon.child.wait().ok();
                    panic!("{name} exited before `ready` ({status:?})")
                }
            };
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["ready"] => return daemon,
                ["listening", proto, address] => daemon.listening.push(((*proto).into(), (*address).into())),
                _ => daemon.other_lines.push(line),
            }
        }
    }

    /// The address of its `listening PROTO` line, if it printed one.
    pub fn try_address(&self, proto: &str) -> Option<&str> {
        self.listening.iter().find(|(p, _)| p == proto).map(|(_, address)| address.as_str())
    }

    /// The address of its `listening PROTO` line, as printed (it may be a
    /// hostname).
    pub fn address_text(&self, proto: &str) -> String {
        self.try_address(proto)
            .unwrap_or_else(|| panic!("{} printed no `listening {proto}` line", self.name))
            .to_owned()
    }

    /// The same, as a socket address.
    pub fn address(&self, proto: &str) -> SocketAddr {
        let address = self.address_text(proto);
        address.parse().unwrap_or_else(|error| panic!("{}: `listening {proto} {address}`: {error}", self.name))
    }

    /// Its `listening udp` address.
    pub fn udp(&self) -> SocketAddr {
        self.address("udp")
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
