//! The CDC's UDP port.
//!
//! A receive loop decodes client requests and records each new one in the
//! store before queueing it (so it survives a crash before it runs); a
//! retransmission (same source address and request id) is answered from the
//! store when its transaction is done, and otherwise ignored (the answer is
//! sent when it finishes). One executor task runs the queued transactions
//! one at a time, after first finishing those a previous run left
//! unfinished.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use wire::cdc::{CdcKind, CdcRequest, CdcResp, CdcRespHead, CdcResponse};
use wire::codec::Blob;
use wire::datagram::{self, CDC_MAGIC, Header};
use wire::limits::UDP_DATAGRAM_BYTES_MAX;
use wire::{ErrorKind, ErrorResp, InodeId};
use zerocopy::byteorder::little_endian::U64;

use crate::coordinator::{Coordinator, RunError};
use crate::shards::Shards;
use crate::store::{Begin, ClientKey, TxnStore};
use crate::txn::{Outcome, TxnArgs, TxnState};

/// Transactions waiting for the executor. Beyond it, new requests are
/// dropped (and logged): their clients retry.
pub const QUEUED_TXNS_MAX: usize = 4096;

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

async fn send_reply(socket: &UdpSocket, client: &ClientKey, args: &TxnArgs, outcome: &Outcome) {
    let mut buf = [0u8; UDP_DATAGRAM_BYTES_MAX];
    if let Some(len) = encode_reply(&mut buf, client.request_id, reply_kind(args), outcome)
        && let Err(error) = socket.send_to(&buf[..len], client.address).await
    {
        tracing::debug!(%error, address = %client.address, "reply not sent");
    }
}

/// Serves until the socket fails or the executor stops. Returns the error
/// that stopped it.
pub async fn serve<S: Shards + 'static>(
    socket: Arc<UdpSocket>,
    coordinator: Arc<Coordinator<S, Arc<TxnStore>>>,
) -> Result<(), RunError> {
    let (queue, queued) = mpsc::channel::<(Option<ClientKey>, TxnState)>(QUEUED_TXNS_MAX);
    let executor = tokio::spawn(execute(socket.clone(), coordinator.clone(), queued));
    let receiver = receive(socket, coordinator, queue);
    tokio::select! {
        result = executor => match result {
            Ok(result) => result,
            Err(join) => {
                tracing::error!(%join, "executor task failed");
                Err(RunError::Transport(crate::shards::TransportError::Shutdown))
            }
        },
        result = receiver => result,
    }
}

async fn execute<S: Shards>(
    socket: Arc<UdpSocket>,
    coordinator: Arc<Coordinator<S, Arc<TxnStore>>>,
    mut queued: mpsc::Receiver<(Option<ClientKey>, TxnState)>,
) -> Result<(), RunError> {
    for finished in coordinator.resume_unfinished().await? {
        if let (Some(client), Some(record)) = (finished.client, coordinator.store().get(finished.txn_id)?) {
            send_reply(&socket, &client, &record.state.args, &finished.outcome).await;
        }
    }
    while let Some((client, state)) = queued.recv().await {
        let args = state.args.clone();
        let txn_id = state.txn_id;
        let outcome = coordinator.run(state, false).await?;
        tracing::info!(txn = txn_id, kind = args.kind_name(), status = outcome.status.name(), "done");
        if let Some(client) = client {
            send_reply(&socket, &client, &args, &outcome).await;
        }
    }
    Ok(())
}

async fn receive<S: Shards>(
    socket: Arc<UdpSocket>,
    coordinator: Arc<Coordinator<S, Arc<TxnStore>>>,
    queue: mpsc::Sender<(Option<ClientKey>, TxnState)>,
) -> Result<(), RunError> {
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
        handle_datagram(&socket, &coordinator, &queue, bytes, from).await?;
    }
}

async fn handle_datagram<S: Shards>(
    socket: &UdpSocket,
    coordinator: &Coordinator<S, Arc<TxnStore>>,
    queue: &mpsc::Sender<(Option<ClientKey>, TxnState)>,
    bytes: &[u8],
    from: SocketAddr,
) -> Result<(), RunError> {
    let (header, request) = match datagram::decode::<CdcRequest<'_>>(bytes, None) {
        Ok(decoded) => decoded,
        Err(error) => {
            tracing::info!(%error, %from, "malformed request");
            if let Ok(header) = datagram::peek_header(bytes, CDC_MAGIC) {
                let text = error.to_string();
                let body = CdcResponse::Error(ErrorResp::new(ErrorKind::DecodeError, &text));
                let mut out = [0u8; UDP_DATAGRAM_BYTES_MAX];
                if let Ok(len) = datagram::encode_response(&mut out, &header, &body, None) {
                    let _ = socket.send_to(&out[..len], from).await;
                }
            }
            return Ok(());
        }
    };
    let client = ClientKey { address: from, request_id: header.request_id() };
    let args = TxnArgs::from_request(&request);
    // Check for room before recording, so a recorded transaction is always
    // queued (this task is the only sender, so the room stays).
    if queue.capacity() == 0 && coordinator.store().find_client(&client)?.is_none() {
        tracing::warn!(%from, "transaction queue full, request dropped");
        return Ok(());
    }
    match coordinator.begin(Some(client), args.clone())? {
        Begin::New(state) if state.outcome().is_some() => {
            if let Some(outcome) = state.outcome() {
                send_reply(socket, &client, &args, outcome).await;
            }
        }
        Begin::New(state) => {
            tracing::debug!(txn = state.txn_id, kind = args.kind_name(), %from, "queued");
            if queue.send((Some(client), state)).await.is_err() {
                return Err(RunError::Transport(crate::shards::TransportError::Shutdown));
            }
        }
        Begin::InProgress(txn_id) => tracing::debug!(txn = txn_id, %from, "retransmission of a running request"),
        Begin::Finished(outcome) => send_reply(socket, &client, &args, &outcome).await,
    }
    Ok(())
}
