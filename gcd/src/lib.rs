//! gcd: the garbage collector, scrubber and migrator of eggsfs.
//!
//! It finds the shards, the CDC and the block services through shuckle (as
//! every daemon does) and works in the background, in cycles:
//!
//! 1. **Eden collection.** Every eden file past its deadline loses its
//!    spans, last first: expunge_eden_span yields erase certificates, the
//!    blocks are erased on their block services, certify_expunge carries
//!    the erase proofs, then expunge_eden_file. A block service that is
//!    down or refuses leaves the span condemned and listed: retried next
//!    cycle, never forgotten.
//! 2. **Retention.** Dead versions that the directory's retention
//!    (`wire::policy::Retention`, inherited like the write policy) lets go
//!    are purged: a local owning file goes to eden (and is collected in the
//!    same cycle), a remote one through the CDC's purge-remote-file.
//! 3. **Directory collection.** A removed (rmdir'd: null parent)
//!    directory keeps its own policy's retention, else its old parent's
//!    (found through the parent's dead entry naming it; for a parent
//!    removed too, that parent's by the same rule, up the chain), else the
//!    default. Its dead versions follow that retention; once it has
//!    passed since the removal, every version goes (files to eden, as
//!    above), then the record itself (purge_directory, which the shard
//!    refuses unless the directory is removed, empty and past its purge
//!    age), and only then the parent's dead entry naming it.
//! 4. **Migration.** Blocks on terminal (drained then terminated) or
//!    long-stale block services are rebuilt from D of their spans' other
//!    blocks (data blocks first, fetched in parallel over the client's
//!    pooled connections into reused buffers, 16 blocks in flight;
//!    Reed–Solomon off the runtime's threads, one rebuild per core, with a
//!    decoder kept per thread; the span CRC combined from the data blocks'
//!    CRCs, so the span is put together only to encode a parity block) onto a service that holds no other block of the
//!    span, and swapped in with repair_block. A block already swapped out
//!    (condemned in its repair's eden file) is left to eden collection.
//! 5. **Scrub**, in its own task: every block's CRC is checked on its block
//!    service (blockd's `c` request) at a rate limit per disk; a bad or
//!    missing block is rebuilt and swapped in like a migration.
//!
//! The decisions are plain code over inputs and "now" ([`plan`]); the I/O
//! around them is [`collector`]. gcd keeps no state of its own: the shards
//! are the state, and every step is an idempotent request, so gcd can be
//! killed at any moment and a restart finishes what was half done.

pub mod blocks;
pub mod collector;
pub mod metrics;
pub mod plan;
