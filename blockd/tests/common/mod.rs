//! Starting the real `blockd` binary in a temporary folder, and a blocking
//! client for the block protocol.

#![allow(dead_code, reason = "each test file uses a different part of the helpers")]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use wire::block::{
    CrcReq, CrcResp, EraseReq, EraseResp, FetchReq, FetchRespHead, StatsReq, StatsResp, WriteReq, WriteResp,
};
use wire::ids::{BlockId, EggsTime};
use wire::mac::{MacKey, SecretKey};
use zerocopy::{FromBytes, IntoBytes};

/// Generous: the machine is small and shared.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Daemon {
    /// The process (SIGKILLed on drop).
    pub process: testsupport::Daemon,
    pub address: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub dir: PathBuf,
}

impl Daemon {
    /// Starts blockd on `dir` with storage class 2, two cores at most, and
    /// `extra` flags; waits for `ready`.
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_blockd"));
        command.arg(dir);
        for (flag, default) in [("--storage-class", "2"), ("--shuckle", "127.0.0.1:9"), ("--cores", "1")] {
            if !extra.contains(&flag) {
                command.args([flag, default]);
            }
        }
        command.args(extra);
        let process = testsupport::Daemon::spawn("blockd", command);
        assert!(process.other_lines.is_empty(), "unexpected stdout lines {:?}", process.other_lines);
        let address = process.address("tcp");
        let metrics = process.try_address("metrics").map(|text| text.parse().expect("metrics address"));
        Daemon { process, address, metrics, dir: dir.to_path_buf() }
    }

    pub fn key(&self) -> MacKey {
        MacKey::new(&read_key(&self.dir))
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.address).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.process.child.id() as i32, signal) }, 0);
    }

    pub fn wait(&mut self) -> ExitStatus {
        wait_with_timeout(&mut self.process.child)
    }
}

pub fn wait_with_timeout(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn read_key(dir: &Path) -> SecretKey {
    SecretKey(std::fs::read(dir.join("secret.key")).unwrap().try_into().unwrap())
}

/// Polls `condition` until it holds (panics after [`TIMEOUT`]).
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A block id made now (unique per `shard` and call on this machine).
pub fn fresh_block_id(shard: u8) -> BlockId {
    static LAST: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
    let mut last = LAST.lock().unwrap();
    let id = BlockId::next(BlockId::new(*last), EggsTime::now(), shard);
    *last = id.get();
    id
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    bytes
}

pub fn read_struct<T: FromBytes>(stream: &mut TcpStream) -> T {
    let mut buf = vec![0u8; std::mem::size_of::<T>()];
    stream.read_exact(&mut buf).unwrap();
    T::read_from_bytes(&buf).map_err(|_| ()).unwrap()
}

pub fn send_write(stream: &mut TcpStream, key: &MacKey, block_id: BlockId, data: &[u8]) {
    let request = WriteReq::new(key, block_id, wire::crc::crc32c(data), data.len() as u32);
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(data).unwrap();
}

pub fn write_block(stream: &mut TcpStream, key: &MacKey, block_id: BlockId, data: &[u8]) {
    send_write(stream, key, block_id, data);
    let response: WriteResp = read_struct(stream);
    assert_eq!(response.block_id, block_id);
    assert!(response.proof_valid(key), "bad write proof");
}

pub fn fetch_block(stream: &mut TcpStream, block_id: BlockId) -> Vec<u8> {
    stream.write_all(FetchReq::new(block_id).as_bytes()).unwrap();
    let head: FetchRespHead = read_struct(stream);
    assert_eq!(head.tag, b'F');
    let mut data = vec![0u8; head.size.get() as usize];
    stream.read_exact(&mut data).unwrap();
    data
}

/// (size, crc) the service computes.
pub fn block_crc(stream: &mut TcpStream, block_id: BlockId) -> (u32, u32) {
    stream.write_all(CrcReq::new(block_id).as_bytes()).unwrap();
    let response: CrcResp = read_struct(stream);
    assert_eq!(response.tag, b'C');
    (response.size.get(), response.crc.get())
}

pub fn erase_block(stream: &mut TcpStream, key: &MacKey, block_id: BlockId) {
    stream.write_all(EraseReq::new(key, block_id).as_bytes()).unwrap();
    let response: EraseResp = read_struct(stream);
    assert_eq!(response.block_id, block_id);
    assert!(response.proof_valid(key), "bad erase proof");
}

pub fn stats(stream: &mut TcpStream, key: &MacKey) -> wire::block::BlockServiceStats {
    let token: [u8; 8] = rand::random();
    stream.write_all(StatsReq::new(token).as_bytes()).unwrap();
    let response: StatsResp = read_struct(stream);
    response.verify(key, token).expect("stats MAC does not verify")
}

/// Asserts the service closed the connection without sending anything.
pub fn assert_closed(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("the service answered instead of closing"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the connection was not closed: {e}"),
    }
}

pub fn half_close(stream: &TcpStream) {
    stream.shutdown(Shutdown::Write).unwrap();
}

/// Every file under the block folders and tmp/ (everything but the key).
pub fn stored_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            for inner in std::fs::read_dir(entry.path()).unwrap() {
                files.push(inner.unwrap().path());
            }
        }
    }
    files
}

pub fn block_path(dir: &Path, block_id: BlockId) -> PathBuf {
    let hex = format!("{:016x}", block_id.get().swap_bytes());
    dir.join(&hex[..2]).join(hex)
}
