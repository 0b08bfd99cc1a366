//! `cdcd`, the cross-directory coordinator (DESIGN.md §5).
//!
//! The CDC runs the operations that touch two directories — mkdir, rmdir,
//! moves between directories, purging a dead entry that owns a file of
//! another shard — as durable multi-step transactions over privileged,
//! MAC'd shard requests.
//!
//! - [`txn`]: each transaction kind as a plain state machine (no I/O).
//! - [`coordinator`]: drives a transaction to its end over [`shards::Shards`],
//!   persisting it in [`store`] (LMDB) before every mutation, retrying
//!   timeouts with backoff; resumes unfinished transactions at start.
//! - [`udp`]: the real [`shards::Shards`]: UDP datagrams to the shards, whose
//!   addresses come from flags, shuckle or the defaults, sent through the
//!   one datagram requester (`daemon::udp`) under the step's request id.
//! - [`server`]: the CDC's own UDP port: decodes client requests, answers
//!   retransmissions from the store, queues new transactions.
//!
//! Transactions run one at a time (serially), which is what the prototype
//! did and is enough for a coordinator of rare directory operations.

pub mod coordinator;
pub mod server;
pub mod shards;
pub mod store;
pub mod txn;
pub mod udp;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;
