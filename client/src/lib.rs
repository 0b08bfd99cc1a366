//! `client`: the eggsfs client library.
//!
//! - [`udp`]: the generic datagram requester (retries, timeouts, request-id
//!   demultiplexing) every datagram client is built on; cdcd uses it too.
pub mod udp;
