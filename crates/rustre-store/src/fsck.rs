//! The offline check of a store (`rustre fsck`): every rule of `docs/storage.md` that ties the
//! tables and the data objects together, checked against the whole store, and the safe repairs.
//!
//! The check reads one redb snapshot and the `objects/` directory, and holds an index of the
//! namespace in memory (about a hundred bytes per inode and per entry: an offline tool may; the
//! server never does). It takes the data directory's lock, so it never runs beside a server.
//!
//! What counts:
//! - a **problem** breaks a rule (a dangling entry, a wrong link count, data without an inode);
//!   `repairable` problems are fixed by `--repair` without losing anything: what has no name any
//!   more is linked into `/lost+found`, data objects nobody owns are moved to `DIR/lost+found/`,
//!   counts are recomputed. A problem that cannot be fixed safely (an undecodable record, a
//!   directory cycle) is only reported;
//! - a **note** is what a crash leaves behind by design and the server cleans up itself: orphans
//!   (destroyed after the grace period unless a client reclaims them), objects of destroyed inodes
//!   not yet removed (`doomed`), bytes of an object past its file's size (never read). A store with
//!   notes and no problems is clean.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};
use rustre_proto::name::validate_name;
use rustre_proto::{FileKind, ROOT_INO, Timestamp};

use crate::error::{Result, StoreError};
use crate::objects::ObjectStore;
use crate::record::*;

/// The directory under the root that repairs link nameless inodes into.
pub const LOST_AND_FOUND: &[u8] = b"lost+found";
/// Most problems kept in a report; beyond that they are counted only.
pub const PROBLEMS_LISTED_MAX: usize = 10_000;

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The `format` counter is missing: this is not a rustre store, or its first commit was lost.
    NoFormat,
    /// An inode record that does not decode.
    Undecodable { ino: u64, error: String },
    /// No root directory.
    NoRoot,
    /// An entry in something that is not an existing directory.
    EntryOutsideDirectory { parent: u64, name: Vec<u8> },
    /// A stored name that breaks the name rules.
    BadName { parent: u64, name: Vec<u8> },
    /// An entry naming an inode that does not exist.
    Dangling { parent: u64, name: Vec<u8>, ino: u64 },
    /// An entry whose kind byte is not its inode's kind.
    KindMismatch { parent: u64, name: Vec<u8>, ino: u64 },
    /// An entry missing from its directory's readdir order, or listed under another cookie.
    CookieMissing { parent: u64, name: Vec<u8> },
    /// A readdir position naming no entry.
    StrayCookie { parent: u64, cookie: u64 },
    /// A cookie at or beyond the directory's `next_cookie` (it would be handed out again).
    CookieAhead { parent: u64, cookie: u64 },
    /// A link count that is not the number of links.
    LinkCount { ino: u64, recorded: u32, counted: u32 },
    /// A directory's entry count that is not the number of its entries.
    EntryCount { ino: u64, recorded: u64, counted: u64 },
    /// A directory whose `parent` is not the directory holding it.
    WrongParent { ino: u64, recorded: u64, actual: u64 },
    /// A directory with more than one name.
    DirectoryLinkedTwice { ino: u64, links: u32 },
    /// An inode with no name that is not an orphan either: nothing can reach or reclaim it.
    Unreachable { ino: u64 },
    /// Directories that hold each other but are not under the root.
    Detached { ino: u64 },
    /// An orphan row for an inode that has links, or does not exist.
    BadOrphan { ino: u64 },
    /// Extended attributes of an inode that does not exist.
    XattrsWithoutInode { ino: u64 },
    /// A data object whose inode does not exist (and is not being destroyed), or is not a file.
    ObjectWithoutFile { ino: u64, path: PathBuf },
    /// A file in `objects/` that is not named as an object is.
    StrayFile { path: PathBuf },
    /// A record of a request's answer for a session the store does not know.
    StrayOnce { session: u64, slot: u32 },
    /// The `inodes` counter is not the number of inode records.
    InodeCount { recorded: u64, counted: u64 },
    /// `next_ino` is not above every inode id: an id would be handed out twice.
    NextInoBehind { recorded: u64, highest: u64 },
}

impl Problem {
    /// Can `--repair` fix it without losing anything?
    pub fn repairable(&self) -> bool {
        !matches!(
            self,
            Problem::NoFormat
                | Problem::Undecodable { .. }
                | Problem::NoRoot
                | Problem::DirectoryLinkedTwice { .. }
                | Problem::Detached { .. }
        )
    }
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoFormat => write!(f, "the store has no format record: not a rustre store, or never initialized"),
            Problem::Undecodable { ino, error } => write!(f, "inode {ino}: its record cannot be read ({error})"),
            Problem::NoRoot => write!(f, "the root directory (inode {ROOT_INO}) is missing or not a directory"),
            Problem::EntryOutsideDirectory { parent, name } => {
                write!(f, "entry {:?} is in inode {parent}, which is not an existing directory", show(name))
            }
            Problem::BadName { parent, name } => {
                write!(f, "directory {parent}: entry {:?} is not a valid name", show(name))
            }
            Problem::Dangling { parent, name, ino } => {
                write!(f, "directory {parent}: entry {:?} names inode {ino}, which does not exist", show(name))
            }
            Problem::KindMismatch { parent, name, ino } => {
                write!(f, "directory {parent}: entry {:?} gives inode {ino} the wrong file type", show(name))
            }
            Problem::CookieMissing { parent, name } => {
                write!(f, "directory {parent}: entry {:?} is missing from the directory's listing order", show(name))
            }
            Problem::StrayCookie { parent, cookie } => {
                write!(f, "directory {parent}: listing position {cookie} names no entry")
            }
            Problem::CookieAhead { parent, cookie } => {
                write!(f, "directory {parent}: listing position {cookie} is beyond the next one to hand out")
            }
            Problem::LinkCount { ino, recorded, counted } => {
                write!(f, "inode {ino}: link count is {recorded}, but {counted} links were found")
            }
            Problem::EntryCount { ino, recorded, counted } => {
                write!(f, "directory {ino}: records {recorded} entries, but holds {counted}")
            }
            Problem::WrongParent { ino, recorded, actual } => {
                write!(f, "directory {ino}: records parent {recorded}, but is held by {actual}")
            }
            Problem::DirectoryLinkedTwice { ino, links } => {
                write!(f, "directory {ino} has {links} names (one allowed)")
            }
            Problem::Unreachable { ino } => {
                write!(f, "inode {ino} has no name and is not an orphan: nothing reaches it")
            }
            Problem::Detached { ino } => {
                write!(f, "directory {ino} is in a cycle of directories cut off from the root")
            }
            Problem::BadOrphan { ino } => {
                write!(f, "inode {ino} is listed as an orphan but has links or does not exist")
            }
            Problem::XattrsWithoutInode { ino } => {
                write!(f, "extended attributes of inode {ino}, which does not exist")
            }
            Problem::ObjectWithoutFile { ino, path } => {
                write!(f, "data object {} belongs to no regular file (inode {ino})", path.display())
            }
            Problem::StrayFile { path } => write!(f, "{} is not a data object", path.display()),
            Problem::StrayOnce { session, slot } => {
                write!(f, "a request record (slot {slot}) of session {session:#x}, which the store does not know")
            }
            Problem::InodeCount { recorded, counted } => {
                write!(f, "the inode counter says {recorded}, but there are {counted} inodes")
            }
            Problem::NextInoBehind { recorded, highest } => {
                write!(f, "the next inode id is {recorded}, but inode {highest} exists: ids would be reused")
            }
        }
    }
}

/// What a check found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub inodes: u64,
    pub directories: u64,
    pub entries: u64,
    pub objects: u64,
    /// Orphans left by the last run (the server destroys them after its grace period).
    pub orphans: Vec<u64>,
    /// Objects of destroyed inodes not yet removed (the server removes them at start).
    pub doomed: Vec<u64>,
    /// Objects with bytes past their file's size (never read; cut by `--repair`).
    pub long_objects: Vec<u64>,
    /// Client sessions of the last run: the server waits for them at start (recovery).
    pub sessions: u64,
    /// Files open for writing when the server stopped: their sizes are checked at start.
    pub writable: u64,
    pub problems: Vec<Problem>,
    /// Problems found beyond `PROBLEMS_LISTED_MAX`.
    pub problems_unlisted: u64,
    /// What `--repair` did, in plain words.
    pub repaired: Vec<String>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.problems.is_empty() && self.problems_unlisted == 0
    }

    fn problem(&mut self, problem: Problem) {
        if self.problems.len() < PROBLEMS_LISTED_MAX {
            self.problems.push(problem);
        } else {
            self.problems_unlisted += 1;
        }
    }
}

/// Checks the store in `dir`; with `repair`, then fixes what can be fixed safely and checks again
/// (the report returned is the second check's, with `repaired` telling what was done).
pub fn fsck(dir: &Path, repair: bool) -> Result<Report> {
    if !dir.join("meta.redb").exists() {
        return Err(StoreError::io(
            format!("{} holds no rustre store", dir.display()),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let _lock = crate::lock_directory(dir)?;
    let mut builder = Database::builder();
    builder.set_check_integrity_on_open(true);
    let db = builder.open(dir.join("meta.redb")).map_err(|error| match error {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)) => {
            StoreError::Corrupt(format!("meta.redb failed its integrity check ({why}): restore it from a backup"))
        }
        other => other.into(),
    })?;
    let (report, index) = check(&db, dir)?;
    if !repair || (report.clean() && report.long_objects.is_empty() && report.doomed.is_empty()) {
        return Ok(report);
    }
    let repaired = fix(&db, dir, &report, &index)?;
    let (mut after, _) = check(&db, dir)?;
    after.repaired = repaired;
    Ok(after)
}

/// What the check learned, for the repairs.
#[derive(Default)]
struct Index {
    records: HashMap<u64, InodeRecord>,
    /// ino -> the (parent, name) entries naming it.
    names: HashMap<u64, Vec<(u64, Vec<u8>)>>,
    next_ino: u64,
}

fn check(db: &Database, dir: &Path) -> Result<(Report, Index)> {
    let txn = db.begin_read()?;
    let mut report = Report::default();
    let mut index = Index::default();
    let meta = txn.open_table(META)?;
    let counter = |key: &str| -> Result<Option<u64>> { Ok(meta.get(key)?.map(|value| value.value())) };
    if counter(META_FORMAT)?.is_none() {
        report.problem(Problem::NoFormat);
        return Ok((report, index));
    }
    index.next_ino = counter(META_NEXT_INO)?.unwrap_or(ROOT_INO + 1);

    let inodes = txn.open_table(INODES)?;
    let mut highest = ROOT_INO;
    for item in inodes.iter()? {
        let (ino, bytes) = item?;
        let ino = ino.value();
        highest = highest.max(ino);
        report.inodes += 1;
        match InodeRecord::decode(ino, bytes.value()) {
            Ok(record) => {
                if record.kind == FileKind::Directory {
                    report.directories += 1;
                }
                index.records.insert(ino, record);
            }
            Err(error) => report.problem(Problem::Undecodable { ino, error: error.to_string() }),
        }
    }
    let recorded = counter(META_INODES)?.unwrap_or(0);
    if recorded != report.inodes {
        report.problem(Problem::InodeCount { recorded, counted: report.inodes });
    }
    if index.next_ino <= highest {
        report.problem(Problem::NextInoBehind { recorded: index.next_ino, highest });
    }
    if index.records.get(&ROOT_INO).is_none_or(|root| root.kind != FileKind::Directory) {
        report.problem(Problem::NoRoot);
    }

    // Entries, and what they count.
    let is_directory = |ino: u64| index.records.get(&ino).is_some_and(|record| record.kind == FileKind::Directory);
    let mut entries_in: HashMap<u64, u64> = HashMap::new();
    let mut subdirectories: HashMap<u64, u32> = HashMap::new();
    let mut names: HashMap<u64, Vec<(u64, Vec<u8>)>> = HashMap::new();
    let mut cookie_of: HashMap<(u64, Vec<u8>), u64> = HashMap::new();
    let dirents = txn.open_table(DIRENTS)?;
    for item in dirents.iter()? {
        let (key, value) = item?;
        let (parent, name) = key.value();
        let (ino, kind, cookie) = value.value();
        report.entries += 1;
        let name = name.to_vec();
        if !is_directory(parent) {
            report.problem(Problem::EntryOutsideDirectory { parent, name });
            continue;
        }
        if validate_name(&name).is_err() {
            report.problem(Problem::BadName { parent, name: name.clone() });
        }
        cookie_of.insert((parent, name.clone()), cookie);
        *entries_in.entry(parent).or_default() += 1;
        let Some(record) = index.records.get(&ino) else {
            report.problem(Problem::Dangling { parent, name, ino });
            continue;
        };
        if kind_from_byte(kind).ok() != Some(record.kind) {
            report.problem(Problem::KindMismatch { parent, name: name.clone(), ino });
        }
        if record.kind == FileKind::Directory {
            *subdirectories.entry(parent).or_default() += 1;
        }
        names.entry(ino).or_default().push((parent, name));
    }
    let cookies = txn.open_table(COOKIES)?;
    let mut listed: BTreeSet<(u64, Vec<u8>)> = BTreeSet::new();
    for item in cookies.iter()? {
        let (key, name) = item?;
        let (parent, cookie) = key.value();
        let name = name.value().to_vec();
        if cookie_of.get(&(parent, name.clone())) != Some(&cookie) {
            report.problem(Problem::StrayCookie { parent, cookie });
            continue;
        }
        if index.records.get(&parent).is_some_and(|record| cookie >= record.next_cookie) {
            report.problem(Problem::CookieAhead { parent, cookie });
        }
        listed.insert((parent, name));
    }
    for (parent, name) in cookie_of.keys() {
        if !listed.contains(&(*parent, name.clone())) {
            report.problem(Problem::CookieMissing { parent: *parent, name: name.clone() });
        }
    }

    // Per inode: counts, parents, names.
    let orphan_rows: BTreeSet<u64> = {
        let orphans = txn.open_table(ORPHANS)?;
        let mut rows = BTreeSet::new();
        for item in orphans.iter()? {
            rows.insert(item?.0.value());
        }
        rows
    };
    let ordered: BTreeMap<u64, &InodeRecord> = index.records.iter().map(|(ino, record)| (*ino, record)).collect();
    for (&ino, record) in &ordered {
        let links = names.get(&ino).map_or(0, |names| names.len() as u32);
        if record.kind == FileKind::Directory {
            let counted_entries = entries_in.get(&ino).copied().unwrap_or(0);
            if record.entries != counted_entries {
                report.problem(Problem::EntryCount { ino, recorded: record.entries, counted: counted_entries });
            }
            if ino == ROOT_INO {
                continue;
            }
            if links > 1 {
                report.problem(Problem::DirectoryLinkedTwice { ino, links });
            }
            let expected = if links == 0 { 0 } else { 2 + subdirectories.get(&ino).copied().unwrap_or(0) };
            if record.nlink != expected {
                report.problem(Problem::LinkCount { ino, recorded: record.nlink, counted: expected });
            }
            if let Some([(actual, _)]) = names.get(&ino).map(Vec::as_slice)
                && record.parent != *actual
            {
                report.problem(Problem::WrongParent { ino, recorded: record.parent, actual: *actual });
            }
        } else if record.nlink != links {
            report.problem(Problem::LinkCount { ino, recorded: record.nlink, counted: links });
        }
        if links == 0 && !orphan_rows.contains(&ino) {
            report.problem(Problem::Unreachable { ino });
        }
    }
    // The root's own nlink counts its subdirectories (it is its own parent).
    if let Some(root) = index.records.get(&ROOT_INO) {
        let expected = 2 + subdirectories.get(&ROOT_INO).copied().unwrap_or(0);
        if root.nlink != expected {
            report.problem(Problem::LinkCount { ino: ROOT_INO, recorded: root.nlink, counted: expected });
        }
    }
    for &ino in &orphan_rows {
        if names.contains_key(&ino) || !index.records.contains_key(&ino) {
            report.problem(Problem::BadOrphan { ino });
        } else {
            report.orphans.push(ino);
        }
    }

    // Directories cut off from the root: walk down from it.
    let mut reached: BTreeSet<u64> = BTreeSet::from([ROOT_INO]);
    let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
    for (&ino, entries) in &names {
        for (parent, _) in entries {
            children.entry(*parent).or_default().push(ino);
        }
    }
    let mut frontier = vec![ROOT_INO];
    while let Some(directory) = frontier.pop() {
        for &child in children.get(&directory).map(Vec::as_slice).unwrap_or_default() {
            if reached.insert(child) && is_directory(child) {
                frontier.push(child);
            }
        }
    }
    for (&ino, record) in &ordered {
        if record.kind == FileKind::Directory && names.contains_key(&ino) && !reached.contains(&ino) {
            report.problem(Problem::Detached { ino });
        }
    }

    let xattrs = txn.open_table(XATTRS)?;
    let mut owners = BTreeSet::new();
    for item in xattrs.iter()? {
        owners.insert(item?.0.value().0);
    }
    for ino in owners {
        if !index.records.contains_key(&ino) {
            report.problem(Problem::XattrsWithoutInode { ino });
        }
    }

    // Sessions and what is kept for them.
    let sessions: BTreeSet<u64> = match txn.open_table(SESSIONS) {
        Ok(table) => {
            table.iter()?.map(|item| item.map(|(key, _)| key.value())).collect::<std::result::Result<_, _>>()?
        }
        Err(redb::TableError::TableDoesNotExist(_)) => BTreeSet::new(),
        Err(error) => return Err(error.into()),
    };
    report.sessions = sessions.len() as u64;
    match txn.open_table(ONCE) {
        Ok(table) => {
            for item in table.iter()? {
                let (session, slot) = item?.0.value();
                if !sessions.contains(&session) {
                    report.problem(Problem::StrayOnce { session, slot });
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(error) => return Err(error.into()),
    }
    match txn.open_table(WRITABLE) {
        Ok(table) => report.writable = table.len()?,
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(error) => return Err(error.into()),
    }

    // Data objects.
    let doomed: BTreeSet<u64> = {
        let mut rows = BTreeSet::new();
        match txn.open_table(DOOMED) {
            Ok(table) => {
                for item in table.iter()? {
                    rows.insert(item?.0.value());
                }
            }
            // A store last opened by a build before the table existed.
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(error) => return Err(error.into()),
        }
        rows
    };
    for (ino, path, len) in list_objects(dir)? {
        let Some(ino) = ino else {
            report.problem(Problem::StrayFile { path });
            continue;
        };
        report.objects += 1;
        match index.records.get(&ino) {
            Some(record) if record.kind == FileKind::Regular => {
                if len > record.size {
                    report.long_objects.push(ino);
                }
            }
            None if doomed.contains(&ino) => report.doomed.push(ino),
            _ => report.problem(Problem::ObjectWithoutFile { ino, path }),
        }
    }
    drop(meta);
    index.names = names;
    Ok((report, index))
}

/// Every file under `objects/`: its inode id if it is named as an object is, its path and length.
fn list_objects(dir: &Path) -> Result<Vec<(Option<u64>, PathBuf, u64)>> {
    let root = dir.join("objects");
    let failed = |path: &Path, error: std::io::Error| StoreError::io(format!("listing {}", path.display()), error);
    let mut found = Vec::new();
    let shards = match std::fs::read_dir(&root) {
        Ok(shards) => shards,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(failed(&root, error)),
    };
    for shard in shards {
        let shard = shard.map_err(|error| failed(&root, error))?;
        let shard_path = shard.path();
        let shard_name = shard.file_name().to_string_lossy().into_owned();
        if !shard_path.is_dir() {
            found.push((None, shard_path, 0));
            continue;
        }
        for object in std::fs::read_dir(&shard_path).map_err(|error| failed(&shard_path, error))? {
            let object = object.map_err(|error| failed(&shard_path, error))?;
            let path = object.path();
            let len = object.metadata().map_err(|error| failed(&path, error))?.len();
            let name = object.file_name().to_string_lossy().into_owned();
            let ino = (name.len() == 16)
                .then(|| u64::from_str_radix(&name, 16).ok())
                .flatten()
                .filter(|ino| format!("{:02x}", ino % 256) == shard_name);
            found.push((ino, path, len));
        }
    }
    Ok(found)
}

/// The safe repairs, in one transaction (objects are moved or cut after it commits).
fn fix(db: &Database, dir: &Path, report: &Report, index: &Index) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let now = Timestamp::from_system_time(std::time::SystemTime::now());
    let txn = db.begin_write()?;
    let mut moves: Vec<(PathBuf, String)> = Vec::new();
    {
        let mut lost = LostAndFound { ino: None, now };
        for problem in &report.problems {
            match problem {
                Problem::Dangling { parent, name, .. }
                | Problem::EntryOutsideDirectory { parent, name }
                | Problem::BadName { parent, name } => {
                    unlink_raw(&txn, *parent, name)?;
                    done.push(format!("removed {problem}"));
                }
                Problem::KindMismatch { parent, name, ino } => {
                    let kind = index.records[ino].kind;
                    let mut dirents = txn.open_table(DIRENTS)?;
                    let cookie = dirents.get((*parent, name.as_slice()))?.map(|value| value.value().2);
                    if let Some(cookie) = cookie {
                        dirents.insert((*parent, name.as_slice()), (*ino, kind_to_byte(kind), cookie))?;
                        done.push(format!("set the file type of entry {:?} in directory {parent}", show(name)));
                    }
                }
                Problem::CookieMissing { parent, name } => {
                    relist(&txn, *parent, name)?;
                    done.push(format!("gave entry {:?} of directory {parent} a listing position", show(name)));
                }
                Problem::StrayCookie { parent, cookie } => {
                    txn.open_table(COOKIES)?.remove((*parent, *cookie))?;
                    done.push(format!("dropped listing position {cookie} of directory {parent}"));
                }
                Problem::StrayOnce { session, slot } => {
                    txn.open_table(ONCE)?.remove((*session, *slot))?;
                    done.push(format!("dropped the request record of unknown session {session:#x}, slot {slot}"));
                }
                Problem::BadOrphan { ino } => {
                    txn.open_table(ORPHANS)?.remove(*ino)?;
                    done.push(format!("dropped the orphan row of inode {ino}"));
                }
                Problem::XattrsWithoutInode { ino } => {
                    let mut xattrs = txn.open_table(XATTRS)?;
                    let names: Vec<Vec<u8>> = {
                        let mut names = Vec::new();
                        for item in xattrs.range((*ino, &[][..])..)? {
                            let (key, _) = item?;
                            if key.value().0 != *ino {
                                break;
                            }
                            names.push(key.value().1.to_vec());
                        }
                        names
                    };
                    for name in names {
                        xattrs.remove((*ino, name.as_slice()))?;
                    }
                    done.push(format!("dropped the extended attributes of missing inode {ino}"));
                }
                Problem::ObjectWithoutFile { ino, path } => moves.push((path.clone(), format!("object-{ino:016x}"))),
                Problem::StrayFile { path } => {
                    let name = path.file_name().map_or("stray".into(), |name| name.to_string_lossy().into_owned());
                    moves.push((path.clone(), format!("stray-{name}")));
                }
                Problem::Unreachable { ino } => {
                    let into = lost.directory(&txn)?;
                    link_raw(&txn, into, format!("#{ino}").as_bytes(), *ino)?;
                    done.push(format!("linked nameless inode {ino} into /lost+found as #{ino}"));
                }
                // Counts are recomputed below, once every entry is in place.
                Problem::LinkCount { .. }
                | Problem::EntryCount { .. }
                | Problem::WrongParent { .. }
                | Problem::InodeCount { .. }
                | Problem::NextInoBehind { .. }
                | Problem::CookieAhead { .. } => {}
                Problem::NoFormat
                | Problem::Undecodable { .. }
                | Problem::NoRoot
                | Problem::DirectoryLinkedTwice { .. }
                | Problem::Detached { .. } => {}
            }
        }
        done.extend(recount(&txn, index)?);
        let mut doomed = txn.open_table(DOOMED)?;
        for &ino in &report.doomed {
            doomed.remove(ino)?;
        }
    }
    txn.commit()?;
    let objects = crate::LocalObjects::open(&dir.join("objects"))
        .map_err(|error| StoreError::io(format!("opening {}/objects", dir.display()), error))?;
    for &ino in &report.doomed {
        objects.remove(ino).map_err(|error| StoreError::io(format!("removing the object of inode {ino}"), error))?;
        done.push(format!("removed the data object of destroyed inode {ino}"));
    }
    for &ino in &report.long_objects {
        let size = index.records.get(&ino).map_or(0, |record| record.size);
        objects
            .set_len(ino, size)
            .map_err(|error| StoreError::io(format!("cutting the object of inode {ino}"), error))?;
        done.push(format!("cut the data object of inode {ino} to its size, {size} bytes"));
    }
    if !moves.is_empty() {
        let aside = dir.join("lost+found");
        std::fs::create_dir_all(&aside)
            .map_err(|error| StoreError::io(format!("creating {}", aside.display()), error))?;
        for (from, name) in moves {
            let to = aside.join(name);
            std::fs::rename(&from, &to).map_err(|error| StoreError::io(format!("moving {}", from.display()), error))?;
            done.push(format!("moved {} to {}", from.display(), to.display()));
        }
    }
    Ok(done)
}

/// `/lost+found`, made on first use.
struct LostAndFound {
    ino: Option<u64>,
    now: Timestamp,
}

impl LostAndFound {
    fn directory(&mut self, txn: &WriteTransaction) -> Result<u64> {
        if let Some(ino) = self.ino {
            return Ok(ino);
        }
        let existing = txn.open_table(DIRENTS)?.get((ROOT_INO, LOST_AND_FOUND))?.map(|value| value.value());
        let ino = match existing {
            Some((ino, kind, _)) if kind == kind_to_byte(FileKind::Directory) => ino,
            Some(_) => return Err(StoreError::Corrupt("/lost+found exists and is not a directory".into())),
            None => {
                let mut meta = txn.open_table(META)?;
                let ino = meta.get(META_NEXT_INO)?.map_or(ROOT_INO + 1, |value| value.value());
                let highest = txn.open_table(INODES)?.last()?.map_or(ROOT_INO, |(ino, _)| ino.value());
                let ino = ino.max(highest + 1);
                meta.insert(META_NEXT_INO, ino + 1)?;
                let record = InodeRecord {
                    generation: meta.get(META_BOOT)?.map_or(1, |value| value.value()),
                    kind: FileKind::Directory,
                    perm: 0o700,
                    uid: 0,
                    gid: 0,
                    nlink: 0,
                    size: 0,
                    atime: self.now,
                    mtime: self.now,
                    ctime: self.now,
                    parent: ROOT_INO,
                    next_cookie: FIRST_COOKIE,
                    entries: 0,
                    target: Vec::new(),
                };
                drop(meta);
                txn.open_table(INODES)?.insert(ino, record.encode().as_slice())?;
                link_raw(txn, ROOT_INO, LOST_AND_FOUND, ino)?;
                ino
            }
        };
        self.ino = Some(ino);
        Ok(ino)
    }
}

fn read_record(txn: &WriteTransaction, ino: u64) -> Result<Option<InodeRecord>> {
    match txn.open_table(INODES)?.get(ino)? {
        Some(bytes) => Ok(Some(InodeRecord::decode(ino, bytes.value())?)),
        None => Ok(None),
    }
}

/// Adds an entry and its cookie (counts are recomputed afterwards).
fn link_raw(txn: &WriteTransaction, parent: u64, name: &[u8], ino: u64) -> Result<()> {
    let kind = read_record(txn, ino)?.map_or(FileKind::Regular, |record| record.kind);
    let mut directory =
        read_record(txn, parent)?.ok_or(StoreError::Corrupt(format!("linking into missing {parent}")))?;
    let cookie = directory.next_cookie;
    directory.next_cookie += 1;
    txn.open_table(INODES)?.insert(parent, directory.encode().as_slice())?;
    txn.open_table(DIRENTS)?.insert((parent, name), (ino, kind_to_byte(kind), cookie))?;
    txn.open_table(COOKIES)?.insert((parent, cookie), name)?;
    if kind == FileKind::Directory
        && let Some(mut record) = read_record(txn, ino)?
    {
        record.parent = parent;
        txn.open_table(INODES)?.insert(ino, record.encode().as_slice())?;
    }
    Ok(())
}

/// Removes an entry and its cookie, if any (counts are recomputed afterwards).
fn unlink_raw(txn: &WriteTransaction, parent: u64, name: &[u8]) -> Result<()> {
    let removed = txn.open_table(DIRENTS)?.remove((parent, name))?.map(|value| value.value());
    if let Some((_, _, cookie)) = removed {
        txn.open_table(COOKIES)?.remove((parent, cookie))?;
    }
    Ok(())
}

/// Gives an entry a fresh cookie (dropping any other it had).
fn relist(txn: &WriteTransaction, parent: u64, name: &[u8]) -> Result<()> {
    let Some((ino, kind, old)) = txn.open_table(DIRENTS)?.get((parent, name))?.map(|value| value.value()) else {
        return Ok(());
    };
    let mut directory =
        read_record(txn, parent)?.ok_or(StoreError::Corrupt(format!("relisting in missing {parent}")))?;
    let cookie = directory.next_cookie;
    directory.next_cookie += 1;
    txn.open_table(INODES)?.insert(parent, directory.encode().as_slice())?;
    let mut cookies = txn.open_table(COOKIES)?;
    if cookies.get((parent, old))?.is_some_and(|listed| listed.value() == name) {
        cookies.remove((parent, old))?;
    }
    cookies.insert((parent, cookie), name)?;
    txn.open_table(DIRENTS)?.insert((parent, name), (ino, kind, cookie))?;
    Ok(())
}

/// Recomputes every count from the entries as they now are: link counts, entry counts, parents,
/// `next_cookie`, the inode counter and `next_ino`. Returns what it changed.
fn recount(txn: &WriteTransaction, index: &Index) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let mut links: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut entries: HashMap<u64, u64> = HashMap::new();
    let mut subdirectories: HashMap<u64, u32> = HashMap::new();
    let mut last_cookie: HashMap<u64, u64> = HashMap::new();
    let inodes = txn.open_table(INODES)?;
    let is_directory = |ino: u64| -> Result<bool> {
        Ok(match inodes.get(ino)? {
            Some(bytes) => {
                InodeRecord::decode(ino, bytes.value()).is_ok_and(|record| record.kind == FileKind::Directory)
            }
            None => false,
        })
    };
    for item in txn.open_table(DIRENTS)?.iter()? {
        let (key, value) = item?;
        let (parent, _) = key.value();
        let (ino, _, _) = value.value();
        links.entry(ino).or_default().push(parent);
        *entries.entry(parent).or_default() += 1;
        if is_directory(ino)? {
            *subdirectories.entry(parent).or_default() += 1;
        }
    }
    for item in txn.open_table(COOKIES)?.iter()? {
        let (parent, cookie) = item?.0.value();
        let last = last_cookie.entry(parent).or_default();
        *last = (*last).max(cookie);
    }
    let mut rows = Vec::new();
    let mut highest = ROOT_INO;
    for item in inodes.iter()? {
        let (ino, bytes) = item?;
        highest = highest.max(ino.value());
        rows.push((ino.value(), bytes.value().to_vec()));
    }
    drop(inodes);
    let count = rows.len() as u64;
    let mut table = txn.open_table(INODES)?;
    for (ino, bytes) in rows {
        let Ok(mut record) = InodeRecord::decode(ino, &bytes) else { continue };
        let before = record.clone();
        let parents = links.get(&ino).map(Vec::as_slice).unwrap_or_default();
        if record.kind == FileKind::Directory {
            record.entries = entries.get(&ino).copied().unwrap_or(0);
            let subdirectories = subdirectories.get(&ino).copied().unwrap_or(0);
            if ino == ROOT_INO {
                record.nlink = 2 + subdirectories;
            } else if let [parent] = parents {
                record.nlink = 2 + subdirectories;
                record.parent = *parent;
            } else if parents.is_empty() {
                record.nlink = 0;
            }
            record.next_cookie = record.next_cookie.max(last_cookie.get(&ino).map_or(FIRST_COOKIE, |last| last + 1));
        } else {
            record.nlink = parents.len() as u32;
        }
        if record != before {
            table.insert(ino, record.encode().as_slice())?;
            done.push(format!("recounted inode {ino} (links {} -> {})", before.nlink, record.nlink));
        }
    }
    let mut meta = txn.open_table(META)?;
    let recorded = meta.get(META_INODES)?.map(|value| value.value());
    if recorded != Some(count) {
        meta.insert(META_INODES, count)?;
        done.push(format!("set the inode counter to {count}"));
    }
    let next = meta.get(META_NEXT_INO)?.map_or(index.next_ino, |value| value.value());
    if next <= highest {
        meta.insert(META_NEXT_INO, highest + 1)?;
        done.push(format!("moved the next inode id past {highest}"));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustre_proto::clock::SystemClock;
    use rustre_proto::{Caller, OpenFlags};

    use super::*;
    use crate::{ObjectStore, Store};

    const ROOT: &Caller = &Caller::ROOT;

    /// What `build` made: ids of a file with data, a directory and a file inside it.
    struct Built {
        file: u64,
        directory: u64,
        inner: u64,
    }

    /// A store holding `/file` (with data and an xattr), `/dir/inner`, a hard link `/dir/link` to
    /// `/file`, and a symlink; the store is closed again when this returns.
    fn build(dir: &Path) -> Built {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(async {
            let store = Store::open(dir, &SystemClock).expect("store");
            let committer = store.start_inline_committer(Arc::new(SystemClock), ());
            let built = committer
                .run(|ns, _| {
                    let flags = OpenFlags::CREATE | OpenFlags::WRITE;
                    let file = ns.open(ROOT_INO, b"file", flags, 0o644, ROOT)?.attr.ino;
                    ns.note_write(file, 5, ROOT)?;
                    ns.setxattr(file, b"user.a", b"1", rustre_proto::XattrMode::Either, ROOT)?;
                    let directory = ns.mkdir(ROOT_INO, b"dir", 0o755, ROOT)?.ino;
                    let inner = ns.open(directory, b"inner", flags, 0o644, ROOT)?.attr.ino;
                    ns.link(file, directory, b"link", ROOT)?;
                    ns.symlink(ROOT_INO, b"sym", b"file", ROOT)?;
                    Ok(Built { file, directory, inner })
                })
                .await
                .expect("building the namespace");
            store.objects().write_at(built.file, 0, b"hello").expect("data");
            committer.stop().await;
            built
        })
    }

    fn tables(dir: &Path, change: impl FnOnce(&WriteTransaction)) {
        let db = Database::open(dir.join("meta.redb")).expect("database");
        let txn = db.begin_write().expect("txn");
        change(&txn);
        txn.commit().expect("commit");
    }

    fn names_of(report: &Report) -> Vec<String> {
        report.problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_store_made_by_the_namespace_operations_is_clean() {
        let scratch = tempfile::tempdir().expect("tempdir");
        build(scratch.path());
        let report = fsck(scratch.path(), false).expect("fsck");
        assert!(report.clean(), "{:?}", names_of(&report));
        assert_eq!((report.inodes, report.directories, report.entries, report.objects), (5, 2, 5, 1));
    }

    #[test]
    fn a_dangling_entry_is_found_and_removed() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let built = build(scratch.path());
        tables(scratch.path(), |txn| {
            txn.open_table(INODES).unwrap().remove(built.inner).unwrap();
            txn.open_table(META).unwrap().insert(META_INODES, 4).unwrap();
        });
        let report = fsck(scratch.path(), false).expect("fsck");
        assert_eq!(
            report.problems,
            vec![Problem::Dangling { parent: built.directory, name: b"inner".to_vec(), ino: built.inner }]
        );
        assert!(names_of(&report)[0].contains("\"inner\" names inode"), "{:?}", names_of(&report));
        let repaired = fsck(scratch.path(), true).expect("repair");
        assert!(repaired.clean(), "{:?}", names_of(&repaired));
        assert!(repaired.repaired.iter().any(|done| done.contains("removed")), "{:?}", repaired.repaired);
        assert_eq!(repaired.entries, 4);
    }

    #[test]
    fn a_nameless_inode_goes_to_lost_and_found_with_its_data() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let built = build(scratch.path());
        // Both names of `file` lost, as a crash could never do but a disk fault might.
        tables(scratch.path(), |txn| {
            for (parent, name) in [(ROOT_INO, &b"file"[..]), (built.directory, &b"link"[..])] {
                unlink_raw(txn, parent, name).unwrap();
            }
        });
        let report = fsck(scratch.path(), false).expect("fsck");
        assert!(report.problems.contains(&Problem::Unreachable { ino: built.file }), "{:?}", names_of(&report));
        assert!(report.problems.contains(&Problem::LinkCount { ino: built.file, recorded: 2, counted: 0 }));
        assert!(report.problems.contains(&Problem::EntryCount { ino: ROOT_INO, recorded: 3, counted: 2 }));
        let repaired = fsck(scratch.path(), true).expect("repair");
        assert!(repaired.clean(), "{:?} after {:?}", names_of(&repaired), repaired.repaired);
        let store = Store::open(scratch.path(), &SystemClock).expect("store");
        let ns = store.read().expect("read");
        let lost = ns.lookup(ROOT_INO, LOST_AND_FOUND, ROOT).expect("lost+found");
        let found = ns.lookup(lost.ino, format!("#{}", built.file).as_bytes(), ROOT).expect("the file");
        assert_eq!((found.ino, found.nlink, found.size), (built.file, 1, 5));
        let mut data = [0u8; 5];
        store.objects().read_at(built.file, 0, &mut data).expect("read");
        assert_eq!(&data, b"hello");
    }

    #[test]
    fn wrong_counts_are_recounted() {
        let scratch = tempfile::tempdir().expect("tempdir");
        let built = build(scratch.path());
        tables(scratch.path(), |txn| {
            let mut inodes = txn.open_table(INODES).unwrap();
            let mut record =
                InodeRecord::decode(built.directory, inodes.get(built.directory).unwrap().unwrap().value()).unwrap();
            record.nlink = 7;
            record.entries = 9;
            inodes.insert(built.directory, record.encode().as_slice()).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_INODES, 40).unwrap();
            meta.insert(META_NEXT_INO, 3).unwrap();
            txn.open_table(COOKIES).unwrap().insert((built.directory, 999), &b"ghost"[..]).unwrap();
        });
        let report = fsck(scratch.path(), false).expect("fsck");
        for expected in [
            Problem::LinkCount { ino: built.directory, recorded: 7, counted: 2 },
            Problem::EntryCount { ino: built.directory, recorded: 9, counted: 2 },
            Problem::InodeCount { recorded: 40, counted: 5 },
            Problem::NextInoBehind { recorded: 3, highest: 5 },
            Problem::StrayCookie { parent: built.directory, cookie: 999 },
        ] {
            assert!(report.problems.contains(&expected), "{expected:?} not in {:?}", names_of(&report));
        }
        let repaired = fsck(scratch.path(), true).expect("repair");
        assert!(repaired.clean(), "{:?}", names_of(&repaired));
    }

    #[test]
    fn objects_without_a_file_are_moved_aside_and_leftovers_of_destroys_are_removed() {
        let scratch = tempfile::tempdir().expect("tempdir");
        build(scratch.path());
        let objects = crate::LocalObjects::open(&scratch.path().join("objects")).expect("objects");
        objects.write_at(100, 0, b"nobody's").expect("write");
        objects.write_at(101, 0, b"destroyed").expect("write");
        tables(scratch.path(), |txn| {
            txn.open_table(DOOMED).unwrap().insert(101, ()).unwrap();
        });
        let report = fsck(scratch.path(), false).expect("fsck");
        assert_eq!(report.doomed, vec![101], "a destroy's leftover is a note");
        assert!(
            matches!(report.problems.as_slice(), [Problem::ObjectWithoutFile { ino: 100, .. }]),
            "{:?}",
            names_of(&report)
        );
        let repaired = fsck(scratch.path(), true).expect("repair");
        assert!(repaired.clean() && repaired.doomed.is_empty(), "{:?}", names_of(&repaired));
        let aside = scratch.path().join("lost+found").join(format!("object-{:016x}", 100));
        assert_eq!(std::fs::read(aside).expect("moved aside"), b"nobody's");
    }

    #[test]
    fn the_server_removes_the_objects_of_inodes_destroyed_before_a_crash() {
        let scratch = tempfile::tempdir().expect("tempdir");
        build(scratch.path());
        let objects = crate::LocalObjects::open(&scratch.path().join("objects")).expect("objects");
        objects.write_at(101, 0, b"destroyed").expect("write");
        tables(scratch.path(), |txn| {
            txn.open_table(DOOMED).unwrap().insert(101, ()).unwrap();
        });
        drop(Store::open(scratch.path(), &SystemClock).expect("store"));
        let report = fsck(scratch.path(), false).expect("fsck");
        assert!(report.clean() && report.doomed.is_empty() && report.objects == 1, "{report:?}");
    }

    #[test]
    fn request_records_of_unknown_sessions_are_dropped() {
        let scratch = tempfile::tempdir().expect("tempdir");
        build(scratch.path());
        tables(scratch.path(), |txn| {
            txn.open_table(SESSIONS).unwrap().insert(7, ()).unwrap();
            let mut once = txn.open_table(ONCE).unwrap();
            once.insert((7, 0), (1, 0, 0, [].as_slice())).unwrap();
            once.insert((9, 3), (1, 0, 0, [].as_slice())).unwrap();
            txn.open_table(WRITABLE).unwrap().insert(2, ()).unwrap();
        });
        let report = fsck(scratch.path(), false).expect("fsck");
        assert_eq!(report.problems, vec![Problem::StrayOnce { session: 9, slot: 3 }]);
        // `build` left /file and /dir/inner open for writing.
        assert_eq!((report.sessions, report.writable), (1, 2), "notes, not problems");
        let repaired = fsck(scratch.path(), true).expect("repair");
        assert!(repaired.clean(), "{:?}", names_of(&repaired));
    }

    #[test]
    fn a_running_server_keeps_fsck_out() {
        let scratch = tempfile::tempdir().expect("tempdir");
        build(scratch.path());
        let _store = Store::open(scratch.path(), &SystemClock).expect("store");
        assert!(matches!(fsck(scratch.path(), false), Err(StoreError::Locked { .. })));
        let empty = tempfile::tempdir().expect("tempdir");
        let error = fsck(empty.path(), false).expect_err("no store there");
        assert!(error.to_string().contains("holds no rustre store"), "{error}");
    }
}
