//! The machine's own limits, measured in the same run as eggsfs so that the
//! ratios stay meaningful on a shared, loaded machine.
//!
//! - loopback TCP: N sender/receiver thread pairs moving 1 MiB writes;
//! - UDP request/response: a trivial echo server (one thread per core on one
//!   socket) driven by the same client loop as the shard benchmarks
//!   ([`crate::udp`]);
//! - sequential write bandwidth: 1 MiB writes then one fsync, counting the
//!   fsync (what a durable block write pays);
//! - fsync rate: append 4 KiB, fsync, repeat (the cost of one durable
//!   commit, which group commit must beat);
//! - CRC32C and Reed–Solomon on one core, through `wire`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wire::span::{Parity, SpanLayout};

use crate::error::{PerfError, Result};

pub const MIB: usize = 1 << 20;

/// Bytes per second → MB/s (10^6, as disks and networks are quoted).
pub fn mb_per_second(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

/// Deterministic incompressible bytes (xorshift).
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let word = state.to_le_bytes();
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&word[..take]);
    }
    out
}

/// A page.
pub const PAGE_BYTES: usize = 4096;

/// The first `len` bytes of `storage` from its first page boundary on
/// (`storage` must hold `len + PAGE_BYTES`). Socket buffers of the
/// measurements start on a page, as eggs's span buffers do: the kernel's
/// copy between a page-aligned socket page and a buffer 16 bytes off a page
/// (where `malloc` puts a large `Vec`) runs at a fraction of the speed on
/// this machine's CPUs (`perf/results/2026-11-27-profile-2.md`), so an
/// unaligned buffer would measure the harness, not the path.
pub fn page_aligned(storage: &mut [u8], len: usize) -> &mut [u8] {
    let offset = storage.as_ptr().align_offset(PAGE_BYTES);
    &mut storage[offset..offset + len]
}

/// Loopback TCP throughput with `streams` parallel connections, in MB/s.
pub fn tcp_loopback(streams: usize, duration: Duration) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(PerfError::io("bind loopback listener"))?;
    let addr = listener.local_addr().map_err(PerfError::io("listener address"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..streams {
        let stop = stop.clone();
        senders.push(std::thread::spawn(move || -> Result<()> {
            let mut stream = TcpStream::connect(addr).map_err(PerfError::io("connect loopback"))?;
            let mut storage = vec![0x5au8; MIB + PAGE_BYTES];
            let chunk = page_aligned(&mut storage, MIB);
            while !stop.load(Ordering::Relaxed) {
                stream.write_all(chunk).map_err(PerfError::io("loopback send"))?;
            }
            Ok(())
        }));
    }
    let mut receivers: Vec<JoinHandle<u64>> = Vec::new();
    let started = Instant::now();
    for _ in 0..streams {
        let (mut stream, _) = listener.accept().map_err(PerfError::io("accept loopback"))?;
        let stop = stop.clone();
        receivers.push(std::thread::spawn(move || {
            let mut storage = vec![0u8; MIB + PAGE_BYTES];
            let buf = page_aligned(&mut storage, MIB);
            let mut total = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match stream.read(buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n as u64,
                }
            }
            total
        }));
    }
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let total: u64 = receivers.into_iter().map(|r| r.join().unwrap_or(0)).sum();
    for sender in senders {
        // A sender may fail with a broken pipe once its receiver stopped;
        // only the bytes received count.
        let _ = sender.join();
    }
    Ok(mb_per_second(total, elapsed))
}

/// A trivial UDP echo server: answers every datagram with itself.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// One thread per core on one socket, as a daemon would at the least.
    pub fn start(threads: usize) -> Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(PerfError::io("bind echo socket"))?;
        socket.set_read_timeout(Some(Duration::from_millis(50))).map_err(PerfError::io("echo socket timeout"))?;
        let addr = socket.local_addr().map_err(PerfError::io("echo address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for _ in 0..threads.max(1) {
            let socket = socket.try_clone().map_err(PerfError::io("clone echo socket"))?;
            let stop = stop.clone();
            handles.push(std::thread::spawn(move || {
                let mut buf = [0u8; wire::limits::UDP_DATAGRAM_BYTES_MAX];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((len, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&buf[..len], from);
                    }
                }
            }));
        }
        Ok(Self { addr, stop, threads: handles })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Sequential write bandwidth of `folder`, in MB/s: `bytes` in 1 MiB writes
/// and one fsync at the end, timed together.
pub fn sequential_write(folder: &Path, bytes: usize) -> Result<f64> {
    let path = folder.join("perf-sequential-write");
    let chunk = pseudo_random_bytes(MIB, 7);
    let started = Instant::now();
    let mut file = File::create(&path).map_err(PerfError::io(format!("create {}", path.display())))?;
    let mut written = 0usize;
    while written < bytes {
        file.write_all(&chunk).map_err(PerfError::io("sequential write"))?;
        written += chunk.len();
    }
    file.sync_all().map_err(PerfError::io("fsync after sequential write"))?;
    let elapsed = started.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(mb_per_second(written as u64, elapsed))
}

/// fsyncs per second of 4 KiB appends in `folder`.
pub fn fsync_rate(folder: &Path, duration: Duration) -> Result<f64> {
    let path = folder.join("perf-fsync");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(PerfError::io(format!("create {}", path.display())))?;
    let page = [0x42u8; 4096];
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < duration {
        file.write_all_at(&page, count * page.len() as u64).map_err(PerfError::io("append before fsync"))?;
        file.sync_all().map_err(PerfError::io("fsync"))?;
        count += 1;
    }
    let elapsed = started.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// Repeats `work` (which handles `bytes` bytes) for about `duration`: MB/s.
fn throughput(bytes: usize, duration: Duration, mut work: impl FnMut() -> Result<()>) -> Result<f64> {
    work()?; // warm up (first-touch allocations, tables)
    let started = Instant::now();
    let mut rounds = 0u64;
    while started.elapsed() < duration {
        work()?;
        rounds += 1;
    }
    Ok(mb_per_second(rounds * bytes as u64, started.elapsed()))
}

/// CRC32C over a 1 MiB buffer on one core, MB/s.
pub fn crc32c_speed(duration: Duration) -> Result<f64> {
    let bytes = pseudo_random_bytes(MIB, 3);
    let mut sink = 0u32;
    let speed = throughput(bytes.len(), duration, || {
        sink ^= wire::crc::crc32c(std::hint::black_box(&bytes));
        Ok(())
    })?;
    std::hint::black_box(sink);
    Ok(speed)
}

/// Reed–Solomon encode and decode (P data blocks lost) of 4 MiB spans with
/// `parity`, on one core, in MB/s of span bytes.
pub fn reed_solomon_speed(parity: Parity, duration: Duration) -> Result<(f64, f64)> {
    let span_size = 4 * MIB;
    let layout = SpanLayout::new(span_size as u64, parity)
        .map_err(|e| PerfError::Protocol(format!("span layout {parity}: {e}")))?;
    let span = pseudo_random_bytes(span_size, 11);
    let mut parity_blocks = vec![Vec::new(); parity.parity_blocks()];
    let rs_error = |e: wire::span::SpanError| PerfError::Protocol(format!("Reed–Solomon {parity}: {e}"));
    let encode = throughput(span_size, duration, || layout.encode_parity(&span, &mut parity_blocks).map_err(rs_error))?;
    let mut full: Vec<Option<Vec<u8>>> = (0..parity.data_blocks())
        .map(|i| {
            let range = layout.data_block_range(i);
            Some(span[range.start as usize..range.end as usize].to_vec())
        })
        .collect();
    full.extend(parity_blocks.iter().cloned().map(Some));
    // Time only the rebuild, not the set-up copy of the blocks.
    let mut spent = Duration::ZERO;
    let mut rounds = 0u64;
    while spent < duration || rounds == 0 {
        let mut damaged = full.clone();
        for block in damaged.iter_mut().take(parity.parity_blocks()) {
            *block = None;
        }
        let started = Instant::now();
        layout.reconstruct(&mut damaged).map_err(rs_error)?;
        spent += started.elapsed();
        rounds += 1;
        if damaged[..parity.data_blocks()] != full[..parity.data_blocks()] {
            return Err(PerfError::Protocol(format!("Reed–Solomon {parity} rebuilt wrong bytes")));
        }
    }
    Ok((encode, mb_per_second(rounds * span_size as u64, spent)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_random_bytes_are_deterministic_and_sized() {
        assert_eq!(pseudo_random_bytes(13, 5), pseudo_random_bytes(13, 5));
        assert_ne!(pseudo_random_bytes(64, 5), pseudo_random_bytes(64, 6));
        assert_eq!(pseudo_random_bytes(13, 5).len(), 13);
    }

    #[test]
    fn echo_server_echoes() {
        let server = EchoServer::start(1).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        client.send_to(b"ping", server.addr).unwrap();
        let mut buf = [0u8; 16];
        let (len, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"ping");
    }
}
