//! Helpers for shuckle's integration tests: the real `shuckle` binary in a
//! temporary folder, a tiny fake block service speaking the stats protocol
//! with a real key, raw UDP and HTTP clients.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use wire::block::{BlockServiceStats, StatsResp};
use wire::datagram;
use wire::mac::{MacKey, SecretKey, block_service_id};
use wire::shuckle::{ShuckleRequest, ShuckleResponse};
use zerocopy::IntoBytes;

/// Generous: the machine is small and shared.
pub const WAIT: Duration = Duration::from_secs(60);

pub const CLUSTER_KEY: SecretKey = SecretKey([0x5c; 16]);

pub struct ShuckleProcess {
    child: Child,
    pub http: SocketAddr,
    pub udp: SocketAddr,
    /// The operator token shuckle created (`<data>/operator.token`).
    pub token: String,
}

impl ShuckleProcess {
    /// Starts shuckle on `dir` with the test cluster key and fast checks.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        let key_file = dir.join("test-cluster.key");
        if !key_file.exists() {
            std::fs::write(&key_file, CLUSTER_KEY.0).unwrap();
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_shuckle"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--key-file")
            .arg(&key_file)
            .args(["--http", "127.0.0.1:0", "--udp", "127.0.0.1:0", "--check-interval-ms", "200"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the shuckle binary");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (mut http, mut udp) = (None, None);
        loop {
            let line = lines.next().expect("shuckle exited before `ready`").unwrap();
            if let Some(addr) = line.strip_prefix("listening http ") {
                http = Some(addr.parse().unwrap());
            } else if let Some(addr) = line.strip_prefix("listening udp ") {
                udp = Some(addr.parse().unwrap());
            } else if line == "ready" {
                break;
            } else {
                panic!("unexpected stdout line {line:?}");
            }
        }
        let token = std::fs::read_to_string(Self::token_file(dir)).expect("shuckle made no operator token");
        Self {
            child,
            http: http.expect("no http line"),
            udp: udp.expect("no udp line"),
            token: token.trim().to_owned(),
        }
    }

    /// Where shuckle started on `dir` keeps its operator token (the default, in its data folder).
    pub fn token_file(dir: &Path) -> PathBuf {
        dir.join("data").join("operator.token")
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for ShuckleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the fake block service answers stats requests.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Mode {
    Good = 0,
    /// MAC'd with another key (a forger who does not hold the key).
    WrongKey = 1,
    /// The right key but another token (a replayed answer).
    WrongToken = 2,
    /// Accepts and never answers.
    Silent = 3,
}

pub struct FakeBlockService {
    pub key: SecretKey,
    pub addr: SocketAddr,
    pub stats: BlockServiceStats,
    mode: Arc<AtomicU8>,
    contacts: Arc<AtomicUsize>,
}

impl FakeBlockService {
    pub fn start(key: SecretKey, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = BlockServiceStats { used_bytes: 3 << 30, free_bytes: 5 << 40, used_blocks: 1234, free_blocks: 99 };
        let mode_cell = Arc::new(AtomicU8::new(mode as u8));
        let contacts = Arc::new(AtomicUsize::new(0));
        let (mode_in_thread, contacts_in_thread) = (Arc::clone(&mode_cell), Arc::clone(&contacts));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (mode, contacts) = (Arc::clone(&mode_in_thread), Arc::clone(&contacts_in_thread));
                std::thread::spawn(move || serve_stats(stream, key, stats, &mode, &contacts));
            }
        });
        Self { key, addr, stats, mode: mode_cell, contacts }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn contacts(&self) -> usize {
        self.contacts.load(Ordering::SeqCst)
    }

    pub fn id_hex(&self) -> String {
        block_service_id(&self.key).to_string()
    }
}

fn serve_stats(
    mut stream: TcpStream,
    key: SecretKey,
    stats: BlockServiceStats,
    mode: &AtomicU8,
    contacts: &AtomicUsize,
) {
    let mut request = [0u8; 9];
    while stream.read_exact(&mut request).is_ok() {
        contacts.fetch_add(1, Ordering::SeqCst);
        let mut token: [u8; 8] = request[1..].try_into().unwrap();
        let response = match mode.load(Ordering::SeqCst) {
            0 => StatsResp::new(&MacKey::new(&key), token, stats),
            1 => StatsResp::new(&MacKey::new(&SecretKey([0xee; 16])), token, stats),
            2 => {
                token[0] ^= 1;
                StatsResp::new(&MacKey::new(&key), token, stats)
            }
            _ => {
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
        };
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Sends the 19-byte registration (and the host, if any) from 127.0.0.1.
pub fn register(shuckle_udp: SocketAddr, key: &SecretKey, port: u16, storage_class: u8, host: Option<&str>) {
    let mut bytes = key.0.to_vec();
    bytes.extend_from_slice(&port.to_le_bytes());
    bytes.push(storage_class);
    if let Some(host) = host {
        bytes.push(host.len() as u8);
        bytes.extend_from_slice(host.as_bytes());
    }
    send_raw(shuckle_udp, &bytes);
}

pub fn send_raw(shuckle_udp: SocketAddr, bytes: &[u8]) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(bytes, shuckle_udp).unwrap();
}

/// One request/response exchange; retries on loss. The response bytes.
pub fn udp_exchange(shuckle_udp: SocketAddr, request: &ShuckleRequest, key: Option<&MacKey>) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut out = [0u8; 1500];
    let len = datagram::encode(&mut out, 77, request, key).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut input = [0u8; 2000];
    while Instant::now() < deadline {
        socket.send_to(&out[..len], shuckle_udp).unwrap();
        if let Ok((n, _)) = socket.recv_from(&mut input) {
            assert!(n <= wire::limits::UDP_DATAGRAM_BYTES_MAX, "oversized response");
            return input[..n].to_vec();
        }
    }
    panic!("no response from shuckle");
}

pub fn decode_response<'a>(bytes: &'a [u8], key: Option<&MacKey>) -> ShuckleResponse<'a> {
    let (header, response) = datagram::decode::<ShuckleResponse>(bytes, key).expect("undecodable response");
    assert_eq!(header.request_id(), 77);
    response
}

/// A minimal HTTP/1.1 exchange: (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_with(addr, method, path, &[], "")
}

/// An HTTP/1.1 exchange with more header lines and a body: (status, body).
pub fn http_with(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("no header end");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.to_owned() };
    (status, body)
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

pub fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// An operator action as a script sends it: the token as a bearer, JSON.
pub fn post_json(shuckle: &ShuckleProcess, path: &str) -> (u16, Value) {
    let bearer = format!("Bearer {}", shuckle.token);
    let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let (status, body) = http_with(shuckle.http, "POST", path, &headers, "{}");
    (status, serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}")))
}

/// The block service with `id` in the API listing, if any.
pub fn listed(addr: SocketAddr, id: &str) -> Option<Value> {
    get_json(addr, "/api/block_services").as_array().unwrap().iter().find(|s| s["id"] == id).cloned()
}

/// Polls `probe` until it returns `Some`, for at most [`WAIT`].
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every form in which a key could leak into text.
pub fn key_forms(key: &SecretKey) -> Vec<String> {
    let hex: String = key.0.iter().map(|b| format!("{b:02x}")).collect();
    let array = format!("{:?}", key.0).replace(' ', "");
    vec![hex.clone(), hex.to_uppercase(), array]
}

pub fn assert_no_key(text: &str, key: &SecretKey) {
    for form in key_forms(key) {
        assert!(!text.replace(' ', "").contains(&form), "a secret key leaked: {form}");
    }
}

pub fn temp_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}
