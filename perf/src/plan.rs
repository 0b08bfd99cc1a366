//! How much each mode measures.

use std::time::Duration;

use perf::limits::MIB;

/// The sizes and durations of one run.
pub struct Plan {
    pub mode: &'static str,
    /// Loopback TCP, per stream count.
    pub tcp: Duration,
    /// Each UDP / shard read measurement, per client count.
    pub udp: Duration,
    /// Client counts for the UDP baseline and the shard reads.
    pub client_counts: Vec<usize>,
    pub sequential_write_bytes: usize,
    pub fsync: Duration,
    /// CRC32C and each Reed–Solomon measurement.
    pub cpu: Duration,
    /// Parity modes for the Reed–Solomon speed.
    pub parities: Vec<(u8, u8)>,
    pub block_sizes: Vec<usize>,
    pub block_connections: Vec<usize>,
    /// Each phase (write, fetch) of each block cell.
    pub block_phase: Duration,
    /// Each create measurement.
    pub creates: Duration,
    /// Client counts for durable creates.
    pub create_clients: Vec<usize>,
    /// Runs in a row of the creates with the most clients.
    pub create_runs: usize,
    /// Files in the shard before the second create measurement.
    pub shard_files: u64,
    /// Longest time spent filling the shard.
    pub fill_max: Duration,
    /// mkdir and mv measurements.
    pub cdc: Duration,
    pub cdc_clients: usize,
    /// Files prepared for the mv measurement.
    pub mv_files: u64,
    /// Size of the file for put / cat.
    pub file_bytes: usize,
    /// Healthy cats of that file (the median is reported).
    pub cat_repeats: usize,
    /// `eggs put` runs, each right after a sequential write + fsync of
    /// `sequential_write_bytes` or the put's block bytes (1.5 × the file),
    /// whichever is larger, written twice in a row (the disk's rate swings by a third
    /// within minutes here, and a first write may meet page-cache memory
    /// the host took back); the target row is the median put against the
    /// median repeated write.
    pub put_repeats: usize,
    /// For the most clients: stat runs, each right after a UDP echo run
    /// with as many clients (the row is the median stat against the
    /// median echo of those runs; a single pair minutes apart swung by a
    /// fifth between quiet runs).
    pub stat_repeats: usize,
    /// Concurrent cats of different files, and each file's size.
    pub concurrent_cats: usize,
    pub concurrent_file_bytes: usize,
    /// Only the data path: no UDP, shard or CDC figures.
    pub data_only: bool,
    /// Only the metadata path: UDP, shard and CDC figures (no blockd, put,
    /// cat or mount).
    pub metadata_only: bool,
    /// Only gcd's rates (and the disk limits they are compared to).
    pub gc_only: bool,
    /// gcd's rates (`None`: not measured in this mode).
    pub gc: Option<perf::gcd::GcPlan>,
}

impl Plan {
    pub fn short() -> Self {
        Self {
            mode: "short",
            tcp: Duration::from_millis(1500),
            udp: Duration::from_secs(1),
            client_counts: vec![1, 8, 64],
            sequential_write_bytes: 512 * MIB,
            fsync: Duration::from_millis(1500),
            cpu: Duration::from_millis(500),
            parities: vec![(4, 2)],
            block_sizes: vec![MIB, 64 * MIB],
            block_connections: vec![1, 16],
            block_phase: Duration::from_millis(1500),
            creates: Duration::from_secs(2),
            create_clients: vec![1, 64],
            create_runs: 1,
            shard_files: 20_000,
            fill_max: Duration::from_secs(15),
            cdc: Duration::from_secs(2),
            cdc_clients: 8,
            mv_files: 2_000,
            file_bytes: 256 * MIB,
            cat_repeats: 1,
            put_repeats: 1,
            stat_repeats: 1,
            concurrent_cats: 4,
            concurrent_file_bytes: 64 * MIB,
            data_only: false,
            metadata_only: false,
            gc_only: false,
            gc: Some(perf::gcd::GcPlan { dead_files: 50, dead_file_bytes: 4 * MIB, living_bytes: 256 * MIB }),
        }
    }

    pub fn full() -> Self {
        Self {
            mode: "full",
            tcp: Duration::from_secs(3),
            udp: Duration::from_secs(3),
            client_counts: vec![1, 2, 4, 8, 16, 32, 64],
            sequential_write_bytes: 2048 * MIB,
            fsync: Duration::from_secs(3),
            cpu: Duration::from_secs(1),
            parities: vec![(4, 2), (8, 3), (10, 4)],
            block_sizes: vec![MIB, 4 * MIB, 16 * MIB, 64 * MIB],
            block_connections: vec![1, 2, 4, 8, 16],
            block_phase: Duration::from_secs(3),
            creates: Duration::from_secs(5),
            create_clients: vec![1, 8, 64],
            create_runs: 3,
            shard_files: 1_000_000,
            fill_max: Duration::from_secs(900),
            cdc: Duration::from_secs(5),
            cdc_clients: 8,
            mv_files: 20_000,
            file_bytes: 1024 * MIB,
            cat_repeats: 3,
            put_repeats: 3,
            stat_repeats: 5,
            concurrent_cats: 4,
            concurrent_file_bytes: 256 * MIB,
            data_only: false,
            metadata_only: false,
            gc_only: false,
            gc: Some(perf::gcd::GcPlan { dead_files: 200, dead_file_bytes: 4 * MIB, living_bytes: 1024 * MIB }),
        }
    }

    /// The data path only, at issue 11's sizes: loopback TCP and the disk,
    /// blockd write/fetch, put and cat of 1 GiB (cat three times), 4
    /// concurrent cats of 256 MiB files, the degraded cat.
    pub fn datapath() -> Self {
        Self {
            mode: "datapath",
            client_counts: vec![],
            parities: vec![(4, 2)],
            create_clients: vec![],
            data_only: true,
            gc: None,
            ..Self::full()
        }
        .with_blocks(vec![MIB, 64 * MIB], vec![1, 16])
    }

    /// The metadata path at full size (issue 12): UDP echo, fsync, metad
    /// stat/resolve and durable creates (also in a shard of 1 M files),
    /// CDC mkdir and mv.
    pub fn metadata() -> Self {
        Self { mode: "metadata", metadata_only: true, gc: None, ..Self::full() }
    }

    /// gcd's rates at full size (issue 13).
    pub fn gcd() -> Self {
        Self { mode: "gcd", gc_only: true, client_counts: vec![], ..Self::full() }
    }

    fn with_blocks(mut self, sizes: Vec<usize>, connections: Vec<usize>) -> Self {
        self.block_sizes = sizes;
        self.block_connections = connections;
        self.block_phase = Duration::from_secs(2);
        self.sequential_write_bytes = 1024 * MIB;
        self
    }
}
