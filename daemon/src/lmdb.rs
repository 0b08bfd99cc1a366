//! The structural check of an LMDB file, run before LMDB maps it.
//!
//! LMDB has no checksums and trusts what it reads: a page's flags, its
//! lower and upper bounds, its node offsets, a node's key size, a branch
//! node's child page number. A flipped bit in any of them sends LMDB
//! outside the page or the map, and the process dies with SIGSEGV or
//! SIGBUS the first time a request touches that page, with no message.
//! The daemons' record checksums cannot help: the crash happens inside
//! LMDB, before a record is handed out.
//!
//! [`check`] reads the file with `pread` (never through a map, so a damaged
//! file cannot crash it) and walks every B-tree LMDB would walk: the free
//! list and the main database from the newest meta page, and every named
//! database from its record in the main database. Every page LMDB would
//! trust is checked the way LMDB would use it:
//!
//! - the file is at least as long as the meta page's last page says;
//! - a tree page's number field is its position, its flags are exactly
//!   branch or leaf (no dirty, sub-page or fixed-size-duplicate bits, which
//!   eggsfs stores never write and which make LMDB write into the map or
//!   read a different layout), its lower and upper bounds lie inside the
//!   page in order, and it has at least one node;
//! - every node offset lies between the upper bound and the page's end,
//!   and the node (header, key and, in a leaf, its inline value) ends
//!   inside the page;
//! - a leaf node's flags are known (big data; a sub-database only in the
//!   main database, with a 48-byte record); a big value's overflow pages
//!   start with an overflow header numbered where they lie, and cover the
//!   value without running past the last page;
//! - a branch's child page numbers lie between the meta pages and the last
//!   page, every tree is balanced and at most LMDB's cursor depth (32)
//!   deep, and no page is reached twice (a cycle, or two trees sharing a
//!   page);
//! - the free list's records are page lists whose page numbers are in the
//!   file, and no page reached from a root (overflow pages included) is
//!   also listed as free. LMDB keeps the two sets disjoint in every
//!   committed state; a page in both is what a flipped child pointer looks
//!   like when it lands on a free page holding a stale but well-formed copy
//!   of older records, whose record checksums would still match.
//!
//! It reads every page of every tree once (leaf pages included: their node
//! headers are what a lookup trusts), so its cost is a read of the file's
//! used pages: see ARCHITECTURE.md (metad, "Damaged stores") for the
//! figures. It does not check record contents or key order: the daemons'
//! record checksums do.
//!
//! The layout is LMDB's on-disk format on 64-bit builds (`mdb.c`): a
//! 16-byte page header (page number u64, pad u16, flags u16, lower u16,
//! upper u16, or for an overflow page its page count u32), then node
//! offsets u16; a node is data size u32 (a branch: the child's page number
//! in it and in the flags field), flags u16, key size u16, key, value.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// LMDB's page header.
const PAGE_HEADER_BYTES: usize = 16;
/// LMDB's node header.
const NODE_HEADER_BYTES: usize = 8;
/// `MDB_db`: a database record (in the meta page and in the main database).
const DB_RECORD_BYTES: usize = 48;
/// Where the flags lie in an `MDB_db`.
const DB_FLAGS_AT: usize = 4;
/// Where the root page number lies in an `MDB_db`.
const DB_ROOT_AT: usize = 40;
const MAGIC: u32 = 0xBEEF_C0DE;
/// In the meta page, after its header: the two `MDB_db` (free list, main).
const META_DBS_AT: usize = 24;
const META_LAST_PAGE_AT: usize = 120;
const META_TXNID_AT: usize = 128;
/// The first `MDB_db`'s pad field holds the page size.
const META_PAGE_SIZE_AT: usize = 24;
const PAGE_SIZE_MIN: u64 = 512;
const PAGE_SIZE_MAX: u64 = 65536;
/// An empty database's root.
const NO_PAGE: u64 = u64::MAX;
/// LMDB's cursor stack: a deeper tree overflows it.
const DEPTH_MAX: usize = 32;

const P_BRANCH: u16 = 0x01;
const P_LEAF: u16 = 0x02;
const P_OVERFLOW: u16 = 0x04;
const F_BIGDATA: u16 = 0x01;
const F_SUBDATA: u16 = 0x02;

/// Bytes at the start of a meta page that hold everything LMDB reads of
/// it (the page header and `MDB_meta`), rounded up: what a checkpoint of
/// [`crate::journal`] keeps and writes back.
pub const META_COPY_BYTES: usize = 256;
const _: () = assert!(PAGE_HEADER_BYTES + META_TXNID_AT + 8 <= META_COPY_BYTES);

/// The transaction id of a meta page's first [`META_COPY_BYTES`] (or
/// more), `None` when it is not an LMDB meta page.
pub fn meta_txnid(page: &[u8]) -> Option<u64> {
    meta(page).map(|meta| meta.txnid)
}

/// The page size a meta page records, `None` when it is not a meta page
/// or the size is implausible.
pub fn meta_page_bytes(page: &[u8]) -> Option<u64> {
    let bytes = meta(page)?.page_bytes;
    ((PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&bytes) && bytes.is_power_of_two()).then_some(bytes)
}

/// The pages a meta page's snapshot spans (its last page + 1), `None`
/// when it is not a meta page.
pub fn meta_pages(page: &[u8]) -> Option<u64> {
    meta(page).map(|meta| meta.last_page.saturating_add(1))
}

/// Sets a meta page's page number (its header) and transaction id.
pub fn set_meta_identity(page: &mut [u8], number: u64, txnid: u64) {
    if let Some(field) = page.get_mut(..8) {
        field.copy_from_slice(&number.to_le_bytes());
    }
    let at = PAGE_HEADER_BYTES + META_TXNID_AT;
    if let Some(field) = page.get_mut(at..at + 8) {
        field.copy_from_slice(&txnid.to_le_bytes());
    }
}

/// What the check found wrong: the file cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an LMDB file: {reason}")]
    NotLmdb { path: PathBuf, reason: &'static str },
    #[error(
        "{path} is truncated: {size} bytes, but LMDB's metadata says its last page ends at {needed} bytes; restore it from a copy"
    )]
    Truncated { path: PathBuf, size: u64, needed: u64 },
    #[error(
        "{path} is damaged: page {page} (byte offset {offset}), in the {tree} tree: {what}; restore it from a copy"
    )]
    Page { path: PathBuf, page: u64, offset: u64, tree: String, what: String },
}

/// What an intact file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub page_bytes: u64,
    /// Pages in the file according to the meta page (last page + 1).
    pub pages: u64,
    /// Pages reached from the roots and checked (overflow pages counted
    /// once per value).
    pub pages_checked: u64,
    /// Trees walked: the free list, the main database and each named one.
    pub trees: usize,
}

/// Checks `data.mdb` in `folder`. `Ok(None)` when there is no such file
/// (a new store).
pub fn check(folder: &Path) -> Result<Option<Shape>, Damage> {
    let path = folder.join("data.mdb");
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Damage::Io { path, source }),
    };
    let size = file.metadata().map_err(|source| Damage::Io { path: path.clone(), source })?.len();
    let mut walker = Walker {
        file,
        path,
        page_bytes: 0,
        pages: 0,
        seen: Vec::new(),
        free: Vec::new(),
        checked: 0,
        page: Vec::new(),
    };
    walker.run(size).map(Some)
}

/// The pages a snapshot's free list lists ([`free_pages`]): pages no tree
/// of that snapshot uses, so a checkpoint of it need not write them back
/// (`crate::journal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreePages {
    /// Pages in the snapshot's file (its last page + 1).
    pub pages: u64,
    /// One bit per page: listed free.
    free: Vec<u64>,
    /// How many are listed free.
    pub count: u64,
}

impl FreePages {
    pub fn is_free(&self, page: u64) -> bool {
        self.free.get((page / 64) as usize).is_some_and(|word| word & (1u64 << (page % 64)) != 0)
    }

    /// The runs of pages below [`FreePages::pages`] not listed free (the
    /// pages the snapshot uses, its meta pages included), as (first page,
    /// page count), in order.
    pub fn used_runs(&self) -> Vec<(u64, u64)> {
        runs(self.pages, |page| !self.is_free(page))
    }

    /// Whether the snapshot uses `page` (below its end and not listed free).
    pub fn is_used(&self, page: u64) -> bool {
        page < self.pages && !self.is_free(page)
    }

    /// The runs of pages this snapshot uses and an `earlier` one did not
    /// (listed free there, or past its end), as (first page, page count),
    /// in order. While `earlier` stays pinned, LMDB writes no tree page it
    /// uses: a page both use holds the same bytes in both. The two meta
    /// pages are the exception (every commit rewrites one in place); both
    /// snapshots use them, so they are never in these runs: a journal
    /// checkpoint carries its own copy of its meta page, and recovery
    /// writes both (`crate::journal`).
    pub fn runs_used_since(&self, earlier: &FreePages) -> Vec<(u64, u64)> {
        runs(self.pages, |page| !self.is_free(page) && !earlier.is_used(page))
    }
}

/// The runs of pages below `pages` for which `wanted` holds, as (first
/// page, page count), in order.
fn runs(pages: u64, wanted: impl Fn(u64) -> bool) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let mut start = None;
    for page in 0..pages {
        match (wanted(page), start) {
            (true, None) => start = Some(page),
            (false, Some(first)) => {
                runs.push((first, page - first));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(first) = start {
        runs.push((first, pages - first));
    }
    runs
}

/// Every page the free list of a snapshot lists, the snapshot given by its
/// meta page's first bytes `meta` (at least [`META_COPY_BYTES`]). LMDB keeps
/// a committed state's free pages and the pages its trees reach disjoint
/// ([`check`] refuses a file where they are not), so none of these holds
/// anything of that snapshot. `file` is read with `pread`; the snapshot
/// must stay pinned (a read transaction) while this runs, so that its
/// free list's pages are not reused. A free list that does not check (the
/// same checks as [`check`]'s) is [`Damage`].
pub fn free_pages(file: &std::fs::File, path: &Path, meta: &[u8]) -> Result<FreePages, Damage> {
    let not_lmdb = |reason| Damage::NotLmdb { path: path.to_path_buf(), reason };
    let snapshot = self::meta(meta).ok_or_else(|| not_lmdb("no LMDB meta page in the snapshot's copy"))?;
    let page_bytes = snapshot.page_bytes;
    if !(PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&page_bytes) || !page_bytes.is_power_of_two() {
        return Err(not_lmdb("implausible page size in the snapshot's meta page"));
    }
    let file = file.try_clone().map_err(|source| Damage::Io { path: path.to_path_buf(), source })?;
    let pages = snapshot.last_page.saturating_add(1);
    // The bitmaps are sized by the file, never by a page number alone.
    let file_bytes = file.metadata().map_err(|source| Damage::Io { path: path.to_path_buf(), source })?.len();
    if pages > file_bytes / page_bytes {
        return Err(not_lmdb("the snapshot's last page lies past the file's end"));
    }
    let words = usize::try_from(pages.div_ceil(64)).unwrap_or(usize::MAX);
    let mut walker = Walker {
        file,
        path: path.to_path_buf(),
        page_bytes,
        pages,
        seen: vec![0; words],
        free: vec![0; words],
        checked: 0,
        page: vec![0u8; page_bytes as usize],
    };
    walker.tree(Tree::Free, snapshot.free_root, &mut |_, _| Ok(()))?;
    // The free list's own pages are in use (as `check` insists).
    if walker.seen.iter().zip(&walker.free).any(|(seen, free)| seen & free != 0) {
        return Err(walker.damage(Tree::Free, 0, "the free list's own page is listed as free"));
    }
    let count = walker.free.iter().map(|word| u64::from(word.count_ones())).sum();
    Ok(FreePages { pages, free: walker.free, count })
}

struct Walker {
    file: std::fs::File,
    path: PathBuf,
    page_bytes: u64,
    pages: u64,
    /// One bit per page: reached from a root already.
    seen: Vec<u64>,
    /// One bit per page: listed in the free list.
    free: Vec<u64>,
    checked: u64,
    /// The page being read (reused).
    page: Vec<u8>,
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    bytes.get(at..at + 2).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    bytes.get(at..at + 4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
}

/// A meta page: (transaction id, last page, page size, free root, main root).
struct Meta {
    txnid: u64,
    last_page: u64,
    page_bytes: u64,
    free_root: u64,
    main_root: u64,
}

fn meta(page: &[u8]) -> Option<Meta> {
    let base = PAGE_HEADER_BYTES;
    if page.len() < base + META_TXNID_AT + 8 || u32_at(page, base) != MAGIC {
        return None;
    }
    Some(Meta {
        txnid: u64_at(page, base + META_TXNID_AT),
        last_page: u64_at(page, base + META_LAST_PAGE_AT),
        page_bytes: u64::from(u32_at(page, base + META_PAGE_SIZE_AT)),
        free_root: u64_at(page, base + META_DBS_AT + DB_ROOT_AT),
        main_root: u64_at(page, base + META_DBS_AT + DB_RECORD_BYTES + DB_ROOT_AT),
    })
}

/// Receives each sub-database record (key, 48 bytes) of the main database.
type OnSubDatabase<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), Damage> + 'a;

/// Which tree a page belongs to, for the checks and the message.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tree<'a> {
    Free,
    Main,
    Named(&'a [u8]),
}

impl Tree<'_> {
    fn name(&self) -> String {
        match self {
            Tree::Free => "free list".into(),
            Tree::Main => "main database".into(),
            Tree::Named(name) => format!("`{}` database", String::from_utf8_lossy(name)),
        }
    }
}

impl Walker {
    fn run(&mut self, size: u64) -> Result<Shape, Damage> {
        let not_lmdb = |path: &Path, reason| Damage::NotLmdb { path: path.to_path_buf(), reason };
        let mut head = vec![0u8; PAGE_SIZE_MIN as usize];
        let read = self.read_at(&mut head, 0)?;
        let first = meta(&head[..read]).ok_or_else(|| not_lmdb(&self.path, "no LMDB meta page at its start"))?;
        let page_bytes = first.page_bytes;
        if !(PAGE_SIZE_MIN..=PAGE_SIZE_MAX).contains(&page_bytes) || !page_bytes.is_power_of_two() {
            return Err(not_lmdb(&self.path, "implausible page size in its meta page"));
        }
        let mut second = vec![0u8; PAGE_SIZE_MIN as usize];
        let read = self.read_at(&mut second, page_bytes)?;
        // LMDB uses the meta page with the higher transaction id.
        let newest = match meta(&second[..read]) {
            Some(second) if second.txnid > first.txnid => second,
            _ => first,
        };
        let needed = newest.last_page.saturating_add(1).saturating_mul(page_bytes);
        if size < needed {
            return Err(Damage::Truncated { path: self.path.clone(), size, needed });
        }
        self.page_bytes = page_bytes;
        self.pages = newest.last_page.saturating_add(1);
        self.seen = vec![0; usize::try_from(self.pages.div_ceil(64)).unwrap_or(usize::MAX)];
        self.free = self.seen.clone();
        self.page = vec![0u8; page_bytes as usize];
        let mut trees = 2;
        self.tree(Tree::Free, newest.free_root, &mut |_, _| Ok(()))?;
        // The free list's own pages are in use; every later tree's pages
        // are checked against the free set as they are reached.
        if let Some(page) = self.seen.iter().zip(&self.free).enumerate().find_map(|(word, (seen, free))| {
            let both = seen & free;
            (both != 0).then(|| word as u64 * 64 + u64::from(both.trailing_zeros()))
        }) {
            return Err(self.damage(Tree::Free, page, "the free list's own page is listed as free"));
        }
        let mut named: Vec<(Vec<u8>, u64)> = Vec::new();
        self.tree(Tree::Main, newest.main_root, &mut |key, record| {
            named.push((key.to_vec(), u64_at(record, DB_ROOT_AT)));
            Ok(())
        })?;
        for (name, root) in named {
            self.tree(Tree::Named(&name), root, &mut |_, _| Ok(()))?;
            trees += 1;
        }
        Ok(Shape { page_bytes, pages: self.pages, pages_checked: self.checked, trees })
    }

    fn read_at(&self, buffer: &mut [u8], offset: u64) -> Result<usize, Damage> {
        let mut filled = 0;
        while filled < buffer.len() {
            match self.file.read_at(&mut buffer[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(Damage::Io { path: self.path.clone(), source }),
            }
        }
        Ok(filled)
    }

    fn damage(&self, tree: Tree<'_>, page: u64, what: impl Into<String>) -> Damage {
        Damage::Page {
            path: self.path.clone(),
            page,
            offset: page.saturating_mul(self.page_bytes),
            tree: tree.name(),
            what: what.into(),
        }
    }

    /// Whether `page` may be referenced: past the two meta pages, in the file.
    fn in_file(&self, page: u64) -> bool {
        (2..self.pages).contains(&page)
    }

    /// Whether the free list lists `page`.
    fn is_free(&self, page: u64) -> bool {
        self.free[(page / 64) as usize] & (1u64 << (page % 64)) != 0
    }

    /// Marks `page` reached; false when it was reached before.
    fn mark(&mut self, page: u64) -> bool {
        let (word, bit) = ((page / 64) as usize, 1u64 << (page % 64));
        let fresh = self.seen[word] & bit == 0;
        self.seen[word] |= bit;
        fresh
    }

    /// Walks the tree rooted at `root` depth first; `sub` receives each
    /// sub-database record (key, 48 bytes) of the main database.
    fn tree(&mut self, tree: Tree<'_>, root: u64, sub: &mut OnSubDatabase<'_>) -> Result<(), Damage> {
        if root == NO_PAGE {
            return Ok(());
        }
        if !self.in_file(root) {
            return Err(self.damage(tree, root, format!("its root page number {root} is outside the file")));
        }
        // (page, depth) still to visit; the leaves' depth must agree.
        let mut stack = vec![(root, 1usize)];
        let mut leaf_depth = None;
        while let Some((number, depth)) = stack.pop() {
            if depth > DEPTH_MAX {
                return Err(self.damage(tree, number, format!("the tree is deeper than LMDB's {DEPTH_MAX} levels")));
            }
            if !self.mark(number) {
                return Err(self.damage(tree, number, "the page is reached twice (a cycle or a shared page)"));
            }
            if self.is_free(number) {
                return Err(self.damage(tree, number, "the page is in use but listed as free (a stale page)"));
            }
            let mut page = std::mem::take(&mut self.page);
            let outcome = self.page(tree, number, depth, &mut page, &mut stack, &mut leaf_depth, sub);
            self.page = page;
            outcome?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn page(
        &mut self,
        tree: Tree<'_>,
        number: u64,
        depth: usize,
        page: &mut [u8],
        stack: &mut Vec<(u64, usize)>,
        leaf_depth: &mut Option<usize>,
        sub: &mut OnSubDatabase<'_>,
    ) -> Result<(), Damage> {
        let page_bytes = page.len();
        let read = self.read_at(page, number * self.page_bytes)?;
        if read < page_bytes {
            return Err(self.damage(tree, number, "the file ends inside the page"));
        }
        self.checked += 1;
        macro_rules! bad {
            ($($what:tt)*) => {
                return Err(self.damage(tree, number, format!($($what)*)))
            };
        }
        let stored_number = u64_at(page, 0);
        if stored_number != number {
            bad!("its header says it is page {stored_number}");
        }
        let flags = u16_at(page, 10);
        let leaf = match flags {
            P_BRANCH => false,
            P_LEAF => true,
            _ => bad!("its flags are {flags:#06x}, not a branch or leaf page"),
        };
        let (lower, upper) = (usize::from(u16_at(page, 12)), usize::from(u16_at(page, 14)));
        if lower < PAGE_HEADER_BYTES
            || lower > upper
            || upper > page_bytes
            || !(lower - PAGE_HEADER_BYTES).is_multiple_of(2)
        {
            bad!("its free-space bounds {lower}..{upper} do not fit the page");
        }
        let nodes = (lower - PAGE_HEADER_BYTES) / 2;
        if nodes == 0 {
            bad!("it has no nodes");
        }
        if leaf {
            match *leaf_depth {
                None => *leaf_depth = Some(depth),
                Some(expected) if expected != depth => {
                    bad!("a leaf at depth {depth}, others at {expected}: the tree is unbalanced");
                }
                Some(_) => {}
            }
        }
        for index in 0..nodes {
            let at = usize::from(u16_at(page, PAGE_HEADER_BYTES + 2 * index));
            if at < upper || !at.is_multiple_of(2) || at + NODE_HEADER_BYTES > page_bytes {
                bad!("node {index}'s offset {at} is outside the page's node area");
            }
            let low = u64::from(u32_at(page, at));
            let node_flags = u16_at(page, at + 4);
            let key_bytes = usize::from(u16_at(page, at + 6));
            let key_end = at + NODE_HEADER_BYTES + key_bytes;
            if key_end > page_bytes {
                bad!("node {index}'s key ({key_bytes} bytes) runs past the page");
            }
            if !leaf {
                let child = low | (u64::from(node_flags) << 32);
                if !self.in_file(child) {
                    bad!("node {index} points to page {child}, outside the file");
                }
                stack.push((child, depth + 1));
                continue;
            }
            let value_bytes = low;
            match node_flags {
                0 | F_SUBDATA => {
                    if key_end as u64 + value_bytes > page_bytes as u64 {
                        bad!("node {index}'s value ({value_bytes} bytes) runs past the page");
                    }
                    if node_flags == F_SUBDATA {
                        if tree != Tree::Main || value_bytes != DB_RECORD_BYTES as u64 {
                            bad!("node {index} is a misplaced sub-database record");
                        }
                        // eggsfs stores open every database without flags:
                        // a flag here (sorted duplicates, integer keys)
                        // would make LMDB read the tree another way.
                        let db_flags = u16_at(page, key_end + DB_FLAGS_AT);
                        if db_flags != 0 {
                            bad!("node {index}'s database flags are {db_flags:#06x}");
                        }
                        sub(&page[at + NODE_HEADER_BYTES..key_end], &page[key_end..key_end + DB_RECORD_BYTES])?;
                    } else if tree == Tree::Free {
                        self.free_record(tree, number, index, &page[key_end..key_end + value_bytes as usize])?;
                    }
                }
                F_BIGDATA => {
                    if key_end + 8 > page_bytes {
                        bad!("node {index}'s overflow page number runs past the page");
                    }
                    let first = u64_at(page, key_end);
                    self.overflow(tree, number, index, first, value_bytes)?;
                    if tree == Tree::Free {
                        // A long page list lives on overflow pages.
                        let mut value = vec![0u8; value_bytes as usize];
                        let read = self.read_at(&mut value, first * self.page_bytes + PAGE_HEADER_BYTES as u64)?;
                        if read < value.len() {
                            bad!("node {index}'s overflow value runs past the end of the file");
                        }
                        self.free_record(tree, number, index, &value)?;
                    }
                }
                _ => bad!("node {index}'s flags are {node_flags:#06x}"),
            }
        }
        Ok(())
    }

    /// A free-list record: a count u64, then that many page numbers.
    fn free_record(&mut self, tree: Tree<'_>, number: u64, index: usize, value: &[u8]) -> Result<(), Damage> {
        let count = u64_at(value, 0);
        if value.len() < 8 || !value.len().is_multiple_of(8) || count != (value.len() / 8) as u64 - 1 {
            return Err(self.damage(tree, number, format!("node {index} is not a page list")));
        }
        for at in (8..value.len()).step_by(8) {
            let free = u64_at(value, at);
            if !self.in_file(free) {
                return Err(self.damage(tree, number, format!("node {index} lists page {free}, outside the file")));
            }
            self.free[(free / 64) as usize] |= 1u64 << (free % 64);
        }
        Ok(())
    }

    /// The overflow pages of a `value_bytes` value starting at `first`,
    /// referenced by node `index` of page `number`.
    fn overflow(
        &mut self,
        tree: Tree<'_>,
        number: u64,
        index: usize,
        first: u64,
        value_bytes: u64,
    ) -> Result<(), Damage> {
        let needed = (PAGE_HEADER_BYTES as u64 - 1 + value_bytes) / self.page_bytes + 1;
        if !self.in_file(first) || first.saturating_add(needed) > self.pages {
            let what =
                format!("node {index}'s {value_bytes}-byte value on overflow pages from {first} runs past the file");
            return Err(self.damage(tree, number, what));
        }
        if !self.mark(first) {
            return Err(self.damage(tree, first, "the overflow page is reached twice"));
        }
        let mut header = [0u8; PAGE_HEADER_BYTES];
        let read = self.read_at(&mut header, first * self.page_bytes)?;
        self.checked += 1;
        let flags = u16_at(&header, 10);
        let count = u64::from(u32_at(&header, 12));
        if read < PAGE_HEADER_BYTES || u64_at(&header, 0) != first || flags != P_OVERFLOW {
            return Err(self.damage(tree, first, "not an overflow page header where a value's overflow pages start"));
        }
        if count < needed || first.saturating_add(count) > self.pages {
            return Err(self.damage(tree, first, format!("its overflow page count {count} does not fit the value")));
        }
        for page in first..first + count {
            if page > first && !self.mark(page) {
                return Err(self.damage(tree, page, "the overflow page is reached twice"));
            }
            if tree != Tree::Free && self.is_free(page) {
                return Err(self.damage(tree, page, "the overflow page is in use but listed as free (a stale page)"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_pages_of(pages: u64, free: &[u64]) -> FreePages {
        let mut bits = vec![0u64; pages.div_ceil(64) as usize];
        for &page in free {
            bits[(page / 64) as usize] |= 1 << (page % 64);
        }
        FreePages { pages, free: bits, count: free.len() as u64 }
    }

    /// A later snapshot's new pages: those it uses that the earlier one
    /// listed free or did not have; pages both use are left out.
    #[test]
    fn runs_used_since_are_the_pages_an_earlier_snapshot_did_not_use() {
        let earlier = free_pages_of(70, &[3, 4, 5, 9, 64, 65]);
        let later = free_pages_of(100, &[2, 4, 10, 11, 65, 80]);
        assert_eq!(later.used_runs(), vec![(0, 2), (3, 1), (5, 5), (12, 53), (66, 14), (81, 19)]);
        assert_eq!(later.runs_used_since(&earlier), vec![(3, 1), (5, 1), (9, 1), (64, 1), (70, 10), (81, 19)]);
        assert_eq!(earlier.runs_used_since(&earlier), Vec::<(u64, u64)>::new());
    }

    /// A minimal two-meta-page file with one leaf as the main root.
    fn file_with_leaf(leaf: impl FnOnce(&mut [u8])) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let psize = 4096usize;
        let mut bytes = vec![0u8; 3 * psize];
        for meta_page in 0..2 {
            let base = meta_page * psize;
            bytes[base..base + 8].copy_from_slice(&(meta_page as u64).to_le_bytes());
            bytes[base + 10..base + 12].copy_from_slice(&0x08u16.to_le_bytes());
            let m = base + PAGE_HEADER_BYTES;
            bytes[m..m + 4].copy_from_slice(&MAGIC.to_le_bytes());
            bytes[m + META_PAGE_SIZE_AT..m + META_PAGE_SIZE_AT + 4].copy_from_slice(&(psize as u32).to_le_bytes());
            let free_root = m + META_DBS_AT + DB_ROOT_AT;
            bytes[free_root..free_root + 8].copy_from_slice(&NO_PAGE.to_le_bytes());
            let main_root = m + META_DBS_AT + DB_RECORD_BYTES + DB_ROOT_AT;
            bytes[main_root..main_root + 8].copy_from_slice(&2u64.to_le_bytes());
            bytes[m + META_LAST_PAGE_AT..m + META_LAST_PAGE_AT + 8].copy_from_slice(&2u64.to_le_bytes());
            bytes[m + META_TXNID_AT..m + META_TXNID_AT + 8].copy_from_slice(&(meta_page as u64).to_le_bytes());
        }
        let page = &mut bytes[2 * psize..];
        page[..8].copy_from_slice(&2u64.to_le_bytes());
        page[10..12].copy_from_slice(&P_LEAF.to_le_bytes());
        // One node at 4080: value 4 bytes, key 2 bytes.
        page[12..14].copy_from_slice(&18u16.to_le_bytes());
        page[14..16].copy_from_slice(&4080u16.to_le_bytes());
        page[16..18].copy_from_slice(&4080u16.to_le_bytes());
        page[4080..4084].copy_from_slice(&4u32.to_le_bytes());
        page[4086..4088].copy_from_slice(&2u16.to_le_bytes());
        leaf(page);
        std::fs::write(dir.path().join("data.mdb"), bytes).unwrap();
        dir
    }

    #[test]
    fn an_intact_file_passes_and_damaged_headers_name_the_page() {
        let dir = file_with_leaf(|_| {});
        let shape = check(dir.path()).unwrap().unwrap();
        assert_eq!((shape.pages, shape.pages_checked, shape.trees), (3, 1, 2));
        type Damaging = fn(&mut [u8]);
        let cases: [(&str, Damaging); 5] = [
            ("says it is page", |page| page[0] ^= 1),
            ("flags", |page| page[10] ^= 0x10),
            ("free-space bounds", |page| page[15] ^= 0x20),
            ("offset", |page| page[16] ^= 0x40),
            ("runs past the page", |page| page[4082] ^= 1),
        ];
        for (what, damage) in cases {
            let dir = file_with_leaf(damage);
            let error = check(dir.path()).unwrap_err().to_string();
            assert!(error.contains("page 2 (byte offset 8192)") && error.contains(what), "{what}: {error}");
        }
        assert!(check(tempfile::tempdir().unwrap().path()).unwrap().is_none(), "no file: a new store");
    }

    /// Real LMDB files pass after every commit of a churn that grows and
    /// shrinks a tree, frees thousands of pages at once (free-list records
    /// on overflow pages), and stores and deletes values on overflow pages.
    #[test]
    fn real_lmdb_files_pass_through_a_churn() {
        let dir = tempfile::tempdir().unwrap();
        let env = unsafe { heed::EnvOpenOptions::new().map_size(1 << 30).max_dbs(4).open(dir.path()) }.unwrap();
        let mut txn = env.write_txn().unwrap();
        let db: heed::Database<heed::types::Bytes, heed::types::Bytes> =
            env.create_database(&mut txn, Some("churn")).unwrap();
        txn.commit().unwrap();
        let small = [7u8; 100];
        let big = vec![9u8; 3 * 4096 + 100];
        let mut rounds = 0;
        for round in 0u32..12 {
            let mut txn = env.write_txn().unwrap();
            for key in 0u32..6_000 {
                let key = (round * 6_000 + key).to_be_bytes();
                let value: &[u8] = if key[3] % 50 == 0 { &big } else { &small };
                db.put(&mut txn, &key, value).unwrap();
            }
            txn.commit().unwrap();
            // Delete most of what earlier rounds wrote, in one commit.
            let mut txn = env.write_txn().unwrap();
            for key in 0u32..(round * 6_000) {
                if key % 3 != 0 {
                    db.delete(&mut txn, &key.to_be_bytes()).unwrap();
                }
            }
            txn.commit().unwrap();
            let shape = check(dir.path()).unwrap_or_else(|damage| panic!("round {round}: {damage}")).unwrap();
            assert!(shape.pages_checked > 2, "{shape:?}");
            rounds += 1;
        }
        assert_eq!(rounds, 12);
    }

    /// The file of [`file_with_leaf`] plus page 3: a free-list leaf whose
    /// one record lists `listed` as free.
    fn file_with_free_list(listed: u64) -> tempfile::TempDir {
        let dir = file_with_leaf(|_| {});
        let path = dir.path().join("data.mdb");
        let mut bytes = std::fs::read(&path).unwrap();
        let psize = 4096usize;
        for meta_page in 0..2 {
            let m = meta_page * psize + PAGE_HEADER_BYTES;
            let free_root = m + META_DBS_AT + DB_ROOT_AT;
            bytes[free_root..free_root + 8].copy_from_slice(&3u64.to_le_bytes());
            bytes[m + META_LAST_PAGE_AT..m + META_LAST_PAGE_AT + 8].copy_from_slice(&3u64.to_le_bytes());
        }
        let mut page = vec![0u8; psize];
        page[..8].copy_from_slice(&3u64.to_le_bytes());
        page[10..12].copy_from_slice(&P_LEAF.to_le_bytes());
        // One node at 4064: key a txn id (8 bytes), value [count 1, page].
        page[12..14].copy_from_slice(&18u16.to_le_bytes());
        page[14..16].copy_from_slice(&4064u16.to_le_bytes());
        page[16..18].copy_from_slice(&4064u16.to_le_bytes());
        page[4064..4068].copy_from_slice(&16u32.to_le_bytes());
        page[4070..4072].copy_from_slice(&8u16.to_le_bytes());
        page[4072..4080].copy_from_slice(&1u64.to_le_bytes());
        page[4080..4088].copy_from_slice(&1u64.to_le_bytes());
        page[4088..4096].copy_from_slice(&listed.to_le_bytes());
        bytes.extend_from_slice(&page);
        std::fs::write(&path, bytes).unwrap();
        dir
    }

    #[test]
    fn a_page_both_in_use_and_listed_free_is_damage() {
        // A free page a damaged child pointer lands on holds a stale but
        // well-formed copy: only the free list tells it apart.
        let error = check(file_with_free_list(2).path()).unwrap_err().to_string();
        assert!(error.contains("page 2 (byte offset 8192)") && error.contains("listed as free"), "{error}");
        let error = check(file_with_free_list(3).path()).unwrap_err().to_string();
        assert!(error.contains("page 3") && error.contains("free list's own page"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let intact = file_with_free_list(2);
        let mut bytes = std::fs::read(intact.path().join("data.mdb")).unwrap();
        // Page 4 exists and is free: the file passes.
        let psize = 4096usize;
        for meta_page in 0..2 {
            let m = meta_page * psize + PAGE_HEADER_BYTES;
            bytes[m + META_LAST_PAGE_AT..m + META_LAST_PAGE_AT + 8].copy_from_slice(&4u64.to_le_bytes());
        }
        bytes[3 * psize + 4088..3 * psize + 4096].copy_from_slice(&4u64.to_le_bytes());
        bytes.extend_from_slice(&vec![0u8; psize]);
        std::fs::write(dir.path().join("data.mdb"), bytes).unwrap();
        let shape = check(dir.path()).unwrap().unwrap();
        assert_eq!((shape.pages, shape.pages_checked), (5, 2));
    }
}
