//! What the kernel caches of this mount, and how it is made to forget.
//!
//! The kernel may keep a directory entry (a dentry: name to inode) for as long as this mount's
//! client holds the lease on that name: `ENTRY_TTL_LEASED`. Exactness comes from the lease, not
//! from the time: when the server revokes a name lease, the client's revocation hook bumps the
//! connection's dentry epoch (`FUSE_NOTIFY_INC_EPOCH`, Linux 6.16, FUSE 7.44) before the
//! revocation is acknowledged, so before the change that caused it is answered to anyone. Every
//! dentry made before the bump fails its next revalidation and is looked up again, which this
//! mount answers from the client's exact cache.
//!
//! Why the epoch, and not an invalidation of the one entry (`FUSE_NOTIFY_INVAL_ENTRY`): that one
//! takes the parent directory's inode lock, which a kernel thread may hold while it waits for a
//! reply of ours that waits on the server, which waits for this acknowledgement: a deadlock. The
//! epoch bump is an atomic increment in the kernel; it takes no lock and waits for nothing, so
//! the hook may wait for it. The kernel reads the epoch before it sends a lookup or a create, so
//! an entry whose reply crosses a bump carries the old epoch and is revalidated: no reply can
//! re-install what a revocation removed.
//!
//! What stays uncached in the kernel (time to live 0): attributes (every stat asks this mount,
//! which answers from the client's cache on the reading thread; a revoked attribute lease also
//! drops the kernel's copy with `FUSE_NOTIFY_INVAL_INODE` for attributes only, which takes no
//! inode or page lock either, because the kernel trusts even a time to live of 0 until its
//! clock ticks), negative entries (an ENOENT
//! reply), and entries from readdirplus (the kernel takes their epoch after the reply arrives,
//! so one could cross a bump unseen). Kernels before 6.16 cache no entries at all.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rustre_client::rustre_proto::{Grant, LeaseKey};

/// How long the kernel may keep an entry the client holds the lease on. A revocation ends it
/// sooner; this only bounds how long an entry lives that a lost bump would leave stale.
pub const ENTRY_TTL_LEASED: Duration = Duration::from_secs(600);

/// The FUSE minor version that brought `FUSE_NOTIFY_INC_EPOCH`.
pub const EPOCH_MINOR: u32 = 44;

/// `FUSE_NOTIFY_INC_EPOCH` (include/uapi/linux/fuse.h): a notification with no payload.
const FUSE_NOTIFY_INC_EPOCH: i32 = 8;
/// `FUSE_NOTIFY_INVAL_INODE`: `{ u64 ino; i64 off; i64 len }`; a negative `off` drops the
/// attributes only (no page is touched, so no page lock is taken).
const FUSE_NOTIFY_INVAL_INODE: i32 = 2;

#[derive(Default)]
pub struct KernelCache {
    /// A second descriptor of the session's `/dev/fuse` (the same open file): notifications are
    /// written to it, never read from it.
    fd: OnceLock<OwnedFd>,
    /// The kernel takes epoch bumps, and the mount wants entries cached.
    epochs: AtomicBool,
    /// Epoch bumps written, and those the kernel refused.
    pub bumps: AtomicU64,
    pub bump_failures: AtomicU64,
    /// Attribute invalidations the kernel applied.
    pub attribute_drops: AtomicU64,
}

impl KernelCache {
    pub fn set_fd(&self, fd: OwnedFd) {
        assert!(self.fd.set(fd).is_ok(), "the notification descriptor is set once, before the session runs");
    }

    /// Called from INIT (which fuser answers inside `Session::new`, before the descriptor is
    /// set) with the kernel's FUSE minor version.
    pub fn enable(&self, kernel_minor: u32) -> bool {
        let supported = kernel_minor >= EPOCH_MINOR;
        self.epochs.store(supported, Ordering::Release);
        supported
    }

    /// Entries are cached once the kernel has epochs and the descriptor to bump them is set.
    pub fn caches_entries(&self) -> bool {
        self.epochs.load(Ordering::Acquire) && self.fd.get().is_some()
    }

    /// The time to live of an entry reply: `ENTRY_TTL_LEASED` if the client holds the name's
    /// lease (`leased`), else 0.
    pub fn entry_ttl(&self, leased: impl FnOnce() -> bool) -> Duration {
        if self.caches_entries() && leased() { ENTRY_TTL_LEASED } else { Duration::ZERO }
    }

    /// The client's revocation hook: a revoked name makes every kernel entry suspect; a revoked
    /// attribute lease drops the kernel's copy of those attributes. Even at a time to live of 0
    /// the kernel trusts attributes until its clock ticks (a jiffy, up to 10 ms), long enough
    /// for a read to keep pages another client's write made stale.
    pub fn on_revoke(&self, leases: &[Grant]) {
        if self.caches_entries() && leases.iter().any(|grant| matches!(grant.key, LeaseKey::Name { .. })) {
            self.bump_epoch();
        }
        for grant in leases {
            if let LeaseKey::Attr { ino } = grant.key {
                self.forget_attributes(ino);
            }
        }
    }

    /// Drops the kernel's attributes of `ino`, if it has the inode (else nothing to drop).
    fn forget_attributes(&self, ino: u64) {
        let mut message = [0_u8; 40];
        message[..4].copy_from_slice(&40_u32.to_ne_bytes());
        message[4..8].copy_from_slice(&FUSE_NOTIFY_INVAL_INODE.to_ne_bytes());
        message[16..24].copy_from_slice(&ino.to_ne_bytes());
        message[24..32].copy_from_slice(&(-1_i64).to_ne_bytes());
        match self.notify(&message) {
            Ok(()) => {
                self.attribute_drops.fetch_add(1, Ordering::Relaxed);
            }
            // The kernel does not have that inode: it has no attributes to drop.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(error) => tracing::warn!(%error, ino, "the kernel refused to drop an inode's attributes"),
        }
    }

    /// Writes one notification (`struct fuse_out_header` with `unique` 0 and the notification
    /// code in `error`, then its payload) to the session's descriptor.
    fn notify(&self, message: &[u8]) -> std::io::Result<()> {
        let Some(fd) = self.fd.get() else { return Ok(()) };
        // SAFETY: `fd` is an open descriptor this struct owns; `message` outlives the call.
        let written = unsafe { libc::write(fd.as_raw_fd(), message.as_ptr().cast(), message.len()) };
        match written {
            written if written < 0 => Err(std::io::Error::last_os_error()),
            written if written as usize == message.len() => Ok(()),
            written => Err(std::io::Error::other(format!("short notification write: {written} bytes"))),
        }
    }

    fn bump_epoch(&self) {
        // struct fuse_out_header { u32 len; i32 error (the notification code); u64 unique (0) }.
        let mut header = [0_u8; 16];
        header[..4].copy_from_slice(&16_u32.to_ne_bytes());
        header[4..8].copy_from_slice(&FUSE_NOTIFY_INC_EPOCH.to_ne_bytes());
        match self.notify(&header) {
            Ok(()) => {
                self.bumps.fetch_add(1, Ordering::Relaxed);
            }
            outcome => {
                // Only after the unmount (ENODEV); entries then die with the mount. Otherwise
                // stop caching: new entries get a time to live of 0.
                self.bump_failures.fetch_add(1, Ordering::Relaxed);
                self.epochs.store(false, Ordering::Release);
                tracing::warn!(?outcome, "the kernel refused a dentry epoch bump; entries are no longer cached");
            }
        }
    }
}
