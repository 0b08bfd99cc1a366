//! `cdcd`, the cross-directory coordinator (DESIGN.md §5).
//!
//! The CDC runs the operations that touch two directories — mkdir, rmdir,
//! moves between directories, purging a dead entry that owns a file of
//! another shard — as durable multi-step transactions over privileged,
//! MAC'd shard requests.
//!
//! - [`txn`]: each transaction kind as a plain state machine (no I/O).
//! - [`coordinator`]: drives transactions to their end over
//!   [`shards::Shards`], many at once: each waits for its locks
//!   ([`locks`]: per directory entry, and a tree lock that rmdir and mv dir
//!   take alone), persists its state at fences (its plan, after an answer a
//!   re-send might not reproduce, before its first release: see the
//!   coordinator's doc) through the group commit ([`commit`]) into
//!   [`store`] (LMDB, CRC-sealed values), and retries timeouts with
//!   backoff; resumes unfinished transactions at start.
//! - [`udp`]: the real [`shards::Shards`]: UDP datagrams to the shards, whose
//!   addresses come from flags, shuckle or the defaults, sent through the
//!   one datagram requester (`daemon::udp`) under the step's request id.
//! - [`server`]: the CDC's own UDP port: decodes client requests, answers
//!   retransmissions from the store, queues new transactions.
//! - [`metrics`]: requests, statuses and latencies per kind, transactions
//!   in flight, the group commit's batch sizes and durations.
//!
//! Tested over the real shard logic: `tests/sim` runs metad's request
//! handlers in-process on temporary LMDB environments behind a seeded
//! faulty network in virtual time; `tests/paths.rs` drives every success
//! and failure path and chosen crashes through it, `tests/simulation.rs`
//! concurrency, crashes at any moment and linearizability. There is no
//! fake shard.
pub mod commit;
pub mod coordinator;
pub mod locks;
pub mod metrics;
pub mod server;
pub mod shards;
pub mod store;
pub mod txn;
pub mod udp;
