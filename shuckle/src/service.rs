//! Shuckle's state (the registry in memory, the store on disk, the cluster
//! key) and what it does with each datagram.
//!
//! Every change is made durable in the store before it enters the registry,
//! and the registry lock is held across both so that the order of changes
//! on disk is the order in memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use wire::address::Address;
use wire::block::BlockServiceStats;
use wire::codec::{Encode, PageBudget};
use wire::datagram::{self, HEADER_BYTES, Header, PRIVILEGED_TRAILER_BYTES, peek_header};
use wire::limits::{AUTHENTICATED_REQUEST_SKEW_NS_MAX, UDP_DATAGRAM_BYTES_MAX};
use wire::mac::{MacKey, SecretKey};
use wire::replay::{Admission, Fingerprint, ReplayGuard};
use wire::shuckle::{
    BlockServiceInfo, BlockServiceInfoHead, BlockServiceWithKey, BlockServiceWithKeyHead, BlockServicesReq,
    BlockServicesResp, BlockServicesRespHead, BlockServicesWithKeysReq, BlockServicesWithKeysResp,
    BlockServicesWithKeysRespHead, CdcResp, EmptyResp, HostName, RegistrationDatagram, ShardInfo, ShardsReq,
    ShardsResp, ShardsRespHead, ShuckleRequest, ShuckleResponse, is_registration,
};
use wire::{BlockServiceId, DecodeError, EggsTime, ErrorKind, ErrorResp, List, ShardId};
use zerocopy::byteorder::little_endian::U64;

use crate::registry::{BlockServiceRecord, CheckTarget, PeerRecord, Registry, StatusAction, StatusError};
use crate::store::{Store, StoreError};

/// Bytes of a page's list count.
const LIST_COUNT_BYTES: usize = 2;

/// Why an operator's status change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Refused(#[from] StatusError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to do after a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum DatagramOutcome {
    /// Send the first `n` bytes of the output buffer back.
    Reply(usize),
    /// A registration that must be verified before it changes anything.
    Check(CheckTarget),
    /// Nothing to send (malformed, or a registration with nothing new).
    Ignore,
}

/// A round-robin check that changes only times and counts is stored at
/// most this often per service: every check (about one per second per
/// service) would be an fsync each. What a crash loses is at most this much
/// of `last_check`, far below the stale-after time; anything else a check
/// changes (address, host, storage class, a new service) and every status
/// change is stored at once.
pub const REFRESH_STORE_PERIOD_NS: u64 = 60 * wire::limits::NS_PER_SECOND;
const _: () = assert!(REFRESH_STORE_PERIOD_NS * 5 <= wire::limits::BLOCK_SERVICE_STALE_AFTER_NS);

pub struct Shuckle {
    registry: Mutex<Registry>,
    /// `last_check_ns` of each service as last stored; locked only while
    /// holding `registry`.
    stored_check_ns: Mutex<HashMap<BlockServiceId, u64>>,
    store: Store,
    cluster_key: MacKey,
    /// Privileged requests seen within the freshness window, with their
    /// answers: a replay is answered from here, never executed again.
    replay: Mutex<ReplayGuard>,
}

impl Shuckle {
    /// `started` is now: privileged datagrams sent before it are refused
    /// (the replay record of an earlier run is gone).
    pub fn new(store: Store, registry: Registry, cluster_key: &SecretKey, started: EggsTime) -> Self {
        let stored = registry.block_services_from(BlockServiceId::new(0)).map(|r| (r.id(), r.last_check_ns)).collect();
        Self {
            registry: Mutex::new(registry),
            stored_check_ns: Mutex::new(stored),
            store,
            cluster_key: MacKey::new(cluster_key),
            replay: Mutex::new(ReplayGuard::new(started)),
        }
    }

    fn replay(&self) -> MutexGuard<'_, ReplayGuard> {
        self.replay.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Privileged datagrams refused as stale, and duplicates answered from
    /// the replay record, so far.
    pub fn replay_counts(&self) -> (u64, u64) {
        let guard = self.replay();
        (guard.stale_count(), guard.duplicate_count())
    }

    fn stored_check_ns(&self) -> MutexGuard<'_, HashMap<BlockServiceId, u64>> {
        self.stored_check_ns.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn store_block_service(&self, record: &BlockServiceRecord) -> Result<(), StoreError> {
        self.store.put_block_service(record)?;
        self.stored_check_ns().insert(record.id(), record.last_check_ns);
        Ok(())
    }

    /// The registry, read-only. A poisoned lock means a panic elsewhere
    /// while holding it; the registry is still consistent with the disk
    /// (changes enter it only after being stored), so reading goes on.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a verified stats answer (stored as [`REFRESH_STORE_PERIOD_NS`]
    /// says). `Ok(false)` when it changed nothing.
    pub fn apply_good_check(
        &self,
        target: &CheckTarget,
        stats: BlockServiceStats,
        now: EggsTime,
    ) -> Result<bool, StoreError> {
        let mut registry = self.registry();
        let Some(record) = registry.after_good_check(target, stats, now) else { return Ok(false) };
        let previous = registry.block_service(record.id());
        let is_new = previous.is_none();
        let stored_check_ns = self.stored_check_ns().get(&record.id()).copied().unwrap_or(0);
        let must_store = previous.is_none_or(|previous| {
            previous.addr != record.addr
                || previous.host != record.host
                || previous.storage_class != record.storage_class
                || record.last_check_ns.saturating_sub(stored_check_ns) >= REFRESH_STORE_PERIOD_NS
        });
        if must_store {
            self.store_block_service(&record)?;
        }
        if is_new {
            tracing::info!(id = %record.id(), addr = %record.addr, host = %record.host, "new block service verified");
        }
        registry.insert(record);
        Ok(true)
    }

    pub fn status_action(
        &self,
        id: BlockServiceId,
        action: StatusAction,
        now: EggsTime,
    ) -> Result<BlockServiceRecord, ActionError> {
        let mut registry = self.registry();
        let record = registry.after_status_action(id, action, now)?;
        self.store_block_service(&record)?;
        tracing::info!(id = %id, status = record.status.name(), "block service status changed");
        registry.insert(record.clone());
        Ok(record)
    }

    fn register_shard(&self, shard: ShardId, addr: SocketAddr, now: EggsTime) -> Result<(), StoreError> {
        let mut registry = self.registry();
        let record = PeerRecord { addr, last_seen_ns: now.get() };
        self.store.put_shard(shard, &record)?;
        registry.insert_shard(shard, record);
        Ok(())
    }

    fn register_cdc(&self, addr: SocketAddr, now: EggsTime) -> Result<(), StoreError> {
        let mut registry = self.registry();
        let record = PeerRecord { addr, last_seen_ns: now.get() };
        self.store.put_cdc(&record)?;
        registry.set_cdc(record);
        Ok(())
    }

    /// Handles one datagram from `source` at `now`, writing any reply into
    /// `out` (at least [`UDP_DATAGRAM_BYTES_MAX`] bytes).
    pub fn handle_datagram(&self, bytes: &[u8], source: SocketAddr, now: EggsTime, out: &mut [u8]) -> DatagramOutcome {
        if is_registration(bytes) {
            return self.handle_registration(bytes, source, now);
        }
        let (header, request) = match datagram::decode::<ShuckleRequest>(bytes, Some(&self.cluster_key)) {
            Ok(decoded) => decoded,
            Err(error) => {
                let Ok(mut header) = peek_header(bytes, wire::datagram::SHUCKLE_MAGIC) else {
                    tracing::warn!(%source, %error, len = bytes.len(), "dropping malformed datagram");
                    return DatagramOutcome::Ignore;
                };
                tracing::warn!(%source, %error, kind = header.kind, "refusing undecodable request");
                if !is_authenticated(bytes, &header, error) {
                    // A request whose MAC did not verify gets a plain error:
                    // MAC'ing the refusal would let anyone obtain an
                    // authenticated error for a request id of their choice
                    // and replay it to a real requester. A privileged
                    // requester ignores a plain error, as it should.
                    header.kind &= !wire::datagram::KIND_PRIVILEGED;
                }
                let kind = if error == DecodeError::BadMac { ErrorKind::NotAuthorised } else { ErrorKind::DecodeError };
                let text = error.to_string();
                let response = ShuckleResponse::Error(ErrorResp::new(kind, &text));
                return self.encode(out, &header, &response);
            }
        };
        if !header.is_privileged() {
            return self.answer(&header, &request, now, out);
        }
        let fingerprint = Fingerprint::of(&header, bytes);
        let sent_at = datagram::sent_at(bytes).unwrap_or(EggsTime::ZERO);
        match self.replay().admit(fingerprint, sent_at, now) {
            Admission::New => {}
            Admission::Answered(answer) => {
                let Some(slot) = out.get_mut(..answer.len()) else { return DatagramOutcome::Ignore };
                slot.copy_from_slice(answer);
                return DatagramOutcome::Reply(answer.len());
            }
            Admission::InFlight => return DatagramOutcome::Ignore,
            Admission::Stale => {
                tracing::warn!(%source, kind = header.kind, sent_at = %sent_at.human(), "dropping a stale privileged datagram (replayed, or clocks out of sync)");
                return DatagramOutcome::Ignore;
            }
        }
        let outcome = self.answer(&header, &request, now, out);
        match outcome {
            DatagramOutcome::Reply(len) => self.replay().complete(fingerprint, out.get(..len).unwrap_or_default()),
            _ => self.replay().abandon(fingerprint),
        }
        outcome
    }

    fn handle_registration(&self, bytes: &[u8], source: SocketAddr, now: EggsTime) -> DatagramOutcome {
        let datagram = match RegistrationDatagram::decode(bytes) {
            Ok(datagram) => datagram,
            Err(error) => {
                tracing::warn!(%source, %error, "dropping malformed registration");
                return DatagramOutcome::Ignore;
            }
        };
        let host = match datagram.host.map(|host| host.as_str()) {
            Some(host) if !host.is_empty() => host.to_owned(),
            _ => source.ip().to_string(),
        };
        let target = CheckTarget {
            secret_key: datagram.secret_key(),
            addr: SocketAddr::new(source.ip(), datagram.registration.port.get()),
            host,
            storage_class: datagram.registration.storage_class,
            from_registration: true,
        };
        if self.registry().registration_needs_check(&target, now) {
            DatagramOutcome::Check(target)
        } else {
            DatagramOutcome::Ignore
        }
    }

    /// Encodes the response to the request `header`: errors to privileged
    /// requests go out MAC'd, as kind 0x80 (see [`datagram::encode_response`]).
    fn encode(&self, out: &mut [u8], header: &Header, response: &ShuckleResponse<'_>) -> DatagramOutcome {
        match datagram::encode_response(out, header, response, Some(&self.cluster_key)) {
            Ok(len) => DatagramOutcome::Reply(len),
            Err(error) => {
                tracing::error!(%error, "cannot encode a response");
                DatagramOutcome::Ignore
            }
        }
    }

    fn answer(&self, header: &Header, request: &ShuckleRequest, now: EggsTime, out: &mut [u8]) -> DatagramOutcome {
        match request {
            ShuckleRequest::Shards(request) => self.answer_shards(header, request, out),
            ShuckleRequest::Cdc(_) => {
                let registry = self.registry();
                let response = match registry.cdc() {
                    Some(cdc) => {
                        CdcResp { address: Address::from(cdc.addr), last_seen: EggsTime::new(cdc.last_seen_ns) }
                    }
                    None => CdcResp { address: Address::UNKNOWN, last_seen: EggsTime::ZERO },
                };
                self.encode(out, header, &ShuckleResponse::Cdc(response))
            }
            ShuckleRequest::BlockServices(request) => self.answer_block_services(header, request, now, out),
            ShuckleRequest::BlockServicesWithKeys(request) => {
                if let Some(refusal) = stale_request(request.time, now) {
                    return self.encode(out, header, &refusal);
                }
                self.answer_block_services_with_keys(header, request, now, out)
            }
            ShuckleRequest::RegisterShard(request) => {
                let result = stale_request(request.time, now).map(Err).unwrap_or_else(|| {
                    let done = ShuckleResponse::RegisterShard(EmptyResp {});
                    self.register_peer(request.address, done, |addr| self.register_shard(request.shard, addr, now))
                });
                self.encode(out, header, &result.unwrap_or_else(|refusal| refusal))
            }
            ShuckleRequest::RegisterCdc(request) => {
                let result = stale_request(request.time, now).map(Err).unwrap_or_else(|| {
                    let done = ShuckleResponse::RegisterCdc(EmptyResp {});
                    self.register_peer(request.address, done, |addr| self.register_cdc(addr, now))
                });
                self.encode(out, header, &result.unwrap_or_else(|refusal| refusal))
            }
        }
    }

    fn register_peer(
        &self,
        address: Address,
        done: ShuckleResponse<'static>,
        store: impl FnOnce(SocketAddr) -> Result<(), StoreError>,
    ) -> Result<ShuckleResponse<'static>, ShuckleResponse<'static>> {
        if address.is_unknown() || address.port.get() == 0 {
            return Err(ShuckleResponse::Error(ErrorResp::new(ErrorKind::BadRequest, "no address to register")));
        }
        match store(address.socket_addr()) {
            Ok(()) => Ok(done),
            Err(error) => {
                tracing::error!(%error, "cannot store a registration");
                Err(ShuckleResponse::Error(ErrorResp::new(ErrorKind::StorageError, "cannot store the registration")))
            }
        }
    }

    fn answer_shards(&self, header: &Header, request: &ShardsReq, out: &mut [u8]) -> DatagramOutcome {
        let registry = self.registry();
        let fixed = HEADER_BYTES + size_of::<ShardsRespHead>() + LIST_COUNT_BYTES;
        let mut budget = PageBudget::new(UDP_DATAGRAM_BYTES_MAX, fixed);
        let mut shards = Vec::new();
        let mut next = 0u8;
        for (shard, record) in registry.shards_from(request.begin) {
            let info =
                ShardInfo { shard, address: Address::from(record.addr), last_seen: EggsTime::new(record.last_seen_ns) };
            if !budget.admit(info.encoded_len()) {
                next = shard;
                break;
            }
            shards.push(info);
        }
        let response = ShardsResp { head: ShardsRespHead { next }, shards: List::new(&shards) };
        self.encode(out, header, &ShuckleResponse::Shards(response))
    }

    fn answer_block_services(
        &self,
        header: &Header,
        request: &BlockServicesReq,
        now: EggsTime,
        out: &mut [u8],
    ) -> DatagramOutcome {
        let registry = self.registry();
        let weights = registry.write_weights(now);
        let fixed = HEADER_BYTES + size_of::<BlockServicesRespHead>() + LIST_COUNT_BYTES;
        let mut budget = PageBudget::new(UDP_DATAGRAM_BYTES_MAX, fixed);
        let mut infos = Vec::new();
        let mut next = BlockServiceId::new(0);
        for record in registry.block_services_from(request.begin) {
            let id = record.id();
            let info = BlockServiceInfo {
                head: BlockServiceInfoHead {
                    id,
                    address: Address::from(record.addr),
                    storage_class: record.storage_class,
                    flags: registry.flags(record, now),
                    status: record.status.wire(),
                    write_weight: U64::new(weights.get(&id).copied().unwrap_or(0)),
                    used_bytes: U64::new(record.used_bytes),
                    free_bytes: U64::new(record.free_bytes),
                    used_blocks: U64::new(record.used_blocks),
                    last_check: record.last_check(),
                },
                host: HostName::truncating(record.host.as_bytes()),
            };
            if !budget.admit(info.encoded_len()) {
                next = id;
                break;
            }
            infos.push(info);
        }
        let response = BlockServicesResp { head: BlockServicesRespHead { next }, block_services: List::new(&infos) };
        self.encode(out, header, &ShuckleResponse::BlockServices(response))
    }

    fn answer_block_services_with_keys(
        &self,
        header: &Header,
        request: &BlockServicesWithKeysReq,
        now: EggsTime,
        out: &mut [u8],
    ) -> DatagramOutcome {
        let registry = self.registry();
        let weights = registry.write_weights(now);
        let fixed =
            HEADER_BYTES + size_of::<BlockServicesWithKeysRespHead>() + LIST_COUNT_BYTES + PRIVILEGED_TRAILER_BYTES;
        let mut budget = PageBudget::new(UDP_DATAGRAM_BYTES_MAX, fixed);
        let mut entries = Vec::new();
        let mut next = BlockServiceId::new(0);
        for record in registry.block_services_from(request.begin) {
            let id = record.id();
            let entry = BlockServiceWithKey {
                head: BlockServiceWithKeyHead {
                    id,
                    address: Address::from(record.addr),
                    storage_class: record.storage_class,
                    flags: registry.flags(record, now),
                    write_weight: U64::new(weights.get(&id).copied().unwrap_or(0)),
                    wrapped_key: self.cluster_key.wrap_key(&record.secret_key, id, request.nonce.get()).0,
                },
                host: HostName::truncating(record.host.as_bytes()),
            };
            if !budget.admit(entry.encoded_len()) {
                next = id;
                break;
            }
            entries.push(entry);
        }
        let response = BlockServicesWithKeysResp {
            head: BlockServicesWithKeysRespHead { next },
            block_services: List::new(&entries),
        };
        self.encode(out, header, &ShuckleResponse::BlockServicesWithKeys(response))
    }
}

/// Whether a datagram that failed to decode with `error` carried a MAC that
/// verified (its body was at fault), or was not privileged at all.
fn is_authenticated(bytes: &[u8], header: &Header, error: DecodeError) -> bool {
    !header.is_privileged() || (error != DecodeError::BadMac && bytes.len() >= HEADER_BYTES + PRIVILEGED_TRAILER_BYTES)
}

/// The refusal of an authenticated request whose time is too far from ours
/// (a replay, or a clock that needs fixing).
fn stale_request(time: EggsTime, now: EggsTime) -> Option<ShuckleResponse<'static>> {
    if time.get().abs_diff(now.get()) <= AUTHENTICATED_REQUEST_SKEW_NS_MAX {
        return None;
    }
    Some(ShuckleResponse::Error(ErrorResp::new(
        ErrorKind::NotAuthorised,
        "request time is too far from shuckle's clock (replayed, or clocks out of sync)",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::datagram::decode;
    use wire::shuckle::ShuckleResponse;

    const SOURCE: ([u8; 4], u16) = ([127, 0, 0, 1], 9999);

    fn shuckle_with(count: u8, dir: &std::path::Path) -> Shuckle {
        let store = Store::open(dir).unwrap();
        let mut registry = Registry::new(600 * wire::limits::NS_PER_SECOND);
        for i in 0..count {
            let target = CheckTarget {
                secret_key: SecretKey([i; 16]),
                addr: SocketAddr::from(([10, 0, 0, i], 4000)),
                host: "h".repeat(wire::limits::HOST_NAME_BYTES_MAX),
                storage_class: 2,
                from_registration: true,
            };
            let stats = BlockServiceStats { used_bytes: 1, free_bytes: 100, used_blocks: 1, free_blocks: 1 };
            let record = registry.after_good_check(&target, stats, EggsTime::new(1)).unwrap();
            registry.insert(record);
        }
        Shuckle::new(store, registry, &SecretKey([0xcc; 16]), EggsTime::new(1))
    }

    fn request(shuckle: &Shuckle, request: &ShuckleRequest, key: Option<&MacKey>, out: &mut [u8]) -> usize {
        let mut bytes = [0u8; UDP_DATAGRAM_BYTES_MAX];
        let len = datagram::encode_at(&mut bytes, 5, request, key, EggsTime::new(2)).unwrap();
        match shuckle.handle_datagram(&bytes[..len], SocketAddr::from(SOURCE), EggsTime::new(2), out) {
            DatagramOutcome::Reply(len) => len,
            other => panic!("no reply: {other:?}"),
        }
    }

    #[test]
    fn listings_are_paginated_into_datagrams() {
        let dir = tempfile::tempdir().unwrap();
        let shuckle = shuckle_with(100, dir.path());
        let cluster_key = MacKey::new(&SecretKey([0xcc; 16]));
        for privileged in [false, true] {
            let (mut begin, mut seen, mut pages) = (BlockServiceId::new(0), Vec::new(), 0);
            loop {
                let mut out = [0u8; UDP_DATAGRAM_BYTES_MAX];
                let body = if privileged {
                    ShuckleRequest::BlockServicesWithKeys(BlockServicesWithKeysReq {
                        nonce: U64::new(1),
                        time: EggsTime::new(2),
                        begin,
                    })
                } else {
                    ShuckleRequest::BlockServices(BlockServicesReq { begin })
                };
                let len = request(&shuckle, &body, Some(&cluster_key), &mut out);
                pages += 1;
                let (_, response) = decode::<ShuckleResponse>(&out[..len], Some(&cluster_key)).unwrap();
                let next = match response {
                    ShuckleResponse::BlockServices(page) => {
                        seen.extend(page.block_services.iter().map(|s| s.id));
                        page.next
                    }
                    ShuckleResponse::BlockServicesWithKeys(page) => {
                        seen.extend(page.block_services.iter().map(|s| s.id));
                        page.next
                    }
                    other => panic!("unexpected {other:?}"),
                };
                if next == BlockServiceId::new(0) {
                    break;
                }
                begin = next;
            }
            assert!(pages > 1, "100 services with long hosts cannot fit one datagram");
            assert_eq!(seen.len(), 100);
            assert!(seen.windows(2).all(|pair| pair[0] < pair[1]));
        }
    }

    #[test]
    fn refreshes_are_stored_at_most_once_a_period_but_changes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let target = CheckTarget {
            secret_key: SecretKey([9; 16]),
            addr: SocketAddr::from(([10, 0, 0, 9], 4000)),
            host: "h".to_owned(),
            storage_class: 2,
            from_registration: false,
        };
        let stats = |used_bytes| BlockServiceStats { used_bytes, free_bytes: 100, used_blocks: 1, free_blocks: 1 };
        let second = wire::limits::NS_PER_SECOND;
        let stored = |dir: &std::path::Path| {
            let registry = Store::open(dir).unwrap().load(1).unwrap();
            let record = registry.block_service(target.id()).unwrap();
            (record.last_check_ns, record.used_bytes, record.addr)
        };
        let reopen = |dir: &std::path::Path| {
            let store = Store::open(dir).unwrap();
            let registry = store.load(1).unwrap();
            Shuckle::new(store, registry, &SecretKey([0; 16]), EggsTime::new(1))
        };
        {
            let shuckle = reopen(dir.path());
            let new = CheckTarget { from_registration: true, ..target.clone() };
            assert!(shuckle.apply_good_check(&new, stats(1), EggsTime::new(1000 * second)).unwrap());
            assert!(shuckle.apply_good_check(&target, stats(2), EggsTime::new(1001 * second)).unwrap());
            assert_eq!(shuckle.registry().block_service(target.id()).unwrap().used_bytes, 2);
        }
        assert_eq!(stored(dir.path()), (1000 * second, 1, target.addr));
        {
            let shuckle = reopen(dir.path());
            let later = EggsTime::new(1000 * second + REFRESH_STORE_PERIOD_NS);
            assert!(shuckle.apply_good_check(&target, stats(3), later).unwrap());
        }
        assert_eq!(stored(dir.path()), (1000 * second + REFRESH_STORE_PERIOD_NS, 3, target.addr));
        {
            let shuckle = reopen(dir.path());
            let moved = CheckTarget {
                addr: SocketAddr::from(([10, 0, 0, 10], 4000)),
                from_registration: true,
                ..target.clone()
            };
            let now = EggsTime::new(1001 * second + REFRESH_STORE_PERIOD_NS);
            assert!(shuckle.apply_good_check(&moved, stats(4), now).unwrap());
        }
        assert_eq!(
            stored(dir.path()),
            (1001 * second + REFRESH_STORE_PERIOD_NS, 4, SocketAddr::from(([10, 0, 0, 10], 4000)))
        );
    }

    #[test]
    fn malformed_datagrams_are_ignored_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shuckle = shuckle_with(1, dir.path());
        let mut out = [0u8; UDP_DATAGRAM_BYTES_MAX];
        let source = SocketAddr::from(SOURCE);
        for bytes in [&b""[..], b"EGK", &[7u8; 18], &[0u8; 19], b"EGS\x01\0\0\0\0\0\0\0\0\x01"] {
            assert_eq!(shuckle.handle_datagram(bytes, source, EggsTime::new(2), &mut out), DatagramOutcome::Ignore);
        }
        // A privileged request without the right MAC is refused by name.
        let body = ShuckleRequest::RegisterCdc(wire::shuckle::RegisterCdcReq {
            address: Address::from(source),
            time: EggsTime::new(2),
        });
        let len = request(&shuckle, &body, Some(&MacKey::new(&SecretKey([1; 16]))), &mut out);
        let (header, response) = decode::<ShuckleResponse>(&out[..len], None).unwrap();
        assert!(matches!(response, ShuckleResponse::Error(e) if e.kind == ErrorKind::NotAuthorised));
        // Unauthenticated, so not MAC'd: a plain error no privileged requester accepts.
        assert_eq!(header.kind, wire::datagram::KIND_ERROR);
        assert!(!datagram::response_kind_matches(body.kind() as u8, &header));
        assert!(shuckle.registry().cdc().is_none());
    }

    /// Refusals of authenticated privileged requests (bad time, bad
    /// arguments) are MAC'd errors of kind 0x80 that the requester accepts,
    /// and do not verify under another key.
    #[test]
    fn privileged_refusals_are_macd() {
        let dir = tempfile::tempdir().unwrap();
        let shuckle = shuckle_with(1, dir.path());
        let cluster_key = MacKey::new(&SecretKey([0xcc; 16]));
        let source = SocketAddr::from(SOURCE);
        let stale = EggsTime::new(2 + 2 * AUTHENTICATED_REQUEST_SKEW_NS_MAX);
        let requests = [
            (
                ShuckleRequest::BlockServicesWithKeys(wire::shuckle::BlockServicesWithKeysReq {
                    begin: BlockServiceId::new(0),
                    nonce: U64::new(1),
                    time: stale,
                }),
                ErrorKind::NotAuthorised,
            ),
            (
                ShuckleRequest::RegisterCdc(wire::shuckle::RegisterCdcReq {
                    address: Address::from(source),
                    time: stale,
                }),
                ErrorKind::NotAuthorised,
            ),
            (
                ShuckleRequest::RegisterShard(wire::shuckle::RegisterShardReq {
                    shard: 3,
                    address: Address::UNKNOWN,
                    time: EggsTime::new(2),
                }),
                ErrorKind::BadRequest,
            ),
        ];
        for (body, expected) in requests {
            let mut out = [0u8; UDP_DATAGRAM_BYTES_MAX];
            let len = request(&shuckle, &body, Some(&cluster_key), &mut out);
            let (header, response) = decode::<ShuckleResponse>(&out[..len], Some(&cluster_key)).unwrap();
            assert_eq!(header.kind, wire::datagram::KIND_PRIVILEGED_ERROR, "{body:?}");
            assert!(datagram::response_kind_matches(body.kind() as u8, &header));
            assert!(matches!(response, ShuckleResponse::Error(e) if e.kind == expected), "{body:?}");
            let other = MacKey::new(&SecretKey([1; 16]));
            assert_eq!(decode::<ShuckleResponse>(&out[..len], Some(&other)).unwrap_err(), DecodeError::BadMac);
        }
        assert!(shuckle.registry().cdc().is_none());
    }

    #[test]
    fn registrations_are_checked_when_new_changed_or_not_checked_lately() {
        let dir = tempfile::tempdir().unwrap();
        let shuckle = shuckle_with(1, dir.path());
        let mut out = [0u8; UDP_DATAGRAM_BYTES_MAX];
        let mut known = [0u8; 19 + 1 + 64];
        known[..16].copy_from_slice(&[0; 16]);
        known[16..18].copy_from_slice(&4000u16.to_le_bytes());
        known[18] = 2;
        known[19] = 64;
        known[20..].fill(b'h');
        let from = SocketAddr::from(([10, 0, 0, 0], 1234));
        assert_eq!(shuckle.handle_datagram(&known, from, EggsTime::new(3), &mut out), DatagramOutcome::Ignore);
        // Unchanged but not checked for a while (blockd re-registers out of
        // turn when it fills up or has space again): checked.
        let later = EggsTime::new(1 + wire::limits::REGISTRATION_CHECK_INTERVAL_MIN_NS);
        assert!(matches!(shuckle.handle_datagram(&known, from, later, &mut out), DatagramOutcome::Check(_)));
        let elsewhere = SocketAddr::from(([10, 0, 0, 9], 1234));
        let DatagramOutcome::Check(target) = shuckle.handle_datagram(&known, elsewhere, EggsTime::new(3), &mut out)
        else {
            panic!("a moved service must be checked")
        };
        assert_eq!(target.addr, SocketAddr::from(([10, 0, 0, 9], 4000)));
        // Nothing changes before the check succeeds.
        assert_eq!(
            shuckle.registry().block_service(target.id()).unwrap().addr,
            SocketAddr::from(([10, 0, 0, 0], 4000))
        );
    }
}
