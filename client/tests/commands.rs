//! End-to-end tests of the `eggs` commands as users meet them (issue 15):
//! real binaries, one `eggs local-cluster` shared by the cases of
//! [`commands_on_one_cluster`] (each case runs even if another failed; the
//! failures are listed at the end), and the failure cases that need no
//! cluster on their own.

mod common;

use std::io::Read;
use std::net::UdpSocket;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, binary, test_bytes};

const MIB: usize = 1 << 20;

/// A loopback UDP port nothing answers on (bound, then released).
fn silent_address() -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    drop(socket);
    addr.to_string()
}

/// Runs `eggs` without a cluster; returns (status success, stderr, elapsed).
fn eggs_alone(args: &[&str], env: &[(&str, &str)]) -> (bool, String, Duration) {
    let started = Instant::now();
    let output = Command::new(binary("eggs"))
        .args(args)
        .env_remove("EGGS_SHUCKLE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run eggs");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned(), started.elapsed())
}

/// No shuckle at the address given (flag or environment): a one-line error
/// within 3 s that names shuckle, the address and the hint, never a shard
/// or a fallback listing.
#[test]
fn missing_shuckle_fails_fast_naming_it() {
    let addr = silent_address();
    for (args, env) in [
        (vec!["--shuckle", addr.as_str(), "ls", "/"], vec![]),
        (vec!["ls", "/"], vec![("EGGS_SHUCKLE", addr.as_str())]),
        (vec!["--shuckle", addr.as_str(), "put", "-", "/x"], vec![]),
    ] {
        let (ok, stderr, elapsed) = eggs_alone(&args, &env);
        assert!(!ok, "{args:?} should fail");
        assert!(elapsed <= Duration::from_secs(3), "{args:?} took {elapsed:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("shuckle") && stderr.contains(&addr), "names shuckle and {addr}: {stderr}");
        assert!(stderr.contains("EGGS_SHUCKLE") && stderr.contains("--shuckle"), "hint: {stderr}");
        assert!(!stderr.contains("shard"), "does not blame a shard: {stderr}");
    }
    // A host name is resolved; one that does not resolve says so.
    let (ok, stderr, _) = eggs_alone(&["--shuckle", "no-such-host.invalid:5000", "ls", "/"], &[]);
    assert!(!ok && stderr.contains("no-such-host.invalid"), "{stderr}");
    let (ok, stderr, _) = eggs_alone(&["--shuckle", "localhost", "ls", "/"], &[]);
    assert!(!ok && stderr.contains("HOST:PORT"), "{stderr}");
}

/// `--timeout` bounds a command however it is stuck.
#[test]
fn timeout_bounds_the_command() {
    let addr = silent_address();
    let (ok, stderr, elapsed) = eggs_alone(&["--shuckle", &addr, "--timeout", "0.5", "ls", "/"], &[]);
    assert!(!ok);
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(stderr.contains("timed out after 0.5 s"), "{stderr}");
    let (ok, stderr, _) = eggs_alone(&["--timeout=-1", "ls", "/"], &[]);
    assert!(!ok && stderr.contains("--timeout"), "{stderr}");
}

/// Completions and man pages need no cluster.
#[test]
fn completions_and_man_pages() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef eggs"), ("fish", "complete -c eggs")] {
        let output = Command::new(binary("eggs")).args(["completions", shell]).output().expect("run");
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains(marker), "{shell} script has {marker}");
        for command in ["ls", "mkdir", "du", "df", "cp", "find", "tree"] {
            assert!(script.contains(command), "{shell} completes {command}");
        }
    }
    let output = Command::new(binary("eggs")).arg("man").output().expect("run");
    assert!(output.status.success());
    let page = String::from_utf8_lossy(&output.stdout);
    assert!(page.starts_with(".ie") || page.contains(".TH eggs"), "roff: {}", &page[..page.len().min(200)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let output =
        Command::new(binary("eggs")).args(["man", "--dir"]).arg(dir.path().join("man1")).output().expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for page in ["eggs.1", "eggs-ls.1", "eggs-put.1", "eggs-df.1"] {
        assert!(dir.path().join("man1").join(page).exists(), "{page} written");
    }
    let help = Command::new(binary("eggs")).arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("JSON output") && help.contains("mtime_unix_ns"), "--help documents the JSON schema");
}

/// Runs the named cases one after another; panics at the end listing the
/// cases that failed (so one failure does not hide the others).
fn cases(list: &[(&str, &dyn Fn())]) {
    let mut failed = Vec::new();
    for (name, case) in list {
        let started = Instant::now();
        eprintln!("case {name}: start");
        if std::panic::catch_unwind(AssertUnwindSafe(case)).is_err() {
            failed.push(*name);
        }
        eprintln!("case {name}: done in {:?}", started.elapsed());
    }
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

fn write_local(dir: &Path, name: &str, data: &[u8]) -> String {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&path, data).expect("write");
    path.to_str().expect("utf-8").to_owned()
}

fn json(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&cluster.ok(args)).unwrap_or_else(|error| panic!("{args:?}: not JSON: {error}"))
}

/// Is `text` an ISO-8601 date-time with an offset (`…T…+01:00` or `Z`)?
fn is_iso_8601(text: &str) -> bool {
    let bytes = text.as_bytes();
    text.len() >= 20
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':'
        && (text.ends_with('Z') || text[19..].contains(['+', '-']))
}

#[test]
fn commands_on_one_cluster() {
    let cluster = Cluster::start(6);
    let scratch = tempfile::tempdir().expect("tempdir");
    let scratch = scratch.path();
    let c = &cluster;
    cases(&[
        ("host_name_shuckle_address_works", &|| host_name_shuckle_address_works(c)),
        ("errors_speak_the_users_language", &|| errors_speak_the_users_language(c)),
        ("ls_into_a_closed_pipe_exits_0", &|| ls_into_a_closed_pipe_exits_0(c, scratch)),
        ("ls_head_1_exits_0_100_times", &|| ls_head_1_exits_0_100_times(c)),
        ("ls_sorted_unsorted_long_human", &|| ls_sorted_unsorted_long_human(c, scratch)),
        ("json_on_every_listing_and_stat", &|| json_on_every_listing_and_stat(c, scratch)),
        ("mkdir_p", &|| mkdir_p(c)),
        ("rm_r_three_levels_leaves_them_dead", &|| rm_r_three_levels_leaves_them_dead(c, scratch)),
        ("cp_is_byte_identical", &|| cp_is_byte_identical(c, scratch)),
        ("du_sums", &|| du_sums(c, scratch)),
        ("df_counts_each_disk_once", &|| df_counts_each_disk_once(c)),
        ("find_and_tree", &|| find_and_tree(c, scratch)),
        ("globs_expand_for_ls_rm_cat_get", &|| globs_expand_for_ls_rm_cat_get(c, scratch)),
        ("put_refuses_to_overwrite_without_f", &|| put_refuses_to_overwrite_without_f(c, scratch)),
        ("put_and_get_into_directories", &|| put_and_get_into_directories(c, scratch)),
        ("put_r_and_get_r_trees", &|| put_r_and_get_r_trees(c, scratch)),
        ("progress_for_stdin_and_cat_p", &|| progress_for_stdin_and_cat_p(c, scratch)),
        ("timeout_bounds_a_slow_put", &|| timeout_bounds_a_slow_put(c, scratch)),
    ]);
}

fn host_name_shuckle_address_works(cluster: &Cluster) {
    let port = cluster.shuckle.rsplit(':').next().expect("port");
    let output = Command::new(binary("eggs"))
        .args(["--shuckle", &format!("localhost:{port}"), "ls", "/"])
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output =
        Command::new(binary("eggs")).args(["ls", "/"]).env("EGGS_SHUCKLE", &cluster.shuckle).output().expect("run");
    assert!(output.status.success(), "EGGS_SHUCKLE: {}", String::from_utf8_lossy(&output.stderr));
}

fn errors_speak_the_users_language(cluster: &Cluster) {
    let stderr = cluster.fails(&["rmdir", "/nope"]);
    assert!(stderr.contains("no such file or directory: /nope"), "{stderr}");
    assert!(!stderr.contains("NOT_FOUND") && !stderr.contains("acquire"), "no protocol names: {stderr}");
    cluster.ok(&["mkdir", "/exists"]);
    let stderr = cluster.fails(&["mkdir", "/exists"]);
    assert!(stderr.contains("file exists: /exists") && !stderr.contains("ALREADY_EXISTS"), "{stderr}");
    let output = cluster.eggs(&["-v", "mkdir", "/exists"]);
    let verbose = String::from_utf8_lossy(&output.stderr);
    assert!(verbose.contains("file exists: /exists") && verbose.contains("ALREADY_EXISTS"), "-v detail: {verbose}");
    let stderr = cluster.fails(&["cat", "/nope/deeper"]);
    assert!(stderr.contains("no such file or directory: /nope"), "{stderr}");
    let stderr = cluster.fails(&["ls", "relative"]);
    assert!(stderr.contains("absolute"), "{stderr}");
}

/// stdout whose reader is gone before `eggs` writes: EPIPE on every write.
fn run_into_closed_pipe(cluster: &Cluster, args: &[&str]) -> std::process::ExitStatus {
    let mut child = Command::new(binary("eggs"))
        .arg("--shuckle")
        .arg(&cluster.shuckle)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run eggs");
    drop(child.stdout.take());
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    let status = child.wait().expect("wait");
    assert!(stderr.is_empty(), "{args:?} quiet on a closed pipe: {stderr}");
    status
}

fn ls_into_a_closed_pipe_exits_0(cluster: &Cluster, scratch: &Path) {
    cluster.ok(&["mkdir", "/pipe"]);
    for index in 0..3 {
        cluster.ok(&["mkdir", &format!("/pipe/d{index}")]);
    }
    let local = write_local(scratch, "pipe-big", &test_bytes(3 * MIB, 7));
    cluster.ok(&["put", &local, "/pipe/big"]);
    for args in [
        &["ls", "/pipe"][..],
        &["ls", "-l", "/pipe"],
        &["ls", "--json", "/pipe"],
        &["cat", "/pipe/big"],
        &["find", "/pipe"],
        &["tree", "/pipe"],
        &["du", "/pipe"],
        &["stat", "/pipe/big"],
        &["get", "/pipe/big", "-"],
    ] {
        let status = run_into_closed_pipe(cluster, args);
        assert!(status.success(), "{args:?} into a closed pipe: {status}");
    }
}

fn ls_head_1_exits_0_100_times(cluster: &Cluster) {
    let eggs = binary("eggs");
    let script = format!(
        "set -o pipefail; for i in $(seq 100); do {} --shuckle {} ls / | head -1 > /dev/null || exit 1; done",
        eggs.display(),
        cluster.shuckle
    );
    let output = Command::new("bash").args(["-c", &script]).output().expect("bash");
    assert!(output.status.success(), "eggs ls / | head -1 failed: {}", String::from_utf8_lossy(&output.stderr));
    assert!(output.stderr.is_empty(), "quiet: {}", String::from_utf8_lossy(&output.stderr));
}

fn ls_sorted_unsorted_long_human(cluster: &Cluster, scratch: &Path) {
    cluster.ok(&["mkdir", "/sorted"]);
    let names = ["c", "apple", "zed", "d", "a", "f", "Banana", "b", "e"];
    for name in names {
        cluster.ok(&["mkdir", &format!("/sorted/{name}")]);
    }
    let mut sorted: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    sorted.sort();
    assert_eq!(cluster.lines(&["ls", "/sorted"]), sorted);
    let mut unsorted = cluster.lines(&["ls", "-U", "/sorted"]);
    unsorted.sort();
    assert_eq!(unsorted, sorted, "-U lists the same names");

    cluster.ok(&["mkdir", "/long"]);
    let size = MIB + MIB / 2;
    let local = write_local(scratch, "long", &test_bytes(size, 3));
    cluster.ok(&["put", &local, "/long/file"]);
    cluster.ok(&["mkdir", "/long/dir"]);
    let lines = cluster.lines(&["ls", "-l", "/long"]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let words: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!((words[0], words[1]), ("d", "-"), "{lines:?}");
    assert!(is_iso_8601(words[2]) && words[3].starts_with("0x") && words[4] == "dir", "{lines:?}");
    let words: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!((words[0], words[1], words[4]), ("-", size.to_string().as_str(), "file"), "{lines:?}");
    let inode = cluster.lines(&["stat", "/long/file"])[0].replace("inode=", "");
    assert_eq!(words[3], inode, "-l shows the inode");
    let human = cluster.lines(&["ls", "-lh", "/long"]);
    assert!(human[1].split_whitespace().nth(1) == Some("1.5M"), "{human:?}");
    // A file argument is listed as itself.
    assert_eq!(cluster.lines(&["ls", "/long/file"]), ["/long/file"]);
    // stat's times are ISO-8601 too.
    let stat = cluster.lines(&["stat", "/long/file"]);
    assert!(is_iso_8601(stat[2].trim_start_matches("mtime=")), "{stat:?}");
}

fn json_on_every_listing_and_stat(cluster: &Cluster, scratch: &Path) {
    cluster.ok(&["mkdir", "-p", "/json/sub"]);
    let local = write_local(scratch, "json", &test_bytes(1000, 4));
    cluster.ok(&["put", &local, "/json/f"]);
    let listing = json(cluster, &["ls", "--json", "/json"]);
    let entries = listing.as_array().expect("array");
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["name"], "f");
    assert_eq!(entries[0]["path"], "/json/f");
    assert_eq!(entries[0]["type"], "FILE");
    assert_eq!(entries[0]["size"], 1000);
    assert!(is_iso_8601(entries[0]["mtime"].as_str().expect("mtime")), "{listing}");
    assert!(entries[0]["mtime_unix_ns"].as_u64().is_some());
    assert!(entries[0]["inode"].as_str().expect("inode").starts_with("0x"));
    assert_eq!(entries[1]["type"], "DIRECTORY");
    assert!(entries[1]["size"].is_null());
    let stat = json(cluster, &["stat", "--json", "/json/f"]);
    assert_eq!((stat["size"].as_u64(), stat["type"].as_str()), (Some(1000), Some("FILE")));
    assert_eq!(stat["inode"], entries[0]["inode"]);
    let found = json(cluster, &["find", "/json", "--json"]);
    assert_eq!(found.as_array().expect("array").len(), 3, "{found}");
    let tree = json(cluster, &["tree", "--json", "/json"]);
    assert_eq!(tree["children"].as_array().expect("children").len(), 2, "{tree}");
    let du = json(cluster, &["du", "-s", "--json", "/json"]);
    assert_eq!(du[0]["bytes"], 1000);
    assert_eq!((du[0]["files"].as_u64(), du[0]["directories"].as_u64()), (Some(1), Some(1)));
    let df = json(cluster, &["df", "--json"]);
    assert!(df["capacity_bytes"].as_u64().is_some() && df["per_disk"].is_array(), "{df}");
}

fn mkdir_p(cluster: &Cluster) {
    let stderr = cluster.fails(&["mkdir", "/p/q/r"]);
    assert!(stderr.contains("no such file or directory: /p"), "{stderr}");
    cluster.ok(&["mkdir", "-p", "/p/q/r"]);
    assert_eq!(cluster.lines(&["ls", "/p/q"]), ["r"]);
    // Again: no error, nothing new.
    cluster.ok(&["mkdir", "-p", "/p/q/r"]);
    cluster.ok(&["mkdir", "-p", "/p/q/r/s", "/p/t"]);
    assert_eq!(cluster.lines(&["ls", "/p"]), ["q", "t"]);
    let stderr = cluster.fails(&["mkdir", "/p/q"]);
    assert!(stderr.contains("exists"), "{stderr}");
}

fn rm_r_three_levels_leaves_them_dead(cluster: &Cluster, scratch: &Path) {
    let local = write_local(scratch, "rm-file", &test_bytes(300_000, 5));
    cluster.ok(&["mkdir", "-p", "/rm/tree/l1/l2/l3"]);
    for dir in ["/rm/tree", "/rm/tree/l1", "/rm/tree/l1/l2", "/rm/tree/l1/l2/l3"] {
        cluster.ok(&["put", &local, &format!("{dir}/file")]);
        cluster.ok(&["put", "-", &format!("{dir}/small")]);
    }
    let stderr = cluster.fails(&["rm", "/rm/tree"]);
    assert!(stderr.contains("is a directory") && stderr.contains("-r"), "{stderr}");
    cluster.ok(&["rm", "-r", "/rm/tree"]);
    assert!(cluster.lines(&["ls", "/rm"]).is_empty());
    assert_eq!(cluster.lines(&["ls", "--dead-ge", "0", "/rm"]), ["tree"], "the tree is in the dead map");
    assert!(cluster.fails(&["ls", "/rm/tree/l1"]).contains("no such file or directory"));
    // The files of each level were deleted (dead) before their directory.
    let dead = json(cluster, &["ls", "--json", "--dead-ge", "0", "/rm"]);
    assert_eq!(dead[0]["type"], "DIRECTORY");
    // A tree right under / needs confirmation.
    cluster.ok(&["mkdir", "-p", "/rmtop/a"]);
    let stderr = cluster.fails(&["rm", "-r", "/rmtop"]);
    assert!(stderr.contains("--yes-top-level"), "{stderr}");
    assert_eq!(cluster.lines(&["ls", "/rmtop"]), ["a"]);
    cluster.ok(&["rm", "-r", "--yes-top-level", "/rmtop"]);
    assert!(!cluster.lines(&["ls", "/"]).contains(&"rmtop".to_owned()));
    assert!(cluster.lines(&["ls", "--dead-ge", "0", "/"]).contains(&"rmtop".to_owned()));
    // -f: a missing path is not an error.
    cluster.ok(&["rm", "-f", "/rm/never"]);
    assert!(cluster.fails(&["rm", "/rm/never"]).contains("no such file or directory: /rm/never"));
}

fn cp_is_byte_identical(cluster: &Cluster, scratch: &Path) {
    let data = test_bytes(5 * MIB + 3, 11);
    let local = write_local(scratch, "cp-source", &data);
    cluster.ok(&["mkdir", "-p", "/cp/into"]);
    cluster.ok(&["put", &local, "/cp/source", "--parity", "4+2", "--span-size", "1048576"]);
    cluster.ok(&["cp", "/cp/source", "/cp/copy"]);
    assert!(cluster.ok(&["cat", "/cp/copy"]) == data, "cp is byte-identical");
    let source_inode = cluster.lines(&["stat", "/cp/source"])[0].clone();
    assert_ne!(cluster.lines(&["stat", "/cp/copy"])[0], source_inode, "a new file");
    cluster.ok(&["cp", "/cp/source", "/cp/into"]);
    assert!(cluster.ok(&["cat", "/cp/into/source"]) == data, "cp into a directory");
    let stderr = cluster.fails(&["cp", "/cp/source", "/cp/copy"]);
    assert!(stderr.contains("exists") && stderr.contains("-f"), "{stderr}");
    let small = write_local(scratch, "cp-small", b"small");
    cluster.ok(&["put", "-f", &small, "/cp/source"]);
    cluster.ok(&["cp", "-f", "/cp/source", "/cp/copy"]);
    assert_eq!(cluster.ok(&["cat", "/cp/copy"]), b"small");
    cluster.ok(&["cp", "-r", "/cp/into", "/cp/tree"]);
    assert!(cluster.ok(&["cat", "/cp/tree/source"]) == data, "cp -r");
}

fn du_sums(cluster: &Cluster, scratch: &Path) {
    cluster.ok(&["mkdir", "-p", "/du/a/b", "/du/c"]);
    let sizes = [("/du/f", 1000usize), ("/du/a/g", 20_000), ("/du/a/b/h", MIB + 5), ("/du/c/i", 0)];
    for (index, (path, size)) in sizes.iter().enumerate() {
        let local = write_local(scratch, &format!("du-{index}"), &test_bytes(*size, index as u64));
        cluster.ok(&["put", &local, path]);
    }
    let total: usize = sizes.iter().map(|(_, size)| size).sum();
    assert_eq!(cluster.lines(&["du", "-s", "/du"]), [format!("{total}\t/du")]);
    let lines = cluster.lines(&["du", "/du"]);
    let expected = [
        format!("{}\t/du/a/b", MIB + 5),
        format!("{}\t/du/a", MIB + 5 + 20_000),
        "0\t/du/c".to_owned(),
        format!("{total}\t/du"),
    ];
    assert_eq!(lines, expected);
    let human = cluster.lines(&["du", "-sh", "/du"]);
    assert_eq!(human, ["1.0M\t/du"]);
    assert_eq!(cluster.lines(&["du", "/du/f"]), ["1000\t/du/f"]);
}

fn df_counts_each_disk_once(cluster: &Cluster) {
    let df = json(cluster, &["df", "--json"]);
    let capacity = df["capacity_bytes"].as_u64().expect("capacity");
    let used = df["used_bytes"].as_u64().expect("used");
    let free = df["free_bytes"].as_u64().expect("free");
    assert_eq!(capacity, used + free, "{df}");
    assert_eq!(df["block_services"], 6, "{df}");
    // The six local block services share one folder, so one disk.
    assert_eq!(df["disks"], 1, "{df}");
    let per_disk = df["per_disk"].as_array().expect("per_disk");
    assert_eq!(per_disk[0]["block_services"].as_array().expect("ids").len(), 6);
    // Free space is the filesystem's once, not six times.
    let (fs_free, fs_total) = statvfs(&cluster.dir);
    assert!(free <= fs_free + fs_free / 10 + (1 << 30), "free {free} vs the filesystem's {fs_free}");
    assert!(free >= fs_free / 2, "free {free} vs the filesystem's {fs_free}");
    assert!(capacity <= fs_total + (1 << 30), "capacity {capacity} vs the filesystem's {fs_total}");
    let lines = cluster.lines(&["df", "-h", "--disks"]);
    assert!(lines[0].contains("Size") && lines[0].contains("Avail"), "{lines:?}");
    assert_eq!(lines.len(), 3, "{lines:?}");
}

fn statvfs(path: &Path) -> (u64, u64) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: a valid C string and an out-parameter of the right type.
    assert_eq!(unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) }, 0);
    // SAFETY: statvfs returned 0.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast, reason = "field widths differ between libc targets")]
    let block = stat.f_frsize as u64;
    #[allow(clippy::unnecessary_cast, reason = "field widths differ between libc targets")]
    (stat.f_bavail as u64 * block, stat.f_blocks as u64 * block)
}

fn find_and_tree(cluster: &Cluster, scratch: &Path) {
    cluster.ok(&["mkdir", "-p", "/find/x/y", "/find/z"]);
    let local = write_local(scratch, "find", b"find me");
    for path in ["/find/a.txt", "/find/x/b.txt", "/find/x/y/c.txt", "/find/x/y/d.bin", "/find/z/e.txt"] {
        cluster.ok(&["put", &local, path]);
    }
    assert_eq!(
        cluster.lines(&["find", "/find", "-name", "*.txt"]),
        ["/find/a.txt", "/find/x/b.txt", "/find/x/y/c.txt", "/find/z/e.txt"]
    );
    assert_eq!(cluster.lines(&["find", "/find", "-type", "d"]), ["/find", "/find/x", "/find/x/y", "/find/z"]);
    assert_eq!(cluster.lines(&["find", "/find/x", "--name", "?.bin"]), ["/find/x/y/d.bin"]);
    assert_eq!(
        cluster.lines(&["tree", "/find"]),
        [
            "/find",
            "├── a.txt",
            "├── x",
            "│   ├── b.txt",
            "│   └── y",
            "│       ├── c.txt",
            "│       └── d.bin",
            "└── z",
            "    └── e.txt",
            "",
            "3 directories, 5 files",
        ]
    );
    assert_eq!(cluster.lines(&["tree", "-L", "1", "/find"]).len(), 6);
}

fn globs_expand_for_ls_rm_cat_get(cluster: &Cluster, scratch: &Path) {
    cluster.ok(&["mkdir", "-p", "/g/sub1", "/g/sub2", "/g/other"]);
    for (name, data) in [("f1", "one"), ("f2", "two"), ("f3.txt", "three"), ("x.tmp", "t"), ("y.tmp", "t")] {
        let local = write_local(scratch, &format!("glob-{name}"), data.as_bytes());
        cluster.ok(&["put", &local, &format!("/g/{name}")]);
    }
    cluster.ok(&["put", &write_local(scratch, "glob-deep", b"deep"), "/g/sub2/deep"]);
    assert_eq!(cluster.lines(&["ls", "-d", "/g/sub*"]), ["/g/sub1", "/g/sub2"]);
    assert_eq!(cluster.lines(&["ls", "/g/*/deep"]), ["/g/sub2/deep"]);
    assert_eq!(cluster.ok(&["cat", "/g/f?"]), b"onetwo");
    let out = scratch.join("glob-out");
    std::fs::create_dir_all(&out).expect("mkdir");
    cluster.ok(&["get", "/g/f[13]*", out.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read(out.join("f1")).expect("f1"), b"one");
    assert_eq!(std::fs::read(out.join("f3.txt")).expect("f3.txt"), b"three");
    assert!(!out.join("f2").exists());
    cluster.ok(&["rm", "/g/*.tmp"]);
    assert_eq!(cluster.lines(&["ls", "/g"]), ["f1", "f2", "f3.txt", "other", "sub1", "sub2"]);
    let stderr = cluster.fails(&["ls", "/g/nothing*"]);
    assert!(stderr.contains("no match: /g/nothing*"), "{stderr}");
}

fn put_refuses_to_overwrite_without_f(cluster: &Cluster, scratch: &Path) {
    let first = write_local(scratch, "ow-1", b"first");
    let second = write_local(scratch, "ow-2", b"second");
    cluster.ok(&["put", &first, "/ow"]);
    let stderr = cluster.fails(&["put", &second, "/ow"]);
    assert!(stderr.contains("file exists") && stderr.contains("-f") && stderr.contains("/ow"), "{stderr}");
    assert_eq!(cluster.ok(&["cat", "/ow"]), b"first", "untouched");
    let output = cluster.eggs_with_input(&["put", "-", "/ow"], Some(b"stdin"));
    assert!(!output.status.success(), "put - refuses too");
    cluster.ok(&["put", "-f", &second, "/ow"]);
    assert_eq!(cluster.ok(&["cat", "/ow"]), b"second");
}

fn put_and_get_into_directories(cluster: &Cluster, scratch: &Path) {
    let local = write_local(scratch, "into/name.bin", &test_bytes(70_000, 8));
    let data = std::fs::read(&local).expect("read");
    cluster.ok(&["mkdir", "/into1"]);
    cluster.ok(&["mkdir", "/into2"]);
    cluster.ok(&["put", &local, "/into1/"]);
    cluster.ok(&["put", &local, "/into2"]);
    assert_eq!(cluster.lines(&["ls", "/into1"]), ["name.bin"]);
    assert_eq!(cluster.lines(&["ls", "/into2"]), ["name.bin"]);
    let stderr = cluster.fails(&["put", &local, "/missing-dir/"]);
    assert!(stderr.contains("no such file or directory: /missing-dir"), "{stderr}");
    let out = scratch.join("get-into");
    std::fs::create_dir_all(&out).expect("mkdir");
    let out_slash = format!("{}/", out.display());
    cluster.ok(&["get", "/into1/name.bin", &out_slash]);
    assert!(std::fs::read(out.join("name.bin")).expect("got") == data);
    std::fs::remove_file(out.join("name.bin")).expect("rm");
    cluster.ok(&["get", "/into2/name.bin", out.to_str().expect("utf-8")]);
    assert!(std::fs::read(out.join("name.bin")).expect("got") == data);
    let stderr = cluster.fails(&["get", "/into1/name.bin", &format!("{}/missing/", out.display())]);
    assert!(stderr.contains("no such local directory"), "{stderr}");
    // Several sources need a directory.
    let stderr = cluster.fails(&["put", &local, &local, "/into1/new-file"]);
    assert!(stderr.contains("not a directory"), "{stderr}");
}

fn put_r_and_get_r_trees(cluster: &Cluster, scratch: &Path) {
    let tree = scratch.join("local-tree");
    let files = [("top.txt", 10usize), ("a/one", 3000), ("a/b/two", MIB + 1), ("c/three", 0)];
    for (name, size) in files {
        write_local(&tree, name, &test_bytes(size, size as u64));
    }
    let stderr = cluster.fails(&["put", tree.to_str().expect("utf-8"), "/putr"]);
    assert!(stderr.contains("put -r"), "{stderr}");
    cluster.ok(&["put", "-r", tree.to_str().expect("utf-8"), "/putr"]);
    assert_eq!(cluster.lines(&["ls", "/putr"]), ["a", "c", "top.txt"]);
    assert!(cluster.ok(&["cat", "/putr/a/b/two"]) == test_bytes(MIB + 1, (MIB + 1) as u64));
    // Into an existing directory: /putr/local-tree.
    cluster.ok(&["put", "-r", tree.to_str().expect("utf-8"), "/putr/"]);
    assert_eq!(cluster.lines(&["ls", "/putr/local-tree"]), ["a", "c", "top.txt"]);
    let back = scratch.join("got-tree");
    cluster.ok(&["get", "-r", "/putr/local-tree", back.to_str().expect("utf-8")]);
    for (name, size) in files {
        assert!(std::fs::read(back.join(name)).expect(name) == test_bytes(size, size as u64), "{name}");
    }
    assert!(cluster.fails(&["get", "/putr", back.to_str().expect("utf-8")]).contains("get -r"));
}

fn progress_for_stdin_and_cat_p(cluster: &Cluster, scratch: &Path) {
    let data = test_bytes(4 * MIB, 12);
    let output = cluster.eggs_with_input(&["put", "-P", "-", "/progress-stdin"], Some(&data));
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/s"), "a rate: {stderr}");
    assert!(stderr.contains("4.00 MiB") || stderr.contains("4 MiB"), "bytes written: {stderr}");
    assert!(!stderr.contains('░') && !stderr.contains("eta"), "no bar for unknown size: {stderr}");
    assert!(cluster.ok(&["cat", "/progress-stdin"]) == data);
    let output = cluster.eggs(&["cat", "-P", "/progress-stdin"]);
    assert!(output.status.success());
    assert!(output.stdout == data, "cat -P output intact");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("4.00 MiB/4.00 MiB"), "progress on stderr: {stderr}");
    // Without -P and no terminal: nothing on stderr.
    let local = write_local(scratch, "progress", &data);
    let output = cluster.eggs(&["put", &local, "/progress-quiet"]);
    assert!(output.status.success() && output.stderr.is_empty());
}

fn timeout_bounds_a_slow_put(cluster: &Cluster, scratch: &Path) {
    let local = write_local(scratch, "timeout", &test_bytes(64 * MIB, 13));
    let started = Instant::now();
    // 0.05 s: a 64 MiB RS 4+2 put fsyncs 96 MiB of blocks, over 0.2 s at
    // this disk's ~400 MB/s. Since blockd writes through the page cache a
    // whole put can finish within 0.3 s, which CI once saw.
    let stderr = cluster.fails(&["--timeout", "0.05", "put", &local, "/timeout"]);
    assert!(stderr.contains("timed out after 0.05 s"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(cluster.fails(&["stat", "/timeout"]).contains("no such file"), "nothing linked");
}
