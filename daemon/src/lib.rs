//! `daemon`: the plumbing every eggsfs daemon shares, written once.
//!
//! Each daemon's `main.rs` is flags and wiring on top of this crate:
//!
//! - [`folder`]: folder flags made absolute before anything opens them
//!   (glommio cannot open relative directory paths on some kernels), and the
//!   folder lock (`flock` on `FOLDER/lock`, held for life, naming the holder).
//! - [`keyfile`]: key files (16 random bytes, 0600), created atomically
//!   (staged and hard-linked) when missing.
//! - [`log`]: log set-up on stderr, tagged with the process and shard.
//! - [`exit`]: the one exit-code scheme (0 clean stop, 1 runtime failure,
//!   2 usage or configuration, 3 a fault inside the store's map).
//! - [`lmdb`] and [`fault`]: an LMDB store's structural check before it
//!   is mapped (page and node headers LMDB trusts), and the SIGSEGV/SIGBUS
//!   guard that turns a fault inside the map into one line, exit 3 and a
//!   marker the next start refuses (issue 17 F).
//! - [`journal`]: the write-ahead journal under an LMDB store (records of
//!   each commit's effects, one small sync per batch, checkpoints that make
//!   LMDB's own file trustworthy after power loss, recovery at open).
//! - [`signals`]: SIGTERM/SIGINT taken by `sigwait`, never by a handler.
//! - [`address`]: address flags: host names resolved at start, `--advertise`
//!   (a wildcard listen address needs it), the source of outgoing requests.
//! - [`announce`]: the `listening <proto> <ip:port>` and `ready` lines.
//! - [`bind`]: the SO_REUSEPORT bind with its port-sharing probe.
//! - [`metrics`]: the Prometheus `/metrics` endpoint (`--metrics ADDR`) and
//!   the lock-free metric types the daemons update on their request paths.
//! - [`udp`]: the one datagram requester (retries, request-id
//!   demultiplexing) and its accept rule, used by the client library, cdcd,
//!   metad's shuckle client, gcd and perf's load generator.
//!
//! Daemons depend on this crate and on `wire`, never on the client library.
pub mod address;
pub mod announce;
pub mod bind;
pub mod exit;
pub mod fault;
pub mod folder;
pub mod journal;
pub mod keyfile;
pub mod lmdb;
pub mod log;
pub mod metrics;
pub mod signals;
pub mod udp;

pub use exit::{Failure, OrUsage, exit_with};
