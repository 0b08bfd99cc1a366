//! The last line of defence for a daemon's LMDB store: a fault inside the
//! store's map ends the process with one clear line, not a silent signal.
//!
//! [`crate::lmdb::check`] refuses a damaged file before it is mapped; what
//! it cannot see is damage that arrives later: the file truncated or
//! overwritten behind the daemon's back, or a disk read error (the kernel
//! answers a failed page-in with SIGBUS). [`guard`] installs a SIGSEGV and
//! SIGBUS handler (on the alternate signal stack Rust's runtime gives every
//! thread). When the faulting address lies inside the guarded map, it
//! writes one line to stderr, `PROCESS: the store FOLDER is damaged: a read
//! inside data.mdb faulted at byte offset N (SIGBUS); run `VERIFY FOLDER``,
//! writes the same line to the marker file `FOLDER/FAULT_MARKER`, and exits
//! with [`crate::exit::EXIT_STORE_FAULT`]. Only async-signal-safe calls are
//! made: `write`, `open`, `close`, `_exit`, `sigaction`. A fault elsewhere
//! is not the store's: the handler that was installed before (Rust's stack
//! overflow handler) runs, or the default action is restored and the fault
//! repeats, so a bug still dies as a bug.
//!
//! The marker makes the damage stick: [`marker`] finds it at the next
//! start, which refuses with one line until the store's verifier finds it
//! intact and removes the marker.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};

/// The marker file a fault leaves in the store's folder.
pub const FAULT_MARKER: &str = "FAULTED";

/// The marker in `folder`, with its line, if a fault left one.
pub fn marker(folder: &Path) -> Option<(PathBuf, String)> {
    let path = folder.join(FAULT_MARKER);
    let text = std::fs::read_to_string(&path).ok()?;
    Some((path, text.trim().to_string()))
}

/// What the handler needs, prepared before it is installed (the handler
/// only reads it).
struct Guarded {
    start: usize,
    end: usize,
    /// `PROCESS: the store FOLDER is damaged: a read inside data.mdb faulted at byte offset `
    head: Vec<u8>,
    /// `; run `VERIFY FOLDER`\n`
    tail: Vec<u8>,
    /// Empty: leave no marker.
    marker: CString,
    previous_segv: libc::sigaction,
    previous_bus: libc::sigaction,
}

static GUARDED: AtomicPtr<Guarded> = AtomicPtr::new(std::ptr::null_mut());

/// The address range where this process maps `file` (the largest such
/// mapping: LMDB's map), from `/proc/self/maps`. LMDB does not say where
/// its map is (its `map_addr` is set only with a fixed map).
pub fn mapping_of(file: &Path) -> Option<(usize, usize)> {
    let file = std::fs::canonicalize(file).ok()?;
    let file = file.to_str()?;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter(|line| line.ends_with(file))
        .filter_map(|line| {
            let (start, end) = line.split_whitespace().next()?.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            Some((start, end.checked_sub(start)?))
        })
        .max_by_key(|&(_, size)| size)
}

/// Guards the map of `FOLDER/data.mdb` (open already) for the rest of the
/// process: `process` names the daemon in the line. With `verify` (the
/// command that checks the store, `metad --verify`), the line says to run
/// it and the fault leaves the marker; without one (cdcd, shuckle: their
/// next start's structural check is the verification), the line says so
/// and no marker is left. A second call replaces the guarded map.
pub fn guard(process: &str, folder: &Path, verify: Option<&str>) -> std::io::Result<()> {
    let data = folder.join("data.mdb");
    let (start, bytes) = mapping_of(&data).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} is not mapped", data.display()))
    })?;
    let marker = match verify {
        Some(_) => CString::new(folder.join(FAULT_MARKER).as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL in the store's path"))?,
        None => CString::default(),
    };
    let folder = folder.display();
    let head = format!("{process}: the store {folder} is damaged: a read inside data.mdb faulted at byte offset ")
        .into_bytes();
    let tail = match verify {
        Some(verify) => format!("; run `{verify} {folder}`\n"),
        None => "; the next start checks its structure\n".to_string(),
    }
    .into_bytes();
    // SAFETY: zeroed sigaction structs are valid "nothing" values; they are
    // filled by sigaction below before the handler can read them.
    let mut guarded = Box::new(Guarded {
        start,
        end: start.saturating_add(bytes),
        head,
        tail,
        marker,
        previous_segv: unsafe { std::mem::zeroed() },
        previous_bus: unsafe { std::mem::zeroed() },
    });
    // SAFETY: plain sigaction calls with valid pointers; the handler is
    // async-signal-safe (see `on_fault`).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_fault as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let old = GUARDED.load(Ordering::Acquire);
        if old.is_null() {
            if libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut guarded.previous_segv) != 0
                || libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut guarded.previous_bus) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        } else {
            // Keep the handlers that were there before the first guard.
            guarded.previous_segv = (*old).previous_segv;
            guarded.previous_bus = (*old).previous_bus;
        }
        // Published before the handler is installed; never freed (a
        // handler may be reading the old one).
        GUARDED.store(Box::into_raw(guarded), Ordering::Release);
        if libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut()) != 0
            || libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes all of `bytes` to `fd` (async-signal-safe).
fn write_all(fd: libc::c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: a valid buffer of that length.
        let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if written <= 0 {
            return;
        }
        bytes = &bytes[written as usize..];
    }
}

/// The decimal digits of `value` in `buffer`; the used tail.
fn decimal(mut value: usize, buffer: &mut [u8; 20]) -> &[u8] {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buffer[at..];
        }
    }
}

/// The handler. Async-signal-safe: reads the prepared [`Guarded`], calls
/// only `write`, `open`, `close`, `_exit` and `sigaction`.
extern "C" fn on_fault(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let guarded = GUARDED.load(Ordering::Acquire);
    if guarded.is_null() {
        return;
    }
    // SAFETY: published once and never freed; `info` is the kernel's.
    let guarded = unsafe { &*guarded };
    let address = unsafe { (*info).si_addr() } as usize;
    if (guarded.start..guarded.end).contains(&address) {
        let mut digits = [0u8; 20];
        let offset = decimal(address - guarded.start, &mut digits);
        let name: &[u8] = if signal == libc::SIGBUS { b" (SIGBUS)" } else { b" (SIGSEGV)" };
        for fd in [libc::STDERR_FILENO, -1] {
            let fd = if fd >= 0 {
                fd
            } else if guarded.marker.is_empty() {
                continue;
            } else {
                // SAFETY: a NUL-terminated path prepared before.
                unsafe {
                    libc::open(
                        guarded.marker.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                        0o600,
                    )
                }
            };
            if fd < 0 {
                continue;
            }
            write_all(fd, &guarded.head);
            write_all(fd, offset);
            write_all(fd, name);
            write_all(fd, &guarded.tail);
            if fd != libc::STDERR_FILENO {
                // SAFETY: the descriptor opened above. The marker is not
                // fsynced: a machine crash now loses only the marker, and
                // the start-up check still sees the damage it can see.
                unsafe { libc::close(fd) };
            }
        }
        // SAFETY: ends the process without running anything else.
        unsafe { libc::_exit(i32::from(crate::exit::EXIT_STORE_FAULT)) };
    }
    let previous = if signal == libc::SIGBUS { &guarded.previous_bus } else { &guarded.previous_segv };
    let handler = previous.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Not the store's fault: the default action, when the faulting
        // instruction runs again on return.
        // SAFETY: restores a valid action read by sigaction.
        unsafe { libc::sigaction(signal, previous, std::ptr::null_mut()) };
    } else if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler, called as the kernel would.
        let previous: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        previous(signal, info, context);
    } else {
        // SAFETY: as above, a one-argument handler.
        let previous: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        previous(signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_print_in_decimal() {
        let mut digits = [0u8; 20];
        assert_eq!(decimal(0, &mut digits), b"0");
        assert_eq!(decimal(8192, &mut digits), b"8192");
        assert_eq!(decimal(usize::MAX, &mut digits), usize::MAX.to_string().as_bytes());
    }
}
