//! What `eggs` prints: stdout that ends the command quietly when the reader
//! goes away (EPIPE, as coreutils do: Rust ignores SIGPIPE, so a write to a
//! closed pipe fails with `BrokenPipe`; we remember that, stop, and exit 0),
//! human sizes, ISO-8601 times, the JSON entry schema, and progress bars.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use client::client::{DirEntry, Stat};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use wire::{EggsTime, InodeId, InodeType};

/// Set once a write to stdout found the reader gone.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// The error a write to a closed stdout becomes; `main` exits 0 on it.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct StdoutClosed;

/// True when the command stopped because stdout's reader went away.
pub fn is_stdout_closed(error: &anyhow::Error) -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed) || error.chain().any(|cause| cause.is::<StdoutClosed>())
}

pub fn stdout_error(error: std::io::Error) -> anyhow::Error {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        StdoutClosed.into()
    } else {
        anyhow::Error::new(error).context("writing to stdout")
    }
}

/// Writes one line to stdout.
pub fn line(text: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").map_err(stdout_error)
}

/// Writes bytes as they are.
pub fn write_bytes(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes).map_err(stdout_error)
}

/// Writes a JSON value as one line.
pub fn json(value: &serde_json::Value) -> anyhow::Result<()> {
    line(value)
}

/// Flushes stdout at the end of a command: the exit code.
pub fn flush_stdout() -> ExitCode {
    match std::io::stdout().lock().flush() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("eggs: writing to stdout: {error}");
            ExitCode::from(1)
        }
    }
}

// ---- sizes and times ----

/// `ls -h` style: bytes below 1 KiB, else one decimal under 10 units
/// (`1.5K`), whole units above (`15K`); binary units K M G T P E.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if bytes < 1024 {
        return bytes.to_string();
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    value /= 1024.0;
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 9.95 { format!("{value:.1}{}", UNITS[unit]) } else { format!("{:.0}{}", value, UNITS[unit]) }
}

/// A size as `-h` asks: human, else bytes.
pub fn size_text(bytes: u64, human: bool) -> String {
    if human { human_size(bytes) } else { bytes.to_string() }
}

/// An eggs time as ISO-8601 UTC with nanoseconds: `2026-01-02T03:04:05.123456789Z`.
pub fn iso_utc(time: EggsTime) -> String {
    time.human()
}

/// An eggs time as ISO-8601 in local time: `2026-01-02T03:04:05+01:00`,
/// with `.nnnnnnnnn` before the offset when `nanos`.
pub fn iso_local(time: EggsTime, nanos: bool) -> String {
    let unix_ns = time.unix_ns();
    let seconds = (unix_ns / 1_000_000_000) as libc::time_t;
    let mut tm = std::mem::MaybeUninit::<libc::tm>::zeroed();
    // SAFETY: valid pointers to a time_t and a tm; localtime_r is thread-safe.
    let converted = unsafe { libc::localtime_r(&seconds, tm.as_mut_ptr()) };
    if converted.is_null() {
        return iso_utc(time);
    }
    // SAFETY: localtime_r succeeded, so it filled the struct.
    let tm = unsafe { tm.assume_init() };
    let offset = tm.tm_gmtoff;
    let sign = if offset < 0 { '-' } else { '+' };
    let fraction = if nanos { format!(".{:09}", unix_ns % 1_000_000_000) } else { String::new() };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{fraction}{sign}{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        offset.abs() / 3600,
        offset.abs() % 3600 / 60
    )
}

pub fn type_name(inode: InodeId) -> &'static str {
    if inode.is_null() {
        return "NOTHING";
    }
    inode.inode_type().map_or("UNKNOWN", InodeType::name)
}

/// One letter for `ls -l`: `d`, `-` (file), `l` (symlink), `?`.
pub fn type_letter(inode: InodeId) -> char {
    match inode.inode_type() {
        Some(InodeType::Directory) => 'd',
        Some(InodeType::File) => '-',
        Some(InodeType::Symlink) => 'l',
        None => '?',
    }
}

/// An entry with what `stat` says of it (if it could be stat'ed).
#[derive(Clone, Debug)]
pub struct Described {
    pub path: String,
    pub name: String,
    /// Without the owning bit; null for a "nothing" version.
    pub inode: InodeId,
    pub stat: Option<Stat>,
    /// The directory entry, when it came from a listing.
    pub entry: Option<DirEntry>,
}

impl Described {
    pub fn size(&self) -> Option<u64> {
        match &self.stat {
            Some(Stat::File { size, .. }) => Some(*size),
            _ => None,
        }
    }

    pub fn mtime(&self) -> Option<EggsTime> {
        match &self.stat {
            Some(Stat::File { mtime, .. } | Stat::Directory { mtime, .. }) => Some(*mtime),
            None => None,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.inode.inode_type() == Some(InodeType::Directory)
    }

    /// The stable JSON form (schema in `eggs --help`).
    pub fn json(&self) -> serde_json::Value {
        let mut value = serde_json::json!({
            "path": self.path,
            "name": self.name,
            "inode": self.inode.to_string(),
            "type": type_name(self.inode),
            "size": self.size(),
            "mtime": self.mtime().map(iso_utc),
            "mtime_unix_ns": self.mtime().map(EggsTime::unix_ns),
        });
        if let (Some(entry), Some(object)) = (&self.entry, value.as_object_mut()) {
            object.insert("owning".into(), entry.inode.is_owning().into());
            object.insert("creation_time".into(), iso_utc(entry.creation_time).into());
        }
        value
    }

    /// The `ls -l` line: type, size, mtime (local), inode, name.
    pub fn long_line(&self, human: bool, size_width: usize, label: &str) -> String {
        let size = match (&self.stat, self.size()) {
            (_, Some(size)) => size_text(size, human),
            (Some(_), None) => "-".to_owned(),
            (None, None) => "?".to_owned(),
        };
        let mtime = self.mtime().map_or_else(|| "-".repeat(25), |mtime| iso_local(mtime, false));
        format!("{} {size:>size_width$} {mtime} {} {label}", type_letter(self.inode), self.inode)
    }
}

// ---- progress ----

/// Draws progress on stderr when it is not a terminal but the user asked
/// (`-P`): one line per redraw, at most twice a second.
#[derive(Debug)]
struct StderrLines;

impl TermLike for StderrLines {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, text: &str) -> std::io::Result<()> {
        if text.trim().is_empty() {
            return Ok(());
        }
        writeln!(std::io::stderr(), "{text}")
    }
    fn write_str(&self, text: &str) -> std::io::Result<()> {
        if text.trim().is_empty() {
            return Ok(());
        }
        writeln!(std::io::stderr(), "{text}")
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A progress display: a bar when the size is known, else a spinner with
/// bytes and rate. Shown when stderr is a terminal, or always with `force`.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(total: Option<u64>, force: bool, label: &str) -> Self {
        let terminal = std::io::stderr().is_terminal();
        if !terminal && !force {
            return Self { bar: None };
        }
        let target = if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::term_like_with_hz(Box::new(StderrLines), 2)
        };
        let (bar, template) = match total {
            Some(total) => (
                ProgressBar::with_draw_target(Some(total), target),
                "{prefix} {bytes}/{total_bytes} {bar:30} {binary_bytes_per_sec} eta {eta}",
            ),
            None => (
                ProgressBar::with_draw_target(None, target),
                "{prefix} {spinner} {bytes} {binary_bytes_per_sec} {elapsed}",
            ),
        };
        let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(label.to_owned());
        Self { bar: Some(bar) }
    }

    /// The callback the client library calls with bytes done so far.
    pub fn set(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes);
        }
    }

    /// Done: a last line with the total when forced on a non-terminal.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            if std::io::stderr().is_terminal() {
                bar.finish_and_clear();
            } else {
                bar.finish();
            }
        }
    }

    pub fn abandon(self) {
        if let Some(bar) = self.bar {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_read_like_ls() {
        assert_eq!(human_size(0), "0");
        assert_eq!(human_size(1023), "1023");
        assert_eq!(human_size(1024), "1.0K");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(15 * 1024), "15K");
        assert_eq!(human_size(1 << 20), "1.0M");
        assert_eq!(human_size(1023 * 1024 * 1024), "1023M");
        assert_eq!(human_size(5 << 40), "5.0T");
    }

    #[test]
    fn utc_times_are_iso_8601() {
        let time = EggsTime::from_unix_ns(1_700_000_000_123_456_789).expect("after 2020");
        assert_eq!(iso_utc(time), "2023-11-14T22:13:20.123456789Z");
        let leap = EggsTime::from_unix_ns(1_709_164_800_000_000_000).expect("after 2020");
        assert_eq!(iso_utc(leap), "2024-02-29T00:00:00.000000000Z");
    }
}
