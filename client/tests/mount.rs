//! `eggs mount` through a real kernel mount: a real cluster (`eggs
//! local-cluster`), `eggs mount -f` on a temporary folder, and real programs
//! (cp, diff, sha256sum, rsync, tar, find, mv, rm, mkdir, ls, python3)
//! working in it. One cluster and one mount are shared by the cases, which
//! run in order in one test to keep the run short.
//!
//! Needs `/dev/fuse` and `fusermount3` (Debian: `fuse3`); without them the
//! test says so and passes, except under CI (`CI=true`), where it fails.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{Cluster, binary, test_bytes};

const MIB: usize = 1 << 20;

/// Whether this machine can mount FUSE; `None` when it can.
fn fuse_missing() -> Option<&'static str> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing");
    }
    let found = Command::new("fusermount3").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !found.is_ok_and(|status| status.success()) {
        return Some("fusermount3 is missing (apt-get install fuse3)");
    }
    None
}

/// True (after saying why) when the test should be skipped.
fn skip() -> bool {
    let Some(reason) = fuse_missing() else { return false };
    assert!(std::env::var("CI").as_deref() != Ok("true"), "mount tests must run under CI, but {reason}");
    eprintln!("skipping the mount tests: {reason}");
    true
}

/// A mount of `cluster` on `dir`, served by `eggs mount -f`.
struct Mount {
    dir: PathBuf,
    process: Option<Child>,
}

impl Mount {
    fn start(cluster: &Cluster, dir: &Path, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dir).expect("mountpoint");
        let mut process = Command::new(binary("eggs"))
            .arg("--shuckle")
            .arg(&cluster.shuckle)
            .arg("mount")
            .arg(dir)
            .arg("-f")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start eggs mount");
        let mut line = String::new();
        BufReader::new(process.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
        assert_eq!(line.trim(), "mounted", "eggs mount did not mount");
        assert!(is_mounted(dir), "{} is not in /proc/mounts", dir.display());
        Self { dir: dir.to_path_buf(), process: Some(process) }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    /// SIGTERMs the mount; returns whether it exited 0 (having unmounted).
    fn terminate(&mut self) -> bool {
        let Some(mut process) = self.process.take() else { return true };
        // SAFETY: kill(2) of our own child.
        unsafe {
            libc::kill(process.id() as libc::pid_t, libc::SIGTERM);
        }
        testsupport::wait_exit(&mut process, Duration::from_secs(30))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.process.is_some() {
            let _ = Command::new("fusermount3").arg("-uz").arg(&self.dir).status();
            if let Some(mut process) = self.process.take() {
                // Killed there if it does not exit.
                testsupport::wait_exit(&mut process, Duration::from_secs(30));
            }
        }
    }
}

/// How many FUSE dispatch threads (`fuser-N`) process `pid` runs.
fn dispatch_threads(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("fuser-"))
        .count()
}

fn is_mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    mounts.lines().any(|line| line.split(' ').nth(1) == Some(dir.to_str().unwrap_or("")))
}

/// The kernel read-ahead of the mount on `dir`, in KiB (its backing
/// device's `read_ahead_kb`).
fn read_ahead_kib(dir: &Path) -> u64 {
    let dir = dir.canonicalize().expect("mountpoint");
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let device = table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields.get(4).copied() == dir.to_str()).then(|| fields[2].to_owned())
        })
        .next_back()
        .expect("the mount is in mountinfo");
    let text = std::fs::read_to_string(format!("/sys/class/bdi/{device}/read_ahead_kb")).expect("read_ahead_kb");
    text.trim().parse().expect("a number")
}

/// How many pages of `path` the kernel's page cache holds (cachestat(2),
/// Linux 6.5; the same call number on every architecture).
fn cached_pages(path: &Path) -> u64 {
    use std::os::fd::AsRawFd;
    const SYS_CACHESTAT: libc::c_long = 451;
    #[repr(C)]
    struct Range {
        offset: u64,
        /// 0: to the end of the file.
        length: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct CacheStat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    let file = std::fs::File::open(path).expect("open");
    let range = Range { offset: 0, length: 0 };
    let mut stat = CacheStat::default();
    // SAFETY: cachestat reads `range` and writes `stat`, both live here.
    let result = unsafe {
        libc::syscall(SYS_CACHESTAT, file.as_raw_fd(), &range as *const Range, &mut stat as *mut CacheStat, 0u32)
    };
    assert_eq!(result, 0, "cachestat: {}", std::io::Error::last_os_error());
    stat.cache
}

/// Runs `script` with bash; asserts success; returns stdout.
fn sh(script: &str) -> String {
    let output = Command::new("bash").arg("-euo").arg("pipefail").arg("-c").arg(script).output().expect("bash");
    assert!(
        output.status.success(),
        "`{script}` failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// Runs `script` with bash expecting failure; returns stderr.
fn sh_fails(script: &str) -> String {
    let output = Command::new("bash").arg("-c").arg(script).output().expect("bash");
    assert!(!output.status.success(), "`{script}` should fail");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a python3 program; asserts success; returns stdout.
fn python(program: &str) -> String {
    let output = Command::new("python3").arg("-c").arg(program).output().expect("python3");
    assert!(output.status.success(), "python failed:\n{program}\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8")
}

fn quote(path: &Path) -> String {
    format!("'{}'", path.display())
}

/// The local tree: 200 files in 10 directories, 0 B to 30 MiB (about
/// 100 MiB), random bytes and runs of zeros, sizes around span edges.
fn make_tree(root: &Path) -> Vec<(String, usize)> {
    const SIZES: [usize; 20] = [
        0,
        1,
        255,
        256,
        4095,
        4096,
        4097,
        65_537,
        200_000,
        MIB - 1,
        MIB,
        MIB + 1,
        3 * MIB + 5,
        10,
        100,
        1000,
        7,
        0,
        12_345,
        99_999,
    ];
    let mut files = Vec::new();
    for index in 0..200 {
        let dir = format!("d{}", index % 10);
        std::fs::create_dir_all(root.join(&dir)).expect("mkdir");
        let size = match index {
            0 => 30 * MIB,
            1 => 12 * MIB + 7,
            2 => 4 * MIB,
            3 => 9 * MIB,
            _ => SIZES[index % SIZES.len()],
        };
        let mut data = test_bytes(size, index as u64 + 1);
        if index % 7 == 0 {
            // Zeros: zero-fill spans.
            data.iter_mut().for_each(|byte| *byte = 0);
        }
        let name = format!("{dir}/f{index:03}.bin");
        std::fs::write(root.join(&name), &data).expect("write");
        files.push((name, size));
    }
    files
}

/// Every file of `root` with its SHA-256, sorted.
fn sha256_of_tree(root: &Path) -> String {
    sh(&format!("cd {} && find . -type f -print0 | sort -z | xargs -0 sha256sum", quote(root)))
}

/// Waits until `check` holds (the kernel's caches expire).
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn programs_work_through_the_mount() {
    if skip() {
        return;
    }
    let cluster = Cluster::start(7);
    let scratch = tempfile::tempdir().expect("scratch");
    let local = scratch.path().join("local");
    let files = make_tree(&local.join("tree"));
    let mut mount = Mount::start(&cluster, &scratch.path().join("mnt"), &[]);
    let m = |relative: &str| quote(&mount.path(relative));
    let l = |relative: &str| quote(&local.join(relative));
    let started = SystemTime::now();

    eprintln!("case: two dispatch threads take the kernel's requests");
    let pid = mount.process.as_ref().expect("running").id();
    // They start just after the ready line.
    eventually("two dispatch threads", || dispatch_threads(pid) == 2);

    eprintln!("case: cp -r and diff -r");
    sh(&format!("cp -r {} {}", l("tree"), m("tree")));
    sh(&format!("diff -r {} {}", l("tree"), m("tree")));

    eprintln!("case: sha256sum of every file");
    assert_eq!(sha256_of_tree(&mount.path("tree")), sha256_of_tree(&local.join("tree")));

    eprintln!("case: find -type f | wc -l");
    assert_eq!(sh(&format!("find {} -type f | wc -l", m("tree"))).trim(), "200");
    assert_eq!(sh(&format!("find {} -type d | wc -l", m("tree"))).trim(), "11");

    eprintln!("case: the CLI sees what the mount wrote, and the other way");
    let via_cli = cluster.ok(&["cat", "/tree/d1/f001.bin"]);
    assert_eq!(via_cli, std::fs::read(local.join("tree/d1/f001.bin")).expect("local"));
    let from_cli = test_bytes(5 * MIB + 3, 77);
    let cli_file = scratch.path().join("from-cli");
    std::fs::write(&cli_file, &from_cli).expect("write");
    cluster.ok(&["put", cli_file.to_str().expect("utf-8"), "/from-cli"]);
    assert_eq!(std::fs::read(mount.path("from-cli")).expect("read through the mount"), from_cli);

    eprintln!("case: ls -l sizes and times");
    let listing = sh(&format!("ls -l --time-style=+%s {}", m("tree/d0")));
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_secs();
    let begun = started.duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_secs();
    let mut seen = 0;
    for line in listing.lines().skip(1) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [mode, _, _, _, size, time, name] = words.as_slice() else { panic!("ls -l line: {line}") };
        assert!(mode.starts_with("-rw-r--r--"), "{line}");
        let expected = files.iter().find(|(file, _)| file == &format!("d0/{name}")).expect("listed file exists").1;
        assert_eq!(size.parse::<usize>().expect("size"), expected, "{line}");
        let time: u64 = time.parse().expect("time");
        assert!(time + 5 >= begun && time <= now + 5, "mtime {time} outside {begun}..{now}: {line}");
        seen += 1;
    }
    assert_eq!(seen, 20);
    let directory = sh(&format!("ls -ld {}", m("tree")));
    assert!(directory.starts_with("drwxr-xr-x"), "{directory}");

    eprintln!("case: python open/seek/read");
    let reads = python(&format!(
        r#"
import random
mounted = open({mounted:?}, "rb")
local = open({local:?}, "rb")
size = local.seek(0, 2)
assert mounted.seek(0, 2) == size, "size"
checks = [(0, 10), (5_000_000, 4096), (4 * 1048576 - 3, 10), (size - 10, 100), (17, 3 * 1048576), (size + 5, 10)]
random.seed(7)
checks += [(random.randrange(size), random.randrange(1, 2 * 1048576)) for _ in range(40)]
for offset, length in checks:
    mounted.seek(offset)
    local.seek(offset)
    assert mounted.read(length) == local.read(length), (offset, length)
mounted.seek(0)
assert mounted.read() == open({local:?}, "rb").read()
print("ok", len(checks))
"#,
        mounted = mount.path("tree/d0/f000.bin").display().to_string(),
        local = local.join("tree/d0/f000.bin").display().to_string(),
    ));
    assert_eq!(reads.trim(), "ok 46");

    eprintln!("case: the kernel's read-ahead is widened, and concurrent readers get the same bytes");
    // FUSE starts a mount's read-ahead at 128 KiB, which also makes every
    // read a 128 KiB request; the mount raises it (root only) so streaming
    // reads arrive as 1 MiB requests, several at once.
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(read_ahead_kib(&mount.dir), 4096, "the mount's kernel read-ahead, KiB");
    }
    let streamed = test_bytes(40 * MIB + 5, 31);
    std::fs::write(local.join("streamed"), &streamed).expect("write");
    cluster.ok(&["put", local.join("streamed").to_str().expect("utf-8"), "/streamed"]);
    let expected = sh(&format!("sha256sum < {}", l("streamed")));
    let readers = sh(&format!(
        "for bs in 4k 128k 1M 3M 1M; do (dd if={} bs=$bs status=none | sha256sum) & done; \
         (dd if={} bs=1M status=none | sha256sum) & wait",
        m("streamed"),
        m("tree/d1/f001.bin")
    ));
    let sums: Vec<&str> = readers.lines().collect();
    assert_eq!(sums.len(), 6, "{readers}");
    assert_eq!(sums.iter().filter(|sum| **sum == expected.trim_end()).count(), 5, "{readers}");
    let other = sh(&format!("sha256sum < {}", l("tree/d1/f001.bin")));
    assert!(sums.contains(&other.trim_end()), "{readers}");

    eprintln!("case: large files are read with direct I/O, small ones through the page cache; mmap works on both");
    // Above 4 MiB (`--kernel-cache-max-mib`) the kernel hands the mount's
    // bytes straight to the reader: nothing of the 40 MiB file just read
    // stays in the page cache. A 3 MiB file is read through it (and kept).
    assert_eq!(cached_pages(&mount.path("streamed")), 0, "pages of a file read with direct I/O");
    let small = mount.path("tree/d2/f012.bin");
    assert_eq!(std::fs::read(&small).expect("read").len(), 3 * MIB + 5);
    assert!(cached_pages(&small) > 0, "a small file is read through the page cache");
    let mapped = python(&format!(
        r#"
import mmap
for mounted, local in [({streamed:?}, {streamed_local:?}), ({small:?}, {small_local:?})]:
    with open(mounted, "rb") as file, open(local, "rb") as expected:
        shared = mmap.mmap(file.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        private = mmap.mmap(file.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
        content = expected.read()
        assert shared[:] == content and private[:] == content, mounted
        assert shared[len(content) // 3 : len(content) // 3 + 100_000] == content[len(content) // 3 : len(content) // 3 + 100_000]
print("mapped")
"#,
        streamed = mount.path("streamed").display().to_string(),
        streamed_local = local.join("streamed").display().to_string(),
        small = small.display().to_string(),
        small_local = local.join("tree/d2/f012.bin").display().to_string(),
    ));
    assert_eq!(mapped.trim(), "mapped");

    eprintln!("case: rsync -a out of and into the mount");
    sh(&format!("rsync -a {}/ {}/", m("tree"), l("rsync-out")));
    sh(&format!("diff -r {} {}", l("tree"), l("rsync-out")));
    sh(&format!("rsync -a {}/ {}/", l("tree/d4"), m("rsync-in")));
    sh(&format!("diff -r {} {}", l("tree/d4"), m("rsync-in")));

    eprintln!("case: tar c from and tar x into the mount");
    sh(&format!("mkdir -p {} && tar c -C {} d5 | tar x -C {}", l("untar"), m("tree"), l("untar")));
    sh(&format!("diff -r {} {}", l("tree/d5"), l("untar/d5")));
    sh(&format!("mkdir {} && tar c -C {} d6 | tar x -C {}", m("untarred"), l("tree"), m("untarred")));
    sh(&format!("diff -r {} {}", l("tree/d6"), m("untarred/d6")));

    eprintln!("case: mv across directories, rm -r, mkdir -p");
    sh(&format!("mv {} {}", m("tree/d7/f007.bin"), m("tree/d8/moved.bin")));
    assert!(!mount.path("tree/d7/f007.bin").exists());
    sh(&format!("cmp {} {}", l("tree/d7/f007.bin"), m("tree/d8/moved.bin")));
    sh(&format!("mv {} {}", m("tree/d8/moved.bin"), m("tree/d8/renamed.bin")));
    sh(&format!("cmp {} {}", l("tree/d7/f007.bin"), m("tree/d8/renamed.bin")));
    sh(&format!("mv {} {}", m("tree/d9"), m("untarred/d9")));
    sh(&format!("diff -r {} {}", l("tree/d9"), m("untarred/d9")));
    sh(&format!("mkdir -p {}", m("a/b/c/d")));
    assert!(mount.path("a/b/c/d").is_dir());
    sh(&format!("rm -r {}", m("tree/d3")));
    assert!(!mount.path("tree/d3").exists());
    assert_eq!(sh(&format!("find {} -type f | wc -l", m("tree"))).trim(), "160");

    eprintln!("case: errno of refused operations");
    let errors = python(&format!(
        r#"
import errno, os
def code(action):
    try:
        action()
        return "ok"
    except OSError as error:
        return errno.errorcode[error.errno]
existing = {existing:?}
print("mkdir-exists", code(lambda: os.mkdir({dir:?})))
print("rmdir-nonempty", code(lambda: os.rmdir({dir:?})))
print("open-dir", code(lambda: open({dir:?}, "rb").read()))
print("notdir", code(lambda: os.stat(existing + "/x")))
print("missing", code(lambda: os.stat({dir:?} + "/nothing")))
print("append", code(lambda: open(existing, "ab")))
print("rw", code(lambda: open(existing, "r+b")))
print("chmod", code(lambda: os.chmod(existing, 0o600)))
print("chmod-same", code(lambda: os.chmod(existing, 0o644)))
print("link", code(lambda: os.link(existing, existing + ".hard")))
print("setxattr", code(lambda: os.setxattr(existing, "user.x", b"1")))
print("truncate", code(lambda: os.truncate(existing, 3)))
print("unlink-dir", code(lambda: os.unlink({dir:?})))
"#,
        existing = mount.path("tree/d0/f010.bin").display().to_string(),
        dir = mount.path("tree/d0").display().to_string(),
    ));
    let errors: Vec<&str> = errors.lines().collect();
    assert_eq!(
        errors,
        [
            "mkdir-exists EEXIST",
            "rmdir-nonempty ENOTEMPTY",
            "open-dir EISDIR",
            "notdir ENOTDIR",
            "missing ENOENT",
            "append EPERM",
            "rw EPERM",
            "chmod EPERM",
            "chmod-same ok",
            "link EPERM",
            "setxattr ENOTSUP",
            "truncate EPERM",
            "unlink-dir EISDIR",
        ]
    );

    eprintln!("case: O_TRUNC replaces a file entirely");
    sh(&format!("echo replaced > {}", m("tree/d0/f010.bin")));
    eventually("the new content", || {
        std::fs::read(mount.path("tree/d0/f010.bin")).ok().as_deref() == Some(b"replaced\n")
    });
    assert_eq!(cluster.ok(&["cat", "/tree/d0/f010.bin"]), b"replaced\n");

    eprintln!("case: symlink and readlink");
    sh(&format!("ln -s ../d1/f001.bin {}", m("tree/d0/link")));
    assert_eq!(sh(&format!("readlink {}", m("tree/d0/link"))).trim(), "../d1/f001.bin");
    sh(&format!("cmp {} {}", m("tree/d0/link"), l("tree/d1/f001.bin")));

    eprintln!("case: a non-sequential write gets an error and leaves no file");
    let nonsequential = python(&format!(
        r#"
import errno, os
fd = os.open({path:?}, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
os.write(fd, b"a" * 100)
os.lseek(fd, 1000, os.SEEK_SET)
try:
    os.write(fd, b"b")
    print("ok")
except OSError as error:
    print(errno.errorcode[error.errno])
try:
    os.close(fd)
except OSError:
    pass
"#,
        path = mount.path("nonsequential").display().to_string()
    ));
    assert_eq!(nonsequential.trim(), "ENOTSUP");
    eventually("no non-sequential file", || !mount.path("nonsequential").exists());
    assert!(!cluster.lines(&["ls", "/"]).contains(&"nonsequential".to_owned()));

    eprintln!("case: a writer killed mid-file leaves no visible file");
    let mut writer = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os, sys, time\nfd = os.open({:?}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x' * 9_000_000)\n\
             print('written', flush=True)\ntime.sleep(600)\n",
            mount.path("killed").display().to_string()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python writer");
    let mut line = String::new();
    BufReader::new(writer.stdout.take().expect("stdout")).read_line(&mut line).expect("line");
    assert_eq!(line.trim(), "written");
    writer.kill().expect("SIGKILL the writer");
    writer.wait().expect("reap");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!mount.path("killed").exists(), "a killed writer's file must not be visible");
    assert!(!sh(&format!("ls {}", m(""))).lines().any(|name| name == "killed"));
    assert!(!cluster.lines(&["ls", "/"]).contains(&"killed".to_owned()));
    sh_fails(&format!("cat {}", m("killed")));

    eprintln!("case: reading while a block service is SIGKILLed");
    cluster.ok(&["mkdir", "/rs"]);
    cluster.ok(&["policy", "set", "/rs", "--parity", "4+2", "--span-size", "1048576"]);
    let coded = test_bytes(20 * MIB + 11, 99);
    std::fs::write(local.join("coded"), &coded).expect("write");
    sh(&format!("cp {} {}", l("coded"), m("rs/coded")));
    let victim = cluster.block_services()[0].clone();
    cluster.kill(&victim);
    sh(&format!("cmp {} {}", l("coded"), m("rs/coded")));

    eprintln!("case: SIGTERM unmounts and exits 0");
    assert!(mount.terminate(), "eggs mount exits 0 on SIGTERM");
    assert!(!is_mounted(&mount.dir), "unmounted after SIGTERM");
}

#[test]
fn daemon_read_only_and_fusermount_unmount() {
    if skip() {
        return;
    }
    let cluster = Cluster::start(3);
    cluster.ok(&["mkdir", "/dir"]);
    let scratch = tempfile::tempdir().expect("scratch");
    let dir = scratch.path().join("mnt");
    std::fs::create_dir_all(&dir).expect("mountpoint");
    // Without -f: returns once mounted, the daemon serves in the background.
    let status = Command::new(binary("eggs"))
        .arg("--shuckle")
        .arg(&cluster.shuckle)
        .args(["mount", "--read-only", "-o", "attr_timeout=0.5,entry_timeout=0.5"])
        .arg(&dir)
        .status()
        .expect("eggs mount");
    assert!(status.success());
    assert!(is_mounted(&dir));
    let guard = Mount { dir: dir.clone(), process: None };
    assert_eq!(sh(&format!("ls {}", quote(&dir))).trim(), "dir");
    let refused = python(&format!(
        "import errno, os\ntry:\n    os.mkdir({:?})\n    print('ok')\nexcept OSError as error:\n    print(errno.errorcode[error.errno])\n",
        dir.join("new").display().to_string()
    ));
    assert_eq!(refused.trim(), "EROFS");
    sh_fails(&format!("echo x > {}", quote(&dir.join("file"))));
    // A file written by another client appears (no negative caching).
    let other = scratch.path().join("other");
    std::fs::write(&other, b"from another client").expect("write");
    cluster.ok(&["put", other.to_str().expect("utf-8"), "/dir/other"]);
    eventually("the other client's file", || {
        std::fs::read(dir.join("dir/other")).is_ok_and(|bytes| bytes == b"from another client")
    });
    sh(&format!("fusermount3 -u {}", quote(&dir)));
    eventually("unmounted", || !is_mounted(&dir));
    drop(guard);
    // Bad flags: one line, non-zero.
    let output = Command::new(binary("eggs"))
        .arg("--shuckle")
        .arg(&cluster.shuckle)
        .args(["mount", "-f", "-o", "bogus"])
        .arg(&dir)
        .output()
        .expect("eggs mount");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("bogus"), "{stderr}");
}
