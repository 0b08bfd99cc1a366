//! The plumbing every daemon shares (`daemon` crate), checked on the real
//! binaries: relative folders, one daemon per folder, exit codes.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::binary;

/// How long a daemon may take to print `ready` on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a refused daemon may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags that start `name` on `folder` with run-time ports and no peers
/// (shuckle at the discard port: nobody answers, nobody needs to).
fn flags(name: &str, folder: &str) -> Vec<String> {
    let words: Vec<&str> = match name {
        "shuckle" => vec!["--data-dir", folder, "--http", "127.0.0.1:0", "--udp", "127.0.0.1:0"],
        "metad" => vec!["0", folder, "--listen", "127.0.0.1:0", "--shuckle", "127.0.0.1:9", "--executors", "1"],
        "cdcd" => vec![
            folder,
            "--listen",
            "127.0.0.1:0",
            "--shuckle",
            "127.0.0.1:9",
            "--shards",
            "0,1",
            "--shard-addr",
            "0=127.0.0.1:9",
            "--shard-addr",
            "1=127.0.0.1:9",
        ],
        "blockd" => vec![folder, "--storage-class", "2", "--cores", "1", "--shuckle", "127.0.0.1:9"],
        other => panic!("no flags for {other}"),
    };
    words.into_iter().map(str::to_owned).collect()
}

const DAEMONS: [&str; 4] = ["shuckle", "metad", "cdcd", "blockd"];

struct Running {
    name: &'static str,
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &str, args: &[String], cwd: &Path) -> Child {
    Command::new(binary(name))
        .args(args)
        .current_dir(cwd)
        // Only the failure line on stderr: it is what these tests read.
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"))
}

/// Starts `name` and waits for `ready`.
fn start(name: &'static str, args: &[String], cwd: &Path) -> Running {
    let mut child = spawn(name, args, cwd);
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.by_ref().map_while(Result::ok).any(|line| line == "ready");
        let _ = sender.send(ready);
        for _ in lines {}
    });
    let ready = receiver.recv_timeout(READY_TIMEOUT).unwrap_or(false);
    if !ready {
        let _ = child.kill();
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        panic!("{name} {args:?} did not become ready: {text}");
    }
    // Keep draining stderr so the daemon never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    Running { name, child }
}

/// Waits for a daemon expected to exit; returns its status and stderr.
fn exited(mut child: Child) -> (ExitStatus, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
            return (status, stderr);
        }
        if started.elapsed() > EXIT_TIMEOUT {
            let _ = child.kill();
            panic!("still running after {} s", EXIT_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// Regression: `blockd --storage-class 2 disk1` and the README's
// `--data-dir ./eggsfs-data` failed (glommio cannot open relative
// directory paths on this kernel).
#[test]
fn every_daemon_starts_on_a_relative_folder() {
    let work = tempfile::tempdir().expect("tempdir");
    for name in DAEMONS {
        let folder = format!("./{name}-data");
        let running = start(name, &flags(name, &folder), work.path());
        assert!(work.path().join(format!("{name}-data")).is_dir(), "{name} made its folder under the working folder");
        drop(running);
    }
}

// Regression: a second metad or shuckle on the same folder started silently
// (metad on the same port through SO_REUSEPORT and the same LMDB).
#[test]
fn a_second_daemon_on_the_same_folder_exits_2_naming_the_holder() {
    let work = tempfile::tempdir().expect("tempdir");
    for name in DAEMONS {
        let folder = work.path().join(format!("{name}-data")).display().to_string();
        let first = start(name, &flags(name, &folder), work.path());
        let (status, stderr) = exited(spawn(name, &flags(name, &folder), work.path()));
        assert_eq!(status.code(), Some(2), "{name}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: one line: {stderr:?}");
        assert!(stderr.starts_with(&format!("{name}: ")), "{stderr}");
        assert!(stderr.contains(&folder), "{name} names the folder: {stderr}");
        let holder = format!("another {} (pid {})", first.name, first.child.id());
        assert!(stderr.contains(&holder), "{name} names the holder, {holder}: {stderr}");
    }
}

// Regression: a bind failure exited 2 in blockd and shuckle but 1 in metad
// and cdcd.
#[test]
fn an_address_that_cannot_be_bound_exits_2() {
    let work = tempfile::tempdir().expect("tempdir");
    // 192.0.2.1 (TEST-NET-1) is not an address of this machine.
    let foreign = "192.0.2.1:7000";
    for name in DAEMONS {
        let folder = work.path().join(format!("{name}-data")).display().to_string();
        let mut args = flags(name, &folder);
        let listen = if name == "shuckle" { "--udp" } else { "--listen" };
        let at = args.iter().position(|arg| arg == listen).map_or(args.len(), |at| at + 1);
        if at < args.len() {
            args[at] = foreign.into();
        } else {
            args.extend([listen.to_owned(), foreign.to_owned()]);
        }
        let (status, stderr) = exited(spawn(name, &args, work.path()));
        assert_eq!(status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(foreign), "{name} names the address: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: one line: {stderr:?}");
    }
}
