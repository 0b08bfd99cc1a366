//! kill -9 during a create/link/rename workload from 8 clients, then
//! restart: every acknowledged change is there and the state is consistent.
//! The kills land before the first checkpoint after a start (records
//! only), after seconds of load (several checkpoints, many records), and
//! with a 1 MiB journal that wraps around and fills under the load; the
//! journal's metrics prove which.

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wire::ids::{EggsTime, InodeId, InodeType};
use wire::shard::*;
use wire::span::SpanBody;
use wire::{ErrorKind, Name};
use zerocopy::byteorder::little_endian::U64;

const CLIENTS: usize = 8;

/// What a client knows about one of its files.
#[derive(Clone, Debug)]
struct FileState {
    inode: InodeId,
    name: String,
    /// None: not tried; Some(false): sent, unanswered; Some(true): acknowledged.
    renamed: Option<bool>,
}

fn renamed_name(name: &str) -> String {
    format!("{name}-r")
}

fn ok(bytes: Option<Vec<u8>>, client: &Client) -> Option<ShardResponse<'static>> {
    let bytes = Box::leak(bytes?.into_boxed_slice());
    match decode(bytes, &client.key) {
        ShardResponse::Error(error) => panic!("refused: {error:?}"),
        response => Some(response),
    }
}

/// One client: create/link files, rename every third, until `stop` or
/// the server stops answering. Acknowledged links are pushed to `files`.
fn workload(
    mut client: Client,
    index: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    files: Arc<Mutex<Vec<FileState>>>,
) {
    client.deadline = Duration::from_secs(3);
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let name = format!("c{index}-{i}");
        let id = client.fresh_id();
        let create = ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File });
        let Some(ShardResponse::CreateEdenFile(created)) = ok(client.try_call_with_id(id, &create), &client) else {
            return;
        };
        let contents = name.as_bytes();
        let span = ShardRequest::AddEdenSpan(inline_span(&created, contents));
        let id = client.fresh_id();
        if ok(client.try_call_with_id(id, &span), &client).is_none() {
            return;
        }
        let link = ShardRequest::LinkEdenFile(LinkEdenFileReq {
            head: LinkEdenFileReqHead { inode: created.inode, cookie: created.cookie, parent: InodeId::ROOT },
            name: Name::new(contents).unwrap(),
        });
        let id = client.fresh_id();
        if ok(client.try_call_with_id(id, &link), &client).is_none() {
            return;
        }
        let slot = {
            let mut files = files.lock().unwrap();
            files.push(FileState { inode: created.inode, name: name.clone(), renamed: None });
            files.len() - 1
        };
        acked.fetch_add(1, Ordering::Relaxed);
        if i % 3 == 0 {
            let new_name = renamed_name(&name);
            let rename = ShardRequest::SameDirRename(SameDirRenameReq {
                head: SameDirRenameReqHead { parent: InodeId::ROOT },
                old_name: Name::new(contents).unwrap(),
                new_name: Name::new(new_name.as_bytes()).unwrap(),
            });
            files.lock().unwrap()[slot].renamed = Some(false);
            let id = client.fresh_id();
            if ok(client.try_call_with_id(id, &rename), &client).is_none() {
                return;
            }
            files.lock().unwrap()[slot].renamed = Some(true);
            acked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn resolve(client: &mut Client, text: &str) -> Result<InodeId, ErrorKind> {
    let request = ShardRequest::Resolve(ResolveReq {
        head: ResolveReqHead { mode: ResolveMode::Alive, parent: InodeId::ROOT, creation_time: EggsTime::ZERO },
        name: Name::new(text.as_bytes()).unwrap(),
    });
    let bytes = client.call(&request);
    match decode(&bytes, &client.key) {
        ShardResponse::Resolve(resolved) => Ok(resolved.inode.without_owning()),
        ShardResponse::Error(error) => Err(error.kind),
        other => panic!("{other:?}"),
    }
}

fn list_root(client: &mut Client) -> HashMap<String, InodeId> {
    let mut entries = HashMap::new();
    let mut start = 0;
    loop {
        let ls = ShardRequest::LsDir(LsDirReq {
            dir: InodeId::ROOT,
            as_of: EggsTime::ZERO,
            start_hash: U64::new(start),
            flags: 0,
        });
        let bytes = client.call(&ls);
        let ShardResponse::LsDir(page) = decode(&bytes, &client.key) else { panic!() };
        for entry in page.entries.iter() {
            assert!(entry.inode.is_owning());
            assert!(entries.insert(entry.name.as_str().to_string(), entry.inode.without_owning()).is_none());
        }
        if page.more == 0 {
            return entries;
        }
        start = page.next_hash.get();
    }
}

/// Runs the workload against `daemon` until `threshold` acknowledgements
/// and at least `min_time`, then kills it with SIGKILL; returns the
/// acknowledged files and the journal's metrics just before the kill.
fn run_until_killed(
    daemon: &mut Daemon,
    key: &wire::SecretKey,
    cycle: usize,
    threshold: usize,
    min_time: Duration,
) -> (Vec<FileState>, Journal) {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let files = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|index| {
            let client = Client::new(daemon.address("udp"), key);
            let (stop, acked, files) = (stop.clone(), acked.clone(), files.clone());
            std::thread::spawn(move || workload(client, cycle * CLIENTS + index, stop, acked, files))
        })
        .collect();
    let started = Instant::now();
    while (acked.load(Ordering::Relaxed) < threshold || started.elapsed() < min_time)
        && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let journal = Journal::scrape(daemon);
    daemon.kill(); // SIGKILL, mid-workload
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    (files.lock().unwrap().clone(), journal)
}

/// The journal's counters from `/metrics`.
#[derive(Debug)]
struct Journal {
    syncs: u64,
    checkpoints: u64,
}

impl Journal {
    fn scrape(daemon: &Daemon) -> Self {
        let metrics = Metrics::scrape(daemon);
        Self {
            syncs: metrics.value("metad_journal_syncs_total") as u64,
            checkpoints: metrics.value("metad_journal_checkpoint_duration_seconds_count") as u64,
        }
    }
}

/// Every acknowledged link and rename is there; every listed entry is a
/// readable file with its contents; at most `in_flight_max` entries come
/// from unacknowledged links.
fn verify(client: &mut Client, files: &[FileState], in_flight_max: usize) {
    let listed = list_root(client);
    for file in files {
        let old = resolve(client, &file.name);
        let new = resolve(client, &renamed_name(&file.name));
        match file.renamed {
            None => assert_eq!((old, new), (Ok(file.inode), Err(ErrorKind::NotFound)), "{file:?}"),
            Some(true) => assert_eq!((old, new), (Err(ErrorKind::NotFound), Ok(file.inode)), "{file:?}"),
            Some(false) => assert!(
                (old, new) == (Ok(file.inode), Err(ErrorKind::NotFound))
                    || (old, new) == (Err(ErrorKind::NotFound), Ok(file.inode)),
                "{file:?}: {old:?} {new:?}"
            ),
        }
    }
    assert!(
        listed.len() >= files.len() && listed.len() <= files.len() + in_flight_max,
        "{} listed, {} acknowledged",
        listed.len(),
        files.len()
    );
    for (entry_name, inode) in &listed {
        let bytes = client.call(&ShardRequest::FetchSpans(FetchSpansReq { inode: *inode, offset: U64::new(0) }));
        let ShardResponse::FetchSpans(spans) = decode(&bytes, &client.key) else { panic!("{entry_name}") };
        let span = spans.spans.get(0).expect("one span");
        let SpanBody::Inline(bytes) = span.body else { panic!() };
        let original = entry_name.strip_suffix("-r").unwrap_or(entry_name);
        assert_eq!(bytes.as_bytes(), original.as_bytes());
    }
}

#[test]
fn kill_nine_during_create_link_rename_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    // A 1 MiB journal: under this load it wraps and fills, forcing
    // checkpoints, within the longer cycles.
    let start = || start_metad_with(1, dir.path(), None, &["--metrics", "127.0.0.1:0", "--journal-mib", "1"]);
    let mut daemon = start();
    let key = cluster_key(dir.path());
    let mut all_files = Vec::new();
    // (acknowledgements at least, time at least): a kill before the first
    // periodic checkpoint, then after several.
    let cycles = [(rand::random_range(50..150), Duration::ZERO), (300, Duration::from_secs(3)), (100, Duration::ZERO)];
    for (cycle, (threshold, min_time)) in cycles.into_iter().enumerate() {
        let (files, journal) = run_until_killed(&mut daemon, &key, cycle, threshold, min_time);
        eprintln!("cycle {cycle}: {} files acknowledged; journal before the kill: {journal:?}", files.len());
        assert!(files.len() >= 20, "workload too small: {}", files.len());
        assert!(journal.syncs > 0, "the journal made the acknowledged mutations durable");
        if min_time > Duration::from_secs(2) {
            assert!(journal.checkpoints >= 2, "checkpoints under load: {journal:?}");
        }
        all_files.extend(files);
        daemon = start();
        let mut client = Client::new(daemon.address("udp"), &key);
        verify(&mut client, &all_files, CLIENTS * (cycle + 1));
    }
}
