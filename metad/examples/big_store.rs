//! Writes a shard store of N files straight into LMDB (no daemon), for
//! measuring the start-up structural check (`daemon::lmdb::check`) on a
//! realistic size: each file has a living entry in the root, a file
//! record, one 4+2 span and six reverse-block records.
//!
//! `cargo run --release -p metad --example big_store -- FOLDER [FILES]`
//! (FILES defaults to 1 000 000). Then time `metad --verify FOLDER` or a
//! start; `big_store --check FOLDER` times only the structural check.

use std::path::Path;
use std::time::Instant;

use metad::store::*;
use wire::hash::HashMode;
use wire::ids::{BlockId, BlockServiceId, EggsTime, InodeId, InodeType};
use wire::span::Parity;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--check") {
        let folder = Path::new(&args[1]);
        let cpu = cpu_seconds();
        let started = Instant::now();
        let shape = daemon::lmdb::check(folder).expect("intact").expect("a store");
        println!(
            "check: {:.3} s wall, {:.3} s CPU, {} pages of {} bytes in the file, {} checked, {} trees",
            started.elapsed().as_secs_f64(),
            cpu_seconds() - cpu,
            shape.pages,
            shape.page_bytes,
            shape.pages_checked,
            shape.trees
        );
        return;
    }
    let folder = Path::new(args.first().expect("usage: big_store FOLDER [FILES]"));
    let files: u64 = args.get(1).map_or(1_000_000, |text| text.parse().expect("FILES"));
    let store = Store::open(folder).expect("open");
    let now = EggsTime::now();
    let batch = 20_000;
    let mut written = 0;
    while written < files {
        let mut txn = store.write_txn().expect("txn");
        for i in written..(written + batch).min(files) {
            let inode = InodeId::compose(InodeType::File, 0, 1000 + i).unwrap();
            let name = format!("file-{i:08}");
            let hash = HashMode::Md5Prefix.hash(name.as_bytes());
            let living = LivingRecord { creation_time: now, inode: inode.with_owning(true) };
            store.living.put(&mut txn, &living_key(InodeId::ROOT, hash, name.as_bytes()), &living.encode()).unwrap();
            let file = FileRecord { mtime: now, size: 4 << 20, inode_type: InodeType::File };
            store.files.put(&mut txn, &inode_key(inode), &file.encode()).unwrap();
            let blocks: Vec<StoredBlock> = (0..6u64)
                .map(|b| StoredBlock {
                    block_service_id: BlockServiceId::new(1 + (i + b) % 24),
                    block_id: BlockId::new((now.get() & !0xff) + ((i * 6 + b) << 8)),
                    crc: (i * 7 + b) as u32,
                    size: 1 << 20,
                })
                .collect();
            for block in &blocks {
                store
                    .reverse_blocks
                    .put(&mut txn, &reverse_key(block.block_service_id, block.block_id), &encode_reverse(inode, 0))
                    .unwrap();
            }
            let span = SpanRecord {
                size: 4 << 20,
                crc: i as u32,
                state: SpanState::Clean,
                payload: SpanPayload::Blocks { storage_class: 2, parity: Parity::new(4, 2).unwrap(), blocks },
            };
            store.spans.put(&mut txn, &span_key(inode, 0), &span.encode()).unwrap();
        }
        txn.commit().expect("commit");
        written = (written + batch).min(files);
    }
    let size = std::fs::metadata(folder.join("data.mdb")).map(|m| m.len()).unwrap_or(0);
    println!("{files} files, data.mdb {} MB", size / 1_000_000);
}

/// This process's user + system CPU seconds.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
