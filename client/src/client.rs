//! [`Client`]: where the daemons are (asked of shuckle, with the local
//! default ports as fallback), typed shard and CDC requests, and path
//! resolution from the root across shards.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use wire::cdc::{CdcRequest, CdcResponse, CdcStatus, MkDirReq, MvDirReq, MvFileReq, RmDirReq};
use wire::limits::{CDC_PORT_DEFAULT, SHARD_COUNT, SHARD_PORT_BASE, SHUCKLE_PORT_DEFAULT};
use wire::policy::Policy;
use wire::shard::{
    BlockCertificate, CertifyEdenSpanReq, CertifyEdenSpanReqHead, CertifyExpungeReq, CertifyExpungeReqHead,
    CreateEdenFileReq, CreateSmallFileReq, CreateSmallFileReqHead, DeleteFileReq, DeleteFileReqHead, EdenEntry,
    ExpungeEdenFileReq, ExpungeEdenSpanReq, FetchSpansReq, FetchedBlock, LinkEdenFileReq, LinkEdenFileReqHead,
    LsDirReq, PurgeDirectoryReq, ResolveMode, ResolveReq, ResolveReqHead, ReverseBlockEntry, ReverseBlockQueryReq,
    SameDirRenameReq, SameDirRenameReqHead, SetDirectoryPolicyReq, SetDirectoryPolicyReqHead, ShardRequest,
    ShardResponse, StatReq, StatResp, VisitEdenReq, VisitInodesReq,
};
use wire::shuckle::{BlockServicesReq, CdcReq, ShardsReq, ShuckleRequest, ShuckleResponse};
use wire::span::{InlineBytes, SpanBody};
use wire::{BlockId, BlockServiceId, EggsTime, ErrorKind, InodeId, InodeType, List, Name, ShardId};
use zerocopy::byteorder::little_endian::{U32, U64};

use crate::error::{ClientError, Result};
use crate::path::EggsPath;
use crate::udp::{Cdc, ClientOptions, DatagramClient, Reply, RequestError, RetryPolicy, Shard, Shuckle};

/// Environment variable naming shuckle's address.
pub const SHUCKLE_ENV: &str = "EGGS_SHUCKLE";

/// How long discovery waits for shuckle before using the default ports.
const SHUCKLE_PROBE_DEADLINE: Duration = Duration::from_secs(3);

/// The default shuckle address (local).
pub fn default_shuckle() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, SHUCKLE_PORT_DEFAULT))
}

/// Where every daemon is.
#[derive(Clone, Debug)]
pub struct Addresses {
    pub shuckle: SocketAddr,
    /// Indexed by shard id.
    pub shards: Vec<SocketAddr>,
    pub cdc: SocketAddr,
}

impl Addresses {
    /// The local defaults: shard N at 127.0.0.1:22272+N, CDC at :36137.
    pub fn local_defaults(shuckle: SocketAddr) -> Self {
        let shards = (0..SHARD_COUNT)
            .map(|shard| SocketAddr::from((Ipv4Addr::LOCALHOST, SHARD_PORT_BASE + shard as u16)))
            .collect();
        Self { shuckle, shards, cdc: SocketAddr::from((Ipv4Addr::LOCALHOST, CDC_PORT_DEFAULT)) }
    }

    pub fn shard(&self, shard: ShardId) -> SocketAddr {
        self.shards.get(shard as usize).copied().unwrap_or(self.cdc)
    }
}

/// A directory or file as `stat` sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stat {
    Directory { mtime: EggsTime, parent: InodeId, policy: Vec<u8> },
    File { mtime: EggsTime, size: u64 },
}

/// A walk through the blocks one shard lists on one block service
/// ([`Client::reverse_blocks`]).
pub struct ReverseBlocks<'c> {
    client: &'c Client,
    shard: ShardId,
    block_service_id: BlockServiceId,
    /// Where the next page starts; `None` once the last page was read.
    begin: Option<BlockId>,
    pages: usize,
}

impl ReverseBlocks<'_> {
    /// The next page; `None` after the last. An error when a page could not
    /// be read (the walk may be retried from there by calling again), or the
    /// listing exceeds [`REVERSE_BLOCK_PAGES_MAX`] pages (then it ends).
    pub async fn next_page(&mut self) -> Option<Result<Vec<ReverseBlockEntry>>> {
        let begin = self.begin?;
        if self.pages >= REVERSE_BLOCK_PAGES_MAX {
            self.begin = None;
            return Some(Err(ClientError::Inconsistent(format!(
                "shard {} lists more than {REVERSE_BLOCK_PAGES_MAX} pages of blocks on {}",
                self.shard, self.block_service_id
            ))));
        }
        let (entries, next) = match self.client.reverse_block_query(self.shard, self.block_service_id, begin).await {
            Ok(page) => page,
            Err(error) => return Some(Err(error)),
        };
        self.pages += 1;
        // A next that does not move forward would repeat pages forever.
        self.begin = (next.get() != 0 && next > begin).then_some(next);
        Some(Ok(entries))
    }
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    /// With its owning bit; null for a "nothing" version.
    pub inode: InodeId,
    pub creation_time: EggsTime,
}

/// One span of a file, owned.
#[derive(Clone, Debug)]
pub struct FileSpan {
    pub offset: u64,
    pub size: u32,
    pub crc: u32,
    pub body: FileSpanBody,
}

#[derive(Clone, Debug)]
pub enum FileSpanBody {
    Inline(Vec<u8>),
    ZeroFill,
    Blocks { storage_class: u8, parity: wire::Parity, blocks: Vec<FetchedBlock> },
}

/// A page of a file's spans.
#[derive(Clone, Debug)]
pub struct SpansPage {
    pub spans: Vec<FileSpan>,
    /// Offset of the next span to ask for; 0 when done.
    pub next_offset: u64,
}

/// A new eden file: its inode and the cookie that lets us write it.
#[derive(Clone, Copy, Debug)]
pub struct EdenFile {
    pub inode: InodeId,
    pub cookie: wire::mac::Mac,
}

/// The client: a datagram requester and the daemons' addresses.
#[derive(Clone, Debug)]
pub struct Client {
    udp: DatagramClient,
    addresses: Addresses,
}

fn name(text: &str) -> Result<Name<'_>> {
    Name::new(text.as_bytes())
        .map_err(|error| ClientError::BadPath { path: text.to_owned(), reason: format!("bad name: {error}") })
}

impl Client {
    /// Asks shuckle where the shards and the CDC are; any it does not know
    /// (or if shuckle does not answer within a few seconds) are at the local
    /// default ports.
    pub async fn connect(shuckle: SocketAddr) -> Result<Self> {
        let udp = DatagramClient::bind_any(ClientOptions::default())?;
        let addresses = discover(&udp, shuckle).await;
        tracing::debug!(?addresses, "discovered");
        Ok(Self { udp, addresses })
    }

    /// A client with explicit addresses (tests, local-cluster).
    pub fn with_addresses(udp: DatagramClient, addresses: Addresses) -> Self {
        Self { udp, addresses }
    }

    pub fn addresses(&self) -> &Addresses {
        &self.addresses
    }

    pub fn datagram_client(&self) -> &DatagramClient {
        &self.udp
    }

    /// Sends a shard request to the shard owning `shard`.
    pub async fn shard_request(&self, shard: ShardId, request: &ShardRequest<'_>) -> Result<Reply<Shard>> {
        Ok(self.udp.request::<Shard>(self.addresses.shard(shard), request).await?)
    }

    async fn cdc_request(
        &self,
        operation: &'static str,
        path: &str,
        request: &CdcRequest<'_>,
    ) -> Result<(InodeId, CdcStatus, String)> {
        let reply = self.udp.request::<Cdc>(self.addresses.cdc, request).await?;
        match reply.get()? {
            CdcResponse::MkDir(resp)
            | CdcResponse::RmDir(resp)
            | CdcResponse::MvFile(resp)
            | CdcResponse::MvDir(resp)
            | CdcResponse::PurgeRemoteFile(resp) => {
                if resp.status != CdcStatus::Ok {
                    return Err(ClientError::cdc(operation, path, resp.status, resp.text.as_str()));
                }
                Ok((resp.inode, resp.status, resp.text.as_str().to_owned()))
            }
            other => Err(reply.unexpected(&other).into()),
        }
    }

    // ---- shard requests, typed ----

    /// Resolves `name` in `parent`. `Ok(None)` when there is no such entry.
    pub async fn resolve(
        &self,
        parent: InodeId,
        name_text: &str,
        mode: ResolveMode,
        time: EggsTime,
    ) -> Result<Option<(InodeId, EggsTime)>> {
        let request = ShardRequest::Resolve(ResolveReq {
            head: ResolveReqHead { mode, parent, creation_time: time },
            name: name(name_text)?,
        });
        match self.shard_request(parent.shard(), &request).await {
            Ok(reply) => match reply.get()? {
                ShardResponse::Resolve(resp) => Ok(Some((resp.inode, resp.creation_time))),
                other => Err(reply.unexpected(&other).into()),
            },
            Err(error) if error.error_kind() == Some(ErrorKind::NotFound) => Ok(None),
            Err(error) => Err(error),
        }
    }

    pub async fn stat(&self, inode: InodeId) -> Result<Stat> {
        let reply = self.shard_request(inode.shard(), &ShardRequest::Stat(StatReq { inode })).await?;
        match reply.get()? {
            ShardResponse::Stat(StatResp::Directory(dir)) => {
                Ok(Stat::Directory { mtime: dir.mtime, parent: dir.parent, policy: dir.policy.as_bytes().to_vec() })
            }
            ShardResponse::Stat(StatResp::File(file)) => Ok(Stat::File { mtime: file.mtime, size: file.size.get() }),
            other => Err(reply.unexpected(&other).into()),
        }
    }

    /// Every entry of a directory (all pages), with `flags` from `wire::shard::ls_flags`.
    pub async fn ls_dir(&self, dir: InodeId, as_of: EggsTime, flags: u8) -> Result<Vec<DirEntry>> {
        let mut entries = Vec::new();
        let mut start_hash = 0u64;
        loop {
            let request = ShardRequest::LsDir(LsDirReq { dir, as_of, start_hash: U64::new(start_hash), flags });
            let reply = self.shard_request(dir.shard(), &request).await?;
            let response = reply.get()?;
            let ShardResponse::LsDir(page) = &response else {
                return Err(reply.unexpected(&response).into());
            };
            entries.extend(page.entries.iter().map(|entry| DirEntry {
                name: entry.name.as_str().to_owned(),
                inode: entry.inode,
                creation_time: entry.creation_time,
            }));
            if page.more == 0 {
                return Ok(entries);
            }
            if page.next_hash.get() <= start_hash && start_hash != 0 {
                return Err(ClientError::Inconsistent(format!("ls_dir of {dir} does not advance")));
            }
            start_hash = page.next_hash.get();
        }
    }

    pub async fn create_eden_file(&self, shard: ShardId, inode_type: InodeType) -> Result<EdenFile> {
        let reply = self.shard_request(shard, &ShardRequest::CreateEdenFile(CreateEdenFileReq { inode_type })).await?;
        match reply.get()? {
            ShardResponse::CreateEdenFile(resp) => Ok(EdenFile { inode: resp.inode, cookie: resp.cookie }),
            other => Err(reply.unexpected(&other).into()),
        }
    }

    /// Adds a span; returns where each block goes (empty for blockless spans).
    pub async fn add_eden_span(&self, request: &ShardRequest<'_>, inode: InodeId) -> Result<Vec<BlockCertificate>> {
        let reply = self.shard_request(inode.shard(), request).await?;
        match reply.get()? {
            ShardResponse::AddEdenSpan(resp) => Ok(resp.blocks.iter().collect()),
            other => Err(reply.unexpected(&other).into()),
        }
    }

    pub async fn certify_eden_span(&self, eden: EdenFile, offset: u64, proofs: &[wire::mac::Mac]) -> Result<()> {
        let request = ShardRequest::CertifyEdenSpan(CertifyEdenSpanReq {
            head: CertifyEdenSpanReqHead { inode: eden.inode, cookie: eden.cookie, offset: U64::new(offset) },
            proofs: List::new(proofs),
        });
        self.shard_request(eden.inode.shard(), &request).await?;
        Ok(())
    }

    /// Creates `parent/name` holding `contents` (at most
    /// `INLINE_SPAN_BYTES_MAX` bytes, one inline span; none when empty) in
    /// one durable request, create_small_file (kind 0x16), overwriting an
    /// existing file of that name as link_eden_file does. A random create
    /// id travels in every retransmission, so a re-send the shard already
    /// served (also across its restart) is answered with the same file.
    pub async fn create_small_file(
        &self,
        parent: InodeId,
        name_text: &str,
        inode_type: InodeType,
        contents: &[u8],
    ) -> Result<(InodeId, EggsTime)> {
        let contents = InlineBytes::new(contents)
            .map_err(|error| ClientError::Invalid(format!("small file of {} bytes: {error}", contents.len())))?;
        let request = ShardRequest::CreateSmallFile(CreateSmallFileReq {
            head: CreateSmallFileReqHead {
                parent,
                create_id: U64::new(rand::random::<u64>()),
                crc: U32::new(wire::crc::crc32c(contents.as_bytes())),
                inode_type,
            },
            name: name(name_text)?,
            contents,
        });
        let reply = self.shard_request(parent.shard(), &request).await?;
        match reply.get()? {
            ShardResponse::CreateSmallFile(resp) => Ok((resp.inode, resp.creation_time)),
            other => Err(reply.unexpected(&other).into()),
        }
    }

    /// Links an eden file as `parent/name`. A NOT_FOUND after a retry means
    /// an earlier attempt linked it (DESIGN §4): checked by resolving the name.
    pub async fn link_eden_file(&self, eden: EdenFile, parent: InodeId, name_text: &str) -> Result<EggsTime> {
        let request = ShardRequest::LinkEdenFile(LinkEdenFileReq {
            head: LinkEdenFileReqHead { inode: eden.inode, cookie: eden.cookie, parent },
            name: name(name_text)?,
        });
        match self.shard_request(parent.shard(), &request).await {
            Ok(reply) => match reply.get()? {
                ShardResponse::LinkEdenFile(resp) => Ok(resp.creation_time),
                other => Err(reply.unexpected(&other).into()),
            },
            Err(error) if probably_succeeded(&error) => {
                match self.resolve(parent, name_text, ResolveMode::Alive, EggsTime::ZERO).await? {
                    Some((inode, creation_time)) if inode.without_owning() == eden.inode => Ok(creation_time),
                    _ => Err(error),
                }
            }
            Err(error) => Err(error),
        }
    }

    pub async fn fetch_spans(&self, inode: InodeId, offset: u64) -> Result<SpansPage> {
        let request = ShardRequest::FetchSpans(FetchSpansReq { inode, offset: U64::new(offset) });
        let reply = self.shard_request(inode.shard(), &request).await?;
        let response = reply.get()?;
        let ShardResponse::FetchSpans(page) = &response else {
            return Err(reply.unexpected(&response).into());
        };
        let spans = page
            .spans
            .iter()
            .map(|span| FileSpan {
                offset: span.offset.get(),
                size: span.size.get(),
                crc: span.crc.get(),
                body: match span.body {
                    SpanBody::Inline(bytes) => FileSpanBody::Inline(bytes.as_bytes().to_vec()),
                    SpanBody::ZeroFill => FileSpanBody::ZeroFill,
                    SpanBody::Blocks { storage_class, parity, blocks } => {
                        FileSpanBody::Blocks { storage_class, parity, blocks: blocks.iter().collect() }
                    }
                },
            })
            .collect();
        Ok(SpansPage { spans, next_offset: page.next_offset.get() })
    }

    pub async fn same_dir_rename(&self, parent: InodeId, old_name: &str, new_name: &str) -> Result<()> {
        let request = ShardRequest::SameDirRename(SameDirRenameReq {
            head: SameDirRenameReqHead { parent },
            old_name: name(old_name)?,
            new_name: name(new_name)?,
        });
        match self.shard_request(parent.shard(), &request).await {
            Ok(_) => Ok(()),
            // A retry of a rename that already happened.
            Err(error) if probably_succeeded(&error) => Ok(()),
            Err(error) => Err(error),
        }
    }

    pub async fn delete_file(&self, parent: InodeId, name_text: &str) -> Result<()> {
        let request =
            ShardRequest::DeleteFile(DeleteFileReq { head: DeleteFileReqHead { parent }, name: name(name_text)? });
        match self.shard_request(parent.shard(), &request).await {
            Ok(_) => Ok(()),
            Err(error) if probably_succeeded(&error) => Ok(()),
            Err(error) => Err(error),
        }
    }

    pub async fn set_directory_policy(&self, dir: InodeId, policy: &[u8]) -> Result<()> {
        let blob = wire::shard::PolicyBlob::new(policy).map_err(|error| ClientError::Invalid(error.to_string()))?;
        let request = ShardRequest::SetDirectoryPolicy(SetDirectoryPolicyReq {
            head: SetDirectoryPolicyReqHead { dir },
            policy: blob,
        });
        self.shard_request(dir.shard(), &request).await?;
        Ok(())
    }

    /// expunge_eden_span: returns the condemned offset and the erase certificates.
    pub async fn expunge_eden_span(&self, inode: InodeId) -> Result<(u64, Vec<BlockCertificate>)> {
        let reply =
            self.shard_request(inode.shard(), &ShardRequest::ExpungeEdenSpan(ExpungeEdenSpanReq { inode })).await?;
        match reply.get()? {
            ShardResponse::ExpungeEdenSpan(resp) => Ok((resp.offset.get(), resp.blocks.iter().collect())),
            other => Err(reply.unexpected(&other).into()),
        }
    }

    pub async fn certify_expunge(&self, inode: InodeId, offset: u64, proofs: &[wire::mac::Mac]) -> Result<()> {
        let request = ShardRequest::CertifyExpunge(CertifyExpungeReq {
            head: CertifyExpungeReqHead { inode, offset: U64::new(offset) },
            proofs: List::new(proofs),
        });
        self.shard_request(inode.shard(), &request).await?;
        Ok(())
    }

    pub async fn expunge_eden_file(&self, inode: InodeId) -> Result<()> {
        self.shard_request(inode.shard(), &ShardRequest::ExpungeEdenFile(ExpungeEdenFileReq { inode })).await?;
        Ok(())
    }

    /// purge_directory: removes a removed (rmdir'd), empty directory's
    /// record once the shard's purge age has passed (gcd's directory
    /// collection; the shard refuses anything else).
    pub async fn purge_directory(&self, dir: InodeId) -> Result<()> {
        self.shard_request(dir.shard(), &ShardRequest::PurgeDirectory(PurgeDirectoryReq { dir })).await?;
        Ok(())
    }

    /// One page of a shard's inodes from `begin`; returns the next start (null when done).
    pub async fn visit_inodes(&self, shard: ShardId, begin: InodeId) -> Result<(Vec<InodeId>, InodeId)> {
        let reply = self.shard_request(shard, &ShardRequest::VisitInodes(VisitInodesReq { begin })).await?;
        match reply.get()? {
            ShardResponse::VisitInodes(resp) => Ok((resp.inodes.iter().collect(), resp.next)),
            other => Err(reply.unexpected(&other).into()),
        }
    }

    pub async fn visit_eden(&self, shard: ShardId, begin: InodeId) -> Result<(Vec<EdenEntry>, InodeId)> {
        let reply = self.shard_request(shard, &ShardRequest::VisitEden(VisitEdenReq { begin })).await?;
        match reply.get()? {
            ShardResponse::VisitEden(resp) => Ok((resp.entries.iter().collect(), resp.next)),
            other => Err(reply.unexpected(&other).into()),
        }
    }

    pub async fn reverse_block_query(
        &self,
        shard: ShardId,
        block_service_id: BlockServiceId,
        begin: BlockId,
    ) -> Result<(Vec<ReverseBlockEntry>, BlockId)> {
        let request = ShardRequest::ReverseBlockQuery(ReverseBlockQueryReq { block_service_id, begin });
        let reply = self.shard_request(shard, &request).await?;
        match reply.get()? {
            ShardResponse::ReverseBlockQuery(resp) => Ok((resp.entries.iter().collect(), resp.next)),
            other => Err(reply.unexpected(&other).into()),
        }
    }

    /// The blocks `shard` lists on `block_service_id`, page by page, in
    /// block id order ([`ReverseBlocks::next_page`]): the one pager of
    /// reverse_block_query (gcd's migration and scrub, shuckle's
    /// awaiting-migration count, `eggs reverse-block-query`).
    pub fn reverse_blocks(&self, shard: ShardId, block_service_id: BlockServiceId) -> ReverseBlocks<'_> {
        ReverseBlocks { client: self, shard, block_service_id, begin: Some(BlockId::new(0)), pages: 0 }
    }

    // ---- CDC ----

    pub async fn mkdir(&self, parent: InodeId, name_text: &str, path: &str) -> Result<InodeId> {
        let request = CdcRequest::MkDir(MkDirReq { head: wire::cdc::MkDirReqHead { parent }, name: name(name_text)? });
        Ok(self.cdc_request("mkdir", path, &request).await?.0)
    }

    pub async fn rmdir(&self, parent: InodeId, name_text: &str, path: &str) -> Result<()> {
        let request = CdcRequest::RmDir(RmDirReq { head: wire::cdc::RmDirReqHead { parent }, name: name(name_text)? });
        self.cdc_request("rmdir", path, &request).await?;
        Ok(())
    }

    pub async fn mv_file(&self, source: (InodeId, &str), target: (InodeId, &str), path: &str) -> Result<InodeId> {
        let request = CdcRequest::MvFile(MvFileReq {
            head: wire::cdc::MvFileReqHead { source_parent: source.0, target_parent: target.0 },
            source_name: name(source.1)?,
            target_name: name(target.1)?,
        });
        Ok(self.cdc_request("mv", path, &request).await?.0)
    }

    pub async fn mv_dir(&self, source: (InodeId, &str), target: (InodeId, &str), path: &str) -> Result<InodeId> {
        let request = CdcRequest::MvDir(MvDirReq {
            head: wire::cdc::MvDirReqHead { source_parent: source.0, target_parent: target.0 },
            source_name: name(source.1)?,
            target_name: name(target.1)?,
        });
        Ok(self.cdc_request("mv", path, &request).await?.0)
    }

    // ---- paths ----

    /// Resolves a path to its inode (without the owning bit).
    pub async fn resolve_path(&self, path: &EggsPath) -> Result<InodeId> {
        let mut inode = InodeId::ROOT;
        let mut walked = String::new();
        for component in path.components() {
            if inode.inode_type() != Some(InodeType::Directory) {
                return Err(ClientError::NotADirectory { path: if walked.is_empty() { "/".into() } else { walked } });
            }
            walked.push('/');
            walked.push_str(component);
            match self.resolve(inode, component, ResolveMode::Alive, EggsTime::ZERO).await? {
                Some((child, _)) => inode = child.without_owning(),
                None => return Err(ClientError::NotFound { path: walked }),
            }
        }
        Ok(inode)
    }

    /// Resolves the parent directory of `path`; returns it and the last name.
    pub async fn resolve_parent<'p>(&self, path: &'p EggsPath) -> Result<(InodeId, &'p str)> {
        let Some((parent_path, last)) = path.split_last() else {
            return Err(ClientError::BadPath { path: path.to_string(), reason: "is the root directory".into() });
        };
        let parent = self.resolve_path(&parent_path).await?;
        if parent.inode_type() != Some(InodeType::Directory) {
            return Err(ClientError::NotADirectory { path: parent_path.to_string() });
        }
        Ok((parent, last))
    }

    /// The policy of `dir`: its own blob, else the nearest ancestor's.
    /// `None` when no directory up to the root sets one.
    pub async fn effective_policy(&self, dir: InodeId) -> Result<Option<(Policy, InodeId)>> {
        let mut current = dir;
        for _ in 0..MAX_DIRECTORY_DEPTH {
            match self.stat(current).await? {
                Stat::Directory { parent, policy, .. } => {
                    if let Some(policy) = Policy::decode(&policy) {
                        return Ok(Some((policy, current)));
                    }
                    if parent.is_null() || current == InodeId::ROOT {
                        return Ok(None);
                    }
                    current = parent.without_owning();
                }
                Stat::File { .. } => return Err(ClientError::Inconsistent(format!("{current} is not a directory"))),
            }
        }
        Err(ClientError::Inconsistent(format!("directory {dir} is more than {MAX_DIRECTORY_DEPTH} levels deep")))
    }

    // ---- shuckle ----

    /// Every block service shuckle knows, as (id, address, storage class, flags).
    pub async fn block_services(&self) -> Result<Vec<(BlockServiceId, SocketAddr, u8, u8)>> {
        let services = self.block_service_summaries().await?;
        Ok(services.iter().map(|s| (s.id, s.addr, s.storage_class, s.flags)).collect())
    }

    /// Every block service shuckle knows, with its state and space.
    pub async fn block_service_summaries(&self) -> Result<Vec<BlockServiceSummary>> {
        let mut services = Vec::new();
        let mut begin = BlockServiceId::new(0);
        for _ in 0..PAGES_MAX {
            let request = ShuckleRequest::BlockServices(BlockServicesReq { begin });
            let reply = self.udp.request::<Shuckle>(self.addresses.shuckle, &request).await?;
            let response = reply.get()?;
            let ShuckleResponse::BlockServices(page) = &response else {
                return Err(reply.unexpected(&response).into());
            };
            services.extend(page.block_services.iter().map(|info| BlockServiceSummary {
                id: info.id,
                addr: info.address.socket_addr(),
                storage_class: info.storage_class,
                flags: info.flags,
                free_bytes: info.free_bytes.get(),
                last_check: info.last_check,
            }));
            if page.next.get() == 0 || page.next <= begin {
                return Ok(services);
            }
            begin = page.next;
        }
        Ok(services)
    }
}

/// A block service as shuckle lists it (public: never its key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockServiceSummary {
    pub id: BlockServiceId,
    pub addr: SocketAddr,
    pub storage_class: u8,
    /// `wire::shuckle::flags`.
    pub flags: u8,
    /// Free space above the service's reserve: 0 means full.
    pub free_bytes: u64,
    /// Its last good check by shuckle; zero when never checked.
    pub last_check: EggsTime,
}

impl BlockServiceSummary {
    /// Full: checked, writable by its flags, but with no free space (a
    /// drained, stale or terminal service is out for another reason).
    pub fn is_full(&self) -> bool {
        self.free_bytes == 0 && self.last_check != EggsTime::ZERO && self.flags == 0
    }
}

/// Guard against a parent loop in corrupt metadata.
const MAX_DIRECTORY_DEPTH: usize = 4096;
/// Guard against a listing that never ends.
const PAGES_MAX: usize = 1 << 16;
/// Pages of one block service's blocks on one shard, at most (about 60
/// blocks a page: 60 M blocks, far beyond one disk's share of one shard).
pub const REVERSE_BLOCK_PAGES_MAX: usize = 1 << 20;

/// True for the errors that mean "an earlier attempt of this request
/// probably succeeded" (DESIGN §4): BAD_REQUEST_IDEMPOTENT_HINT always, and
/// NOT_FOUND when the request was sent more than once (the eden file or
/// source name is gone because the first transmission moved it).
pub fn probably_succeeded(error: &ClientError) -> bool {
    match error {
        ClientError::Request(request) => match request.error_kind() {
            Some(ErrorKind::BadRequestIdempotentHint) => true,
            Some(ErrorKind::NotFound) => request.maybe_retried(),
            _ => false,
        },
        _ => false,
    }
}

/// Asks shuckle for the shards' and the CDC's addresses; the rest are the
/// local defaults.
pub async fn discover(udp: &DatagramClient, shuckle: SocketAddr) -> Addresses {
    let mut addresses = Addresses::local_defaults(shuckle);
    let probe = RetryPolicy { deadline: SHUCKLE_PROBE_DEADLINE, ..RetryPolicy::default() };
    if let Err(error) = ask_shuckle(udp, shuckle, probe, &mut addresses).await {
        tracing::info!(%shuckle, %error, "asking shuckle failed; the daemons it did not name keep their default local ports");
    }
    addresses
}

/// Why [`ask_shuckle`] stopped.
#[derive(Debug)]
pub enum DiscoveryError {
    /// No answer within the deadline, a refusal, or an answer that did not
    /// decode.
    Request(RequestError),
    /// Shuckle answered with another kind of response than the one asked
    /// for (the words name what was asked).
    Unexpected(&'static str),
}

impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Request(error) => error.fmt(f),
            Self::Unexpected(asked) => write!(f, "shuckle answered {asked} with something else"),
        }
    }
}

/// Sets in `addresses` every shard's and the CDC's address that shuckle
/// knows; a daemon it does not know keeps the address `addresses` had for
/// it. Stops at the first failure, keeping what was learnt before it.
pub async fn ask_shuckle(
    udp: &DatagramClient,
    shuckle: SocketAddr,
    probe: RetryPolicy,
    addresses: &mut Addresses,
) -> std::result::Result<(), DiscoveryError> {
    let mut begin = 0u8;
    for _ in 0..SHARD_COUNT {
        let request = ShuckleRequest::Shards(ShardsReq { begin });
        let reply = udp.request_with::<Shuckle>(shuckle, &request, probe).await.map_err(DiscoveryError::Request)?;
        let ShuckleResponse::Shards(page) = reply.get().map_err(DiscoveryError::Request)? else {
            return Err(DiscoveryError::Unexpected("the shard listing"));
        };
        for info in page.shards.iter() {
            if !info.address.is_unknown()
                && let Some(slot) = addresses.shards.get_mut(info.shard as usize)
            {
                *slot = info.address.socket_addr();
            }
        }
        if page.next == 0 || page.next <= begin {
            break;
        }
        begin = page.next;
    }
    let request = ShuckleRequest::Cdc(CdcReq {});
    let reply = udp.request_with::<Shuckle>(shuckle, &request, probe).await.map_err(DiscoveryError::Request)?;
    let ShuckleResponse::Cdc(cdc) = reply.get().map_err(DiscoveryError::Request)? else {
        return Err(DiscoveryError::Unexpected("the CDC's address"));
    };
    if !cdc.address.is_unknown() {
        addresses.cdc = cdc.address.socket_addr();
    }
    Ok(())
}
