//! Every limit of the system, in one place, with its unit and its reason.
//!
//! Relations between limits are checked at compile time at the bottom of this
//! file; fixed wire layouts are checked beside their definitions.

/// The largest UDP datagram we send or accept, in bytes. 1500 (Ethernet MTU)
/// − 20 (IPv4 header) − 8 (UDP header): no jumbo frames are assumed, so no
/// datagram is ever fragmented.
pub const UDP_DATAGRAM_BYTES_MAX: usize = 1472;

/// Longest directory entry name, in bytes of UTF-8.
pub const NAME_BYTES_MAX: usize = 255;

/// Largest block a block service stores, in bytes. The size travels as a u32
/// on the wire; 100 MB keeps a block's transfer time bounded on slow links.
pub const BLOCK_SIZE_BYTES_MAX: u32 = 100_000_000;

/// Data + parity blocks in one span. Parity mode packs D and P in one nibble
/// each; 16 keeps a span's block list inside one datagram.
pub const SPAN_BLOCKS_MAX: usize = 16;

/// Most data blocks in one span (low nibble of the parity mode).
pub const DATA_BLOCKS_MAX: usize = 15;

/// Most parity blocks in one span (high nibble of the parity mode).
pub const PARITY_BLOCKS_MAX: usize = 15;

/// Largest span: every data block at the block size limit.
pub const SPAN_SIZE_BYTES_MAX: u64 = DATA_BLOCKS_MAX as u64 * BLOCK_SIZE_BYTES_MAX as u64;

/// Largest inline span (storage class 0): it travels inside add_eden_span
/// and fetch_spans datagrams, so it must leave room for their fixed parts.
pub const INLINE_SPAN_BYTES_MAX: usize = 1024;

/// Largest directory policy blob, in bytes (stat and set_directory_policy
/// carry it in one datagram).
pub const POLICY_BYTES_MAX: usize = 255;

/// Longest human-readable text in an error or CDC response, in bytes.
pub const ERROR_TEXT_BYTES_MAX: usize = 255;

/// Longest block service host name (its failure domain), in bytes.
pub const HOST_NAME_BYTES_MAX: usize = 64;

/// One nanosecond-based duration unit, to keep the constants below legible.
pub const NS_PER_SECOND: u64 = 1_000_000_000;

/// An eden file may be expunged this long after its last successful write step.
pub const EDEN_DEADLINE_NS: u64 = 3600 * NS_PER_SECOND;

/// A block service refuses to create blocks whose id time is older than this
/// (replay protection for write certificates).
pub const BLOCK_ID_PAST_WINDOW_NS: u64 = 22 * 3600 * NS_PER_SECOND;

/// A block service refuses to create blocks whose id time is this far ahead
/// of its clock (bounds the clock skew we tolerate).
pub const BLOCK_ID_FUTURE_WINDOW_NS: u64 = 2 * 3600 * NS_PER_SECOND;

/// A dead directory entry may be purged only once it is this old.
pub const PURGE_AGE_MIN_NS: u64 = 3600 * NS_PER_SECOND;

/// Block services announce themselves to shuckle this often.
pub const SHUCKLE_ANNOUNCE_PERIOD_NS: u64 = 60 * NS_PER_SECOND;

/// Shards refresh their block service list from shuckle this often.
pub const SHARD_REFRESH_PERIOD_NS: u64 = 60 * NS_PER_SECOND;

/// A block service without a good check for this long is stale.
pub const BLOCK_SERVICE_STALE_AFTER_NS: u64 = 600 * NS_PER_SECOND;

/// Free space a block service keeps for itself by default (`blockd
/// --reserve-bytes`): it reports only the space above this as free, so
/// with less it is **full** (free 0: shuckle gives it no write weight).
/// About two and a half of the largest blocks, a rounding error on a real
/// disk, and room for the file system's own metadata.
pub const BLOCK_SERVICE_RESERVE_BYTES_DEFAULT: u64 = 256 << 20;

/// A block service looks at its free space this often, and tells shuckle
/// at once (a registration out of turn) when it becomes full or stops
/// being full; a write that finds the disk full tells it without waiting.
pub const BLOCK_SERVICE_SPACE_POLL_NS: u64 = NS_PER_SECOND;

/// Shuckle checks a known block service out of turn on its registration at
/// most this often (a registration carries no news shuckle could trust
/// without a check, so every one may ask for one; this bounds what a
/// flood of them costs).
pub const REGISTRATION_CHECK_INTERVAL_MIN_NS: u64 = NS_PER_SECOND / 4;

/// Authenticated shuckle requests carry their send time; shuckle refuses ones
/// further than this from its clock (replay protection).
pub const AUTHENTICATED_REQUEST_SKEW_NS_MAX: u64 = 60 * NS_PER_SECOND;

/// A privileged datagram (CDC → shard, shard → shuckle, and their answers)
/// sent further than this from the receiver's clock is stale and dropped:
/// the freshness window of replay protection (`wire::replay`). It bounds
/// the clock skew between daemons we tolerate, and must exceed a
/// requester's deadline, since a requester stamps a request once and
/// retransmits the same bytes until its deadline.
pub const PRIVILEGED_DATAGRAM_WINDOW_NS: u64 = 60 * NS_PER_SECOND;

/// Privileged requests a server remembers within the window (with their
/// answers, at most one datagram each: a bound of about 24 MB). Filling it
/// raises the replay floor rather than forgetting a request that could
/// still be replayed; at the CDC's pace it covers the window many times.
pub const REPLAY_RECORD_ENTRIES_MAX: usize = 16 * 1024;

/// How long a shard remembers which file a create_small_file id made, so
/// a re-send (also one after a restart of the shard) is answered with that
/// file: longer than a client keeps re-sending.
pub const SMALL_FILE_CREATE_MEMORY_NS: u64 = 60 * NS_PER_SECOND;

/// First client request timeout; doubled (with jitter) on every retry.
pub const CLIENT_TIMEOUT_INITIAL_NS: u64 = 100_000_000;

/// Longest single wait of a client request.
pub const CLIENT_TIMEOUT_MAX_NS: u64 = 2 * NS_PER_SECOND;

/// A client gives up on a request after this long in total.
pub const CLIENT_REQUEST_DEADLINE_NS: u64 = 30 * NS_PER_SECOND;

/// Number of metadata shards (shard ids are one byte).
pub const SHARD_COUNT: usize = 256;

/// Most block services shuckle lists in one paginated response: bounded so a
/// page is one datagram; also the bound of one shard's placement table.
pub const BLOCK_SERVICES_MAX: usize = 1 << 16;

/// Most block services one add_eden_span may ask placement to avoid (the
/// services a client just failed to write to): a client that failed on
/// more than this many services has a bigger problem than placement, and
/// the bound keeps the largest request within one datagram.
pub const ADD_SPAN_BLACKLIST_MAX: usize = 16;

/// Default UDP port of shard 0; shard N listens on this + N.
pub const SHARD_PORT_BASE: u16 = 22272;

/// Most per-transaction records (create_unlinked_dir, inject_dirent,
/// acquire_dirent) a shard forgets while handling one CDC request whose
/// `forget_below` passed them; the rest go with the next requests. Above
/// the three records a transaction leaves, so forgetting outpaces them.
pub const CDC_FORGET_PER_REQUEST_MAX: usize = 16;

/// Default UDP port of the CDC.
pub const CDC_PORT_DEFAULT: u16 = 36137;

/// Default HTTP and UDP port of shuckle.
pub const SHUCKLE_PORT_DEFAULT: u16 = 5000;

/// Longest HTTP request head a daemon's `/metrics` endpoint reads; a
/// longer one is answered 431 and closed.
pub const METRICS_REQUEST_HEAD_BYTES_MAX: usize = 8 << 10;

/// Time a `/metrics` client has to send its request head and take the
/// answer (each, from the connection's start).
pub const METRICS_IO_TIMEOUT_NS: u64 = 5 * NS_PER_SECOND;

/// `/metrics` connections served at once; more are answered 503 and closed.
pub const METRICS_CONNECTIONS_MAX: usize = 8;

const _: () = assert!(DATA_BLOCKS_MAX + PARITY_BLOCKS_MAX >= SPAN_BLOCKS_MAX);
const _: () = assert!(DATA_BLOCKS_MAX < 16 && PARITY_BLOCKS_MAX < 16);
const _: () = assert!(NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(POLICY_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(ERROR_TEXT_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(SPAN_SIZE_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(INLINE_SPAN_BYTES_MAX + 128 <= UDP_DATAGRAM_BYTES_MAX);
const _: () = assert!(BLOCK_ID_FUTURE_WINDOW_NS < BLOCK_ID_PAST_WINDOW_NS);
const _: () = assert!(BLOCK_SERVICE_SPACE_POLL_NS < SHUCKLE_ANNOUNCE_PERIOD_NS);
const _: () = assert!(REGISTRATION_CHECK_INTERVAL_MIN_NS <= BLOCK_SERVICE_SPACE_POLL_NS);
const _: () = assert!(SHARD_PORT_BASE as usize + SHARD_COUNT <= u16::MAX as usize);
const _: () = assert!(CLIENT_TIMEOUT_INITIAL_NS < CLIENT_TIMEOUT_MAX_NS);
const _: () = assert!(CLIENT_REQUEST_DEADLINE_NS < PRIVILEGED_DATAGRAM_WINDOW_NS);
const _: () = assert!(CLIENT_REQUEST_DEADLINE_NS < SMALL_FILE_CREATE_MEMORY_NS);
const _: () = assert!(REPLAY_RECORD_ENTRIES_MAX * UDP_DATAGRAM_BYTES_MAX <= 32 << 20);
