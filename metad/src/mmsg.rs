//! Batched datagram I/O: `recvmmsg` and `sendmmsg` on a blocking UDP socket.
//!
//! A datagram server's cost is its syscalls (see [`crate::server`]): one
//! receive and one send per request. Under load many datagrams wait in the
//! socket's queue at once, and a committed batch has many answers to send;
//! one syscall for all of them saves each one's entry, exit and file
//! lookup. With one datagram waiting, a batched receive returns at once
//! with that one (`MSG_WAITFORONE`), so a lone client waits for nothing.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::SockAddr;

/// Most datagrams one call receives or sends.
pub const BATCH_MAX: usize = 32;

const ADDRESS_BYTES: libc::socklen_t = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;

/// Receive buffers for [`BATCH_MAX`] datagrams, reused call after call:
/// the headers point at the buffers once, from [`RecvBatch::new`], so a
/// receive allocates nothing.
pub struct RecvBatch {
    /// The kernel writes into these through `headers`; their heap storage
    /// never moves (none of these vectors is resized after `new`).
    buffers: Vec<Vec<u8>>,
    addresses: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    lengths: Vec<usize>,
    peers: Vec<Option<SocketAddr>>,
    received: usize,
}

impl RecvBatch {
    /// Buffers of `buffer_bytes` each (a longer datagram is truncated and
    /// flagged by its length: see [`RecvBatch::get`]).
    pub fn new(buffer_bytes: usize) -> Self {
        let mut buffers: Vec<Vec<u8>> = (0..BATCH_MAX).map(|_| vec![0u8; buffer_bytes]).collect();
        // SAFETY: sockaddr_storage is plain bytes; all zeros is valid.
        let mut addresses: Vec<libc::sockaddr_storage> = vec![unsafe { std::mem::zeroed() }; BATCH_MAX];
        let mut iovecs: Vec<libc::iovec> = buffers
            .iter_mut()
            .map(|buffer| libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() })
            .collect();
        let headers: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .zip(addresses.iter_mut())
            .map(|(iovec, address)| {
                // SAFETY: msghdr is plain data; all zeros is an empty header.
                let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
                header.msg_name = (address as *mut libc::sockaddr_storage).cast();
                header.msg_namelen = ADDRESS_BYTES;
                header.msg_iov = iovec;
                header.msg_iovlen = 1;
                libc::mmsghdr { msg_hdr: header, msg_len: 0 }
            })
            .collect();
        Self {
            buffers,
            addresses,
            iovecs,
            headers,
            lengths: vec![0; BATCH_MAX],
            peers: vec![None; BATCH_MAX],
            received: 0,
        }
    }

    /// Blocks until at least one datagram is queued, then takes every queued
    /// one up to [`BATCH_MAX`]. Returns how many.
    pub fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.received = 0;
        for header in &mut self.headers {
            // The kernel shrinks these to what it wrote; give the whole
            // slot back.
            header.msg_hdr.msg_namelen = ADDRESS_BYTES;
            header.msg_hdr.msg_flags = 0;
        }
        debug_assert_eq!(self.iovecs.len(), self.headers.len());
        // SAFETY: every header points at a buffer, an address slot and an
        // iovec of `self` (set up in `new`; their heap storage never moves
        // and lives as long as `self`); the count is the headers' length.
        let count = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                self.headers.len() as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if count < 0 {
            return Err(io::Error::last_os_error());
        }
        let count = (count as usize).min(BATCH_MAX);
        for (index, header) in self.headers.iter().take(count).enumerate() {
            let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            // A truncated datagram reports a length above its buffer, so a
            // caller sees it as oversized rather than as a shorter request.
            let buffer_bytes = self.buffers.get(index).map_or(0, Vec::len);
            self.lengths[index] = if truncated { buffer_bytes + 1 } else { header.msg_len as usize };
            // SAFETY: the kernel wrote a socket address of msg_namelen bytes
            // into the storage.
            let address = unsafe { SockAddr::new(self.addresses[index], header.msg_hdr.msg_namelen) };
            self.peers[index] = address.as_socket();
        }
        self.received = count;
        Ok(count)
    }

    /// Datagram `index` of the last [`RecvBatch::receive`]: its bytes (at
    /// most the buffer), its full length (above the buffer when it was
    /// truncated), and who sent it (`None`: not an IP address).
    pub fn get(&self, index: usize) -> Option<(&[u8], usize, Option<SocketAddr>)> {
        if index >= self.received {
            return None;
        }
        let length = *self.lengths.get(index)?;
        let buffer = self.buffers.get(index)?;
        Some((buffer.get(..length.min(buffer.len()))?, length, *self.peers.get(index)?))
    }
}

/// Sends every `(bytes, peer)` in as few `sendmmsg` calls as it takes
/// ([`BATCH_MAX`] each). A datagram the kernel refuses is logged and
/// skipped; the rest still go. A full send buffer (`EAGAIN`) is retried a
/// bounded number of times, as a single send would be.
pub fn send_all(socket: &UdpSocket, datagrams: &[(&[u8], SocketAddr)]) {
    let addresses: Vec<SockAddr> = datagrams.iter().map(|(_, peer)| SockAddr::from(*peer)).collect();
    let mut next = 0;
    let mut would_block = 0;
    while next < datagrams.len() {
        let end = (next + BATCH_MAX).min(datagrams.len());
        let (slice, names) = (&datagrams[next..end], &addresses[next..end]);
        let mut iovecs: Vec<libc::iovec> = slice
            .iter()
            .map(|(bytes, _)| libc::iovec { iov_base: bytes.as_ptr().cast_mut().cast(), iov_len: bytes.len() })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .zip(names)
            .map(|(iovec, name)| {
                // SAFETY: msghdr is plain data; all zeros is an empty header.
                let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
                header.msg_name = name.as_ptr().cast_mut().cast();
                header.msg_namelen = name.len();
                header.msg_iov = iovec;
                header.msg_iovlen = 1;
                libc::mmsghdr { msg_hdr: header, msg_len: 0 }
            })
            .collect();
        // SAFETY: every header points at bytes, an address and an iovec that
        // outlive the call (the kernel only reads them); the count is the
        // headers' length.
        let sent =
            unsafe { libc::sendmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), headers.len() as libc::c_uint, 0) };
        if sent > 0 {
            next += sent as usize;
            continue;
        }
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::WouldBlock && would_block < 100 {
            would_block += 1;
            std::thread::yield_now();
            continue;
        }
        // The first datagram cannot go: skip it, send the rest.
        if let Some((_, peer)) = datagrams.get(next) {
            tracing::warn!(%peer, %error, "UDP send failed");
        }
        next += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_receives_every_queued_datagram_with_its_sender_and_sends_them_back() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let clients: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let server_addr = server.local_addr().unwrap();
        for (index, client) in clients.iter().enumerate() {
            for n in 0..2u8 {
                client.send_to(&[index as u8, n], server_addr).unwrap();
            }
        }
        // One oversized datagram, longer than the 8-byte buffers.
        clients[0].send_to(&[9u8; 20], server_addr).unwrap();
        let mut batch = RecvBatch::new(8);
        let mut seen = Vec::new();
        while seen.len() < 7 {
            let count = batch.receive(&server).unwrap();
            assert!(count >= 1);
            for index in 0..count {
                let (bytes, length, peer) = batch.get(index).unwrap();
                seen.push((bytes.to_vec(), length, peer.unwrap()));
            }
            assert!(batch.get(count).is_none());
        }
        for (index, client) in clients.iter().enumerate() {
            let from = client.local_addr().unwrap();
            for n in 0..2u8 {
                assert!(seen.contains(&(vec![index as u8, n], 2, from)), "datagram {index}/{n} from {from}: {seen:?}");
            }
        }
        assert!(seen.iter().any(|(bytes, length, _)| bytes.len() == 8 && *length > 8), "truncation flagged");
        // Answer each with its own bytes, all in one call.
        let answers: Vec<(&[u8], SocketAddr)> = seen.iter().map(|(bytes, _, peer)| (bytes.as_slice(), *peer)).collect();
        send_all(&server, &answers);
        for client in &clients {
            client.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let expected = if client.local_addr().unwrap() == clients[0].local_addr().unwrap() { 3 } else { 2 };
            let mut buffer = [0u8; 64];
            for _ in 0..expected {
                let (len, from) = client.recv_from(&mut buffer).unwrap();
                assert_eq!(from, server_addr);
                got.push(buffer[..len].to_vec());
            }
            assert_eq!(got.len(), expected);
        }
    }
}
