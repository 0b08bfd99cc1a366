//! Drives transactions to their end, many at once: each one waits for its
//! locks ([`crate::locks`]), sends its steps through [`Shards`], retries
//! timeouts with exponential backoff (same request id), persists its state
//! through the group commit ([`crate::commit`]) at the few points where it
//! must ("fences", below), and stores the outcome.
//!
//! Reads (stat, resolve) are not persisted before: after a restart they are
//! simply asked again. A read gives up after the read deadline: before the
//! transaction's first mutation it fails the transaction, after one (the
//! loop check) it rolls the transaction back. Mutations are retried until
//! answered: stopping half way would leave entries held; the locks keep
//! such a transaction from blocking anything that does not conflict.
//!
//! # When the state is persisted
//!
//! The rule "a step goes out only after its state is durable" holds in this
//! sense: before a mutation is sent, the store holds a record from which a
//! restarted CDC reaches this very step, with the same request, by
//! re-sending (same request ids) the mutations sent since that record. That
//! record need not be the current step: it is persisted only at a *fence*,
//! a mutation that is
//!
//! 1. the transaction's first (the *plan*: arguments, the results of its
//!    reads, the first mutation; nothing was sent before, so a crash before
//!    it loses nothing a client was told; a dry-run inject changes nothing
//!    and counts as a read);
//! 2. the first after an answer a re-send might not reproduce: a read
//!    (stat, resolve, the loop check), a dry-run inject, or a refusal (every
//!    rollback starts after a refusal);
//! 3. the first release_dirent (release or kill) since the stored record,
//!    unless every mutation since that record is one its shard remembers
//!    for the transaction ("Remembered requests", below): an mkdir's create
//!    and inject (or its create_linked_dir), an mv's acquire and inject
//!    (or an mv file's move_file_in_shard), an mv dir's inject after its
//!    loop check. So mkdir and mv file have no fence 3 (rmdir's set_parent
//!    keeps it).
//!
//! Why re-sending from the stored record reaches the same step: between
//! fences the transaction sends only mutations whose answers repeat.
//! create_unlinked_dir, create_linked_dir, inject_dirent, acquire_dirent
//! and move_file_in_shard are remembered by their shard per transaction
//! (below; [`is_remembered`] is the one list of them): sent again, each
//! answers as the first did and changes nothing, whatever happened to the
//! entry since.
//! set_parent to null of a directory whose entry is held finds it empty
//! again (nobody can link into a directory without a parent), but only
//! while the entry is held: the first release or kill ends that (clients
//! may use the entry again), hence fence 3 where such a step came before
//! the release. What follows the release (releases, kills, set_parent to
//! the new parent, purge_remote_owning_dirent, move_file_to_eden) answers
//! "done" however often it is sent: release_dirent never fails and acts
//! only on a non-owning entry that points to its inode (a release makes it
//! owning, a kill buries it; an owning entry is a client's again, e.g. a
//! file a client renamed back to the source name of a same-directory move,
//! and a re-sent kill leaves it). Refusals are not repeatable (the name may
//! be free by then), hence fence 2 — with reads, whose answers depend on
//! everyone else.
//!
//! # Remembered requests
//!
//! Before session 9 an inject sent again after the release could link a
//! directory twice (a client renamed the released entry; the inject found
//! the name free): fence 3 kept the transaction from ever re-sending it.
//! Now the shard makes the inject harmless instead. In the same LMDB commit
//! as the change, it records under the transaction's id what it answered
//! (create_unlinked_dir: the directory; inject: dir, inode, creation time;
//! acquire: dir, inode, creation time; create_linked_dir: parent, directory,
//! creation time; move_file_in_shard: target directory, file, creation
//! time; in metad's `unlinked_dirs`, keyed by transaction id BE
//! and a tag), and a request of the same transaction
//! finds the record first and answers from it without looking at the
//! entry. A refusal is not recorded (fence 2 covers it), nor a dry run.
//!
//! With the inject remembered, the non-owning phase of a mkdir's or an mv
//! file's target entry protects nothing (it kept the entry from clients
//! until a re-sent inject could no longer happen), so they inject it owning
//! (`inject_dirent.owning`, inject and release in one commit) and have no
//! release step. An mv dir keeps inject non-owning, then release: its
//! directory's parent changes only with the set_parent after.
//!
//! How long: until the CDC will never send that transaction's requests
//! again, which is once its outcome's record is durable (a restart resumes
//! only unfinished records; a client's retransmission is answered from the
//! store). Every create, inject and acquire carries `forget_below`: the
//! lowest id among the transactions that may still send (handed out and not
//! refused at once, or resumed, and whose outcome is not durable yet; with
//! none, the next id the store hands out — ids are handed out under the
//! same lock, and they only grow, also across a wiped store). The shard
//! drops the records below it, at most `CDC_FORGET_PER_REQUEST_MAX` per
//! request, oldest first (they are the table's first keys), so the table
//! holds about the transactions in flight plus those that finished since
//! the oldest one still running started: bounded by the CDC's own
//! concurrency while it runs, and while a transaction is stuck (a shard
//! down) by the transactions since, as the CDC's store is. A request adds
//! at most one record and drops up to 16 that are due, so a shard's due
//! records only shrink while the CDC talks to it; a shard the CDC stops
//! sending to keeps its last few until the next request (the simulation's
//! `shards_forget_finished_transactions`: 128 records after 64 concurrent
//! mkdirs, 3 after 24 more). A stale
//! `forget_below` (a retransmission, a reordered datagram) is lower, never
//! higher, so it only forgets less.
//!
//!
//! A restarted CDC therefore treats every mutation up to its next fence as
//! possibly executed ("uncertain"): the run it replaces never sent anything
//! past its own next fence, which was not durable.
//!
//! The outcome follows the same rule. When the path since the stored
//! record is replayable, the client is answered at once and the outcome's
//! record is queued for the next commit (not waited for): a crash before it
//! is durable resumes from the stored record and reaches the same outcome;
//! the transaction counts as running (a duplicate of the request is not
//! taken for a new one) until the record is durable. Otherwise (an outcome
//! reached through a read or a refusal, e.g. ALREADY_EXISTS), the outcome is
//! durable before it is told.
//!
//! A mkdir is thus: stat, resolve, [plan] create, inject (owning: no
//! release step, see below), answer (its outcome committed with the next
//! batch): one commit the transaction waits for, where every step used to
//! wait for one (four), and session 8's chain two. When the new
//! directory's shard (chosen as always, from the transaction id: not
//! biased) is the parent's, create and inject are one request,
//! create_linked_dir: one shard transaction and one shard sync, and no
//! resolve before it (stat, [plan] create_linked_dir, answer): the request
//! checks the name itself, and a refusal (the name taken) leaves nothing,
//! so there is no rollback step; such a refusal is told once its record is
//! durable, as every refusal. Records of older runs at the two-step create
//! resume through it, whatever its shard. An mv file whose parents are on
//! one shard: the parents' stats (at once), [plan] move_file_in_shard,
//! answer (one shard transaction does the resolve's and the acquire's
//! checks, the owning inject with inject's overwrite rules and the kill: a
//! reader sees the old name or the new one, a refusal leaves nothing to
//! release; the CDC's entry locks keep other transactions off both names,
//! and a client's shard-local change to either name is judged by the
//! request itself); otherwise three reads (at once), [plan] acquire,
//! inject (owning), kill source, answer. Records of older runs at a same-shard file's acquire
//! resume through acquire, inject and kill. An mv dir: reads, dry run, [plan] acquire,
//! loop check, [fence] inject, release target, kill source, set_parent,
//! answer. An rmdir: stat, [plan] acquire, set_parent to null, [fence] kill,
//! answer. Commits are shared by every transaction that queued a record
//! meanwhile.
//!
//! # Sending ahead
//!
//! A transaction is a chain of steps, and each step of the chain used to
//! wait for the previous one's answer. Where a step's request does not
//! depend on the previous answer ([`TxnState::next_if_answered`]), the
//! requests go out together and their answers are used in step order:
//!
//! - the reads before the plan: mkdir's stat parent and resolve (no
//!   resolve when the new directory lands on the parent's shard); a move's
//!   stat target parent, stat source parent and resolve source (no resolve
//!   for a file whose parents share a shard). Reads
//!   change nothing, and an answer is used only while the transaction is
//!   on the step it was sent for (a failed stat ends the transaction and
//!   the resolve's answer is dropped).
//! - a directory move's tail after its inject: release target, kill
//!   source and set_parent (a file's move has only the kill). These are the steps the fence argument above
//!   already lets a restart re-send in any number: each answers "done"
//!   however often it is sent, and none reads what another wrote
//!   (release_dirent acts on its own entry only, set_parent on the
//!   directory only), so their order does not matter either: a crash with
//!   any subset executed resumes at the stored record (the plan, or the
//!   inject's fence) and sends all of them again. They go out only after
//!   that record is durable, and a mutation is sent ahead only when it
//!   would need no
//!   fence of its own had the earlier ones answered `Empty`. Between the
//!   kill and the release a reader may see the file under neither name as
//!   owning; the target's non-owning entry already names it, and the
//!   client's answer waits for both. An answer that is not `Empty` (a
//!   retry) drops the answers sent ahead; the step and the ones after it
//!   are sent again with new request ids, which these steps allow.
//!
//! Mutations before a fence are never sent ahead: each one's answer
//! decides the next (create gives inject its inode; a refused inject
//! rolls back).
//!
//! # Where the time goes
//!
//! Session 11 (cdc12, `perf/results/2026-11-28-s11-cdc12.md`): an mv file
//! whose parents are on one shard is the parents' two stats (at once), the
//! plan's commit and one shard transaction (move_file_in_shard): three
//! journal syncs per move with one client (plan, move, the outcome's
//! record, not waited for), was five; one client's move 1.0–1.6 ms (was
//! 1.7–2.5 ms on the same machine); at 8 clients 3 shard requests and 1
//! shard mutation per move (was 6 and 3), 0.62–0.64 × the CPU per move
//! (cdcd 117–165 µs), 1.34–1.66 × the rate (paired medians on the shared
//! machine). A cross-shard move is unchanged. A mkdir whose new directory
//! lands on its parent's shard sends no resolve (3.0 shard requests per
//! mkdir, was 3.5; rate and CPU within noise): one client's mkdir (0.7–1.0
//! ms here) waits for the stat (with the resolve on the two-step path), the
//! plan's CDC commit (about 230 µs: apply and a journal sync) and
//! create_linked_dir (about 180 µs with its shard's sync) or
//! create_unlinked_dir then inject.
//!
//! Session 10 (cdc11, `perf/results/2026-11-28-s10-cdc11.md`): a mkdir
//! whose new directory lands on its parent's shard (half of them with the
//! local cluster's two shards) waits for the plan's commit and one shard
//! sync (create_linked_dir) instead of two shard syncs.
//!
//! One mkdir with one client, from cdcd's and the shards' `/metrics`
//! (300 mkdirs by one `eggs mkdir` process on a local cluster, release
//! cdcd and metad, main's cdcd against this one, same machine, same hour):
//!
//! | per mkdir | before | now |
//! |---|---:|---:|
//! | commits of the CDC's store | 4 (4 records) | 3 (3 records), of which it waits for 2 |
//! | shard mutations (each its own group commit) | 3 | 3 |
//! | shard reads (stat, resolve) | 2 | 2 |
//!
//! On the quiet machine of the last measurement a CDC commit took 0.72 ms
//! (4 = 2.9 ms, 52 % of a 6.35 ms mkdir), the three shard mutations 2.0 ms,
//! round trips 0.7 ms; the two commits a mkdir now waits for are about
//! 1.4 ms of it. With many clients a commit carries every transaction's
//! records queued during the previous one, and the steps of different
//! transactions are in flight at once, so the chain per mkdir is two
//! shared CDC commits and three shard mutations (each shard batches too).
//!
//! Session 5 (`perf/examples/cdc_load.rs`, release build, baseline cdcd,
//! the machine shared with four release builds: load average 12 on 2
//! cores, so durations are inflated and only the counts and CPU seconds
//! travel):
//!
//! | per mkdir | 1 client | 8 clients |
//! |---|---:|---:|
//! | CDC commits (each an LMDB commit: data fdatasync + meta fdatasync) | 3.0 | 0.88 (3.4 records each) |
//! | shard commits (data fdatasync) + explicit meta syncs | 3.0 + 3.0 | 1.6 + 1.2 |
//! | CPU: cdcd | 1 648 µs | 606 µs |
//! | CPU: both metads | 1 201 µs | 567 µs |
//! | CPU: all cluster processes and the client | 3 073 µs | 1 270 µs |
//!
//! So one mkdir waits for a chain of about ten syncs (two waited CDC
//! commits of two syncs each, three shard mutations of two each: their
//! own commit, then the next sync that covers the meta page), plus the
//! two reads' round trips (now one: "Sending ahead"). On the quiet
//! machine a sync was about 0.3 ms: 10 × 0.3 ≈ 3 ms of the 5.46 ms.
//! With 8 clients concurrency does not help because the CPU is spent:
//! 1.27 ms of CPU per mkdir on 2 cores caps the rate at about 1 600/s
//! even with a free disk, and the quiet machine's 728/s at 11 ms per
//! mkdir is that CPU cap (shared with the client and scheduling)
//! together with the sync chain. The 2 000/s target needs both fewer
//! syncs in the chain and well under 1 ms of CPU per mkdir; cdcd's
//! 0.6 ms is the largest part.
//!
//! Session 6 profiled it (`perf/results/2026-11-27-s6-cdc-profile.md`,
//! `perf record` of cdcd under 8 mkdir clients): a third was wake-ups and
//! the async runtime (futex, epoll, polling the transactions' futures,
//! timers), a quarter syncs (each commit two: data and meta page), 15 %
//! LMDB page writes, 13 % UDP syscalls; logging, MACs and encoding are
//! negligible. cdcd now runs on one thread (`main.rs`): its CPU per mkdir
//! fell by about a sixth. Committing with NO_META_SYNC and waking waiters
//! after the next commit's sync cut the syncs per mkdir from 1.7 to 1.3
//! but made more, smaller commits and cost CPU and rate in paired runs:
//! dropped (the results file has the figures).
//!
//! Session 7 (`perf/results/2026-11-27-s7-cdc12.md`): a commit now writes
//! only the B-trees it changes (no per-commit `meta` write; a
//! transaction's later records leave `clients` and `pending` alone), and
//! the datagram requester hands answers over through a mailbox instead of
//! a channel per request: cdcd's CPU per mkdir 0.92 × main's, per mv file
//! 0.81 × (paired medians on the shared machine). Per mkdir, syncs (~24 %),
//! UDP sends (~16 %) and LMDB commit work (~16 %) are now over half of
//! cdcd's CPU; the async machinery about a quarter.
//!
//! Session 8: the CDC's store and the shards run on `daemon::journal`
//! (LMDB with NO_SYNC, one small fdatasync of a preallocated journal per
//! batch of commits), so each link of the chain waits for one sync instead
//! of two: five in all (plan, create, inject, fence, release). The quiet
//! eggs-perf run (`perf/results/2026-11-28-s8-metadata.md`): one client's
//! mkdir 2.8 ms (5.0 ms in session 7), 8 clients 1 060/s (810–880/s).
//! `cdc_load mkdir 8`, no other work running: 1 100/s, 0.92 ms of CPU per
//! mkdir in all processes (cdcd 0.44, the root's shard 0.33), and per mkdir
//! 2.7 journal syncs across the three processes (1.1–1.3 records each) of
//! 0.6–0.8 ms each: with 8 clients the stages rarely share a sync, and the
//! disk's flushes bound the rate. A move file makes four shard mutations
//! (acquire, inject, release target, kill source) against a mkdir's three,
//! and its 8-client rate is lower (614–895/s against 1 060–1 300/s in the
//! quiet runs); one client's move and mkdir take about the same time.
//!
//! Session 9 (`perf/results/2026-11-28-s9-cdc9.md`): shards remember
//! create, inject and acquire per transaction ("Remembered requests"), so
//! mkdir and mv file lose fence 3, and they inject their entry owning, so
//! they lose the release: a mkdir's chain is the plan, create and inject
//! (three syncs, was five; four per mkdir with one client, was six), an
//! mv file's the plan, acquire, inject and kill. Paired with main's
//! binaries on the shared machine (`cdc_load mkdir 8`, eight pairs): rate
//! 1.40 × (median; 0.81–3.48), CPU per mkdir 0.74 × in all processes
//! (cdcd 0.3 ms, the parent's shard 0.22 ms), 1.6 journal syncs per mkdir
//! across the three processes (2.4); one client's mkdir 1.9–2.1 ms
//! against 2.8–2.9 ms on the quieter machine at the end. mv file
//! (six pairs): 1.18 × (0.93–1.47), CPU per move 0.81 ×. Neither reached
//! 2 000/s on the shared machine (best runs 1 714 mkdirs/s, 1 209 moves/s).
//! The quiet eggs-perf run after the merge
//! (`perf/results/2026-11-28-s9-metadata.md`): 8 clients' mkdir 1 660/s
//! (1 060–1 300/s in session 8), one client's mkdir 1.8 ms (2.7 ms), 8
//! clients' mv file 1 360/s (614–895/s). What bounds it now is the sync
//! chain on one shared disk: three links of 0.5–0.8 ms, each slower while
//! a process's checkpoint writes `data.mdb` back
//! (`perf/results/2026-11-28-s9-lanes.md`).

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;
use wire::cdc::CdcStatus;
use wire::limits::{CLIENT_REQUEST_DEADLINE_NS, CLIENT_TIMEOUT_INITIAL_NS, CLIENT_TIMEOUT_MAX_NS};
use wire::shard::{ShardKind, ShardRequest};
use wire::{ErrorKind, InodeId, ShardId};
use zerocopy::byteorder::little_endian::U64;

use crate::commit::GroupCommit;
use crate::locks::{LockTable, Ticket, lock_set};
use crate::shards::{Attempt, ShardReply, Shards, TransportError, is_transient};
use crate::store::{ClientKey, StoreError, TxnRecord, TxnStore};
use crate::txn::{Action, Advance, Context, Outcome, Step, TxnArgs, TxnState};

/// How long to wait for shards.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// First attempt's timeout; doubled (with up to 25 % jitter) per retry.
    pub timeout_initial: Duration,
    pub timeout_max: Duration,
    /// A read gives up after this long (see the module doc).
    pub read_deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            timeout_initial: Duration::from_nanos(CLIENT_TIMEOUT_INITIAL_NS),
            timeout_max: Duration::from_nanos(CLIENT_TIMEOUT_MAX_NS),
            read_deadline: Duration::from_nanos(CLIENT_REQUEST_DEADLINE_NS),
        }
    }
}

impl RetryPolicy {
    fn next_timeout(&self, timeout: Duration, rng: &mut impl Rng) -> Duration {
        let doubled = timeout.saturating_mul(2).min(self.timeout_max);
        let jitter_max = doubled.as_nanos() as u64 / 4;
        let jitter = if jitter_max > 0 { rng.random_range(0..=jitter_max) } else { 0 };
        doubled.saturating_add(Duration::from_nanos(jitter)).min(self.timeout_max.saturating_mul(2))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Most requests of one transaction in flight at once (see "Sending
/// ahead"): a move's three reads, or an mv dir's release, kill and
/// set_parent.
const AHEAD_MAX: usize = 3;

/// A step's answer got ahead of time: the step, the mutation sequence it
/// was sent under, and the answer (`None`: a read gave up).
type Answered = (Step, u32, Option<(ShardReply, bool)>);

pub struct Coordinator<S> {
    shards: S,
    commits: Arc<GroupCommit>,
    locks: Arc<LockTable>,
    new_dir_shards: Vec<ShardId>,
    retry: RetryPolicy,
    rng: Mutex<StdRng>,
    /// Ids of the transactions that may still send a request: handed out
    /// (and not refused at once) or resumed, and whose outcome is not yet
    /// durable. Its lowest is every request's `forget_below` (see
    /// "Remembered requests").
    live: Mutex<BTreeSet<u64>>,
}

impl<S: Shards> Coordinator<S> {
    /// `new_dir_shards` empty means shards 0 and 1. `seed` makes jitter and
    /// read request ids reproducible (the simulation); `None` seeds from
    /// the OS.
    pub fn new(
        shards: S,
        commits: Arc<GroupCommit>,
        mut new_dir_shards: Vec<ShardId>,
        retry: RetryPolicy,
        seed: Option<u64>,
    ) -> Self {
        if new_dir_shards.is_empty() {
            new_dir_shards = vec![0, 1];
        }
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            shards,
            commits,
            locks: Arc::default(),
            new_dir_shards,
            retry,
            rng: Mutex::new(rng),
            live: Mutex::default(),
        }
    }

    pub fn store(&self) -> &TxnStore {
        self.commits.store()
    }

    pub fn commits(&self) -> &GroupCommit {
        &self.commits
    }

    pub fn locks(&self) -> &LockTable {
        &self.locks
    }

    fn random(&self) -> u64 {
        self.rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).random()
    }

    /// A new transaction for `args`, refused at once (finished) when the
    /// arguments can be judged without asking a shard: bad names, ids that
    /// are not directories, shards that do not exist.
    /// Unless refused, the transaction counts as live (see
    /// [`Coordinator::forget_below`]) until its outcome is durable: run it.
    pub fn new_txn(&self, args: TxnArgs) -> TxnState {
        let mut live = self.live();
        let mut state = self.store().new_txn(args);
        if state.outcome().is_none()
            && let Some(shard) =
                state.args.parents().into_iter().map(|id| InodeId::new(id).shard()).find(|s| !self.shards.knows(*s))
        {
            state.step = Step::Done(Outcome::failed(CdcStatus::BadRequest, format!("shard {shard} does not exist")));
        }
        if state.outcome().is_none() {
            live.insert(state.txn_id);
        }
        state
    }

    fn live(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// No transaction below this id will send a request again: every one
    /// handed out or resumed below it has a durable outcome. Ids are
    /// handed out under the same lock, so a transaction not yet live gets
    /// an id at least this.
    pub fn forget_below(&self) -> u64 {
        let live = self.live();
        let next = self.store().next_txn_id();
        live.first().map_or(next, |lowest| (*lowest).min(next))
    }

    /// The transaction's outcome is durable: it sends nothing again.
    fn finished(&self, txn_id: u64) {
        self.live().remove(&txn_id);
    }

    /// Queues `state` for its locks (in the order of these calls).
    pub fn enqueue(&self, state: &TxnState) -> Ticket {
        self.locks.enqueue(lock_set(&state.args))
    }

    /// Unfinished transactions of a previous run, oldest first, each already
    /// queued for its locks: spawn [`Coordinator::run_locked`] for each.
    pub fn resume_unfinished(&self) -> Result<Vec<(TxnRecord, Ticket)>, StoreError> {
        let records = self.store().unfinished()?;
        self.live().extend(records.iter().map(|record| record.state.txn_id));
        Ok(records
            .into_iter()
            .map(|record| {
                tracing::info!(txn = record.state.txn_id, kind = record.state.args.kind_name(), step = ?record.state.step, "resuming");
                let ticket = self.enqueue(&record.state);
                (record, ticket)
            })
            .collect())
    }

    /// Begins and runs a transaction without a client (tests, tools).
    pub async fn execute(&self, args: TxnArgs) -> Result<Outcome, RunError> {
        let state = self.new_txn(args);
        let ticket = self.enqueue(&state);
        self.run_locked(ticket, None, state, false).await
    }

    /// Waits for the locks, then runs the transaction to its end.
    pub async fn run_locked(
        &self,
        ticket: Ticket,
        client: Option<ClientKey>,
        state: TxnState,
        resumed: bool,
    ) -> Result<Outcome, RunError> {
        self.run_locked_answering(ticket, client, state, resumed, |_| {}).await
    }

    async fn save(&self, client: Option<ClientKey>, state: &TxnState) -> Result<(), RunError> {
        self.commits
            .save(TxnRecord { client, state: state.clone() })
            .await
            .ok_or(RunError::Transport(TransportError::Shutdown))
    }

    /// Runs `state` to its end (its locks held). `resumed`: it was read back
    /// after a restart, so the steps from its stored one on may have been
    /// sent already. Returns once the outcome is durable.
    pub async fn run(&self, client: Option<ClientKey>, state: TxnState, resumed: bool) -> Result<Outcome, RunError> {
        let txn_id = state.txn_id;
        let (outcome, durable) = self.run_to_answer(client, state, resumed).await?;
        Self::wait_durable(durable).await?;
        self.finished(txn_id);
        Ok(outcome)
    }

    /// Waits for the locks, runs the transaction, calls `answer` with the
    /// outcome as soon as it may be told (see the module doc: possibly
    /// before its record is durable, never before it is decided for good),
    /// gives back the locks, and returns once the outcome is durable.
    pub async fn run_locked_answering(
        &self,
        ticket: Ticket,
        client: Option<ClientKey>,
        state: TxnState,
        resumed: bool,
        answer: impl FnOnce(&Outcome),
    ) -> Result<Outcome, RunError> {
        let guard = ticket.granted().await;
        let txn_id = state.txn_id;
        let (outcome, durable) = self.run_to_answer(client, state, resumed).await?;
        // The record of the outcome is queued: anything a later transaction
        // queues (its first record comes before its first mutation) is
        // committed with it or after it.
        drop(guard);
        answer(&outcome);
        Self::wait_durable(durable).await?;
        self.finished(txn_id);
        Ok(outcome)
    }

    async fn wait_durable(durable: Option<oneshot::Receiver<()>>) -> Result<(), RunError> {
        match durable {
            Some(durable) => durable.await.map_err(|_| RunError::Transport(TransportError::Shutdown)),
            None => Ok(()),
        }
    }

    /// Runs `state` until its outcome may be told; the receiver, when
    /// present, fires once the outcome's record is durable (it was queued,
    /// not waited for).
    async fn run_to_answer(
        &self,
        client: Option<ClientKey>,
        mut state: TxnState,
        resumed: bool,
    ) -> Result<(Outcome, Option<oneshot::Receiver<()>>), RunError> {
        let context = Context { new_dir_shards: &self.new_dir_shards };
        let mut log = Replay::new(resumed);
        // Answers to requests sent ahead of their step, in step order.
        let mut ahead: VecDeque<Answered> = VecDeque::new();
        if state.validate().is_err() {
            state.step = Step::Done(Outcome::failed(CdcStatus::GeneralError, "corrupt transaction record"));
        }
        loop {
            let (reply, uncertain, mutation) = match state.action() {
                Err(invalid) => {
                    tracing::error!(%invalid, "abandoning transaction");
                    state.step = Step::Done(Outcome::failed(CdcStatus::GeneralError, "corrupt transaction record"));
                    continue;
                }
                Ok(Action::Done(outcome)) => {
                    let outcome = outcome.clone();
                    tracing::debug!(txn = state.txn_id, kind = state.args.kind_name(), ?outcome, "finished");
                    let record = TxnRecord { client, state: state.clone() };
                    if log.stored && log.replayable {
                        // A crash before this record is durable resumes from
                        // the stored one and reaches this same outcome.
                        return Ok((outcome, Some(self.commits.queue_record(record))));
                    }
                    // Recorded before it is told, also when it only read:
                    // a duplicate of the request must get this answer, not
                    // run again on a tree that changed since.
                    self.save(client, &state).await?;
                    return Ok((outcome, None));
                }
                Ok(Action::Send { shard, request }) => {
                    let mutation = request.kind().is_mutation();
                    if mutation && log.fence_before(&request) {
                        self.save(client, &state).await?;
                        log.saved();
                    }
                    let answered = match ahead.pop_front() {
                        Some((step, seq, answered)) if step == state.step && seq == state.mutation_seq => answered,
                        _ => {
                            ahead.clear();
                            let (answered, later) = self.send_ahead(&state, log, shard, &request).await?;
                            ahead.extend(later);
                            answered
                        }
                    };
                    match answered {
                        Some((reply, timed_out)) => {
                            log.answered(&request, &reply);
                            (reply, mutation && (log.uncertain || timed_out), mutation)
                        }
                        None if state.mutation_seq == 0 => {
                            let text = format!("shard {shard} did not answer");
                            tracing::warn!(txn = state.txn_id, "{text}");
                            state.step = Step::Done(Outcome::failed(CdcStatus::GeneralError, text));
                            continue;
                        }
                        // A read after a mutation (the loop check): its step
                        // rolls back on an error.
                        None => {
                            log.replayable = false;
                            (ShardReply::Error(ErrorKind::TimedOut), false, false)
                        }
                    }
                }
            };
            let before = state.step.clone();
            match state.advance(reply, uncertain, &context) {
                Advance::Moved => {
                    tracing::trace!(txn = state.txn_id, from = ?before, to = ?state.step, "step");
                    if mutation {
                        state.mutation_seq += 1;
                    }
                    log.moved();
                }
                Advance::Retry => {
                    tracing::warn!(txn = state.txn_id, step = ?state.step, ?reply, "step refused, retrying");
                    if mutation && matches!(reply, ShardReply::Error(_)) {
                        // The shard said no: the next attempt is a new request
                        // (a shard may remember its answer to the old id).
                        state.mutation_seq += 1;
                        log.moved();
                    }
                    tokio::time::sleep(self.retry.timeout_max).await;
                }
            }
        }
    }

    /// Sends the current step's request and, at once, those of the steps
    /// that follow it whatever it answers ([`TxnState::next_if_answered`]),
    /// as long as none of them needs a fence first (see "Sending ahead" in
    /// the module doc). Returns the current step's answer and the later
    /// steps' answers, each with the step and mutation sequence it is for.
    async fn send_ahead(
        &self,
        state: &TxnState,
        log: Replay,
        shard: ShardId,
        request: &ShardRequest<'_>,
    ) -> Result<(Option<(ShardReply, bool)>, Vec<Answered>), TransportError> {
        let mutation = request.kind().is_mutation();
        let request_id = if mutation { state.mutation_request_id() } else { self.random() };
        let context = Context { new_dir_shards: &self.new_dir_shards };
        let chain = Self::chain(state, log, &context);
        let mut later = Vec::with_capacity(chain.len());
        for next in &chain {
            if let Ok(Action::Send { shard, request }) = next.action() {
                let id = if mutation { next.mutation_request_id() } else { self.random() };
                later.push((shard, id, request));
            }
        }
        let send_later = |index: usize| {
            let step = later.get(index);
            async move {
                match step {
                    Some((shard, id, request)) => Some(self.send(*shard, *id, request, !mutation).await),
                    None => None,
                }
            }
        };
        let (first, second, third) =
            tokio::join!(self.send(shard, request_id, request, !mutation), send_later(0), send_later(1));
        let mut answers = Vec::with_capacity(chain.len());
        for (next, answered) in chain.iter().zip([second, third]) {
            if let Some(answered) = answered {
                answers.push((next.step.clone(), next.mutation_seq, answered?));
            }
        }
        Ok((first?, answers))
    }

    /// The states after `state` whose requests may go out with its own: at
    /// most [`AHEAD_MAX`] in all, all reads or all mutations, and no
    /// mutation that would need a fence if every earlier one answered
    /// `Empty` (`log` is the transaction's replay state before `state`'s
    /// request is sent).
    fn chain(state: &TxnState, mut log: Replay, context: &Context<'_>) -> Vec<TxnState> {
        let mut chain: Vec<TxnState> = Vec::new();
        let mut current = state.clone();
        while chain.len() + 1 < AHEAD_MAX {
            let Some(step) = current.next_if_answered(context) else { break };
            let Ok(Action::Send { request, .. }) = current.action() else { break };
            let mutation = request.kind().is_mutation();
            let mut next = current.clone();
            next.step = step;
            if mutation {
                log.answered(&request, &ShardReply::Empty);
                log.moved();
                next.mutation_seq += 1;
            }
            let fits = match next.action() {
                Ok(Action::Send { request: later, .. }) => {
                    later.kind().is_mutation() == mutation && !(mutation && log.fence_before(&later))
                }
                _ => false,
            };
            if !fits {
                break;
            }
            chain.push(next.clone());
            current = next;
        }
        chain
    }

    /// Sends one step until it gets an answer. `None`: a read gave up.
    /// The flag says whether an attempt timed out (so an earlier copy may
    /// have been executed).
    async fn send(
        &self,
        shard: ShardId,
        request_id: u64,
        request: &wire::shard::ShardRequest<'_>,
        may_give_up: bool,
    ) -> Result<Option<(ShardReply, bool)>, TransportError> {
        let started = Instant::now();
        let started_virtual = tokio::time::Instant::now();
        let mut timeout = self.retry.timeout_initial;
        let mut timed_out = false;
        let mut request = request.clone();
        loop {
            set_forget_below(&mut request, || self.forget_below());
            match self.shards.request(Attempt { shard, request_id, request: &request, timeout }).await {
                Ok(ShardReply::Error(kind)) if is_transient(kind) => {
                    tracing::debug!(shard, %kind, "transient shard error");
                    tokio::time::sleep(timeout).await;
                }
                Ok(reply) => return Ok(Some((reply, timed_out))),
                Err(TransportError::Timeout(_)) => timed_out = true,
                Err(TransportError::Shutdown) => return Err(TransportError::Shutdown),
            }
            // The deadline counts in tokio's clock (virtual in the
            // simulation) and in real time, whichever passes first.
            let elapsed = started_virtual.elapsed().max(started.elapsed());
            if may_give_up && elapsed >= self.retry.read_deadline {
                return Ok(None);
            }
            timeout = {
                let mut rng = self.rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                self.retry.next_timeout(timeout, &mut *rng)
            };
        }
    }
}

/// What the store holds for a running transaction, relative to its state in
/// memory: decides when the state must be persisted before a mutation
/// ("fences", see the module doc) and whether its outcome may be told
/// before its record is durable.
#[derive(Clone, Copy, Debug)]
struct Replay {
    /// A record of the transaction is stored (a previous run's, or saved by
    /// this one).
    stored: bool,
    /// The stored record equals the state in memory.
    saved: bool,
    /// Re-sending, in order, the mutations sent since the stored record
    /// reproduces every answer received since it: nothing since was a read,
    /// a dry run or a refusal.
    replayable: bool,
    /// A release_dirent (release or kill) was sent since the stored record.
    released: bool,
    /// Every mutation sent since the stored record is one its shard
    /// remembers for the transaction ([`is_remembered`]): re-sent, each
    /// answers as it did and changes nothing.
    remembered: bool,
    /// A previous run may have executed the mutations sent until the next
    /// save (it never sent anything past its own next fence).
    uncertain: bool,
}

impl Replay {
    fn new(resumed: bool) -> Self {
        Self {
            stored: resumed,
            saved: resumed,
            replayable: true,
            released: false,
            remembered: true,
            uncertain: resumed,
        }
    }

    /// Whether the state must be durable before `request` (a mutation) goes
    /// out.
    fn fence_before(&self, request: &ShardRequest<'_>) -> bool {
        // A dry run changes nothing: like a read, it needs no record.
        if self.saved || is_dry_run(request) {
            return false;
        }
        // The first mutation; or one after answers a replay might not
        // reproduce; or the first release since the stored record when a
        // mutation since it is not remembered by its shard (once an entry
        // is owning again or killed, shard-local requests may change it,
        // so such steps before it must never run again).
        !self.stored
            || !self.replayable
            || (request.kind() == ShardKind::ReleaseDirent && !self.released && !self.remembered)
    }

    fn saved(&mut self) {
        *self =
            Self { stored: true, saved: true, replayable: true, released: false, remembered: true, uncertain: false };
    }

    /// A request was answered.
    fn answered(&mut self, request: &ShardRequest<'_>, reply: &ShardReply) {
        if !request.kind().is_mutation() || is_dry_run(request) || matches!(reply, ShardReply::Error(_)) {
            self.replayable = false;
        }
        if request.kind() == ShardKind::ReleaseDirent {
            self.released = true;
        }
        if request.kind().is_mutation() && !is_remembered(request) {
            self.remembered = false;
        }
    }

    /// The state in memory moved away from the stored record.
    fn moved(&mut self) {
        self.saved = false;
    }
}

/// The requests a shard remembers per transaction (and answers, re-sent,
/// from that memory, changing nothing), with their `forget_below` field:
/// the one list of them ("Remembered requests" in the module doc). An
/// inject carries the field also as a dry run, which is not remembered.
fn forget_below_field<'r>(request: &'r mut ShardRequest<'_>) -> Option<&'r mut U64> {
    match request {
        ShardRequest::CreateUnlinkedDir(create) => Some(&mut create.forget_below),
        ShardRequest::InjectDirent(inject) => Some(&mut inject.head.forget_below),
        ShardRequest::AcquireDirent(acquire) => Some(&mut acquire.head.forget_below),
        ShardRequest::CreateLinkedDir(create) => Some(&mut create.head.forget_below),
        ShardRequest::MoveFileInShard(moved) => Some(&mut moved.head.forget_below),
        _ => None,
    }
}

/// Whether the shard remembers `request`'s answer per transaction.
fn is_remembered(request: &ShardRequest<'_>) -> bool {
    !is_dry_run(request) && forget_below_field(&mut request.clone()).is_some()
}

/// Puts the coordinator's current promise into a request that carries one
/// (asked only then: reads and other mutations carry none).
fn set_forget_below(request: &mut ShardRequest<'_>, forget_below: impl FnOnce() -> u64) {
    if let Some(field) = forget_below_field(request) {
        *field = U64::new(forget_below());
    }
}

fn is_dry_run(request: &ShardRequest<'_>) -> bool {
    matches!(request, ShardRequest::InjectDirent(inject) if inject.head.dry_run != 0)
}
