//! A corrupted store is refused or answered with STORAGE_ERROR, never
//! served as wrong data, and never ends in a silent signal death (issue 17 F).
//!
//! One real metad fills a store with a few thousand files and a directory
//! of injected entries, then stops. Its folder is the uncorrupted
//! reference: a second metad serves it and answers every query (stat of
//! every inode, a lookup of every name, every listing page, the spans of
//! every file). Each corruption is made on a fresh copy: a truncated
//! `data.mdb` must be refused at start with one line (no SIGBUS); random
//! bit flips in data pages, and flips aimed at page and node headers (the
//! fields LMDB trusts; several seeds each, printed), must either be refused
//! at start with one line or give, for every query, exactly the
//! reference's answer or STORAGE_ERROR, and metad must not die: damage
//! already in the file is the start-up check's to find (`daemon::lmdb`).
//! `metad --verify` must report damage wherever metad answered
//! STORAGE_ERROR or refused. Damage that arrives while metad serves (the
//! file cut behind its back) must end in the fault guard's one line and
//! exit 3, and a refusal at every start until verify finds the store
//! intact (`daemon::fault`). The store's contents (times, cookies) differ
//! between runs, so each run flips different records.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use testsupport::Rng;
use wire::datagram;
use wire::ids::{EggsTime, InodeId, InodeType};
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::mac::SecretKey;
use wire::shard::*;
use wire::{ErrorKind, Name};
use zerocopy::byteorder::little_endian::U64;

/// The root directory's shard: the files are linked into the root.
const SHARD: u8 = InodeId::ROOT.shard();
const FILES: usize = 2_000;
const INJECTED: usize = 1_000;
/// LMDB's page size on the test machines (the OS page size).
const PAGE_BYTES: u64 = 4096;
/// Liveness bound: a metad that neither says `ready` nor exits within this
/// is wedged.
const START_BOUND: Duration = Duration::from_secs(60);

fn encode(client: &mut Client, request: &ShardRequest<'_>) -> (u64, Vec<u8>) {
    let id = client.fresh_id();
    let mut out = vec![0u8; UDP_DATAGRAM_BYTES_MAX];
    let len = datagram::encode(&mut out, id, request, Some(&client.key)).expect("encode");
    out.truncate(len);
    (id, out)
}

/// Fills the store: FILES files in the root (each with its own inline
/// contents) and a directory of INJECTED entries. Returns the directory.
fn fill(client: &mut Client) -> InodeId {
    let requests: Vec<_> = (0..FILES)
        .map(|_| encode(client, &ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type: InodeType::File })))
        .collect();
    let created: Vec<CreateEdenFileResp> = pipeline(client, &requests, 128)
        .iter()
        .map(|bytes| match decode(bytes, &client.key) {
            ShardResponse::CreateEdenFile(created) => created,
            other => panic!("create_eden_file: {other:?}"),
        })
        .collect();
    let contents: Vec<Vec<u8>> =
        (0..FILES).map(|i| format!("contents of file {i} ").repeat(1 + i % 7).into_bytes()).collect();
    let requests: Vec<_> = created
        .iter()
        .zip(&contents)
        .map(|(created, contents)| encode(client, &ShardRequest::AddEdenSpan(inline_span(created, contents))))
        .collect();
    for bytes in pipeline(client, &requests, 128) {
        assert!(matches!(decode(&bytes, &client.key), ShardResponse::AddEdenSpan(_)));
    }
    let names: Vec<String> = (0..FILES).map(|i| format!("file-{i:05}")).collect();
    let requests: Vec<_> = created
        .iter()
        .zip(&names)
        .map(|(created, text)| {
            let link = LinkEdenFileReq {
                head: LinkEdenFileReqHead { inode: created.inode, cookie: created.cookie, parent: InodeId::ROOT },
                name: Name::new(text.as_bytes()).unwrap(),
            };
            encode(client, &ShardRequest::LinkEdenFile(link))
        })
        .collect();
    for bytes in pipeline(client, &requests, 128) {
        let response = decode(&bytes, &client.key);
        assert!(matches!(response, ShardResponse::LinkEdenFile(_)), "link_eden_file: {response:?}");
    }
    let bytes = client.call(&ShardRequest::CreateUnlinkedDir(CreateUnlinkedDirReq {
        transaction_id: U64::new(1),
        parent: InodeId::ROOT,
        forget_below: U64::ZERO,
    }));
    let ShardResponse::CreateUnlinkedDir(dir) = decode(&bytes, &client.key) else { panic!("create_unlinked_dir") };
    let requests: Vec<_> = (0..INJECTED)
        .map(|i| {
            let text = format!("entry-{i:05}");
            let target = InodeId::compose(InodeType::File, 1 + (i % 200) as u8, 1 + i as u64).unwrap();
            let inject = InjectDirentReq {
                head: InjectDirentReqHead {
                    dir: dir.inode,
                    inode: target,
                    dry_run: 0,
                    owning: 0,
                    transaction_id: U64::ZERO,
                    forget_below: U64::ZERO,
                },
                name: Name::new(text.as_bytes()).unwrap(),
            };
            encode(client, &ShardRequest::InjectDirent(inject))
        })
        .collect();
    for bytes in pipeline(client, &requests, 128) {
        assert!(matches!(decode(&bytes, &client.key), ShardResponse::InjectDirent(_)));
    }
    dir.inode
}

/// What a query answered, comparable across two metads.
#[derive(Debug, PartialEq, Eq, Clone)]
enum Answer {
    Ok(String),
    Error(ErrorKind),
}

fn answer(bytes: &[u8], client: &Client) -> Answer {
    match decode(bytes, &client.key) {
        ShardResponse::Error(error) => Answer::Error(error.kind),
        response => Answer::Ok(format!("{response:?}")),
    }
}

/// The reference's queries: every listing page (the page chain as the
/// reference walks it), then a lookup of every listed name, a stat of
/// every directory and listed inode on this shard, and the spans of every
/// file. Returns the requests with the reference's answers.
fn reference_queries(client: &mut Client, key: &SecretKey, dirs: &[InodeId]) -> Vec<(ShardRequest<'static>, Answer)> {
    let mut queries = Vec::new();
    let mut listed: Vec<(InodeId, String, InodeId)> = Vec::new();
    for &dir in dirs {
        let mut start = 0;
        loop {
            let request =
                ShardRequest::LsDir(LsDirReq { dir, as_of: EggsTime::ZERO, start_hash: U64::new(start), flags: 0 });
            let bytes = client.call(&request);
            let ShardResponse::LsDir(page) = decode(&bytes, &client.key) else { panic!("reference ls_dir") };
            listed.extend(page.entries.iter().map(|entry| (dir, entry.name.as_str().to_string(), entry.inode)));
            queries.push((request, answer(&bytes, client)));
            if page.more == 0 {
                break;
            }
            start = page.next_hash.get();
        }
    }
    assert_eq!(listed.len(), FILES + INJECTED, "the reference lists every entry");
    let mut requests: Vec<ShardRequest<'static>> = Vec::new();
    for (dir, text, _) in &listed {
        let name: &'static str = Box::leak(text.clone().into_boxed_str());
        requests.push(ShardRequest::Resolve(ResolveReq {
            head: ResolveReqHead { mode: ResolveMode::Alive, parent: *dir, creation_time: EggsTime::ZERO },
            name: Name::new(name.as_bytes()).unwrap(),
        }));
    }
    for &dir in dirs {
        requests.push(ShardRequest::Stat(StatReq { inode: dir }));
    }
    for (_, _, inode) in &listed {
        let inode = inode.with_owning(false);
        if inode.shard() == SHARD {
            requests.push(ShardRequest::Stat(StatReq { inode }));
            requests.push(ShardRequest::FetchSpans(FetchSpansReq { inode, offset: U64::new(0) }));
        }
    }
    let (answers, death) = ask_all(client, key, &requests, None);
    assert!(death.is_none(), "the reference answers");
    queries.extend(requests.into_iter().zip(answers));
    queries
}

/// Sends every request (up to 128 in flight, resending the unanswered);
/// the answers, and how `daemon` died if it did before answering all.
fn ask_all(
    client: &mut Client,
    key: &SecretKey,
    requests: &[ShardRequest<'_>],
    daemon: Option<&mut Daemon>,
) -> (Vec<Answer>, Option<String>) {
    let encoded: Vec<(u64, Vec<u8>)> = requests.iter().map(|request| encode(client, request)).collect();
    let mut daemon = daemon;
    let mut answers = Vec::with_capacity(requests.len());
    // In batches, checking between them that the daemon still lives (a
    // dead metad would otherwise stall the pipeline).
    for batch in encoded.chunks(500) {
        match pipeline_alive(client, key, batch, daemon.as_deref_mut()) {
            Ok(responses) => answers.extend(responses.iter().map(|bytes| answer(bytes, client))),
            Err(death) => return (answers, Some(death)),
        }
    }
    (answers, None)
}

fn pipeline_alive(
    client: &Client,
    key: &SecretKey,
    batch: &[(u64, Vec<u8>)],
    daemon: Option<&mut Daemon>,
) -> Result<Vec<Vec<u8>>, String> {
    let Some(daemon) = daemon else { return Ok(pipeline(client, batch, 128)) };
    if let Some(status) = daemon.child.try_wait().expect("wait") {
        return Err(format!("{status}"));
    }
    // Run the pipeline on a thread (its own socket: answers are matched by
    // request id) and watch the child meanwhile.
    let (sender, receiver) = mpsc::channel();
    let helper = Client::new(client.server, key);
    let batch = batch.to_vec();
    std::thread::spawn(move || {
        let _ = sender.send(pipeline(&helper, &batch, 128));
    });
    loop {
        match receiver.recv_timeout(Duration::from_millis(200)) {
            Ok(responses) => return Ok(responses),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(status) = daemon.child.try_wait().expect("wait") {
                    return Err(format!("{status}"));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err("pipeline thread panicked".into()),
        }
    }
}

/// How a metad on a damaged folder started.
enum Start {
    /// Serving; the thread returns its stderr once it exits.
    Ready(Daemon, std::thread::JoinHandle<String>),
    Refused {
        status: ExitStatus,
        stderr: String,
    },
}

/// Starts metad on `dir`, bounded by START_BOUND.
fn start_maybe(dir: &Path) -> Start {
    let mut child = Command::new(binary("metad"))
        .args([&SHARD.to_string(), dir.to_str().unwrap(), "--listen", "127.0.0.1:0", "--shuckle", "127.0.0.1:9"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start metad");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut addresses = Vec::new();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if line == "ready" {
                let _ = sender.send(Some(addresses));
                for _ in lines {}
                return;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            if let ["listening", proto, address] = parts.as_slice() {
                addresses.push((proto.to_string(), address.to_string()));
            }
        }
        let _ = sender.send(None);
    });
    let started = Instant::now();
    let outcome = receiver.recv_timeout(START_BOUND);
    assert!(started.elapsed() < START_BOUND, "metad on {} neither started nor exited", dir.display());
    match outcome.expect("start outcome") {
        Some(addresses) => {
            // Keep draining stderr (logs of corrupt records).
            let stderr = std::thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            });
            Start::Ready(Daemon { name: "metad".into(), child, listening: addresses, other_lines: Vec::new() }, stderr)
        }
        None => {
            let status = child.wait().expect("wait");
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            Start::Refused { status, stderr: text }
        }
    }
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `metad --verify DIR`: (exit code, stdout).
fn verify(dir: &Path) -> (i32, String) {
    let output = Command::new(binary("metad")).arg("--verify").arg(dir).output().expect("metad --verify");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let code = output.status.code().unwrap_or_else(|| {
        panic!(
            "metad --verify {} was killed ({}); stdout: {stdout}; stderr: {}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (code, stdout)
}

/// A refusal is one clear line from metad, and an exit, not a signal.
fn assert_clear_refusal(status: ExitStatus, stderr: &str, case: &str) {
    assert!(status.code().is_some(), "{case}: metad was killed by a signal ({status}); stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|line| line.starts_with("metad: ")).collect();
    assert_eq!(lines.len(), 1, "{case}: expected one `metad: …` line, got: {stderr}");
}

/// The uncorrupted store and the reference's answers to every query.
struct Fixture {
    scratch: tempfile::TempDir,
    reference: std::path::PathBuf,
    key: SecretKey,
    requests: Vec<ShardRequest<'static>>,
    expected: Vec<Answer>,
    size: u64,
}

fn data_file(folder: &Path) -> std::path::PathBuf {
    folder.join(format!("shard-{SHARD:03}")).join("data.mdb")
}

fn fixture() -> Fixture {
    let scratch = tempfile::tempdir().unwrap();
    let original = scratch.path().join("original");
    let dir;
    {
        let daemon = start_metad(SHARD, &original, None);
        let key = cluster_key(&original);
        let mut client = Client::new(daemon.address("udp"), &key);
        dir = fill(&mut client);
        // Every answered mutation is committed: stopping now loses nothing.
    }
    let reference = scratch.path().join("reference");
    copy_folder(&original, &reference);
    let key = cluster_key(&reference);
    let (code, report) = verify(&reference);
    assert_eq!(code, 0, "the uncorrupted store verifies: {report}");
    let queries = {
        let Start::Ready(daemon, _) = start_maybe(&reference) else { panic!("the reference refuses to start") };
        let mut client = Client::new(daemon.address("udp"), &key);
        reference_queries(&mut client, &key, &[InodeId::ROOT, dir])
    };
    let (requests, expected): (Vec<_>, Vec<_>) = queries.into_iter().unzip();
    eprintln!("{} queries per metad", requests.len());
    let size = std::fs::metadata(data_file(&reference)).unwrap().len();
    Fixture { scratch, reference, key, requests, expected, size }
}

/// How a damaged copy fared.
#[derive(Default)]
struct Tally {
    refused: usize,
    storage_errors: usize,
    intact: usize,
}

/// Damages a fresh copy of the reference with `damage` (on data.mdb's
/// bytes), then: metad must refuse it at start with one clear line, or
/// serve it and answer every query exactly as the reference or with
/// STORAGE_ERROR, and never die (a death, by a signal or by the fault
/// guard's exit, would mean the start-up check let through damage that is
/// already in the file). verify must agree that the store is damaged
/// wherever metad refused or answered STORAGE_ERROR.
fn damaged_copy(fixture: &Fixture, case: &str, tally: &mut Tally, damage: impl FnOnce(&mut [u8]) -> String) {
    let copy = fixture.scratch.path().join(case);
    copy_folder(&fixture.reference, &copy);
    let mut bytes = std::fs::read(data_file(&copy)).unwrap();
    let what = damage(&mut bytes);
    std::fs::write(data_file(&copy), &bytes).unwrap();
    let (verify_code, report) = verify(&copy);
    eprintln!("{case}: {what}; verify exit {verify_code}: {}", report.lines().last().unwrap_or(""));
    let mut daemon = match start_maybe(&copy) {
        Start::Refused { status, stderr } => {
            assert_clear_refusal(status, &stderr, case);
            eprintln!("{case}: refused: {}", stderr.trim());
            assert_ne!(verify_code, 0, "{case}: metad refused the store but verify found nothing: {report}");
            tally.refused += 1;
            std::fs::remove_dir_all(&copy).unwrap();
            return;
        }
        Start::Ready(daemon, _) => daemon,
    };
    let mut client = Client::new(daemon.address("udp"), &fixture.key);
    let (answers, death) = ask_all(&mut client, &fixture.key, &fixture.requests, Some(&mut daemon));
    let mut errors = 0;
    for ((request, expected), answer) in fixture.requests.iter().zip(&fixture.expected).zip(&answers) {
        if *answer == Answer::Error(ErrorKind::StorageError) {
            errors += 1;
            continue;
        }
        assert_eq!(answer, expected, "{case}: a wrong answer to {request:?}");
    }
    eprintln!("{case}: {errors} of {} queries answered STORAGE_ERROR, the rest exactly", answers.len());
    if let Some(death) = death {
        panic!(
            "{case}: metad died after {} answers ({death}) on damage that was in the file at start; verify: {report}",
            answers.len()
        );
    }
    if errors > 0 {
        tally.storage_errors += 1;
        assert_ne!(verify_code, 0, "{case}: metad answered STORAGE_ERROR but verify found nothing: {report}");
        assert!(report.contains("damaged") || report.contains("cannot verify"), "{report}");
    } else {
        tally.intact += 1;
    }
    drop(daemon);
    std::fs::remove_dir_all(&copy).unwrap();
}

/// Where LMDB's last page ends, by the newest meta page.
fn used_bytes(bytes: &[u8]) -> u64 {
    let field = |page: usize, at: usize| {
        let base = page * PAGE_BYTES as usize + 16 + at;
        u64::from_le_bytes(bytes[base..base + 8].try_into().unwrap())
    };
    let newest = if field(1, 128) > field(0, 128) { 1 } else { 0 };
    (field(newest, 120) + 1) * PAGE_BYTES
}

/// The byte offsets of the node headers of the branch or leaf page at
/// `page` (empty for another kind of page).
fn node_headers(bytes: &[u8], page: u64) -> Vec<u64> {
    let base = (page * PAGE_BYTES) as usize;
    let u16_at = |at: usize| u64::from(u16::from_le_bytes([bytes[base + at], bytes[base + at + 1]]));
    let flags = u16_at(10);
    if flags != 1 && flags != 2 {
        return Vec::new();
    }
    let lower = u16_at(12).clamp(16, PAGE_BYTES);
    (0..(lower - 16) / 2)
        .map(|index| u16_at(16 + 2 * index as usize))
        .filter(|&at| at + 8 <= PAGE_BYTES)
        .map(|at| page * PAGE_BYTES + at)
        .collect()
}

#[test]
fn corrupted_stores_are_refused_or_answer_storage_error_never_wrong_data() {
    let fixture = fixture();
    let (reference, size) = (&fixture.reference, fixture.size);

    // (a) Truncation: refused with one line, never SIGBUS. The file may
    // hold unused pages past LMDB's last one (a journal replay reuses
    // freed pages): the cut is below the end of LMDB's last page.
    let used = used_bytes(&std::fs::read(data_file(reference)).unwrap());
    assert!(used <= size);
    for cut in [used / 2, used - PAGE_BYTES] {
        let copy = fixture.scratch.path().join(format!("truncated-{cut}"));
        copy_folder(reference, &copy);
        std::fs::OpenOptions::new().write(true).open(data_file(&copy)).unwrap().set_len(cut).unwrap();
        let Start::Refused { status, stderr } = start_maybe(&copy) else {
            panic!("metad started on a data.mdb truncated to {cut} of {size} bytes")
        };
        assert_clear_refusal(status, &stderr, "truncated");
        assert!(stderr.contains("truncated"), "the refusal says why: {stderr}");
        let (code, report) = verify(&copy);
        assert_eq!(code, 2, "verify names a truncated store unreadable: {report}");
        assert!(report.contains("truncated"), "{report}");
        std::fs::remove_dir_all(&copy).unwrap();
    }

    // (b) Random bit flips anywhere in data pages (never the two meta
    // pages): values, keys, and now and then a page or node header. Only
    // in LMDB's pages: past its last page the file is zeros that metad
    // keeps in the page cache for its next pages (`Store::after_commit`).
    let pages = used / PAGE_BYTES;
    assert!(pages > 20, "the store spans many pages ({pages})");
    let mut tally = Tally::default();
    for seed in 1..=8u64 {
        damaged_copy(&fixture, &format!("flipped-{seed}"), &mut tally, |bytes| {
            let mut rng = Rng(seed);
            let flips = 4 + rng.below(12);
            for _ in 0..flips {
                let at = 2 * PAGE_BYTES + rng.below(used - 2 * PAGE_BYTES);
                bytes[at as usize] ^= 1 << rng.below(8);
            }
            format!("{flips} random flips")
        });
    }
    eprintln!(
        "random flips: {} refused at start, {} served with STORAGE_ERROR, {} unharmed",
        tally.refused, tally.storage_errors, tally.intact
    );

    // (c) Flips aimed at what LMDB trusts without checking: one bit of a
    // page header (page number, flags, lower and upper bounds) or of a node
    // header (size or child page number, flags, key size) of a branch or
    // leaf page. Before the start-up check, these crashed metad with
    // SIGSEGV inside LMDB when a request first touched the page.
    let mut tally = Tally::default();
    for seed in 1..=16u64 {
        damaged_copy(&fixture, &format!("header-{seed}"), &mut tally, |bytes| {
            let mut rng = Rng(seed);
            // A branch or leaf page (a free page's stale copy would change
            // nothing: look for a page in use by trying a few).
            let (page, headers) = loop {
                let page = 2 + rng.below(pages - 2);
                let headers = node_headers(bytes, page);
                if !headers.is_empty() {
                    break (page, headers);
                }
            };
            let at = if rng.below(2) == 0 {
                // The page header, past its pad: number, flags, bounds.
                let field = [0u64, 1, 2, 3, 10, 12, 13, 14, 15][rng.below(9) as usize];
                page * PAGE_BYTES + field
            } else {
                headers[rng.below(headers.len() as u64) as usize] + rng.below(8)
            };
            let bit = rng.below(8);
            bytes[at as usize] ^= 1 << bit;
            format!("bit {bit} of byte {at} (page {page}, {} nodes)", headers.len())
        });
    }
    eprintln!(
        "header flips: {} refused at start, {} served with STORAGE_ERROR, {} unharmed",
        tally.refused, tally.storage_errors, tally.intact
    );
}

/// Damage that arrives while metad serves (here: data.mdb cut short behind
/// its back) faults inside LMDB's map: metad says so in one line and exits
/// 3 (never a silent SIGBUS), leaves a marker, and refuses to start until
/// `metad --verify` finds the store intact again.
#[test]
fn a_fault_while_serving_is_one_line_and_refused_until_verified() {
    let fixture = fixture();
    let copy = fixture.scratch.path().join("faulting");
    copy_folder(&fixture.reference, &copy);
    let Start::Ready(mut daemon, stderr) = start_maybe(&copy) else { panic!("metad refuses an intact store") };
    std::fs::OpenOptions::new().write(true).open(data_file(&copy)).unwrap().set_len(3 * PAGE_BYTES).unwrap();
    let mut client = Client::new(daemon.address("udp"), &fixture.key);
    let (answers, death) = ask_all(&mut client, &fixture.key, &fixture.requests, Some(&mut daemon));
    let death = death.unwrap_or_else(|| panic!("metad answered all {} queries from a cut file", answers.len()));
    let status = daemon.child.wait().expect("wait");
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(3), "the fault guard's exit, not a signal ({death}); stderr: {stderr}");
    let line = stderr.lines().find(|line| line.starts_with("metad: ")).unwrap_or_default();
    let shard = copy.join(format!("shard-{SHARD:03}"));
    let expected_head =
        format!("metad: the store {} is damaged: a read inside data.mdb faulted at byte offset ", shard.display());
    assert!(line.starts_with(&expected_head), "one clear line: {stderr}");
    assert!(line.ends_with(&format!("; run `metad --verify {}`", shard.display())), "it says what to do: {line}");
    assert!(shard.join("FAULTED").exists(), "the fault leaves a marker");

    // The marker refuses the next start, even once the file is whole again.
    let Start::Refused { status, stderr } = start_maybe(&copy) else { panic!("metad started on a faulted store") };
    assert_clear_refusal(status, &stderr, "faulted");
    assert!(stderr.contains("faulted") && stderr.contains("metad --verify"), "{stderr}");
    std::fs::copy(data_file(&fixture.reference), data_file(&copy)).unwrap();
    let Start::Refused { status, stderr } = start_maybe(&copy) else { panic!("the marker was ignored") };
    assert_clear_refusal(status, &stderr, "faulted, repaired, not verified");

    // verify finds the store intact and removes the marker; metad serves
    // exactly the reference's answers again.
    let (code, report) = verify(&copy);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("removed the fault marker"), "{report}");
    assert!(!shard.join("FAULTED").exists());
    let Start::Ready(mut daemon, _) = start_maybe(&copy) else { panic!("metad refuses the verified store") };
    let mut client = Client::new(daemon.address("udp"), &fixture.key);
    let (answers, death) = ask_all(&mut client, &fixture.key, &fixture.requests, Some(&mut daemon));
    assert!(death.is_none(), "{death:?}");
    assert_eq!(answers, fixture.expected, "the verified store answers as the reference");
}
