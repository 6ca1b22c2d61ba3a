//! rustre through the kernel: a FUSE file system over the client library.
//!
//! The adapter is thin on purpose. Every kernel request is turned into calls of one
//! [`rustre_client::Client`] (one server session per mount), on the tokio runtime the mount is
//! given; the fuser threads only decode requests and spawn. The cache, the leases and the retry
//! rules live in the client library, where they are tested without a kernel.
//!
//! ## Coherence through the kernel (semantics.md, promise 2)
//! The kernel is told to cache nothing: every entry and attribute goes out with a time-to-live of
//! zero, so every path walk asks the mount (`FUSE_LOOKUP` per component, `FUSE_GETATTR` for a
//! stat). The mount answers those from the library's cache, which is exact (leases revoked
//! before any conflicting change is acknowledged) and costs no network round trip. A syscall
//! that starts after a change returned anywhere therefore never sees the old name, the old
//! negative entry or the old attributes. Because the kernel holds nothing that can go stale, the
//! mount never has to send it an invalidation: no notification, so no notification deadlock.
//! File data: the page cache is dropped at every open (no `FOPEN_KEEP_CACHE`), and the kernel
//! drops it too when a getattr shows a new size or mtime (`FUSE_AUTO_INVAL_DATA`): close-to-open
//! consistency at the least.
//!
//! ## No ESTALE (semantics.md, "ESTALE discipline")
//! The kernel's lookup counts are mirrored ([`refs::KernelRefs`]). A lookup the mount answers is
//! pinned on the server in the same atomic step as the name's resolution (`Op::PinName`), unless
//! this mount holds a pin on that inode already (then it costs nothing). So an inode the kernel
//! found by a walk lives on the server (as an orphan, if another client removes its name) until
//! the kernel forgets it: the `FUSE_OPEN` by id that follows a walk cannot meet ESTALE. Inodes the
//! mount made itself (create, mkdir, ...) or listed (readdirplus) are referenced but not pinned;
//! if one is destroyed by another client, a request by its id answers ESTALE, the kernel walks
//! again with `LOOKUP_REVAL`, and that walk's lookups pin: the second pass cannot go stale.
//! Requests by (directory, name) are resolved by name on the server in one atomic step (create
//! is the server's atomic open-or-create).

pub mod kernel;
pub mod refs;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Config, Errno as KernelErrno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags as KernelOpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, Session, SessionACL, SessionUnmounter, TimeOrNow, WriteFlags,
};
use rustre_client::rustre_proto::{
    Attr, Caller, DirEntry, Errno, FileKind, Grant, OpenFlags, RenameMode, SetAttrIn, TimeSet, Timestamp, XattrMode,
};
use rustre_client::{Cause, Client, File, LinkEvent, LinkHook, RevocationHook};

use kernel::KernelCache;
use refs::KernelRefs;

/// What the kernel may cache of negative entries and readdirplus entries: nothing (see
/// `kernel.rs`; leased entries and attributes get what their lease has left).
const TTL: Duration = Duration::ZERO;

/// The first `fh` of a read-only open served by a pin (`Shared::pinned_opens`); server handles
/// count up from 1 and never get near it.
const PINNED_OPEN_FIRST: u64 = 1 << 63;

/// Entries asked of the server per readdir page (the kernel's buffer takes what fits; the rest
/// is served from the directory handle's page).
const READDIR_PAGE_ENTRIES: u32 = 512;

/// fuser threads reading `/dev/fuse` (handlers only decode and spawn, so a few are enough).
pub const THREADS_DEFAULT: usize = 4;

/// Errors of mounting and unmounting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    #[error("mounting {mountpoint}: {source}")]
    Mount { mountpoint: PathBuf, source: std::io::Error },
    #[error("unmounting {mountpoint}: {source}")]
    Unmount { mountpoint: PathBuf, source: std::io::Error },
    #[error("the FUSE session on {mountpoint} ended with an error: {source}")]
    Session { mountpoint: PathBuf, source: std::io::Error },
}

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Shown as the mount's source in `/proc/mounts` (`fsname`).
    pub fsname: String,
    /// fuser threads reading requests.
    pub threads: usize,
    /// Let users other than the mounter in (`allow_other`); permissions are then checked by the
    /// kernel against the mode bits, owner and group (`default_permissions`).
    pub allow_other: bool,
    /// Pin what the kernel looks up (`Op::PinName`). Always on, except in control runs that
    /// prove the tests notice the ESTALE an application would otherwise see.
    pub pin_lookups: bool,
    /// Let the kernel keep the entries and attributes the client holds leases on, made to
    /// forget them on revocation (`kernel.rs`; entries need Linux 6.16). Off: the kernel asks
    /// this mount for every path component and every stat.
    pub kernel_cache: bool,
    /// A fault for tests: every notification to the kernel (dentry epoch bump, attribute drop)
    /// fails with EIO, as if the kernel refused it, to show the mount fails closed.
    pub refuse_kernel_notifications: bool,
    /// A planted bug, for control runs only: the revocation hook's notifications never reach
    /// the kernel (no epoch bump, no attribute drop), to show the tests notice stale copies.
    pub fault_skip_kernel_notifications: bool,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            fsname: "rustre".to_string(),
            threads: THREADS_DEFAULT,
            allow_other: true,
            pin_lookups: true,
            kernel_cache: true,
            refuse_kernel_notifications: false,
            fault_skip_kernel_notifications: false,
        }
    }
}

/// Makes `kernel` mirror what `client` caches (`revocation_hook`, `link_hook`). Used by `mount`;
/// the simulator installs the same hooks in front of a model of the kernel.
pub fn mirror(client: &Client, kernel: Arc<KernelCache>, refs: Arc<Mutex<KernelRefs>>) {
    client.set_revocation_hook(Some(revocation_hook(kernel.clone(), refs.clone())));
    client.set_link_hook(Some(link_hook(kernel, refs)));
}

/// The client's revocation hook for a kernel: drops the kernel's copies under revoked or
/// given-back leases (`KernelCache::on_revoke`). `refs` counts the kernel's references.
pub fn revocation_hook(kernel: Arc<KernelCache>, refs: Arc<Mutex<KernelRefs>>) -> RevocationHook {
    Arc::new(move |leases: &[Grant], cause: Cause| {
        // The refs lock is taken and dropped per question, never held while the kernel is told.
        let refs = refs.clone();
        kernel.on_revoke(leases, cause, move |ino| refs.lock().expect("refs lock").kernel(ino) > 0)
    })
}

/// The client's link hook for a kernel: everything goes when the connection is lost or the
/// machine was suspended, and the pins go with a session the server forgot.
pub fn link_hook(kernel: Arc<KernelCache>, refs: Arc<Mutex<KernelRefs>>) -> LinkHook {
    Arc::new(move |event: &LinkEvent| match event {
        // Nothing the client cached may be trusted any more (`Lost`), or the kernel's times to
        // live ran on a clock that stopped while the machine was suspended (`Suspended`).
        LinkEvent::Lost | LinkEvent::Suspended { .. } => {
            let referenced = refs.lock().expect("refs lock").referenced();
            kernel.forget_everything(&referenced);
        }
        // The old session's pins are gone: the next lookup of each inode pins it again.
        LinkEvent::NewSession => refs.lock().expect("refs lock").pins_lost(),
        LinkEvent::Resumed { .. } => {}
    })
}

/// A mounted file system. Dropping it unmounts (lazily if it is busy) and waits for the session.
pub struct Mounted {
    mountpoint: PathBuf,
    unmounter: Arc<Mutex<SessionUnmounter>>,
    session: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    shared: Arc<Shared>,
}

/// Counters of a mount, for tests and `--client-stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountStats {
    /// Inodes the kernel references.
    pub kernel_inodes: usize,
    /// Pins this mount holds on the server (summed over inodes).
    pub pins: u64,
    /// Open file and directory handles.
    pub handles: usize,
    /// Does the kernel keep leased entries (`MountConfig::kernel_cache` on a kernel with
    /// dentry epochs)?
    pub kernel_entries: bool,
    /// Dentry epoch bumps sent to the kernel (one per revocation that names an entry).
    pub epoch_bumps: u64,
    /// Does the kernel keep the attributes the client holds leases on?
    pub kernel_attributes: bool,
    /// Attribute drops the kernel applied (one per revoked attribute lease of an inode it has).
    pub attribute_drops: u64,
    /// Notifications the kernel refused (before the unmount): each made the client wait out
    /// its trust window before telling the server (`kernel.rs`).
    pub notification_failures: u64,
}

/// Mounts `client`'s file system on `mountpoint` (which must be an existing directory) and
/// serves it on `runtime` until it is unmounted. Blocks until the kernel's INIT is answered.
pub fn mount(
    client: Client,
    runtime: tokio::runtime::Handle,
    mountpoint: &Path,
    config: &MountConfig,
) -> Result<Mounted, MountError> {
    let shared = Arc::new(Shared {
        client,
        runtime,
        pin_lookups: config.pin_lookups,
        groups: Mutex::default(),
        refs: Arc::default(),
        files: Mutex::default(),
        pinned_opens: Mutex::default(),
        next_pinned_open: std::sync::atomic::AtomicU64::new(PINNED_OPEN_FIRST),
        dirs: Mutex::default(),
        kernel: Arc::new(KernelCache::default()),
        kernel_cache: config.kernel_cache,
        unmounter: std::sync::OnceLock::new(),
    });
    let mut options = Config::default();
    options.mount_options = vec![
        MountOption::FSName(config.fsname.clone()),
        MountOption::Subtype("rustre".to_string()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    options.acl = if config.allow_other { SessionACL::All } else { SessionACL::Owner };
    options.n_threads = Some(config.threads.max(1));
    let failed = |source| MountError::Mount { mountpoint: mountpoint.to_path_buf(), source };
    let mut session = Session::new(RustreFs { shared: shared.clone() }, mountpoint, &options).map_err(failed)?;
    // Before the session serves anything: the descriptor that makes the kernel forget.
    let fd = session.as_fd().try_clone_to_owned().map_err(failed)?;
    shared.kernel.set_channel(Box::new(fd));
    shared.kernel.refuse_notifications.store(config.refuse_kernel_notifications, std::sync::atomic::Ordering::Relaxed);
    shared
        .kernel
        .skip_notifications
        .store(config.fault_skip_kernel_notifications, std::sync::atomic::Ordering::Relaxed);
    mirror(&shared.client, shared.kernel.clone(), shared.refs.clone());
    let unmounter = Arc::new(Mutex::new(session.unmount_callable()));
    set_read_ahead(mountpoint, READ_AHEAD_KB);
    // `destroy` lets fuser's record of the mount go when the session ends (`Shared::unmounter`).
    assert!(shared.unmounter.set(unmounter.clone()).is_ok(), "set once, before the session runs");
    let thread =
        std::thread::Builder::new().name("rustre-fuse".to_string()).spawn(move || session.run()).map_err(failed)?;
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    Ok(Mounted { mountpoint: mountpoint.to_path_buf(), unmounter, session: Some(thread), shared })
}

/// How far the kernel reads ahead of a sequential reader of this mount. The kernel's default for
/// a FUSE mount (128 KiB) makes a 1 MiB `read(2)` eight round trips to the server; a larger
/// window lets the kernel ask for more at once (256 MiB read through the mount, 2 threads:
/// 856 MiB/s at 128 KiB, 1,157 at 1 MiB, 1,006 and bursty at 4 MiB; docs/BENCHMARKS.md).
const READ_AHEAD_KB: u32 = 1024;

/// Sets the read-ahead window of the mount at `mountpoint` (its backing device's
/// `/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`, found in `/proc/self/mountinfo`, so that the
/// mount itself is not asked anything before its session runs). Best effort: a failure is
/// logged and the kernel's default stays.
fn set_read_ahead(mountpoint: &Path, kb: u32) {
    let result = (|| -> std::io::Result<()> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        // Absolute, as mountinfo shows it; the parent only is resolved, because resolving the
        // mountpoint itself would ask the mount, whose session does not run yet.
        let absolute = match (mountpoint.parent(), mountpoint.file_name()) {
            (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => std::fs::canonicalize(parent)?.join(name),
            (_, Some(name)) => std::env::current_dir()?.join(name),
            _ => mountpoint.to_path_buf(),
        };
        let device = device_of(&mountinfo, &absolute)
            .ok_or_else(|| std::io::Error::other("the mount is not in /proc/self/mountinfo"))?;
        std::fs::write(format!("/sys/class/bdi/{device}/read_ahead_kb"), kb.to_string())
    })();
    match result {
        Ok(()) => tracing::debug!(kb, "read-ahead window set"),
        Err(error) => tracing::info!(%error, "the read-ahead window stays the kernel's default"),
    }
}

/// The `MAJOR:MINOR` of the last mount on `mountpoint` in a `/proc/self/mountinfo` text (fields:
/// id, parent id, major:minor, root, mount point with spaces and such escaped in octal, ...).
fn device_of(mountinfo: &str, mountpoint: &Path) -> Option<String> {
    let wanted = mountpoint.to_str()?;
    let unescape =
        |field: &str| field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\");
    mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (fields.len() > 4 && unescape(fields[4]) == wanted).then(|| fields[2].to_string())
    })
}

/// Unmounts a mount from anywhere (a signal handler's task, another thread).
#[derive(Clone)]
pub struct Unmounter {
    mountpoint: PathBuf,
    unmounter: Arc<Mutex<SessionUnmounter>>,
}

impl Unmounter {
    /// Unmounts; if the file system is busy (a process has a file open or its working directory
    /// there), detaches it lazily: it is gone from the namespace at once, and the session ends
    /// when its last user goes.
    pub fn unmount(&self) -> Result<(), MountError> {
        let result = self.unmounter.lock().expect("unmounter lock").unmount();
        match result {
            Ok(()) => Ok(()),
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {
                tracing::warn!(mountpoint = %self.mountpoint.display(), "busy: detaching lazily");
                detach(&self.mountpoint)
                    .map_err(|source| MountError::Unmount { mountpoint: self.mountpoint.clone(), source })
            }
            Err(source) => Err(MountError::Unmount { mountpoint: self.mountpoint.clone(), source }),
        }
    }
}

/// `umount2(MNT_DETACH)`.
fn detach(mountpoint: &Path) -> std::io::Result<()> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    let result = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    if result == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

impl Mounted {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn unmounter(&self) -> Unmounter {
        Unmounter { mountpoint: self.mountpoint.clone(), unmounter: self.unmounter.clone() }
    }

    /// The client session this mount serves through.
    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    pub fn stats(&self) -> MountStats {
        let (kernel_inodes, pins) = {
            let refs = self.shared.refs.lock().expect("refs lock");
            refs.check_invariants();
            (refs.len(), refs.pinned_total())
        };
        let handles = self.shared.files.lock().expect("files lock").len()
            + self.shared.pinned_opens.lock().expect("pinned opens lock").len()
            + self.shared.dirs.lock().expect("dirs lock").len();
        MountStats {
            kernel_inodes,
            pins,
            handles,
            kernel_entries: self.shared.kernel.caches_entries(),
            epoch_bumps: self.shared.kernel.bumps.load(std::sync::atomic::Ordering::Relaxed),
            kernel_attributes: self.shared.kernel.caches_attributes(),
            attribute_drops: self.shared.kernel.attribute_drops.load(std::sync::atomic::Ordering::Relaxed),
            notification_failures: self.shared.kernel.notification_failures.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Waits until the file system is unmounted (by `Unmounter::unmount`, `umount` or
    /// `fusermount3 -u`) and the session has ended.
    pub fn wait(mut self) -> Result<(), MountError> {
        self.join()
    }

    /// Unmounts and waits for the session to end.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.unmounter().unmount()?;
        self.join()
    }

    fn join(&mut self) -> Result<(), MountError> {
        let Some(thread) = self.session.take() else { return Ok(()) };
        let result = thread.join();
        // The session is over: nothing is left in the kernel to make forget.
        self.shared.client.set_revocation_hook(None);
        self.shared.client.set_link_hook(None);
        let result = result.unwrap_or_else(|_| Err(std::io::Error::other("the FUSE session thread panicked")));
        tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted");
        result.map_err(|source| MountError::Session { mountpoint: self.mountpoint.clone(), source })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.session.is_some() {
            if let Err(error) = self.unmounter().unmount() {
                tracing::error!(%error, "unmounting on drop");
            }
            if let Err(error) = self.join() {
                tracing::error!(%error, "waiting for the session on drop");
            }
        }
    }
}

/// State shared by the fuser threads and the tasks they spawn. Lock order: each std mutex is a
/// leaf, held for one map operation, never across an await or a call into the kernel.
struct Shared {
    client: Client,
    /// fuser's handle on the mount, set before the session runs.
    unmounter: std::sync::OnceLock<Arc<Mutex<SessionUnmounter>>>,
    runtime: tokio::runtime::Handle,
    pin_lookups: bool,
    /// Supplementary groups of the threads that made recent requests (`caller_for`).
    groups: Mutex<GroupsCache>,
    /// Shared with the revocation hook, which asks whether the kernel references an inode.
    refs: Arc<Mutex<KernelRefs>>,
    /// Open files by handle (the server's handle number is the kernel's `fh`).
    files: Mutex<HashMap<u64, Arc<File>>>,
    /// Read-only opens of pinned inodes, served without a server handle: `fh` -> inode, and the
    /// session acting as the opener (reads are checked as the opener's, whoever the kernel says
    /// reads: a page read ahead may come from another context). The pin keeps the inode on the
    /// server as a handle would, for at least as long as the file is open (the kernel holds an
    /// open file's inode, so it cannot forget it meanwhile).
    pinned_opens: Mutex<HashMap<u64, (u64, Client)>>,
    /// The next `fh` of a pinned open: from `PINNED_OPEN_FIRST` up, above every server handle.
    next_pinned_open: std::sync::atomic::AtomicU64,
    /// Open directories by handle.
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirHandle>>>>,
    /// What the kernel caches, and the descriptor that makes it forget (`kernel.rs`).
    kernel: Arc<KernelCache>,
    kernel_cache: bool,
}

/// An open directory: a server handle (which keeps the directory alive to the last page, as an
/// orphan if it is removed meanwhile) and the last page read, from which the kernel's next
/// readdir calls are served.
struct DirHandle {
    file: Option<File>,
    /// The session acting as the opener: pages are read as the opener's.
    client: Client,
    ino: u64,
    /// The cookie the page was read after, its entries (cookies growing), and whether it ends
    /// the directory.
    page: Option<(u64, Vec<DirEntry>, bool, bool)>,
}

struct RustreFs {
    shared: Arc<Shared>,
}

/// The kernel's errno for a library error: the same, but for ENOTCONN (the library gave up
/// waiting for an unreachable server, or the session ended). The kernel answers ENOTCONN itself
/// once a FUSE daemon is gone, so users read it as "this mount is dead", while this mount goes
/// on and recovers: EIO, as an NFS `soft` mount answers when its server does not.
fn kernel_errno(error: &rustre_client::Error) -> KernelErrno {
    match error.errno() {
        Errno::ENOTCONN => KernelErrno::EIO,
        errno => KernelErrno::from_i32(errno.0),
    }
}

/// A kernel reply that can carry an errno instead.
trait KernelReply {
    fn fail(self, errno: KernelErrno);
}

macro_rules! kernel_replies {
    ($($reply:ty),*) => {
        $(impl KernelReply for $reply {
            fn fail(self, errno: KernelErrno) {
                self.error(errno);
            }
        })*
    };
}

kernel_replies!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyEmpty,
    ReplyEntry,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

/// Answers the kernel with `ok` on success, with the library error's errno otherwise.
fn answer<R: KernelReply, T>(reply: R, result: rustre_client::Result<T>, ok: impl FnOnce(R, T)) {
    match result {
        Ok(value) => ok(reply, value),
        Err(error) => reply.fail(kernel_errno(&error)),
    }
}

/// The kernel's release of `handle` (file or directory): takes it out of `table` (EBADF if it is
/// not there) and closes the file that `take` gives back of it, on the runtime.
fn release<T, F>(
    shared: &Shared,
    table: &Mutex<HashMap<u64, T>>,
    handle: FileHandle,
    reply: ReplyEmpty,
    take: impl FnOnce(T) -> F + Send + 'static,
) where
    T: Send + 'static,
    F: std::future::Future<Output = Option<File>> + Send,
{
    let Some(entry) = table.lock().expect("handle table lock").remove(&handle.0) else {
        reply.error(KernelErrno::EBADF);
        return;
    };
    shared.runtime.spawn(async move {
        match take(entry).await {
            Some(file) => done(reply, file.close().await),
            None => reply.ok(),
        }
    });
}

/// `answer` for calls that return nothing.
fn done(reply: ReplyEmpty, result: rustre_client::Result<()>) {
    answer(reply, result, |reply, ()| reply.ok());
}

fn kind(kind: FileKind) -> FileType {
    match kind {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.blocks,
        atime: attr.atime.to_system_time(),
        mtime: attr.mtime.to_system_time(),
        ctime: attr.ctime.to_system_time(),
        crtime: attr.ctime.to_system_time(),
        kind: kind(attr.kind),
        perm: (attr.perm & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// rustre's open flags for the kernel's `O_*` flags (access mode, append, truncate).
fn open_flags(flags: i32) -> OpenFlags {
    let mut out = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => OpenFlags::READ,
        libc::O_WRONLY => OpenFlags::WRITE,
        _ => OpenFlags::READ | OpenFlags::WRITE,
    };
    if flags & libc::O_APPEND != 0 {
        out = out | OpenFlags::APPEND;
    }
    if flags & libc::O_TRUNC != 0 {
        out = out | OpenFlags::TRUNCATE;
    }
    out
}

fn time_set(time: TimeOrNow) -> TimeSet {
    match time {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(time) => TimeSet::At(Timestamp::from_system_time(time)),
    }
}

/// The identity of the process behind a kernel request. The kernel sends its fs uid and gid but
/// not its supplementary groups, which the server needs as much (the kernel's own check, with
/// `default_permissions`, uses them): they are read from `/proc/PID/status`, where PID is the
/// calling thread (groups are per thread in Linux; every thread of a process has the same set,
/// unless one calls the raw syscall). A thread gone by then (pid 0: the kernel's own requests)
/// has none. Root's are not read: the superuser passes every check without them, and squashed
/// it gains nothing from them.
pub fn caller_of(uid: u32, gid: u32, pid: u32) -> Caller {
    let groups = if uid == 0 || pid == 0 { Vec::new() } else { groups_of(pid) };
    Caller { uid, gid, groups }
}

/// How long the groups read for a thread are used without reading /proc again.
pub const GROUPS_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Threads whose groups are kept at once; beyond, the cache starts afresh.
pub const GROUPS_CACHE_MAX: usize = 1024;

/// Recently read supplementary groups, by (thread id, uid, gid): a pid reused within the TTL
/// by a process of the same user and group is the only way to get another's.
#[derive(Default)]
struct GroupsCache {
    entries: HashMap<(u32, u32, u32), (std::time::Instant, Vec<u32>)>,
}

impl GroupsCache {
    fn fresh(&self, key: (u32, u32, u32), now: std::time::Instant) -> Option<Vec<u32>> {
        let (read, groups) = self.entries.get(&key)?;
        (now.saturating_duration_since(*read) < GROUPS_CACHE_TTL).then(|| groups.clone())
    }

    fn insert(&mut self, key: (u32, u32, u32), now: std::time::Instant, groups: Vec<u32>) {
        if self.entries.len() >= GROUPS_CACHE_MAX {
            self.entries.clear();
        }
        self.entries.insert(key, (now, groups));
        debug_assert!(self.entries.len() <= GROUPS_CACHE_MAX);
    }
}

/// The supplementary groups of thread `pid` (empty if it is gone or `/proc` says nothing).
fn groups_of(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return Vec::new() };
    let Some(line) = status.lines().find_map(|line| line.strip_prefix("Groups:")) else { return Vec::new() };
    line.split_ascii_whitespace().filter_map(|group| group.parse().ok()).take(rustre_proto::msg::GROUPS_MAX).collect()
}

fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

impl Shared {
    /// The session acting as the kernel request's caller: the identity the server checks
    /// permissions against, and the owner of what it creates.
    fn client_for(&self, request: &Request) -> Client {
        self.client.as_caller(self.caller_for(request.uid(), request.gid(), request.pid()))
    }

    /// `caller_of`, with the groups of a thread read from /proc at most once per
    /// `GROUPS_CACHE_TTL` (a read costs about as much as a whole request the kernel answers
    /// from a pin). A thread whose groups change keeps the old ones that long at most; the
    /// kernel's own check (`default_permissions`) uses the live ones, and comes first.
    fn caller_for(&self, uid: u32, gid: u32, pid: u32) -> Caller {
        if uid == 0 || pid == 0 {
            return caller_of(uid, gid, pid);
        }
        let now = std::time::Instant::now();
        let key = (pid, uid, gid);
        if let Some(groups) = self.groups.lock().expect("groups lock").fresh(key, now) {
            return Caller { uid, gid, groups };
        }
        // Read without the lock: /proc may be slow, and other threads' requests need not wait.
        let caller = caller_of(uid, gid, pid);
        self.groups.lock().expect("groups lock").insert(key, now, caller.groups.clone());
        caller
    }

    /// Answers the kernel's lookup of `name` in `parent`: from the cache when this mount holds
    /// a pin on the inode found, else by `lookup_pinned` (resolve and pin in one server step).
    /// Either way one kernel reference is counted before the reply goes out, so a forget of it
    /// can never arrive first.
    /// `client` acts as the kernel's caller: the server checks its search permission.
    async fn lookup(&self, client: &Client, parent: u64, name: &[u8]) -> rustre_client::Result<Attr> {
        let cached = client.lookup(parent, name).await?;
        if self.refs.lock().expect("refs lock").add_if_pinned(cached.ino) {
            return Ok(cached);
        }
        if !self.pin_lookups {
            self.refs.lock().expect("refs lock").add(cached.ino);
            return Ok(cached);
        }
        match client.lookup_pinned(parent, name).await {
            Ok(attr) => {
                self.refs.lock().expect("refs lock").add_pinned(attr.ino);
                Ok(attr)
            }
            // The session pins as many inodes as the server allows (`pins_per_session_max`):
            // this one is referenced without a pin, as with `pin_lookups` off.
            Err(error) if error.errno == Errno::EMFILE => {
                self.refs.lock().expect("refs lock").add(cached.ino);
                Ok(cached)
            }
            Err(error) => Err(error),
        }
    }

    /// Counts the kernel reference an entry reply (mkdir, symlink, ...) of `name` in `parent`
    /// gives, and sends it.
    fn reply_entry(&self, reply: ReplyEntry, parent: u64, name: &[u8], attr: &Attr) {
        self.refs.lock().expect("refs lock").add(attr.ino);
        self.send_entry(reply, parent, name, attr);
    }

    /// Sends an entry reply with the times to live its leases allow.
    fn send_entry(&self, reply: ReplyEntry, parent: u64, name: &[u8], attr: &Attr) {
        let (entry_ttl, attr_ttl) = self.ttls(parent, name, attr.ino);
        reply.entry_with_ttls(&attr_ttl, &entry_ttl, &file_attr(attr), Generation(attr.generation));
    }

    /// How long the kernel may keep the entry `name` -> `ino` in `parent`, and the attributes of
    /// `ino`: while the client holds their leases (checked now, in one look at the cache; a
    /// revocation after this check bumps the dentry epoch, which the kernel read before sending
    /// its request, so the entry is revalidated anyway, and drops the attributes: see `attr_ttl`).
    fn ttls(&self, parent: u64, name: &[u8], ino: u64) -> (Duration, Duration) {
        let (name_left, attr_left) = self.client.leases_left(parent, name, ino);
        (self.kernel.entry_ttl(|| name_left), self.kernel.attr_ttl(|| attr_left))
    }

    /// How long the kernel may keep the attributes of `ino`: while the client holds their lease
    /// (checked now; a revocation after this check drops them, and a reply crossing that drop
    /// is not applied by the kernel: see `kernel.rs`).
    fn attr_ttl(&self, ino: u64) -> Duration {
        self.kernel.attr_ttl(|| self.client.attr_lease_left(ino))
    }

    fn forget(self: &Arc<Self>, ino: u64, count: u64) {
        if ino == INodeNo::ROOT.0 {
            return;
        }
        let unpin = self.refs.lock().expect("refs lock").forget(ino, count);
        if let Some((ino, pins)) = unpin {
            // Given back from a task of its own: forget has no reply, and nothing waits on it.
            let client = self.client.clone();
            self.runtime.spawn(async move {
                if let Err(error) = client.unpin(ino, pins).await {
                    tracing::warn!(ino, pins, %error, "giving back pins after the kernel's forget");
                }
            });
        }
    }

    fn file(&self, handle: FileHandle) -> Option<Arc<File>> {
        self.files.lock().expect("files lock").get(&handle.0).cloned()
    }

    /// Reads one page of a directory after `cookie`, or serves it from the page the handle
    /// holds. Returns the entries after `cookie` and whether they end the directory.
    async fn dir_entries(
        &self,
        handle: FileHandle,
        cookie: u64,
        with_attrs: bool,
    ) -> rustre_client::Result<(Vec<DirEntry>, bool)> {
        let dir = self.dirs.lock().expect("dirs lock").get(&handle.0).cloned();
        let Some(dir) = dir else { return Err(Errno::EBADF.into()) };
        let mut dir = dir.lock().await;
        // A rewind (cookie 0) always reads afresh: rewinddir shows the directory as it is now.
        if cookie > 0
            && let Some((from, entries, end, attrs)) = &dir.page
            && *from <= cookie
            && *attrs == with_attrs
            && (*end || entries.last().is_some_and(|last| last.cookie > cookie))
        {
            let rest: Vec<DirEntry> = entries.iter().filter(|entry| entry.cookie > cookie).cloned().collect();
            return Ok((rest, *end));
        }
        let (entries, end) = dir.client.read_dir_page(dir.ino, cookie, READDIR_PAGE_ENTRIES, with_attrs).await?;
        dir.page = Some((cookie, entries.clone(), end, with_attrs));
        Ok((entries, end))
    }
}

/// The kernel's readdir offsets: 1 is ".", 2 is "..", and an entry's is its cookie plus 2, so
/// the kernel's offset of the last entry it took is where the next call goes on.
const OFFSET_DOT: u64 = 1;
const OFFSET_DOTDOT: u64 = 2;

fn entry_offset(entry: &DirEntry) -> u64 {
    entry.cookie + OFFSET_DOTDOT
}

fn cookie_after(offset: u64) -> u64 {
    offset.saturating_sub(OFFSET_DOTDOT)
}

impl Filesystem for RustreFs {
    /// The session is over: the kernel has unmounted (by us or by `umount`). fuser's record of
    /// the mount is let go here, where "not mounted" (EINVAL) is the expected answer; when the
    /// session drops it, fuser would log that answer as a failure on every ordinary `umount`.
    fn destroy(&mut self) {
        if let Some(unmounter) = self.shared.unmounter.get()
            && let Err(error) = unmounter.lock().expect("unmounter lock").unmount()
            && error.raw_os_error() != Some(libc::EINVAL)
        {
            tracing::warn!(%error, "letting the mount go after the session ended");
        }
    }

    fn init(&mut self, _request: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each separately: a kernel without one of them still mounts.
        for wanted in [
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_MAX_PAGES,
        ] {
            if config.add_capabilities(wanted).is_err() {
                tracing::info!(?wanted, "the kernel lacks a FUSE capability");
            }
        }
        if self.shared.kernel_cache {
            let minor = config.kernel_abi().1;
            if !self.shared.kernel.enable(minor) {
                tracing::info!(minor, "the kernel has no dentry epochs (FUSE 7.44): it caches no entries");
            }
        }
        Ok(())
    }

    fn lookup(&self, request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // The common case, a cached name whose inode this mount has pinned already, is answered
        // here: no hand-off to a task (which costs more than the answer).
        match self.shared.client.lookup_cached(parent.0, name.as_bytes()) {
            Some(Err(error)) => return reply.error(kernel_errno(&error)),
            Some(Ok(attr)) if self.shared.refs.lock().expect("refs lock").add_if_pinned(attr.ino) => {
                return self.shared.send_entry(reply, parent.0, name.as_bytes(), &attr);
            }
            _ => {}
        }
        let shared = self.shared.clone();
        let client = self.shared.client_for(request);
        let name = name_bytes(name);
        self.shared.runtime.spawn(async move {
            answer(reply, shared.lookup(&client, parent.0, &name).await, |reply, attr| {
                shared.send_entry(reply, parent.0, &name, &attr)
            })
        });
    }

    // BATCH_FORGET: fuser's default calls this for each node (its `ForgetOne` is private).
    fn forget(&self, _request: &Request, ino: INodeNo, nlookup: u64) {
        self.shared.forget(ino.0, nlookup);
    }

    fn getattr(&self, _request: &Request, ino: INodeNo, _handle: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(attr) = self.shared.client.getattr_cached(ino.0) {
            // Cached: answered on this thread.
            return reply.attr(&self.shared.attr_ttl(ino.0), &file_attr(&attr));
        }
        let shared = self.shared.clone();
        self.shared.runtime.spawn(async move {
            answer(reply, shared.client.getattr(ino.0).await, |reply, attr| {
                reply.attr(&shared.attr_ttl(attr.ino), &file_attr(&attr))
            })
        });
    }

    fn setattr(
        &self,
        request: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        handle: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let client = self.shared.client_for(request);
        let set = SetAttrIn {
            perm: mode.map(|mode| mode & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            // An ftruncate: through the server's handle, if the kernel's is one (a write open).
            handle: handle.filter(|handle| handle.0 < PINNED_OPEN_FIRST && size.is_some()).map(|handle| handle.0),
        };
        let shared = self.shared.clone();
        self.shared.runtime.spawn(async move {
            answer(reply, client.setattr(ino.0, set).await, |reply, attr| {
                reply.attr(&shared.attr_ttl(attr.ino), &file_attr(&attr))
            })
        });
    }

    fn readlink(&self, _request: &Request, ino: INodeNo, reply: ReplyData) {
        let client = self.shared.client.clone();
        self.shared
            .runtime
            .spawn(async move { answer(reply, client.readlink_ino(ino.0).await, |reply, target| reply.data(&target)) });
    }

    fn mknod(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            // Devices, FIFOs and sockets are not stored by rustre.
            reply.error(KernelErrno::EPERM);
            return;
        }
        let shared = self.shared.clone();
        let client = self.shared.client_for(request);
        let name = name_bytes(name);
        let perm = mode & !umask & 0o7777;
        self.shared.runtime.spawn(async move {
            let flags = OpenFlags::READ | OpenFlags::CREATE | OpenFlags::EXCLUSIVE;
            match client.open_at(parent.0, &name, flags, perm).await {
                Ok(file) => {
                    let attr = file.cached_attr().clone();
                    if let Err(error) = file.close().await {
                        tracing::warn!(%error, "closing after mknod");
                    }
                    shared.reply_entry(reply, parent.0, &name, &attr);
                }
                Err(error) => reply.error(kernel_errno(&error)),
            }
        });
    }

    fn mkdir(&self, request: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let shared = self.shared.clone();
        let client = self.shared.client_for(request);
        let name = name_bytes(name);
        let perm = mode & !umask & 0o7777;
        self.shared.runtime.spawn(async move {
            answer(reply, client.mkdir_at(parent.0, &name, perm).await, |reply, attr| {
                shared.reply_entry(reply, parent.0, &name, &attr)
            })
        });
    }

    fn unlink(&self, request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let client = self.shared.client_for(request);
        let name = name_bytes(name);
        self.shared.runtime.spawn(async move { done(reply, client.unlink_at(parent.0, &name).await) });
    }

    fn rmdir(&self, request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let client = self.shared.client_for(request);
        let name = name_bytes(name);
        self.shared.runtime.spawn(async move { done(reply, client.rmdir_at(parent.0, &name).await) });
    }

    fn symlink(&self, request: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let shared = self.shared.clone();
        let client = self.shared.client_for(request);
        let name = name_bytes(link_name);
        let target = target.as_os_str().as_bytes().to_vec();
        self.shared.runtime.spawn(async move {
            answer(reply, client.symlink_at(parent.0, &name, &target).await, |reply, attr| {
                shared.reply_entry(reply, parent.0, &name, &attr)
            })
        });
    }

    fn rename(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            // RENAME_WHITEOUT (overlayfs) and combinations.
            reply.error(KernelErrno::EINVAL);
            return;
        };
        let client = self.shared.client_for(request);
        let (name, new_name) = (name_bytes(name), name_bytes(new_name));
        // Counted from before the request until after the reply: see `KernelCache::on_revoke`.
        let renaming = self.shared.kernel.renaming();
        self.shared.runtime.spawn(async move {
            let result = client.rename_at(parent.0, &name, new_parent.0, &new_name, mode).await;
            done(reply, result);
            drop(renaming);
        });
    }

    fn link(&self, request: &Request, ino: INodeNo, new_parent: INodeNo, new_name: &OsStr, reply: ReplyEntry) {
        let shared = self.shared.clone();
        let client = self.shared.client_for(request);
        let new_name = name_bytes(new_name);
        self.shared.runtime.spawn(async move {
            answer(reply, client.link_at(ino.0, new_parent.0, &new_name).await, |reply, attr| {
                shared.reply_entry(reply, new_parent.0, &new_name, &attr)
            })
        });
    }

    fn open(&self, request: &Request, ino: INodeNo, flags: KernelOpenFlags, reply: ReplyOpen) {
        // A read-only open of an inode this mount pins needs nothing of the server: the kernel
        // checked the permissions, the pin keeps the inode, and reads go by the pin.
        let read_only = flags.0 & libc::O_ACCMODE == libc::O_RDONLY && flags.0 & libc::O_TRUNC == 0;
        if read_only && self.shared.refs.lock().expect("refs lock").pins(ino.0) > 0 {
            let handle = self.shared.next_pinned_open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let opener = self.shared.client_for(request);
            self.shared.pinned_opens.lock().expect("pinned opens lock").insert(handle, (ino.0, opener));
            // No FOPEN_KEEP_CACHE: the kernel drops this file's pages now (close-to-open).
            return reply.opened(FileHandle(handle), FopenFlags::empty());
        }
        let shared = self.shared.clone();
        let client = self.shared.client_for(request);
        self.shared.runtime.spawn(async move {
            match client.open_ino(ino.0, open_flags(flags.0)).await {
                Ok(file) => {
                    let handle = file.handle();
                    assert!(handle < PINNED_OPEN_FIRST, "server handles stay below the pinned opens'");
                    shared.files.lock().expect("files lock").insert(handle, Arc::new(file));
                    // No FOPEN_KEEP_CACHE: the kernel drops this file's pages now (close-to-open).
                    reply.opened(FileHandle(handle), FopenFlags::empty());
                }
                Err(error) => reply.error(kernel_errno(&error)),
            }
        });
    }

    fn read(
        &self,
        _request: &Request,
        _ino: INodeNo,
        handle: FileHandle,
        offset: u64,
        size: u32,
        _flags: KernelOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let pinned = self.shared.pinned_opens.lock().expect("pinned opens lock").get(&handle.0).cloned();
        if let Some((ino, client)) = pinned {
            self.shared.runtime.spawn(async move {
                answer(reply, client.read_pinned(ino, offset, size as usize).await, |reply, data| reply.data(&data))
            });
            return;
        }
        let Some(file) = self.shared.file(handle) else {
            reply.error(KernelErrno::EBADF);
            return;
        };
        self.shared.runtime.spawn(async move {
            answer(reply, file.read_at(offset, size as usize).await, |reply, data| reply.data(&data))
        });
    }

    fn write(
        &self,
        _request: &Request,
        _ino: INodeNo,
        handle: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: KernelOpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(file) = self.shared.file(handle) else {
            reply.error(KernelErrno::EBADF);
            return;
        };
        let data = data.to_vec();
        self.shared.runtime.spawn(async move {
            answer(reply, file.pwrite(offset, &data).await, |reply, _| reply.written(data.len() as u32))
        });
    }

    fn flush(&self, _request: &Request, _ino: INodeNo, _handle: FileHandle, _owner: LockOwner, reply: ReplyEmpty) {
        // Writes go to the server as they are made (no write-back cache): nothing to flush.
        reply.ok();
    }

    fn release(
        &self,
        _request: &Request,
        _ino: INodeNo,
        handle: FileHandle,
        _flags: KernelOpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if self.shared.pinned_opens.lock().expect("pinned opens lock").remove(&handle.0).is_some() {
            return reply.ok(); // nothing on the server: the pin stays until the kernel forgets
        }
        // A read or write of this handle still running holds a clone; then dropping ours lets
        // the last one close it in the background.
        release(&self.shared, &self.shared.files, handle, reply, |file| async move { Arc::try_unwrap(file).ok() });
    }

    fn fsync(&self, _request: &Request, _ino: INodeNo, handle: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        if self.shared.pinned_opens.lock().expect("pinned opens lock").contains_key(&handle.0) {
            return reply.ok(); // read-only: nothing of ours to make durable
        }
        let Some(file) = self.shared.file(handle) else {
            reply.error(KernelErrno::EBADF);
            return;
        };
        self.shared.runtime.spawn(async move { done(reply, file.fsync().await) });
    }

    fn opendir(&self, request: &Request, ino: INodeNo, _flags: KernelOpenFlags, reply: ReplyOpen) {
        let shared = self.shared.clone();
        let client = self.shared.client_for(request);
        self.shared.runtime.spawn(async move {
            match client.open_ino(ino.0, OpenFlags::READ | OpenFlags::DIRECTORY).await {
                Ok(file) => {
                    let handle = file.handle();
                    let dir = DirHandle { file: Some(file), client, ino: ino.0, page: None };
                    shared.dirs.lock().expect("dirs lock").insert(handle, Arc::new(tokio::sync::Mutex::new(dir)));
                    reply.opened(FileHandle(handle), FopenFlags::empty());
                }
                Err(error) => reply.error(kernel_errno(&error)),
            }
        });
    }

    fn readdir(&self, _request: &Request, ino: INodeNo, handle: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let shared = self.shared.clone();
        self.shared.runtime.spawn(async move {
            if offset < OFFSET_DOT && reply.add(ino, OFFSET_DOT, FileType::Directory, ".") {
                return reply.ok();
            }
            if offset < OFFSET_DOTDOT && reply.add(INodeNo::ROOT, OFFSET_DOTDOT, FileType::Directory, "..") {
                return reply.ok();
            }
            match shared.dir_entries(handle, cookie_after(offset), false).await {
                Ok((entries, _)) => {
                    for entry in &entries {
                        let name = OsStr::from_bytes(&entry.name);
                        if reply.add(INodeNo(entry.ino), entry_offset(entry), kind(entry.kind), name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(error) => reply.error(kernel_errno(&error)),
            }
        });
    }

    fn readdirplus(
        &self,
        _request: &Request,
        ino: INodeNo,
        handle: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let shared = self.shared.clone();
        self.shared.runtime.spawn(async move {
            // "." and ".." take no lookup count in the kernel; they are sent without attributes
            // the kernel would use, so their attributes need not be fetched.
            let dot = |ino: INodeNo| FileAttr { ino, ..file_attr(&placeholder_dir()) };
            if offset < OFFSET_DOT && reply.add(ino, OFFSET_DOT, ".", &TTL, &dot(ino), Generation(0)) {
                return reply.ok();
            }
            if offset < OFFSET_DOTDOT
                && reply.add(INodeNo::ROOT, OFFSET_DOTDOT, "..", &TTL, &dot(INodeNo::ROOT), Generation(0))
            {
                return reply.ok();
            }
            match shared.dir_entries(handle, cookie_after(offset), true).await {
                Ok((entries, _)) => {
                    for entry in &entries {
                        let Some(attr) = &entry.attr else { continue };
                        let name = OsStr::from_bytes(&entry.name);
                        let generation = Generation(attr.generation);
                        let offset = entry_offset(entry);
                        if reply.add(INodeNo(entry.ino), offset, name, &TTL, &file_attr(attr), generation) {
                            break; // full: this one is not sent
                        }
                        // Counted before the reply goes, like every entry the kernel is given.
                        shared.refs.lock().expect("refs lock").add(attr.ino);
                    }
                    reply.ok();
                }
                Err(error) => reply.error(kernel_errno(&error)),
            }
        });
    }

    fn releasedir(
        &self,
        _request: &Request,
        _ino: INodeNo,
        handle: FileHandle,
        _flags: KernelOpenFlags,
        reply: ReplyEmpty,
    ) {
        release(&self.shared, &self.shared.dirs, handle, reply, |dir| async move { dir.lock().await.file.take() });
    }

    fn fsyncdir(&self, _request: &Request, _ino: INodeNo, _handle: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Every namespace change is durable before it is acknowledged.
        reply.ok();
    }

    fn statfs(&self, _request: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let client = self.shared.client.clone();
        self.shared.runtime.spawn(async move {
            match client.statfs().await {
                Ok(statfs) => reply.statfs(
                    statfs.blocks,
                    statfs.blocks_free,
                    statfs.blocks_available,
                    statfs.files,
                    statfs.files_free,
                    statfs.block_size,
                    statfs.name_len_max,
                    statfs.block_size,
                ),
                Err(error) => reply.error(kernel_errno(&error)),
            }
        });
    }

    fn setxattr(
        &self,
        request: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mode = match flags {
            0 => XattrMode::Either,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => {
                reply.error(KernelErrno::EINVAL);
                return;
            }
        };
        let client = self.shared.client_for(request);
        let (name, value) = (name_bytes(name), value.to_vec());
        self.shared.runtime.spawn(async move { done(reply, client.setxattr_ino(ino.0, &name, &value, mode).await) });
    }

    fn getxattr(&self, request: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let client = self.shared.client_for(request);
        let name = name_bytes(name);
        self.shared.runtime.spawn(async move {
            answer(reply, client.getxattr_ino(ino.0, &name).await, |reply, value| reply_xattr(reply, size, &value))
        });
    }

    fn listxattr(&self, request: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let client = self.shared.client_for(request);
        self.shared.runtime.spawn(async move {
            match client.listxattr_ino(ino.0).await {
                Ok(names) => {
                    let mut list = Vec::new();
                    for name in names {
                        list.extend_from_slice(&name);
                        list.push(0);
                    }
                    reply_xattr(reply, size, &list);
                }
                Err(error) => reply.error(kernel_errno(&error)),
            }
        });
    }

    fn removexattr(&self, request: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let client = self.shared.client_for(request);
        let name = name_bytes(name);
        self.shared.runtime.spawn(async move { done(reply, client.removexattr_ino(ino.0, &name).await) });
    }

    fn access(&self, _request: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // With `default_permissions` the kernel checks the mode bits itself; this only says
        // whether the inode is there.
        let client = self.shared.client.clone();
        self.shared.runtime.spawn(async move { answer(reply, client.getattr(ino.0).await, |reply, _| reply.ok()) });
    }

    // What a local file system does not support is answered quietly, as ext4 or tmpfs answer it:
    // these are ordinary requests (Python's `open` asks TCGETS of every file; `cp` tries
    // copy_file_range and SEEK_DATA first), not faults worth a warning in the log.

    /// No ioctl is a terminal's or a file system's here: ENOTTY, as a regular file answers.
    fn ioctl(
        &self,
        _request: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        tracing::trace!(cmd, "ioctl: not supported");
        reply.error(KernelErrno::ENOTTY);
    }

    /// ENOSYS: the kernel remembers it and copies through reads and writes itself.
    fn copy_file_range(
        &self,
        _request: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(KernelErrno::ENOSYS);
    }

    /// ENOSYS: the kernel remembers it and seeks itself (the whole file is data).
    fn lseek(
        &self,
        _request: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        reply.error(KernelErrno::ENOSYS);
    }

    /// ENOSYS: the kernel remembers it and answers EOPNOTSUPP to applications, which fall back
    /// to writing (posix_fallocate does).
    fn fallocate(
        &self,
        _request: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(KernelErrno::ENOSYS);
    }

    fn create(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let shared = self.shared.clone();
        let client = self.shared.client_for(request);
        let name = name_bytes(name);
        let perm = mode & !umask & 0o7777;
        let mut open = open_flags(flags) | OpenFlags::CREATE;
        if flags & libc::O_EXCL != 0 {
            open = open | OpenFlags::EXCLUSIVE;
        }
        // Pinned in the create's own step: the kernel's reference to the file needs a pin (see
        // `refs.rs`), and taking it here spares the next lookup of the name a server call.
        let pinned = self.shared.pin_lookups;
        if pinned {
            open = open | OpenFlags::PIN;
        }
        // The kernel asks for the new file's attributes right after the create: leased, they are
        // answered from the cache, and the reply may let the kernel keep entry and attributes.
        open = open | OpenFlags::LEASE_ATTR;
        self.shared.runtime.spawn(async move {
            // One atomic step on the server: open the file the name has now, or create it
            // (EEXIST only with O_EXCL).
            let mut pinned = pinned;
            let mut opened = client.open_at(parent.0, &name, open, perm).await;
            if pinned && opened.as_ref().is_err_and(|error| error.errno == Errno::EMFILE) {
                // EMFILE with PIN: the session pins as many inodes as the server allows (or has
                // as many handles: then the open fails again, as it should). Without the pin, as
                // a lookup beyond the bound does.
                pinned = false;
                opened = client.open_at(parent.0, &name, OpenFlags(open.0 & !OpenFlags::PIN.0), perm).await;
            }
            match opened {
                Ok(file) => {
                    let attr = file.cached_attr().clone();
                    let handle = file.handle();
                    assert!(handle < PINNED_OPEN_FIRST, "server handles stay below the pinned opens'");
                    shared.files.lock().expect("files lock").insert(handle, Arc::new(file));
                    let mut refs = shared.refs.lock().expect("refs lock");
                    match pinned {
                        true => refs.add_pinned(attr.ino),
                        false => refs.add(attr.ino),
                    }
                    drop(refs);
                    // One time to live for the entry and the attributes: both leased (the create
                    // asked for the attributes' lease), unless a revocation came meanwhile.
                    let (entry_ttl, attr_ttl) = shared.ttls(parent.0, &name, attr.ino);
                    let ttl = entry_ttl.min(attr_ttl);
                    reply.created(
                        &ttl,
                        &file_attr(&attr),
                        Generation(attr.generation),
                        FileHandle(handle),
                        FopenFlags::empty(),
                    );
                }
                Err(error) => reply.error(kernel_errno(&error)),
            }
        });
    }
}

/// Attributes for "." and ".." in readdirplus replies, which the kernel does not use.
fn placeholder_dir() -> Attr {
    Attr {
        ino: INodeNo::ROOT.0,
        generation: 0,
        kind: FileKind::Directory,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        size: 0,
        blocks: 0,
        atime: Timestamp::default(),
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
    }
}

/// An xattr value or list: its size when asked with size 0, ERANGE when it does not fit.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(KernelErrno::ERANGE);
    } else {
        reply.data(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_groups_come_from_proc() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find_map(|line| line.strip_prefix("Groups:")).unwrap();
        let mut expected: Vec<u32> = line.split_ascii_whitespace().map(|group| group.parse().unwrap()).collect();
        let mut read = caller_of(1000, 1000, std::process::id()).groups;
        expected.sort_unstable();
        read.sort_unstable();
        assert_eq!(read, expected);
        assert!(caller_of(0, 0, std::process::id()).groups.is_empty(), "root's are not read");
        assert!(caller_of(1000, 1000, 0).groups.is_empty(), "the kernel's own requests have none");
    }

    #[test]
    fn groups_are_kept_a_while_and_bounded() {
        let mut cache = GroupsCache::default();
        let start = std::time::Instant::now();
        cache.insert((7, 1000, 1000), start, vec![50]);
        assert_eq!(cache.fresh((7, 1000, 1000), start), Some(vec![50]));
        assert_eq!(cache.fresh((7, 1001, 1000), start), None, "another uid is another caller");
        assert_eq!(cache.fresh((7, 1000, 1000), start + GROUPS_CACHE_TTL), None, "read again after the TTL");
        for pid in 0..GROUPS_CACHE_MAX as u32 * 2 {
            cache.insert((pid, 1, 1), start, Vec::new());
            assert!(cache.entries.len() <= GROUPS_CACHE_MAX);
        }
    }

    #[test]
    fn the_device_of_a_mount_is_found_in_mountinfo() {
        let mountinfo = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
97 29 0:39 / /mnt/with\\040space rw,nosuid - fuse.rustre rustre rw
98 29 0:40 / /mnt/a rw,nosuid - fuse.rustre rustre rw
99 98 0:41 / /mnt/a rw,nosuid - fuse.rustre rustre rw
";
        assert_eq!(device_of(mountinfo, Path::new("/mnt/with space")).as_deref(), Some("0:39"));
        assert_eq!(device_of(mountinfo, Path::new("/mnt/a")).as_deref(), Some("0:41"), "the last mount on top");
        assert_eq!(device_of(mountinfo, Path::new("/mnt/b")), None);
    }
}
