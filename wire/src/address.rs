//! Socket addresses on the wire: 16 bytes of IPv6 (IPv4 as IPv4-mapped) and a
//! u16 port, 18 bytes. All zeros means "unknown".

use core::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use zerocopy::byteorder::little_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct Address {
    /// Network byte order, as `Ipv6Addr::octets`.
    pub ip: [u8; 16],
    pub port: U16,
}

pub const ADDRESS_BYTES: usize = 18;
const _: () = assert!(core::mem::size_of::<Address>() == ADDRESS_BYTES);

impl Address {
    pub const UNKNOWN: Address = Address { ip: [0; 16], port: U16::ZERO };

    pub fn is_unknown(&self) -> bool {
        *self == Self::UNKNOWN
    }

    pub fn socket_addr(&self) -> SocketAddr {
        let ip = Ipv6Addr::from(self.ip);
        let ip = match ip.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(ip),
        };
        SocketAddr::new(ip, self.port.get())
    }
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        Address { ip: ip.octets(), port: U16::new(addr.port()) }
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unknown() { f.write_str("unknown") } else { write!(f, "{}", self.socket_addr()) }
    }
}

crate::fixed_wire!(Address);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_v6_round_trip() {
        for text in ["127.0.0.1:5000", "[::1]:22273", "10.1.2.3:0"] {
            let addr: SocketAddr = text.parse().unwrap();
            assert_eq!(Address::from(addr).socket_addr(), addr);
        }
        assert_eq!(Address::UNKNOWN.to_string(), "unknown");
    }
}
