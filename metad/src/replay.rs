//! The shard's replay check of privileged requests (the CDC's steps).
//!
//! Every privileged datagram whose MAC verified passes through one shared
//! [`Gate`] (a [`wire::replay::ReplayGuard`] under a lock) before it is
//! read or queued for the writer:
//!
//! - stale (sent outside the freshness window, or before this process
//!   started): dropped unanswered and counted;
//! - a duplicate of a request already answered — the CDC's retransmission
//!   of a step, or a captured datagram replayed from any address and port —
//!   is answered with the recorded answer and not executed;
//! - a duplicate of a request still in the write queue is dropped (the
//!   requester retries and then finds the answer);
//! - a new request carries a [`Ticket`] to the writer, which records the
//!   answer when it sends it ([`Ticket::finish`]). A transient refusal
//!   (STORAGE_ERROR, OVERLOADED: the request was not applied) and a ticket
//!   dropped unfinished forget the request instead, so its retry runs.
//!
//! The record is keyed by request id, kind and body, never by the sender's
//! address, which an attacker chooses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use wire::datagram::{self, HEADER_BYTES, Header, KIND_PRIVILEGED_ERROR};
use wire::replay::{Admission, Fingerprint, ReplayGuard};
use wire::{EggsTime, ErrorKind};

/// Stale datagrams are logged once per this many (a replay flood cannot
/// fill the log).
const STALE_LOG_EVERY: u64 = 1000;

/// What to do with one privileged datagram.
pub enum Verdict {
    /// Execute it; hand the ticket to whoever sends the answer.
    Execute(Ticket),
    /// Send these bytes back (the recorded answer); do not execute.
    Answer(Vec<u8>),
    /// Send nothing.
    Drop,
}

/// The shared replay record of one shard.
pub struct Gate {
    guard: Mutex<ReplayGuard>,
    stale: AtomicU64,
}

impl Gate {
    /// A gate opened at `started`: datagrams sent before then are refused.
    pub fn new(started: EggsTime) -> Arc<Self> {
        Arc::new(Self { guard: Mutex::new(ReplayGuard::new(started)), stale: AtomicU64::new(0) })
    }

    fn guard(&self) -> MutexGuard<'_, ReplayGuard> {
        self.guard.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Checks the privileged datagram `bytes` (MAC already verified) from
    /// `peer`, received at `now`.
    pub fn admit(self: &Arc<Self>, header: &Header, bytes: &[u8], peer: SocketAddr, now: EggsTime) -> Verdict {
        let fingerprint = Fingerprint::of(header, bytes);
        let sent_at = datagram::sent_at(bytes).unwrap_or(EggsTime::ZERO);
        match self.guard().admit(fingerprint, sent_at, now) {
            Admission::New => Verdict::Execute(Ticket { gate: self.clone(), fingerprint, finished: false }),
            Admission::Answered(answer) => Verdict::Answer(answer.to_vec()),
            Admission::InFlight => Verdict::Drop,
            Admission::Stale => {
                let stale = self.stale.fetch_add(1, Ordering::Relaxed) + 1;
                if stale % STALE_LOG_EVERY == 1 {
                    tracing::warn!(
                        %peer,
                        kind = header.kind,
                        request_id = header.request_id(),
                        sent_at = %sent_at.human(),
                        stale,
                        "dropping a stale privileged datagram (a replay, or clocks out of sync)"
                    );
                }
                Verdict::Drop
            }
        }
    }

    /// Privileged datagrams dropped as stale so far.
    pub fn stale_count(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }

    /// Duplicates (retransmissions and replays) recognised so far.
    pub fn duplicate_count(&self) -> u64 {
        self.guard().duplicate_count()
    }
}

/// A privileged request admitted for execution. Dropped unfinished, it is
/// forgotten, so its retry is executed.
pub struct Ticket {
    gate: Arc<Gate>,
    fingerprint: Fingerprint,
    finished: bool,
}

impl Ticket {
    /// Records `answer`, the datagram sent in reply; a transient refusal is
    /// not recorded (the request did not happen; its retry must run).
    pub fn finish(&mut self, answer: &[u8]) {
        self.finished = true;
        if is_transient_refusal(answer) {
            self.gate.guard().abandon(self.fingerprint);
        } else {
            self.gate.guard().complete(self.fingerprint, answer);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.finished {
            self.gate.guard().abandon(self.fingerprint);
        }
    }
}

/// A MAC'd error answer saying "not done, try again": STORAGE_ERROR or
/// OVERLOADED (the error kind is the first two bytes of the body).
fn is_transient_refusal(answer: &[u8]) -> bool {
    if answer.get(12) != Some(&KIND_PRIVILEGED_ERROR) {
        return false;
    }
    let Some(code) = answer.get(HEADER_BYTES..HEADER_BYTES + 2) else { return false };
    let code = u16::from_le_bytes([code[0], code[1]]);
    code == ErrorKind::StorageError as u16 || code == ErrorKind::Overloaded as u16
}

/// What the I/O loop does with a received datagram before decoding it.
pub enum Screen {
    /// Decode and serve it; a privileged one carries its ticket.
    Serve(Option<Ticket>),
    /// Send the first `n` bytes of the output buffer (a recorded answer).
    Answer(usize),
    /// Send nothing.
    Drop,
}

/// Screens a datagram: public ones, and privileged ones whose MAC does not
/// verify (the decoder refuses those by name), pass unticketed.
pub fn screen(gate: &Arc<Gate>, key: &wire::MacKey, bytes: &[u8], peer: SocketAddr, out: &mut [u8]) -> Screen {
    let Ok(header) = datagram::peek_header(bytes, datagram::SHARD_MAGIC) else { return Screen::Serve(None) };
    let mac_start = bytes.len().saturating_sub(wire::mac::MAC_BYTES);
    if !header.is_privileged() || bytes.len() < HEADER_BYTES + datagram::PRIVILEGED_TRAILER_BYTES {
        return Screen::Serve(None);
    }
    let Ok(mac) = <[u8; wire::mac::MAC_BYTES]>::try_from(&bytes[mac_start..]) else { return Screen::Serve(None) };
    if !key.verify_message(&bytes[..mac_start], &mac) {
        return Screen::Serve(None);
    }
    match gate.admit(&header, bytes, peer, EggsTime::now()) {
        Verdict::Execute(ticket) => Screen::Serve(Some(ticket)),
        Verdict::Answer(answer) => match out.get_mut(..answer.len()) {
            Some(slot) => {
                slot.copy_from_slice(&answer);
                Screen::Answer(answer.len())
            }
            None => Screen::Drop,
        },
        Verdict::Drop => Screen::Drop,
    }
}
