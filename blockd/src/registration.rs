//! Announcing the block service to shuckle: the prototype's 19-byte
//! datagram (key, TCP port, storage class) plus our optional host name,
//! sent over UDP at start and every [`SHUCKLE_ANNOUNCE_PERIOD_NS`].
//!
//! It runs on a plain thread with a blocking socket: one datagram a minute
//! needs no executor. A failed send (shuckle down, no route) is logged and
//! retried at the next period; it never stops the block service.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use wire::limits::{HOST_NAME_BYTES_MAX, SHUCKLE_ANNOUNCE_PERIOD_NS};
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

/// Sends `datagram` to `shuckle` from `source` now and every period,
/// forever (call on its own thread).
pub fn announce_forever(source: SocketAddr, shuckle: SocketAddr, datagram: Vec<u8>) {
    let period = Duration::from_nanos(SHUCKLE_ANNOUNCE_PERIOD_NS);
    let socket = loop {
        match UdpSocket::bind(source) {
            Ok(socket) => break socket,
            Err(e) => {
                tracing::warn!(error = %e, %source, "cannot open the registration socket; retrying");
                std::thread::sleep(period);
            }
        }
    };
    loop {
        match socket.send_to(&datagram, shuckle) {
            Ok(_) => tracing::debug!(%shuckle, "registration sent"),
            Err(e) => tracing::warn!(error = %e, %shuckle, "registration not sent"),
        }
        std::thread::sleep(period);
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
