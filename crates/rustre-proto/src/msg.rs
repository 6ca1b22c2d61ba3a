//! The messages carried in frame headers, encoded with postcard.
//!
//! **API Boundary**: variants are only ever appended. Postcard encodes an enum variant by its
//! index, so reordering or removing one changes the wire format; `docs/protocol.md` lists the
//! indexes. `Op::Hello` is index 0 of the first message on every connection and is frozen.

use serde::{Deserialize, Serialize};

use crate::Errno;

/// The inode id of the root directory.
pub const ROOT_INO: u64 = 1;

/// Protocol versions this build speaks, inclusive. Version 2 added leases (grants in every
/// reply header, revocations, releases); 3 the cluster secret's proof in the hello; 4 the
/// caller's supplementary groups and the identity a reclaimed handle was opened by; 5 what
/// keeps each orphan alive (`Orphan`), in pages (`Op::ListOrphans::after`). Nothing speaking an
/// older version was ever released.
pub const PROTOCOL_VERSION_MIN: u16 = 5;
pub const PROTOCOL_VERSION_MAX: u16 = 5;

/// Sent in `Hello` to recognise a rustre peer before anything else is believed.
pub const HELLO_MAGIC: u32 = 0x5253_5452; // "RSTR"

/// Largest read or write a single request may carry.
pub const IO_SIZE_MAX: u32 = 4 << 20;

/// Largest number of entries one `ReadDir` reply carries.
pub const READDIR_ENTRIES_MAX: u32 = 1024;

/// Most components in the paths of one `AtPath` or `OnPath` (ENAMETOOLONG beyond): each is a
/// lookup on the server, some on its commit thread. Linux's `PATH_MAX` (4096 bytes) allows at most
/// 2048, and a client's symlink expansions stay far below twice that.
pub const PATH_COMPONENTS_MAX: usize = 4096;

/// Largest file size (offset + length of any write, or a truncate).
pub const FILE_SIZE_MAX: u64 = 1 << 50;

/// A point in time, as seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn from_system_time(time: std::time::SystemTime) -> Timestamp {
        match time.duration_since(std::time::UNIX_EPOCH) {
            Ok(since) => Timestamp { secs: since.as_secs() as i64, nanos: since.subsec_nanos() },
            Err(before) => {
                let before = before.duration();
                let mut secs = -(before.as_secs() as i64);
                let mut nanos = before.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Timestamp { secs, nanos }
            }
        }
    }

    pub fn to_system_time(self) -> std::time::SystemTime {
        let nanos = std::time::Duration::from_nanos(u64::from(self.nanos));
        if self.secs >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.secs as u64) + nanos
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::from_secs(self.secs.unsigned_abs()) + nanos
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
}

/// The attributes of an inode, as the server knows them at the moment of the reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub ino: u64,
    /// `(ino, generation)` never names two different inodes.
    pub generation: u64,
    pub kind: FileKind,
    /// Permission bits only (`0o7777`); the type is in `kind`.
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks allocated (an estimate from the size).
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
}

impl Attr {
    /// `st_mode` as `stat(2)` gives it: type bits and permission bits.
    pub fn mode(&self) -> u32 {
        let kind_bits = match self.kind {
            FileKind::Regular => 0o100000,
            FileKind::Directory => 0o040000,
            FileKind::Symlink => 0o120000,
        };
        kind_bits | self.perm
    }
}

/// Most supplementary groups one `Caller` carries: Linux's `NGROUPS_MAX`, so no user of a mount
/// loses a group on the way (NFS's `sec=sys` keeps 16). At 5 bytes each at most, a full list
/// stays far below `HEADER_LEN_MAX`. The server refuses a longer list with EINVAL.
pub const GROUPS_MAX: usize = 65536;

/// Who makes a call: the identity the server checks permissions against (after root squash,
/// ARCHITECTURE.md "Trust"), and the owner of what the call creates.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, besides `gid` (order and repeats do not matter on the wire).
    pub groups: Vec<u32>,
}

impl Caller {
    /// The superuser, with no supplementary groups.
    pub const ROOT: Caller = Caller { uid: 0, gid: 0, groups: Vec::new() };

    /// A caller with no supplementary groups.
    pub fn new(uid: u32, gid: u32) -> Caller {
        Caller { uid, gid, groups: Vec::new() }
    }

    /// Is this the superuser (uid 0), who passes every permission check as Linux's
    /// `CAP_DAC_OVERRIDE`, `CAP_FOWNER`, `CAP_CHOWN` and `CAP_FSETID` do?
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// Is `gid` the caller's group or one of its supplementary groups? A binary search: the
    /// groups must be sorted (`normalize`; the server normalizes every caller it receives).
    pub fn in_group(&self, gid: u32) -> bool {
        debug_assert!(self.groups.is_sorted(), "groups are normalized before they are searched");
        self.gid == gid || self.groups.binary_search(&gid).is_ok()
    }

    /// Sorts the supplementary groups and drops repeats, so `in_group` costs a binary search
    /// even for a caller in tens of thousands of groups.
    pub fn normalize(&mut self) {
        self.groups.sort_unstable();
        self.groups.dedup();
    }
}

/// Open flags, rustre's own bits (not the host's `O_*` numbers, which differ between platforms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OpenFlags(pub u32);

impl OpenFlags {
    pub const READ: OpenFlags = OpenFlags(1);
    pub const WRITE: OpenFlags = OpenFlags(2);
    pub const CREATE: OpenFlags = OpenFlags(4);
    pub const EXCLUSIVE: OpenFlags = OpenFlags(8);
    pub const TRUNCATE: OpenFlags = OpenFlags(16);
    pub const APPEND: OpenFlags = OpenFlags(32);
    /// Open a directory (for `opendir`); refuses anything else with ENOTDIR.
    pub const DIRECTORY: OpenFlags = OpenFlags(64);
    /// `Op::Open` only: also take one pin on the opened inode for this session, in the same step
    /// (as `Op::PinName` does for a lookup), so it outlives its names until `Op::Unpin`. A mount
    /// creates with it, so the kernel's reference to the new file is pinned from the start.
    /// Refused (EINVAL) by every other op that takes open flags.
    pub const PIN: OpenFlags = OpenFlags(128);
    /// Lease the attributes even when opening for writing (a reply to a reading open always
    /// does): for a client that reads them before it writes, as a mount's kernel does right
    /// after a create. The first write then revokes the writer's own lease.
    pub const LEASE_ATTR: OpenFlags = OpenFlags(256);
    const KNOWN: u32 = 511;

    pub fn contains(self, other: OpenFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// May a handle opened with these flags write (`WRITE` or `APPEND`)?
    pub fn writes(self) -> bool {
        self.contains(OpenFlags::WRITE) || self.contains(OpenFlags::APPEND)
    }

    pub fn is_known(self) -> bool {
        self.0 & !Self::KNOWN == 0
    }
}

impl std::ops::BitOr for OpenFlags {
    type Output = OpenFlags;
    fn bitor(self, other: OpenFlags) -> OpenFlags {
        OpenFlags(self.0 | other.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameMode {
    /// Replace the target if it exists (plain `rename(2)`).
    Replace,
    /// Fail with EEXIST if the target exists (`RENAME_NOREPLACE`).
    NoReplace,
    /// Swap source and target atomically; both must exist (`RENAME_EXCHANGE`).
    Exchange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// The attributes a `SetAttr` changes; `None` leaves one as it is. `ctime` is kept by the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SetAttrIn {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    /// A size change made through this open handle of the session's (ftruncate): allowed as the
    /// handle's open was, without write permission now (the file may be 0444 to its creator).
    /// The handle must be open for writing, on this inode: EINVAL otherwise, EBADF if unknown.
    pub handle: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattrMode {
    /// Create or replace.
    Either,
    /// Fail with EEXIST if present (`XATTR_CREATE`).
    Create,
    /// Fail with ENODATA if absent (`XATTR_REPLACE`).
    Replace,
}

/// A request from client to server: who calls, and what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub caller: Caller,
    pub op: Op,
}

/// The operations. Payload bytes (beside the header in the frame) are noted where used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// First request on a connection; nothing else is accepted before it.
    Hello {
        magic: u32,
        version_min: u16,
        version_max: u16,
        client_name: String,
    },
    Lookup {
        parent: u64,
        name: Vec<u8>,
    },
    GetAttr {
        ino: u64,
    },
    SetAttr {
        ino: u64,
        set: SetAttrIn,
    },
    /// Resolve `name` in `parent` and open it, creating it if asked, as one atomic step.
    Open {
        parent: u64,
        name: Vec<u8>,
        flags: OpenFlags,
        perm: u32,
    },
    /// Open an inode by id (ESTALE if it is gone).
    OpenIno {
        ino: u64,
        flags: OpenFlags,
    },
    Close {
        handle: u64,
    },
    /// Reply payload: the bytes read (shorter at end of file).
    Read {
        handle: u64,
        offset: u64,
        len: u32,
    },
    /// Request payload: the bytes to write. With an `APPEND` handle the offset is ignored.
    Write {
        handle: u64,
        offset: u64,
    },
    Fsync {
        handle: u64,
    },
    Mkdir {
        parent: u64,
        name: Vec<u8>,
        perm: u32,
    },
    Rmdir {
        parent: u64,
        name: Vec<u8>,
    },
    Unlink {
        parent: u64,
        name: Vec<u8>,
    },
    Rename {
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        mode: RenameMode,
    },
    Link {
        ino: u64,
        new_parent: u64,
        new_name: Vec<u8>,
    },
    Symlink {
        parent: u64,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    Readlink {
        ino: u64,
    },
    /// Entries whose cookie is greater than `cookie` (0 starts), at most `max_entries`.
    ReadDir {
        ino: u64,
        cookie: u64,
        max_entries: u32,
        with_attrs: bool,
    },
    StatFs,
    /// Reply payload: the value.
    GetXattr {
        ino: u64,
        name: Vec<u8>,
    },
    /// Request payload: the value.
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        mode: XattrMode,
    },
    ListXattr {
        ino: u64,
    },
    RemoveXattr {
        ino: u64,
        name: Vec<u8>,
    },
    /// The client no longer caches these (evicted from its bounded cache). A grant newer than
    /// the id given is kept. Answered with `Done`.
    ReleaseLeases {
        leases: Vec<Grant>,
    },
    /// Runs `op` (Lookup, Open, Mkdir, Symlink, Unlink, Rmdir, Rename or Link) in the directory that
    /// the path `dir` (names or `..`, from the root) leads to, resolved by name on the server in
    /// the same atomic step as the op (Rename's target directory from `new_dir`; for Link, `dir`
    /// is the source's whole path, not followed at its end, and `new_dir` the new name's). The op's
    /// `parent`/`new_parent` fields are ignored. Nothing is addressed by an inode id, so this
    /// never answers ESTALE: the client's retry after a stale id. A symlink on the way (or, for
    /// Lookup and Open with `follow_last`, at the name itself) is answered `SymlinkOnPath`.
    /// Replies grant no leases.
    AtPath {
        dir: Vec<Vec<u8>>,
        new_dir: Option<Vec<Vec<u8>>>,
        /// For Lookup and Open: a symlink at the name itself is answered `SymlinkOnPath` (to be
        /// followed) rather than looked up (lstat) or refused with ELOOP (O_NOFOLLOW).
        follow_last: bool,
        op: Box<Op>,
    },
    /// Runs `op` (GetAttr, SetAttr, Readlink, GetXattr, SetXattr, ListXattr or RemoveXattr) on
    /// the inode that `path` (from the root) names, resolved by name on the server in the same
    /// atomic step; the op's `ino` is ignored. Like `AtPath`, it never answers ESTALE; symlinks
    /// met (and one at the end, when `follow_last`) are answered `SymlinkOnPath`.
    OnPath {
        path: Vec<Vec<u8>>,
        follow_last: bool,
        op: Box<Op>,
    },
    /// Administration: the orphans (inodes whose last name is gone, kept alive by open handles,
    /// pins or recovery) with ids above `after`, and what keeps each alive. Answered `Orphans`,
    /// one page at a time: `after` 0 starts, the last ino of a page continues.
    ListOrphans {
        after: u64,
    },
    /// Keeps an inode alive for this session, as an open handle does, without opening it (a
    /// FUSE mount mirrors the kernel's lookup count as pins). ESTALE if it is gone. `Done`.
    Pin {
        ino: u64,
    },
    /// Gives back `count` pins of an inode (the kernel's forget). The last one may destroy an
    /// orphan. Giving back more than held is refused (EINVAL) and changes nothing. `Done`.
    Unpin {
        ino: u64,
        count: u64,
    },
    /// Resolves `name` in `parent` and pins the inode it names (as `Pin`), in one atomic step:
    /// what a FUSE mount answers the kernel's lookup with, so that an inode the kernel holds is
    /// one no other client can destroy. Answered `Entry`, with leases as a `Lookup`'s.
    PinName {
        parent: u64,
        name: Vec<u8>,
    },
    /// Reads an inode this session pins, without a handle: the pin keeps the inode (an orphan
    /// once its names are gone) as a handle would. What a FUSE mount reads a file with that the
    /// kernel opened read-only: the kernel holds the inode while the file is open, so the
    /// mount's pin lasts at least as long. EBADF if the session holds no pin on `ino`. Reply
    /// payload as `Read`'s.
    ReadPinned {
        ino: u64,
        offset: u64,
        len: u32,
    },
    /// First request of a connection that takes up an existing session again, instead of
    /// `Hello` (same checks). Answered `Resumed`; ESTALE if the server does not know the session
    /// (it ended, was evicted, or the recovery period after a restart passed without it): the
    /// client then starts a new session with `Hello`.
    Resume {
        magic: u32,
        version_min: u16,
        version_max: u16,
        client_name: String,
        session: u64,
    },
    /// Runs `op` (one that changes state: see `Op::changes_state`) at most once for this session.
    /// `slot` (below `ONCE_SLOTS_MAX`) is one of the client's request slots, reused only after
    /// its previous request was answered; `seq` grows with each use of the slot. Sent again with
    /// the same `slot` and `seq` after a reconnection, the server answers what the first run
    /// did instead of running it again (ARCHITECTURE.md, "Recovery").
    Once {
        slot: u32,
        seq: u64,
        op: Box<Op>,
    },
    /// After a `Resume` answered with `state_kept: false` (the server restarted): takes back the
    /// session's open handles (same ids) and pins, before anything else is sent. Chunked; the
    /// last chunk has `last`. Answered `Reclaimed`.
    Reclaim {
        handles: Vec<ReclaimedHandle>,
        pins: Vec<(u64, u64)>,
        last: bool,
    },
    /// The client ends its session: when the connection closes, everything it held is given
    /// back at once instead of being kept for a reconnection. `Done`.
    EndSession,
    /// The client's answer to `Reply::Challenge`, the second request of a connection to a server
    /// with a cluster secret: a fresh nonce of its own, and its proof that it knows the secret
    /// (`auth.rs`). Answered `Welcome`, or EACCES and the connection closes. Refused (EPROTO)
    /// anywhere else.
    Prove {
        nonce: crate::auth::Nonce,
        proof: crate::auth::Proof,
    },
}

/// Slots a session may use for `Op::Once`: the server keeps one reply per slot.
pub const ONCE_SLOTS_MAX: u32 = 256;

/// An open handle taken back after a server restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReclaimedHandle {
    pub handle: u64,
    pub ino: u64,
    pub flags: OpenFlags,
    /// The caller whose open made the handle. The server takes it back only if that caller
    /// owns the inode or may still open it so (after root squash, like every identity).
    pub opener: Caller,
}

impl Op {
    /// Does this op change anything on the server (the namespace, data, handles or pins)? Such
    /// ops are sent wrapped in `Once`, so a resend after a reconnection cannot run them twice.
    pub fn changes_state(&self) -> bool {
        match self {
            Op::Hello { .. }
            | Op::Resume { .. }
            | Op::Once { .. }
            | Op::Reclaim { .. }
            | Op::EndSession
            | Op::Prove { .. }
            | Op::Lookup { .. }
            | Op::GetAttr { .. }
            | Op::Read { .. }
            | Op::ReadPinned { .. }
            | Op::Readlink { .. }
            | Op::ReadDir { .. }
            | Op::StatFs
            | Op::GetXattr { .. }
            | Op::ListXattr { .. }
            | Op::ListOrphans { .. }
            | Op::ReleaseLeases { .. } => false,
            Op::AtPath { op, .. } | Op::OnPath { op, .. } => op.changes_state(),
            Op::SetAttr { .. }
            | Op::Open { .. }
            | Op::OpenIno { .. }
            | Op::Close { .. }
            | Op::Write { .. }
            | Op::Fsync { .. }
            | Op::Mkdir { .. }
            | Op::Rmdir { .. }
            | Op::Unlink { .. }
            | Op::Rename { .. }
            | Op::Link { .. }
            | Op::Symlink { .. }
            | Op::SetXattr { .. }
            | Op::RemoveXattr { .. }
            | Op::Pin { .. }
            | Op::Unpin { .. }
            | Op::PinName { .. } => true,
        }
    }

    /// A short name for logs and counters.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::Hello { .. } => "hello",
            Op::Lookup { .. } => "lookup",
            Op::GetAttr { .. } => "getattr",
            Op::SetAttr { .. } => "setattr",
            Op::Open { .. } => "open",
            Op::OpenIno { .. } => "open_ino",
            Op::Close { .. } => "close",
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Fsync { .. } => "fsync",
            Op::Mkdir { .. } => "mkdir",
            Op::Rmdir { .. } => "rmdir",
            Op::Unlink { .. } => "unlink",
            Op::Rename { .. } => "rename",
            Op::Link { .. } => "link",
            Op::Symlink { .. } => "symlink",
            Op::Readlink { .. } => "readlink",
            Op::ReadDir { .. } => "readdir",
            Op::StatFs => "statfs",
            Op::GetXattr { .. } => "getxattr",
            Op::SetXattr { .. } => "setxattr",
            Op::ListXattr { .. } => "listxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::ReleaseLeases { .. } => "release_leases",
            Op::AtPath { .. } => "at_path",
            Op::OnPath { .. } => "on_path",
            Op::ListOrphans { .. } => "list_orphans",
            Op::Pin { .. } => "pin",
            Op::Unpin { .. } => "unpin",
            Op::PinName { .. } => "pin_name",
            Op::ReadPinned { .. } => "read_pinned",
            Op::Resume { .. } => "resume",
            Op::Once { .. } => "once",
            Op::Reclaim { .. } => "reclaim",
            Op::EndSession => "end_session",
            Op::Prove { .. } => "prove",
        }
    }

    /// Every kind, in variant order, for per-kind counters.
    pub const KIND_NAMES: [&'static str; 36] = [
        "hello",
        "lookup",
        "getattr",
        "setattr",
        "open",
        "open_ino",
        "close",
        "read",
        "write",
        "fsync",
        "mkdir",
        "rmdir",
        "unlink",
        "rename",
        "link",
        "symlink",
        "readlink",
        "readdir",
        "statfs",
        "getxattr",
        "setxattr",
        "listxattr",
        "removexattr",
        "release_leases",
        "at_path",
        "on_path",
        "list_orphans",
        "pin",
        "unpin",
        "pin_name",
        "read_pinned",
        "resume",
        "once",
        "reclaim",
        "end_session",
        "prove",
    ];

    /// The position of this op's kind in `KIND_NAMES`.
    pub fn kind_index(&self) -> usize {
        let name = self.kind_name();
        Op::KIND_NAMES.iter().position(|kind| *kind == name).expect("every kind is listed")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: FileKind,
    /// Pass this back as `ReadDir::cookie` to continue after this entry.
    pub cookie: u64,
    /// Present when the request asked `with_attrs`.
    pub attr: Option<Attr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub block_size: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_len_max: u32,
}

/// An orphan (`Reply::Orphans`): an inode whose last name is gone, and what keeps it alive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    /// Its attributes (`nlink` 0).
    pub attr: Attr,
    /// Handles and pins the server counts on it, of every session: what `holders` shows, plus
    /// opens in flight and holders beyond those listed. An orphan is destroyed when this reaches
    /// 0 and `kept_for_recovery` is false.
    pub opens: u64,
    /// Kept as if open until the recovery after a restart ends: an orphan of the previous run (or
    /// an inode its unanswered changes opened), which a returning session may still claim.
    pub kept_for_recovery: bool,
    /// The sessions holding handles or pins on it, by session id (at most
    /// `ORPHAN_HOLDERS_MAX`).
    pub holders: Vec<OrphanHolder>,
}

/// Most holders `Orphan::holders` lists; `Orphan::opens` still counts the others' opens.
pub const ORPHAN_HOLDERS_MAX: usize = 64;

/// A session holding an orphan (`Orphan::holders`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphanHolder {
    pub session: u64,
    /// The client's address, as the server saw its latest connection (`ip:port` over TCP).
    pub peer: String,
    /// The name the client gave in its hello (`Op::Hello::client_name`), cut to
    /// `CLIENT_NAME_SHOWN_MAX` bytes.
    pub client_name: String,
    /// The session has a connection now. If not, the server keeps it (and what it holds) for
    /// its client to resume, for the recovery grace period.
    pub connected: bool,
    /// Open handles of the session on the inode.
    pub handles: u64,
    /// Pins of the session on the inode (`Op::Pin`, `Op::PinName`): a mount's kernel references.
    pub pins: u64,
}

/// Most bytes of a client's name a server keeps to show (`OrphanHolder::client_name`).
pub const CLIENT_NAME_SHOWN_MAX: usize = 128;

/// A successful reply. Which variant answers which `Op` is listed in `docs/protocol.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Hello {
        version: u16,
        session: u64,
        root: Attr,
        server_name: String,
        /// A client that does not acknowledge a revocation within this many milliseconds is
        /// evicted; a client stops trusting its cache well before this long without news.
        lease_timeout_ms: u64,
    },
    /// Lookup, mkdir, symlink, link: the inode now at that name.
    Entry {
        attr: Attr,
    },
    /// GetAttr, SetAttr.
    Attr {
        attr: Attr,
    },
    /// Open, OpenIno.
    Opened {
        handle: u64,
        attr: Attr,
        created: bool,
    },
    /// Read: the payload holds the bytes.
    Data,
    Written {
        len: u32,
        attr: Attr,
    },
    /// Close, Fsync, Rmdir, Unlink, Rename, SetXattr, RemoveXattr, ReleaseLeases.
    Done,
    Target {
        target: Vec<u8>,
    },
    Entries {
        entries: Vec<DirEntry>,
        end: bool,
    },
    StatFs {
        statfs: StatFs,
    },
    /// GetXattr: the payload holds the value.
    Xattr,
    XattrNames {
        names: Vec<Vec<u8>>,
    },
    /// AtPath or OnPath met a symlink. AtPath: at `index` of `dir` (or of `new_dir` when
    /// `in_new_dir`), or at the op's name itself when `index` is the length of `dir`. OnPath: at
    /// `index` of `path` (the last component included). The client splices the target in.
    SymlinkOnPath {
        in_new_dir: bool,
        index: u32,
        target: Vec<u8>,
    },
    /// ListOrphans: one page of orphans, in inode order, each with what keeps it alive; `end`
    /// when no orphan follows the last one.
    Orphans {
        orphans: Vec<Orphan>,
        end: bool,
    },
    /// Resume: as `Hello`, and whether the server kept the session's handles and pins (only its
    /// connection broke) or lost them (it restarted): then the client sends `Reclaim` next.
    Resumed {
        version: u16,
        session: u64,
        root: Attr,
        server_name: String,
        lease_timeout_ms: u64,
        state_kept: bool,
    },
    /// Reclaim: the handles and pinned inodes that could not be taken back (the inode is gone).
    Reclaimed {
        lost_handles: Vec<u64>,
        lost_pins: Vec<u64>,
    },
    /// Hello or Resume, to a server with a cluster secret: prove it (`Op::Prove`).
    Challenge {
        nonce: crate::auth::Nonce,
    },
    /// Prove: the client is believed. The server's own proof of the secret, and the answer to
    /// the connection's hello (`Hello` or `Resumed`).
    Welcome {
        proof: crate::auth::Proof,
        reply: Box<Reply>,
    },
}

/// A failed reply: the errno, and a message for logs and command-line users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub errno: Errno,
    pub message: String,
}

/// The header of every reply to a `Request`: the outcome, and the leases granted with it (a
/// failed lookup grants a negative name lease).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplyHeader {
    pub result: Result<Reply, WireError>,
    pub grants: Vec<Grant>,
}

impl ReplyHeader {
    pub fn new(result: Result<Reply, WireError>) -> ReplyHeader {
        ReplyHeader { result, grants: Vec::new() }
    }
}

/// What a lease covers. See ARCHITECTURE.md, "Leases".
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LeaseKey {
    /// The binding of `name` in directory `parent`: which inode it names, or that it is absent.
    Name { parent: u64, name: Vec<u8> },
    /// Every attribute of an inode.
    Attr { ino: u64 },
    /// The set of entries of a directory (its listing).
    Listing { ino: u64 },
}

/// A lease: the right to cache what `key` covers until the server revokes lease `id` (or a later
/// one on the same key). Ids only grow on a server.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    pub key: LeaseKey,
    pub id: u64,
}

/// A request from server to client, on the same connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Callback {
    /// Liveness check; the client answers `Pong` with the same nonce.
    Ping { nonce: u64 },
    /// Stop caching what these leases cover (each up to its id), then answer `Revoked`.
    Revoke { leases: Vec<Grant> },
    /// The same, for a change that this session's own request is making. The client's cache
    /// handles it like `Revoke`; a cache that mirrors the request itself (a kernel that made the
    /// change through this client, and updated its own entries with the reply) may skip work.
    RevokeOwn { leases: Vec<Grant> },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CallbackReply {
    Pong { nonce: u64 },
    Revoked,
}
