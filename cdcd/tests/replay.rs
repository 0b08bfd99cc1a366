//! Replay of captured privileged datagrams (issue 17 B): an on-path
//! attacker records the CDC's steps of `mv /B/c /A/c`, waits until the
//! directory is moved back, and replays them to the shards — from the
//! captured source port and from another one. Before replay protection the
//! shards executed them again and `/A/c` and `/B/c` became the same
//! directory. Now every replay is answered from the shard's record (or
//! dropped), and the tree is intact.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, ShardCalls, mkdir, mv_dir};
use wire::cdc::CdcStatus;
use wire::datagram::{self, SHARD_MAGIC};
use wire::limits::{NS_PER_SECOND, PRIVILEGED_DATAGRAM_WINDOW_NS, UDP_DATAGRAM_BYTES_MAX};
use wire::shard::{SetParentReq, ShardKind, ShardRequest};
use wire::{EggsTime, InodeId, MacKey};

/// What a capturing proxy saw the CDC send to one shard.
#[derive(Clone, Default)]
struct Capture {
    datagrams: Arc<Mutex<Vec<Vec<u8>>>>,
    recording: Arc<AtomicBool>,
}

/// A transparent UDP proxy in front of `server` that records what the CDC
/// sends while `capture.recording` is set. Returns the proxy's address and
/// the socket it forwards from (the source the shard sees).
fn capturing_proxy(server: SocketAddr, capture: Capture) -> (SocketAddr, Arc<UdpSocket>) {
    let front = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind"));
    let address = front.local_addr().expect("address");
    front.set_read_timeout(Some(Duration::from_millis(2))).expect("timeout");
    back.set_read_timeout(Some(Duration::from_millis(2))).expect("timeout");
    let forward = back.clone();
    std::thread::spawn(move || {
        let mut client: Option<SocketAddr> = None;
        let mut buf = vec![0u8; 65536];
        loop {
            while let Ok((len, from)) = front.recv_from(&mut buf) {
                client = Some(from);
                if capture.recording.load(Ordering::SeqCst) {
                    capture.datagrams.lock().unwrap().push(buf[..len].to_vec());
                }
                let _ = forward.send_to(&buf[..len], server);
            }
            while let Ok((len, _)) = forward.recv_from(&mut buf) {
                if let Some(client) = client {
                    let _ = front.send_to(&buf[..len], client);
                }
            }
        }
    });
    (address, back)
}

fn kind_of(bytes: &[u8]) -> Option<ShardKind> {
    datagram::peek_header(bytes, SHARD_MAGIC).ok().and_then(|header| ShardKind::from_u8(header.kind))
}

/// Sends `bytes` to `shard` from `socket` and returns the answer, if any
/// comes within `wait`.
fn send_and_wait(socket: &UdpSocket, shard: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    socket.set_read_timeout(Some(wait)).expect("timeout");
    socket.send_to(bytes, shard).expect("send");
    let mut buf = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    loop {
        let (len, from) = socket.recv_from(&mut buf).ok()?;
        if from == shard {
            return Some(buf[..len].to_vec());
        }
    }
}

/// The header and body of a privileged datagram (without time and MAC).
fn body_of(bytes: &[u8]) -> Vec<u8> {
    bytes[..bytes.len() - datagram::PRIVILEGED_TRAILER_BYTES].to_vec()
}

/// `bytes` sent again now: the same request with a fresh time and MAC.
fn restamp(bytes: &[u8], key: &MacKey) -> Vec<u8> {
    let mut fresh = body_of(bytes);
    fresh.extend_from_slice(&EggsTime::now().get().to_le_bytes());
    let mac = key.mac_message(&fresh);
    fresh.extend_from_slice(&mac);
    fresh
}

#[test]
fn replayed_mv_steps_are_refused_and_leave_the_tree_intact() {
    let captures = [Capture::default(), Capture::default()];
    let proxies = Arc::new(Mutex::new(Vec::new()));
    let cluster = {
        let captures = captures.clone();
        let proxies = proxies.clone();
        Cluster::start(move |shards| {
            let mut routed = Vec::new();
            for (shard, address) in shards.iter().enumerate() {
                let (front, back) = capturing_proxy(*address, captures[shard].clone());
                proxies.lock().unwrap().push(back);
                routed.push(front);
            }
            routed
        })
    };
    let cdc = cluster.cdc_client();
    let shards = cluster.shard_client();
    let root = InodeId::ROOT;
    let shard_addresses: Vec<SocketAddr> = cluster.shards.iter().map(|shard| shard.udp()).collect();

    // /A and /B on different shards, so the move is a cross-shard one.
    let (status, a) = cdc.run(&mkdir(root, "A"));
    assert_eq!(status, CdcStatus::Ok);
    let mut b = InodeId::NULL;
    for i in 0..32 {
        let (status, dir) = cdc.run(&mkdir(root, &format!("B{i}")));
        assert_eq!(status, CdcStatus::Ok);
        if dir.shard() != a.shard() {
            b = dir;
            break;
        }
    }
    assert!(!b.is_null(), "no directory landed on the other shard");
    let b_name = shards.list(root).into_iter().find(|(_, inode)| inode.without_owning() == b).unwrap().0;
    let (status, c) = cdc.run(&mkdir(b, "c"));
    assert_eq!(status, CdcStatus::Ok);

    // 1. Capture the CDC's datagrams during mv /B/c /A/c.
    for capture in &captures {
        capture.recording.store(true, Ordering::SeqCst);
    }
    assert_eq!(cdc.run(&mv_dir((b, "c"), (a, "c"))).0, CdcStatus::Ok);
    for capture in &captures {
        capture.recording.store(false, Ordering::SeqCst);
    }
    // 2. Move it back.
    assert_eq!(cdc.run(&mv_dir((a, "c"), (b, "c"))).0, CdcStatus::Ok);
    let before = shards.check_tree().unwrap();
    assert_eq!(shards.parent(c), Some(b));

    // 3. Replay inject_dirent, release_dirent and set_parent — from the
    // captured source port (the proxy's) and from a fresh one.
    let replayed = [ShardKind::InjectDirent, ShardKind::ReleaseDirent, ShardKind::SetParent];
    let fresh = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let proxies = proxies.lock().unwrap().clone();
    let key = MacKey::new(&cluster.key);
    let mut sent = 0;
    for (shard, capture) in captures.iter().enumerate() {
        let datagrams = capture.datagrams.lock().unwrap().clone();
        for bytes in datagrams.iter().filter(|bytes| kind_of(bytes).is_some_and(|kind| replayed.contains(&kind))) {
            let mut answers = Vec::new();
            for socket in [&*proxies[shard], &fresh] {
                if let Some(answer) = send_and_wait(socket, shard_addresses[shard], bytes, Duration::from_millis(300)) {
                    answers.push(body_of(&answer));
                }
                sent += 1;
            }
            // A retransmission of the step (same id and body, a fresh time,
            // as the CDC sends after a restart) gets the recorded answer.
            let retransmission = restamp(bytes, &key);
            let answer = send_and_wait(&fresh, shard_addresses[shard], &retransmission, Duration::from_secs(2))
                .expect("a retransmission of an executed step is answered");
            assert!(answers.iter().all(|replayed| *replayed == body_of(&answer)), "replays got another answer");
        }
    }
    assert!(sent >= 6, "the capture holds the three steps ({sent} replays sent)");

    // The tree is as it was: /B/c with parent /B, nothing at /A/c.
    assert_eq!(shards.parent(c), Some(b), "c's parent pointer was rewritten by a replay");
    assert!(!shards.list(a).contains_key("c"), "/A/c reappeared: c is linked twice");
    assert_eq!(shards.list(b).get("c").map(|inode| inode.without_owning()), Some(c));
    assert_eq!(shards.check_tree().unwrap(), before);
    assert!(shards.list(root).contains_key(&b_name));
}

// A privileged datagram stamped outside the window is dropped unanswered
// and not executed, from any source: a capture replayed after the window
// (stamped after the shard started, so its start floor cannot be what
// refuses it; this waits out one window), and one stamped in the future.
#[test]
fn stale_privileged_datagrams_are_dropped() {
    let cluster = Cluster::start(|shards| shards.to_vec());
    let cdc = cluster.cdc_client();
    let shards = cluster.shard_client();
    let (status, dir) = cdc.run(&mkdir(InodeId::ROOT, "d"));
    assert_eq!(status, CdcStatus::Ok);
    let key = MacKey::new(&cluster.key);
    let shard = cluster.shards[dir.shard() as usize].udp();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let request = ShardRequest::SetParent(SetParentReq { dir, parent: InodeId::NULL });
    let window = PRIVILEGED_DATAGRAM_WINDOW_NS;
    // Captured now (the shard is up: after its floor), replayed 2 s past
    // the window.
    let captured_at = EggsTime::now();
    while EggsTime::now() < captured_at.saturating_add_ns(window + 2 * NS_PER_SECOND) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let future = EggsTime::now().saturating_add_ns(2 * window);
    for (what, sent_at) in [("a capture replayed after the window", captured_at), ("a future stamp", future)] {
        let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
        let len = datagram::encode_at(&mut out, rand::random(), &request, Some(&key), sent_at).unwrap();
        assert_eq!(send_and_wait(&socket, shard, &out[..len], Duration::from_millis(500)), None, "{what} was answered");
        assert_eq!(shards.parent(dir), Some(InodeId::ROOT), "{what}: a stale set_parent was executed");
    }
}
