//! The CDC's UDP port.
//!
//! A receive loop decodes client requests. A retransmission (same source
//! address and request id) of a running transaction is ignored (the answer
//! goes out when it finishes); one of a finished transaction is answered
//! from the store. A new request that can be refused on its arguments alone
//! (bad names, ids, shards that do not exist) is answered at once, without
//! a store write. Any other starts a transaction: it is queued for its locks
//! in arrival order and runs on its own task, concurrently with every
//! transaction it does not conflict with. At start, the transactions a
//! previous run left unfinished are queued first.
//!
//! While the transaction store cannot commit (disk full), new transactions
//! are refused with STORAGE_ERROR; running ones wait for the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::net::UdpSocket;

use tokio::task::JoinSet;
use wire::cdc::{CdcKind, CdcRequest, CdcResp, CdcRespHead, CdcResponse};
use wire::codec::Blob;
use wire::datagram::{self, CDC_MAGIC, Header};
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::{ErrorKind, ErrorResp, InodeId};
use zerocopy::byteorder::little_endian::U64;

use crate::coordinator::{Coordinator, RunError};
use crate::locks::Ticket;
use crate::metrics::Metrics;
use crate::shards::Shards;
use crate::store::ClientKey;
use crate::store::StoreError;
use crate::txn::{Outcome, TxnArgs, TxnState};

/// Transactions running or waiting for locks. Beyond it, new requests are
/// dropped (and logged): their clients retry.
pub const RUNNING_TXNS_MAX: usize = 4096;

/// The kind a transaction's answer carries.
pub fn reply_kind(args: &TxnArgs) -> CdcKind {
    match args {
        TxnArgs::MkDir { .. } => CdcKind::MkDir,
        TxnArgs::RmDir { .. } => CdcKind::RmDir,
        TxnArgs::Move { directory: false, .. } => CdcKind::MvFile,
        TxnArgs::Move { directory: true, .. } => CdcKind::MvDir,
        TxnArgs::PurgeRemoteFile { .. } => CdcKind::PurgeRemoteFile,
    }
}

/// Encodes the answer to a transaction.
pub fn encode_reply(buf: &mut [u8], request_id: u64, kind: CdcKind, outcome: &Outcome) -> Option<usize> {
    let resp = CdcResp {
        head: CdcRespHead { status: outcome.status, inode: InodeId::new(outcome.inode) },
        text: Blob::truncating(outcome.text.as_bytes()),
    };
    let body = match kind {
        CdcKind::MkDir => CdcResponse::MkDir(resp),
        CdcKind::RmDir => CdcResponse::RmDir(resp),
        CdcKind::MvFile => CdcResponse::MvFile(resp),
        CdcKind::MvDir => CdcResponse::MvDir(resp),
        CdcKind::PurgeRemoteFile => CdcResponse::PurgeRemoteFile(resp),
    };
    // The header of the request this answers: CDC requests are public, so
    // nothing is MAC'd, but every response goes through the one function.
    let request = Header {
        magic: CDC_MAGIC,
        version: datagram::PROTOCOL_VERSION,
        request_id: U64::new(request_id),
        kind: kind as u8,
    };
    datagram::encode_response(buf, &request, &body, None).ok()
}

/// Where answers go: (client, the transaction's arguments, its outcome).
pub type ReplySink = Arc<dyn Fn(&ClientKey, &TxnArgs, &Outcome) + Send + Sync>;

/// What became of a client's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Answered at once (refused on its arguments, or finished before).
    Answer(Outcome),
    /// A retransmission of a running transaction: its answer comes later.
    Running,
    /// A new transaction started; its answer goes to the sink.
    Started(u64),
    /// Refused with STORAGE_ERROR: the store cannot be written or read.
    StorageError(&'static str),
    /// Too many transactions: dropped (the client retries).
    Busy,
}

/// The request handling of the CDC, without sockets: the UDP server and the
/// simulation both drive it.
pub struct Frontend<S> {
    coordinator: Arc<Coordinator<S>>,
    running: Mutex<HashMap<ClientKey, u64>>,
    tasks: Mutex<JoinSet<()>>,
    reply: ReplySink,
    metrics: Metrics,
}

impl<S: Shards + 'static> Frontend<S> {
    pub fn new(coordinator: Arc<Coordinator<S>>, reply: ReplySink) -> Arc<Self> {
        Self::with_metrics(coordinator, reply, Metrics::unregistered())
    }

    /// A frontend counting into `metrics`.
    pub fn with_metrics(coordinator: Arc<Coordinator<S>>, reply: ReplySink, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self { coordinator, running: Mutex::default(), tasks: Mutex::default(), reply, metrics })
    }

    pub fn coordinator(&self) -> &Arc<Coordinator<S>> {
        &self.coordinator
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, u64>> {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, JoinSet<()>> {
        self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Transactions running or waiting for locks.
    pub fn in_flight(&self) -> usize {
        let mut tasks = self.tasks();
        while tasks.try_join_next().is_some() {}
        tasks.len()
    }

    /// Queues every transaction a previous run left unfinished (call before
    /// the first [`Frontend::submit`]). Returns how many.
    pub fn resume(self: &Arc<Self>) -> Result<usize, StoreError> {
        let unfinished = self.coordinator.resume_unfinished()?;
        let count = unfinished.len();
        for (record, ticket) in unfinished {
            self.start(record.client, record.state, ticket, true, None);
        }
        Ok(count)
    }

    /// Handles one client request.
    pub fn submit(self: &Arc<Self>, client: ClientKey, args: TxnArgs) -> Submitted {
        let arrived = Instant::now();
        let kind = reply_kind(&args);
        self.metrics.arrived(kind);
        let submitted = self.submit_counted(client, args, arrived);
        match &submitted {
            Submitted::Answer(outcome) => self.metrics.answered(kind, arrived.elapsed(), Some(outcome.status)),
            Submitted::StorageError(_) | Submitted::Busy => self.metrics.answered(kind, arrived.elapsed(), None),
            // Answered when the transaction ends (a retransmission: not again).
            Submitted::Running | Submitted::Started(_) => {}
        }
        submitted
    }

    fn submit_counted(self: &Arc<Self>, client: ClientKey, args: TxnArgs, arrived: Instant) -> Submitted {
        // Reap finished tasks (their results are nothing).
        while self.tasks().try_join_next().is_some() {}
        if self.running().contains_key(&client) {
            return Submitted::Running;
        }
        match self.coordinator.store().find_client(&client) {
            Ok(Some(record)) => {
                return match record.state.outcome() {
                    Some(outcome) => Submitted::Answer(outcome.clone()),
                    // Resumed at start, so in `running`; only a race with
                    // its end gets here.
                    None => Submitted::Running,
                };
            }
            Ok(None) => {}
            Err(error) => {
                tracing::error!(%error, address = %client.address, "cannot look up the request");
                return Submitted::StorageError("transaction store damaged");
            }
        }
        if !self.coordinator.commits().healthy() {
            return Submitted::StorageError("the CDC cannot write its transaction store");
        }
        if self.tasks().len() >= RUNNING_TXNS_MAX {
            tracing::warn!(address = %client.address, "too many transactions, request dropped");
            return Submitted::Busy;
        }
        // Not refused at once, it is live until it ends: start it.
        let state = self.coordinator.new_txn(args);
        if let Some(outcome) = state.outcome() {
            tracing::debug!(kind = state.args.kind_name(), text = outcome.text, "refused at once");
            return Submitted::Answer(outcome.clone());
        }
        let txn_id = state.txn_id;
        tracing::debug!(txn = txn_id, kind = state.args.kind_name(), "started");
        let ticket = self.coordinator.enqueue(&state);
        self.start(Some(client), state, ticket, false, Some(arrived));
        Submitted::Started(txn_id)
    }

    /// Runs a transaction on its own task and answers its client.
    /// `arrived`: when its request came (`None` for a resumed transaction).
    fn start(
        self: &Arc<Self>,
        client: Option<ClientKey>,
        state: TxnState,
        ticket: Ticket,
        resumed: bool,
        arrived: Option<Instant>,
    ) {
        if let Some(client) = client {
            self.running().insert(client, state.txn_id);
        }
        let this = self.clone();
        self.metrics.in_flight.inc();
        self.tasks().spawn(async move {
            let args = state.args.clone();
            let txn_id = state.txn_id;
            let answer = |outcome: &Outcome| {
                tracing::debug!(txn = txn_id, kind = args.kind_name(), status = outcome.status.name(), "done");
                if let Some(arrived) = arrived {
                    this.metrics.answered(reply_kind(&args), arrived.elapsed(), Some(outcome.status));
                }
                if let Some(client) = &client {
                    (this.reply)(client, &args, outcome);
                }
            };
            // The client may be answered before the outcome's record is
            // durable; it stays `running` until it is, so a duplicate of
            // its request meanwhile is not taken for a new one.
            if let Err(error) = this.coordinator.run_locked_answering(ticket, client, state, resumed, answer).await {
                tracing::warn!(txn = txn_id, %error, "transaction stopped");
            }
            if let Some(client) = &client {
                this.running().remove(client);
            }
            this.metrics.in_flight.dec();
        });
    }

    /// Stops every transaction where it is (the simulation's crash).
    pub fn abort_all(&self) {
        self.tasks().abort_all();
    }
}

fn send_reply(socket: &UdpSocket, client: &ClientKey, args: &TxnArgs, outcome: &Outcome) {
    let mut buf = [0u8; UDP_DATAGRAM_BYTES_MAX];
    if let Some(len) = encode_reply(&mut buf, client.request_id, reply_kind(args), outcome)
        && let Err(error) = socket.try_send_to(&buf[..len], client.address)
    {
        // The client retransmits and gets the answer from the store.
        tracing::debug!(%error, address = %client.address, "reply not sent");
    }
}

fn send_error(socket: &UdpSocket, header: &Header, from: SocketAddr, kind: ErrorKind, text: &str) {
    let body = CdcResponse::Error(ErrorResp::new(kind, text));
    let mut out = [0u8; UDP_DATAGRAM_BYTES_MAX];
    if let Ok(len) = datagram::encode_response(&mut out, header, &body, None) {
        let _ = socket.try_send_to(&out[..len], from);
    }
}

/// Serves until the socket fails. Returns the error that stopped it.
pub async fn serve<S: Shards + 'static>(
    socket: Arc<UdpSocket>,
    coordinator: Arc<Coordinator<S>>,
    metrics: Metrics,
) -> Result<(), RunError> {
    let reply_socket = socket.clone();
    let sink: ReplySink = Arc::new(move |client, args, outcome| send_reply(&reply_socket, client, args, outcome));
    let frontend = Frontend::with_metrics(coordinator, sink, metrics);
    frontend.resume()?;
    let mut buf = [0u8; UDP_DATAGRAM_BYTES_MAX];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                tracing::warn!(%error, "receive failed");
                continue;
            }
        };
        let Some(bytes) = buf.get(..len) else { continue };
        handle_datagram(&socket, &frontend, bytes, from);
    }
}

fn handle_datagram<S: Shards + 'static>(
    socket: &UdpSocket,
    frontend: &Arc<Frontend<S>>,
    bytes: &[u8],
    from: SocketAddr,
) {
    let (header, request) = match datagram::decode::<CdcRequest<'_>>(bytes, None) {
        Ok(decoded) => decoded,
        Err(error) => {
            tracing::info!(%error, %from, "malformed request");
            if let Ok(header) = datagram::peek_header(bytes, CDC_MAGIC) {
                send_error(socket, &header, from, ErrorKind::DecodeError, &error.to_string());
            }
            return;
        }
    };
    let client = ClientKey { address: from, request_id: header.request_id() };
    let args = TxnArgs::from_request(&request);
    match frontend.submit(client, args.clone()) {
        Submitted::Answer(outcome) => send_reply(socket, &client, &args, &outcome),
        Submitted::StorageError(text) => send_error(socket, &header, from, ErrorKind::StorageError, text),
        Submitted::Running | Submitted::Started(_) | Submitted::Busy => {}
    }
}
