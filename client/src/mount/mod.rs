//! `eggs mount`: the cluster's namespace as a local filesystem, through
//! FUSE (the `fuser` crate, mounting with `fusermount3`; no libfuse).
//!
//! - [`fs`]: the FUSE requests → client requests.
//! - [`cache`]: reads (span list per open file, a bounded span cache,
//!   sequential read-ahead).
//! - [`writer`]: writes (a new eden file written span by span, linked at
//!   close).
//! - [`attrs`]: inode numbers, attributes, errno.
//!
//! Files larger than `--kernel-cache-max-mib` are read with direct I/O
//! (the kernel copies the mount's bytes straight into the reader's buffer;
//! see `fs::read_flags`); smaller ones through the kernel's page cache,
//! whose read-ahead is raised right after mounting from FUSE's 128 KiB
//! (`--kernel-read-ahead-mib`), which lets its reads arrive as 1 MiB
//! requests (see [`widen_kernel_read_ahead`]).
//!
//! Without `-f` the command starts itself again in the background (a new
//! session, stdio detached) and returns once the mount is up, like other
//! FUSE filesystems. It stops on `fusermount3 -u MOUNTPOINT` and on
//! SIGTERM/SIGINT (which unmount first).

mod attrs;
mod cache;
mod fs;
mod writer;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use client::Client;
use fuser::{Config, MountOption, SessionACL};

/// Default bound of the span cache.
const CACHE_MIB_DEFAULT: u64 = 256;
/// Default bound of the read-ahead of a sequential reader, in MiB: as
/// `eggs cat`'s ([`client::read::READ_AHEAD_BYTES_MAX`]).
const READ_AHEAD_MIB_DEFAULT: u64 = client::read::READ_AHEAD_BYTES_MAX >> 20;
/// Default kernel read-ahead of the mount, in MiB (see
/// [`widen_kernel_read_ahead`]).
const KERNEL_READ_AHEAD_MIB_DEFAULT: u64 = 4;
/// Default size, in MiB, above which files are read with direct I/O (see
/// [`MountOptions::kernel_cache_max_bytes`]).
const KERNEL_CACHE_MAX_MIB_DEFAULT: u64 = 4;
/// What the daemon prints on stdout once mounted (for the parent).
const READY_LINE: &str = "mounted";
/// Threads reading FUSE requests (`fuser`'s `n_threads`), each on its own
/// clone of `/dev/fuse`. A streaming `cat` of a direct-I/O file has one
/// request at a time, but while one thread is still on its way back from
/// the reply (a 1 MiB `writev` the kernel copies into the reader's buffer)
/// the other is already waiting for the next request. Paired on this
/// 2-core machine, `cat MOUNT/file` of 1 GiB, 2 threads against 1: 1.18×
/// and 1.20× (medians, 12 rounds each, 9 and 10 won), with 0.86× the
/// mount's CPU (`perf/results/2026-11-29-s17-fm18.md`). Order is kept
/// where it matters: the kernel sends one write of a file at a time
/// (direct I/O, no `FUSE_ASYNC_DIO`, and appends are blocking).
const DISPATCH_THREADS: usize = 2;
/// Hidden flag: this process is the background daemon.
const DAEMON_FLAG: &str = "--daemon-child";

/// `eggs mount` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct MountArgs {
    /// Where to mount (an existing empty directory).
    pub mountpoint: PathBuf,
    /// Refuse every change (EROFS).
    #[arg(long)]
    pub read_only: bool,
    /// Stay in the foreground (logs on stderr).
    #[arg(short, long)]
    pub foreground: bool,
    /// Mount options, comma separated: `allow_other`, `ro`,
    /// `attr_timeout=SECONDS`, `entry_timeout=SECONDS`.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Bound of the span cache, in MiB.
    #[arg(long, default_value_t = CACHE_MIB_DEFAULT)]
    pub cache_mib: u64,
    /// Most bytes fetched ahead of a sequential reader, in MiB (it starts
    /// at 16 MiB and doubles while the reader waits; 0: none; at most half
    /// the span cache).
    #[arg(long, default_value_t = READ_AHEAD_MIB_DEFAULT)]
    pub read_ahead_mib: u64,
    /// The kernel's read-ahead on the mount, in MiB (the mount's
    /// `/sys/class/bdi/.../read_ahead_kb`; needs root). FUSE starts it at
    /// 128 KiB, which also caps each read request at 128 KiB; 0 leaves it.
    #[arg(long, default_value_t = KERNEL_READ_AHEAD_MIB_DEFAULT)]
    pub kernel_read_ahead_mib: u64,
    /// Files up to this size, in MiB, are read through the kernel's page
    /// cache (kept across opens: re-reads and small reads never reach the
    /// mount); larger ones with direct I/O: the kernel copies the mount's
    /// bytes straight into the reader's buffer, without the page cache's
    /// second copy (streaming reads cost the reader a fifth of the CPU).
    /// mmap works either way.
    #[arg(long, default_value_t = KERNEL_CACHE_MAX_MIB_DEFAULT)]
    pub kernel_cache_max_mib: u64,
    /// Where the background daemon logs (default: nowhere).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    #[arg(long = "daemon-child", hide = true)]
    pub daemon_child: bool,
}

/// What the filesystem needs to know of the flags.
#[derive(Clone, Debug)]
pub struct MountOptions {
    pub read_only: bool,
    pub allow_other: bool,
    /// How long the kernel trusts attributes (size, mtime) it was given.
    pub attr_timeout: Duration,
    /// How long the kernel trusts a name → inode answer.
    pub entry_timeout: Duration,
    pub cache_bytes: u64,
    /// Bound of the read-ahead of one sequential reader.
    pub read_ahead_bytes: u64,
    /// Files read-only opened up to this size are read through the
    /// kernel's page cache; larger ones with direct I/O (`FOPEN_DIRECT_IO`).
    pub kernel_cache_max_bytes: u64,
}

/// Default attribute and entry timeouts: one second, libfuse's default. A
/// file replaced through another client is seen within it.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(1);

impl MountOptions {
    /// Reads the flags and `-o` options.
    pub fn parse(args: &MountArgs) -> anyhow::Result<Self> {
        let mut options = Self {
            read_only: args.read_only,
            allow_other: false,
            attr_timeout: TIMEOUT_DEFAULT,
            entry_timeout: TIMEOUT_DEFAULT,
            cache_bytes: args.cache_mib.saturating_mul(1 << 20),
            read_ahead_bytes: 0,
            kernel_cache_max_bytes: args.kernel_cache_max_mib.saturating_mul(1 << 20),
        };
        for option in args.options.iter().flat_map(|list| list.split(',')).filter(|option| !option.is_empty()) {
            let seconds = |text: &str| -> anyhow::Result<Duration> {
                let value: f64 = text.parse().with_context(|| format!("-o {option}: not a number of seconds"))?;
                if !(0.0..=86_400.0).contains(&value) {
                    bail!("-o {option}: between 0 and 86400 seconds");
                }
                Ok(Duration::from_secs_f64(value))
            };
            match option.split_once('=') {
                None if option == "allow_other" => options.allow_other = true,
                None if option == "ro" => options.read_only = true,
                None if option == "rw" => {}
                Some(("attr_timeout", value)) => options.attr_timeout = seconds(value)?,
                Some(("entry_timeout", value)) => options.entry_timeout = seconds(value)?,
                _ => bail!(
                    "-o {option}: unknown mount option (known: allow_other, ro, rw, attr_timeout=S, entry_timeout=S)"
                ),
            }
        }
        if options.cache_bytes < 16 << 20 {
            bail!("--cache-mib {}: at least 16", args.cache_mib);
        }
        // Spans fetched ahead must not push each other out of the cache.
        options.read_ahead_bytes = args.read_ahead_mib.saturating_mul(1 << 20).min(options.cache_bytes / 2);
        Ok(options)
    }
}

/// `eggs mount`.
pub async fn run(args: MountArgs, shuckle: SocketAddr) -> anyhow::Result<()> {
    let options = MountOptions::parse(&args)?;
    let mountpoint = args.mountpoint.clone();
    if !mountpoint.is_dir() {
        bail!("{}: not a directory", mountpoint.display());
    }
    if !args.foreground && !args.daemon_child {
        return daemonise(&args, shuckle);
    }
    let client = Client::connect(shuckle).await?;
    // Fail now, not at the first `ls`, when the cluster is not there.
    client.stat(wire::InodeId::ROOT).await.context("the cluster does not answer")?;
    let absolute = mountpoint.canonicalize().with_context(|| format!("{}", mountpoint.display()))?;
    let absolute_mountpoint = absolute.clone();
    let filesystem = fs::EggsFs::new(client, tokio::runtime::Handle::current(), options.clone(), absolute);
    let notifier_slot = filesystem.notifier_slot();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("eggsfs@{shuckle}")),
        MountOption::Subtype("eggsfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoAtime,
        if options.read_only { MountOption::RO } else { MountOption::RW },
    ];
    config.n_threads = Some(DISPATCH_THREADS);
    config.clone_fd = true;
    config.acl = if options.allow_other { SessionACL::All } else { SessionACL::Owner };
    let mount_path = mountpoint.clone();
    let session = tokio::task::spawn_blocking(move || fuser::Session::new(filesystem, &mount_path, &config))
        .await
        .context("mount thread")?
        .with_context(|| format!("{}: cannot mount", mountpoint.display()))?;
    let mut session = session;
    let _ = notifier_slot.set(session.notifier());
    let mut unmounter = session.unmount_callable();
    if args.kernel_read_ahead_mib > 0 {
        // Before any file is opened: a file takes the read-ahead at open.
        match widen_kernel_read_ahead(&absolute_mountpoint, args.kernel_read_ahead_mib << 10) {
            Ok(path) => tracing::info!(path, kib = args.kernel_read_ahead_mib << 10, "kernel read-ahead set"),
            Err(error) => tracing::warn!(%error, "kernel read-ahead left at its default (128 KiB reads)"),
        }
    }
    tracing::info!(mountpoint = %mountpoint.display(), %shuckle, "mounted");
    if args.daemon_child {
        detach_stdio(args.log_file.as_deref())?;
    } else {
        println!("{READY_LINE}");
    }
    let serving = tokio::task::spawn_blocking(move || session.run());
    tokio::pin!(serving);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let stopped_by = tokio::select! {
        result = &mut serving => {
            result.context("session thread")?.context("serving the mount")?;
            tracing::info!("unmounted");
            return Ok(());
        }
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal = stopped_by, "unmounting");
    if let Err(error) = unmounter.unmount() {
        // Busy (a program has a file open): the lazy unmount of
        // fusermount3 detaches it now and finishes when they close.
        tracing::warn!(%error, "unmount failed; detaching lazily");
        let _ = Command::new("fusermount3").arg("-uz").arg(&mountpoint).status();
    }
    serving.await.context("session thread")?.context("serving the mount")?;
    Ok(())
}

/// Sets the kernel's read-ahead of the mount at `mountpoint` to `kib`;
/// returns the sysfs file written.
///
/// The kernel offers FUSE its default read-ahead (128 KiB) at `INIT` and
/// takes no more than that from the answer, so `max_readahead` alone
/// cannot raise it. It bounds the read requests too: with 128 KiB every
/// read is a 128 KiB request, whatever `max_pages` allows (1 MiB). The
/// mount's backing device info (`/sys/class/bdi/MAJOR:MINOR`, the
/// mount's anonymous device number) can raise it; then streaming reads
/// arrive as 1 MiB requests, several at once. The device number comes
/// from `/proc/self/mountinfo`: a `stat` of the mountpoint would be a FUSE
/// request that nobody serves yet.
fn widen_kernel_read_ahead(mountpoint: &std::path::Path, kib: u64) -> anyhow::Result<String> {
    let device = mount_device(mountpoint)?;
    let path = format!("/sys/class/bdi/{device}/read_ahead_kb");
    std::fs::write(&path, format!("{kib}\n")).with_context(|| format!("{path}: cannot write"))?;
    Ok(path)
}

/// The `MAJOR:MINOR` of the last mount on `mountpoint`, from
/// `/proc/self/mountinfo`.
fn mount_device(mountpoint: &std::path::Path) -> anyhow::Result<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").context("/proc/self/mountinfo")?;
    let wanted = mountinfo_escape(&mountpoint.to_string_lossy());
    table
        .lines()
        .filter_map(|line| {
            // ID PARENT MAJOR:MINOR ROOT MOUNTPOINT ...
            let mut fields = line.split(' ');
            let device = fields.nth(2)?;
            (fields.nth(1)? == wanted).then(|| device.to_owned())
        })
        .next_back()
        .with_context(|| format!("{}: not in /proc/self/mountinfo", mountpoint.display()))
}

/// A path as mountinfo writes it (space, tab, newline and backslash as
/// octal escapes).
fn mountinfo_escape(path: &str) -> String {
    let mut escaped = String::with_capacity(path.len());
    for character in path.chars() {
        match character {
            ' ' | '\t' | '\n' | '\\' => escaped.push_str(&format!("\\{:03o}", character as u32)),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Starts this command again as a background daemon and waits for it to
/// say it is mounted. Its errors before that reach the user's terminal.
fn daemonise(args: &MountArgs, shuckle: SocketAddr) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the eggs binary")?;
    let mut command = Command::new(exe);
    // The same command line (its flags come last, after `mount`), plus
    // the daemon flag; shuckle's address as this process resolved it.
    command.env(client::client::SHUCKLE_ENV, shuckle.to_string()).args(std::env::args_os().skip(1));
    command.arg(DAEMON_FLAG).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    // SAFETY: setsid is async-signal-safe; it detaches the child from our
    // terminal and session so that closing the terminal does not stop it.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _ = args.mountpoint.as_path();
    let mut child = command.spawn().context("cannot start the mount daemon")?;
    let stdout = child.stdout.take().context("daemon stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).context("waiting for the mount")?;
    if line.trim() == READY_LINE {
        return Ok(());
    }
    // The daemon said why on stderr; report its exit.
    let status = child.wait().context("waiting for the mount daemon")?;
    bail!("the mount daemon exited ({status}) before mounting");
}

/// The daemon, once mounted: says so to the parent, then points stdio at
/// the log file (or /dev/null) so nothing depends on the parent's terminal.
fn detach_stdio(log_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{READY_LINE}")?;
    stdout.flush()?;
    let target = match log_file {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open the log file", path.display()))?,
        None => std::fs::OpenOptions::new().write(true).open("/dev/null").context("/dev/null")?,
    };
    // SAFETY: dup2 onto our own standard descriptors.
    unsafe {
        libc::dup2(target.as_raw_fd(), 1);
        libc::dup2(target.as_raw_fd(), 2);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: MountArgs,
    }

    fn parse(words: &[&str]) -> anyhow::Result<MountOptions> {
        let wrapper = Wrapper::try_parse_from(std::iter::once("mount").chain(words.iter().copied()))?;
        MountOptions::parse(&wrapper.args)
    }

    #[test]
    fn options_parse_with_safe_defaults() {
        let options = parse(&["/mnt"]).expect("defaults");
        assert_eq!((options.attr_timeout, options.entry_timeout), (TIMEOUT_DEFAULT, TIMEOUT_DEFAULT));
        assert!(!options.read_only && !options.allow_other);
        let options = parse(&["/mnt", "-o", "allow_other,attr_timeout=0.5", "-o", "entry_timeout=0,ro"]).expect("ok");
        assert!(options.allow_other && options.read_only);
        assert_eq!(options.attr_timeout, Duration::from_millis(500));
        assert_eq!(options.entry_timeout, Duration::ZERO);
    }

    #[test]
    fn mountinfo_paths_escape_as_the_kernel_writes_them() {
        assert_eq!(mountinfo_escape("/tmp/a b\\c\td"), "/tmp/a\\040b\\134c\\011d");
        assert_eq!(mountinfo_escape("/mnt"), "/mnt");
    }

    #[test]
    fn bad_options_are_one_line_errors() {
        for words in
            [&["/mnt", "-o", "attr_timeout=x"][..], &["/mnt", "-o", "bogus"], &["/mnt", "-o", "attr_timeout=-1"]]
        {
            let error = parse(words).expect_err("refused").to_string();
            assert!(!error.contains('\n') && error.starts_with("-o "), "{error}");
        }
    }
}
