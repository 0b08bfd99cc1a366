//! Whole-file figures through the `eggs` CLI: put of a local file, and cat
//! either to `/dev/null` (the figure the issues state) or to a pipe this
//! process drains, counting and checksumming the bytes, so that a fast but
//! wrong cat is reported as an error, not a figure. Every timed
//! `/dev/null` cat is paired with a checked cat of the same file.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::error::{PerfError, Result};
use crate::limits::{MIB, mb_per_second, pseudo_random_bytes};

/// Writes `bytes` of incompressible data to `path`; its CRC32C.
pub fn make_input(path: &Path, bytes: usize) -> Result<u32> {
    make_input_seeded(path, bytes, 0)
}

/// [`make_input`] with a seed, for files that differ from each other.
pub fn make_input_seeded(path: &Path, bytes: usize, seed: u64) -> Result<u32> {
    let chunk = pseudo_random_bytes(4 * MIB, 13 + seed);
    let mut file = std::fs::File::create(path).map_err(PerfError::io(format!("create {}", path.display())))?;
    let mut crc = 0u32;
    let mut written = 0usize;
    while written < bytes {
        let take = (bytes - written).min(chunk.len());
        // Vary each chunk so no two blocks of the file are equal.
        let mut piece = chunk[..take].to_vec();
        piece[..8.min(take)].copy_from_slice(&(written as u64).to_le_bytes()[..8.min(take)]);
        file.write_all(&piece).map_err(PerfError::io("write input file"))?;
        crc = wire::crc::crc32c_append(crc, &piece);
        written += take;
    }
    file.sync_all().map_err(PerfError::io("fsync input file"))?;
    Ok(crc)
}

fn failed(what: &str, status: std::process::ExitStatus, stderr: &[u8]) -> PerfError {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    PerfError::Component(format!("{what} failed ({status}): {line}"))
}

/// `eggs put <local> <remote> <flags…>`: MB/s of the local file's size.
pub fn put(
    eggs: &Path,
    envs: &[(String, String)],
    flags: &[&str],
    local: &Path,
    remote: &str,
    bytes: usize,
) -> Result<f64> {
    let started = Instant::now();
    let output = Command::new(eggs)
        .arg("put")
        .arg(local)
        .arg(remote)
        .args(flags)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .map_err(PerfError::io(format!("run {}", eggs.display())))?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        return Err(failed(&format!("eggs put {remote}"), output.status, &output.stderr));
    }
    Ok(mb_per_second(bytes as u64, elapsed))
}

/// What one `eggs cat` took.
#[derive(Clone, Copy, Debug)]
pub struct CatRun {
    pub mb_per_second: f64,
    /// The cat process's user + system CPU time, seconds.
    pub cpu_seconds: f64,
}

/// Where a measured `eggs cat` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatOutput {
    /// A pipe this process drains, counting and CRC-checking every byte
    /// (the drain's own copy and CRC run on the same cores as the cat).
    Checked,
    /// `/dev/null`, as the issues' figures are stated. Nothing is checked:
    /// pair it with a [`CatOutput::Checked`] run of the same file.
    DevNull,
}

/// `eggs cat <remote>` into a pipe: MB/s, after checking the size and CRC.
pub fn cat(eggs: &Path, envs: &[(String, String)], remote: &str, bytes: usize, crc: u32) -> Result<f64> {
    cat_measured(eggs, envs, remote, bytes, crc, CatOutput::Checked).map(|run| run.mb_per_second)
}

/// `eggs cat <remote>` into `output`; its rate and its CPU time (from
/// `wait4`). With [`CatOutput::Checked`] a wrong size or CRC is an error.
pub fn cat_measured(
    eggs: &Path,
    envs: &[(String, String)],
    remote: &str,
    bytes: usize,
    crc: u32,
    output: CatOutput,
) -> Result<CatRun> {
    let stdout = match output {
        CatOutput::Checked => Stdio::piped(),
        CatOutput::DevNull => {
            std::fs::OpenOptions::new().write(true).open("/dev/null").map_err(PerfError::io("open /dev/null"))?.into()
        }
    };
    let started = Instant::now();
    let mut child = Command::new(eggs)
        .arg("cat")
        .arg(remote)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(PerfError::io(format!("run {}", eggs.display())))?;
    let mut stderr = child.stderr.take().ok_or_else(|| PerfError::Component("eggs cat: no stderr pipe".into()))?;
    // Drain stderr beside stdout so a chatty cat cannot block.
    let stderr_reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let (mut received, mut received_crc) = (0usize, 0u32);
    if let Some(mut stdout) = child.stdout.take() {
        // Page-aligned, as the cat's own buffers (`crate::limits::page_aligned`).
        let mut storage = vec![0u8; MIB + crate::limits::PAGE_BYTES];
        let buf = crate::limits::page_aligned(&mut storage, MIB);
        loop {
            let n = stdout.read(buf).map_err(PerfError::io("read eggs cat output"))?;
            if n == 0 {
                break;
            }
            received_crc = wire::crc::crc32c_append(received_crc, &buf[..n]);
            received += n;
        }
    }
    let (status, cpu_seconds) = wait_with_cpu(&mut child)?;
    let elapsed = started.elapsed();
    let stderr = stderr_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(failed(&format!("eggs cat {remote}"), status, &stderr));
    }
    if output == CatOutput::Checked && (received != bytes || received_crc != crc) {
        return Err(PerfError::Protocol(format!(
            "eggs cat {remote} returned {received} bytes (crc {received_crc:08x}), expected {bytes} (crc {crc:08x})"
        )));
    }
    Ok(CatRun { mb_per_second: mb_per_second(bytes as u64, elapsed), cpu_seconds })
}

/// Reaps `child` with `wait4`: its exit status and user + system CPU seconds.
fn wait_with_cpu(child: &mut std::process::Child) -> Result<(std::process::ExitStatus, f64)> {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our unreaped child; the pointers are valid for the call.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(PerfError::io("wait for eggs cat")(error));
        }
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((std::process::ExitStatus::from_raw(status), seconds(usage.ru_utime) + seconds(usage.ru_stime)))
}
