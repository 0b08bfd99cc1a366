//! `blockd`: the eggsfs block service. One runs per disk; it stores blocks
//! (opaque, write-once byte blobs named by a block id) and speaks the
//! prototype's TCP block protocol byte for byte (DESIGN.md §6,
//! [`wire::block`]): write, fetch, crc, erase, stats.
//!
//! A block is either fully written and durable or absent: writes go to a
//! temporary file, are checked against the CRC in the certificate, made
//! durable, and renamed into place before the proof is sent.
//!
//! - [`store`]: the folder layout, the secret key under its lock, start-up
//!   cleanup and counting.
//! - [`request`]: the decisions (certificate, creation window, size limit,
//!   what an existing block means) and the reasons for refusals.
//! - [`server`]: one glommio executor's accept loop and connection handling.
//! - [`metrics`]: counters, gauges and latency histograms (lock-free),
//!   served by the shared `/metrics` endpoint (`daemon::metrics`).
//! - [`registration`]: the announcement to shuckle: periodic, and out of
//!   turn when the service becomes full or stops being full.
//! - [`space`]: when the service is full (free space under its reserve, or
//!   a write found the disk full), which its `stats` report as no free
//!   space, so shuckle gives it no write weight.
//!
//! `main.rs` parses flags, prepares the folder, binds one `SO_REUSEPORT`
//! listener per executor, starts one executor per core, and waits for
//! SIGTERM/SIGINT.
//!
//! # Threads
//!
//! One glommio executor per core (`--cores`, default all the cores this
//! process may run on), each with its own listener and io_uring rings,
//! pinned to its core when there is one per core (with fewer, as when
//! several daemons share a machine, the kernel places them); nothing on the request path takes a lock (shared counters are
//! relaxed atomics). Besides them: the main thread (waits for signals with
//! `sigwait`), a registration thread (one datagram a minute, a `statvfs`
//! a second, woken at once by a write that found the disk full) and, with
//! `--metrics`, the metrics thread (`daemon::metrics`). Renames, unlinks and `statvfs` are
//! metadata calls; renames and unlinks go to glommio's blocking pool so that
//! a slow directory never stalls an executor.
//!
//! # Signals
//!
//! SIGTERM and SIGINT are blocked in every thread (the mask is set before
//! any thread starts) and taken by the main thread with `sigwait`, so no
//! signal handler runs and no crate is needed for it. The main thread then
//! closes its end of one socket pair per executor; each executor reads the
//! end-of-stream through io_uring like any socket and stops (see
//! [`server`]).
//!
//! # io_uring memory
//!
//! Each executor registers [`IO_MEMORY_BYTES`] of buffers with io_uring.
//! Registered memory counts against `RLIMIT_MEMLOCK` for unprivileged users
//! (8 MiB on the reference machine); 4 MiB per executor keeps two executors
//! inside it, and buffers beyond the pool fall back to ordinary aligned
//! allocations, which io_uring handles as well, only without the
//! pre-registration.
//!
//! # Measurements
//!
//! The numbers behind the chunk size, the (former) write-behind depth and the choice
//! of buffered (once O_DIRECT) writes and page-cache reads are in [`server`]'s module
//! documentation, next to the code they justify.

pub mod metrics;
pub mod registration;
pub mod request;
pub mod server;
pub mod space;
pub mod store;

/// io_uring buffer memory registered per executor (see the crate docs).
pub const IO_MEMORY_BYTES: usize = 4 << 20;
