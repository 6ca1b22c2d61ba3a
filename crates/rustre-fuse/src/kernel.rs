//! What the kernel caches of this mount, and how it is made to forget.
//!
//! The kernel may keep what the client holds a lease on, for as long as the client itself trusts
//! that lease (until half the lease timeout after it sent the last request the server answered;
//! see `Client::leases_left`), and at most `TTL_LEASED_MAX`. Exactness comes from the lease, not
//! from the time: the client runs its revocation hook before it acknowledges a revocation, so
//! before the change that caused it is answered to anyone, and the hook makes the kernel forget:
//!
//! - *Entries* (dentries: name to inode) of leased names. A revoked name lease bumps the
//!   connection's dentry epoch (`FUSE_NOTIFY_INC_EPOCH`, Linux 6.16, FUSE 7.44). Every dentry
//!   made before the bump fails its next revalidation and is looked up again, which this mount
//!   answers from the client's exact cache. Why the epoch, and not an invalidation of the one
//!   entry (`FUSE_NOTIFY_INVAL_ENTRY`): that one takes the parent directory's inode lock, which a
//!   kernel thread may hold while it waits for a reply of ours that waits on the server, which
//!   waits for this acknowledgement: a deadlock. The epoch bump is an atomic increment in the
//!   kernel; it takes no lock and waits for nothing. The kernel reads the epoch before it sends a
//!   lookup or a create, so an entry whose reply crosses a bump carries the old epoch and is
//!   revalidated: no reply can re-install what a revocation removed.
//! - *Attributes* of inodes whose attribute lease the client holds. A revoked attribute lease
//!   sends `FUSE_NOTIFY_INVAL_INODE` with offset -1: attributes only, no page touched, so no
//!   inode or page lock taken. It bumps the inode's attribute version, so a reply that was in
//!   flight meanwhile (its request read the older version) is not applied. One gap: an inode
//!   the kernel has not instantiated yet from a reply of ours is not found (ENOENT), and the
//!   reply would then install the old attributes. The mount counts the kernel's references
//!   before it sends such a reply, so an ENOENT for an inode it counts as referenced is retried
//!   (bounded by `INSTANTIATION_WAIT_MAX`) until the kernel has it or forgets it.
//!
//! What stays uncached in the kernel (time to live 0): negative entries (an ENOENT reply);
//! entries and attributes from readdirplus (the kernel takes their epoch after the reply
//! arrives, so one could cross a bump unseen, and fuser gives both one time to live); the
//! attributes of a file this client has open for writing, unless it asked for their lease
//! (without it, other writers' changes would not be heard of). A create asks
//! (`OpenFlags::LEASE_ATTR`), since the kernel reads the new file's attributes right after it;
//! its reply carries one time to live for entry and attributes. Kernels before 6.16 cache no
//! entries; attributes need no epochs.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustre_client::rustre_proto::{Grant, LeaseKey};
use rustre_client::{Cause, Forgotten};

/// The longest the kernel may keep anything: a revocation or the end of the client's trust ends
/// it sooner; this only bounds how long a notification the kernel lost would leave it stale.
pub const TTL_LEASED_MAX: Duration = Duration::from_secs(600);

/// How long a revocation hook retries dropping the attributes of an inode the kernel is about
/// to instantiate from a reply of ours (it answered ENOENT, and the mount counts a reference).
const INSTANTIATION_WAIT_MAX: Duration = Duration::from_millis(50);
/// The pause between two such tries (on a timer: no thread waits).
const INSTANTIATION_RETRY: Duration = Duration::from_micros(50);

/// The FUSE minor version that brought `FUSE_NOTIFY_INC_EPOCH`.
pub const EPOCH_MINOR: u32 = 44;

/// `FUSE_NOTIFY_INC_EPOCH` (include/uapi/linux/fuse.h): a notification with no payload.
const FUSE_NOTIFY_INC_EPOCH: i32 = 8;
/// `FUSE_NOTIFY_INVAL_INODE`: `{ u64 ino; i64 off; i64 len }`; a negative `off` drops the
/// attributes only (no page is touched, so no page lock is taken).
const FUSE_NOTIFY_INVAL_INODE: i32 = 2;

/// A rename in flight (`KernelCache::renaming`).
pub struct Renaming(Arc<KernelCache>);

impl Drop for Renaming {
    fn drop(&mut self) {
        let before = self.0.renames.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "a rename is counted before it ends");
    }
}

/// Where notifications go: a second descriptor of the session's `/dev/fuse` (the same open
/// file, written to, never read from), or, in the simulator, a model of the kernel's caches.
pub trait KernelChannel: Send + Sync {
    /// Writes one notification, whole; the kernel's refusal is its errno.
    fn notify(&self, message: &[u8]) -> std::io::Result<()>;
}

impl KernelChannel for OwnedFd {
    fn notify(&self, message: &[u8]) -> std::io::Result<()> {
        // SAFETY: `self` is an open descriptor; `message` outlives the call.
        let written = unsafe { libc::write(self.as_raw_fd(), message.as_ptr().cast(), message.len()) };
        match written {
            written if written < 0 => Err(std::io::Error::last_os_error()),
            written if written as usize == message.len() => Ok(()),
            written => Err(std::io::Error::other(format!("short notification write: {written} bytes"))),
        }
    }
}

/// A notification this mount sends, decoded (for a model of the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notification {
    /// `FUSE_NOTIFY_INC_EPOCH`: every entry made before it is revalidated.
    IncEpoch,
    /// `FUSE_NOTIFY_INVAL_INODE` with offset -1: the inode's attributes are dropped.
    DropAttributes { ino: u64 },
}

impl Notification {
    /// Reads a notification as the kernel would (`struct fuse_out_header`, then the payload);
    /// `None` for anything this mount never sends.
    pub fn decode(message: &[u8]) -> Option<Notification> {
        let header_len = u32::from_ne_bytes(message.get(..4)?.try_into().ok()?) as usize;
        let code = i32::from_ne_bytes(message.get(4..8)?.try_into().ok()?);
        if header_len != message.len() {
            return None;
        }
        match code {
            FUSE_NOTIFY_INC_EPOCH if message.len() == 16 => Some(Notification::IncEpoch),
            FUSE_NOTIFY_INVAL_INODE if message.len() == 40 => {
                let ino = u64::from_ne_bytes(message[16..24].try_into().ok()?);
                let offset = i64::from_ne_bytes(message[24..32].try_into().ok()?);
                (offset < 0).then_some(Notification::DropAttributes { ino })
            }
            _ => None,
        }
    }
}

#[derive(Default)]
pub struct KernelCache {
    /// Where notifications are written (`KernelChannel`).
    channel: OnceLock<Box<dyn KernelChannel>>,
    /// The kernel takes epoch bumps, and the mount wants entries cached.
    epochs: AtomicBool,
    /// The mount wants attributes cached (any kernel can drop them: FUSE 7.12).
    attributes: AtomicBool,
    /// Epoch bumps written.
    pub bumps: AtomicU64,
    /// Renames of this mount in flight (see `on_revoke`).
    renames: AtomicU64,
    /// Attribute invalidations the kernel applied, and those that had to wait for the kernel
    /// to instantiate the inode.
    pub attribute_drops: AtomicU64,
    pub attribute_drop_retries: AtomicU64,
    /// Notifications the kernel refused (other than after the unmount).
    pub notification_failures: AtomicU64,
    /// A fault for tests (`MountConfig::refuse_kernel_notifications`): every notification
    /// fails with EIO, as if the kernel refused it.
    pub refuse_notifications: AtomicBool,
    /// A planted bug for control runs (`MountConfig::fault_skip_kernel_notifications`): every
    /// notification is reported written but never reaches the kernel.
    pub skip_notifications: AtomicBool,
}

impl KernelCache {
    pub fn set_channel(&self, channel: Box<dyn KernelChannel>) {
        assert!(self.channel.set(channel).is_ok(), "the notification channel is set once, before the session runs");
    }

    /// Called from INIT (which fuser answers inside `Session::new`, before the descriptor is
    /// set) with the kernel's FUSE minor version, if the mount wants the kernel to cache.
    /// Returns whether entries will be cached (attributes always are).
    pub fn enable(&self, kernel_minor: u32) -> bool {
        let epochs = kernel_minor >= EPOCH_MINOR;
        self.epochs.store(epochs, Ordering::Release);
        self.attributes.store(true, Ordering::Release);
        epochs
    }

    /// Entries are cached once the kernel has epochs and the descriptor to bump them is set.
    pub fn caches_entries(&self) -> bool {
        self.epochs.load(Ordering::Acquire) && self.channel.get().is_some()
    }

    /// Attributes are cached once the descriptor to drop them is set.
    pub fn caches_attributes(&self) -> bool {
        self.attributes.load(Ordering::Acquire) && self.channel.get().is_some()
    }

    /// Counts a rename in flight until the guard drops (after its reply is sent to the kernel).
    pub fn renaming(self: &Arc<Self>) -> Renaming {
        self.renames.fetch_add(1, Ordering::AcqRel);
        Renaming(self.clone())
    }

    /// The time to live of an entry, given what the client's lease on the name has left.
    pub fn entry_ttl(&self, lease_left: impl FnOnce() -> Duration) -> Duration {
        if self.caches_entries() { lease_left().min(TTL_LEASED_MAX) } else { Duration::ZERO }
    }

    /// The time to live of attributes, given what the client's attribute lease has left.
    pub fn attr_ttl(&self, lease_left: impl FnOnce() -> Duration) -> Duration {
        if self.caches_attributes() { lease_left().min(TTL_LEASED_MAX) } else { Duration::ZERO }
    }

    /// The client's revocation hook: a revoked name makes every kernel entry suspect; a revoked
    /// attribute lease drops the kernel's copy of those attributes. `referenced` tells whether
    /// the kernel holds (or is being handed) a reference to an inode. Never blocks: attributes
    /// of an inode that a reply of ours is about to make are dropped in later rounds
    /// (`Forgotten::Again`), and whatever the kernel refuses to drop is reported kept
    /// (`Forgotten::Kept`, after which the mount stops handing the kernel that kind of copy), so
    /// the client tells the server only once the copy's time to live has run out.
    ///
    /// A name revoked for this mount's own change (`Cause::Own`) needs no bump: every change of
    /// a name this session makes comes from a kernel request (the mount is the session's only
    /// user), and the kernel updates its own entries for it when the reply comes: it makes the
    /// new entry from our reply (with the time to live our leases allow), or makes the removed
    /// one invalid. The VFS holds the directory's lock across that request, so no lookup of the
    /// name runs meanwhile. Renames are the exception: the kernel moves the dentry and keeps its
    /// time to live, which was granted for the old name, not the new one (whose lease this
    /// client may not hold). So while a rename of ours is in flight, own revocations bump too.
    /// Attributes are dropped whatever the cause: the kernel does not recompute all it caches
    /// (a link count, a parent's times).
    pub fn on_revoke<R>(self: &Arc<Self>, leases: &[Grant], cause: Cause, referenced: R) -> Forgotten
    where
        R: Fn(u64) -> bool + Send + 'static,
    {
        let names = leases.iter().any(|grant| matches!(grant.key, LeaseKey::Name { .. }));
        let mirrored = cause == Cause::Own && self.renames.load(Ordering::Acquire) == 0;
        let mut refused = false;
        if self.caches_entries() && names && !mirrored {
            refused |= !self.bump_epoch();
        }
        let mut waiting = Vec::new();
        for grant in leases {
            if let LeaseKey::Attr { ino } = grant.key {
                match self.drop_attributes(ino, &referenced) {
                    Dropped::Done => {}
                    Dropped::NotYet => waiting.push(ino),
                    Dropped::Refused => refused = true,
                }
            }
        }
        self.clone().settle(waiting, referenced, Instant::now(), refused)
    }

    /// What is left of a revocation after a round: every drop done (`All`), a refusal
    /// (`Kept`), or inodes still on their way into the kernel, tried again shortly, up to
    /// `INSTANTIATION_WAIT_MAX` after the first round (then `Kept`: their reply may have
    /// installed the old attributes, for at most their time to live).
    fn settle<R>(self: Arc<Self>, waiting: Vec<u64>, referenced: R, started: Instant, refused: bool) -> Forgotten
    where
        R: Fn(u64) -> bool + Send + 'static,
    {
        if refused {
            return Forgotten::Kept;
        }
        if waiting.is_empty() {
            return Forgotten::All;
        }
        if started.elapsed() >= INSTANTIATION_WAIT_MAX {
            tracing::warn!(
                inodes = waiting.len(),
                "the kernel did not make referenced inodes in time to drop their attributes"
            );
            return Forgotten::Kept;
        }
        Forgotten::Again {
            after: INSTANTIATION_RETRY,
            again: Box::new(move || {
                let mut refused = false;
                let mut still = Vec::new();
                for ino in waiting {
                    self.attribute_drop_retries.fetch_add(1, Ordering::Relaxed);
                    match self.drop_attributes(ino, &referenced) {
                        Dropped::Done => {}
                        Dropped::NotYet => still.push(ino),
                        Dropped::Refused => refused = true,
                    }
                }
                self.settle(still, referenced, started, refused)
            }),
        }
    }

    /// The client's connection closed (it trusts nothing it cached any more, so neither may the
    /// kernel), or the machine was suspended (the kernel counts times to live in jiffies, which
    /// stopped meanwhile, so its copies outlive the client's trust). Every entry goes (one epoch
    /// bump) and the attributes of every inode the kernel references (`referenced`). A lost
    /// connection is told before the session resumes, so before a restarted server can end its
    /// recovery and let other clients change what the kernel cached. What the kernel refuses
    /// here it keeps for at most the time to live it was given, and the mount stops handing out
    /// such copies.
    pub fn forget_everything(&self, referenced: &[u64]) {
        if self.caches_entries() {
            self.bump_epoch();
        }
        for &ino in referenced {
            self.drop_attributes(ino, &|_| false);
        }
    }

    /// Drops the kernel's attributes of `ino`, if it has the inode. An inode it does not have
    /// holds nothing, unless the mount counts a reference to it: then a reply of ours carries
    /// it and the kernel has not made the inode yet (or it evicted the inode and its forget is
    /// on the way), and the drop must be tried again (`NotYet`).
    fn drop_attributes(&self, ino: u64, referenced: &impl Fn(u64) -> bool) -> Dropped {
        let mut message = [0_u8; 40];
        message[..4].copy_from_slice(&40_u32.to_ne_bytes());
        message[4..8].copy_from_slice(&FUSE_NOTIFY_INVAL_INODE.to_ne_bytes());
        message[16..24].copy_from_slice(&ino.to_ne_bytes());
        message[24..32].copy_from_slice(&(-1_i64).to_ne_bytes());
        match self.notify(&message) {
            Ok(()) => {
                self.attribute_drops.fetch_add(1, Ordering::Relaxed);
                Dropped::Done
            }
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                match self.caches_attributes() && referenced(ino) {
                    true => Dropped::NotYet,
                    false => Dropped::Done,
                }
            }
            // The mount is gone, and everything its kernel cached with it.
            Err(error) if error.raw_os_error() == Some(libc::ENODEV) => Dropped::Done,
            Err(error) => {
                self.notification_failures.fetch_add(1, Ordering::Relaxed);
                self.attributes.store(false, Ordering::Release);
                tracing::warn!(%error, ino, "the kernel refused to drop an inode's attributes; attributes are no longer cached");
                Dropped::Refused
            }
        }
    }

    /// Writes one notification (`struct fuse_out_header` with `unique` 0 and the notification
    /// code in `error`, then its payload) to the channel.
    fn notify(&self, message: &[u8]) -> std::io::Result<()> {
        let Some(channel) = self.channel.get() else { return Ok(()) };
        if self.refuse_notifications.load(Ordering::Relaxed) {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        if self.skip_notifications.load(Ordering::Relaxed) {
            return Ok(());
        }
        channel.notify(message)
    }

    /// Makes every entry the kernel holds suspect. Returns false if the kernel refused (the
    /// entries it holds then live out their time to live; new ones get none).
    fn bump_epoch(&self) -> bool {
        // struct fuse_out_header { u32 len; i32 error (the notification code); u64 unique (0) }.
        let mut header = [0_u8; 16];
        header[..4].copy_from_slice(&16_u32.to_ne_bytes());
        header[4..8].copy_from_slice(&FUSE_NOTIFY_INC_EPOCH.to_ne_bytes());
        match self.notify(&header) {
            Ok(()) => {
                self.bumps.fetch_add(1, Ordering::Relaxed);
                true
            }
            outcome => {
                // After the unmount (ENODEV) entries die with the mount. Otherwise stop
                // caching: new entries get a time to live of 0.
                self.epochs.store(false, Ordering::Release);
                let unmounted = matches!(&outcome, Err(error) if error.raw_os_error() == Some(libc::ENODEV));
                if !unmounted {
                    self.notification_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(?outcome, "the kernel refused a dentry epoch bump; entries are no longer cached");
                }
                unmounted
            }
        }
    }
}

/// The outcome of one attempt to drop an inode's attributes from the kernel.
enum Dropped {
    Done,
    /// The kernel is about to make the inode from a reply of ours: try again.
    NotYet,
    Refused,
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records what the kernel would be told; answers with `answer`.
    struct Recorder {
        told: Arc<Mutex<Vec<Notification>>>,
        answer: Option<i32>,
    }

    impl KernelChannel for Recorder {
        fn notify(&self, message: &[u8]) -> std::io::Result<()> {
            self.told.lock().unwrap().push(Notification::decode(message).expect("a notification the kernel knows"));
            match self.answer {
                None => Ok(()),
                Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
            }
        }
    }

    fn kernel(answer: Option<i32>) -> (Arc<KernelCache>, Arc<Mutex<Vec<Notification>>>) {
        let told = Arc::new(Mutex::new(Vec::new()));
        let kernel = Arc::new(KernelCache::default());
        kernel.set_channel(Box::new(Recorder { told: told.clone(), answer }));
        assert!(kernel.enable(EPOCH_MINOR));
        (kernel, told)
    }

    fn grants() -> Vec<Grant> {
        vec![
            Grant { key: LeaseKey::Name { parent: 1, name: b"f".to_vec() }, id: 1 },
            Grant { key: LeaseKey::Attr { ino: 7 }, id: 2 },
        ]
    }

    #[test]
    fn a_revocation_bumps_the_epoch_and_drops_the_attributes() {
        let (kernel, told) = kernel(None);
        assert!(matches!(kernel.on_revoke(&grants(), Cause::Other, |_| true), Forgotten::All));
        assert_eq!(*told.lock().unwrap(), vec![Notification::IncEpoch, Notification::DropAttributes { ino: 7 }]);
    }

    #[test]
    fn a_refusal_is_kept_and_ends_the_kernels_caching() {
        let (kernel, _) = kernel(Some(libc::EIO));
        assert!(matches!(kernel.on_revoke(&grants(), Cause::Other, |_| true), Forgotten::Kept));
        assert!(!kernel.caches_entries() && !kernel.caches_attributes());
        assert_eq!(kernel.attr_ttl(|| Duration::from_secs(5)), Duration::ZERO);
    }

    /// After the unmount (ENODEV) the kernel holds nothing: nothing is kept.
    #[test]
    fn an_unmounted_kernel_holds_nothing() {
        let (kernel, _) = kernel(Some(libc::ENODEV));
        assert!(matches!(kernel.on_revoke(&grants(), Cause::Other, |_| true), Forgotten::All));
    }

    /// An inode the kernel does not have yet, but a reply of ours is bringing: tried again in
    /// later rounds, off the caller's thread, then kept once the wait is over.
    #[test]
    fn an_inode_on_its_way_is_tried_again_then_kept() {
        let (kernel, told) = kernel(Some(libc::ENOENT));
        let attr = [Grant { key: LeaseKey::Attr { ino: 7 }, id: 2 }];
        let mut outcome = kernel.on_revoke(&attr, Cause::Other, |_| true);
        let mut rounds = 0;
        let deadline = Instant::now() + INSTANTIATION_WAIT_MAX * 20;
        while let Forgotten::Again { again, .. } = outcome {
            rounds += 1;
            assert!(Instant::now() < deadline, "rounds never end");
            std::thread::sleep(INSTANTIATION_RETRY);
            outcome = again();
        }
        assert!(matches!(outcome, Forgotten::Kept));
        assert!(rounds > 0 && told.lock().unwrap().len() == rounds + 1);
        // An inode nobody references was not cached: nothing to wait for.
        assert!(matches!(kernel.on_revoke(&attr, Cause::Other, |_| false), Forgotten::All));
    }
}
