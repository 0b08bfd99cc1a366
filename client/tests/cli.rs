//! End-to-end tests of `eggs` against a real cluster (`eggs local-cluster`
//! with real shuckle, metad, cdcd and blockd binaries, run-time ports,
//! temporary folders).

mod common;

use std::path::Path;

use common::{Cluster, test_bytes};

const MIB: usize = 1 << 20;

/// The prototype README's session, command by command.
#[test]
fn prototype_session() {
    let cluster = Cluster::start(6);
    cluster.ok(&["mkdir", "/a"]);
    let stat = cluster.lines(&["stat", "/a"]);
    assert!(stat[0].starts_with("inode=0x") && stat[0].len() == "inode=0x".len() + 16, "{stat:?}");
    assert_eq!(stat[1], "type=DIRECTORY");
    assert!(stat[2].starts_with("mtime="));
    assert_eq!(stat[3], "parent=0x0020000000000000");
    cluster.ok(&["rmdir", "/a"]);
    assert!(cluster.lines(&["ls", "/"]).is_empty());

    cluster.ok(&["mkdir", "/b"]);
    cluster.ok(&["mkdir", "/a"]);
    cluster.ok(&["mv", "/a", "/b/a"]);
    assert_eq!(cluster.lines(&["ls", "/b"]), ["a"]);
    assert_eq!(cluster.lines(&["ls", "/"]), ["b"]);
    let moved = cluster.lines(&["stat", "/b/a"]);
    let b_inode = cluster.lines(&["stat", "/b"])[0].replace("inode=", "parent=");
    assert_eq!(moved[3], b_inode, "moved directory's parent is /b");

    cluster.ok(&["mkdir", "/c"]);
    cluster.ok(&["mkdir", "/c/d"]);
    assert_eq!(cluster.lines(&["ls", "/c"]), ["d"]);
    cluster.ok(&["rmdir", "/c/d"]);
    assert!(cluster.lines(&["ls", "/c"]).is_empty());
    assert_eq!(cluster.lines(&["ls", "--dead-ge", "0", "/c"]), ["d"]);

    cluster.ok(&["create-test-file", "/hello.txt"]);
    let mut expected = b"hello, world".to_vec();
    expected.extend_from_slice(&[0; 10]);
    assert_eq!(cluster.ok(&["cat", "/hello.txt"]), expected);
    let stat = cluster.lines(&["stat", "/hello.txt"]);
    assert_eq!(stat[1], "type=FILE");
    assert_eq!(stat[3], "size=22");
    let json: serde_json::Value = serde_json::from_slice(&cluster.ok(&["stat", "--json", "/hello.txt"])).expect("json");
    assert_eq!(json["size"], 22);

    cluster.ok(&["rm", "/hello.txt"]);
    assert!(!cluster.lines(&["ls", "/"]).contains(&"hello.txt".to_owned()));
    assert!(cluster.fails(&["cat", "/hello.txt"]).contains("no such file"));
    assert_eq!(cluster.lines(&["ls", "--dead-ge", "0", "/"]).iter().filter(|name| *name == "hello.txt").count(), 1);
}

/// put, get and cat of `data` at `path` with `flags`: all byte-identical,
/// from a file and (for small data) from stdin.
fn check_round_trip(cluster: &Cluster, scratch: &Path, path: &str, data: &[u8], flags: &[&str]) {
    let local = scratch.join("in");
    std::fs::write(&local, data).expect("write input");
    let local_text = local.to_str().expect("utf-8 path");
    let mut args = vec!["put", local_text, path];
    args.extend_from_slice(flags);
    cluster.ok(&args);
    let out = scratch.join("out");
    let out_text = out.to_str().expect("utf-8 path");
    cluster.ok(&["get", path, out_text]);
    assert!(std::fs::read(&out).expect("read output") == data, "get {path} ({} bytes, {flags:?})", data.len());
    assert!(cluster.ok(&["cat", path]) == data, "cat {path} ({} bytes, {flags:?})", data.len());
    let stat = cluster.lines(&["stat", path]);
    assert_eq!(stat[3], format!("size={}", data.len()));
    if data.len() <= MIB + 1 {
        // The same path again: replacing needs -f.
        let mut args = vec!["put", "-f", "-", path];
        args.extend_from_slice(flags);
        let output = cluster.eggs_with_input(&args, Some(data));
        assert!(output.status.success(), "put - {path}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(cluster.ok(&["cat", path]) == data, "cat {path} after put from stdin");
    }
}

/// Every write path (inline, zero-fill, mirrored, Reed–Solomon, the root
/// default policy; small and large; many spans) with one expectation.
#[test]
fn put_get_cat_byte_identical_on_every_path() {
    let cluster = Cluster::start(6);
    let scratch = tempfile::tempdir().expect("tempdir");
    let policies: [(&str, &[&str]); 3] = [
        ("default", &[]),
        ("mirrored", &["--parity", "1+2", "--span-size", "1048576"]),
        ("rs", &["--parity", "4+2", "--span-size", "1048576"]),
    ];
    for (name, flags) in policies {
        for (index, size) in [0usize, 1, 255, 256, 1024, 1025, MIB + 1].into_iter().enumerate() {
            let data = test_bytes(size, index as u64 + 1);
            check_round_trip(&cluster, scratch.path(), &format!("/{name}-{size}"), &data, flags);
        }
        // Zero spans in the middle become zero-fill spans.
        let mut zeros = test_bytes(100, 9);
        zeros.extend(std::iter::repeat_n(0u8, 2 * MIB));
        zeros.extend(test_bytes(MIB / 2, 10));
        check_round_trip(&cluster, scratch.path(), &format!("/{name}-zeros"), &zeros, flags);
    }
    let big = test_bytes(100 * MIB, 42);
    check_round_trip(&cluster, scratch.path(), "/rs-100MiB", &big, &["--parity", "4+2"]);
    check_round_trip(
        &cluster,
        scratch.path(),
        "/mirrored-100MiB",
        &big,
        &["--parity", "1+1", "--span-size", "8388608"],
    );
    // Policy inheritance: a directory policy is used by files below it.
    cluster.ok(&["mkdir", "/mirrored"]);
    cluster.ok(&["policy", "set", "/mirrored", "--parity", "1+1", "--span-size", "65536"]);
    cluster.ok(&["mkdir", "/mirrored/below"]);
    let policy = cluster.lines(&["policy", "get", "/mirrored/below"]);
    assert!(policy.contains(&"parity=1+1".to_owned()) && policy.contains(&"span_size=65536".to_owned()), "{policy:?}");
    check_round_trip(&cluster, scratch.path(), "/mirrored/below/f", &test_bytes(300_000, 5), &[]);
}

/// Reed–Solomon and mirrored files stay readable with one, then P, block
/// services killed; -v says the data came from parity.
#[test]
fn cat_survives_killed_block_services() {
    let cluster = Cluster::start(6);
    let rs = test_bytes(5 * MIB + 7, 1);
    let mirrored = test_bytes(3 * MIB + 3, 2);
    let scratch = tempfile::tempdir().expect("tempdir");
    let put = |path: &str, data: &[u8], flags: &[&str]| {
        let local = scratch.path().join(path.trim_start_matches('/'));
        std::fs::write(&local, data).expect("write");
        let mut args = vec!["put", local.to_str().expect("utf-8"), path];
        args.extend_from_slice(flags);
        cluster.ok(&args);
    };
    put("/rs", &rs, &["--parity", "4+2", "--span-size", "1048576"]);
    put("/mirrored", &mirrored, &["--parity", "1+2", "--span-size", "1048576"]);
    let services = cluster.block_services();
    assert_eq!(services.len(), 6);
    for killed in 1..=2 {
        cluster.kill(&services[killed - 1]);
        for (path, data) in [("/rs", &rs), ("/mirrored", &mirrored)] {
            let output = cluster.eggs(&["-v", "cat", path]);
            assert!(output.status.success(), "cat {path}: {}", String::from_utf8_lossy(&output.stderr));
            assert!(output.stdout == *data, "cat {path} with {killed} block services down");
        }
        let output = cluster.eggs(&["-v", "cat", "/rs"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("parity"), "-v reports the reconstruction: {stderr}");
    }
    // A write that needs every service (4+2 on 6) cannot succeed with two
    // down: it fails with one line and never links an unreadable file.
    let local = scratch.path().join("new");
    std::fs::write(&local, test_bytes(3 * MIB, 4)).expect("write");
    let error = cluster.fails(&["put", local.to_str().expect("utf-8"), "/new", "--parity", "4+2"]);
    assert!(error.contains("block"), "{error}");
    assert!(!cluster.lines(&["ls", "/"]).contains(&"new".to_owned()), "nothing linked");
}

/// A block service killed (and not yet stale in shuckle) does not stop
/// writes: `put` restarts the file avoiding the service its block writes
/// failed on. RS 4+2 on 7 services, 1 MiB spans: every put of 4 MiB almost
/// surely meets the dead service (each span picks 6 of the 7).
#[test]
fn put_avoids_a_killed_block_service() {
    let cluster = Cluster::start(7);
    let services = cluster.block_services();
    assert_eq!(services.len(), 7);
    cluster.kill(&services[3]);
    let scratch = tempfile::tempdir().expect("tempdir");
    for round in 0..3u64 {
        let data = test_bytes(4 * MIB + 1000 * round as usize + 1, 40 + round);
        let path = format!("/after-kill-{round}");
        let local = scratch.path().join(format!("f{round}"));
        std::fs::write(&local, &data).expect("write");
        let output = cluster.eggs(&[
            "-v",
            "put",
            local.to_str().expect("utf-8"),
            &path,
            "--parity",
            "4+2",
            "--span-size",
            "1048576",
        ]);
        assert!(output.status.success(), "put {path}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(cluster.ok(&["cat", &path]) == data, "cat {path} byte-identical");
    }
}

/// Flips a byte in every block file of a block service folder (a second call
/// flips it back); returns how many.
fn corrupt_blocks(dir: &Path) -> usize {
    let mut corrupted = 0;
    for shard_dir in std::fs::read_dir(dir).expect("block service dir").flatten() {
        let name = shard_dir.file_name().to_string_lossy().into_owned();
        if name.len() != 2 || !shard_dir.path().is_dir() {
            continue;
        }
        for block in std::fs::read_dir(shard_dir.path()).expect("block dir").flatten() {
            let mut bytes = std::fs::read(block.path()).expect("read block");
            if bytes.is_empty() {
                continue;
            }
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x5a;
            std::fs::write(block.path(), &bytes).expect("write block");
            corrupted += 1;
        }
    }
    corrupted
}

/// A block corrupted on disk: cat is still byte-identical, and -v reports it.
#[test]
fn corrupted_block_is_reconstructed_and_reported() {
    let cluster = Cluster::start(6);
    let data = test_bytes(3 * MIB + 11, 3);
    let scratch = tempfile::tempdir().expect("tempdir");
    let local = scratch.path().join("f");
    std::fs::write(&local, &data).expect("write");
    cluster.ok(&["put", local.to_str().expect("utf-8"), "/f", "--parity", "4+2", "--span-size", "1048576"]);
    let (_, stderr) = corrupt_one_service_until_read(&cluster, "/f", &data, "reconstructed");
    assert!(stderr.contains("corrupted data"), "the cause is named: {stderr}");
}

/// Corrupts the blocks of one block service at a time (6 services, RS 4+2 so
/// every span has one block on each) until a healthy `-v cat` meets the
/// corruption and says `needle`. A service's block is a data block for some
/// spans and a parity block (never read while the data blocks are good) for
/// others, so the first service tried may not be met; `corrupt_blocks` flips
/// the same bytes back before the next one. Every read must still be
/// byte-identical. Returns the service and the stderr of the read that met it;
/// the corruption stays on that service.
fn corrupt_one_service_until_read(cluster: &Cluster, path: &str, data: &[u8], needle: &str) -> (usize, String) {
    let blocks = cluster.dir.join("blocks");
    for service in 0..6 {
        let dir = blocks.join(service.to_string());
        let corrupted = corrupt_blocks(&dir);
        assert!(corrupted >= 2, "corrupted {corrupted} blocks");
        let output = cluster.eggs(&["-v", "cat", path]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "cat: {stderr}");
        assert!(output.stdout == data, "byte-identical despite the corruption");
        if stderr.contains(needle) {
            return (service, stderr);
        }
        corrupt_blocks(&dir);
    }
    panic!("no read met a corrupted data block, or none said {needle:?}");
}

/// Overwriting keeps the old version in the dead map; a restarted cluster
/// on the same folder still has everything.
#[test]
fn overwrite_keeps_old_version_and_restart_resumes() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::start_in(temp.path(), 6);
    let scratch = tempfile::tempdir().expect("tempdir");
    let first = test_bytes(2000, 1);
    let second = test_bytes(3000, 2);
    let local = scratch.path().join("f");
    std::fs::write(&local, &first).expect("write");
    cluster.ok(&["put", local.to_str().expect("utf-8"), "/f"]);
    let first_inode = cluster.lines(&["resolve", "/f"])[0].clone();
    std::fs::write(&local, &second).expect("write");
    cluster.ok(&["put", "-f", local.to_str().expect("utf-8"), "/f"]);
    assert_eq!(cluster.ok(&["cat", "/f"]), second);
    let current_inode = cluster.lines(&["resolve", "/f"])[0].clone();
    assert_ne!(first_inode, current_inode);
    let dead = cluster.lines(&["resolve", "--dead-ge", "0", "/f"]);
    assert_eq!(dead[0], first_inode, "the old version is in the dead map");
    assert!(cluster.lines(&["ls", "--dead-ge", "0", "/"]).contains(&"f".to_owned()));

    assert!(cluster.stop(), "local-cluster stops cleanly on SIGTERM");
    drop(cluster);
    let mut cluster = Cluster::start_in(temp.path(), 6);
    assert_eq!(cluster.ok(&["cat", "/f"]), second, "data survives a restart");
    assert_eq!(cluster.lines(&["resolve", "--dead-ge", "0", "/f"])[0], first_inode);
    let big = test_bytes(200_000, 3);
    std::fs::write(&local, &big).expect("write");
    cluster.ok(&["put", local.to_str().expect("utf-8"), "/big", "--parity", "4+2", "--span-size", "65536"]);

    // Block services on new ports: the shards' tables are stale until their
    // next refresh, so the client finds the services through shuckle.
    assert!(cluster.stop(), "local-cluster stops cleanly on SIGTERM");
    drop(cluster);
    for index in 0..6 {
        std::fs::remove_file(temp.path().join("blocks").join(format!("{index}.port"))).expect("port file");
    }
    let cluster = Cluster::start_in(temp.path(), 6);
    assert!(cluster.ok(&["cat", "/big"]) == big, "blocks found at their new addresses");
}

/// Bad paths and missing files: one line on stderr, non-zero exit.
#[test]
fn bad_paths_and_missing_files_give_one_line_errors() {
    let cluster = Cluster::start(2);
    cluster.ok(&["create-test-file", "/file"]);
    assert!(cluster.fails(&["cat", "relative/path"]).contains("absolute"));
    assert!(cluster.fails(&["cat", "/missing"]).contains("no such file"));
    assert!(cluster.fails(&["stat", "/missing/deeper"]).contains("no such file"));
    assert!(cluster.fails(&["ls", "/file/x"]).contains("not a directory"));
    // ls of a file lists the file, as ls(1) does.
    assert_eq!(cluster.lines(&["ls", "/file"]), ["/file"]);
    assert!(cluster.fails(&["mkdir", "/a/../b"]).contains("`..`"));
    cluster.fails(&["rmdir", "/missing"]);
    cluster.fails(&["rm", "/"]);
    let missing_local = cluster.fails(&["put", "/nonexistent/local/file", "/x"]);
    assert!(missing_local.contains("cannot open"), "{missing_local}");
    cluster.fails(&["put", "-", "/missing/x"]);
}

/// The prototype's maintenance commands: eden files, inode and block visits.
#[test]
fn maintenance_commands() {
    let cluster = Cluster::start(3);
    let eden = cluster.lines(&["create-eden-file", "--shard", "0"]);
    let inode = eden[0].strip_prefix("inode=").expect("inode line").to_owned();
    assert!(eden[1].starts_with("cookie=") && eden[1].len() == "cookie=".len() + 16, "{eden:?}");
    let listed = cluster.lines(&["visit-eden", "--shard", "0"]);
    assert!(listed.iter().any(|line| line.starts_with(&inode)), "{inode} in {listed:?}");
    // Not past its deadline: refused, with one line.
    assert!(cluster.fails(&["expunge-file", &inode]).contains("too soon"));

    let scratch = tempfile::tempdir().expect("tempdir");
    let local = scratch.path().join("f");
    std::fs::write(&local, test_bytes(100_000, 7)).expect("write");
    cluster.ok(&["put", local.to_str().expect("utf-8"), "/f", "--parity", "1+2"]);
    let file = cluster.lines(&["resolve", "/f"])[0].strip_prefix("inode=").expect("inode").to_owned();
    assert!(cluster.lines(&["visit-inodes", "--shard", "1"]).contains(&file), "the file is on the root's shard");
    let services = cluster.lines(&["block-services"]);
    assert_eq!(services.len(), 3, "{services:?}");
    // 1+2 on 3 services: every service holds a copy of the span.
    for service in &services {
        let id = service.split_whitespace().next().expect("id");
        let blocks = cluster.lines(&["reverse-block-query", id, "--shard", "1"]);
        assert!(blocks.iter().any(|line| line.contains(&format!("inode={file}"))), "{id}: {blocks:?}");
    }
}

/// The shard of the inode `eggs stat` prints first (`inode=0x…`).
fn shard_of(cluster: &Cluster, path: &str) -> u8 {
    let stat = cluster.lines(&["stat", path]);
    let hex = stat[0].strip_prefix("inode=0x").expect("inode line");
    wire::InodeId::new(u64::from_str_radix(hex, 16).expect("hex inode")).shard()
}

/// Regression: right after `ready`, a shard could still hold a block-service
/// table fetched before shuckle had checked the block services, and refuse
/// a write with NOT_ENOUGH_BLOCK_SERVICES. On fresh clusters, 20 MiB writes
/// to every shard, issued as soon as `ready` is printed, succeed.
#[test]
fn writes_right_after_ready_succeed_on_every_shard() {
    const SHARDS: usize = 3;
    let scratch = tempfile::tempdir().expect("tempdir");
    let local = scratch.path().join("data");
    let data = test_bytes(20 * MIB, 11);
    std::fs::write(&local, &data).expect("write local file");
    let local = local.to_str().expect("utf-8 path");
    for iteration in 0..2 {
        let cluster = Cluster::start_with_shards(6, SHARDS);
        // The root lives on shard 1: the first write right after `ready`.
        cluster.ok(&["put", local, "/f"]);
        let mut written = vec![1u8];
        // New directories land on shards chosen by a hash of the CDC's
        // transaction id: make directories until every shard has one.
        for n in 0..40 {
            if written.len() == SHARDS {
                break;
            }
            let dir = format!("/d{n}");
            cluster.ok(&["mkdir", &dir]);
            let shard = shard_of(&cluster, &dir);
            if !written.contains(&shard) {
                cluster.ok(&["put", local, &format!("{dir}/f")]);
                written.push(shard);
            }
        }
        written.sort_unstable();
        assert_eq!(written, (0..SHARDS as u8).collect::<Vec<_>>(), "iteration {iteration}: a write on every shard");
        assert!(cluster.ok(&["cat", "/f"]) == data, "iteration {iteration}: /f reads back");
    }
}

/// Issue 17 G2: blocks that do not match their CRC are named as corrupted
/// data, with -v while parity covers them and as the one error line when
/// it cannot (never as inconsistent metadata).
#[test]
fn corruption_beyond_parity_is_named_corrupted_data() {
    let cluster = Cluster::start(6);
    let data = test_bytes(2 * MIB + 5, 9);
    let scratch = tempfile::tempdir().expect("tempdir");
    let local = scratch.path().join("f");
    std::fs::write(&local, &data).expect("write");
    cluster.ok(&["put", local.to_str().expect("utf-8"), "/f", "--parity", "4+2", "--span-size", "1048576"]);
    let (found, _) = corrupt_one_service_until_read(&cluster, "/f", &data, "corrupted data");
    for service in (0..6).filter(|service| *service != found).take(2) {
        assert!(corrupt_blocks(&cluster.dir.join("blocks").join(service.to_string())) >= 2);
    }
    let error = cluster.fails(&["cat", "/f"]);
    assert!(error.contains(": corrupted data: "), "the corruption is said first: {error}");
    assert!(!error.contains("inconsistent"), "{error}");
}

/// Issue 17 D: `eggs block-service drain|resume ID` with the operator
/// token local-cluster keeps beside the cluster key; a wrong token is one
/// clear line.
#[test]
fn block_service_drain_and_resume_with_the_operator_token() {
    let cluster = Cluster::start(6);
    let http = cluster
        .daemons
        .iter()
        .find(|daemon| daemon.name == "shuckle" && daemon.proto == "http")
        .map(|daemon| daemon.addr.clone())
        .expect("shuckle http address");
    let token_file = cluster.dir.join("operator.token");
    let token_arg = token_file.to_str().expect("utf-8");
    let listing = cluster.lines(&["block-services"]);
    let id = listing[0].split_whitespace().next().expect("id").to_owned();
    let flags = |id: &str| listing.iter().find(|line| line.starts_with(id)).cloned().unwrap_or_default();
    assert!(flags(&id).ends_with("flags=0x0"), "{listing:?}");

    let drained = cluster.lines(&["block-service", "drain", &id, "--token-file", token_arg, "--http", &http]);
    assert_eq!(drained, [format!("block service {id}: drain")]);
    let now = cluster.lines(&["block-services"]);
    assert!(!now.iter().any(|line| line.starts_with(&id) && line.ends_with("flags=0x0")), "drained: {now:?}");
    let resumed = cluster.lines(&["block-service", "resume", &id, "--token-file", token_arg, "--http", &http]);
    assert_eq!(resumed, [format!("block service {id}: ok")]);

    let wrong = cluster.dir.join("wrong.token");
    std::fs::write(&wrong, format!("{}\n", "ab".repeat(16))).expect("write");
    let error = cluster.fails(&[
        "block-service",
        "drain",
        &id,
        "--token-file",
        wrong.to_str().expect("utf-8"),
        "--http",
        &http,
    ]);
    assert!(error.contains("refused the operator token"), "{error}");
    let missing =
        cluster.fails(&["block-service", "drain", &id, "--token-file", "/nonexistent/operator.token", "--http", &http]);
    assert!(missing.contains("/nonexistent/operator.token"), "{missing}");
}

/// Issue 17 G1: local-cluster restarts a SIGKILLed blockd and metad (the
/// root's shard) on their ports; writes that need every block service
/// (4+2 on 6) and reads work again without restarting the cluster.
#[test]
fn killed_daemons_are_restarted_and_the_cluster_serves_again() {
    let cluster = Cluster::start_supervised(6);
    let scratch = tempfile::tempdir().expect("tempdir");
    let before = test_bytes(3 * MIB + 1, 21);
    let local = scratch.path().join("before");
    std::fs::write(&local, &before).expect("write");
    cluster.ok(&["put", local.to_str().expect("utf-8"), "/before", "--parity", "4+2", "--span-size", "1048576"]);
    let block_service = cluster.block_services()[0].clone();
    let root_shard = cluster.daemons.iter().find(|daemon| daemon.name == "shard 1").cloned().expect("shard 1");
    cluster.kill(&block_service);
    cluster.kill(&root_shard);

    let after = test_bytes(3 * MIB + 2, 22);
    let local = scratch.path().join("after");
    std::fs::write(&local, &after).expect("write");
    // Liveness bound: restarts take well under a second; the machine is shared.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let output = cluster.eggs(&[
            "put",
            "-f",
            local.to_str().expect("utf-8"),
            "/after",
            "--parity",
            "4+2",
            "--span-size",
            "1048576",
            "--timeout",
            "20",
        ]);
        if output.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster did not take a 4+2 write again: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(cluster.ok(&["cat", "/after"]) == after);
    let output = cluster.eggs(&["-v", "cat", "/before"]);
    assert!(output.status.success() && output.stdout == before, "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("parity"), "every block served again");
    // The same ports: the blockd answers where it was.
    std::net::TcpStream::connect(&block_service.addr).expect("the restarted blockd listens on its port");
}

/// `metad_requests_total{kind}` summed over every shard of the cluster.
fn metad_requests(cluster: &Cluster, kind: &str) -> f64 {
    use std::io::{Read, Write};
    let label = format!("kind=\"{kind}\"");
    let mut total = 0.0;
    for (name, url) in cluster.metrics.iter().filter(|(name, _)| name.starts_with("shard-")) {
        let addr = url.strip_prefix("http://").and_then(|rest| rest.strip_suffix("/metrics")).expect("metrics URL");
        let mut stream = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{name} metrics: {e}"));
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: eggs\r\n\r\n").expect("metrics request");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("metrics answer");
        total += text
            .lines()
            .filter(|line| line.starts_with("metad_requests_total{") && line.contains(&label))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    total
}

/// A file that fits one inline span (and an empty one) is put with one
/// request, create_small_file, and reads back byte for byte; a larger one
/// still takes create_eden_file and link_eden_file.
#[test]
fn small_put_is_one_create_small_file_request() {
    let cluster = Cluster::start(3);
    let scratch = tempfile::tempdir().expect("tempdir");
    let (small_before, eden_before) =
        (metad_requests(&cluster, "CreateSmallFile"), metad_requests(&cluster, "CreateEdenFile"));
    for (index, size) in [0usize, 100, 1024].into_iter().enumerate() {
        let data = test_bytes(size, index as u64 + 3);
        let local = scratch.path().join(format!("small-{size}"));
        std::fs::write(&local, &data).expect("write input");
        cluster.ok(&["put", local.to_str().expect("utf-8"), &format!("/small-{size}")]);
        assert!(cluster.ok(&["cat", &format!("/small-{size}")]) == data, "cat /small-{size}");
        assert_eq!(cluster.lines(&["stat", &format!("/small-{size}")])[3], format!("size={size}"));
    }
    assert_eq!(metad_requests(&cluster, "CreateSmallFile") - small_before, 3.0, "one request per small file");
    assert_eq!(metad_requests(&cluster, "CreateEdenFile") - eden_before, 0.0, "no eden file for small files");
    // Replacing a small file with -f from stdin: one request again, the
    // new contents served, the old version in the dead map.
    let output = cluster.eggs_with_input(&["put", "-f", "-", "/small-100"], Some(b"replaced"));
    assert!(output.status.success(), "put -f -: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(cluster.ok(&["cat", "/small-100"]), b"replaced");
    assert_eq!(metad_requests(&cluster, "CreateSmallFile") - small_before, 4.0);
    assert_eq!(cluster.lines(&["ls", "--dead-ge", "0", "/"]).iter().filter(|name| *name == "small-100").count(), 1);
    // 1025 bytes: more than one inline span holds, the eden path.
    let data = test_bytes(1025, 9);
    let local = scratch.path().join("larger");
    std::fs::write(&local, &data).expect("write input");
    cluster.ok(&["put", local.to_str().expect("utf-8"), "/larger"]);
    assert!(cluster.ok(&["cat", "/larger"]) == data);
    assert_eq!(metad_requests(&cluster, "CreateEdenFile") - eden_before, 1.0);
}
