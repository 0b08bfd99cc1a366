//! Announcing the block service to shuckle: the prototype's 19-byte
//! datagram (key, TCP port, storage class) plus our optional host name,
//! sent over UDP at start and every [`SHUCKLE_ANNOUNCE_PERIOD_NS`], and out
//! of turn when the service becomes full or stops being full
//! ([`crate::space`]): shuckle checks a service on its registration, so
//! the news reaches it within a poll of the free space, or at once after a
//! write that found the disk full.
//!
//! It runs on a plain thread with a blocking socket: a datagram a minute
//! and a `statvfs` a second need no executor. A failed send (shuckle down,
//! no route) is logged and retried at the next period; it never stops the
//! block service.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use wire::limits::{BLOCK_SERVICE_SPACE_POLL_NS, HOST_NAME_BYTES_MAX, SHUCKLE_ANNOUNCE_PERIOD_NS};

use crate::space::SpaceWatch;
use crate::store::free_space;
use wire::mac::SecretKey;
use wire::shuckle::{HostName, REGISTRATION_BYTES, Registration, RegistrationDatagram};
use zerocopy::byteorder::little_endian::U16;

/// Bytes of the largest registration: fixed part, host length, host.
pub const REGISTRATION_BYTES_MAX: usize = REGISTRATION_BYTES + 1 + HOST_NAME_BYTES_MAX;

/// The registration datagram's bytes. An empty host is left out (shuckle
/// then uses the source address as the failure domain); a longer one than
/// the limit is cut.
pub fn registration_bytes(key: &SecretKey, port: u16, storage_class: u8, host: &str) -> Vec<u8> {
    let registration = Registration { secret_key: key.0, port: U16::new(port), storage_class };
    let host = (!host.is_empty()).then(|| HostName::truncating(host.as_bytes()));
    let datagram = RegistrationDatagram { registration, host };
    let mut buf = [0u8; REGISTRATION_BYTES_MAX];
    // The buffer fits the largest datagram, so encoding cannot fail; an
    // error would leave an empty datagram, which shuckle drops.
    let len = datagram.encode(&mut buf).unwrap_or(0);
    buf[..len].to_vec()
}

/// The machine's host name, or "" when it cannot be read.
pub fn machine_host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// Where and what to announce, and the space to watch.
pub struct Announcer {
    pub source: SocketAddr,
    pub shuckle: SocketAddr,
    pub datagram: Vec<u8>,
    /// The block service's folder (its file system's free space).
    pub root: PathBuf,
    pub space: Arc<SpaceWatch>,
    /// Woken by a write that found the disk full.
    pub woken: Receiver<()>,
}

impl Announcer {
    /// Sends the registration now, every period, and whenever the service
    /// becomes full or stops being full; forever (call on its own thread).
    pub fn run(self) {
        let period = Duration::from_nanos(SHUCKLE_ANNOUNCE_PERIOD_NS);
        let poll = Duration::from_nanos(BLOCK_SERVICE_SPACE_POLL_NS);
        let socket = loop {
            match UdpSocket::bind(self.source) {
                Ok(socket) => break socket,
                Err(e) => {
                    tracing::warn!(error = %e, source = %self.source, "cannot open the registration socket; retrying");
                    std::thread::sleep(poll);
                }
            }
        };
        let mut full = self.is_full();
        let mut next_announcement = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_announcement {
                self.send(&socket);
                next_announcement = now + period;
            }
            match self.woken.recv_timeout(poll.min(next_announcement.saturating_duration_since(now))) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                // The executors are gone: the process is stopping.
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(poll),
            }
            let now_full = self.is_full();
            if now_full != full {
                full = now_full;
                if full {
                    tracing::warn!(root = %self.root.display(), "block service full: telling shuckle now");
                } else {
                    tracing::info!(root = %self.root.display(), "block service has space again: telling shuckle now");
                }
                next_announcement = Instant::now();
            }
        }
    }

    /// Full now (a failed `statvfs` changes nothing: not full).
    fn is_full(&self) -> bool {
        match free_space(&self.root) {
            Ok((available_bytes, _)) => self.space.free_for_blocks(available_bytes) == 0,
            Err(e) => {
                tracing::warn!(error = %e, root = %self.root.display(), "cannot read the free space");
                false
            }
        }
    }

    fn send(&self, socket: &UdpSocket) {
        match socket.send_to(&self.datagram, self.shuckle) {
            Ok(_) => tracing::debug!(shuckle = %self.shuckle, "registration sent"),
            Err(e) => tracing::warn!(error = %e, shuckle = %self.shuckle, "registration not sent"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_round_trips() {
        let key = SecretKey([5; 16]);
        let bytes = registration_bytes(&key, 4321, 2, "");
        assert_eq!(bytes.len(), REGISTRATION_BYTES);
        let decoded = RegistrationDatagram::decode(&bytes).unwrap();
        assert_eq!(decoded.secret_key(), key);
        assert_eq!(decoded.registration.port.get(), 4321);
        assert_eq!(decoded.registration.storage_class, 2);
        assert!(decoded.host.is_none());

        let bytes = registration_bytes(&key, 1, 9, "rack1-host7");
        let decoded = RegistrationDatagram::decode(&bytes).unwrap();
        assert_eq!(decoded.host.unwrap().as_str(), "rack1-host7");

        let long = "h".repeat(200);
        let bytes = registration_bytes(&key, 1, 9, &long);
        assert_eq!(bytes.len(), REGISTRATION_BYTES_MAX);
        assert!(RegistrationDatagram::decode(&bytes).is_ok());
    }
}
