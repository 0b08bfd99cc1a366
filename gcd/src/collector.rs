//! The jobs, as I/O around the decisions of [`crate::plan`]: eden
//! collection, retention of dead versions, migration, and scrub.
//!
//! Every step is one idempotent shard request, and the shard is the only
//! state: gcd keeps nothing on disk. Killed at any moment, it finds the
//! same work again next cycle (a condemned span is re-condemned and its
//! erase certificates re-issued; an erased block erases again; a purge
//! already done is NOT_FOUND), so a restart finishes what was half done.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use client::ClientError;
use client::client::{Addresses, Client, DirEntry, FileSpan, FileSpanBody, ReverseBlocks, Stat, discover};
use client::plan::{BlockSpan, EncodedSpan, SpanPayload};
use client::write::{FailedServices, write_span};
use daemon::udp::{Cdc, DatagramClient, Shuckle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use wire::cdc::{CdcRequest, CdcResponse, CdcStatus, PurgeRemoteFileReq, PurgeRemoteFileReqHead};
use wire::mac::Mac;
use wire::policy::{Policy, Retention};
use wire::shard::{
    BlockCertificate, FetchedBlock, RepairBlockReq, ResolveMode, ReverseBlockEntry, ShardRequest, ShardResponse,
    ls_flags,
};
use wire::shuckle::{ShardsReq, ShuckleRequest, ShuckleResponse, flags};
use wire::span::{Parity, SpanLayout};
use wire::{BlockId, BlockServiceId, EggsTime, ErrorKind, InodeId, InodeType, Name, ShardId};

use crate::blocks::{CrcAnswer, block_crc};
use crate::metrics::Metrics;
use crate::plan::{self, DeadEntry, Evacuation, RateLimit, StaleWatch};

/// Pages of any listing gcd walks, at most (a bound on a listing that never ends).
const PAGES_MAX: usize = 1 << 20;
/// Spans of one eden file expunged in one visit, at most.
const SPANS_PER_FILE_MAX: usize = 1 << 20;
/// Dead versions of one name looked at, at most.
const VERSIONS_PER_NAME_MAX: usize = 1 << 16;
/// Eden files collected at once.
const EDEN_FILES_IN_FLIGHT: usize = 32;
/// Blocks migrated at once: each holds D fetched blocks and the rebuilt
/// one (RS 4+2 with 4 MiB blocks: about 24 MiB).
const MIGRATIONS_IN_FLIGHT: usize = 16;

/// gcd's configuration (flags of `main.rs`).
#[derive(Clone, Debug)]
pub struct Config {
    pub shuckle: SocketAddr,
    /// Pause between the end of a cycle and the next.
    pub interval: Duration,
    /// Scrub read rate per block service, bytes/s (0 = unlimited).
    pub scrub_bytes_per_second: u64,
    /// Pause between scrub passes (0 = no scrub).
    pub scrub_interval: Duration,
    /// A block service stale this long is emptied like a terminal one.
    pub migrate_stale_after: Duration,
}

/// What one cycle did, for its log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct CycleReport {
    pub eden_files_due: u64,
    pub eden_files_collected: u64,
    pub dirents_purged: u64,
    pub directories_collected: u64,
    pub blocks_migrated: u64,
    pub blocks_awaiting_migration: u64,
    pub errors: u64,
}

/// The collector: a datagram requester, shuckle's address, the counters.
#[derive(Clone)]
pub struct Collector {
    udp: DatagramClient,
    config: Config,
    pub metrics: Metrics,
    stale: Arc<std::sync::Mutex<StaleWatch>>,
    /// Rebuilds computing at once: one per core (Reed–Solomon is CPU work;
    /// more at once only holds more buffers, and a decoder per thread).
    rebuilds: Arc<Semaphore>,
}

/// The outcome of one step that failed; counted and retried next cycle.
fn failed(metrics: &Metrics, what: &str, error: &dyn std::fmt::Display) {
    metrics.errors.inc();
    tracing::warn!(%error, "{what}");
}

fn kind(error: &ClientError) -> Option<ErrorKind> {
    error.error_kind()
}

impl Collector {
    pub fn new(udp: DatagramClient, config: Config, metrics: Metrics) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self { udp, config, metrics, stale: Arc::default(), rebuilds: Arc::new(Semaphore::new(cores)) }
    }

    /// Where the daemons are now (asked of shuckle every cycle) and which
    /// shards are registered.
    pub async fn connect(&self) -> (Client, Vec<ShardId>) {
        let addresses = discover(&self.udp, self.config.shuckle).await;
        let shards = self.registered_shards().await;
        (Client::with_addresses(self.udp.clone(), addresses), shards)
    }

    async fn registered_shards(&self) -> Vec<ShardId> {
        let mut shards = Vec::new();
        let mut begin = 0u8;
        for _ in 0..wire::limits::SHARD_COUNT {
            let request = ShuckleRequest::Shards(ShardsReq { begin });
            let Ok(reply) = self.udp.request::<Shuckle>(self.config.shuckle, &request).await else { break };
            let Ok(ShuckleResponse::Shards(page)) = reply.get() else { break };
            shards.extend(page.shards.iter().filter(|info| !info.address.is_unknown()).map(|info| info.shard));
            if page.next == 0 || page.next <= begin {
                break;
            }
            begin = page.next;
        }
        shards.sort_unstable();
        shards.dedup();
        shards
    }

    /// One cycle: eden, retention, migration, in that order of priority.
    pub async fn cycle(&self) -> CycleReport {
        let errors_before = self.metrics.errors.get();
        let purged_before = self.metrics.dirents_purged.get();
        let directories_before = self.metrics.directories_collected.get();
        let collected_before = self.metrics.files_collected.get();
        let migrated_before = self.metrics.blocks_migrated.get();
        let (client, shards) = self.connect().await;
        let mut eden_files_due = self.collect_eden(&client, &shards).await;
        self.retain(&client, &shards).await;
        // Files purged just now went to eden with deadline now: collect
        // them in the same cycle.
        eden_files_due += self.collect_eden(&client, &shards).await;
        let blocks_awaiting_migration = self.migrate(&client, &shards).await;
        self.metrics.cycles.inc();
        CycleReport {
            eden_files_due,
            eden_files_collected: self.metrics.files_collected.get() - collected_before,
            dirents_purged: self.metrics.dirents_purged.get() - purged_before,
            directories_collected: self.metrics.directories_collected.get() - directories_before,
            blocks_migrated: self.metrics.blocks_migrated.get() - migrated_before,
            blocks_awaiting_migration,
            errors: self.metrics.errors.get() - errors_before,
        }
    }

    // ---- eden ----

    /// Collects every eden file past its deadline; returns how many were due.
    pub async fn collect_eden(&self, client: &Client, shards: &[ShardId]) -> u64 {
        let mut due_total = 0;
        let in_flight = Arc::new(Semaphore::new(EDEN_FILES_IN_FLIGHT));
        let mut tasks = JoinSet::new();
        for &shard in shards {
            let mut begin = InodeId::NULL;
            for _ in 0..PAGES_MAX {
                let (entries, next) = match client.visit_eden(shard, begin).await {
                    Ok(page) => page,
                    Err(error) => {
                        failed(&self.metrics, "visit_eden", &error);
                        break;
                    }
                };
                let entries: Vec<(InodeId, EggsTime)> =
                    entries.iter().map(|entry| (entry.inode, entry.deadline)).collect();
                for inode in plan::eden_due(&entries, EggsTime::now()) {
                    due_total += 1;
                    let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
                    let (this, client) = (self.clone(), client.clone());
                    tasks.spawn(async move {
                        this.collect_eden_file(&client, inode).await;
                        drop(permit);
                    });
                }
                if next.is_null() {
                    break;
                }
                begin = next;
            }
        }
        while tasks.join_next().await.is_some() {}
        due_total
    }

    /// Expunges an eden file's spans, last first, erasing each block with
    /// its certificate before certify_expunge sends the proofs; then the
    /// file. Any failure leaves the file (and the condemned span, with all
    /// its blocks listed) for the next cycle.
    pub async fn collect_eden_file(&self, client: &Client, inode: InodeId) -> bool {
        let mut size = match client.stat(inode).await {
            Ok(Stat::File { size, .. }) => size,
            Ok(Stat::Directory { .. }) => return false,
            Err(error) if kind(&error) == Some(ErrorKind::NotFound) => return true,
            Err(error) => {
                failed(&self.metrics, "stat of an eden file", &error);
                return false;
            }
        };
        for _ in 0..SPANS_PER_FILE_MAX {
            let (offset, certificates) = match client.expunge_eden_span(inode).await {
                Ok(answer) => answer,
                // "no spans left": the file is empty.
                Err(error) if kind(&error) == Some(ErrorKind::BadRequest) => break,
                // Gone (collected by an earlier attempt) or not due after all.
                Err(error) if matches!(kind(&error), Some(ErrorKind::NotFound | ErrorKind::TooSoon)) => {
                    return false;
                }
                Err(error) => {
                    failed(&self.metrics, "expunge_eden_span", &error);
                    return false;
                }
            };
            if !certificates.is_empty() {
                let Some(proofs) = self.erase_all(inode, &certificates).await else { return false };
                match client.certify_expunge(inode, offset, &proofs).await {
                    Ok(()) => {}
                    // A retry of a certify that went through.
                    Err(error) if kind(&error) == Some(ErrorKind::NotFound) => {}
                    Err(error) => {
                        failed(&self.metrics, "certify_expunge", &error);
                        return false;
                    }
                }
                self.metrics.blocks_erased.inc_by(certificates.len() as u64);
            }
            self.metrics.bytes_freed.inc_by(size.saturating_sub(offset));
            size = offset;
        }
        match client.expunge_eden_file(inode).await {
            Ok(()) => {
                self.metrics.files_collected.inc();
                tracing::debug!(%inode, "eden file collected");
                true
            }
            Err(error) if kind(&error) == Some(ErrorKind::NotFound) => true,
            Err(error) => {
                failed(&self.metrics, "expunge_eden_file", &error);
                false
            }
        }
    }

    /// Erases every block with its certificate, in parallel; the proofs in
    /// block order, or `None` if any block could not be erased (logged and
    /// counted; nothing is sent to the shard then).
    async fn erase_all(&self, inode: InodeId, certificates: &[BlockCertificate]) -> Option<Vec<Mac>> {
        let mut tasks = JoinSet::new();
        for (index, certificate) in certificates.iter().copied().enumerate() {
            tasks.spawn(async move {
                if certificate.address.is_unknown() {
                    // No certificate: the service is terminal (the shard
                    // needs no proof then) or unknown to the shard (it
                    // refuses, and the span stays listed).
                    return (index, Ok([0u8; 8]));
                }
                let addr = certificate.address.socket_addr();
                let result = client::block::erase_block(addr, certificate.block_id, certificate.certificate)
                    .await
                    .map_err(|error| error.to_string());
                (index, result)
            });
        }
        let mut proofs = vec![[0u8; 8]; certificates.len()];
        let mut complete = true;
        while let Some(joined) = tasks.join_next().await {
            let Ok((index, result)) = joined else {
                complete = false;
                continue;
            };
            match result {
                Ok(proof) => proofs[index] = proof,
                Err(reason) => {
                    complete = false;
                    self.metrics.erase_failures.inc();
                    self.metrics.errors.inc();
                    let block = certificates.get(index).map(|c| c.block_id);
                    tracing::warn!(%inode, ?block, %reason, "erase failed; the block stays listed, retried next cycle");
                }
            }
        }
        complete.then_some(proofs)
    }

    // ---- retention and directory collection ----

    /// Purges, in every directory of every shard, the dead versions that the
    /// directory's retention lets go; then collects the removed directories
    /// whose retention has passed since their removal.
    pub async fn retain(&self, client: &Client, shards: &[ShardId]) {
        let mut walk = RetentionWalk::default();
        for &shard in shards {
            let mut begin = InodeId::NULL;
            for _ in 0..PAGES_MAX {
                let (inodes, next) = match client.visit_inodes(shard, begin).await {
                    Ok(page) => page,
                    Err(error) => {
                        failed(&self.metrics, "visit_inodes", &error);
                        break;
                    }
                };
                for dir in inodes.into_iter().filter(|inode| inode.inode_type() == Some(InodeType::Directory)) {
                    self.retain_or_note_removed(client, dir, &mut walk).await;
                }
                if next.is_null() {
                    break;
                }
                begin = next;
            }
        }
        // Each removed directory's dead entries, read before any is
        // collected: those naming removed directories tell which removed
        // directory each was removed from (its retention comes down that
        // chain, as a linked directory's comes down its parents).
        let mut listings = HashMap::new();
        let removed_set: HashSet<InodeId> = walk.removed.iter().map(|removed| removed.dir).collect();
        for removed in &walk.removed {
            let Some(listing) = self.dead_listing(client, removed.dir, Some(removed.removed_at)).await else {
                // Unknown children keep the default (longer, never shorter).
                continue;
            };
            for version in listing.iter().flat_map(|name| &name.entries) {
                let child = version.inode.without_owning();
                if child.inode_type() == Some(InodeType::Directory) && removed_set.contains(&child) {
                    walk.removed_from_removed.insert(child, removed.dir);
                }
            }
            listings.insert(removed.dir, listing);
        }
        walk.removed_own = walk.removed.iter().map(|removed| (removed.dir, removed.own)).collect();
        // A directory removed inside another was removed before it: oldest
        // first, so the inner one is gone when the outer one's entry for it
        // comes up (its retention, inherited, is no longer: it is due first).
        walk.removed.sort_by_key(|removed| removed.removed_at);
        for removed in std::mem::take(&mut walk.removed) {
            let retention = walk.retention_of_removed(removed.dir);
            let Some(listing) = listings.remove(&removed.dir) else { continue };
            self.collect_removed_directory(client, &removed, retention, listing).await;
        }
    }

    /// A linked directory's dead versions are purged now; a removed one is
    /// noted for [`Self::collect_removed_directory`], after the walk has seen
    /// the entry that names it in its old parent (whose retention it keeps).
    async fn retain_or_note_removed(&self, client: &Client, dir: InodeId, walk: &mut RetentionWalk) {
        let (parent, mtime, policy) = match client.stat(dir).await {
            Ok(Stat::Directory { parent, mtime, policy }) => (parent, mtime, policy),
            Ok(Stat::File { .. }) => return,
            Err(error) if kind(&error) == Some(ErrorKind::NotFound) => return,
            Err(error) => {
                failed(&self.metrics, "stat of a directory", &error);
                return;
            }
        };
        let own = Policy::decode(&policy).map(|policy| policy.retention);
        if parent.is_null() && dir != InodeId::ROOT {
            walk.removed.push(RemovedDirectory { dir, removed_at: mtime, own });
            return;
        }
        let retention = match own {
            Some(retention) => retention,
            None if dir == InodeId::ROOT => Retention::DEFAULT,
            None => match walk.inherited_from(client, parent.without_owning()).await {
                Ok(retention) => retention,
                Err(error) => {
                    failed(&self.metrics, "policy of a directory", &error);
                    return;
                }
            },
        };
        walk.retentions.insert(dir, retention);
        for removed_child in self.retain_directory(client, dir, retention).await {
            walk.removed_parents_retention.insert(removed_child, retention);
        }
    }

    /// A removed directory: its dead versions (`listing`) follow its
    /// retention as in a linked one, each counted dead at the latest from
    /// the removal; once the retention has passed since the removal, every
    /// version goes (the count rule keeps versions of a directory that
    /// exists, not of one past its retention), then the directory itself
    /// (purge_directory, which the shard refuses unless it is removed,
    /// empty and past the shard's purge age).
    async fn collect_removed_directory(
        &self,
        client: &Client,
        removed: &RemovedDirectory,
        retention: Retention,
        listing: Vec<NameVersions>,
    ) {
        let due = EggsTime::now().get() >= removed.removed_at.get().saturating_add(retention.ns());
        let rule = if due { Retention { versions: 0, ..retention } } else { retention };
        self.purge_listed(client, removed.dir, &listing, rule).await;
        if !due {
            return;
        }
        match client.purge_directory(removed.dir).await {
            Ok(()) => {
                self.metrics.directories_collected.inc();
                tracing::debug!(dir = %removed.dir, "removed directory collected");
            }
            // Gone already (a retry), or something is left or not yet old
            // enough for the shard: next cycle.
            Err(error) if kind(&error) == Some(ErrorKind::NotFound) => {}
            Err(error) if matches!(kind(&error), Some(ErrorKind::DirectoryNotEmpty | ErrorKind::TooSoon)) => {
                tracing::debug!(dir = %removed.dir, %error, "removed directory not collected yet");
            }
            Err(error) => failed(&self.metrics, "purge_directory", &error),
        }
    }

    /// Purges the dead versions of linked directory `dir` that `retention`
    /// lets go. Returns the removed directories its dead entries name.
    async fn retain_directory(&self, client: &Client, dir: InodeId, retention: Retention) -> Vec<InodeId> {
        match self.dead_listing(client, dir, None).await {
            Some(listing) => self.purge_listed(client, dir, &listing, retention).await,
            None => Vec::new(),
        }
    }

    /// Every name of `dir` with a dead entry, with its versions. A name
    /// with no living entry counts its last version dead from `removed_at`
    /// when given (everything in a removed directory died by its removal).
    /// `None` when the directory could not be read (counted).
    async fn dead_listing(
        &self,
        client: &Client,
        dir: InodeId,
        removed_at: Option<EggsTime>,
    ) -> Option<Vec<NameVersions>> {
        let newest =
            match client.ls_dir(dir, EggsTime::new(u64::MAX), ls_flags::USE_DEAD_MAP | ls_flags::INCLUDE_NOTHING).await
            {
                Ok(entries) => entries,
                Err(error) => {
                    failed(&self.metrics, "ls_dir of the dead map", &error);
                    return None;
                }
            };
        if newest.is_empty() {
            return Some(Vec::new());
        }
        let living: HashMap<String, EggsTime> = match client.ls_dir(dir, EggsTime::ZERO, 0).await {
            Ok(entries) => entries.into_iter().map(|entry| (entry.name, entry.creation_time)).collect(),
            Err(error) => {
                failed(&self.metrics, "ls_dir", &error);
                return None;
            }
        };
        let mut listing = Vec::with_capacity(newest.len());
        for newest_entry in newest {
            // A name whose versions could not be read is left for next cycle.
            let Some(entries) = self.dead_entries(client, dir, &newest_entry).await else { continue };
            let living = living.get(&newest_entry.name).copied().or(removed_at);
            listing.push(NameVersions { name: newest_entry.name, living, entries });
        }
        Some(listing)
    }

    /// Purges the versions in `listing` (of `dir`) that `retention` lets
    /// go; returns the removed directories they name.
    async fn purge_listed(
        &self,
        client: &Client,
        dir: InodeId,
        listing: &[NameVersions],
        retention: Retention,
    ) -> Vec<InodeId> {
        let mut removed_children = Vec::new();
        for name in listing {
            removed_children.extend(self.retain_name(client, dir, name, retention).await);
        }
        removed_children
    }

    /// The dead versions of one name: every version (resolve DEAD_GE walks
    /// them, skipping placeholders) and the newest entry if it is a placeholder.
    async fn dead_entries(&self, client: &Client, dir: InodeId, newest: &DirEntry) -> Option<Vec<DeadEntry>> {
        let mut entries = Vec::new();
        let mut from = EggsTime::ZERO;
        for _ in 0..VERSIONS_PER_NAME_MAX {
            match client.resolve(dir, &newest.name, ResolveMode::DeadGe, from).await {
                Ok(Some((inode, creation_time))) => {
                    entries.push(DeadEntry { creation_time, inode });
                    from = EggsTime::new(creation_time.get().checked_add(1)?);
                }
                Ok(None) => break,
                Err(error) => {
                    failed(&self.metrics, "resolve of a dead version", &error);
                    return None;
                }
            }
        }
        if newest.inode.is_null() && entries.last().is_none_or(|last| last.creation_time < newest.creation_time) {
            entries.push(DeadEntry { creation_time: newest.creation_time, inode: InodeId::NULL });
        }
        Some(entries)
    }

    /// Purges the versions of one name that retention lets go; returns the
    /// removed directories among its versions (kept until collected).
    async fn retain_name(
        &self,
        client: &Client,
        dir: InodeId,
        name: &NameVersions,
        retention: Retention,
    ) -> Vec<InodeId> {
        let (entries, living) = (&name.entries, name.living);
        let mut removed_children = Vec::new();
        for entry in entries {
            let child = entry.inode.without_owning();
            if child.inode_type() == Some(InodeType::Directory) && self.is_removed_directory(client, child).await {
                removed_children.push(child);
            }
        }
        for creation_time in plan::purgeable_versions(entries, living, retention, EggsTime::now()) {
            let Some(entry) = entries.iter().find(|entry| entry.creation_time == creation_time) else { continue };
            let inode = entry.inode;
            // The entry that names a removed directory goes after the
            // directory (its collection), never before.
            if removed_children.contains(&inode.without_owning()) {
                continue;
            }
            let remote_owning_file = inode.is_owning()
                && inode.inode_type() != Some(InodeType::Directory)
                && inode.without_owning().shard() != dir.shard();
            let result = if remote_owning_file {
                self.purge_remote_file(client, dir, &name.name, creation_time).await
            } else {
                purge_dirent(client, dir, &name.name, creation_time).await
            };
            match result {
                Ok(()) => {
                    self.metrics.dirents_purged.inc();
                    tracing::debug!(%dir, name = %name.name, creation_time = creation_time.get(), "purged");
                }
                // The shard's own floor (--purge-age-min-secs) is longer
                // than this directory's retention: later.
                Err(error) if kind(&error) == Some(ErrorKind::TooSoon) => {}
                Err(error) if kind(&error) == Some(ErrorKind::NotFound) => {}
                Err(error) => failed(&self.metrics, "purge of a dead entry", &error),
            }
        }
        removed_children
    }

    /// Whether `dir` still exists as a removed directory (awaiting collection).
    async fn is_removed_directory(&self, client: &Client, dir: InodeId) -> bool {
        match client.stat(dir).await {
            Ok(Stat::Directory { parent, .. }) => parent.is_null() && dir != InodeId::ROOT,
            Ok(Stat::File { .. }) => false,
            Err(error) if kind(&error) == Some(ErrorKind::NotFound) => false,
            Err(error) => {
                // Unknown: keep the entry this cycle.
                failed(&self.metrics, "stat of a dead directory entry", &error);
                true
            }
        }
    }

    async fn purge_remote_file(
        &self,
        client: &Client,
        dir: InodeId,
        name_text: &str,
        creation_time: EggsTime,
    ) -> Result<(), ClientError> {
        let name = Name::new(name_text.as_bytes()).map_err(|error| ClientError::Invalid(error.to_string()))?;
        let request = CdcRequest::PurgeRemoteFile(PurgeRemoteFileReq {
            head: PurgeRemoteFileReqHead { parent: dir, creation_time },
            name,
        });
        let reply = self.udp.request::<Cdc>(client.addresses().cdc, &request).await?;
        match reply.get()? {
            CdcResponse::PurgeRemoteFile(resp) if resp.status == CdcStatus::Ok => Ok(()),
            CdcResponse::PurgeRemoteFile(resp) => {
                Err(ClientError::cdc("purge-remote-file", name_text, resp.status, resp.text.as_str()))
            }
            other => Err(reply.unexpected(&other).into()),
        }
    }

    // ---- migration ----

    /// Moves every block off the block services being emptied; returns how
    /// many blocks still await migration after this pass.
    pub async fn migrate(&self, client: &Client, shards: &[ShardId]) -> u64 {
        let services = match client.block_services().await {
            Ok(services) => services,
            Err(error) => {
                failed(&self.metrics, "block services from shuckle", &error);
                return 0;
            }
        };
        let listed: Vec<(BlockServiceId, u8)> = services.iter().map(|(id, _, _, flags)| (*id, *flags)).collect();
        let evacuations = {
            let mut stale = self.stale.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let limit_ns = u64::try_from(self.config.migrate_stale_after.as_nanos()).unwrap_or(u64::MAX);
            stale.evacuations(&listed, EggsTime::now(), limit_ns)
        };
        let mut awaiting = 0;
        for (service, why) in evacuations {
            let moved_before = self.metrics.blocks_migrated.get();
            let left = self.evacuate(client, shards, service, why).await;
            let moved = self.metrics.blocks_migrated.get() - moved_before;
            if moved > 0 || left > 0 {
                tracing::info!(%service, ?why, moved, left, "migration pass");
            }
            awaiting += left;
        }
        awaiting
    }

    /// One pass over the blocks of `service`; returns how many are left.
    async fn evacuate(&self, client: &Client, shards: &[ShardId], service: BlockServiceId, why: Evacuation) -> u64 {
        let in_flight = Arc::new(Semaphore::new(MIGRATIONS_IN_FLIGHT));
        let mut tasks = JoinSet::new();
        for &shard in shards {
            let mut blocks = client.reverse_blocks(shard, service);
            while let Some(entries) = self.next_blocks(&mut blocks).await {
                for entry in entries {
                    let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
                    let (this, client) = (self.clone(), client.clone());
                    tasks.spawn(async move {
                        this.migrate_block(&client, entry).await;
                        drop(permit);
                    });
                }
            }
        }
        while tasks.join_next().await.is_some() {}
        tracing::debug!(%service, ?why, "evacuation pass done");
        let mut left = 0;
        for &shard in shards {
            let mut blocks = client.reverse_blocks(shard, service);
            while let Some(Ok(entries)) = blocks.next_page().await {
                left += entries.len() as u64;
            }
        }
        left
    }

    /// The next page of a walk over one service's blocks; `None` at its end
    /// or when a page could not be read (counted; the next pass walks again).
    async fn next_blocks(&self, blocks: &mut ReverseBlocks<'_>) -> Option<Vec<ReverseBlockEntry>> {
        match blocks.next_page().await? {
            Ok(entries) => Some(entries),
            Err(error) => {
                failed(&self.metrics, "reverse_block_query", &error);
                None
            }
        }
    }

    async fn migrate_block(&self, client: &Client, entry: ReverseBlockEntry) {
        match self.replace_block(client, entry.inode, entry.span_offset.get(), entry.block_id, true).await {
            Ok(Some(bytes)) => {
                self.metrics.blocks_migrated.inc();
                self.metrics.bytes_migrated.inc_by(bytes);
            }
            Ok(None) => {}
            Err(error) => failed(&self.metrics, "migration of a block", &error),
        }
    }

    // ---- scrub ----

    /// One scrub pass over every block service that is not terminal, each
    /// at its own rate limit, in parallel (one disk each).
    pub async fn scrub_pass(&self) {
        let (client, shards) = self.connect().await;
        let services = match client.block_services().await {
            Ok(services) => services,
            Err(error) => {
                failed(&self.metrics, "block services from shuckle", &error);
                return;
            }
        };
        let mut tasks = JoinSet::new();
        for (service, addr, _, service_flags) in services {
            if service_flags & (flags::TERMINAL | flags::STALE) != 0 {
                continue;
            }
            let (this, client, shards) = (self.clone(), client.clone(), shards.clone());
            tasks.spawn(async move { this.scrub_service(&client, &shards, service, addr).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn scrub_service(&self, client: &Client, shards: &[ShardId], service: BlockServiceId, addr: SocketAddr) {
        let mut limit = RateLimit::new(self.config.scrub_bytes_per_second);
        for &shard in shards {
            let mut blocks = client.reverse_blocks(shard, service);
            while let Some(entries) = self.next_blocks(&mut blocks).await {
                for entry in entries {
                    let (inode, offset) = (entry.inode, entry.span_offset.get());
                    if !self.scrub_block(client, &mut limit, addr, inode, offset, entry.block_id).await {
                        // The service stopped answering: the rest of the pass waits.
                        return;
                    }
                }
            }
        }
    }

    /// Checks one block; false when its service is unreachable.
    async fn scrub_block(
        &self,
        client: &Client,
        limit: &mut RateLimit,
        addr: SocketAddr,
        inode: InodeId,
        offset: u64,
        block_id: BlockId,
    ) -> bool {
        let Some((_, index, block)) = (match linked_span(client, inode, offset, block_id).await {
            Ok(found) => found,
            Err(error) => {
                failed(&self.metrics, "fetch_spans for a scrub", &error);
                return true;
            }
        }) else {
            // An eden file's block (not readable as a file) or gone.
            return true;
        };
        let wait = limit.take(u64::from(block.size.get()), EggsTime::now().get());
        if wait > 0 {
            tokio::time::sleep(Duration::from_nanos(wait)).await;
        }
        let answer = match block_crc(addr, block_id, block.size.get()).await {
            Ok(answer) => answer,
            Err(error) => {
                failed(&self.metrics, "crc request", &error);
                return false;
            }
        };
        self.metrics.blocks_scrubbed.inc();
        self.metrics.bytes_scrubbed.inc_by(u64::from(block.size.get()));
        let good = answer == CrcAnswer::Stored { size: block.size.get(), crc: block.crc.get() };
        if good {
            return true;
        }
        // An eden file's blocks may never have been written (a write that
        // died): eden collection erases them; only linked files are repaired.
        match is_eden(client, inode).await {
            Ok(false) => {}
            Ok(true) => return true,
            Err(error) => {
                failed(&self.metrics, "visit_eden for a scrub", &error);
                return true;
            }
        }
        tracing::warn!(%inode, offset, index, %block_id, ?answer, "bad block found; rebuilding it");
        // Counted only once the block is known to be still in its linked
        // span: the collector runs beside the scrub, and an eden file it
        // collected between the checks above (is_eden then says "no": the
        // file is gone) has left nothing to repair and nothing corrupt.
        match self.replace_block(client, inode, offset, block_id, false).await {
            Ok(Some(_)) => {
                self.metrics.corruptions_found.inc();
                self.metrics.corruptions_repaired.inc();
                tracing::info!(%inode, offset, index, %block_id, "bad block rebuilt and swapped in");
            }
            Ok(None) => {
                tracing::info!(%inode, offset, index, %block_id, "the block left its span meanwhile; nothing to repair");
            }
            Err(error) => {
                self.metrics.corruptions_found.inc();
                failed(&self.metrics, "repair of a bad block", &error);
            }
        }
        true
    }

    // ---- rebuilding one block ----

    /// Rebuilds block `block_id` of the span at (`inode`, `offset`) from the
    /// span's other blocks, writes it as a one-block eden file on a service
    /// holding no other block of the span, and swaps it in with
    /// repair_block (which checks CRC and size). Returns the bytes moved, or
    /// `None` when the block is no longer in that span (done already), or is
    /// an eden file's block that cannot be rebuilt (eden collection
    /// handles those).
    pub async fn replace_block(
        &self,
        client: &Client,
        inode: InodeId,
        offset: u64,
        block_id: BlockId,
        avoid_own_service: bool,
    ) -> Result<Option<u64>, ClientError> {
        let Some((span, index, _)) = linked_span(client, inode, offset, block_id).await? else { return Ok(None) };
        let FileSpanBody::Blocks { storage_class, parity, blocks } = &span.body else { return Ok(None) };
        // A data block is rebuilt by XOR from every other block when the
        // code allows it: one more fetch instead of a decode.
        let needed = if plan::rebuild_wants_all_others(*parity, index) {
            parity.total_blocks() - 1
        } else {
            parity.data_blocks()
        };
        let others = fetch_blocks_for_rebuild(blocks, index, needed).await;
        let crcs: Vec<u32> = blocks.iter().map(|block| block.crc.get()).collect();
        // Reed–Solomon and the CRCs of a whole span are CPU work: off the
        // runtime's threads, so the other migrations' I/O goes on meanwhile.
        let (span_size, span_crc, span_parity) = (span.size, span.crc, *parity);
        let computing = self
            .rebuilds
            .clone()
            .acquire_owned()
            .await
            .map_err(|error| ClientError::Invalid(format!("rebuild slot: {error}")))?;
        let rebuild = tokio::task::spawn_blocking(move || {
            let _computing = computing;
            let mut others = others;
            let rebuilt = plan::rebuild_block(span_size, span_crc, span_parity, &crcs, &mut others, index);
            keep_buffers(others);
            rebuilt
        })
        .await
        .map_err(|error| ClientError::Invalid(format!("rebuild task: {error}")))?;
        let (rebuilt, rebuilt_crc) = match rebuild {
            Ok(rebuilt) => rebuilt,
            // A block swapped out by an earlier repair waits, condemned, in
            // the repair's eden file (a 1+0 span: nothing to rebuild it
            // from); eden collection lets it go. Not an error: skip it.
            Err(_) if is_eden(client, inode).await? => return Ok(None),
            Err(error) => {
                return Err(ClientError::Span { inode, offset, reason: format!("block {index}: {error}") });
            }
        };
        let bytes = rebuilt.len() as u64;
        // A 1+0 span of the one block; its CRC is known already (the
        // span's and the block's are the same).
        let layout =
            SpanLayout::new(bytes, Parity::new(1, 0).ok_or_else(|| ClientError::Invalid("parity 1+0".into()))?)
                .map_err(|error| ClientError::Invalid(format!("rebuilt block layout: {error}")))?;
        let encoded = EncodedSpan {
            offset: 0,
            data: Bytes::from(rebuilt),
            crc: rebuilt_crc,
            payload: SpanPayload::Blocks(BlockSpan {
                storage_class: *storage_class,
                layout,
                parity_blocks: Vec::new(),
                block_crcs: vec![rebuilt_crc],
            }),
        };
        // The new block goes where no other block of the span is, so one
        // disk never holds two blocks of a span.
        let avoid = FailedServices::new();
        for (other_index, block) in blocks.iter().enumerate() {
            if other_index != index || avoid_own_service {
                avoid.record(block.block_service_id);
            }
        }
        let eden = client.create_eden_file(inode.shard(), InodeType::File).await?;
        write_span(client, eden, &encoded, &avoid).await?;
        let block_index = u8::try_from(index).map_err(|_| ClientError::Invalid("block index".into()))?;
        let request = ShardRequest::RepairBlock(RepairBlockReq {
            inode,
            offset: zerocopy::byteorder::little_endian::U64::new(offset),
            block_index,
            source_inode: eden.inode,
            source_cookie: eden.cookie,
        });
        let reply = client.shard_request(inode.shard(), &request).await?;
        match reply.get()? {
            ShardResponse::RepairBlock(_) => Ok(Some(bytes)),
            other => Err(reply.unexpected(&other).into()),
        }
    }
}

/// A directory that rmdir removed (null parent), as the walk found it.
#[derive(Debug, Clone)]
struct RemovedDirectory {
    dir: InodeId,
    /// Its mtime: the removal (set_parent) touched it last, and a removed
    /// directory takes no new entries.
    removed_at: EggsTime,
    /// Its own policy's retention, if it has a policy.
    own: Option<Retention>,
}

/// One name of a directory with dead entries: its versions and
/// placeholders by creation time, and when its last one died (its living
/// entry's creation, or the directory's removal).
#[derive(Debug, Clone)]
struct NameVersions {
    name: String,
    living: Option<EggsTime>,
    entries: Vec<DeadEntry>,
}

/// What one retention walk learns as it goes.
#[derive(Default)]
struct RetentionWalk {
    /// Effective retention of the linked directories seen (inherited by
    /// their children).
    retentions: HashMap<InodeId, Retention>,
    /// Removed directories, collected after the walk.
    removed: Vec<RemovedDirectory>,
    /// A removed directory → the retention of the linked directory whose
    /// dead entry names it (its old parent).
    removed_parents_retention: HashMap<InodeId, Retention>,
    /// A removed directory → the removed directory whose dead entry names
    /// it (its old parent, itself removed since).
    removed_from_removed: HashMap<InodeId, InodeId>,
    /// Every removed directory → its own policy's retention, if it has one.
    removed_own: HashMap<InodeId, Option<Retention>>,
}

impl RetentionWalk {
    /// The retention a linked directory inherits from `parent`.
    async fn inherited_from(&mut self, client: &Client, parent: InodeId) -> Result<Retention, ClientError> {
        if let Some(retention) = self.retentions.get(&parent) {
            return Ok(*retention);
        }
        let retention =
            client.effective_policy(parent).await?.map_or(Retention::DEFAULT, |(policy, _)| policy.retention);
        self.retentions.insert(parent, retention);
        Ok(retention)
    }

    /// A removed directory keeps its own policy's retention, else the one
    /// it had where it lived: its old parent's (found through the dead
    /// entry naming it), which for a parent removed too is that parent's,
    /// by the same rule, up the chain; else the default. Never shorter than
    /// what it promised.
    fn retention_of_removed(&self, dir: InodeId) -> Retention {
        let mut at = dir;
        // A chain longer than the removed directories has a loop (bad input).
        for _ in 0..=self.removed_own.len() {
            if let Some(retention) = self.removed_own.get(&at).copied().flatten() {
                return retention;
            }
            if let Some(retention) = self.removed_parents_retention.get(&at) {
                return *retention;
            }
            match self.removed_from_removed.get(&at) {
                Some(parent) => at = *parent,
                None => break,
            }
        }
        Retention::DEFAULT
    }
}

async fn purge_dirent(
    client: &Client,
    dir: InodeId,
    name_text: &str,
    creation_time: EggsTime,
) -> Result<(), ClientError> {
    let name = Name::new(name_text.as_bytes()).map_err(|error| ClientError::Invalid(error.to_string()))?;
    let request = ShardRequest::PurgeDirent(wire::shard::PurgeDirentReq {
        head: wire::shard::PurgeDirentReqHead { parent: dir, creation_time },
        name,
    });
    client.shard_request(dir.shard(), &request).await?;
    Ok(())
}

/// Whether `inode` is an eden file (being written, or waiting for collection).
async fn is_eden(client: &Client, inode: InodeId) -> Result<bool, ClientError> {
    let (entries, _) = client.visit_eden(inode.shard(), inode).await?;
    Ok(entries.first().is_some_and(|entry| entry.inode == inode))
}

/// The file's span at `offset` and the index of `block_id` in it; `None`
/// when the file or the block is no longer there. fetch_spans answers for
/// eden files too: callers that must not touch those ask [`is_eden`].
async fn linked_span(
    client: &Client,
    inode: InodeId,
    offset: u64,
    block_id: BlockId,
) -> Result<Option<(FileSpan, usize, FetchedBlock)>, ClientError> {
    let page = match client.fetch_spans(inode, offset).await {
        Ok(page) => page,
        Err(error) if kind(&error) == Some(ErrorKind::NotFound) => return Ok(None),
        Err(error) => return Err(error),
    };
    let Some(span) = page.spans.into_iter().find(|span| span.offset == offset) else { return Ok(None) };
    let FileSpanBody::Blocks { blocks, .. } = &span.body else { return Ok(None) };
    let Some((index, block)) = blocks.iter().enumerate().find(|(_, block)| block.block_id == block_id) else {
        return Ok(None);
    };
    let block = *block;
    Ok(Some((span, index, block)))
}

/// The blocks a rebuild of block `index` reads: `needed` (D) of the span's
/// other blocks, data blocks first (they are the span's bytes: a parity
/// block is fetched only for one that is missing), in parallel, each
/// checked against its recorded CRC as it arrives (the pool computes it on
/// the way). Where one is unavailable or bad, the next one is fetched.
/// `None` where not fetched, unavailable or bad.
async fn fetch_blocks_for_rebuild(blocks: &[FetchedBlock], index: usize, needed: usize) -> Vec<Option<Vec<u8>>> {
    let mut candidates = blocks.iter().copied().enumerate().filter(|(other_index, block)| {
        let unusable = block.flags & (flags::TERMINAL | flags::UNKNOWN) != 0 || block.address.is_unknown();
        *other_index != index && !unusable
    });
    let mut out = vec![None; blocks.len()];
    let mut have = 0;
    while have < needed {
        let mut tasks = JoinSet::new();
        for (other_index, block) in candidates.by_ref().take(needed - have) {
            tasks.spawn(async move { (other_index, fetch_checked(block).await) });
        }
        if tasks.is_empty() {
            break;
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok((other_index, Some(bytes))) = joined
                && let Some(slot) = out.get_mut(other_index)
            {
                *slot = Some(bytes);
                have += 1;
            }
        }
    }
    out
}

/// One block's bytes if its service has it with the recorded CRC.
async fn fetch_checked(block: FetchedBlock) -> Option<Vec<u8>> {
    let size = block.size.get();
    let dst = spare_buffer(size as usize);
    match client::block::fetch_block_into(block.address.socket_addr(), block.block_id, size, dst).await {
        Ok((bytes, crc)) if crc == block.crc.get() => Some(Vec::from(bytes)),
        Ok((bytes, _)) => {
            keep_buffers(vec![Some(Vec::from(bytes))]);
            None
        }
        Err((_, _, back)) => {
            keep_buffers(vec![back.map(Vec::from)]);
            None
        }
    }
}

/// Fetch buffers of finished rebuilds, kept for the next ones: a fresh
/// buffer of a few MiB is page-faulted and zeroed by the kernel as the
/// bytes arrive, which cost gcd as much CPU as the copy itself.
static SPARE_BUFFERS: std::sync::Mutex<Vec<BytesMut>> = std::sync::Mutex::new(Vec::new());
/// Spare buffers kept at most (of the block size: 4 MiB each by default).
const SPARE_BUFFERS_MAX: usize = 32;

/// An empty buffer, a kept one if there is one, of at least `size` bytes.
fn spare_buffer(size: usize) -> BytesMut {
    let kept = SPARE_BUFFERS.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
    let mut buffer = kept.unwrap_or_default();
    buffer.clear();
    buffer.reserve(size);
    buffer
}

/// Keeps the buffers of `blocks` for later fetches (up to [`SPARE_BUFFERS_MAX`]).
fn keep_buffers(blocks: Vec<Option<Vec<u8>>>) {
    let mut spare = SPARE_BUFFERS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for block in blocks.into_iter().flatten() {
        if spare.len() >= SPARE_BUFFERS_MAX {
            break;
        }
        // Vec → Bytes → BytesMut: both steps keep the allocation (unique).
        spare.push(BytesMut::from(bytes::Bytes::from(block)));
    }
}

/// Addresses as shuckle knows them (for tests and tools).
pub async fn addresses(udp: &DatagramClient, shuckle: SocketAddr) -> Addresses {
    discover(udp, shuckle).await
}
