//! `metad`: one eggsfs metadata shard (DESIGN.md §3–§4).
//!
//! A shard owns the directories and files whose inode ids carry its number:
//! living and dead directory maps, linked files and their spans, eden (files
//! being written), the reverse block index, and the block services it places
//! blocks on. State lives in LMDB ([`store`], which documents every key
//! layout).
//!
//! - [`logic`]: what each request does — plain code over a request, the time,
//!   the block service table and an LMDB transaction; tested without sockets.
//!   A small file is one request, create_small_file (kind 0x16, `logic`'s
//!   `small`): created with its inline contents and linked in one
//!   transaction, its re-sends answered from a per-file memory of the
//!   client's create id.
//! - [`block_services`]: the known block services and block placement (D+P
//!   distinct services, weighted, spread over hosts).
//! - [`server`]: the daemon's I/O — one plain thread per core, all
//!   receiving on one UDP socket, serving reads from LMDB read
//!   transactions; one writer thread applying queued mutations in one write
//!   transaction per batch (group commit) over a write-ahead journal
//!   (`daemon::journal`), whose thread answers each batch once its record
//!   is durable, while the writer already applies the next; retransmissions
//!   answered from a bounded cache.
//! - [`mmsg`]: batched datagram receive and send (`recvmmsg`, `sendmmsg`)
//!   for the server's threads.
//! - [`metrics`]: request counts, errors by code, latencies and the group
//!   commit's batch sizes and durations, for `--metrics ADDR`.
//! - [`replay`]: the replay check of privileged (CDC) requests: a freshness
//!   window on their MAC'd send time and a record of those seen in it.
//! - [`verify`]: `metad --verify DIR`, the offline check of every record's
//!   checksum and of the file size.
//! - [`shuckle_client`]: fetches block services (with wrapped keys) and
//!   registers the shard, through the one datagram requester (`daemon::udp`).
//!
//! The daemon's plumbing (folder lock, key file, logs, exit codes, signals,
//! the SO_REUSEPORT bind) is the shared `daemon` crate's.
//!
//! Garbage collection of eden files past their deadline is driven from
//! outside through expunge requests; the shard runs no collector itself.

pub mod block_services;
pub mod logic;
pub mod metrics;
pub mod mmsg;
pub mod replay;
pub mod server;
pub mod shuckle_client;
pub mod store;
pub mod verify;
