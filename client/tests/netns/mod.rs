//! Test support: simulated hosts as Linux network namespaces on one veth
//! bridge, and the real daemons started in them with `ip netns exec`.
//!
//! Every name carries a per-run id, so runs in parallel do not collide; a
//! [`Lab`] removes its namespaces and bridge when dropped, also when the test
//! panics (its daemons are killed first). Needs root and `ip` (iproute2);
//! [`Lab::create`] says why it cannot and returns `None` (the caller
//! skips), except under `CI=true`, where that is a failure.

#![allow(dead_code)] // reason: each test binary uses a different part of the support

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The hosts' subnet (private to the lab's bridge, so runs may share it).
const SUBNET: &str = "10.99.0";

/// Runs `ip ARGS`, panicking with its stderr on failure.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(output.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
}

/// Why namespaces cannot be made here, or `None` if they can.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(output) if output.status.success() => None,
        _ => Some("no `ip` command (iproute2)".into()),
    }
}

/// One simulated host: a network namespace with one interface, `eth0`.
pub struct Host {
    pub name: String,
    pub namespace: String,
    pub ip: String,
}

/// Hosts on one bridge, removed on drop.
pub struct Lab {
    pub hosts: Vec<Host>,
    bridge: String,
}

impl Lab {
    /// One namespace per name in `hosts`, addressed 10.99.0.1, .2, … in
    /// order, all on one new bridge. `None` (after one line on stderr) when
    /// namespaces cannot be made here and `CI` is not `true`.
    pub fn create(test: &str, hosts: &[&str]) -> Option<Lab> {
        if let Some(why) = unavailable() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: cannot create network namespaces ({why}); CI must run this test as root with iproute2"
            );
            eprintln!("{test}: skipped: cannot create network namespaces ({why})");
            return None;
        }
        static RUNS: AtomicU32 = AtomicU32::new(0);
        // Interface names are at most 15 bytes: "eb" + 8 hex + host index.
        let id = format!("{:05x}{:03x}", std::process::id() & 0xfffff, RUNS.fetch_add(1, Ordering::Relaxed) & 0xfff);
        let bridge = format!("eb{id}");
        let mut lab = Lab { hosts: Vec::new(), bridge: bridge.clone() };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["link", "set", &bridge, "up"]);
        for (index, name) in hosts.iter().enumerate() {
            let namespace = format!("eggs-{id}-{name}");
            ip(&["netns", "add", &namespace]);
            let ip_address = format!("{SUBNET}.{}", index + 1);
            lab.hosts.push(Host { name: (*name).to_owned(), namespace: namespace.clone(), ip: ip_address.clone() });
            let (outside, inside) = (format!("ev{id}{index:x}"), format!("ei{id}{index:x}"));
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside]);
            ip(&["link", "set", &inside, "netns", &namespace]);
            ip(&["link", "set", &outside, "master", &bridge, "up"]);
            ip(&["-n", &namespace, "link", "set", &inside, "name", "eth0"]);
            ip(&["-n", &namespace, "addr", "add", &format!("{ip_address}/24"), "dev", "eth0"]);
            ip(&["-n", &namespace, "link", "set", "eth0", "up"]);
            ip(&["-n", &namespace, "link", "set", "lo", "up"]);
        }
        Some(lab)
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|host| host.name == name).unwrap_or_else(|| panic!("no host {name}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it
        // the other end. Callers kill their daemons first (a struct holding
        // both declares the daemons before the lab: fields drop in order).
        for host in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &host.namespace]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

/// A daemon running in a host's namespace, killed (SIGKILL) on drop.
pub use testsupport::Daemon;

impl Host {
    /// A command running `program` in this host's namespace (`ip netns
    /// exec` execs the program, so the child's pid is the program's).
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace]).arg(program);
        command
    }

    /// Starts `program args` here and waits for its `ready` line.
    pub fn start(&self, name: &str, program: &Path, args: &[&str]) -> Daemon {
        let mut command = self.command(program);
        command.args(args);
        Daemon::spawn(&format!("{name} on {}", self.name), command)
    }

    /// Runs `program args` here to completion.
    pub fn run(&self, program: &Path, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut child = self
            .command(program)
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run in namespace");
        if let Some(bytes) = input {
            let mut stdin = child.stdin.take().expect("stdin");
            let bytes = bytes.to_vec();
            // A writer thread, so a child that fills its stdout first cannot deadlock us.
            std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &bytes));
        }
        child.wait_with_output().expect("wait")
    }

    /// Runs `nft -f -` with `rules` (or `nft list …` for a `list`
    /// command) in this namespace; an error if there is no `nft`.
    pub fn nft(&self, rules: &str) -> std::io::Result<Output> {
        which("nft")?;
        let args: Vec<&str> =
            if rules.starts_with("list ") { rules.split_whitespace().collect() } else { vec!["-f", "-"] };
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.namespace, "nft"])
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // `nft list` does not read its input and may be gone already.
        let _ = std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), rules.as_bytes());
        child.wait_with_output()
    }
}

/// An error unless `program` is on the PATH.
fn which(program: &str) -> std::io::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| dir.join(program).is_file()) {
        Ok(())
    } else {
        Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{program} is not installed")))
    }
}
