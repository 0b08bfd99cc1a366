//! Issue 17's findings on blockd: slow connections (slowloris), file modes,
//! and memory after garbage.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use socket2::{Domain, Socket, Type};
use wire::block::WriteReq;
use zerocopy::IntoBytes;

/// What a normal client must still get while the slow ones hold on.
const NORMAL_CLIENT_BOUND: Duration = Duration::from_secs(2);

/// A connection from `source` (any 127/8 address works on Linux loopback).
fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// A normal client's write then fetch on a new connection, each step bounded.
fn normal_client_round(daemon: &Daemon, round: usize) -> Duration {
    let key = daemon.key();
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&daemon.address, NORMAL_CLIENT_BOUND).expect("normal connect");
    stream.set_read_timeout(Some(NORMAL_CLIENT_BOUND)).unwrap();
    stream.set_write_timeout(Some(NORMAL_CLIENT_BOUND)).unwrap();
    let id = fresh_block_id(90);
    let data = random_bytes(64 << 10);
    write_block(&mut stream, &key, id, &data);
    assert_eq!(fetch_block(&mut stream, id), data, "round {round}: fetched bytes differ");
    started.elapsed()
}

#[test]
fn slowloris_connections_do_not_lock_out_a_normal_client() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--cores", "1"]);
    let key = daemon.key();
    let partial = WriteReq::new(&key, fresh_block_id(91), 0, 1).as_bytes()[..9].to_vec();
    // 3 000 connections from 12 addresses (250 each: over the per-source
    // bound, and together over the per-executor limit), each sending 9 bytes
    // of a 25-byte header and then nothing; in three waves, with a normal
    // client from 127.0.0.1 after each.
    let mut slow = Vec::new();
    for wave in 0..3 {
        for index in 0..1000usize {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + ((wave * 1000 + index) % 12) as u8));
            match connect_from(source, daemon.address) {
                Ok(mut stream) => {
                    let _ = stream.write_all(&partial);
                    slow.push(stream);
                }
                // The listen backlog may be full for a moment: not our client.
                Err(error) => eprintln!("slow connection {index}: {error}"),
            }
        }
        // Each step (connect, write, fetch) fails past NORMAL_CLIENT_BOUND.
        let took = normal_client_round(&daemon, wave);
        eprintln!("wave {wave}: {} slow connections held, normal write + fetch took {took:?}", slow.len());
    }
    assert!(slow.len() >= 2500, "only {} slow connections could be made", slow.len());
    // The slow ones were shed or timed out: none gets an answer, all end.
    let started = Instant::now();
    let mut closed = 0;
    for stream in slow.iter_mut().step_by(50) {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut byte = [0u8; 1];
        if matches!(stream.read(&mut byte), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, slow.len().div_ceil(50), "every sampled slow connection ends");
    assert!(started.elapsed() < Duration::from_secs(30));
    // And the daemon still serves.
    normal_client_round(&daemon, 3);
}

#[test]
fn a_header_that_trickles_in_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let key = daemon.key();
    let header = WriteReq::new(&key, fresh_block_id(92), 0, 1).as_bytes().to_vec();
    let mut stream = daemon.connect();
    let started = Instant::now();
    // One byte a second: each read is quick, the header as a whole is not.
    let mut cut_off = false;
    for byte in &header {
        if stream.write_all(std::slice::from_ref(byte)).is_err() {
            cut_off = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1000));
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    if !cut_off {
        assert_closed(&mut stream);
    }
    assert!(started.elapsed() < Duration::from_secs(15), "header timeout did not apply");
}

#[test]
fn block_files_and_folders_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let key = daemon.key();
    let id = fresh_block_id(93);
    let mut stream = daemon.connect();
    write_block(&mut stream, &key, id, b"private bytes");
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let block = block_path(dir.path(), id);
    assert_eq!(mode(&block), 0o600, "block file {}", block.display());
    assert_eq!(mode(block.parent().unwrap()), 0o700);
    assert_eq!(mode(&dir.path().join("tmp")), 0o700);
    assert_eq!(mode(dir.path()), 0o700);
}

#[test]
fn files_of_an_older_version_are_made_private_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let id = fresh_block_id(94);
    {
        let daemon = Daemon::start(dir.path(), &[]);
        let key = daemon.key();
        write_block(&mut daemon.connect(), &key, id, b"older bytes");
    }
    let block = block_path(dir.path(), id);
    std::fs::set_permissions(&block, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(block.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    assert_eq!(std::fs::metadata(&block).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(block.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(fetch_block(&mut daemon.connect(), id), b"older bytes");
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap()
}

/// Issue 17 G4: RSS grew from 8 to 32 MB after garbage requests and
/// stayed. Measured: it follows the most connections open at once (each
/// holds a receive buffer and a task), and glibc kept the freed memory: a
/// high-water mark, not a leak (a second burst did not add to it). blockd
/// now gives the memory back once a burst has closed.
#[test]
fn memory_of_a_burst_of_garbage_connections_is_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--cores", "1"]);
    let start = resident_kib(daemon.process.child.id());
    let mut peaks = Vec::new();
    for round in 0..3 {
        let mut held = Vec::new();
        for index in 0..1000usize {
            // Ten sources of 100: under the per-source bound, so all stay open.
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 20 + (index % 10) as u8));
            if let Ok(mut stream) = connect_from(source, daemon.address) {
                let _ = stream.write_all(b"w\x01\x02\x03\x04\x05\x06\x07\x08");
                held.push(stream);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        peaks.push(resident_kib(daemon.process.child.id()));
        drop(held);
        eventually(&format!("round {round}: memory given back (started at {start} KiB)"), || {
            resident_kib(daemon.process.child.id()) <= start + 6 * 1024
        });
    }
    eprintln!(
        "RSS at start {start} KiB, with 1000 connections {peaks:?} KiB, after each burst back under start + 6 MiB"
    );
    normal_client_round(&daemon, 0);
}

/// What a write got back.
#[derive(Debug, PartialEq)]
enum Written {
    Proof,
    /// The block protocol's error answer (the connection stays usable).
    Error(wire::ErrorKind),
    /// The connection closed without an answer.
    Closed,
}

/// A write on `stream`.
fn try_write(stream: &mut TcpStream, key: &wire::mac::MacKey, id: wire::BlockId, data: &[u8]) -> Written {
    let request = WriteReq::new(key, id, wire::crc::crc32c(data), data.len() as u32);
    if stream.write_all(request.as_bytes()).and_then(|()| stream.write_all(data)).is_err() {
        return Written::Closed;
    }
    let mut answer = vec![0u8; std::mem::size_of::<wire::block::WriteResp>()];
    if stream.read_exact(&mut answer).is_err() {
        return Written::Closed;
    }
    if let Some((answered, kind)) = wire::block::BlockErrorResp::decode(&answer) {
        assert_eq!(answered, id, "an error answer names its block");
        return Written::Error(kind);
    }
    let response = <wire::block::WriteResp as zerocopy::FromBytes>::read_from_bytes(&answer).unwrap();
    assert!(response.block_id == id && response.proof_valid(key), "a write proof must be valid");
    Written::Proof
}

/// Issue 17's disk-full probe on blocks: with its folder full, blockd
/// refuses writes (never a proof for bytes it could not store) with the
/// error answer `NO_SPACE` on a connection that stays usable, keeps
/// serving the blocks it has, reports itself full (no free bytes) in its
/// stats, and takes writes again once space is freed. Needs root (tmpfs):
/// skipped with a message elsewhere, never under CI.
#[test]
fn a_full_disk_refuses_writes_keeps_serving_and_recovers() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("blocks");
    if !testsupport::mount_tmpfs(&dir, 8 << 20) {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must run the disk-full test (needs root)");
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.clone());
    // No reserve: full only when the disk says so.
    let daemon = Daemon::start(&dir, &["--reserve-bytes", "0"]);
    let key = daemon.key();
    let mut written = Vec::new();
    let mut refused = 0;
    let mut stream = daemon.connect();
    for round in 0..64 {
        let id = fresh_block_id(91);
        let data = random_bytes(1 << 20);
        match try_write(&mut stream, &key, id, &data) {
            Written::Proof => written.push((id, data)),
            Written::Error(kind) => {
                assert_eq!(kind, wire::ErrorKind::NoSpace, "a full disk answers NO_SPACE");
                refused += 1;
                if refused >= 3 {
                    break;
                }
            }
            Written::Closed => panic!("round {round}: the service closed the connection instead of answering"),
        }
        assert!(round < 63, "an 8 MiB disk took 64 MiB of blocks");
    }
    assert!(!written.is_empty(), "some blocks fit before the disk filled");
    // Still serving on the same connection, with the right bytes, and
    // saying the disk is full.
    for (id, data) in &written {
        assert!(fetch_block(&mut stream, *id) == *data, "a stored block reads back identical on a full disk");
    }
    let full = stats(&mut stream, &key);
    assert_eq!(full.free_bytes, 0, "stats say the service is full");
    // Space back: erase two blocks, and a write succeeds again.
    for (id, _) in written.drain(..2) {
        erase_block(&mut stream, &key, id);
    }
    let id = fresh_block_id(91);
    assert_eq!(try_write(&mut stream, &key, id, &random_bytes(1 << 20)), Written::Proof, "writes resume");
    assert!(stats(&mut stream, &key).free_bytes > 0, "no longer full once a block fits again");
}
