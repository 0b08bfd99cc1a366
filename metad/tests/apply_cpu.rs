//! The CPU one durable create costs in the store and the request logic
//! alone (issue 12): create_small_file applied in batches and committed,
//! as the writer does, on one thread, without sockets, the journal or its
//! checkpoints, so that two builds can be compared paired with little
//! noise (`perf/results/2026-11-28-s16-md17b.md`). Not a benchmark suite
//! (that is `perf/`), no timed assertion. Run with
//! `cargo test --release -p metad --test apply_cpu -- --ignored --nocapture`;
//! `APPLY_CPU_FILL=N` first fills the shard with N files (not measured),
//! `APPLY_CPU_CREATES=N` creates that many measured (default 300 000),
//! `APPLY_CPU_DIR=PATH` puts the store under PATH (default /tmp),
//! `APPLY_CPU_PIN=N` keeps a read transaction open over N commits at a
//! time (a new one every N commits, the old one then dropped), as the
//! journal's checkpoints pin a snapshot for a period: LMDB then reuses no
//! page freed since, so every commit writes pages not touched for up to N
//! commits (0, the default: no pin, LMDB reuses the pages it just freed).

use heed::{EnvFlags, FlagSetMode};
use metad::block_services::BlockServiceTable;
use metad::logic::{Durations, Env, MutationEffects, Shard};
use metad::store::Store;
use rand::{RngCore, SeedableRng};
use wire::Name;
use wire::crc::crc32c;
use wire::ids::{EggsTime, InodeId, InodeType};
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::mac::SecretKey;
use wire::shard::*;
use wire::span::InlineBytes;
use zerocopy::byteorder::little_endian::{U32, U64};

/// Creates per commit: what the writer commits at 64 clients.
const PER_COMMIT: u64 = 29;
/// Creates per `now`: a receive's datagrams share their time.
const PER_RECEIVE: u64 = 4;

fn thread_cpu_seconds() -> f64 {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a clock read into a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    time.tv_sec as f64 + time.tv_nsec as f64 * 1e-9
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// `count` creates named `<prefix>-<n>` in the root, committed every
/// [`PER_COMMIT`]; the thread CPU seconds they took.
fn creates(store: &Store, shard: &Shard, prefix: &str, count: u64, now: &mut EggsTime) -> f64 {
    let table = BlockServiceTable::new(Vec::new());
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let contents = vec![0x5au8; 100];
    let crc = crc32c(&contents);
    let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let mut effects = daemon::journal::Effects::default();
    let pin_commits = env_number("APPLY_CPU_PIN", 0);
    let mut pinned = None;
    let started = thread_cpu_seconds();
    let mut made = 0u64;
    let mut commits = 0u64;
    while made < count {
        if pin_commits > 0 && commits.is_multiple_of(pin_commits) {
            pinned = Some(store.read_txn().unwrap());
        }
        commits += 1;
        let mut txn = store.write_txn().unwrap();
        let mut outcome = MutationEffects::default();
        let mut env = Env { now: *now, block_services: &table, durations: Durations::default() };
        for _ in 0..PER_COMMIT.min(count - made) {
            if made.is_multiple_of(PER_RECEIVE) {
                *now = now.saturating_add_ns(1000);
                env.now = *now;
            }
            let file_name = format!("{prefix}-{made}");
            let request = ShardRequest::CreateSmallFile(CreateSmallFileReq {
                head: CreateSmallFileReqHead {
                    parent: InodeId::ROOT,
                    create_id: U64::new(rng.next_u64()),
                    crc: U32::new(crc),
                    inode_type: InodeType::File,
                },
                name: Name::new(file_name.as_bytes()).unwrap(),
                contents: InlineBytes::new(&contents).unwrap(),
            });
            shard.handle_mutation(store, &mut txn, &env, &mut rng, &mut outcome, made, &request, &mut out).unwrap();
            made += 1;
        }
        store.take_effects(&mut effects);
        txn.commit().unwrap();
        store.after_commit();
    }
    drop(pinned);
    thread_cpu_seconds() - started
}

#[test]
#[ignore = "prints a CPU figure; run by hand"]
fn cpu_per_create_in_the_store_and_the_logic() {
    let parent = std::env::var("APPLY_CPU_DIR").unwrap_or_else(|_| "/tmp".into());
    let folder = tempfile::Builder::new().prefix("apply-cpu-").tempdir_in(parent).unwrap();
    let store = Store::open(folder.path()).unwrap();
    // As under the journal: commits do not sync (the journal makes them
    // durable); no sync is measured here.
    // SAFETY: no transaction is open; the flag only skips syncs.
    unsafe { store.env.set_flags(EnvFlags::NO_SYNC, FlagSetMode::Enable).unwrap() };
    let mut now = EggsTime::now();
    let shard = Shard::open(&store, 1, &SecretKey([7; 16]), now).unwrap();
    store.record(true);
    let fill = env_number("APPLY_CPU_FILL", 0);
    if fill > 0 {
        creates(&store, &shard, "fill", fill, &mut now);
    }
    let count = env_number("APPLY_CPU_CREATES", 300_000);
    // In ten parts: the median part is a figure that a burst of another
    // process's work on a shared machine moves less than the total.
    let part = (count / 10).max(1);
    let mut parts: Vec<f64> = (0..10)
        .map(|index| creates(&store, &shard, &format!("load{index}"), part, &mut now) * 1e6 / part as f64)
        .collect();
    let total = parts.iter().sum::<f64>() / parts.len() as f64;
    parts.sort_by(f64::total_cmp);
    let median = (parts[4] + parts[5]) / 2.0;
    println!("apply_cpu fill={fill} creates={count} cpu_us_per_create={total:.3} median_part_us={median:.3}");
}
