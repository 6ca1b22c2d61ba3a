//! Namespace operations. Reads run in a `ReadNs` (a redb read transaction: a consistent snapshot,
//! concurrent with the writer); changes run in an `Ns` inside the committer's batch transaction.
//!
//! **Architecture Invariant**: an operation that returns `Err(StoreError::Fs(_))` has changed
//! nothing. Every operation checks all its preconditions before its first write; the committer
//! asserts it (`Ns::mutations` is unchanged after a failed operation).
//!
//! POSIX rules kept here: directory nlink is 2 + subdirectories; a directory's `parent` is its one
//! parent link; mtime and ctime of a directory change when its entries do; ctime of an inode
//! changes when its attributes, links or xattrs do.

use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, ReadableTableMetadata, Table, WriteTransaction};
use rustre_proto::msg::{FILE_SIZE_MAX, READDIR_ENTRIES_MAX};
use rustre_proto::name::{XATTR_VALUE_LEN_MAX, validate_name, validate_symlink_target, validate_xattr_name};
use rustre_proto::{
    Attr, Caller, DirEntry, Errno, FileKind, LeaseKey, OpenFlags, ROOT_INO, RenameMode, SetAttrIn, TimeSet, Timestamp,
};

use crate::access::{self, Want};
use crate::error::{Result, StoreError};
use crate::record::*;

/// Most hard links one file may have.
pub const LINK_COUNT_MAX: u32 = 65000;
/// Most subdirectories one directory may have (its nlink is 2 more, and must fit a u32).
pub const SUBDIRECTORIES_MAX: u32 = u32::MAX - 2;
/// Most bytes of names one readdir reply carries, so a reply stays far below the frame limit.
pub const READDIR_REPLY_BYTES_MAX: usize = 256 * 1024;
/// Deepest directory chain walked when checking a rename for loops.
pub const DIRECTORY_DEPTH_MAX: u32 = 4096;

/// A directory entry as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirent {
    pub ino: u64,
    pub kind: FileKind,
    pub cookie: u64,
}

fn load_inode(table: &impl ReadableTable<u64, &'static [u8]>, ino: u64) -> Result<Option<InodeRecord>> {
    match table.get(ino)? {
        Some(bytes) => Ok(Some(InodeRecord::decode(ino, bytes.value())?)),
        None => Ok(None),
    }
}

fn load_dirent(
    table: &impl ReadableTable<(u64, &'static [u8]), (u64, u8, u64)>,
    parent: u64,
    name: &[u8],
) -> Result<Option<Dirent>> {
    match table.get((parent, name))? {
        Some(value) => {
            let (ino, kind, cookie) = value.value();
            Ok(Some(Dirent { ino, kind: kind_from_byte(kind)?, cookie }))
        }
        None => Ok(None),
    }
}

/// Linux's bound on the list of one inode's xattr names, each counted with its NUL
/// (`XATTR_LIST_MAX`); it also keeps a `ListXattr` reply far below the frame limit.
pub const XATTR_LIST_BYTES_MAX: usize = 65536;

fn xattr_names(table: &impl ReadableTable<(u64, &'static [u8]), &'static [u8]>, ino: u64) -> Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for item in table.range((ino, &[][..])..)? {
        let (key, _) = item?;
        let (owner, name) = key.value();
        if owner != ino {
            break;
        }
        names.push(name.to_vec());
    }
    Ok(names)
}

fn list_orphans(table: &impl ReadableTable<u64, i64>) -> Result<Vec<u64>> {
    let mut orphans = Vec::new();
    for item in table.iter()? {
        orphans.push(item?.0.value());
    }
    Ok(orphans)
}

fn xattr_list_bytes(names: &[Vec<u8>]) -> usize {
    names.iter().map(|name| name.len() + 1).sum()
}

/// An inode addressed by id must exist: a missing one is ESTALE (semantics.md, ESTALE discipline).
fn existing(record: Option<InodeRecord>) -> Result<InodeRecord> {
    record.ok_or(StoreError::Fs(Errno::ESTALE))
}

/// A directory addressed by id, to look names up in or to change: it must exist, be a
/// directory, and still be linked. A removed directory takes no new names and has none to look
/// up; addressed by id, it answers ESTALE as a destroyed one does (someone still holds it open),
/// so the client walks the path again by name: ENOENT would claim that a path which names a
/// directory all along named nothing (found by the simulator, seed 776).
fn usable_directory(record: Option<InodeRecord>) -> Result<InodeRecord> {
    let record = existing(record)?;
    if record.kind != FileKind::Directory {
        return Err(Errno::ENOTDIR.into());
    }
    if record.nlink == 0 {
        return Err(Errno::ESTALE.into());
    }
    Ok(record)
}

#[allow(clippy::too_many_arguments)]
fn read_dir_page(
    inodes: &impl ReadableTable<u64, &'static [u8]>,
    dirents: &impl ReadableTable<(u64, &'static [u8]), (u64, u8, u64)>,
    cookies: &impl ReadableTable<(u64, u64), &'static [u8]>,
    ino: u64,
    cookie: u64,
    max_entries: u32,
    with_attrs: bool,
    caller: &Caller,
) -> Result<(Vec<DirEntry>, bool)> {
    let directory = existing(load_inode(inodes, ino)?)?;
    if directory.kind != FileKind::Directory {
        return Err(Errno::ENOTDIR.into());
    }
    // Listing names asks for read permission; their attributes are lookups, which ask for search
    // permission too: without it the names come alone, as `ls -l` in such a directory shows.
    access::check(&directory, caller, Want::READ)?;
    let with_attrs = with_attrs && access::permits(&directory, caller, Want::EXEC);
    let max_entries = max_entries.clamp(1, READDIR_ENTRIES_MAX) as usize;
    let mut entries = Vec::new();
    let mut bytes = 0;
    let start = cookie.saturating_add(1);
    let mut range = cookies.range((ino, start)..=(ino, u64::MAX))?;
    for item in range.by_ref() {
        let (key, name) = item?;
        let (_, entry_cookie) = key.value();
        let name = name.value().to_vec();
        let dirent = load_dirent(dirents, ino, &name)?.ok_or_else(|| {
            StoreError::Corrupt(format!("directory {ino}: cookie {entry_cookie} names a missing entry"))
        })?;
        debug_assert_eq!(dirent.cookie, entry_cookie, "the two indexes of a directory agree");
        let attr = if with_attrs {
            let record = load_inode(inodes, dirent.ino)?.ok_or_else(|| {
                StoreError::Corrupt(format!("directory {ino}: entry points at missing inode {}", dirent.ino))
            })?;
            Some(record.attr(dirent.ino))
        } else {
            None
        };
        bytes += name.len() + 64;
        entries.push(DirEntry { name, ino: dirent.ino, kind: dirent.kind, cookie: entry_cookie, attr });
        if entries.len() >= max_entries || bytes >= READDIR_REPLY_BYTES_MAX {
            break;
        }
    }
    let end = range.next().is_none();
    Ok((entries, end))
}

/// Where a path of directory names led.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Walked {
    /// To this directory.
    Directory(u64),
    /// To a symlink at `index` of the path: the server never follows one; the client splices
    /// its target into the path (by name) and asks again.
    Symlink { index: usize, target: Vec<u8> },
}

/// Walks `components` (names, or `..`) from the root, by name only: nothing here is addressed
/// by an inode id a client holds, so it cannot meet a stale one. `caller` needs search
/// permission on every directory it goes through (not on the one it ends at: the op that
/// follows checks what it needs there).
fn walk_path(
    inodes: &impl ReadableTable<u64, &'static [u8]>,
    dirents: &impl ReadableTable<(u64, &'static [u8]), (u64, u8, u64)>,
    components: &[Vec<u8>],
    traversed: &mut Vec<LeaseKey>,
    caller: &Caller,
) -> Result<Walked> {
    let mut directory = ROOT_INO;
    for (index, component) in components.iter().enumerate() {
        let record = usable_directory(load_inode(inodes, directory)?)?;
        access::check_search(&record, caller)?;
        if component == b".." {
            directory = record.parent;
            continue;
        }
        validate_name(component)?;
        traversed.push(LeaseKey::Name { parent: directory, name: component.clone() });
        let dirent = load_dirent(dirents, directory, component)?.ok_or(StoreError::Fs(Errno::ENOENT))?;
        match dirent.kind {
            FileKind::Directory => directory = dirent.ino,
            FileKind::Symlink => {
                let record = load_inode(inodes, dirent.ino)?
                    .ok_or_else(|| StoreError::Corrupt(format!("entry points at missing inode {}", dirent.ino)))?;
                return Ok(Walked::Symlink { index, target: record.target });
            }
            FileKind::Regular => return Err(Errno::ENOTDIR.into()),
        }
    }
    usable_directory(load_inode(inodes, directory)?)?;
    Ok(Walked::Directory(directory))
}

/// A consistent snapshot for read-only operations.
pub struct ReadNs {
    inodes: ReadOnlyTable<u64, &'static [u8]>,
    dirents: ReadOnlyTable<(u64, &'static [u8]), (u64, u8, u64)>,
    cookies: ReadOnlyTable<(u64, u64), &'static [u8]>,
    xattrs: ReadOnlyTable<(u64, &'static [u8]), &'static [u8]>,
    orphans: ReadOnlyTable<u64, i64>,
    meta: ReadOnlyTable<&'static str, u64>,
}

impl ReadNs {
    pub(crate) fn new(txn: &ReadTransaction) -> Result<ReadNs> {
        Ok(ReadNs {
            inodes: txn.open_table(INODES)?,
            dirents: txn.open_table(DIRENTS)?,
            cookies: txn.open_table(COOKIES)?,
            xattrs: txn.open_table(XATTRS)?,
            orphans: txn.open_table(ORPHANS)?,
            meta: txn.open_table(META)?,
        })
    }

    pub fn inode(&self, ino: u64) -> Result<Option<InodeRecord>> {
        load_inode(&self.inodes, ino)
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        Ok(existing(self.inode(ino)?)?.attr(ino))
    }

    /// Resolves a path of directory names from the root, by name; the names it went through
    /// are added to `traversed` (their state is revealed by whoever answers from this walk).
    pub fn walk(&self, components: &[Vec<u8>], traversed: &mut Vec<LeaseKey>, caller: &Caller) -> Result<Walked> {
        walk_path(&self.inodes, &self.dirents, components, traversed, caller)
    }

    /// The entry `name` in `parent`, if any (no checks on the directory).
    pub fn entry(&self, parent: u64, name: &[u8]) -> Result<Option<Dirent>> {
        load_dirent(&self.dirents, parent, name)
    }

    /// `entry`, for `caller`: `parent` must be a usable directory it may search.
    pub fn searched_entry(&self, parent: u64, name: &[u8], caller: &Caller) -> Result<Option<Dirent>> {
        access::check_search(&usable_directory(self.inode(parent)?)?, caller)?;
        self.entry(parent, name)
    }

    pub fn lookup(&self, parent: u64, name: &[u8], caller: &Caller) -> Result<Attr> {
        validate_name(name)?;
        access::check_search(&usable_directory(self.inode(parent)?)?, caller)?;
        let dirent = load_dirent(&self.dirents, parent, name)?.ok_or(StoreError::Fs(Errno::ENOENT))?;
        let record = self.inode(dirent.ino)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "entry {parent}/{} points at missing inode {}",
                String::from_utf8_lossy(name),
                dirent.ino
            ))
        })?;
        Ok(record.attr(dirent.ino))
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let record = existing(self.inode(ino)?)?;
        if record.kind != FileKind::Symlink {
            return Err(Errno::EINVAL.into());
        }
        Ok(record.target)
    }

    pub fn read_dir(
        &self,
        ino: u64,
        cookie: u64,
        max_entries: u32,
        with_attrs: bool,
        caller: &Caller,
    ) -> Result<(Vec<DirEntry>, bool)> {
        read_dir_page(&self.inodes, &self.dirents, &self.cookies, ino, cookie, max_entries, with_attrs, caller)
    }

    pub fn getxattr(&self, ino: u64, name: &[u8], caller: &Caller) -> Result<Vec<u8>> {
        validate_xattr_name(name)?;
        access::check_xattr_read(&existing(self.inode(ino)?)?, name, caller)?;
        match self.xattrs.get((ino, name))? {
            Some(value) => Ok(value.value().to_vec()),
            None => Err(Errno::ENODATA.into()),
        }
    }

    pub fn listxattr(&self, ino: u64, caller: &Caller) -> Result<Vec<Vec<u8>>> {
        existing(self.inode(ino)?)?;
        let mut names = xattr_names(&self.xattrs, ino)?;
        // setxattr keeps lists within the bound; a longer one can only come from a damaged store.
        if xattr_list_bytes(&names) > XATTR_LIST_BYTES_MAX {
            return Err(Errno::E2BIG.into());
        }
        names.retain(|name| access::xattr_listed(name, caller));
        Ok(names)
    }

    /// How many inodes exist (linked or orphaned).
    pub fn inode_count(&self) -> Result<u64> {
        Ok(self.meta.get(META_INODES)?.map(|value| value.value()).unwrap_or(0))
    }

    /// Inodes kept alive only by open handles.
    pub fn orphans(&self) -> Result<Vec<u64>> {
        list_orphans(&self.orphans)
    }

    pub fn dirent_count(&self) -> Result<u64> {
        Ok(self.dirents.len()?)
    }
}

/// What a successful open did.
#[derive(Clone, Debug)]
pub struct Opened {
    pub attr: Attr,
    pub created: bool,
    /// O_TRUNC found a non-empty file: the caller truncates it next, under the inode's data lock
    /// (so no write can land between its size check and its size update).
    pub needs_truncate: bool,
}

/// Work left for after the commit of the batch that asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostCommit {
    RemoveObject(u64),
}

/// The `ONCE` table inside a batch transaction.
type OnceTable<'txn> = Table<'txn, (u64, u32), (u64, u64, u8, &'static [u8])>;

/// The namespace inside one batch transaction of the committer.
pub struct Ns<'txn> {
    inodes: Table<'txn, u64, &'static [u8]>,
    dirents: Table<'txn, (u64, &'static [u8]), (u64, u8, u64)>,
    cookies: Table<'txn, (u64, u64), &'static [u8]>,
    xattrs: Table<'txn, (u64, &'static [u8]), &'static [u8]>,
    orphans: Table<'txn, u64, i64>,
    meta: Table<'txn, &'static str, u64>,
    /// Opened on first use (a destroy, or the committer clearing rows): most batches never need it.
    doomed: Option<Table<'txn, u64, ()>>,
    /// Opened on first use, as `doomed`.
    once: Option<OnceTable<'txn>>,
    /// Opened on first use, as `doomed`.
    writable: Option<Table<'txn, u64, ()>>,
    /// Opened on first use, as `doomed`.
    cuts: Option<Table<'txn, u64, u64>>,
    /// Files whose last writer closed: their `WRITABLE` rows go with the next batch that commits
    /// anyway (the committer carries the set from batch to batch).
    pub(crate) unwritable: std::collections::HashSet<u64>,
    /// The inode the current operation made, if any (cleared before each operation).
    pub allocated: Option<u64>,
    /// The inode the current operation made, opened, linked, changed the attributes of or wrote,
    /// if any (cleared before each operation): what a resend after a crash is answered about.
    pub subject: Option<u64>,
    /// The current operation opened its subject (cleared before each operation).
    pub opened: bool,
    txn: &'txn WriteTransaction,
    /// The time stamped on every change in this batch.
    pub now: Timestamp,
    boot: u64,
    /// Writes made so far in this batch (the committer compares it around each operation).
    pub(crate) mutations: u64,
    /// Some operation of this batch changed the namespace and must be on disk before its reply.
    pub(crate) durable: bool,
    pub(crate) post_commit: Vec<PostCommit>,
    /// Set when an operation failed inside the store: the batch is aborted, not committed.
    pub(crate) failure: Option<String>,
    /// Inodes whose last link went in this batch. The caller of the operation decides, from its
    /// open handles, whether each is destroyed now or lives on as an orphan.
    pub newly_unlinked: Vec<u64>,
    /// What the current operation changed, as lease keys: recorded by the write primitives
    /// themselves, so no change can forget to revoke a lease. Cleared before each operation.
    pub touched: Vec<LeaseKey>,
}

impl<'txn> Ns<'txn> {
    pub(crate) fn new(txn: &'txn WriteTransaction, now: Timestamp, boot: u64) -> Result<Ns<'txn>> {
        Ok(Ns {
            inodes: txn.open_table(INODES)?,
            dirents: txn.open_table(DIRENTS)?,
            cookies: txn.open_table(COOKIES)?,
            xattrs: txn.open_table(XATTRS)?,
            orphans: txn.open_table(ORPHANS)?,
            meta: txn.open_table(META)?,
            doomed: None,
            once: None,
            writable: None,
            cuts: None,
            unwritable: std::collections::HashSet::new(),
            allocated: None,
            subject: None,
            opened: false,
            txn,
            now,
            boot,
            mutations: 0,
            durable: false,
            post_commit: Vec::new(),
            failure: None,
            newly_unlinked: Vec::new(),
            touched: Vec::new(),
        })
    }

    // ---- reads inside the batch (they see the batch's own earlier changes) ----

    pub fn inode(&self, ino: u64) -> Result<Option<InodeRecord>> {
        load_inode(&self.inodes, ino)
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        Ok(existing(self.inode(ino)?)?.attr(ino))
    }

    pub fn entry(&self, parent: u64, name: &[u8]) -> Result<Option<Dirent>> {
        load_dirent(&self.dirents, parent, name)
    }

    /// `ReadNs::searched_entry` inside the batch.
    pub fn searched_entry(&self, parent: u64, name: &[u8], caller: &Caller) -> Result<Option<Dirent>> {
        access::check_search(&self.directory(parent)?, caller)?;
        self.entry(parent, name)
    }

    /// Resolves a path of directory names from the root, by name, inside the batch (so atomic
    /// with the operation that follows it in the same closure); see `ReadNs::walk`.
    pub fn walk(&self, components: &[Vec<u8>], traversed: &mut Vec<LeaseKey>, caller: &Caller) -> Result<Walked> {
        walk_path(&self.inodes, &self.dirents, components, traversed, caller)
    }

    fn directory(&self, ino: u64) -> Result<InodeRecord> {
        usable_directory(self.inode(ino)?)
    }

    /// `ReadNs::lookup` inside the batch, atomic with what the closure does next (a pin).
    pub fn lookup(&self, parent: u64, name: &[u8], caller: &Caller) -> Result<Attr> {
        validate_name(name)?;
        access::check_search(&self.directory(parent)?, caller)?;
        let dirent = self.entry(parent, name)?.ok_or(StoreError::Fs(Errno::ENOENT))?;
        self.getattr(dirent.ino)
    }

    pub fn read_dir(
        &self,
        ino: u64,
        cookie: u64,
        max_entries: u32,
        with_attrs: bool,
        caller: &Caller,
    ) -> Result<(Vec<DirEntry>, bool)> {
        read_dir_page(&self.inodes, &self.dirents, &self.cookies, ino, cookie, max_entries, with_attrs, caller)
    }

    // ---- primitive writes: every write goes through these, and counts ----

    fn put_inode(&mut self, ino: u64, record: &InodeRecord) -> Result<()> {
        self.mutations += 1;
        self.touched.push(LeaseKey::Attr { ino });
        self.inodes.insert(ino, record.encode().as_slice())?;
        Ok(())
    }

    fn bump_meta(&mut self, key: &str, delta: i64) -> Result<u64> {
        self.mutations += 1;
        let current = self.meta.get(key)?.map(|value| value.value()).unwrap_or(0);
        let next = current
            .checked_add_signed(delta)
            .ok_or_else(|| StoreError::Corrupt(format!("meta counter {key} out of range")))?;
        self.meta.insert(key, next)?;
        Ok(current)
    }

    /// A new inode of `caller`'s in `directory` (`parent`); its group and mode as `access::new_owner`.
    fn alloc_inode(
        &mut self,
        kind: FileKind,
        perm: u32,
        caller: &Caller,
        parent: u64,
        directory: &InodeRecord,
    ) -> Result<(u64, InodeRecord)> {
        // Inode ids only grow, so an id is never reused at all, let alone with one generation.
        let ino = self.bump_meta(META_NEXT_INO, 1)?;
        assert!(ino > ROOT_INO, "META_NEXT_INO starts above the root");
        self.allocated = Some(ino);
        self.subject = Some(ino);
        self.bump_meta(META_INODES, 1)?;
        let (uid, gid, perm) = access::new_owner(directory, caller, kind, perm);
        let directory = kind == FileKind::Directory;
        let record = InodeRecord {
            generation: self.boot,
            kind,
            perm,
            uid,
            gid,
            nlink: if directory { 2 } else { 1 },
            size: 0,
            atime: self.now,
            mtime: self.now,
            ctime: self.now,
            parent: if directory { parent } else { 0 },
            next_cookie: FIRST_COOKIE,
            entries: 0,
            target: Vec::new(),
        };
        Ok((ino, record))
    }

    /// Adds `name -> ino` to a directory whose record the caller holds and writes afterwards.
    fn add_entry(
        &mut self,
        parent: u64,
        directory: &mut InodeRecord,
        name: &[u8],
        ino: u64,
        kind: FileKind,
    ) -> Result<()> {
        debug_assert!(self.entry(parent, name)?.is_none(), "callers check for an existing entry first");
        let cookie = directory.next_cookie;
        directory.next_cookie += 1;
        directory.entries += 1;
        if kind == FileKind::Directory {
            directory.nlink += 1;
        }
        directory.mtime = self.now;
        directory.ctime = self.now;
        self.mutations += 1;
        self.touch_entry(parent, name);
        self.dirents.insert((parent, name), (ino, kind_to_byte(kind), cookie))?;
        self.cookies.insert((parent, cookie), name)?;
        Ok(())
    }

    fn remove_entry(&mut self, parent: u64, directory: &mut InodeRecord, name: &[u8], dirent: Dirent) -> Result<()> {
        assert!(directory.entries > 0, "a directory with an entry counts it");
        directory.entries -= 1;
        if dirent.kind == FileKind::Directory {
            assert!(directory.nlink > 2, "a directory with a subdirectory has nlink above 2");
            directory.nlink -= 1;
        }
        directory.mtime = self.now;
        directory.ctime = self.now;
        self.mutations += 1;
        self.touch_entry(parent, name);
        let removed = self.dirents.remove((parent, name))?;
        assert!(removed.is_some(), "callers remove only entries they found");
        let removed = self.cookies.remove((parent, dirent.cookie))?;
        assert!(removed.is_some(), "every entry has its cookie");
        Ok(())
    }

    /// A name of a directory changes: its binding and the directory's listing.
    fn touch_entry(&mut self, parent: u64, name: &[u8]) {
        self.touched.push(LeaseKey::Name { parent, name: name.to_vec() });
        self.touched.push(LeaseKey::Listing { ino: parent });
    }

    /// Drops one link of a non-directory, or the only link of a directory being removed.
    fn drop_link(&mut self, ino: u64, record: &mut InodeRecord) -> Result<()> {
        if record.kind == FileKind::Directory {
            record.nlink = 0;
        } else {
            assert!(record.nlink > 0, "an inode reached by a name has a link");
            record.nlink -= 1;
        }
        record.ctime = self.now;
        if record.nlink == 0 {
            self.mutations += 1;
            self.orphans.insert(ino, self.now.secs)?;
            self.newly_unlinked.push(ino);
        }
        Ok(())
    }

    fn doomed_table(&mut self) -> Result<&mut Table<'txn, u64, ()>> {
        if self.doomed.is_none() {
            self.doomed = Some(self.txn.open_table(DOOMED)?);
        }
        Ok(self.doomed.as_mut().expect("opened above"))
    }

    /// Drops the `doomed` rows of objects removed since (the committer, in a batch that commits
    /// anyway). Not counted as a change: losing it in a crash only repeats a removal at start.
    pub(crate) fn forget_doomed(&mut self, inos: &[u64]) -> Result<()> {
        let doomed = self.doomed_table()?;
        for &ino in inos {
            doomed.remove(ino)?;
        }
        Ok(())
    }

    /// A regular file is open for writing (see `record::WRITABLE`): recorded durably before the
    /// open is answered, unless it is already.
    pub fn mark_writable(&mut self, ino: u64) -> Result<()> {
        // A removal still pending for it is off: the row must stay.
        self.unwritable.remove(&ino);
        let table = self.writable_table()?;
        if table.get(ino)?.is_none() {
            table.insert(ino, ())?;
            self.mutations += 1;
            self.durable = true;
        }
        Ok(())
    }

    /// The last writer of a file closed it: its `WRITABLE` row goes, with the next batch that
    /// commits anyway (a row left by a crash only costs a look at that file at the next start).
    pub fn unmark_writable(&mut self, ino: u64) {
        self.unwritable.insert(ino);
    }

    /// Drops the rows of `unwritable` (the committer, in a batch that commits).
    pub(crate) fn drop_unwritable(&mut self) -> Result<()> {
        let inos = std::mem::take(&mut self.unwritable);
        let table = self.writable_table()?;
        for ino in inos {
            table.remove(ino)?;
        }
        Ok(())
    }

    fn writable_table(&mut self) -> Result<&mut Table<'txn, u64, ()>> {
        if self.writable.is_none() {
            self.writable = Some(self.txn.open_table(WRITABLE)?);
        }
        Ok(self.writable.as_mut().expect("opened above"))
    }

    fn cuts_table(&mut self) -> Result<&mut Table<'txn, u64, u64>> {
        if self.cuts.is_none() {
            self.cuts = Some(self.txn.open_table(CUTS)?);
        }
        Ok(self.cuts.as_mut().expect("opened above"))
    }

    /// The size of a regular file changed from `old` to `new` (see `record::CUTS`): a shrink is
    /// recorded for the start to finish should the cut of the object not happen; a growth
    /// (the server cut the object to `old` first) ends any earlier record.
    fn note_size_change(&mut self, ino: u64, old: u64, new: u64) -> Result<()> {
        if new < old {
            self.cuts_table()?.insert(ino, new)?;
            self.mutations += 1;
        } else if new > old && self.cuts_table()?.remove(ino)?.is_some() {
            self.mutations += 1;
        }
        Ok(())
    }

    /// Records that this session's request `seq` on `slot` changed the store, with the inode it
    /// made (or changed) and that inode's record as the change left it: in the transaction of the
    /// change itself, so both survive a crash or neither does.
    pub fn record_once(&mut self, session: u64, slot: u32, seq: u64) -> Result<()> {
        let subject = self.subject.or(self.allocated).unwrap_or(0);
        let flags = if self.allocated.is_some() { ONCE_MADE } else { 0 } | if self.opened { ONCE_OPENED } else { 0 };
        let record = match subject {
            0 => Vec::new(),
            ino => self.inode(ino)?.map(|record| record.encode()).unwrap_or_default(),
        };
        if self.once.is_none() {
            self.once = Some(self.txn.open_table(ONCE)?);
        }
        self.mutations += 1;
        self.once.as_mut().expect("opened above").insert((session, slot), (seq, subject, flags, record.as_slice()))?;
        Ok(())
    }

    /// A later change of the request recorded on `slot` as `seq` (its first change wrote the
    /// row): flags the row `ONCE_FOLLOWED` and keeps the subject's record as this change left it,
    /// in this change's transaction.
    pub fn record_once_followed(&mut self, session: u64, slot: u32, seq: u64) -> Result<()> {
        if self.once.is_none() {
            self.once = Some(self.txn.open_table(ONCE)?);
        }
        let row = self.once.as_mut().expect("opened above").get((session, slot))?.map(|row| {
            let (row_seq, subject, flags, record) = row.value();
            (row_seq, subject, flags, record.to_vec())
        });
        // The row may be gone (the session ended meanwhile) or newer: nothing to flag then.
        let Some((row_seq, subject, flags, record)) = row else { return Ok(()) };
        if row_seq != seq {
            return Ok(());
        }
        // The subject as this step left it: what a resend answers (an open's truncated size).
        let record = match subject {
            0 => record,
            ino => self.inode(ino)?.map(|record| record.encode()).unwrap_or(record),
        };
        // Not made durable here: a truncate lost in a crash with its flag is run again by the
        // resend, which is right. (Made durable, the truncate outlived a crash that came before
        // its data object was cut, and the next start took the file's size back from the
        // object's length: simulator seed 996.)
        self.mutations += 1;
        let table = self.once.as_mut().expect("opened above");
        table.insert((session, slot), (seq, subject, flags | ONCE_FOLLOWED, record.as_slice()))?;
        Ok(())
    }

    /// A new client session, remembered across restarts until it ends (`forget_session`).
    pub fn add_session(&mut self, session: u64) -> Result<()> {
        self.mutations += 1;
        self.durable = true;
        self.txn.open_table(SESSIONS)?.insert(session, ())?;
        Ok(())
    }

    /// The deadlines of earlier runs' sessions still expected back (`RECOVERY_DEADLINES`), in
    /// milliseconds since the epoch, by session.
    pub fn recovery_deadlines(&mut self) -> Result<Vec<(u64, i64)>> {
        let table = self.txn.open_table(RECOVERY_DEADLINES)?;
        let mut deadlines = Vec::new();
        for item in table.iter()? {
            let (session, deadline) = item?;
            deadlines.push((session.value(), deadline.value()));
        }
        Ok(deadlines)
    }

    /// `session` must come back by `deadline` (milliseconds since the epoch), whatever restarts
    /// come meanwhile.
    pub fn set_recovery_deadline(&mut self, session: u64, deadline: i64) -> Result<()> {
        self.mutations += 1;
        self.durable = true;
        self.txn.open_table(RECOVERY_DEADLINES)?.insert(session, deadline)?;
        Ok(())
    }

    /// `session` came back: a later restart gives it a grace of its own again.
    pub fn clear_recovery_deadline(&mut self, session: u64) -> Result<()> {
        self.mutations += 1;
        self.durable = true;
        self.txn.open_table(RECOVERY_DEADLINES)?.remove(session)?;
        Ok(())
    }

    /// A session ended (or was evicted, or never came back after a restart): its row, its
    /// recovery deadline and its `ONCE` rows go.
    pub fn forget_session(&mut self, session: u64) -> Result<()> {
        self.mutations += 1;
        self.durable = true;
        self.txn.open_table(SESSIONS)?.remove(session)?;
        self.txn.open_table(RECOVERY_DEADLINES)?.remove(session)?;
        let mut once = match self.once.take() {
            Some(table) => table,
            None => self.txn.open_table(ONCE)?,
        };
        let slots: Vec<u32> = once
            .range((session, 0)..=(session, u32::MAX))?
            .map(|item| item.map(|(key, _)| key.value().1))
            .collect::<std::result::Result<_, _>>()?;
        for slot in slots {
            once.remove((session, slot))?;
        }
        self.once = Some(once);
        Ok(())
    }

    /// Removes an inode whose last link is gone and which nothing holds open.
    pub fn destroy(&mut self, ino: u64) -> Result<()> {
        let record = self.inode(ino)?.ok_or_else(|| StoreError::Corrupt(format!("destroying missing inode {ino}")))?;
        assert_eq!(record.nlink, 0, "only unlinked inodes are destroyed");
        assert_eq!(record.entries, 0, "only empty directories are destroyed");
        self.mutations += 1;
        self.durable = true;
        self.touched.push(LeaseKey::Attr { ino });
        self.inodes.remove(ino)?;
        self.orphans.remove(ino)?;
        let names = xattr_names(&self.xattrs, ino)?;
        for name in names {
            self.xattrs.remove((ino, name.as_slice()))?;
        }
        self.bump_meta(META_INODES, -1)?;
        if record.kind == FileKind::Regular {
            self.doomed_table()?.insert(ino, ())?;
            self.cuts_table()?.remove(ino)?;
            self.post_commit.push(PostCommit::RemoveObject(ino));
        }
        Ok(())
    }

    // ---- operations ----

    /// Resolves `name` in `parent` and opens it, creating a regular file if asked: one atomic
    /// step, so no other change can come between the lookup and the open.
    pub fn open(&mut self, parent: u64, name: &[u8], flags: OpenFlags, perm: u32, caller: &Caller) -> Result<Opened> {
        validate_name(name)?;
        if !flags.is_known() {
            return Err(Errno::EINVAL.into());
        }
        let mut directory = self.directory(parent)?;
        access::check_search(&directory, caller)?;
        match self.entry(parent, name)? {
            Some(dirent) => {
                if flags.contains(OpenFlags::CREATE) && flags.contains(OpenFlags::EXCLUSIVE) {
                    return Err(Errno::EEXIST.into());
                }
                self.open_existing(dirent.ino, flags, caller)
            }
            None => {
                if !flags.contains(OpenFlags::CREATE) {
                    return Err(Errno::ENOENT.into());
                }
                if flags.contains(OpenFlags::DIRECTORY) {
                    return Err(Errno::EINVAL.into());
                }
                // The creator's handle is not checked against the new file's mode (a file made
                // 0444 is still open for writing to its creator), as open(2) rules.
                access::check(&directory, caller, Want::WRITE_EXEC)?;
                let (ino, record) = self.alloc_inode(FileKind::Regular, perm, caller, parent, &directory)?;
                self.add_entry(parent, &mut directory, name, ino, FileKind::Regular)?;
                self.put_inode(parent, &directory)?;
                self.put_inode(ino, &record)?;
                self.durable = true;
                self.opened = true;
                if flags.writes() {
                    self.mark_writable(ino)?;
                }
                Ok(Opened { attr: record.attr(ino), created: true, needs_truncate: false })
            }
        }
    }

    /// Opens an inode by id. A missing inode is ESTALE. Orphans can be opened (a kernel that
    /// still references one may open it again). `caller` needs read permission to read, write
    /// permission to write or truncate.
    pub fn open_existing(&mut self, ino: u64, flags: OpenFlags, caller: &Caller) -> Result<Opened> {
        if !flags.is_known() {
            return Err(Errno::EINVAL.into());
        }
        let record = existing(self.inode(ino)?)?;
        let writing = flags.writes();
        match record.kind {
            FileKind::Symlink => return Err(Errno::ELOOP.into()),
            FileKind::Directory if writing || flags.contains(OpenFlags::TRUNCATE) => {
                return Err(Errno::EISDIR.into());
            }
            FileKind::Regular if flags.contains(OpenFlags::DIRECTORY) => {
                return Err(Errno::ENOTDIR.into());
            }
            _ => {}
        }
        let truncates = flags.contains(OpenFlags::TRUNCATE);
        access::check(&record, caller, access::open_wants(flags.contains(OpenFlags::READ), writing, truncates))?;
        self.subject = Some(ino);
        self.opened = true;
        if writing && record.kind == FileKind::Regular {
            self.mark_writable(ino)?;
        }
        let needs_truncate = flags.contains(OpenFlags::TRUNCATE) && writing && record.size > 0;
        if needs_truncate {
            // A change in two steps: this open counts as one even when it wrote nothing, so its
            // request's `ONCE` row is written now, with the inode it opened, and the truncate
            // flags it (`record_once_followed`): a crash between the two steps is then told
            // apart from one after both, and a resend truncates only in the first case.
            self.mutations += 1;
        }
        Ok(Opened { needs_truncate, attr: record.attr(ino), created: false })
    }

    pub fn mkdir(&mut self, parent: u64, name: &[u8], perm: u32, caller: &Caller) -> Result<Attr> {
        validate_name(name)?;
        let mut directory = self.directory(parent)?;
        access::check_search(&directory, caller)?;
        if self.entry(parent, name)?.is_some() {
            return Err(Errno::EEXIST.into());
        }
        access::check(&directory, caller, Want::WRITE_EXEC)?;
        if directory.nlink - 2 >= SUBDIRECTORIES_MAX {
            return Err(Errno::EMLINK.into());
        }
        let (ino, record) = self.alloc_inode(FileKind::Directory, perm, caller, parent, &directory)?;
        self.add_entry(parent, &mut directory, name, ino, FileKind::Directory)?;
        self.put_inode(parent, &directory)?;
        self.put_inode(ino, &record)?;
        self.durable = true;
        Ok(record.attr(ino))
    }

    pub fn symlink(&mut self, parent: u64, name: &[u8], target: &[u8], caller: &Caller) -> Result<Attr> {
        validate_name(name)?;
        validate_symlink_target(target)?;
        let mut directory = self.directory(parent)?;
        access::check_search(&directory, caller)?;
        if self.entry(parent, name)?.is_some() {
            return Err(Errno::EEXIST.into());
        }
        access::check(&directory, caller, Want::WRITE_EXEC)?;
        let (ino, mut record) = self.alloc_inode(FileKind::Symlink, 0o777, caller, parent, &directory)?;
        record.size = target.len() as u64;
        record.target = target.to_vec();
        self.add_entry(parent, &mut directory, name, ino, FileKind::Symlink)?;
        self.put_inode(parent, &directory)?;
        self.put_inode(ino, &record)?;
        self.durable = true;
        Ok(record.attr(ino))
    }

    pub fn link(&mut self, ino: u64, new_parent: u64, new_name: &[u8], caller: &Caller) -> Result<Attr> {
        self.subject = Some(ino);
        validate_name(new_name)?;
        let mut record = existing(self.inode(ino)?)?;
        if record.kind == FileKind::Directory {
            return Err(Errno::EPERM.into());
        }
        if record.nlink == 0 {
            return Err(Errno::ENOENT.into());
        }
        if record.nlink >= LINK_COUNT_MAX {
            return Err(Errno::EMLINK.into());
        }
        let mut directory = self.directory(new_parent)?;
        access::check_search(&directory, caller)?;
        if self.entry(new_parent, new_name)?.is_some() {
            return Err(Errno::EEXIST.into());
        }
        access::check(&directory, caller, Want::WRITE_EXEC)?;
        access::check_link_source(&record, caller)?;
        record.nlink += 1;
        record.ctime = self.now;
        self.add_entry(new_parent, &mut directory, new_name, ino, record.kind)?;
        self.put_inode(new_parent, &directory)?;
        self.put_inode(ino, &record)?;
        self.durable = true;
        Ok(record.attr(ino))
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8], caller: &Caller) -> Result<()> {
        validate_name(name)?;
        let mut directory = self.directory(parent)?;
        access::check_search(&directory, caller)?;
        let dirent = self.entry(parent, name)?.ok_or(StoreError::Fs(Errno::ENOENT))?;
        if dirent.kind == FileKind::Directory {
            return Err(Errno::EISDIR.into());
        }
        let mut record = self
            .inode(dirent.ino)?
            .ok_or_else(|| StoreError::Corrupt(format!("entry points at missing inode {}", dirent.ino)))?;
        access::check_delete(&directory, &record, caller)?;
        self.remove_entry(parent, &mut directory, name, dirent)?;
        self.drop_link(dirent.ino, &mut record)?;
        self.put_inode(parent, &directory)?;
        self.put_inode(dirent.ino, &record)?;
        self.durable = true;
        Ok(())
    }

    pub fn rmdir(&mut self, parent: u64, name: &[u8], caller: &Caller) -> Result<()> {
        validate_name(name)?;
        let mut directory = self.directory(parent)?;
        access::check_search(&directory, caller)?;
        let dirent = self.entry(parent, name)?.ok_or(StoreError::Fs(Errno::ENOENT))?;
        if dirent.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR.into());
        }
        let mut record = self
            .inode(dirent.ino)?
            .ok_or_else(|| StoreError::Corrupt(format!("entry points at missing inode {}", dirent.ino)))?;
        access::check_delete(&directory, &record, caller)?;
        if record.entries > 0 {
            return Err(Errno::ENOTEMPTY.into());
        }
        self.remove_entry(parent, &mut directory, name, dirent)?;
        self.drop_link(dirent.ino, &mut record)?;
        self.put_inode(parent, &directory)?;
        self.put_inode(dirent.ino, &record)?;
        self.durable = true;
        Ok(())
    }

    /// Is `ancestor` the directory `ino` or one of its ancestors?
    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> Result<bool> {
        for _ in 0..DIRECTORY_DEPTH_MAX {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT_INO {
                return Ok(false);
            }
            let record = self
                .inode(ino)?
                .ok_or_else(|| StoreError::Corrupt(format!("directory chain reaches missing inode {ino}")))?;
            ino = record.parent;
        }
        Err(StoreError::Corrupt(format!("directory chain above {ino} is deeper than {DIRECTORY_DEPTH_MAX}")))
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        mode: RenameMode,
        caller: &Caller,
    ) -> Result<()> {
        validate_name(name)?;
        validate_name(new_name)?;
        access::check_search(&self.directory(parent)?, caller)?;
        access::check_search(&self.directory(new_parent)?, caller)?;
        let source = self.entry(parent, name)?.ok_or(StoreError::Fs(Errno::ENOENT))?;
        let target = self.entry(new_parent, new_name)?;
        if parent == new_parent && name == new_name {
            return match (mode, target) {
                (RenameMode::NoReplace, _) => Err(Errno::EEXIST.into()),
                _ => Ok(()),
            };
        }
        // A directory may not move into itself or below itself.
        if source.kind == FileKind::Directory && self.is_ancestor(source.ino, new_parent)? {
            return Err(Errno::EINVAL.into());
        }
        match (mode, target) {
            (RenameMode::Exchange, None) => Err(Errno::ENOENT.into()),
            (RenameMode::Exchange, Some(target)) => {
                if target.kind == FileKind::Directory && self.is_ancestor(target.ino, parent)? {
                    return Err(Errno::EINVAL.into());
                }
                if source.ino != target.ino {
                    self.check_rename(parent, source, new_parent, Some(target), true, caller)?;
                }
                self.exchange(parent, name, source, new_parent, new_name, target)
            }
            (RenameMode::NoReplace, Some(_)) => Err(Errno::EEXIST.into()),
            (_, Some(target)) if target.ino == source.ino => Ok(()), // two links of one file: POSIX says do nothing
            (_, target) => {
                self.check_rename(parent, source, new_parent, target, false, caller)?;
                self.move_entry(parent, name, source, new_parent, new_name, target)
            }
        }
    }

    /// May `caller` move `source` from `parent` to `new_parent`, replacing (or, exchanging,
    /// moving back) `target`? Each name removed is a deletion (`access::check_delete`, with the
    /// sticky rule), the directory gaining a name needs write and search permission, and a
    /// directory changing parents needs write permission on itself (its `..` changes).
    fn check_rename(
        &self,
        parent: u64,
        source: Dirent,
        new_parent: u64,
        target: Option<Dirent>,
        exchange: bool,
        caller: &Caller,
    ) -> Result<()> {
        let missing = |ino: u64| StoreError::Corrupt(format!("entry points at missing inode {ino}"));
        let from = self.directory(parent)?;
        let to = self.directory(new_parent)?;
        let moved = self.inode(source.ino)?.ok_or_else(|| missing(source.ino))?;
        access::check_delete(&from, &moved, caller)?;
        match target {
            Some(target) => {
                let replaced = self.inode(target.ino)?.ok_or_else(|| missing(target.ino))?;
                access::check_delete(&to, &replaced, caller)?;
                if exchange && parent != new_parent && replaced.kind == FileKind::Directory {
                    access::check(&replaced, caller, Want::WRITE)?;
                }
            }
            None => access::check(&to, caller, Want::WRITE_EXEC)?,
        }
        if parent != new_parent && moved.kind == FileKind::Directory {
            access::check(&moved, caller, Want::WRITE)?;
        }
        Ok(())
    }

    fn move_entry(
        &mut self,
        parent: u64,
        name: &[u8],
        source: Dirent,
        new_parent: u64,
        new_name: &[u8],
        target: Option<Dirent>,
    ) -> Result<()> {
        let mut replaced = None;
        if let Some(target) = target {
            let record = self
                .inode(target.ino)?
                .ok_or_else(|| StoreError::Corrupt(format!("entry points at missing inode {}", target.ino)))?;
            match (source.kind == FileKind::Directory, target.kind == FileKind::Directory) {
                (true, false) => return Err(Errno::ENOTDIR.into()),
                (false, true) => return Err(Errno::EISDIR.into()),
                (true, true) if record.entries > 0 => return Err(Errno::ENOTEMPTY.into()),
                _ => {}
            }
            replaced = Some((target, record));
        }
        let mut moved = self
            .inode(source.ino)?
            .ok_or_else(|| StoreError::Corrupt(format!("entry points at missing inode {}", source.ino)))?;
        if source.kind == FileKind::Directory && parent != new_parent && replaced.is_none() {
            let to = self.directory(new_parent)?;
            if to.nlink - 2 >= SUBDIRECTORIES_MAX {
                return Err(Errno::EMLINK.into());
            }
        }
        // Preconditions are checked; from here on every step writes.
        let mut from = self.directory(parent)?;
        self.remove_entry(parent, &mut from, name, source)?;
        self.put_inode(parent, &from)?;
        let mut to = self.directory(new_parent)?;
        if let Some((target, mut record)) = replaced {
            self.remove_entry(new_parent, &mut to, new_name, target)?;
            self.drop_link(target.ino, &mut record)?;
            self.put_inode(target.ino, &record)?;
        }
        self.add_entry(new_parent, &mut to, new_name, source.ino, source.kind)?;
        self.put_inode(new_parent, &to)?;
        moved.ctime = self.now;
        if moved.kind == FileKind::Directory {
            moved.parent = new_parent;
        }
        self.put_inode(source.ino, &moved)?;
        self.durable = true;
        Ok(())
    }

    fn exchange(
        &mut self,
        parent: u64,
        name: &[u8],
        source: Dirent,
        new_parent: u64,
        new_name: &[u8],
        target: Dirent,
    ) -> Result<()> {
        if source.ino == target.ino {
            return Ok(());
        }
        if parent != new_parent && source.kind != target.kind {
            // One parent gains a subdirectory.
            let gaining = if source.kind == FileKind::Directory { new_parent } else { parent };
            if self.directory(gaining)?.nlink - 2 >= SUBDIRECTORIES_MAX {
                return Err(Errno::EMLINK.into());
            }
        }
        // Each name keeps its cookie and gets the other's inode.
        self.mutations += 1;
        self.touch_entry(parent, name);
        self.touch_entry(new_parent, new_name);
        self.dirents.insert((parent, name), (target.ino, kind_to_byte(target.kind), source.cookie))?;
        self.dirents.insert((new_parent, new_name), (source.ino, kind_to_byte(source.kind), target.cookie))?;
        let mut from = self.directory(parent)?;
        from.mtime = self.now;
        from.ctime = self.now;
        if parent != new_parent {
            let mut to = self.directory(new_parent)?;
            to.mtime = self.now;
            to.ctime = self.now;
            // A directory changing parents carries one parent link with it.
            let source_dir = i64::from(source.kind == FileKind::Directory);
            let target_dir = i64::from(target.kind == FileKind::Directory);
            from.nlink = (i64::from(from.nlink) - source_dir + target_dir) as u32;
            to.nlink = (i64::from(to.nlink) - target_dir + source_dir) as u32;
            self.put_inode(new_parent, &to)?;
        }
        self.put_inode(parent, &from)?;
        for (dirent, home) in [(source, new_parent), (target, parent)] {
            let mut record = self
                .inode(dirent.ino)?
                .ok_or_else(|| StoreError::Corrupt(format!("entry points at missing inode {}", dirent.ino)))?;
            record.ctime = self.now;
            if record.kind == FileKind::Directory {
                record.parent = home;
            }
            self.put_inode(dirent.ino, &record)?;
        }
        self.durable = true;
        Ok(())
    }

    /// Changes attributes, as `access::check_setattr` allows `caller` (`by_handle`: a size change
    /// through a handle open for writing). Returns the new attributes and the size before.
    pub fn setattr(&mut self, ino: u64, set: &SetAttrIn, caller: &Caller, by_handle: bool) -> Result<(Attr, u64)> {
        self.subject = Some(ino);
        let mut record = existing(self.inode(ino)?)?;
        let perm = access::check_setattr(&record, set, caller, by_handle)?;
        let old_size = record.size;
        if let Some(size) = set.size {
            match record.kind {
                FileKind::Directory => return Err(Errno::EISDIR.into()),
                FileKind::Symlink => return Err(Errno::EINVAL.into()),
                FileKind::Regular => {}
            }
            if size > FILE_SIZE_MAX {
                return Err(Errno::EFBIG.into());
            }
            if size != record.size {
                self.note_size_change(ino, record.size, size)?;
                record.size = size;
                record.mtime = self.now;
            }
            access::kill_privileges(&mut record, caller);
        }
        if let Some(perm) = perm {
            record.perm = perm;
        }
        if let Some(uid) = set.uid {
            record.uid = uid;
        }
        if let Some(gid) = set.gid {
            record.gid = gid;
        }
        let resolve = |time: TimeSet| match time {
            TimeSet::Now => self.now,
            TimeSet::At(at) => at,
        };
        if let Some(atime) = set.atime {
            record.atime = resolve(atime);
        }
        if let Some(mtime) = set.mtime {
            record.mtime = resolve(mtime);
        }
        record.ctime = self.now;
        self.put_inode(ino, &record)?;
        self.durable = true;
        Ok((record.attr(ino), old_size))
    }

    /// Records a data write that ended at `end`: the size grows to cover it, mtime and ctime move.
    /// Not durable by itself: file data is durable at fsync, as on a local file system.
    /// A write by anyone but the superuser drops set-user-id (`access::kill_privileges`).
    pub fn note_write(&mut self, ino: u64, end: u64, caller: &Caller) -> Result<Attr> {
        let mut record = existing(self.inode(ino)?)?;
        self.subject = Some(ino);
        debug_assert_eq!(record.kind, FileKind::Regular, "only regular files are written");
        access::kill_privileges(&mut record, caller);
        if self.cuts_table()?.remove(ino)?.is_some() {
            // The bytes of this write may lie past the recorded cut: the row may not survive
            // them, durably, or a start would cut them away (`record::CUTS`).
            self.mutations += 1;
            self.durable = true;
        }
        record.size = record.size.max(end);
        record.mtime = self.now;
        record.ctime = self.now;
        self.put_inode(ino, &record)?;
        Ok(record.attr(ino))
    }

    /// Writes made so far in this batch (to check that a failed operation made none).
    pub fn mutation_count(&self) -> u64 {
        self.mutations
    }

    /// Makes the batch durable even if nothing in it asked to be (fsync): counted as a change so
    /// the batch commits, and that durable commit persists every earlier non-durable one.
    pub fn require_durable(&mut self) {
        self.mutations += 1;
        self.durable = true;
    }

    pub fn setxattr(
        &mut self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        mode: rustre_proto::XattrMode,
        caller: &Caller,
    ) -> Result<()> {
        validate_xattr_name(name)?;
        if value.len() > XATTR_VALUE_LEN_MAX {
            return Err(Errno::E2BIG.into());
        }
        let mut record = existing(self.inode(ino)?)?;
        access::check_xattr_write(&record, name, caller)?;
        let present = self.xattrs.get((ino, name))?.is_some();
        match (mode, present) {
            (rustre_proto::XattrMode::Create, true) => return Err(Errno::EEXIST.into()),
            (rustre_proto::XattrMode::Replace, false) => return Err(Errno::ENODATA.into()),
            _ => {}
        }
        if !present && xattr_list_bytes(&xattr_names(&self.xattrs, ino)?) + name.len() + 1 > XATTR_LIST_BYTES_MAX {
            return Err(Errno::ENOSPC.into());
        }
        self.mutations += 1;
        self.xattrs.insert((ino, name), value)?;
        record.ctime = self.now;
        self.put_inode(ino, &record)?;
        self.durable = true;
        Ok(())
    }

    pub fn removexattr(&mut self, ino: u64, name: &[u8], caller: &Caller) -> Result<()> {
        validate_xattr_name(name)?;
        let mut record = existing(self.inode(ino)?)?;
        access::check_xattr_write(&record, name, caller)?;
        if self.xattrs.get((ino, name))?.is_none() {
            return Err(Errno::ENODATA.into());
        }
        self.mutations += 1;
        self.xattrs.remove((ino, name))?;
        record.ctime = self.now;
        self.put_inode(ino, &record)?;
        self.durable = true;
        Ok(())
    }

    /// Inodes left as orphans by an earlier run of the server.
    pub fn orphans(&self) -> Result<Vec<u64>> {
        list_orphans(&self.orphans)
    }

    /// At most `max` orphans with ids above `after`, in id order: one page of a listing, read
    /// without going through the orphans before it.
    pub fn orphans_after(&self, after: u64, max: usize) -> Result<Vec<u64>> {
        let Some(first) = after.checked_add(1) else { return Ok(Vec::new()) };
        let mut orphans = Vec::new();
        for item in self.orphans.range(first..)?.take(max) {
            orphans.push(item?.0.value());
        }
        Ok(orphans)
    }
}

/// Makes a fresh store's tables, counters and root directory. Returns the boot number.
pub(crate) fn initialize(txn: &WriteTransaction, now: Timestamp) -> Result<u64> {
    let mut meta = txn.open_table(META)?;
    let format = meta.get(META_FORMAT)?.map(|value| value.value());
    match format {
        Some(FORMAT_VERSION) => {}
        Some(other) => {
            return Err(StoreError::Corrupt(format!("store format {other}, this build reads {FORMAT_VERSION}")));
        }
        None => {
            meta.insert(META_FORMAT, FORMAT_VERSION)?;
            meta.insert(META_NEXT_INO, ROOT_INO + 1)?;
            meta.insert(META_INODES, 1)?;
            let root = InodeRecord {
                generation: 1,
                kind: FileKind::Directory,
                perm: 0o755,
                uid: 0,
                gid: 0,
                nlink: 2,
                size: 0,
                atime: now,
                mtime: now,
                ctime: now,
                parent: ROOT_INO,
                next_cookie: FIRST_COOKIE,
                entries: 0,
                target: Vec::new(),
            };
            txn.open_table(INODES)?.insert(ROOT_INO, root.encode().as_slice())?;
        }
    }
    let boot = meta.get(META_BOOT)?.map(|value| value.value()).unwrap_or(0) + 1;
    meta.insert(META_BOOT, boot)?;
    // Create every table, so read transactions can open them all.
    txn.open_table(INODES)?;
    txn.open_table(DIRENTS)?;
    txn.open_table(COOKIES)?;
    txn.open_table(XATTRS)?;
    txn.open_table(ORPHANS)?;
    txn.open_table(DOOMED)?;
    txn.open_table(SESSIONS)?;
    txn.open_table(RECOVERY_DEADLINES)?;
    txn.open_table(ONCE)?;
    txn.open_table(WRITABLE)?;
    txn.open_table(CUTS)?;
    // Request records in the first layout: their requests' answers are long gone.
    let legacy: redb::TableDefinition<(u64, u32), (u64, u64, u8)> =
        redb::TableDefinition::new(crate::record::ONCE_LEGACY);
    txn.delete_table(legacy)?;
    Ok(boot)
}

/// At start, before `reconcile_writable`: cuts each data object a shrink of its file left
/// longer than the file (`record::CUTS`: a crash between the shrink's commit and the cut), makes
/// the cut durable, and drops the rows. Returns how many objects were cut.
pub(crate) fn finish_cuts(txn: &WriteTransaction, objects: &dyn crate::ObjectStore) -> Result<usize> {
    let mut cuts = txn.open_table(CUTS)?;
    let mut rows = Vec::new();
    for item in cuts.iter()? {
        let (ino, size) = item?;
        rows.push((ino.value(), size.value()));
    }
    let inodes = txn.open_table(INODES)?;
    let mut finished = 0;
    for (ino, size) in rows {
        cuts.remove(ino)?;
        let Some(record) = load_inode(&inodes, ino)? else { continue };
        if record.kind != FileKind::Regular {
            continue;
        }
        // A durable size above the recorded one came later, and its bytes are to be kept.
        let size = size.max(record.size);
        let failed = |error| StoreError::io(format!("cutting the object of inode {ino} to {size}"), error);
        if objects.len(ino).map_err(failed)? > size {
            tracing::info!(ino, size, "cutting the data object of a file shrunk before a crash");
            objects.set_len(ino, size).map_err(failed)?;
            objects.sync(ino).map_err(failed)?;
            finished += 1;
        }
    }
    Ok(finished)
}

/// At start: every file that was open for writing when the server stopped takes its size from
/// its data object if that is longer (a write whose size update a crash lost; see
/// `record::WRITABLE`), with mtime and ctime at `now`, and the rows go. Returns how many sizes
/// were restored.
pub(crate) fn reconcile_writable(
    txn: &WriteTransaction,
    objects: &dyn crate::ObjectStore,
    now: Timestamp,
) -> Result<usize> {
    let mut writable = txn.open_table(WRITABLE)?;
    let mut inos = Vec::new();
    for item in writable.iter()? {
        inos.push(item?.0.value());
    }
    let mut inodes = txn.open_table(INODES)?;
    let mut restored = 0;
    for ino in inos {
        writable.remove(ino)?;
        let Some(mut record) = load_inode(&inodes, ino)? else { continue };
        if record.kind != FileKind::Regular {
            continue;
        }
        let len =
            objects.len(ino).map_err(|error| StoreError::io(format!("reading the length of object {ino}"), error))?;
        if len > record.size {
            tracing::info!(ino, size = record.size, len, "restoring the size of a file written before a crash");
            record.size = len;
            // The data that grew the file is a change of its content: nobody may see the new
            // size beside the mtime of before (a write moves both at once, `note_write`).
            record.mtime = now;
            record.ctime = now;
            inodes.insert(ino, record.encode().as_slice())?;
            restored += 1;
        }
    }
    Ok(restored)
}

/// Removes the data objects of inodes destroyed before a crash that came before their removal,
/// and drops their rows (`DOOMED`). Runs in the open transaction.
pub(crate) fn remove_doomed(txn: &WriteTransaction, objects: &dyn crate::ObjectStore) -> Result<usize> {
    let mut doomed = txn.open_table(DOOMED)?;
    let mut inos = Vec::new();
    for item in doomed.iter()? {
        inos.push(item?.0.value());
    }
    for &ino in &inos {
        objects
            .remove(ino)
            .map_err(|error| StoreError::io(format!("removing the object of destroyed inode {ino}"), error))?;
        doomed.remove(ino)?;
    }
    Ok(inos.len())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use rustre_proto::clock::SystemClock;

    use super::*;
    use crate::Store;

    /// One path component as a hostile client might send it.
    fn component() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"d".to_vec()),
            Just(b"f".to_vec()),
            Just(b"s".to_vec()),
            Just(b"closed".to_vec()),
            Just(b"..".to_vec()),
            Just(b".".to_vec()),
            Just(Vec::new()),
            Just(b"a/b".to_vec()),
            Just(b"a\0b".to_vec()),
            Just(vec![b'x'; 256]),
            proptest::collection::vec(any::<u8>(), 0..8),
        ]
    }

    // Paths from the network (`AtPath`, `OnPath`) are walked by the server component by
    // component: whatever they hold, the walk ends in a directory, at a symlink (never followed),
    // or in a plain refusal; it never panics, and it never goes through a name that is not one.
    #[test]
    fn the_server_walks_any_path_without_panic_or_invalid_names() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let store = Store::open(dir.path(), &SystemClock).unwrap();
        let committer = store.start_inline_committer(Arc::new(SystemClock), ());
        let root = Caller::ROOT;
        runtime
            .block_on(committer.run(move |ns, _| {
                let d = ns.mkdir(ROOT_INO, b"d", 0o755, &root)?.ino;
                ns.open(d, b"f", OpenFlags::CREATE | OpenFlags::WRITE, 0o644, &root)?;
                ns.symlink(d, b"s", b"/elsewhere", &root)?;
                ns.mkdir(d, b"closed", 0o700, &root)?;
                Ok(())
            }))
            .unwrap();
        let user = Caller::new(1000, 1000);
        proptest!(ProptestConfig::with_cases(2000), |(path in proptest::collection::vec(component(), 0..6), as_user: bool)| {
            let caller = if as_user { &user } else { &Caller::ROOT };
            let ns = store.read().unwrap();
            let mut traversed = Vec::new();
            match ns.walk(&path, &mut traversed, caller) {
                Ok(Walked::Directory(ino)) => {
                    prop_assert!(ns.inode(ino).unwrap().is_some_and(|record| record.kind == FileKind::Directory));
                    for component in &path {
                        prop_assert!(component == b".." || validate_name(component).is_ok(), "{component:?}");
                    }
                }
                Ok(Walked::Symlink { index, target }) => {
                    prop_assert_eq!(&path[index], &b"s".to_vec());
                    prop_assert_eq!(target, b"/elsewhere".to_vec());
                }
                Err(StoreError::Fs(errno)) => {
                    let expected = [Errno::EINVAL, Errno::ENAMETOOLONG, Errno::ENOENT, Errno::ENOTDIR, Errno::EACCES];
                    prop_assert!(expected.contains(&errno), "{errno:?} for {path:?}");
                    prop_assert!(errno != Errno::EACCES || as_user);
                }
                Err(other) => prop_assert!(false, "the store failed: {other}"),
            }
            for key in &traversed {
                if let LeaseKey::Name { name, .. } = key {
                    prop_assert!(validate_name(name).is_ok(), "walked through {name:?}");
                }
            }
        });
    }
}
