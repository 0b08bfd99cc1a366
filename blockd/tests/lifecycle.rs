//! The daemon's life: crash safety under kill -9, the folder lock, the
//! registration datagram, flags, graceful stop, metrics.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use wire::block::{WriteReq, WriteResp};
use wire::ids::BlockId;
use wire::shuckle::RegistrationDatagram;
use zerocopy::IntoBytes;

#[test]
fn kill_9_during_concurrent_writes_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &["--cores", "2"]);
    let key = daemon.key();
    let address = daemon.address;
    // Every block a writer sent (id → crc, size), and those acknowledged.
    let attempted: Arc<Mutex<HashMap<BlockId, (u32, u32)>>> = Arc::default();
    let acknowledged: Arc<Mutex<Vec<BlockId>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..6u8)
        .map(|writer| {
            let (key, attempted, acknowledged, stop) =
                (key.clone(), attempted.clone(), acknowledged.clone(), stop.clone());
            std::thread::spawn(move || {
                let Ok(mut stream) = std::net::TcpStream::connect(address) else { return };
                stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                let mut round = 0usize;
                while !stop.load(Ordering::Relaxed) && round < 500 {
                    round += 1;
                    let data = random_bytes(1 + (round * 97_003 + writer as usize * 31_337) % 1_500_000);
                    let id = fresh_block_id(writer);
                    let crc = wire::crc::crc32c(&data);
                    attempted.lock().unwrap().insert(id, (crc, data.len() as u32));
                    let request = WriteReq::new(&key, id, crc, data.len() as u32);
                    if stream.write_all(request.as_bytes()).and_then(|()| stream.write_all(&data)).is_err() {
                        return;
                    }
                    let mut response = [0u8; 17];
                    if stream.read_exact(&mut response).is_err() {
                        return;
                    }
                    assert_eq!(&response[1..9], id.as_bytes());
                    acknowledged.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    eventually("some acknowledged writes", || acknowledged.lock().unwrap().len() >= 30);
    daemon.kill();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }

    let daemon = Daemon::start(dir.path(), &[]);
    assert!(std::fs::read_dir(dir.path().join("tmp")).unwrap().next().is_none(), "temporary files left");
    let attempted = attempted.lock().unwrap();
    let acknowledged = acknowledged.lock().unwrap();
    let mut stream = daemon.connect();
    for id in acknowledged.iter() {
        let (crc, size) = attempted[id];
        assert_eq!(block_crc(&mut stream, *id), (size, crc), "acknowledged block {id} damaged");
    }
    // Whatever is visible is whole: every block file is one a writer sent,
    // with exactly its bytes (a write in flight may or may not be there).
    let files = stored_files(dir.path());
    assert!(files.len() >= acknowledged.len());
    for path in files {
        let name = path.file_name().unwrap().to_str().unwrap();
        let id = BlockId::new(u64::from_str_radix(name, 16).unwrap().swap_bytes());
        let (crc, size) = attempted.get(&id).copied().unwrap_or_else(|| panic!("unknown file {}", path.display()));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!((bytes.len() as u32, wire::crc::crc32c(&bytes)), (size, crc), "partial block {}", path.display());
    }
    let counted = stats(&mut stream, &key);
    assert!(counted.used_blocks >= acknowledged.len() as u64);
}

#[test]
fn a_second_daemon_on_the_same_folder_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut second = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_blockd"))
            .arg(dir.path())
            .args(["--storage-class", "2", "--cores", "1", "--shuckle", "127.0.0.1:9"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(wait_with_timeout(&mut second.0).code(), Some(2));
    let (mut stdout, mut stderr) = (String::new(), String::new());
    second.0.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    second.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stdout.is_empty(), "the second daemon must not announce itself: {stdout}");
    assert!(stderr.contains("another blockd"), "{stderr}");
    // The first one is untouched.
    let key = daemon.key();
    write_block(&mut daemon.connect(), &key, fresh_block_id(40), b"first still serves");
}

#[test]
fn blockless_storage_classes_are_refused() {
    for class in ["0", "1"] {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_blockd"))
            .arg(dir.path())
            .args(["--storage-class", class])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&output.stderr).contains("storage class"));
    }
}

#[test]
fn registration_reaches_shuckle_with_key_port_class_and_host() {
    let dir = tempfile::tempdir().unwrap();
    let shuckle = UdpSocket::bind("127.0.0.1:0").unwrap();
    shuckle.set_read_timeout(Some(TIMEOUT)).unwrap();
    let shuckle_address = shuckle.local_addr().unwrap().to_string();
    let daemon = Daemon::start(dir.path(), &["--storage-class", "7", "--shuckle", &shuckle_address, "--host", "rack9"]);
    let mut buf = [0u8; 1500];
    let (len, source) = shuckle.recv_from(&mut buf).unwrap();
    let registration = RegistrationDatagram::decode(&buf[..len]).unwrap();
    assert_eq!(registration.secret_key(), read_key(dir.path()));
    assert_eq!(registration.registration.port.get(), daemon.address.port());
    assert_eq!(registration.registration.storage_class, 7);
    assert_eq!(registration.host.unwrap().as_str(), "rack9");
    assert_eq!(source.ip(), daemon.address.ip());
}

#[test]
fn sigterm_finishes_the_write_in_flight_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start(dir.path(), &["--cores", "2"]);
    let key = daemon.key();
    let idle = daemon.connect();
    let mut stream = daemon.connect();
    // Make sure the connection is being served before the signal.
    write_block(&mut stream, &key, fresh_block_id(50), b"warm up");
    let id = fresh_block_id(51);
    let data = random_bytes(2_000_000);
    stream.write_all(WriteReq::new(&key, id, wire::crc::crc32c(&data), data.len() as u32).as_bytes()).unwrap();
    stream.write_all(&data[..1_000_000]).unwrap();
    // Wait for the daemon to be inside the write (its temporary file).
    eventually("the write to start", || std::fs::read_dir(dir.path().join("tmp")).unwrap().next().is_some());
    daemon.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    stream.write_all(&data[1_000_000..]).unwrap();
    let response: WriteResp = read_struct(&mut stream);
    assert_eq!(response.block_id, id);
    assert!(response.proof_valid(&key));
    let status = daemon.wait();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(std::fs::read(block_path(dir.path(), id)).unwrap(), data);
    drop(idle);
}

#[test]
fn metrics_count_requests_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--metrics", "127.0.0.1:0"]);
    let key = daemon.key();
    let mut stream = daemon.connect();
    write_block(&mut stream, &key, fresh_block_id(60), &[1u8; 1000]);
    let text = http_get(daemon.metrics.expect("metrics address"), "/metrics");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("blockd_requests_total{kind=\"write\"} 1\n"), "{text}");
    assert!(text.contains("blockd_written_bytes_total 1000\n"), "{text}");
    assert!(text.contains("blockd_used_blocks 1\n"), "{text}");
    assert!(http_get(daemon.metrics.unwrap(), "/nope").starts_with("HTTP/1.1 404"));
}

fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn two_daemons_started_together_on_an_empty_folder_leave_exactly_one() {
    let dir = tempfile::tempdir().unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_blockd"))
            .arg(dir.path())
            .args(["--storage-class", "2", "--cores", "1", "--shuckle", "127.0.0.1:9"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut children = [spawn(), spawn()];
    // The loser exits 2 at once; the winner runs until told to stop.
    let mut exited = Vec::new();
    eventually("one daemon to give up", || {
        exited = children.iter_mut().filter_map(|c| c.try_wait().unwrap()).collect();
        !exited.is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    let exited: Vec<_> = children.iter_mut().filter_map(|c| c.try_wait().unwrap()).collect();
    assert_eq!(exited.len(), 1, "exactly one daemon must keep the folder");
    assert_eq!(exited[0].code(), Some(2));
    assert_eq!(std::fs::read(dir.path().join("secret.key")).unwrap().len(), 16);
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_port_in_use_is_refused_even_by_another_blockd() {
    let first_dir = tempfile::tempdir().unwrap();
    let first = Daemon::start(first_dir.path(), &[]);
    let second_dir = tempfile::tempdir().unwrap();
    let mut second = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_blockd"))
            .arg(second_dir.path())
            .args(["--storage-class", "2", "--cores", "1", "--shuckle", "127.0.0.1:9"])
            .args(["--listen", &first.address.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Must exit by itself (a daemon sharing the port would run forever).
    assert_eq!(wait_with_timeout(&mut second.0).code(), Some(2));
    let mut stderr = String::new();
    second.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(stderr.contains("--listen"), "{stderr}");
    // Every connection still reaches the first daemon.
    let key = first.key();
    for shard in 0..8 {
        write_block(&mut first.connect(), &key, fresh_block_id(90 + shard), b"mine");
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
