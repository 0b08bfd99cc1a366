//! gcd's decisions, as plain code over what it read and "now": which eden
//! files are due, which dead versions retention lets go, which block
//! services are being emptied, how fast a disk may be scrubbed, and how a
//! lost block is rebuilt. No sockets, no clocks: tests call these directly.

use std::collections::HashMap;

use wire::crc::crc32c;
use wire::policy::Retention;
use wire::shuckle::flags;
use wire::span::{Parity, SpanError, SpanLayout};
use wire::{BlockServiceId, EggsTime, InodeId};

/// Eden files whose deadline has passed (the shard refuses the others with
/// TOO_SOON anyway; this keeps gcd from asking).
pub fn eden_due(entries: &[(InodeId, EggsTime)], now: EggsTime) -> Vec<InodeId> {
    entries.iter().filter(|(_, deadline)| now > *deadline).map(|(inode, _)| *inode).collect()
}

/// One dead-map entry of a name: a version (inode, with its owning bit) or
/// a "nothing" placeholder (null inode) written when the name was deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadEntry {
    pub creation_time: EggsTime,
    pub inode: InodeId,
}

/// The dead versions of one name that retention lets go, by creation time.
///
/// `entries` are the name's dead-map entries sorted by creation time (the
/// versions, and whichever placeholders the caller knows of); `living` is
/// the creation time of the living entry, if any. A version died when the
/// next entry began. Where a placeholder is unknown to the caller the next
/// version's creation time stands in for it: that is later than the real
/// death, so the error only ever keeps a version longer. A version with
/// nothing after it has no known death and is kept.
pub fn purgeable_versions(
    entries: &[DeadEntry],
    living: Option<EggsTime>,
    retention: Retention,
    now: EggsTime,
) -> Vec<EggsTime> {
    let versions_total = entries.iter().filter(|entry| !entry.inode.is_null()).count();
    let mut purge = Vec::new();
    let mut versions_seen = 0usize;
    for (index, entry) in entries.iter().enumerate() {
        if entry.inode.is_null() {
            continue;
        }
        versions_seen += 1;
        // Rank from the newest dead version: 0 is the newest.
        let rank_from_newest = versions_total - versions_seen;
        if rank_from_newest < retention.versions as usize {
            continue;
        }
        let died = match entries.get(index + 1) {
            Some(next) => Some(next.creation_time),
            None => living,
        };
        let Some(died) = died else { continue };
        if died < entry.creation_time {
            // Impossible order (bad input): keep it.
            continue;
        }
        if now.get() >= died.get().saturating_add(retention.ns()) {
            purge.push(entry.creation_time);
        }
    }
    purge
}

/// Why a block service is being emptied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evacuation {
    /// Drained then terminated by an operator: declared dead.
    Terminal,
    /// Stale (not checked by shuckle) for longer than gcd's limit.
    LongStale,
}

/// Remembers since when each block service has been stale, as gcd saw it
/// (a restart of gcd starts counting again: late, never early).
#[derive(Debug, Default)]
pub struct StaleWatch {
    stale_since: HashMap<BlockServiceId, EggsTime>,
}

impl StaleWatch {
    /// Updates from shuckle's flags at `now`; returns the services to empty.
    pub fn evacuations(
        &mut self,
        services: &[(BlockServiceId, u8)],
        now: EggsTime,
        stale_limit_ns: u64,
    ) -> Vec<(BlockServiceId, Evacuation)> {
        let mut out = Vec::new();
        let mut still_stale = HashMap::new();
        for &(id, service_flags) in services {
            if service_flags & flags::TERMINAL != 0 {
                out.push((id, Evacuation::Terminal));
                continue;
            }
            if service_flags & flags::STALE != 0 {
                let since = self.stale_since.get(&id).copied().unwrap_or(now);
                still_stale.insert(id, since);
                if now.get() >= since.get().saturating_add(stale_limit_ns) {
                    out.push((id, Evacuation::LongStale));
                }
            }
        }
        self.stale_since = still_stale;
        out
    }
}

/// A token bucket in bytes per second, over time passed in: how long to
/// wait before `bytes` more may be read. At most one second of burst.
#[derive(Debug, Clone)]
pub struct RateLimit {
    bytes_per_second: u64,
    /// Eggs ns at which the bucket is empty again.
    busy_until_ns: u64,
}

impl RateLimit {
    /// 0 bytes/s means unlimited.
    pub fn new(bytes_per_second: u64) -> Self {
        Self { bytes_per_second, busy_until_ns: 0 }
    }

    /// Takes `bytes` at `now_ns`; returns the nanoseconds to wait first.
    pub fn take(&mut self, bytes: u64, now_ns: u64) -> u64 {
        if self.bytes_per_second == 0 {
            return 0;
        }
        let cost_ns = (u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_second)) as u64;
        // One second of credit at most: an idle disk does not bank a burst.
        let start = self.busy_until_ns.max(now_ns.saturating_sub(1_000_000_000));
        self.busy_until_ns = start.saturating_add(cost_ns);
        self.busy_until_ns.saturating_sub(now_ns)
    }
}

/// Why a block could not be rebuilt.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RebuildError {
    #[error("only {available} good blocks, {needed} needed")]
    NotEnoughBlocks { available: usize, needed: usize },
    #[error("the rebuilt span's CRC {actual:08x} is not the recorded {expected:08x}")]
    SpanCrcMismatch { expected: u32, actual: u32 },
    #[error("the rebuilt block's CRC {actual:08x} is not the recorded {expected:08x}")]
    BlockCrcMismatch { expected: u32, actual: u32 },
    #[error("span layout: {0}")]
    Layout(String),
}

impl From<SpanError> for RebuildError {
    fn from(error: SpanError) -> Self {
        RebuildError::Layout(error.to_string())
    }
}

/// Rebuilds block `index` of a span from the other blocks (`blocks`: D+P
/// entries, `None` where unavailable; every present one already checked
/// against its recorded CRC in `block_crcs`, as the fetch does). Returns
/// the block and its CRC.
///
/// The span's CRC and the block's recorded CRC are both checked: a
/// rebuild that would not match is refused, never written. The span is
/// not put together to check it: its CRC is combined from its data
/// blocks' CRCs (the recorded ones of the blocks checked on arrival, the
/// computed ones of the blocks rebuilt), which is the CRC of their bytes
/// end to end. Only a parity block is encoded from the whole span.
pub fn rebuild_block(
    span_size: u32,
    span_crc: u32,
    parity: Parity,
    block_crcs: &[u32],
    blocks: &mut [Option<Vec<u8>>],
    index: usize,
) -> Result<(Vec<u8>, u32), RebuildError> {
    let layout = SpanLayout::new(u64::from(span_size), parity)?;
    let d = parity.data_blocks();
    if let Some(slot) = blocks.get_mut(index) {
        *slot = None;
    }
    let available = blocks.iter().filter(|block| block.is_some()).count();
    if available < d {
        return Err(RebuildError::NotEnoughBlocks { available, needed: d });
    }
    let expected = block_crcs.get(index).copied().unwrap_or_default();
    if parity.is_mirroring() {
        // Every block is the whole span: the rebuilt one is a copy.
        let block = blocks.iter().flatten().next().cloned().unwrap_or_default();
        let actual = crc32c(&block);
        if actual != span_crc || block.len() != span_size as usize {
            return Err(RebuildError::SpanCrcMismatch { expected: span_crc, actual });
        }
        if actual != expected {
            return Err(RebuildError::BlockCrcMismatch { expected, actual });
        }
        return Ok((block, actual));
    }
    let fetched: Vec<bool> = blocks.iter().map(Option::is_some).collect();
    if !xor_rebuild_data_block(&layout, blocks, index)? {
        reconstruct_data(&layout, blocks)?;
    }
    let mut data_crcs = Vec::with_capacity(d);
    for (data_index, block) in blocks.iter().take(d).enumerate() {
        let crc = match (fetched.get(data_index), block) {
            (Some(true), _) => block_crcs.get(data_index).copied().unwrap_or_default(),
            (_, Some(block)) => crc32c(block),
            (_, None) => return Err(RebuildError::Layout(format!("data block {data_index} not rebuilt"))),
        };
        data_crcs.push(crc);
    }
    let actual = layout.span_crc(&data_crcs);
    if actual != span_crc {
        return Err(RebuildError::SpanCrcMismatch { expected: span_crc, actual });
    }
    let (block, actual) = if index < d {
        let block = blocks.get_mut(index).and_then(Option::take).unwrap_or_default();
        let crc = data_crcs.get(index).copied().unwrap_or_default();
        (block, crc)
    } else {
        let mut span = Vec::with_capacity(span_size as usize);
        for block in blocks.iter().take(d).flatten() {
            span.extend_from_slice(block);
        }
        let mut parity_blocks = vec![Vec::new(); parity.parity_blocks()];
        layout.encode_parity(&span, &mut parity_blocks)?;
        let block = parity_blocks.into_iter().nth(index - d).unwrap_or_default();
        let crc = crc32c(&block);
        (block, crc)
    };
    if actual != expected {
        return Err(RebuildError::BlockCrcMismatch { expected, actual });
    }
    Ok((block, actual))
}

/// Whether a rebuild should fetch every other block of the span: a
/// missing data block is then rebuilt by XOR ([`xor_rebuild_data_block`])
/// instead of a Reed–Solomon decode, at the price of one more fetch.
pub fn rebuild_wants_all_others(parity: Parity, index: usize) -> bool {
    index < parity.data_blocks() && client::read::xor_rebuilds(parity)
}

thread_local! {
    /// Rebuilds this thread made by XOR (for tests).
    static XOR_REBUILDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Rebuilds data block `index` as the XOR of every other block of the
/// span, when all of them are present and the code allows it
/// (`client::read::xor_rebuilds`: the XOR of the parity blocks is the XOR
/// of the data blocks for this library's code when P is a power of two).
/// A Reed–Solomon decode of one block costs about 50× more CPU; it was a
/// third of gcd's CPU when migrating. False when the route does not apply
/// (the caller decodes). The block's and the span's CRCs are checked by the
/// caller as for a decoded block.
fn xor_rebuild_data_block(
    layout: &SpanLayout,
    blocks: &mut [Option<Vec<u8>>],
    index: usize,
) -> Result<bool, RebuildError> {
    let parity = layout.parity;
    let d = parity.data_blocks();
    let all_others = blocks.len() == parity.total_blocks()
        && blocks.iter().enumerate().all(|(other, block)| other == index || block.is_some());
    if !all_others || !rebuild_wants_all_others(parity, index) {
        return Ok(false);
    }
    let size = layout.block_size(index) as usize;
    let mut out = bytes::BytesMut::new();
    {
        let Some(first) = blocks.get(d).and_then(Option::as_deref) else { return Ok(false) };
        if first.len() < size {
            return Err(RebuildError::Layout(format!("parity block of {} bytes for a block of {size}", first.len())));
        }
        let sources: Vec<&[u8]> = blocks
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index && *other != d)
            .filter_map(|(_, block)| block.as_deref())
            .collect();
        client::read::xor_rebuild(&mut out, size, first, &sources);
    }
    blocks[index] = Some(Vec::from(out));
    XOR_REBUILDS.with(|count| count.set(count.get() + 1));
    Ok(true)
}

/// Fills in the missing data blocks of `blocks` (D+P entries, data first,
/// `None` = unavailable, at least D present with their exact sizes), as
/// [`SpanLayout::reconstruct`] does, with the thread's decoder that the
/// client's read path uses too (`client::read::decode_missing_data`).
fn reconstruct_data(layout: &SpanLayout, blocks: &mut [Option<Vec<u8>>]) -> Result<(), RebuildError> {
    let parity = layout.parity;
    let (d, total) = (parity.data_blocks(), parity.total_blocks());
    if parity.is_mirroring() || blocks.len() != total || blocks.iter().take(d).all(Option::is_some) {
        return layout.reconstruct(blocks).map_err(RebuildError::from);
    }
    let mut restored: Vec<(usize, Vec<u8>)> = Vec::new();
    let present: Vec<Option<&[u8]>> = blocks.iter().map(Option::as_deref).collect();
    let (data, parity_blocks) = present.split_at(d);
    client::read::decode_missing_data(layout, data, parity_blocks, |index, bytes| {
        restored.push((index, bytes.to_vec()));
        Ok(())
    })
    .map_err(RebuildError::Layout)?;
    for (index, bytes) in restored {
        if let Some(slot) = blocks.get_mut(index) {
            *slot = Some(bytes);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::limits::NS_PER_SECOND;

    fn t(secs: u64) -> EggsTime {
        EggsTime::new(secs * NS_PER_SECOND)
    }

    fn file(counter: u64) -> InodeId {
        InodeId::compose(wire::InodeType::File, 1, counter).expect("inode").with_owning(true)
    }

    fn version(secs: u64, counter: u64) -> DeadEntry {
        DeadEntry { creation_time: t(secs), inode: file(counter) }
    }

    fn nothing(secs: u64) -> DeadEntry {
        DeadEntry { creation_time: t(secs), inode: InodeId::NULL }
    }

    #[test]
    fn an_eden_file_before_its_deadline_is_not_due() {
        let entries = [(file(1), t(100)), (file(2), t(200))];
        assert_eq!(eden_due(&entries, t(100)), Vec::<InodeId>::new(), "at the deadline: not yet");
        assert_eq!(eden_due(&entries, t(150)), vec![file(1)]);
        assert_eq!(eden_due(&entries, t(201)), vec![file(1), file(2)]);
    }

    #[test]
    fn a_version_within_retention_is_kept() {
        let retention = Retention { secs: 60, versions: 0 };
        // v1 at 10 overwritten by v2 at 20, deleted at 30 (placeholder).
        let entries = [version(10, 1), version(20, 2), nothing(30)];
        assert!(purgeable_versions(&entries, None, retention, t(79)).is_empty(), "v1 died at 20: kept until 80");
        assert_eq!(purgeable_versions(&entries, None, retention, t(80)), vec![t(10)]);
        assert_eq!(purgeable_versions(&entries, None, retention, t(90)), vec![t(10), t(20)]);
    }

    #[test]
    fn the_newest_versions_are_kept_by_count_however_old() {
        let retention = Retention { secs: 1, versions: 2 };
        let entries = [version(10, 1), version(20, 2), version(30, 3)];
        assert_eq!(purgeable_versions(&entries, Some(t(40)), retention, t(1000)), vec![t(10)]);
        let keep_all = Retention { secs: 1, versions: 3 };
        assert!(purgeable_versions(&entries, Some(t(40)), keep_all, t(1000)).is_empty());
    }

    #[test]
    fn a_living_file_is_never_purged_and_an_unknown_death_keeps_the_version() {
        let retention = Retention { secs: 0, versions: 0 };
        // The living entry is not in the dead map at all: only the version
        // it overwrote can go.
        assert_eq!(purgeable_versions(&[version(10, 1)], Some(t(20)), retention, t(30)), vec![t(10)]);
        // A dead version with nothing known after it: no death time, kept.
        assert!(purgeable_versions(&[version(10, 1)], None, retention, t(1_000_000)).is_empty());
        // Placeholders themselves are never purged on their own.
        assert!(purgeable_versions(&[nothing(10)], Some(t(20)), retention, t(30)).is_empty());
    }

    #[test]
    fn stale_services_are_evacuated_only_after_the_limit() {
        let mut watch = StaleWatch::default();
        let id = BlockServiceId::new(7);
        let terminal = BlockServiceId::new(8);
        let services = [(id, flags::STALE), (terminal, flags::TERMINAL | flags::STALE)];
        assert_eq!(watch.evacuations(&services, t(100), 50 * NS_PER_SECOND), vec![(terminal, Evacuation::Terminal)]);
        assert_eq!(watch.evacuations(&services, t(149), 50 * NS_PER_SECOND).len(), 1);
        assert_eq!(
            watch.evacuations(&services, t(150), 50 * NS_PER_SECOND),
            vec![(id, Evacuation::LongStale), (terminal, Evacuation::Terminal)]
        );
        // Fresh again: the count starts over.
        assert!(watch.evacuations(&[(id, 0)], t(160), 50 * NS_PER_SECOND).is_empty());
        assert!(watch.evacuations(&[(id, flags::STALE)], t(170), 50 * NS_PER_SECOND).is_empty());
    }

    #[test]
    fn the_rate_limit_spaces_reads_at_the_configured_rate() {
        let mut limit = RateLimit::new(1_000_000);
        // One second of burst is free, then each MB waits a second more.
        assert_eq!(limit.take(1_000_000, 10 * NS_PER_SECOND), 0);
        assert_eq!(limit.take(1_000_000, 10 * NS_PER_SECOND), NS_PER_SECOND);
        assert_eq!(limit.take(500_000, 10 * NS_PER_SECOND), NS_PER_SECOND + NS_PER_SECOND / 2);
        // Idle for a long time: still only one second of credit.
        assert_eq!(limit.take(2_000_000, 100 * NS_PER_SECOND), NS_PER_SECOND);
        assert_eq!(RateLimit::new(0).take(u64::MAX, 0), 0, "0 = unlimited");
    }

    fn encoded(data: &[u8], parity: Parity) -> (Vec<Vec<u8>>, Vec<u32>) {
        let layout = SpanLayout::new(data.len() as u64, parity).expect("layout");
        let mut blocks: Vec<Vec<u8>> = if parity.is_mirroring() {
            vec![data.to_vec(); parity.total_blocks()]
        } else {
            let mut blocks: Vec<Vec<u8>> = (0..parity.data_blocks())
                .map(|index| {
                    let range = layout.data_block_range(index);
                    data[range.start as usize..range.end as usize].to_vec()
                })
                .collect();
            let mut parity_blocks = vec![Vec::new(); parity.parity_blocks()];
            layout.encode_parity(data, &mut parity_blocks).expect("parity");
            blocks.extend(parity_blocks);
            blocks
        };
        let crcs = blocks.iter().map(|block| crc32c(block)).collect();
        blocks.shrink_to_fit();
        (blocks, crcs)
    }

    #[test]
    fn every_block_of_a_span_rebuilds_to_its_recorded_bytes() {
        // Several sizes one after the other: the thread's decoder is reset
        // for each (and the last data block is short for some).
        for size in [10_000u32, 4096, 123_457, 10_000] {
            every_block_rebuilds(&(0..size).map(|i| (i * 7 + i / 13) as u8).collect::<Vec<u8>>());
        }
    }

    fn every_block_rebuilds(data: &[u8]) {
        for parity in
            [Parity::new(4, 2).expect("4+2"), Parity::new(1, 2).expect("mirror"), Parity::new(2, 1).expect("2+1")]
        {
            let (blocks, crcs) = encoded(data, parity);
            for index in 0..parity.total_blocks() {
                // Every other block (the XOR route for a data block), then
                // only D of them (a decode).
                for only_d in [false, true] {
                    let mut present: Vec<_> = blocks.iter().cloned().map(Some).collect();
                    if only_d {
                        for other in (0..parity.total_blocks()).rev() {
                            if present.iter().flatten().count() <= parity.data_blocks() + 1 {
                                break;
                            }
                            if other != index {
                                present[other] = None;
                            }
                        }
                    }
                    let all_others = present.iter().flatten().count() == parity.total_blocks();
                    let xor_before = XOR_REBUILDS.with(std::cell::Cell::get);
                    let (rebuilt, crc) =
                        rebuild_block(data.len() as u32, crc32c(data), parity, &crcs, &mut present, index)
                            .unwrap_or_else(|error| panic!("{parity} block {index}: {error}"));
                    assert_eq!(rebuilt, blocks[index], "{parity} block {index}, only D: {only_d}");
                    assert_eq!(crc, crcs[index], "{parity} block {index}'s CRC");
                    let by_xor = XOR_REBUILDS.with(std::cell::Cell::get) > xor_before;
                    // The library's code: the XOR identity holds for P = 1, 2
                    // (the parities tried here; see client::read).
                    let expected = all_others
                        && !parity.is_mirroring()
                        && index < parity.data_blocks()
                        && parity.parity_blocks().is_power_of_two();
                    assert_eq!(by_xor, expected, "{parity} block {index}, only D: {only_d}: rebuilt by XOR");
                }
            }
        }
    }

    #[test]
    fn a_rebuild_whose_span_crc_would_not_match_is_refused() {
        let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
        let parity = Parity::new(4, 2).expect("4+2");
        let (blocks, crcs) = encoded(&data, parity);
        let present: Vec<Option<Vec<u8>>> = blocks.iter().cloned().map(Some).collect();
        // A recorded span CRC that the surviving blocks do not produce.
        let error = rebuild_block(data.len() as u32, crc32c(&data) ^ 1, parity, &crcs, &mut present.clone(), 0)
            .expect_err("must refuse");
        assert!(matches!(error, RebuildError::SpanCrcMismatch { .. }), "{error}");
        // A recorded block CRC that the rebuilt block does not have.
        let mut wrong = crcs.clone();
        wrong[5] ^= 1;
        let error = rebuild_block(data.len() as u32, crc32c(&data), parity, &wrong, &mut present.clone(), 5)
            .expect_err("must refuse");
        assert!(matches!(error, RebuildError::BlockCrcMismatch { .. }), "{error}");
        // Too few blocks.
        let mut few = present;
        for slot in few.iter_mut().take(3) {
            *slot = None;
        }
        assert_eq!(
            rebuild_block(data.len() as u32, crc32c(&data), parity, &crcs, &mut few, 4),
            Err(RebuildError::NotEnoughBlocks { available: 2, needed: 4 })
        );
    }
}
