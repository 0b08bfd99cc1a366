//! eggs-perf: measures the machine's limits and eggsfs on a fresh local
//! cluster in a temporary folder, in one run, and prints one table —
//! figure, eggsfs, limit, ratio, target — also written with the machine's
//! description to `perf/results/<date>-<mode>.md` and `.csv`.
//!
//! Build everything first: `cargo build --release --workspace`; then
//! `cargo run --release -p perf --bin eggs-perf -- --short` (or `--full`).
//! Exits 1 when any figure could not be measured, after saying why.

mod plan;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "eggs-perf", about = "Measure eggsfs against this machine's own limits")]
struct Args {
    /// Short mode (at most about 2 minutes; the default).
    #[arg(long, conflicts_with_all = ["full", "datapath", "metadata", "gcd"])]
    short: bool,
    /// Only the data path (blockd, put, cat, concurrent and degraded cats) at 1 GiB.
    #[arg(long, conflicts_with = "full")]
    datapath: bool,
    /// Only the metadata path at full size: UDP echo, fsync, metad (also with 1 M files), the CDC.
    #[arg(long, conflicts_with_all = ["full", "datapath", "gcd"])]
    metadata: bool,
    /// Only gcd's rates: collection, scrub and migration, against the disk.
    #[arg(long, conflicts_with_all = ["full", "datapath"])]
    gcd: bool,
    /// Full mode: every block size and connection count, 1 GiB files, a shard with 1 M files.
    #[arg(long)]
    full: bool,
    /// Folder in which the temporary data folder is made (default: the system's temporary folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the results are written (default: this crate's `results/`).
    #[arg(long)]
    results: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let plan = if args.full {
        plan::Plan::full()
    } else if args.datapath {
        plan::Plan::datapath()
    } else if args.metadata {
        plan::Plan::metadata()
    } else if args.gcd {
        plan::Plan::gcd()
    } else {
        plan::Plan::short()
    };
    let results = args.results.unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/results")));
    match run::run(&plan, args.dir.as_deref(), &results) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("eggs-perf: {error:#}");
            ExitCode::from(1)
        }
    }
}
