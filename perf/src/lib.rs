//! perf: how fast eggsfs is, measured against the machine it runs on.
//!
//! Two parts:
//!
//! - criterion micro-benchmarks in `benches/` (wire encode/decode, CRC32C,
//!   Reed–Solomon), run with `cargo bench -p perf`;
//! - `eggs-perf`, one command that measures the machine's limits (loopback
//!   TCP and UDP, the data folder's write bandwidth and fsync rate, CRC32C and
//!   Reed–Solomon speed) and then the real daemons started from the same
//!   target directory, in the same run, so every eggsfs figure comes with the
//!   limit it should be compared to.
//!
//! The library holds the measurements, each a plain function over a socket
//! address or a folder that returns a number or the reason it could not be
//! measured; `main.rs` only decides the plan and prints the table.
//!
//! Nothing here is a test: perf numbers are never pass/fail.

pub mod blocks;
pub mod cdc;
pub mod error;
pub mod files;
pub mod gcd;
pub mod limits;
pub mod machine;
pub mod mount;
pub mod process;
pub mod report;
pub mod shard;
pub mod udp;

pub use error::PerfError;
