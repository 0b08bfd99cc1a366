//! Eden: files being written (create, add and certify spans), their expunge
//! after the deadline, and the repair of linked files from eden sources.

use heed::{RoTxn, RwTxn};
use std::ops::Bound;
use wire::codec::List;
use wire::crc::{crc32c, crc32c_zeros};
use wire::ids::{EggsTime, InodeId, InodeType};
use wire::limits::ADD_SPAN_BLACKLIST_MAX;
use wire::mac::{Mac, constant_time_eq};
use wire::shard::*;
use wire::span::{SpanBody, SpanLayout};
use wire::{Address, ErrorKind, Parity};
use zerocopy::byteorder::little_endian::U64;

use super::dirents::eden_deadline;
use super::{HandleError, Mutation, refuse};
use crate::block_services::place;
use crate::store::*;

impl Mutation<'_, '_> {
    /// An eden file a client may write: it exists, the cookie is right and
    /// the deadline has not passed.
    pub(super) fn eden_for_write(
        &self,
        txn: &RoTxn,
        inode: InodeId,
        cookie: &Mac,
        what: &str,
    ) -> Result<EdenRecord, HandleError> {
        let Some(bytes) = self.store.eden.get(txn, &inode_key(inode))? else {
            return refuse(ErrorKind::NotFound, format!("no eden file {inode} to {what} (a retry may have succeeded)"));
        };
        if !constant_time_eq(cookie, &self.shard.cookie(inode)) {
            return refuse(ErrorKind::NotAuthorised, format!("bad cookie for {inode}"));
        }
        let eden = EdenRecord::decode(bytes)?;
        if self.env.now > eden.deadline {
            return refuse(ErrorKind::EdenDeadline, format!("eden file {inode} is past its deadline"));
        }
        Ok(eden)
    }

    pub(super) fn last_span(&self, txn: &RoTxn, inode: InodeId) -> Result<Option<(u64, SpanRecord)>, HandleError> {
        let low = span_key(inode, 0);
        let high = span_key(inode, u64::MAX);
        let range = (Bound::Included(&low[..]), Bound::Included(&high[..]));
        match self.store.spans.rev_range(txn, &range)?.next() {
            Some(item) => {
                let (key, value) = item?;
                Ok(Some((parse_span_key(key)?.1, SpanRecord::decode(value)?)))
            }
            None => Ok(None),
        }
    }

    fn all_spans(&self, txn: &RoTxn, inode: InodeId) -> Result<Vec<(u64, SpanRecord)>, HandleError> {
        let mut spans = Vec::new();
        for item in self.store.spans.prefix_iter(txn, &inode_key(inode))? {
            let (key, value) = item?;
            spans.push((parse_span_key(key)?.1, SpanRecord::decode(value)?));
        }
        Ok(spans)
    }

    fn put_eden(&self, txn: &mut RwTxn, inode: InodeId, eden: &EdenRecord) -> Result<(), HandleError> {
        self.store.eden.put(txn, &inode_key(inode), &eden.encode())?;
        Ok(())
    }

    pub(super) fn create_eden_file(
        &mut self,
        txn: &mut RwTxn,
        req: &CreateEdenFileReq,
    ) -> Result<CreateEdenFileResp, HandleError> {
        if !matches!(req.inode_type, InodeType::File | InodeType::Symlink) {
            return refuse(ErrorKind::BadInodeType, "eden files are files or symlinks");
        }
        let inode = self.next_inode(txn, req.inode_type)?;
        let eden = EdenRecord { deadline: eden_deadline(self.env), size: 0, inode_type: req.inode_type };
        self.put_eden(txn, inode, &eden)?;
        Ok(CreateEdenFileResp { inode, cookie: self.shard.cookie(inode) })
    }

    /// The stored form of a requested span, checked (CRCs, sizes, layout)
    /// but without blocks placed yet.
    fn checked_span(req: &AddEdenSpanReq<'_>) -> Result<SpanRecord, HandleError> {
        let size = req.size.get();
        let crc = req.crc.get();
        if size == 0 {
            return refuse(ErrorKind::BadRequest, "empty span");
        }
        let payload = match &req.body {
            SpanBody::Inline(bytes) => {
                if bytes.as_bytes().len() != size as usize {
                    return refuse(ErrorKind::BadRequest, "inline bytes do not match the span size");
                }
                if crc32c(bytes.as_bytes()) != crc {
                    return refuse(ErrorKind::CrcMismatch, "inline span CRC mismatch");
                }
                SpanPayload::Inline(bytes.as_bytes().to_vec())
            }
            SpanBody::ZeroFill => {
                if crc32c_zeros(u64::from(size)) != crc {
                    return refuse(ErrorKind::CrcMismatch, "zero-fill span CRC mismatch");
                }
                SpanPayload::ZeroFill
            }
            SpanBody::Blocks { storage_class, parity, blocks } => {
                let Ok(layout) = SpanLayout::new(u64::from(size), *parity) else {
                    return refuse(ErrorKind::BadRequest, format!("span size {size} does not fit parity {parity}"));
                };
                let mut stored = Vec::with_capacity(blocks.len());
                let mut data_crcs = Vec::with_capacity(parity.data_blocks());
                for (index, block) in blocks.iter().enumerate() {
                    if u64::from(block.size.get()) != layout.block_size(index) {
                        return refuse(ErrorKind::BadRequest, format!("block {index} has the wrong size"));
                    }
                    if index < parity.data_blocks() {
                        data_crcs.push(block.crc.get());
                    } else if parity.is_mirroring() && block.crc.get() != crc {
                        return refuse(ErrorKind::CrcMismatch, format!("mirror block {index} CRC differs"));
                    }
                    stored.push(StoredBlock {
                        block_service_id: wire::BlockServiceId::new(0),
                        block_id: wire::BlockId::new(0),
                        crc: block.crc.get(),
                        size: block.size.get(),
                    });
                }
                if layout.span_crc(&data_crcs) != crc {
                    return refuse(ErrorKind::CrcMismatch, "the data blocks' CRCs do not make the span CRC");
                }
                SpanPayload::Blocks { storage_class: *storage_class, parity: *parity, blocks: stored }
            }
        };
        let state = if matches!(payload, SpanPayload::Blocks { .. }) { SpanState::Dirty } else { SpanState::Clean };
        Ok(SpanRecord { size, crc, state, payload })
    }

    /// Same span content, ignoring where the blocks went (a retried add).
    fn same_span(stored: &SpanRecord, requested: &SpanRecord) -> bool {
        let payload_matches = match (&stored.payload, &requested.payload) {
            (SpanPayload::Inline(a), SpanPayload::Inline(b)) => a == b,
            (SpanPayload::ZeroFill, SpanPayload::ZeroFill) => true,
            (
                SpanPayload::Blocks { storage_class: ca, parity: pa, blocks: ba },
                SpanPayload::Blocks { storage_class: cb, parity: pb, blocks: bb },
            ) => {
                ca == cb
                    && pa == pb
                    && ba.len() == bb.len()
                    && ba.iter().zip(bb).all(|(a, b)| a.crc == b.crc && a.size == b.size)
            }
            _ => false,
        };
        payload_matches && stored.size == requested.size && stored.crc == requested.crc
    }

    pub(super) fn add_eden_span(
        &mut self,
        txn: &mut RwTxn,
        request_id: u64,
        req: &AddEdenSpanReq<'_>,
        out: &mut [u8],
    ) -> Result<usize, HandleError> {
        let inode = req.inode.without_owning();
        let mut eden = self.eden_for_write(txn, inode, &req.cookie, "add a span to")?;
        let offset = req.offset.get();
        if req.blacklist.len() > ADD_SPAN_BLACKLIST_MAX {
            return refuse(
                ErrorKind::BadRequest,
                format!("{} blacklisted block services, at most {ADD_SPAN_BLACKLIST_MAX}", req.blacklist.len()),
            );
        }
        let mut span = Self::checked_span(req)?;
        if let Some(bytes) = self.store.spans.get(txn, &span_key(inode, offset))? {
            let stored = SpanRecord::decode(bytes)?;
            if !Self::same_span(&stored, &span) {
                return refuse(ErrorKind::BadRequest, format!("another span exists at offset {offset}"));
            }
            return Ok(self.certificates(request_id, &stored, out));
        }
        if offset != eden.size {
            return refuse(ErrorKind::BadRequest, format!("spans are appended at offset {}", eden.size));
        }
        if let Some((_, last)) = self.last_span(txn, inode)?
            && last.state != SpanState::Clean
        {
            return refuse(ErrorKind::BadSpanState, "the last span is not certified yet");
        }
        if let SpanPayload::Blocks { storage_class, blocks, .. } = &mut span.payload {
            let services = self.env.block_services.services();
            // Empty in the common case: collecting allocates nothing then.
            let excluded: Vec<wire::BlockServiceId> = req.blacklist.iter().collect();
            // A client could not write to these (down, or full). If this
            // table still offers one, shuckle may know better already (a
            // full service tells it at once): refresh now rather than at
            // the next period, so other writers stop being sent there.
            let offered = |id: &wire::BlockServiceId| {
                self.env.block_services.get(*id).is_some_and(|(service, _)| service.writable())
            };
            if excluded.iter().any(offered) {
                self.effects.wants_block_service_refresh = true;
            }
            let chosen = match place(services, *storage_class, blocks.len(), &excluded, &mut self.rng) {
                Ok(chosen) => chosen,
                Err(error) => {
                    self.effects.wants_block_service_refresh = true;
                    return refuse(ErrorKind::NotEnoughBlockServices, error.to_string());
                }
            };
            for (block, index) in blocks.iter_mut().zip(chosen) {
                let Some(service) = services.get(index) else {
                    return refuse(ErrorKind::LogicError, "placement out of range");
                };
                block.block_service_id = service.id;
                block.block_id = self.next_block_id(txn)?;
                let key = reverse_key(block.block_service_id, block.block_id);
                self.store.reverse_blocks.put(txn, &key, &encode_reverse(inode, offset))?;
            }
        }
        self.store.spans.put(txn, &span_key(inode, offset), &span.encode())?;
        eden.size += u64::from(span.size);
        eden.deadline = eden_deadline(self.env);
        self.put_eden(txn, inode, &eden)?;
        Ok(self.certificates(request_id, &span, out))
    }

    /// The add_eden_span response: where each block goes, with its write
    /// certificate.
    fn certificates(&self, request_id: u64, span: &SpanRecord, out: &mut [u8]) -> usize {
        let certificates: Vec<BlockCertificate> = span
            .blocks()
            .iter()
            .map(|block| match self.env.block_services.get(block.block_service_id) {
                Some((service, key)) => BlockCertificate {
                    block_service_id: block.block_service_id,
                    address: service.address,
                    block_id: block.block_id,
                    certificate: key.write_certificate(block.block_id, block.crc, block.size),
                },
                None => BlockCertificate {
                    block_service_id: block.block_service_id,
                    address: Address::UNKNOWN,
                    block_id: block.block_id,
                    certificate: [0; 8],
                },
            })
            .collect();
        let response = AddEdenSpanResp { head: AddEdenSpanRespHead {}, blocks: List::new(&certificates) };
        self.shard.encode(out, request_id, &ShardResponse::AddEdenSpan(response))
    }

    /// Checks one proof per block, computed by `expected` with the block
    /// service's key.
    fn check_proofs(
        &self,
        span: &SpanRecord,
        proofs: &List<'_, Mac>,
        what: &str,
        expected: impl Fn(&wire::MacKey, wire::BlockId) -> Mac,
    ) -> Result<(), HandleError> {
        let blocks = span.blocks();
        if proofs.len() != blocks.len() {
            return refuse(
                ErrorKind::BadRequest,
                format!("{} {what} proofs for {} blocks", proofs.len(), blocks.len()),
            );
        }
        for (index, (block, proof)) in blocks.iter().zip(proofs.iter()).enumerate() {
            let Some((_, key)) = self.env.block_services.get(block.block_service_id) else {
                return refuse(ErrorKind::BadRequest, format!("block {index} is on an unknown block service"));
            };
            if !constant_time_eq(&expected(key, block.block_id), &proof) {
                return refuse(ErrorKind::NotAuthorised, format!("bad {what} proof for block {index}"));
            }
        }
        Ok(())
    }

    /// One erase proof per block, except that a block on a terminal block
    /// service (declared dead by an operator: it will never answer) needs
    /// none; its proof slot is ignored.
    fn check_erase_proofs(&self, span: &SpanRecord, proofs: &List<'_, Mac>) -> Result<(), HandleError> {
        let blocks = span.blocks();
        if proofs.len() != blocks.len() {
            return refuse(ErrorKind::BadRequest, format!("{} erase proofs for {} blocks", proofs.len(), blocks.len()));
        }
        for (index, (block, proof)) in blocks.iter().zip(proofs.iter()).enumerate() {
            let Some((service, key)) = self.env.block_services.get(block.block_service_id) else {
                return refuse(ErrorKind::BadRequest, format!("block {index} is on an unknown block service"));
            };
            if service.flags & wire::shuckle::flags::TERMINAL != 0 {
                continue;
            }
            if !constant_time_eq(&key.erase_proof(block.block_id), &proof) {
                return refuse(ErrorKind::NotAuthorised, format!("bad erase proof for block {index}"));
            }
        }
        Ok(())
    }

    pub(super) fn certify_eden_span(
        &mut self,
        txn: &mut RwTxn,
        req: &CertifyEdenSpanReq<'_>,
    ) -> Result<EmptyResp, HandleError> {
        let inode = req.inode.without_owning();
        let mut eden = self.eden_for_write(txn, inode, &req.cookie, "certify")?;
        let key = span_key(inode, req.offset.get());
        let Some(bytes) = self.store.spans.get(txn, &key)? else {
            return refuse(ErrorKind::NotFound, format!("no span at offset {}", req.offset.get()));
        };
        let mut span = SpanRecord::decode(bytes)?;
        match span.state {
            SpanState::Clean => return Ok(EmptyResp {}),
            SpanState::Condemned => return refuse(ErrorKind::BadSpanState, "the span is being expunged"),
            SpanState::Dirty => {}
        }
        self.check_proofs(&span, &req.proofs, "write", |key, block| key.write_proof(block))?;
        span.state = SpanState::Clean;
        self.store.spans.put(txn, &key, &span.encode())?;
        eden.deadline = eden_deadline(self.env);
        self.put_eden(txn, inode, &eden)?;
        Ok(EmptyResp {})
    }

    /// The eden record of `inode`, whatever its deadline.
    fn expired_or_not(&self, txn: &RoTxn, inode: InodeId) -> Result<EdenRecord, HandleError> {
        match self.store.eden.get(txn, &inode_key(inode))? {
            Some(bytes) => Ok(EdenRecord::decode(bytes)?),
            None => refuse(ErrorKind::NotFound, format!("no eden file {inode}")),
        }
    }

    /// An eden file whose deadline has passed.
    fn expired_eden(&self, txn: &RoTxn, inode: InodeId) -> Result<EdenRecord, HandleError> {
        let Some(bytes) = self.store.eden.get(txn, &inode_key(inode))? else {
            return refuse(ErrorKind::NotFound, format!("no eden file {inode}"));
        };
        let eden = EdenRecord::decode(bytes)?;
        if self.env.now <= eden.deadline {
            return refuse(ErrorKind::TooSoon, format!("eden file {inode} is within its deadline"));
        }
        Ok(eden)
    }

    fn drop_span(&self, txn: &mut RwTxn, inode: InodeId, offset: u64, span: &SpanRecord) -> Result<(), HandleError> {
        for block in span.blocks() {
            self.store.reverse_blocks.delete(txn, &reverse_key(block.block_service_id, block.block_id))?;
        }
        self.store.spans.delete(txn, &span_key(inode, offset))?;
        Ok(())
    }

    pub(super) fn expunge_eden_span(
        &mut self,
        txn: &mut RwTxn,
        request_id: u64,
        req: &ExpungeEdenSpanReq,
        out: &mut [u8],
    ) -> Result<usize, HandleError> {
        let inode = req.inode.without_owning();
        let mut eden = self.expired_eden(txn, inode)?;
        let Some((offset, mut span)) = self.last_span(txn, inode)? else {
            return refuse(ErrorKind::BadRequest, "no spans left: expunge the file");
        };
        let mut certificates = Vec::new();
        if span.blocks().is_empty() {
            self.drop_span(txn, inode, offset, &span)?;
            eden.size = offset;
            self.put_eden(txn, inode, &eden)?;
        } else {
            if span.state != SpanState::Condemned {
                span.state = SpanState::Condemned;
                self.store.spans.put(txn, &span_key(inode, offset), &span.encode())?;
            }
            for block in span.blocks() {
                // A terminal service will never answer: no certificate, and
                // certify_expunge needs no proof for it.
                let (address, certificate) = match self.env.block_services.get(block.block_service_id) {
                    Some((service, _)) if service.flags & wire::shuckle::flags::TERMINAL != 0 => {
                        (Address::UNKNOWN, [0; 8])
                    }
                    Some((service, key)) => (service.address, key.erase_certificate(block.block_id)),
                    None => (Address::UNKNOWN, [0; 8]),
                };
                certificates.push(BlockCertificate {
                    block_service_id: block.block_service_id,
                    address,
                    block_id: block.block_id,
                    certificate,
                });
            }
        }
        let response = ExpungeEdenSpanResp {
            head: ExpungeEdenSpanRespHead { offset: U64::new(offset) },
            blocks: List::new(&certificates),
        };
        Ok(self.shard.encode(out, request_id, &ShardResponse::ExpungeEdenSpan(response)))
    }

    pub(super) fn certify_expunge(
        &mut self,
        txn: &mut RwTxn,
        req: &CertifyExpungeReq<'_>,
    ) -> Result<EmptyResp, HandleError> {
        let inode = req.inode.without_owning();
        let Some(bytes) = self.store.eden.get(txn, &inode_key(inode))? else {
            return refuse(ErrorKind::NotFound, format!("no eden file {inode}"));
        };
        let mut eden = EdenRecord::decode(bytes)?;
        let offset = req.offset.get();
        let Some(bytes) = self.store.spans.get(txn, &span_key(inode, offset))? else {
            return refuse(ErrorKind::NotFound, format!("no span at offset {offset} (a retry may have succeeded)"));
        };
        let span = SpanRecord::decode(bytes)?;
        if span.state != SpanState::Condemned || offset + u64::from(span.size) != eden.size {
            return refuse(ErrorKind::BadSpanState, "only the condemned last span can be expunged");
        }
        self.check_erase_proofs(&span, &req.proofs)?;
        self.drop_span(txn, inode, offset, &span)?;
        eden.size = offset;
        self.put_eden(txn, inode, &eden)?;
        Ok(EmptyResp {})
    }

    pub(super) fn expunge_eden_file(
        &mut self,
        txn: &mut RwTxn,
        req: &ExpungeEdenFileReq,
    ) -> Result<EmptyResp, HandleError> {
        let inode = req.inode.without_owning();
        self.expired_eden(txn, inode)?;
        if self.last_span(txn, inode)?.is_some() {
            return refuse(ErrorKind::BadRequest, "the file still has spans: expunge them first");
        }
        self.store.eden.delete(txn, &inode_key(inode))?;
        Ok(EmptyResp {})
    }

    fn linked_span(&self, txn: &RoTxn, inode: InodeId, offset: u64) -> Result<SpanRecord, HandleError> {
        if self.store.files.get(txn, &inode_key(inode))?.is_none() {
            return refuse(ErrorKind::NotFound, format!("no linked file {inode}"));
        }
        match self.store.spans.get(txn, &span_key(inode, offset))? {
            Some(bytes) => Ok(SpanRecord::decode(bytes)?),
            None => refuse(ErrorKind::NotFound, format!("no span of {inode} at offset {offset}")),
        }
    }

    /// Puts `span` at (inode, offset) and points its blocks' reverse entries there.
    fn put_span_indexed(
        &self,
        txn: &mut RwTxn,
        inode: InodeId,
        offset: u64,
        span: &SpanRecord,
    ) -> Result<(), HandleError> {
        for block in span.blocks() {
            let key = reverse_key(block.block_service_id, block.block_id);
            self.store.reverse_blocks.put(txn, &key, &encode_reverse(inode, offset))?;
        }
        self.store.spans.put(txn, &span_key(inode, offset), &span.encode())?;
        Ok(())
    }

    pub(super) fn repair_spans(&mut self, txn: &mut RwTxn, req: &RepairSpansReq) -> Result<EmptyResp, HandleError> {
        let inode = req.inode.without_owning();
        let source = req.source_inode.without_owning();
        self.eden_for_write(txn, source, &req.source_cookie, "repair from")?;
        let sources = self.all_spans(txn, source)?;
        if sources.is_empty() {
            return refuse(ErrorKind::BadRequest, "the source has no spans");
        }
        let mut targets = Vec::with_capacity(sources.len());
        for (source_offset, source_span) in &sources {
            if source_span.state != SpanState::Clean {
                return refuse(ErrorKind::BadSpanState, "the source's spans are not all certified");
            }
            let offset = req.offset.get() + source_offset;
            let target = self.linked_span(txn, inode, offset)?;
            if target.size != source_span.size || target.crc != source_span.crc {
                return refuse(ErrorKind::CrcMismatch, format!("the span at offset {offset} differs in size or CRC"));
            }
            targets.push((offset, target));
        }
        for ((source_offset, source_span), (offset, target)) in sources.iter().zip(&targets) {
            self.drop_span(txn, inode, *offset, target)?;
            self.store.spans.delete(txn, &span_key(source, *source_offset))?;
            self.put_span_indexed(txn, inode, *offset, source_span)?;
        }
        self.store.eden.delete(txn, &inode_key(source))?;
        Ok(EmptyResp {})
    }

    pub(super) fn repair_block(&mut self, txn: &mut RwTxn, req: &RepairBlockReq) -> Result<EmptyResp, HandleError> {
        let inode = req.inode.without_owning();
        let source = req.source_inode.without_owning();
        let offset = req.offset.get();
        self.eden_for_write(txn, source, &req.source_cookie, "repair from")?;
        let mut target = self.linked_span(txn, inode, offset)?;
        let index = usize::from(req.block_index);
        let Some(old) = target.blocks().get(index).copied() else {
            return refuse(ErrorKind::BadRequest, format!("the span has no block {index}"));
        };
        let sources = self.all_spans(txn, source)?;
        let new = match sources.as_slice() {
            [(0, span)] if span.state == SpanState::Clean => match &span.payload {
                SpanPayload::Blocks { parity, blocks, .. } if *parity == Parity(1) => blocks.first().copied(),
                _ => None,
            },
            _ => None,
        };
        let Some(new) = new else {
            return refuse(ErrorKind::BadRequest, "the source must be one certified 1+0 span");
        };
        if new.crc != old.crc || new.size != old.size {
            return refuse(ErrorKind::CrcMismatch, "the new block differs in CRC or size");
        }
        if let SpanPayload::Blocks { blocks, .. } = &mut target.payload
            && let Some(slot) = blocks.get_mut(index)
        {
            *slot = new;
        }
        self.put_span_indexed(txn, inode, offset, &target)?;
        // The swapped-out block is not forgotten: it takes the new block's
        // place in the source eden file, condemned and past its deadline,
        // so eden collection erases it with a certificate like any other
        // (a rotten copy does not stay on its disk, and a block is listed
        // until an erase proof or its service's termination lets it go).
        let Some((_, mut source_span)) = sources.into_iter().next() else {
            return refuse(ErrorKind::LogicError, "the source span vanished");
        };
        if let SpanPayload::Blocks { blocks, .. } = &mut source_span.payload
            && let Some(slot) = blocks.first_mut()
        {
            *slot = old;
        }
        source_span.state = SpanState::Condemned;
        self.put_span_indexed(txn, source, 0, &source_span)?;
        let mut eden = self.expired_or_not(txn, source)?;
        eden.deadline = EggsTime::new(self.env.now.get().saturating_sub(1));
        self.put_eden(txn, source, &eden)?;
        Ok(EmptyResp {})
    }
}
