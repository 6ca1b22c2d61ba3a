//! The records kept in the tables, and their encoding. See `docs/storage.md`.

use redb::TableDefinition;
use rustre_proto::{Attr, FileKind, Timestamp};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// ino -> encoded `InodeRecord`.
pub const INODES: TableDefinition<u64, &[u8]> = TableDefinition::new("inodes");
/// (parent ino, name) -> (ino, kind, cookie).
pub const DIRENTS: TableDefinition<(u64, &[u8]), (u64, u8, u64)> = TableDefinition::new("dirents");
/// (parent ino, cookie) -> name: the readdir order of a directory.
pub const COOKIES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("cookies");
/// (ino, xattr name) -> value.
pub const XATTRS: TableDefinition<(u64, &[u8]), &[u8]> = TableDefinition::new("xattrs");
/// ino -> seconds since the epoch when its last link went: inodes kept alive by open handles.
pub const ORPHANS: TableDefinition<u64, i64> = TableDefinition::new("orphans");
/// ino -> (): regular files destroyed whose data object may still be on disk. The row is written
/// with the destroy; the object is removed after that commit and the row dropped in a later one.
/// A crash in between leaves the row, and the next start removes the object (`Store::open`).
pub const DOOMED: TableDefinition<u64, ()> = TableDefinition::new("doomed");
/// ino -> (): regular files open for writing. A write's size update is committed without an
/// fsync, so a crash may lose it while the bytes sit in the data object: a start after a crash
/// takes each such file's size from its object when the object is longer (`reconcile_writable`).
pub const WRITABLE: TableDefinition<u64, ()> = TableDefinition::new("writable");
/// ino -> size: regular files a durable change shrank, to that size, whose data object may not
/// be cut yet. The row is written with the change and the object cut after its commit; a crash
/// in between leaves the object longer, which the next start cuts (before `reconcile_writable`
/// would take the old length back as a size). The row goes with the next write of the file, in
/// a durable batch (a start must never cut bytes an acknowledged write put past it), with a
/// growth of its size, or with the file; the start drops the rest.
pub const CUTS: TableDefinition<u64, u64> = TableDefinition::new("cuts");
/// session id -> (): the client sessions of this server, kept across restarts so that after one
/// the server knows whom to wait for (recovery) and whose `ONCE` rows to keep.
pub const SESSIONS: TableDefinition<u64, ()> = TableDefinition::new("sessions");
/// session id -> milliseconds since the epoch by which that session of an earlier run must come
/// back to a recovering server. Written when a recovery first waits for the session, removed when
/// it comes back or is forgotten, so a server that restarts again during recovery holds a session
/// that never returns to its first deadline instead of granting it a fresh grace at every start
/// (a crash loop would otherwise keep changes waiting for ever).
pub const RECOVERY_DEADLINES: TableDefinition<u64, i64> = TableDefinition::new("recovery_deadlines");
/// (session, slot) -> (seq, subject inode or 0, `ONCE_*` flags, the subject's record right after
/// the change or empty): the last request of each `Op::Once` slot that changed the store, written
/// in the same transaction as its change, so a resend after a crash is answered from here instead
/// of being run twice. The subject is the inode the request made, opened, linked, changed or
/// wrote (`Ns::subject`); its record gives the answer's attributes even if another change has
/// removed it since. (Named "once2": the first "once" table had no record; a start drops it.)
pub const ONCE: TableDefinition<(u64, u32), OnceRow> = TableDefinition::new("once2");
/// A `ONCE` row: (seq, subject, flags, encoded subject record).
pub type OnceRow = (u64, u64, u8, &'static [u8]);
/// The `ONCE` table of stores written before records were kept in it (dropped at start).
pub const ONCE_LEGACY: &str = "once";
/// `ONCE` flag: the request made its subject.
pub const ONCE_MADE: u8 = 1;
/// `ONCE` flag: the request opened its subject (a resend needs that inode for its new handle).
pub const ONCE_OPENED: u8 = 2;
/// `ONCE` flag: a later step of the request committed too, in a transaction of its own (the
/// truncate of an open with O_TRUNC): a resend must not run it again over what others wrote since.
pub const ONCE_FOLLOWED: u8 = 4;
/// Counters: see the `META_*` keys.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub const META_FORMAT: &str = "format";
pub const META_NEXT_INO: &str = "next_ino";
pub const META_BOOT: &str = "boot";
pub const META_INODES: &str = "inodes";

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;
/// The first byte of every encoded inode record.
const RECORD_VERSION: u8 = 1;
/// The first cookie handed out in a directory; 1 and 2 are left for "." and "..".
pub const FIRST_COOKIE: u64 = 3;

/// Everything the store knows of one inode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeRecord {
    pub generation: u64,
    pub kind: FileKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Directories: the directory holding this one (the root holds itself). Others: 0.
    pub parent: u64,
    /// Directories: the next readdir cookie to hand out (only grows).
    pub next_cookie: u64,
    /// Directories: how many entries they hold.
    pub entries: u64,
    /// Symlinks: the target, stored as given.
    pub target: Vec<u8>,
}

impl InodeRecord {
    pub fn attr(&self, ino: u64) -> Attr {
        Attr {
            ino,
            generation: self.generation,
            kind: self.kind,
            perm: self.perm,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            blocks: self.size.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![RECORD_VERSION];
        bytes.extend(postcard::to_stdvec(self).expect("postcard serializes InodeRecord"));
        bytes
    }

    pub fn decode(ino: u64, bytes: &[u8]) -> Result<InodeRecord> {
        match bytes.split_first() {
            Some((&RECORD_VERSION, rest)) => {
                postcard::from_bytes(rest).map_err(|error| StoreError::Corrupt(format!("inode {ino}: {error}")))
            }
            Some((version, _)) => Err(StoreError::Corrupt(format!("inode {ino}: unknown record version {version}"))),
            None => Err(StoreError::Corrupt(format!("inode {ino}: empty record"))),
        }
    }
}

pub fn kind_to_byte(kind: FileKind) -> u8 {
    match kind {
        FileKind::Regular => 1,
        FileKind::Directory => 2,
        FileKind::Symlink => 3,
    }
}

pub fn kind_from_byte(byte: u8) -> Result<FileKind> {
    match byte {
        1 => Ok(FileKind::Regular),
        2 => Ok(FileKind::Directory),
        3 => Ok(FileKind::Symlink),
        other => Err(StoreError::Corrupt(format!("unknown file kind {other} in a directory entry"))),
    }
}
