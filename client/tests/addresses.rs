//! Address flags of the real daemons (issue 14): a wildcard listen address
//! without `--advertise` is refused at start (exit 2, one line); the
//! advertised address is what shuckle lists; `--shuckle` takes a host name;
//! an unresolvable name is one clear line. (`eggs --shuckle localhost:PORT`
//! and `EGGS_SHUCKLE` are tested in `commands.rs`; the advertised addresses
//! of shards and block services across hosts in `multihost.rs`.)

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, binary};

/// Runs `program args` to completion with only warnings logged.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(binary(program))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("run {program}: {error}"))
}

/// Asserts `output` is a usage failure: exit 2 and exactly one stderr line,
/// `PROCESS: …`, containing every one of `words`.
fn assert_usage_line(process: &str, output: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{process}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{process}: one line: {stderr:?}");
    assert!(lines[0].starts_with(&format!("{process}: ")), "{process}: {stderr:?}");
    for word in words {
        assert!(lines[0].contains(word), "{process}: {word:?} missing from {stderr:?}");
    }
}

#[test]
fn a_wildcard_listen_address_without_advertise_exits_2_with_one_line() {
    let temp = tempfile::tempdir().expect("tempdir");
    let folder = |name: &str| temp.path().join(name).display().to_string();
    for wildcard in ["0.0.0.0:0", "[::]:0"] {
        let blockd = run("blockd", &[&folder("blocks"), "--storage-class", "2", "--listen", wildcard]);
        assert_usage_line("blockd", &blockd, &["--listen", "--advertise"]);
        let metad = run("metad", &["0", &folder("meta"), "--listen", wildcard]);
        assert_usage_line("metad", &metad, &["--listen", "--advertise"]);
        let cdcd = run("cdcd", &[&folder("cdc"), "--listen", wildcard]);
        assert_usage_line("cdcd", &cdcd, &["--listen", "--advertise"]);
    }
    // Nor may the advertised address itself be a wildcard.
    let blockd =
        run("blockd", &[&folder("blocks"), "--storage-class", "2", "--listen", "0.0.0.0:0", "--advertise", "0.0.0.0"]);
    assert_usage_line("blockd", &blockd, &["--advertise"]);
    // Nothing was started: the refusal comes before any folder is made.
    assert!(!temp.path().join("blocks").exists() && !temp.path().join("cdc").exists());
}

#[test]
fn a_shuckle_name_that_does_not_resolve_is_one_line() {
    let temp = tempfile::tempdir().expect("tempdir");
    let folder = |name: &str| temp.path().join(name).display().to_string();
    let shuckle = "no-such-host.invalid:5000";
    let blockd = run("blockd", &[&folder("blocks"), "--storage-class", "2", "--shuckle", shuckle]);
    assert_usage_line("blockd", &blockd, &["--shuckle", shuckle, "does not resolve"]);
    let metad = run("metad", &["0", &folder("meta"), "--listen", "127.0.0.1:0", "--shuckle", shuckle]);
    assert_usage_line("metad", &metad, &["--shuckle", shuckle, "does not resolve"]);
    let cdcd = run("cdcd", &[&folder("cdc"), "--listen", "127.0.0.1:0", "--shuckle", shuckle]);
    assert_usage_line("cdcd", &cdcd, &["--shuckle", shuckle, "does not resolve"]);
    let gcd = run("gcd", &["--shuckle", shuckle]);
    assert_usage_line("gcd", &gcd, &["--shuckle", shuckle, "does not resolve"]);
}

/// Starts `blockd args` (SIGKILLed on drop) and returns it with the TCP
/// port it printed.
fn start_blockd(args: &[&str]) -> (testsupport::Daemon, u16) {
    let blockd = testsupport::Daemon::start(&binary("blockd"), args);
    let port = blockd.address("tcp").port();
    (blockd, port)
}

#[test]
fn shuckle_lists_the_advertised_address_of_a_daemon_that_found_it_by_name() {
    let cluster = Cluster::start(1);
    let shuckle_port = cluster.shuckle.rsplit(':').next().expect("port");
    let temp = tempfile::tempdir().expect("tempdir");
    let folder = temp.path().join("extra").display().to_string();
    // Every interface; advertised as 127.0.0.2 (a loopback address that is
    // not the one the rest of the cluster uses, so only --advertise can
    // have put it in shuckle's list).
    let (_blockd, port) = start_blockd(&[
        &folder,
        "--storage-class",
        "2",
        "--listen",
        "0.0.0.0:0",
        "--advertise",
        "127.0.0.2",
        "--shuckle",
        &format!("localhost:{shuckle_port}"),
        "--cores",
        "1",
    ]);
    let advertised = format!("127.0.0.2:{port}");
    let started = Instant::now();
    loop {
        let listed = cluster.lines(&["block-services"]);
        assert!(!listed.iter().any(|line| line.contains("0.0.0.0")), "a wildcard was registered: {listed:?}");
        if listed.iter().any(|line| line.contains(&format!(" {advertised} "))) {
            break;
        }
        // Registration is a datagram sent at start and then periodically.
        assert!(started.elapsed() < Duration::from_secs(60), "{advertised} never listed: {listed:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 17 G5: metad's and cdcd's outgoing datagrams (their registrations
/// with shuckle first of all) leave from the advertised address, not from
/// whatever the kernel picks for a socket bound to 0.0.0.0. A fake shuckle
/// per daemon, on 127.0.0.1, sees where each datagram came from: on
/// loopback the kernel would otherwise pick 127.0.0.1.
#[test]
fn metad_and_cdcd_send_from_their_advertised_address() {
    let temp = tempfile::tempdir().expect("tempdir");
    let folder = temp.path().to_str().expect("utf-8");
    let fake_shuckle = || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let address = socket.local_addr().expect("address").to_string();
        (socket, address)
    };
    let (metad_shuckle, metad_shuckle_address) = fake_shuckle();
    let (cdcd_shuckle, cdcd_shuckle_address) = fake_shuckle();
    let advertised = ["--listen", "0.0.0.0:0", "--advertise", "127.0.0.2"];
    let mut metad_args = vec!["0", folder];
    metad_args.extend(advertised);
    metad_args.extend(["--shuckle", &metad_shuckle_address]);
    let _metad = testsupport::Daemon::start(&binary("metad"), &metad_args);
    let mut cdcd_args = vec![folder];
    cdcd_args.extend(advertised);
    cdcd_args.extend(["--shuckle", &cdcd_shuckle_address, "--shards", "0", "--shard-addr", "0=127.0.0.1:9"]);
    let _cdcd = testsupport::Daemon::start(&binary("cdcd"), &cdcd_args);
    for (daemon, socket) in [("metad", &metad_shuckle), ("cdcd", &cdcd_shuckle)] {
        let mut datagram = [0u8; 2048];
        let (_, from) =
            socket.recv_from(&mut datagram).unwrap_or_else(|error| panic!("{daemon} sent nothing: {error}"));
        assert_eq!(
            from.ip().to_string(),
            "127.0.0.2",
            "{daemon}'s datagram came from {from}, not its advertised address"
        );
    }
}
