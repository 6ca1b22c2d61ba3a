//! The inode-level API: one server request per call at most, answered from the cache where a
//! lease allows. Replies feed the cache only under the grants they carry (see `cache.rs`).

use bytes::Bytes;
use rustre_proto::msg::READDIR_ENTRIES_MAX;
use rustre_proto::{
    Attr, DirEntry, Errno, FileKind, Grant, Op, OpenFlags, Orphan, RenameMode, Reply, SetAttrIn, StatFs, XattrMode,
};
use tokio::sync::watch;

use crate::cache::Binding;
use crate::error::{Error, Result};
use crate::{Client, File, LookupKey};

fn unexpected(reply: &Reply) -> Error {
    Error::new(Errno::EPROTO, format!("unexpected reply {reply:?}"))
}

fn validate(name: &[u8]) -> Result<()> {
    Ok(rustre_proto::name::validate_name(name)?)
}

/// Removes a finished (or abandoned) lookup from the in-flight table.
struct InFlight<'a> {
    client: &'a Client,
    key: LookupKey,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.client.inner.lookups.lock().expect("lookups lock").remove(&self.key);
    }
}

/// A removal of (parent, name) in flight; creates of that name wait until it is dropped.
struct Removal<'a> {
    client: &'a Client,
    key: (u64, Vec<u8>),
    _done: watch::Sender<()>,
}

impl Drop for Removal<'_> {
    fn drop(&mut self) {
        let mut removals = self.client.inner.removals.lock().expect("removals lock");
        // Only our own entry: a later removal of the same name may have replaced it.
        if removals.get(&self.key).is_some_and(|receiver| receiver.same_channel(&self._done.subscribe())) {
            removals.remove(&self.key);
        }
    }
}

impl Client {
    /// Registers a removal of (parent, name) in flight.
    fn removing(&self, parent: u64, name: &[u8]) -> Removal<'_> {
        let key = (parent, name.to_vec());
        let (done, receiver) = watch::channel(());
        self.inner.removals.lock().expect("removals lock").insert(key.clone(), receiver);
        Removal { client: self, key, _done: done }
    }

    /// Waits for removals of (parent, name) this client has in flight (bounded: each ends with
    /// its reply or the connection).
    async fn after_removals(&self, parent: u64, name: &[u8]) {
        let pending = self.inner.removals.lock().expect("removals lock").get(&(parent, name.to_vec())).cloned();
        if let Some(mut receiver) = pending {
            // The sender goes with the removal; `changed` then fails, which is the signal.
            while receiver.changed().await.is_ok() {}
        }
    }

    /// Caches what a reply says of a name and of the inode it names, under the reply's grants.
    fn remember(&self, parent: u64, name: &[u8], found: Option<&Attr>, grants: &[Grant]) {
        let mut cache = self.inner.shared.cache();
        cache.insert_name(parent, name, found.map(|attr| (attr.ino, attr.kind)), grants);
        if let Some(attr) = found {
            cache.insert_attr(attr, grants);
        }
    }

    /// The inode `name` names in `parent`, with its attributes.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        if let Some(answer) = self.lookup_cached(parent, name) {
            return answer;
        }
        self.inner.shared.miss();
        self.lookup_shared(parent, name).await
    }

    /// `lookup` answered from the cache alone, without waiting: `None` when the cache cannot
    /// answer (then `lookup` asks the server). A FUSE mount answers the kernel with it on the
    /// thread that read the request, with no task hand-off.
    pub fn lookup_cached(&self, parent: u64, name: &[u8]) -> Option<Result<Attr>> {
        if let Err(error) = validate(name) {
            return Some(Err(error));
        }
        let cached = {
            let mut cache = self.inner.shared.cache();
            match cache.name(parent, name) {
                Some(None) => Some(Err(Error::from(Errno::ENOENT))),
                Some(Some((ino, _))) => cache.attr(ino).map(Ok),
                None => None,
            }
        };
        if cached.is_some() {
            self.inner.shared.hit();
        }
        cached
    }

    /// `getattr` answered from the cache alone, without waiting (see `lookup_cached`).
    pub fn getattr_cached(&self, ino: u64) -> Option<Attr> {
        let cached = self.inner.shared.cache().attr(ino);
        if cached.is_some() {
            self.inner.shared.hit();
        }
        cached
    }

    /// Where `name` in `parent` leads (inode and kind): all a path walk needs of an inner
    /// component, so a cached name is enough even without cached attributes.
    pub(crate) async fn resolve_name(&self, parent: u64, name: &[u8]) -> Result<(u64, FileKind)> {
        validate(name)?;
        let cached: Option<Binding> = self.inner.shared.cache().name(parent, name);
        match cached {
            Some(Some(binding)) => {
                self.inner.shared.hit();
                Ok(binding)
            }
            Some(None) => {
                self.inner.shared.hit();
                Err(Errno::ENOENT.into())
            }
            None => {
                self.inner.shared.miss();
                let attr = self.lookup_shared(parent, name).await?;
                Ok((attr.ino, attr.kind))
            }
        }
    }

    /// Asks the server, once per (parent, name) at a time: a lookup already in flight for the
    /// same name is waited for instead of sent again (semantics.md, race 4). Only by the same
    /// caller: the server checks each caller's search permission, so one's answer (EACCES, or
    /// an entry) is not another's.
    async fn lookup_shared(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        let key = (parent, name.to_vec(), self.caller.clone());
        let (sender, waiting) = {
            let mut lookups = self.inner.lookups.lock().expect("lookups lock");
            match lookups.get(&key) {
                Some(receiver) => (None, Some(receiver.clone())),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    let previous = lookups.insert(key.clone(), receiver);
                    assert!(previous.is_none(), "at most one lookup in flight per (parent, name)");
                    (Some(sender), None)
                }
            }
        };
        if let Some(mut receiver) = waiting {
            self.inner.shared.counters.lookups_shared.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Ok(answer) = receiver.wait_for(Option::is_some).await {
                return answer.clone().expect("waited for an answer");
            }
            // The task that asked gave up before its answer: ask ourselves (not shared).
            return self.lookup_uncached(parent, name).await;
        }
        let sender = sender.expect("the first asker sends");
        let _in_flight = InFlight { client: self, key };
        let answer = self.lookup_uncached(parent, name).await;
        let _ = sender.send(Some(answer.clone()));
        answer
    }

    async fn lookup_uncached(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        let (header, _) = self.request(Op::Lookup { parent, name: name.to_vec() }, Bytes::new()).await?;
        // Tests stop here to let a revocation arrive between the reply and the cache insert.
        self.inner.shared.pause_points.pause("client.lookup.before_insert").await;
        self.name_answer(parent, name, header)
    }

    /// What a reply about one name (`Entry`, or ENOENT) says, cached under its grants: the inode
    /// the name names, or its absence.
    fn name_answer(&self, parent: u64, name: &[u8], header: rustre_proto::ReplyHeader) -> Result<Attr> {
        match header.result {
            Ok(Reply::Entry { attr }) => {
                self.remember(parent, name, Some(&attr), &header.grants);
                Ok(attr)
            }
            Ok(other) => Err(unexpected(&other)),
            Err(error) => {
                if error.errno == Errno::ENOENT {
                    self.remember(parent, name, None, &header.grants);
                }
                Err(error.into())
            }
        }
    }

    /// Closes an open handle on the server (`File::close`); a close that answers attributes
    /// (of a handle that could write) leaves them cached under the lease it grants.
    pub(crate) async fn close_handle(&self, handle: u64) -> Result<()> {
        let (header, _) = self.request(Op::Close { handle }, Bytes::new()).await?;
        match header.result {
            Ok(Reply::Done) => Ok(()),
            Ok(Reply::Attr { attr }) => {
                self.inner.shared.cache().insert_attr(&attr, &header.grants);
                Ok(())
            }
            Ok(other) => Err(unexpected(&other)),
            Err(error) => Err(error.into()),
        }
    }

    pub async fn getattr(&self, ino: u64) -> Result<Attr> {
        if let Some(attr) = self.getattr_cached(ino) {
            return Ok(attr);
        }
        self.inner.shared.miss();
        let (header, _) = self.request(Op::GetAttr { ino }, Bytes::new()).await?;
        match header.result {
            Ok(Reply::Attr { attr }) => {
                self.inner.shared.cache().insert_attr(&attr, &header.grants);
                Ok(attr)
            }
            Ok(other) => Err(unexpected(&other)),
            Err(error) => {
                if error.errno == Errno::ESTALE {
                    self.inner.shared.cache().forget_attr(ino);
                }
                Err(error.into())
            }
        }
    }

    pub async fn setattr(&self, ino: u64, set: SetAttrIn) -> Result<Attr> {
        let (header, _) = self.request(Op::SetAttr { ino, set }, Bytes::new()).await?;
        match header.result? {
            Reply::Attr { attr } => {
                self.inner.shared.cache().insert_attr(&attr, &header.grants);
                Ok(attr)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Opens `name` in `parent` in one atomic server step (creating it if `flags` say so).
    pub async fn open_at(&self, parent: u64, name: &[u8], flags: OpenFlags, perm: u32) -> Result<File> {
        validate(name)?;
        if flags.contains(OpenFlags::CREATE) {
            self.after_removals(parent, name).await;
        }
        let (header, _) = self.request(Op::Open { parent, name: name.to_vec(), flags, perm }, Bytes::new()).await?;
        match header.result {
            Ok(Reply::Opened { handle, attr, created }) => {
                self.remember(parent, name, Some(&attr), &header.grants);
                Ok(File::new(self.clone(), handle, attr, created, flags))
            }
            Ok(other) => Err(unexpected(&other)),
            Err(error) => {
                if error.errno == Errno::ENOENT {
                    self.remember(parent, name, None, &header.grants);
                }
                Err(error.into())
            }
        }
    }

    pub async fn open_ino(&self, ino: u64, flags: OpenFlags) -> Result<File> {
        let (header, _) = self.request(Op::OpenIno { ino, flags }, Bytes::new()).await?;
        match header.result? {
            Reply::Opened { handle, attr, created } => {
                self.inner.shared.cache().insert_attr(&attr, &header.grants);
                Ok(File::new(self.clone(), handle, attr, created, flags))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// A change that makes a name (mkdir, symlink, link): the reply's inode is cached there.
    async fn make_entry(&self, parent: u64, name: &[u8], op: Op) -> Result<Attr> {
        validate(name)?;
        self.after_removals(parent, name).await;
        let (header, _) = self.request(op, Bytes::new()).await?;
        match header.result? {
            Reply::Entry { attr } => {
                self.remember(parent, name, Some(&attr), &header.grants);
                Ok(attr)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// A change that removes a name (unlink, rmdir, rename's source): its absence is cached.
    async fn remove_entry(&self, parent: u64, name: &[u8], op: Op) -> Result<()> {
        let (header, _) = self.request(op, Bytes::new()).await?;
        match header.result? {
            Reply::Done => {
                self.remember(parent, name, None, &header.grants);
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    pub async fn mkdir_at(&self, parent: u64, name: &[u8], perm: u32) -> Result<Attr> {
        self.make_entry(parent, name, Op::Mkdir { parent, name: name.to_vec(), perm }).await
    }

    pub async fn symlink_at(&self, parent: u64, name: &[u8], target: &[u8]) -> Result<Attr> {
        self.make_entry(parent, name, Op::Symlink { parent, name: name.to_vec(), target: target.to_vec() }).await
    }

    pub async fn link_at(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> Result<Attr> {
        self.make_entry(new_parent, new_name, Op::Link { ino, new_parent, new_name: new_name.to_vec() }).await
    }

    pub async fn unlink_at(&self, parent: u64, name: &[u8]) -> Result<()> {
        validate(name)?;
        let _removal = self.removing(parent, name);
        self.remove_entry(parent, name, Op::Unlink { parent, name: name.to_vec() }).await
    }

    pub async fn rmdir_at(&self, parent: u64, name: &[u8]) -> Result<()> {
        validate(name)?;
        let _removal = self.removing(parent, name);
        self.remove_entry(parent, name, Op::Rmdir { parent, name: name.to_vec() }).await
    }

    pub async fn rename_at(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        validate(name)?;
        validate(new_name)?;
        let op = Op::Rename { parent, name: name.to_vec(), new_parent, new_name: new_name.to_vec(), mode };
        // The server grants the source's absence, except for an exchange (then it grants nothing).
        self.remove_entry(parent, name, op).await
    }

    /// A symlink's target (it never changes, so it is remembered without a lease).
    pub async fn readlink_ino(&self, ino: u64) -> Result<Vec<u8>> {
        if let Some(target) = self.inner.shared.cache().target(ino) {
            return Ok(target);
        }
        match self.call(Op::Readlink { ino }, Bytes::new()).await?.0 {
            Reply::Target { target } => {
                self.inner.shared.cache().insert_target(ino, &target);
                Ok(target)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// One page of a directory: entries after `cookie` (0 starts), whether it is the last, and
    /// the grants of the reply.
    async fn read_dir_page_granted(
        &self,
        ino: u64,
        cookie: u64,
        max_entries: u32,
        with_attrs: bool,
    ) -> Result<(Vec<DirEntry>, bool, Vec<Grant>)> {
        let (header, _) = self.request(Op::ReadDir { ino, cookie, max_entries, with_attrs }, Bytes::new()).await?;
        match header.result? {
            Reply::Entries { entries, end } => Ok((entries, end, header.grants)),
            other => Err(unexpected(&other)),
        }
    }

    /// One page of a directory: entries after `cookie` (0 starts), and whether it is the last.
    pub async fn read_dir_page(
        &self,
        ino: u64,
        cookie: u64,
        max_entries: u32,
        with_attrs: bool,
    ) -> Result<(Vec<DirEntry>, bool)> {
        let (entries, end, _) = self.read_dir_page_granted(ino, cookie, max_entries, with_attrs).await?;
        Ok((entries, end))
    }

    /// All entries of a directory (without "." and ".."), in cookie order. A listing without
    /// attributes is cached under the directory's listing lease.
    pub async fn read_dir_ino(&self, ino: u64, with_attrs: bool) -> Result<Vec<DirEntry>> {
        if !with_attrs {
            let cached = self.inner.shared.cache().listing(ino);
            if let Some(entries) = cached {
                self.inner.shared.hit();
                return Ok(entries);
            }
            self.inner.shared.miss();
        }
        let mut entries = Vec::new();
        let mut cookie = 0;
        let mut first_grants = None;
        loop {
            let (page, end, grants) = self.read_dir_page_granted(ino, cookie, READDIR_ENTRIES_MAX, with_attrs).await?;
            first_grants.get_or_insert(grants);
            if let Some(last) = page.last() {
                assert!(last.cookie > cookie, "cookies grow along a directory");
                cookie = last.cookie;
            }
            entries.extend(page);
            if end {
                break;
            }
        }
        if !with_attrs {
            // Cached only if the lease granted with the first page still stands: then no change
            // touched the directory while the later pages were read.
            let grants = first_grants.unwrap_or_default();
            self.inner.shared.cache().insert_listing(ino, entries.clone(), &grants);
        }
        Ok(entries)
    }

    /// Keeps an inode alive for this session, as an open handle would (ESTALE if it is gone).
    pub async fn pin(&self, ino: u64) -> Result<()> {
        match self.call(Op::Pin { ino }, Bytes::new()).await?.0 {
            Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Looks `name` up in `parent` on the server (never from the cache) and pins the inode it
    /// names in the same atomic step: the inode answered lives (an orphan, if its names go) until
    /// this session unpins it. A FUSE mount answers the kernel's lookups this way.
    pub async fn lookup_pinned(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        validate(name)?;
        let (header, _) = self.request(Op::PinName { parent, name: name.to_vec() }, Bytes::new()).await?;
        self.name_answer(parent, name, header)
    }

    /// Reads up to `len` bytes at `offset` of an inode this session pins, without a handle
    /// (`Op::ReadPinned`): EBADF if it holds no pin on it.
    pub async fn read_pinned(&self, ino: u64, offset: u64, len: usize) -> Result<Bytes> {
        crate::file::read_in_pieces(self, offset, len, |offset, len| Op::ReadPinned { ino, offset, len }).await
    }

    /// Gives back `count` pins of an inode.
    pub async fn unpin(&self, ino: u64, count: u64) -> Result<()> {
        match self.call(Op::Unpin { ino, count }, Bytes::new()).await?.0 {
            Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Inodes whose last name is gone but which something keeps alive, in inode order, each with
    /// what does: the sessions holding handles or pins on it (a mount pins what its kernel
    /// references), and whether the recovery after a restart keeps it (administration). Read one
    /// page at a time, so the list is not one snapshot: an orphan made or destroyed meanwhile may
    /// be missing or shown.
    pub async fn orphans(&self) -> Result<Vec<Orphan>> {
        let mut orphans: Vec<Orphan> = Vec::new();
        loop {
            let after = orphans.last().map_or(0, |orphan| orphan.attr.ino);
            let (page, end) = match self.call(Op::ListOrphans { after }, Bytes::new()).await?.0 {
                Reply::Orphans { orphans, end } => (orphans, end),
                other => return Err(unexpected(&other)),
            };
            // Each page must move on, or a confused server would keep this loop going forever.
            let ascending =
                page.iter().try_fold(after, |last, orphan| (orphan.attr.ino > last).then_some(orphan.attr.ino));
            if ascending.is_none() || (page.is_empty() && !end) {
                return Err(Error::new(Errno::EPROTO, format!("a page of orphans after {after} does not move on")));
            }
            orphans.extend(page);
            if end {
                return Ok(orphans);
            }
        }
    }

    pub async fn statfs(&self) -> Result<StatFs> {
        match self.call(Op::StatFs, Bytes::new()).await?.0 {
            Reply::StatFs { statfs } => Ok(statfs),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn getxattr_ino(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        match self.call(Op::GetXattr { ino, name: name.to_vec() }, Bytes::new()).await? {
            (Reply::Xattr, value) => Ok(value.to_vec()),
            (other, _) => Err(unexpected(&other)),
        }
    }

    pub async fn setxattr_ino(&self, ino: u64, name: &[u8], value: &[u8], mode: XattrMode) -> Result<()> {
        let op = Op::SetXattr { ino, name: name.to_vec(), mode };
        match self.call(op, Bytes::copy_from_slice(value)).await?.0 {
            Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn listxattr_ino(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        match self.call(Op::ListXattr { ino }, Bytes::new()).await?.0 {
            Reply::XattrNames { names } => Ok(names),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn removexattr_ino(&self, ino: u64, name: &[u8]) -> Result<()> {
        match self.call(Op::RemoveXattr { ino, name: name.to_vec() }, Bytes::new()).await?.0 {
            Reply::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Caches the attributes a write returned (the writer's own change).
    pub(crate) fn remember_attr(&self, attr: &Attr, grants: &[Grant]) {
        self.inner.shared.cache().insert_attr(attr, grants);
    }
}
