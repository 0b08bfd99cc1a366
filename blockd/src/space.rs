//! When the block service is **full**, and telling shuckle at once
//! (issue 17 G2).
//!
//! The service reports as free (in `stats`, which shuckle turns into write
//! weights) only the space above its reserve (`--reserve-bytes`, default
//! [`BLOCK_SERVICE_RESERVE_BYTES_DEFAULT`]). It is full when that is zero:
//!
//! - **under the reserve**: the file system's free space is below it;
//! - **after a write found the disk full** (ENOSPC, EDQUOT): until the free
//!   space has grown by that write's size (the write would now fit), even
//!   if the reserve is still free (a small reserve, or blocks larger than
//!   what is left), so a disk that just refused a block is not offered
//!   for the next one.
//!
//! A change either way is news for shuckle: the registration thread looks
//! at the free space every [`BLOCK_SERVICE_SPACE_POLL_NS`] and, when the
//! state flips, sends its registration out of turn; shuckle checks the
//! service on it (a `stats` exchange, MAC'd) and from then on gives it no
//! write weight, or gives it back. A write that hits ENOSPC wakes the
//! thread at once instead of waiting for the poll.
//!
//! Full is advice to placement, not a refusal: a full service still tries
//! every write it gets (a small block may fit), and answers `NO_SPACE` only
//! when the disk really refuses the bytes.
//!
//! The state is plain code over the free space it is shown ([`FullState`]);
//! [`SpaceWatch`] adds the atomics that the executors and the registration
//! thread share.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

pub use wire::limits::{BLOCK_SERVICE_RESERVE_BYTES_DEFAULT, BLOCK_SERVICE_SPACE_POLL_NS};

/// The full/not-full decision, from the free space it is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FullState {
    reserve_bytes: u64,
    /// After a write found the disk full: the free space at which that
    /// write would have fitted. Full until the disk has that much free.
    recovery_free_bytes: Option<u64>,
}

impl FullState {
    pub fn new(reserve_bytes: u64) -> Self {
        Self { reserve_bytes, recovery_free_bytes: None }
    }

    /// The space reported free for blocks when the file system has
    /// `available_bytes` free: 0 means full. Forgets a recovery mark the
    /// disk has reached.
    pub fn free_for_blocks(&mut self, available_bytes: u64) -> u64 {
        if let Some(mark) = self.recovery_free_bytes {
            if available_bytes < mark {
                return 0;
            }
            self.recovery_free_bytes = None;
        }
        available_bytes.saturating_sub(self.reserve_bytes)
    }

    /// A write of `write_bytes` found the disk full with `available_bytes`
    /// then free.
    pub fn no_space(&mut self, available_bytes: u64, write_bytes: u64) {
        let mark = available_bytes.saturating_add(write_bytes.max(1));
        self.recovery_free_bytes = Some(self.recovery_free_bytes.map_or(mark, |old| old.max(mark)));
    }
}

/// [`FullState`] shared by the executors (a write that hit ENOSPC, the
/// stats answer) and the registration thread (the poll), with the wake-up
/// of that thread.
pub struct SpaceWatch {
    state: Mutex<FullState>,
    wake: SyncSender<()>,
}

impl SpaceWatch {
    /// The watch and the receiver the registration thread waits on.
    pub fn new(reserve_bytes: u64) -> (Self, Receiver<()>) {
        // One pending wake-up is enough: the thread reads the state itself.
        let (wake, woken) = sync_channel(1);
        (Self { state: Mutex::new(FullState::new(reserve_bytes)), wake }, woken)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FullState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// See [`FullState::free_for_blocks`]. A lock held for a few
    /// instructions, once per stats request (once a second per shuckle),
    /// and on a disk-full failure: never on the path of a good write.
    pub fn free_for_blocks(&self, available_bytes: u64) -> u64 {
        self.state().free_for_blocks(available_bytes)
    }

    /// A write found the disk full: remember it and wake the registration
    /// thread, which tells shuckle.
    pub fn no_space(&self, available_bytes: u64, write_bytes: u64) {
        self.state().no_space(available_bytes, write_bytes);
        // Full: a wake-up is already pending. Disconnected: the
        // registration thread is gone (stopping). Neither needs more.
        let _: Result<(), TrySendError<()>> = self.wake.try_send(());
    }
}

/// True for the errors that mean the disk (or the quota) is full.
pub fn is_no_space(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::StorageFull
        || error.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_above_the_reserve_is_reported() {
        let mut state = FullState::new(100);
        assert_eq!(state.free_for_blocks(1_000), 900);
        assert_eq!(state.free_for_blocks(100), 0, "at the reserve: full");
        assert_eq!(state.free_for_blocks(50), 0);
        assert_eq!(state.free_for_blocks(101), 1);
    }

    #[test]
    fn a_full_disk_stays_full_until_the_failed_write_would_fit() {
        let mut state = FullState::new(0);
        // A 1000-byte write failed with 300 bytes free.
        state.no_space(300, 1_000);
        assert_eq!(state.free_for_blocks(300), 0);
        assert_eq!(state.free_for_blocks(1_299), 0, "space freed, but not enough for that write");
        assert_eq!(state.free_for_blocks(1_300), 1_300, "the write would fit now");
        // The mark is forgotten once reached.
        assert_eq!(state.free_for_blocks(500), 500);
    }

    #[test]
    fn a_later_failure_keeps_the_higher_mark() {
        let mut state = FullState::new(0);
        state.no_space(100, 1_000);
        state.no_space(50, 10);
        assert_eq!(state.free_for_blocks(1_099), 0);
        assert_eq!(state.free_for_blocks(1_100), 1_100);
    }

    #[test]
    fn the_registration_thread_is_woken_once_per_burst() {
        let (watch, woken) = SpaceWatch::new(0);
        watch.no_space(0, 1);
        watch.no_space(0, 1);
        assert!(woken.try_recv().is_ok());
        assert!(woken.try_recv().is_err(), "wake-ups coalesce");
        assert_eq!(watch.free_for_blocks(0), 0);
    }

    #[test]
    fn enospc_is_recognised() {
        assert!(is_no_space(&std::io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_no_space(&std::io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(is_no_space(&std::io::Error::new(std::io::ErrorKind::StorageFull, "short write")));
        assert!(!is_no_space(&std::io::Error::from_raw_os_error(libc::EIO)));
    }
}
