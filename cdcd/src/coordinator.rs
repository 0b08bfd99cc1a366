//! Drives transactions to their end, many at once: each one waits for its
//! locks ([`crate::locks`]), then persists its state before every mutation
//! (through the group commit, [`crate::commit`]), sends its steps through
//! [`Shards`], retries timeouts with exponential backoff (same request id),
//! and stores the outcome.
//!
//! Reads (stat, resolve) are not persisted before: after a restart they are
//! simply asked again. A read gives up after the read deadline: before the
//! transaction's first mutation it fails the transaction, after one (the
//! loop check) it rolls the transaction back. Mutations are retried until
//! answered: stopping half way would leave entries held; the locks keep
//! such a transaction from blocking anything that does not conflict.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wire::cdc::CdcStatus;
use wire::limits::{CLIENT_REQUEST_DEADLINE_NS, CLIENT_TIMEOUT_INITIAL_NS, CLIENT_TIMEOUT_MAX_NS};
use wire::{ErrorKind, InodeId, ShardId};

use crate::commit::GroupCommit;
use crate::locks::{LockTable, Ticket, lock_set};
use crate::shards::{ShardReply, Shards, TransportError, is_transient};
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

pub struct Coordinator<S> {
    shards: S,
    commits: Arc<GroupCommit>,
    locks: Arc<LockTable>,
    new_dir_shards: Vec<ShardId>,
    retry: RetryPolicy,
    rng: Mutex<StdRng>,
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
        Self { shards, commits, locks: Arc::default(), new_dir_shards, retry, rng: Mutex::new(rng) }
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
    pub fn new_txn(&self, args: TxnArgs) -> TxnState {
        let mut state = self.store().new_txn(args);
        if state.outcome().is_none()
            && let Some(shard) =
                state.args.parents().into_iter().map(|id| InodeId::new(id).shard()).find(|s| !self.shards.knows(*s))
        {
            state.step = Step::Done(Outcome::failed(CdcStatus::BadRequest, format!("shard {shard} does not exist")));
        }
        state
    }

    /// Queues `state` for its locks (in the order of these calls).
    pub fn enqueue(&self, state: &TxnState) -> Ticket {
        self.locks.enqueue(lock_set(&state.args))
    }

    /// Unfinished transactions of a previous run, oldest first, each already
    /// queued for its locks: spawn [`Coordinator::run_locked`] for each.
    pub fn resume_unfinished(&self) -> Result<Vec<(TxnRecord, Ticket)>, StoreError> {
        let records = self.store().unfinished()?;
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
        let _guard = ticket.granted().await;
        self.run(client, state, resumed).await
    }

    async fn save(&self, client: Option<ClientKey>, state: &TxnState) -> Result<(), RunError> {
        self.commits
            .save(TxnRecord { client, state: state.clone() })
            .await
            .ok_or(RunError::Transport(TransportError::Shutdown))
    }

    /// Runs `state` to its end (its locks held). `resumed`: it was read back
    /// after a restart, so its current step may have been sent already.
    pub async fn run(
        &self,
        client: Option<ClientKey>,
        mut state: TxnState,
        resumed: bool,
    ) -> Result<Outcome, RunError> {
        let context = Context { new_dir_shards: &self.new_dir_shards };
        // Whether the stored state equals `state`.
        let mut saved = resumed;
        let mut uncertain_at_start = resumed;
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
                    // Recorded even when it only read: a duplicate of the
                    // request must get this answer, not run again on a tree
                    // that changed since.
                    self.save(client, &state).await?;
                    tracing::debug!(txn = state.txn_id, kind = state.args.kind_name(), ?outcome, "finished");
                    return Ok(outcome);
                }
                Ok(Action::Send { shard, request }) => {
                    let mutation = request.kind().is_mutation();
                    if mutation && !saved {
                        self.save(client, &state).await?;
                        saved = true;
                    }
                    let request_id = if mutation { state.mutation_request_id() } else { self.random() };
                    match self.send(shard, request_id, &request, !mutation).await? {
                        Some((reply, timed_out)) => (reply, mutation && (uncertain_at_start || timed_out), mutation),
                        None if state.mutation_seq == 0 => {
                            let text = format!("shard {shard} did not answer");
                            tracing::warn!(txn = state.txn_id, "{text}");
                            state.step = Step::Done(Outcome::failed(CdcStatus::GeneralError, text));
                            continue;
                        }
                        // A read after a mutation (the loop check): its step
                        // rolls back on an error.
                        None => (ShardReply::Error(ErrorKind::TimedOut), false, false),
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
                    // Any move, a read's too, makes the stored state stale:
                    // the next mutation must save before it is sent, or a
                    // crash after the shard executed it would resume from an
                    // older step that no longer matches the shards.
                    saved = false;
                    uncertain_at_start = false;
                }
                Advance::Retry => {
                    tracing::warn!(txn = state.txn_id, step = ?state.step, ?reply, "step refused, retrying");
                    if mutation && matches!(reply, ShardReply::Error(_)) {
                        // The shard said no: the next attempt is a new request
                        // (a shard may remember its answer to the old id).
                        state.mutation_seq += 1;
                        saved = false;
                        uncertain_at_start = false;
                    }
                    tokio::time::sleep(self.retry.timeout_max).await;
                }
            }
        }
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
        loop {
            match self.shards.request(shard, request_id, request, timeout).await {
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
