//! Drives transactions to their end: persists each one before every
//! mutation, sends its steps through [`Shards`], retries timeouts with
//! exponential backoff (same request id), and stores the outcome.
//!
//! Transactions run one at a time, in arrival order (the prototype's model):
//! simple to reason about, and a transaction never meets an entry another
//! one holds. Reads (stat, resolve) are not persisted before: after a
//! restart they are simply asked again.

use std::time::{Duration, Instant};

use rand::Rng;
use wire::ShardId;
use wire::cdc::CdcStatus;
use wire::limits::{CLIENT_REQUEST_DEADLINE_NS, CLIENT_TIMEOUT_INITIAL_NS, CLIENT_TIMEOUT_MAX_NS};

use crate::shards::{ShardReply, Shards, TransportError, is_transient};
use crate::store::{Begin, ClientKey, StoreError, TxnRecord, TxnStore};
use crate::txn::{Action, Advance, Context, Outcome, Step, TxnArgs, TxnState};

/// How long to wait for shards.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// First attempt's timeout; doubled (with up to 25 % jitter) per retry.
    pub timeout_initial: Duration,
    pub timeout_max: Duration,
    /// A read before the transaction's first mutation gives up after this
    /// long (the client gets GENERAL_ERROR). Mutations, and reads after
    /// one, are retried until they get an answer: stopping half way would
    /// leave entries held.
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
    fn next_timeout(&self, timeout: Duration) -> Duration {
        let doubled = timeout.saturating_mul(2).min(self.timeout_max);
        let jitter_max = doubled.as_nanos() as u64 / 4;
        let jitter = if jitter_max > 0 { rand::rng().random_range(0..=jitter_max) } else { 0 };
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

/// A finished transaction and whom to tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub txn_id: u64,
    pub client: Option<ClientKey>,
    pub outcome: Outcome,
}

pub struct Coordinator<S, T> {
    shards: S,
    store: T,
    new_dir_shards: Vec<ShardId>,
    retry: RetryPolicy,
}

impl<S: Shards, T: std::ops::Deref<Target = TxnStore> + Send + Sync> Coordinator<S, T> {
    /// `new_dir_shards` empty means shards 0 and 1.
    pub fn new(shards: S, store: T, mut new_dir_shards: Vec<ShardId>, retry: RetryPolicy) -> Self {
        if new_dir_shards.is_empty() {
            new_dir_shards = vec![0, 1];
        }
        Self { shards, store, new_dir_shards, retry }
    }

    pub fn store(&self) -> &TxnStore {
        &self.store
    }

    /// Records a client's request (see [`TxnStore::begin`]).
    pub fn begin(&self, client: Option<ClientKey>, args: TxnArgs) -> Result<Begin, StoreError> {
        self.store.begin(client, args)
    }

    /// Runs every unfinished transaction, oldest first.
    pub async fn resume_unfinished(&self) -> Result<Vec<Finished>, RunError> {
        let mut finished = Vec::new();
        for TxnRecord { client, state } in self.store.unfinished()? {
            tracing::info!(txn = state.txn_id, kind = state.args.kind_name(), step = ?state.step, "resuming");
            let txn_id = state.txn_id;
            let outcome = self.run(state, true).await?;
            finished.push(Finished { txn_id, client, outcome });
        }
        Ok(finished)
    }

    /// Begins and runs a transaction without a client (tests, tools).
    pub async fn execute(&self, args: TxnArgs) -> Result<Outcome, RunError> {
        match self.store.begin(None, args)? {
            Begin::New(state) => self.run(state, false).await,
            Begin::Finished(outcome) => Ok(outcome),
            Begin::InProgress(txn_id) => Err(StoreError::Missing(txn_id).into()),
        }
    }

    /// Runs `state` to its end. `resumed`: it was read back after a restart,
    /// so its current step may have been sent already.
    pub async fn run(&self, mut state: TxnState, resumed: bool) -> Result<Outcome, RunError> {
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
                    self.store.save(&state)?;
                    tracing::debug!(txn = state.txn_id, kind = state.args.kind_name(), ?outcome, "finished");
                    return Ok(outcome);
                }
                Ok(Action::Send { shard, request }) => {
                    let mutation = request.kind().is_mutation();
                    if mutation && !saved {
                        self.store.save(&state)?;
                        saved = true;
                    }
                    let request_id = if mutation { state.mutation_request_id() } else { rand::rng().random() };
                    let may_give_up = !mutation && state.mutation_seq == 0;
                    match self.send(shard, request_id, &request, may_give_up).await? {
                        Some((reply, timed_out)) => (reply, mutation && (uncertain_at_start || timed_out), mutation),
                        None => {
                            let text = format!("shard {shard} did not answer");
                            tracing::warn!(txn = state.txn_id, "{text}");
                            state.step = Step::Done(Outcome::failed(CdcStatus::GeneralError, text));
                            continue;
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
            if may_give_up && started.elapsed() >= self.retry.read_deadline {
                return Ok(None);
            }
            timeout = self.retry.next_timeout(timeout);
        }
    }
}
