//! What shuckle knows and the rules for changing it, as plain code over
//! inputs and the current time (no sockets, no disk, no clock).
//!
//! Changes are computed as new records ("what the record becomes") without
//! touching the registry; the caller makes them durable and only then
//! [`Registry::insert`]s them, so memory never runs ahead of the disk.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use wire::block::BlockServiceStats;
use wire::limits::REGISTRATION_CHECK_INTERVAL_MIN_NS;
use wire::mac::{SecretKey, block_service_id};
use wire::shuckle::{BlockServiceStatus, flags};
use wire::{BlockServiceId, EggsTime, ShardId};

use crate::weights::{Space, write_weights};

/// Operator status, stored by name.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Drain,
    Terminal,
}

impl Status {
    pub fn wire(self) -> BlockServiceStatus {
        match self {
            Self::Ok => BlockServiceStatus::Ok,
            Self::Drain => BlockServiceStatus::Drain,
            Self::Terminal => BlockServiceStatus::Terminal,
        }
    }

    pub fn name(self) -> &'static str {
        self.wire().name()
    }
}

/// An operator's request to change a status.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StatusAction {
    Drain,
    Resume,
    Terminate,
}

impl StatusAction {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "drain" => Some(Self::Drain),
            "resume" => Some(Self::Resume),
            "terminate" => Some(Self::Terminate),
            _ => None,
        }
    }
}

/// Why a status change was refused.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no block service with id {0}")]
    UnknownBlockService(BlockServiceId),
    #[error("block service {0} is terminal: a terminal service never comes back")]
    AlreadyTerminal(BlockServiceId),
    #[error(
        "refusing to terminate block service {id}: it is not stale (last good check {ago}); \
         only a service without a good check for {stale_after_secs} s may be declared dead"
    )]
    NotStale { id: BlockServiceId, ago: String, stale_after_secs: u64 },
}

/// A block service ever seen, as stored. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockServiceRecord {
    #[serde(with = "secret_key_bytes")]
    pub secret_key: SecretKey,
    pub addr: SocketAddr,
    /// The failure domain: a name the service gave, or its IP.
    pub host: String,
    pub storage_class: u8,
    pub status: Status,
    /// Eggs time of the last good check (a verified stats answer).
    pub last_check_ns: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub used_blocks: u64,
    pub free_blocks: u64,
    pub first_seen_ns: u64,
}

impl std::fmt::Debug for BlockServiceRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockServiceRecord")
            .field("id", &self.id())
            .field("addr", &self.addr)
            .field("host", &self.host)
            .field("storage_class", &self.storage_class)
            .field("status", &self.status)
            .field("last_check_ns", &self.last_check_ns)
            .finish_non_exhaustive()
    }
}

mod secret_key_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use wire::mac::SecretKey;

    pub fn serialize<S: Serializer>(key: &SecretKey, serializer: S) -> Result<S::Ok, S::Error> {
        key.0.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SecretKey, D::Error> {
        Ok(SecretKey(<[u8; 16]>::deserialize(deserializer)?))
    }
}

impl BlockServiceRecord {
    pub fn id(&self) -> BlockServiceId {
        block_service_id(&self.secret_key)
    }

    pub fn last_check(&self) -> EggsTime {
        EggsTime::new(self.last_check_ns)
    }

    pub fn stats(&self) -> BlockServiceStats {
        BlockServiceStats {
            used_bytes: self.used_bytes,
            free_bytes: self.free_bytes,
            used_blocks: self.used_blocks,
            free_blocks: self.free_blocks,
        }
    }
}

/// Where a shard or the CDC said it listens.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PeerRecord {
    pub addr: SocketAddr,
    pub last_seen_ns: u64,
}

/// A block service to check: from a registration (claims to verify) or
/// from the round-robin over known services.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CheckTarget {
    pub secret_key: SecretKey,
    pub addr: SocketAddr,
    pub host: String,
    pub storage_class: u8,
    /// A registration may change address, host and class once verified; a
    /// round-robin check only refreshes a record still at `addr`.
    pub from_registration: bool,
}

impl CheckTarget {
    pub fn id(&self) -> BlockServiceId {
        block_service_id(&self.secret_key)
    }
}

/// Everything shuckle knows.
#[derive(Clone, Debug)]
pub struct Registry {
    block_services: BTreeMap<BlockServiceId, BlockServiceRecord>,
    shards: BTreeMap<ShardId, PeerRecord>,
    cdc: Option<PeerRecord>,
    stale_after_ns: u64,
}

impl Registry {
    pub fn new(stale_after_ns: u64) -> Self {
        Self { block_services: BTreeMap::new(), shards: BTreeMap::new(), cdc: None, stale_after_ns }
    }

    pub fn stale_after_ns(&self) -> u64 {
        self.stale_after_ns
    }

    pub fn insert(&mut self, record: BlockServiceRecord) {
        self.block_services.insert(record.id(), record);
    }

    pub fn insert_shard(&mut self, shard: ShardId, record: PeerRecord) {
        self.shards.insert(shard, record);
    }

    pub fn set_cdc(&mut self, record: PeerRecord) {
        self.cdc = Some(record);
    }

    pub fn block_service(&self, id: BlockServiceId) -> Option<&BlockServiceRecord> {
        self.block_services.get(&id)
    }

    /// Known block services in id order, from `begin` on.
    pub fn block_services_from(&self, begin: BlockServiceId) -> impl Iterator<Item = &BlockServiceRecord> {
        self.block_services.range(begin..).map(|(_, record)| record)
    }

    pub fn block_service_count(&self) -> usize {
        self.block_services.len()
    }

    pub fn shards_from(&self, begin: ShardId) -> impl Iterator<Item = (ShardId, &PeerRecord)> {
        self.shards.range(begin..).map(|(shard, record)| (*shard, record))
    }

    pub fn cdc(&self) -> Option<&PeerRecord> {
        self.cdc.as_ref()
    }

    /// No good check for the stale-after time (never checked counts as stale).
    pub fn is_stale(&self, record: &BlockServiceRecord, now: EggsTime) -> bool {
        record.last_check_ns == 0 || now.get().saturating_sub(record.last_check_ns) >= self.stale_after_ns
    }

    pub fn flags(&self, record: &BlockServiceRecord, now: EggsTime) -> u8 {
        let mut value = match record.status {
            Status::Ok => 0,
            Status::Drain => flags::DRAIN,
            Status::Terminal => flags::TERMINAL,
        };
        if self.is_stale(record, now) {
            value |= flags::STALE;
        }
        value
    }

    /// A registration is checked at once: a new service, or one that
    /// changes what we know (address, storage class or host), and also an
    /// unchanged one, which re-registers out of turn when it becomes full
    /// or has space again (blockd's `space`), unless its last good check
    /// is younger than [`REGISTRATION_CHECK_INTERVAL_MIN_NS`] (a flood of
    /// registrations costs at most that many checks; the round-robin
    /// covers the rest).
    pub fn registration_needs_check(&self, target: &CheckTarget, now: EggsTime) -> bool {
        match self.block_services.get(&target.id()) {
            None => true,
            Some(record) => {
                record.addr != target.addr
                    || record.storage_class != target.storage_class
                    || record.host != target.host
                    || now.get().saturating_sub(record.last_check_ns) >= REGISTRATION_CHECK_INTERVAL_MIN_NS
            }
        }
    }

    /// No space for new blocks: its last good check reported no free bytes
    /// (blockd reports only the space above its reserve, and none after a
    /// write found its disk full). Such a service gets no write weight.
    pub fn is_full(&self, record: &BlockServiceRecord) -> bool {
        record.last_check_ns != 0 && record.free_bytes == 0
    }

    /// The record after a good check of `target` at `now`; `None` when the
    /// check must not change anything (a round-robin check of an address
    /// the service has since left).
    pub fn after_good_check(
        &self,
        target: &CheckTarget,
        stats: BlockServiceStats,
        now: EggsTime,
    ) -> Option<BlockServiceRecord> {
        let mut record = match self.block_services.get(&target.id()) {
            Some(record) => record.clone(),
            None if target.from_registration => BlockServiceRecord {
                secret_key: target.secret_key,
                addr: target.addr,
                host: target.host.clone(),
                storage_class: target.storage_class,
                status: Status::Ok,
                last_check_ns: 0,
                used_bytes: 0,
                free_bytes: 0,
                used_blocks: 0,
                free_blocks: 0,
                first_seen_ns: now.get(),
            },
            None => return None,
        };
        if target.from_registration {
            record.addr = target.addr;
            record.host = target.host.clone();
            record.storage_class = target.storage_class;
        } else if record.addr != target.addr {
            return None;
        }
        record.last_check_ns = record.last_check_ns.max(now.get());
        record.used_bytes = stats.used_bytes;
        record.free_bytes = stats.free_bytes;
        record.used_blocks = stats.used_blocks;
        record.free_blocks = stats.free_blocks;
        Some(record)
    }

    /// The record after an operator's `action` at `now`, or why not.
    pub fn after_status_action(
        &self,
        id: BlockServiceId,
        action: StatusAction,
        now: EggsTime,
    ) -> Result<BlockServiceRecord, StatusError> {
        let mut record = self.block_services.get(&id).cloned().ok_or(StatusError::UnknownBlockService(id))?;
        record.status = match (action, record.status) {
            (StatusAction::Terminate, Status::Terminal) => Status::Terminal,
            (_, Status::Terminal) => return Err(StatusError::AlreadyTerminal(id)),
            (StatusAction::Drain, _) => Status::Drain,
            (StatusAction::Resume, _) => Status::Ok,
            (StatusAction::Terminate, _) if self.is_stale(&record, now) => Status::Terminal,
            (StatusAction::Terminate, _) => {
                return Err(StatusError::NotStale {
                    id,
                    ago: ago(record.last_check(), now),
                    stale_after_secs: self.stale_after_ns / wire::limits::NS_PER_SECOND,
                });
            }
        };
        Ok(record)
    }

    /// The next known service after `cursor` (wrapping), for the round-robin.
    pub fn next_to_check(&self, cursor: BlockServiceId) -> Option<CheckTarget> {
        let after = self.block_services.range(cursor..).find(|(id, _)| **id != cursor);
        let (_, record) = after.or_else(|| self.block_services.iter().next())?;
        Some(CheckTarget {
            secret_key: record.secret_key,
            addr: record.addr,
            host: record.host.clone(),
            storage_class: record.storage_class,
            from_registration: false,
        })
    }

    /// Write weight of every known service at `now`: zero unless ok and not
    /// stale; balanced per storage class (a shard picks within one class).
    pub fn write_weights(&self, now: EggsTime) -> BTreeMap<BlockServiceId, u64> {
        let mut classes: BTreeMap<u8, (Vec<BlockServiceId>, Vec<Space>)> = BTreeMap::new();
        let mut weights = BTreeMap::new();
        for (id, record) in &self.block_services {
            weights.insert(*id, 0);
            if record.status == Status::Ok && !self.is_stale(record, now) {
                let (ids, spaces) = classes.entry(record.storage_class).or_default();
                ids.push(*id);
                spaces.push(Space { used_bytes: record.used_bytes, free_bytes: record.free_bytes });
            }
        }
        for (ids, spaces) in classes.values() {
            for (id, weight) in ids.iter().zip(write_weights(spaces)) {
                weights.insert(*id, weight);
            }
        }
        weights
    }
}

/// "3 minutes ago", "never".
pub fn ago(then: EggsTime, now: EggsTime) -> String {
    if then.get() == 0 {
        return "never".to_owned();
    }
    let seconds = now.get().saturating_sub(then.get()) / wire::limits::NS_PER_SECOND;
    let (count, unit) = match seconds {
        0..60 => (seconds, "second"),
        60..3600 => (seconds / 60, "minute"),
        3600..86_400 => (seconds / 3600, "hour"),
        _ => (seconds / 86_400, "day"),
    };
    if count == 1 { format!("1 {unit} ago") } else { format!("{count} {unit}s ago") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::limits::NS_PER_SECOND;

    const STALE_AFTER_NS: u64 = 600 * NS_PER_SECOND;

    fn target(key: u8, port: u16) -> CheckTarget {
        CheckTarget {
            secret_key: SecretKey([key; 16]),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            host: "host-a".to_owned(),
            storage_class: 2,
            from_registration: true,
        }
    }

    fn stats(used_bytes: u64, free_bytes: u64) -> BlockServiceStats {
        BlockServiceStats { used_bytes, free_bytes, used_blocks: 3, free_blocks: 4 }
    }

    fn at(seconds: u64) -> EggsTime {
        EggsTime::new(1_000 * NS_PER_SECOND + seconds * NS_PER_SECOND)
    }

    fn registry_with(targets: &[CheckTarget], now: EggsTime) -> Registry {
        let mut registry = Registry::new(STALE_AFTER_NS);
        for t in targets {
            let record = registry.after_good_check(t, stats(10, 90), now).unwrap();
            registry.insert(record);
        }
        registry
    }

    #[test]
    fn new_and_changed_registrations_are_checked_at_once() {
        let registry = registry_with(&[target(1, 4000)], at(0));
        assert!(registry.registration_needs_check(&target(2, 4000), at(0)));
        assert!(registry.registration_needs_check(&target(1, 4001), at(0)));
        let mut other_class = target(1, 4000);
        other_class.storage_class = 3;
        assert!(registry.registration_needs_check(&other_class, at(0)));
    }

    #[test]
    fn an_unchanged_registration_is_checked_unless_just_checked() {
        let registry = registry_with(&[target(1, 4000)], at(0));
        assert!(!registry.registration_needs_check(&target(1, 4000), at(0)));
        let soon = EggsTime::new(at(0).get() + REGISTRATION_CHECK_INTERVAL_MIN_NS - 1);
        assert!(!registry.registration_needs_check(&target(1, 4000), soon));
        let later = EggsTime::new(at(0).get() + REGISTRATION_CHECK_INTERVAL_MIN_NS);
        assert!(registry.registration_needs_check(&target(1, 4000), later));
    }

    #[test]
    fn a_service_reporting_no_free_bytes_is_full_and_gets_no_weight() {
        let mut registry = registry_with(&[target(1, 4000), target(2, 4001)], at(0));
        let full = registry.after_good_check(&target(2, 4001), stats(10, 0), at(1)).unwrap();
        registry.insert(full);
        assert!(registry.is_full(registry.block_service(target(2, 0).id()).unwrap()));
        assert!(!registry.is_full(registry.block_service(target(1, 0).id()).unwrap()));
        let weights = registry.write_weights(at(1));
        assert_eq!(weights[&target(2, 0).id()], 0);
        assert!(weights[&target(1, 0).id()] > 0);
    }

    #[test]
    fn good_check_records_stats_and_time() {
        let registry = registry_with(&[target(1, 4000)], at(5));
        let record = registry.block_service(target(1, 4000).id()).unwrap();
        assert_eq!(record.last_check(), at(5));
        assert_eq!(record.stats(), stats(10, 90));
        assert_eq!(record.status, Status::Ok);
        assert_eq!(record.first_seen_ns, at(5).get());
    }

    #[test]
    fn round_robin_check_of_a_left_address_changes_nothing() {
        let mut registry = registry_with(&[target(1, 4000)], at(0));
        let mut old = registry.next_to_check(BlockServiceId::new(0)).unwrap();
        assert!(!old.from_registration);
        let moved = registry.after_good_check(&target(1, 4001), stats(1, 2), at(1)).unwrap();
        registry.insert(moved);
        assert_eq!(registry.after_good_check(&old, stats(5, 5), at(2)), None);
        old.addr = SocketAddr::from(([127, 0, 0, 1], 4001));
        assert!(registry.after_good_check(&old, stats(5, 5), at(2)).is_some());
        // An unknown service is only created by a registration.
        let mut stranger = target(9, 4000);
        stranger.from_registration = false;
        assert_eq!(registry.after_good_check(&stranger, stats(5, 5), at(2)), None);
    }

    #[test]
    fn staleness_follows_the_last_good_check() {
        let registry = registry_with(&[target(1, 4000)], at(0));
        let record = registry.block_service(target(1, 4000).id()).unwrap();
        assert!(!registry.is_stale(record, at(599)));
        assert!(registry.is_stale(record, at(600)));
        assert_eq!(registry.flags(record, at(599)), 0);
        assert_eq!(registry.flags(record, at(600)), flags::STALE);
    }

    #[test]
    fn drain_resume_terminate_rules() {
        let mut registry = registry_with(&[target(1, 4000)], at(0));
        let id = target(1, 4000).id();
        let drained = registry.after_status_action(id, StatusAction::Drain, at(1)).unwrap();
        assert_eq!(drained.status, Status::Drain);
        registry.insert(drained);
        assert_eq!(registry.flags(registry.block_service(id).unwrap(), at(1)), flags::DRAIN);
        let refused = registry.after_status_action(id, StatusAction::Terminate, at(60)).unwrap_err();
        assert!(matches!(refused, StatusError::NotStale { .. }));
        assert!(refused.to_string().contains("1 minute ago"), "{refused}");
        let resumed = registry.after_status_action(id, StatusAction::Resume, at(2)).unwrap();
        assert_eq!(resumed.status, Status::Ok);
        let terminal = registry.after_status_action(id, StatusAction::Terminate, at(600)).unwrap();
        assert_eq!(terminal.status, Status::Terminal);
        registry.insert(terminal);
        assert!(matches!(
            registry.after_status_action(id, StatusAction::Resume, at(601)),
            Err(StatusError::AlreadyTerminal(_))
        ));
        assert!(matches!(
            registry.after_status_action(id, StatusAction::Drain, at(601)),
            Err(StatusError::AlreadyTerminal(_))
        ));
        assert!(registry.after_status_action(id, StatusAction::Terminate, at(601)).is_ok());
        let unknown = BlockServiceId::new(42);
        assert_eq!(
            registry.after_status_action(unknown, StatusAction::Drain, at(1)),
            Err(StatusError::UnknownBlockService(unknown))
        );
    }

    #[test]
    fn weights_only_for_ok_fresh_services_per_class() {
        let mut registry = registry_with(&[target(1, 4000), target(2, 4001), target(3, 4002)], at(0));
        let mut other_class = target(4, 4003);
        other_class.storage_class = 3;
        let record = registry.after_good_check(&other_class, stats(0, 100), at(0)).unwrap();
        registry.insert(record);
        let drained = registry.after_status_action(target(2, 0).id(), StatusAction::Drain, at(0)).unwrap();
        registry.insert(drained);
        let weights = registry.write_weights(at(1));
        assert_eq!(weights[&target(1, 0).id()], 20);
        assert_eq!(weights[&target(2, 0).id()], 0);
        assert_eq!(weights[&target(3, 0).id()], 20);
        assert_eq!(weights[&target(4, 0).id()], 20);
        assert!(registry.write_weights(at(600)).values().all(|&w| w == 0));
    }

    #[test]
    fn round_robin_wraps() {
        let registry = registry_with(&[target(1, 4000), target(2, 4001)], at(0));
        let first = registry.next_to_check(BlockServiceId::new(0)).unwrap();
        let second = registry.next_to_check(first.id()).unwrap();
        assert_ne!(first.id(), second.id());
        assert_eq!(registry.next_to_check(second.id()).unwrap().id(), first.id());
        assert!(Registry::new(1).next_to_check(BlockServiceId::new(0)).is_none());
    }

    #[test]
    fn ago_is_human() {
        assert_eq!(ago(EggsTime::ZERO, at(0)), "never");
        assert_eq!(ago(at(0), at(1)), "1 second ago");
        assert_eq!(ago(at(0), at(185)), "3 minutes ago");
        assert_eq!(ago(at(0), at(7200)), "2 hours ago");
        assert_eq!(ago(at(0), at(3 * 86_400)), "3 days ago");
    }

    #[test]
    fn record_debug_hides_the_key() {
        let registry = registry_with(&[target(0xab, 4000)], at(0));
        let text = format!("{:?}", registry.block_service(target(0xab, 0).id()).unwrap());
        assert!(!text.contains("171") && !text.to_lowercase().contains("abab"), "{text}");
    }
}
