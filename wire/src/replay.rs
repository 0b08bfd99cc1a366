//! Replay protection for privileged datagrams: the freshness window and the
//! record of requests seen within it.
//!
//! A MAC proves that a holder of the cluster key wrote a datagram, not when.
//! Every privileged datagram therefore carries its send time inside the
//! MAC'd bytes ([`crate::datagram::sent_at`]), and a server keeps one
//! [`ReplayGuard`]:
//!
//! - a datagram whose send time is more than
//!   [`PRIVILEGED_DATAGRAM_WINDOW_NS`] from the server's clock, or not after
//!   the guard's *floor*, is **stale**: dropped unanswered;
//! - a fresh datagram whose request (id, kind, body) was seen before is a
//!   **duplicate**: a retransmission, or a replay from any source address.
//!   It is never executed again; once the original's answer is recorded it
//!   is answered with that answer, which the replayer could have captured
//!   anyway;
//! - anything else is **new**: execute it, then [`ReplayGuard::complete`]
//!   it (or [`ReplayGuard::abandon`] it when it was not executed, e.g. a
//!   storage error rolled it back, so that its retry runs).
//!
//! The record keeps an entry until every datagram that could match it is
//! stale (its latest send time plus the window). It is bounded
//! ([`REPLAY_RECORD_ENTRIES_MAX`]): evicting an entry early raises the floor
//! to that entry's latest send time, so no datagram the record forgot can be
//! admitted. The floor starts at the guard's creation, so a restarted server
//! refuses every datagram sent before it started (its record is gone).
//! Requesters stamp every transmission afresh (each CDC step attempt is a
//! new encoding of the same request id), so an honest retry is never stale.
//!
//! Plain logic: time comes in as arguments, no clock is read here.

use std::collections::{HashMap, VecDeque};

use crate::crc::crc32c;
use crate::datagram::{HEADER_BYTES, Header, PRIVILEGED_TRAILER_BYTES};
use crate::ids::EggsTime;
use crate::limits::{PRIVILEGED_DATAGRAM_WINDOW_NS, REPLAY_RECORD_ENTRIES_MAX};

/// What identifies one request across its retransmissions: the requester's
/// id, the kind, and a checksum of the body (the send time and MAC differ
/// between retransmissions; the body does not). Two honest requests share
/// a fingerprint only if they share a 64-bit request id, kind and body —
/// and then they are the same request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Fingerprint {
    pub request_id: u64,
    pub kind: u8,
    pub body_crc: u32,
}

impl Fingerprint {
    /// The fingerprint of a privileged datagram whose MAC has been checked.
    pub fn of(header: &Header, bytes: &[u8]) -> Self {
        let end = bytes.len().saturating_sub(PRIVILEGED_TRAILER_BYTES).max(HEADER_BYTES);
        let body = bytes.get(HEADER_BYTES..end).unwrap_or_default();
        Self { request_id: header.request_id(), kind: header.kind, body_crc: crc32c(body) }
    }
}

/// The guard's verdict on one privileged datagram.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Admission<'a> {
    /// Never seen: execute it, then complete or abandon it.
    New,
    /// Seen, and answered with these bytes: send them again, do not execute.
    Answered(&'a [u8]),
    /// Seen, still executing: drop it; the requester will retry.
    InFlight,
    /// Outside the window or not after the floor: drop it unanswered.
    Stale,
}

struct Entry {
    /// The latest send time of any datagram with this fingerprint.
    latest_sent_at: EggsTime,
    answer: Option<Vec<u8>>,
}

/// The record of privileged requests seen within the window; see the
/// module documentation.
pub struct ReplayGuard {
    window_ns: u64,
    capacity: usize,
    floor: EggsTime,
    entries: HashMap<Fingerprint, Entry>,
    /// Fingerprints in order of first admission, for expiry and eviction.
    order: VecDeque<Fingerprint>,
    stale: u64,
    duplicates: u64,
}

impl ReplayGuard {
    /// A guard created at `started`: datagrams sent before then are stale.
    pub fn new(started: EggsTime) -> Self {
        Self::with_limits(started, PRIVILEGED_DATAGRAM_WINDOW_NS, REPLAY_RECORD_ENTRIES_MAX)
    }

    /// A guard with another window and capacity (tests).
    pub fn with_limits(started: EggsTime, window_ns: u64, capacity: usize) -> Self {
        assert!(capacity > 0, "a replay record needs room for one entry");
        Self {
            window_ns,
            capacity,
            floor: started,
            entries: HashMap::new(),
            order: VecDeque::new(),
            stale: 0,
            duplicates: 0,
        }
    }

    /// Decides what to do with a datagram of `fingerprint` sent at `sent_at`,
    /// received at `now`.
    pub fn admit(&mut self, fingerprint: Fingerprint, sent_at: EggsTime, now: EggsTime) -> Admission<'_> {
        self.expire(now);
        if sent_at.get().abs_diff(now.get()) > self.window_ns || sent_at <= self.floor {
            self.stale += 1;
            return Admission::Stale;
        }
        if self.entries.contains_key(&fingerprint) {
            self.duplicates += 1;
            let entry = self.entries.get_mut(&fingerprint).expect("checked above");
            if sent_at > entry.latest_sent_at {
                entry.latest_sent_at = sent_at;
            }
            return match &entry.answer {
                Some(answer) => Admission::Answered(answer),
                None => Admission::InFlight,
            };
        }
        while self.order.len() >= self.capacity {
            self.evict_oldest();
        }
        self.entries.insert(fingerprint, Entry { latest_sent_at: sent_at, answer: None });
        self.order.push_back(fingerprint);
        Admission::New
    }

    /// Records the answer of a request admitted as [`Admission::New`].
    pub fn complete(&mut self, fingerprint: Fingerprint, answer: &[u8]) {
        if let Some(entry) = self.entries.get_mut(&fingerprint) {
            entry.answer = Some(answer.to_vec());
        }
    }

    /// Forgets a request admitted as new that was not executed (its
    /// transaction failed), so that its retry is executed. Its original
    /// datagram may then run once — which is its first execution.
    pub fn abandon(&mut self, fingerprint: Fingerprint) {
        if self.entries.remove(&fingerprint).is_some() {
            self.order.retain(|f| *f != fingerprint);
        }
    }

    /// Datagrams refused as stale so far.
    pub fn stale_count(&self) -> u64 {
        self.stale
    }

    /// Duplicates (retransmissions or replays) recognised so far.
    pub fn duplicate_count(&self) -> u64 {
        self.duplicates
    }

    /// Entries in the record.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops entries no datagram can match any more: every datagram with
    /// their fingerprint was sent at or before `latest_sent_at`, so is stale
    /// after `latest_sent_at + window`. Only the front is looked at; an
    /// entry refreshed by a retry keeps those behind it a little longer,
    /// which the capacity bounds.
    fn expire(&mut self, now: EggsTime) {
        while let Some(front) = self.order.front() {
            let expired = self
                .entries
                .get(front)
                .is_none_or(|entry| entry.latest_sent_at.saturating_add_ns(self.window_ns) < now);
            if !expired {
                break;
            }
            let front = *front;
            self.entries.remove(&front);
            self.order.pop_front();
        }
    }

    /// Evicts the oldest entry before its time and raises the floor so that
    /// no datagram it could have matched is admitted.
    fn evict_oldest(&mut self) {
        if let Some(oldest) = self.order.pop_front()
            && let Some(entry) = self.entries.remove(&oldest)
            && entry.latest_sent_at > self.floor
        {
            self.floor = entry.latest_sent_at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn fingerprint(request_id: u64) -> Fingerprint {
        Fingerprint { request_id, kind: 0x83, body_crc: 7 }
    }

    fn at(seconds: u64) -> EggsTime {
        EggsTime::new(1000 * SECOND + seconds * SECOND)
    }

    // The CDC's retransmission of a step (same id and body, a fresh stamp)
    // gets the recorded answer; so does a replay of the original bytes.
    #[test]
    fn duplicates_get_the_recorded_answer_and_are_not_executed() {
        let mut guard = ReplayGuard::new(at(0));
        assert_eq!(guard.admit(fingerprint(1), at(1), at(1)), Admission::New);
        assert_eq!(guard.admit(fingerprint(1), at(1), at(1)), Admission::InFlight);
        guard.complete(fingerprint(1), b"answer");
        assert_eq!(guard.admit(fingerprint(1), at(5), at(5)), Admission::Answered(b"answer"));
        assert_eq!(guard.admit(fingerprint(1), at(1), at(6)), Admission::Answered(b"answer"));
        assert_eq!(guard.duplicate_count(), 3);
        // Another body under the same id is another request.
        let other = Fingerprint { body_crc: 8, ..fingerprint(1) };
        assert_eq!(guard.admit(other, at(6), at(6)), Admission::New);
    }

    #[test]
    fn datagrams_outside_the_window_are_stale() {
        let window = PRIVILEGED_DATAGRAM_WINDOW_NS / SECOND;
        let mut guard = ReplayGuard::new(at(0));
        guard.admit(fingerprint(1), at(1), at(1));
        guard.complete(fingerprint(1), b"answer");
        assert_eq!(guard.admit(fingerprint(1), at(1), at(2 + window)), Admission::Stale);
        assert_eq!(guard.admit(fingerprint(2), at(3 + 2 * window), at(2 + window)), Admission::Stale);
        // Sent before the guard started (a server restart forgot it).
        assert_eq!(guard.admit(fingerprint(3), at(0), at(1)), Admission::Stale);
        assert_eq!(guard.stale_count(), 3);
        // Expired entries leave the record.
        assert_eq!(guard.admit(fingerprint(4), at(3 + window), at(3 + window)), Admission::New);
        assert_eq!(guard.len(), 1);
    }

    // A retry keeps its entry alive past the original's window, so a
    // requester retrying for longer than the window is still answered.
    #[test]
    fn retries_extend_the_record() {
        let window = PRIVILEGED_DATAGRAM_WINDOW_NS / SECOND;
        let mut guard = ReplayGuard::new(at(0));
        guard.admit(fingerprint(1), at(1), at(1));
        guard.complete(fingerprint(1), b"answer");
        let later = at(1 + window);
        assert_eq!(guard.admit(fingerprint(1), later, later), Admission::Answered(b"answer"));
        let much_later = at(1 + window + window / 2);
        assert_eq!(guard.admit(fingerprint(1), much_later, much_later), Admission::Answered(b"answer"));
    }

    // An entry evicted for room raises the floor: the datagram it recorded
    // cannot be replayed, while fresh requests still pass.
    #[test]
    fn eviction_raises_the_floor() {
        let mut guard = ReplayGuard::with_limits(at(0), PRIVILEGED_DATAGRAM_WINDOW_NS, 2);
        for id in 1..=3 {
            assert_eq!(guard.admit(fingerprint(id), at(id), at(id)), Admission::New);
            guard.complete(fingerprint(id), b"answer");
        }
        assert_eq!(guard.len(), 2);
        assert_eq!(guard.admit(fingerprint(1), at(1), at(4)), Admission::Stale);
        assert_eq!(guard.admit(fingerprint(4), at(4), at(4)), Admission::New);
    }

    #[test]
    fn abandoned_requests_run_on_retry() {
        let mut guard = ReplayGuard::new(at(0));
        assert_eq!(guard.admit(fingerprint(1), at(1), at(1)), Admission::New);
        guard.abandon(fingerprint(1));
        assert_eq!(guard.admit(fingerprint(1), at(2), at(2)), Admission::New);
        assert_eq!(guard.len(), 1);
    }
}
