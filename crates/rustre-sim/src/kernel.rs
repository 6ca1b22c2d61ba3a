//! A model of the kernel's caches in front of a FUSE mount, so the checker sees what an
//! application on a mount would: entries (a name to an inode) with a time to live and the dentry
//! epoch they were made under, and inode attributes with a time to live and an attribute
//! version. It is driven by `rustre-fuse`'s own logic wherever that logic is not the kernel:
//! the times to live come from `KernelCache::entry_ttl` / `attr_ttl` over the client's
//! `leases_left`, as the mount computes them; the client's revocation and link hooks are the
//! mount's (`rustre_fuse::revocation_hook`, `link_hook`), and the notifications they write
//! (`Notification`: an epoch bump, an attribute drop) arrive here as the kernel would take them.
//!
//! What the model does as the kernel does (fs/fuse/dir.c, inode.c):
//! - an entry is used only while its time to live lasts and its epoch is the connection's
//!   current one; the epoch is read *before* the lookup is sent, so a bump that crosses the
//!   reply leaves the new entry invalid;
//! - attributes are used while their time to live lasts; an attribute drop of an inode the
//!   kernel has makes them invalid and bumps the inode's attribute version; one of an inode it
//!   does not have answers ENOENT; a reply whose request read an older version than the inode
//!   has now is answered to its caller but not cached;
//! - negative entries are never cached (the mount answers them with a time to live of 0).
//!
//! Times are tokio's (the simulated clock), as the kernel's jiffies are monotonic: they stop
//! when the machine is suspended, which is what makes a suspension dangerous to the kernel's
//! copies and not to the client's cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustre_client::rustre_proto::{Attr, Errno, FileKind, ROOT_INO};
use rustre_client::{Client, LinkEvent, LinkHook};
use rustre_fuse::kernel::{KernelCache, KernelChannel, Notification};
use rustre_fuse::refs::KernelRefs;
use tokio::time::Instant;

/// The FUSE minor version the model claims: it has dentry epochs.
const MODEL_KERNEL_MINOR: u32 = rustre_fuse::kernel::EPOCH_MINOR;
/// Symlinks followed on one walk before giving up, as the kernel's `MAXSYMLINKS`.
const SYMLINKS_MAX: usize = 40;

struct Dentry {
    ino: u64,
    kind: FileKind,
    expires: Instant,
    epoch: u64,
}

struct CachedAttr {
    attr: Attr,
    expires: Instant,
}

/// What the model kernel holds.
#[derive(Default)]
struct Dcache {
    /// The connection's dentry epoch.
    epoch: u64,
    entries: HashMap<(u64, Vec<u8>), Dentry>,
    attrs: HashMap<u64, CachedAttr>,
    /// The connection's attribute version counter (`fc->attr_version`): read before a request
    /// that returns attributes, taken by an inode whose attributes are dropped.
    attr_version: u64,
    /// Inodes the kernel has made (from a reply), with the attribute version each last took.
    inodes: HashMap<u64, u64>,
    /// Answers the kernel gave from its own caches, without asking the mount.
    hits: u64,
}

/// Notifications, applied to the model as the kernel applies them.
struct Channel(Arc<Mutex<Dcache>>);

impl KernelChannel for Channel {
    fn notify(&self, message: &[u8]) -> std::io::Result<()> {
        let mut dcache = self.0.lock().expect("dcache lock");
        match Notification::decode(message) {
            Some(Notification::IncEpoch) => {
                dcache.epoch += 1;
                Ok(())
            }
            Some(Notification::DropAttributes { ino }) => {
                if !dcache.inodes.contains_key(&ino) {
                    return Err(std::io::Error::from_raw_os_error(Errno::ENOENT.0));
                }
                dcache.attr_version += 1;
                let version = dcache.attr_version;
                dcache.inodes.insert(ino, version);
                dcache.attrs.remove(&ino);
                Ok(())
            }
            None => Err(std::io::Error::from_raw_os_error(Errno::EINVAL.0)),
        }
    }
}

/// A mount of one client: its kernel's caches, and the mount's logic in front of them.
pub struct ModelKernel {
    cache: Arc<KernelCache>,
    refs: Arc<Mutex<KernelRefs>>,
    dcache: Arc<Mutex<Dcache>>,
}

impl ModelKernel {
    /// A model kernel in front of `client`, mirroring its cache through the mount's own hooks.
    /// The link hook is returned rather than set, for the caller to chain with its own.
    /// `skip_notifications` plants the bug of notifications that never reach the kernel.
    pub fn mount(client: &Client, skip_notifications: bool) -> (ModelKernel, LinkHook) {
        let dcache = Arc::new(Mutex::new(Dcache::default()));
        let cache = Arc::new(KernelCache::default());
        cache.set_channel(Box::new(Channel(dcache.clone())));
        cache.skip_notifications.store(skip_notifications, std::sync::atomic::Ordering::Relaxed);
        assert!(cache.enable(MODEL_KERNEL_MINOR), "the model kernel has dentry epochs");
        let refs: Arc<Mutex<KernelRefs>> = Arc::default();
        client.set_revocation_hook(Some(rustre_fuse::revocation_hook(cache.clone(), refs.clone())));
        let link = rustre_fuse::link_hook(cache.clone(), refs.clone());
        (ModelKernel { cache, refs, dcache }, link)
    }

    /// What the kernel does to its own entries when a change of this mount is answered: a
    /// removed name's entry goes (`d_delete`), a made name's entry is made from the reply (the
    /// model drops the old one instead, and looks the name up when next asked), a renamed
    /// entry moves (`d_move`; the model drops both names). Dropping is never less exact than
    /// the kernel. `names` are the last components of the paths the change touched.
    pub fn own_change(&self, names: &[&str]) {
        let mut dcache = self.dcache.lock().expect("dcache lock");
        dcache.entries.retain(|(_, name), _| !names.iter().any(|changed| changed.as_bytes() == name.as_slice()));
    }

    /// Counts a rename of this mount in flight, as the mount does around its rename request,
    /// so the revocations it causes bump the epoch (`KernelCache::on_revoke`).
    pub fn renaming(&self) -> rustre_fuse::kernel::Renaming {
        self.cache.renaming()
    }

    /// Answers the kernel gave from its caches (for the run's figures).
    pub fn hits(&self) -> u64 {
        self.dcache.lock().expect("dcache lock").hits
    }

    /// `stat(2)` of an absolute `path` through the mount: each name from the kernel's entries
    /// while they are valid, else looked up through the client (the mount's `lookup`), the
    /// final attributes from the kernel's copy while valid, else from the client (`getattr`).
    ///
    /// A stale inode id (ESTALE) is retried once with every entry revalidated, as the VFS
    /// retries a path walk with `LOOKUP_REVAL`. The model takes no pins (the mount pins what the
    /// kernel looks up, so its GETATTR of an inode removed meanwhile answers the orphan); where
    /// a pin would have answered, the model asks the library's path API, which retries by name.
    pub async fn stat(&self, client: &Client, path: &str) -> rustre_client::Result<Attr> {
        match self.walk_and_getattr(client, path, false).await {
            Err(error) if error.errno == Errno::ESTALE => match self.walk_and_getattr(client, path, true).await {
                Err(error) if error.errno == Errno::ESTALE => client.stat(path).await,
                answered => answered,
            },
            answered => answered,
        }
    }

    async fn walk_and_getattr(&self, client: &Client, path: &str, reval: bool) -> rustre_client::Result<Attr> {
        let mut names: Vec<Vec<u8>> = components(path);
        names.reverse();
        let mut ino = ROOT_INO;
        let mut followed = 0;
        while let Some(name) = names.pop() {
            let (found, kind) = self.walk(client, ino, &name, reval).await?;
            if kind == FileKind::Symlink {
                followed += 1;
                if followed > SYMLINKS_MAX {
                    return Err(rustre_client::Error::new(Errno::ELOOP, "too many symlinks"));
                }
                let target = client.readlink_ino(found).await?;
                let target = String::from_utf8_lossy(&target).into_owned();
                if target.starts_with('/') {
                    ino = ROOT_INO;
                }
                let mut more = components(&target);
                more.reverse();
                names.extend(more);
                continue;
            }
            if !names.is_empty() && kind != FileKind::Directory {
                return Err(rustre_client::Error::new(Errno::ENOTDIR, "not a directory"));
            }
            ino = found;
        }
        self.getattr(client, ino).await
    }

    /// One step of a walk: `name` in `parent`, from a valid entry or by a lookup.
    async fn walk(
        &self,
        client: &Client,
        parent: u64,
        name: &[u8],
        reval: bool,
    ) -> rustre_client::Result<(u64, FileKind)> {
        let now = Instant::now();
        // The kernel reads the dentry epoch and the attribute version before it sends.
        let (epoch, before) = {
            let mut dcache = self.dcache.lock().expect("dcache lock");
            let current = dcache.epoch;
            if let Some(entry) = dcache.entries.get(&(parent, name.to_vec()))
                && !reval
                && entry.expires > now
                && entry.epoch == current
            {
                let found = (entry.ino, entry.kind);
                dcache.hits += 1;
                return Ok(found);
            }
            (current, dcache.attr_version)
        };
        let attr = match client.lookup(parent, name).await {
            Ok(attr) => attr,
            Err(error) => {
                // A failed revalidation drops the entry.
                self.dcache.lock().expect("dcache lock").entries.remove(&(parent, name.to_vec()));
                return Err(error);
            }
        };
        // The mount counts the kernel's reference before it replies (`refs.rs`).
        self.refs.lock().expect("refs lock").add(attr.ino);
        let (name_left, attr_left) = client.leases_left(parent, name, attr.ino);
        let entry_ttl = self.cache.entry_ttl(|| name_left);
        let attr_ttl = self.cache.attr_ttl(|| attr_left);
        let now = Instant::now();
        let mut dcache = self.dcache.lock().expect("dcache lock");
        dcache.entries.insert(
            (parent, name.to_vec()),
            Dentry { ino: attr.ino, kind: attr.kind, expires: now + entry_ttl, epoch },
        );
        install(&mut dcache, &attr, before, now, attr_ttl);
        Ok((attr.ino, attr.kind))
    }

    async fn getattr(&self, client: &Client, ino: u64) -> rustre_client::Result<Attr> {
        let before = {
            let mut dcache = self.dcache.lock().expect("dcache lock");
            if let Some(cached) = dcache.attrs.get(&ino)
                && cached.expires > Instant::now()
            {
                let attr = cached.attr.clone();
                dcache.hits += 1;
                return Ok(attr);
            }
            dcache.attr_version
        };
        let attr = client.getattr(ino).await?;
        let ttl = self.cache.attr_ttl(|| client.attr_lease_left(ino));
        install(&mut self.dcache.lock().expect("dcache lock"), &attr, before, Instant::now(), ttl);
        Ok(attr)
    }
}

/// The kernel takes a reply's attributes: it makes the inode if it has none, and caches the
/// attributes unless the inode's attributes were dropped after the request read the connection's
/// attribute version (`before`), as `fuse_change_attributes` does.
fn install(dcache: &mut Dcache, attr: &Attr, before: u64, now: Instant, ttl: std::time::Duration) {
    let version = *dcache.inodes.entry(attr.ino).or_insert(0);
    if version > before {
        dcache.attrs.remove(&attr.ino);
        return;
    }
    dcache.attrs.insert(attr.ino, CachedAttr { attr: attr.clone(), expires: now + ttl });
}

fn components(path: &str) -> Vec<Vec<u8>> {
    path.split('/').filter(|name| !name.is_empty()).map(|name| name.as_bytes().to_vec()).collect()
}

/// Chains two link hooks (the model's and the workload's own).
pub fn both(first: LinkHook, second: LinkHook) -> LinkHook {
    Arc::new(move |event: &LinkEvent| {
        first(event);
        second(event);
    })
}
