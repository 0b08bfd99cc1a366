//! `client`: the eggsfs client library and the `eggs` CLI's engine.
//!
//! - [`udp`]: the one datagram requester (retries, timeouts, request-id
//!   demultiplexing, the accept rule): a re-export of `daemon::udp`, where
//!   it lives so that daemons need not depend on this library.
//! - [`client`]: [`client::Client`] — discovery through shuckle (with the
//!   local default ports as fallback), typed shard and CDC requests, path
//!   resolution from the root across shards, policy inheritance.
//! - [`pool`]: pooled, pipelined connections to block services.
//! - [`block`]: the block service TCP client (write with certificate → proof,
//!   fetch, erase) over the pool.
//! - [`plan`]: write and read planning without I/O (span encoding, which
//!   blocks to read).
//! - [`write`] and [`read`]: streaming, pipelined file writes and
//!   reconstructing file reads.
//! - [`path`]: absolute path parsing.
//! - [`capacity`]: the cluster's capacity with each disk counted once
//!   (`eggs df` and shuckle's UI).
//! - [`keyfile`]: the cluster key file, created when missing: a re-export of
//!   `daemon::keyfile`, where the loader lives for the daemons.
pub mod block;
pub mod capacity;
pub mod client;
pub mod erasure;
pub mod error;
pub mod path;
pub mod plan;
pub mod pool;
pub mod read;
pub mod write;

pub use client::Client;
pub use daemon::{keyfile, udp};
pub use error::{ClientError, Result};
