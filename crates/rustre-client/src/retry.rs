//! The retry by name (semantics.md, ESTALE discipline; promise 1).
//!
//! The fast path of a path call resolves its path from cached names and then addresses the
//! directory (or inode) by id. If another client removed that inode meanwhile, the server answers
//! ESTALE. The library then makes one more attempt, and only one: the whole path goes to the
//! server with the operation (`Op::AtPath`) and is resolved there by name, in the same atomic
//! step as the operation. That attempt addresses nothing by id, so it cannot be stale: it ends as
//! the operation would on a local file system at that instant (success, ENOENT, EEXIST, ...).
//!
//! Why the bound cannot be reached by contention alone: the by-name attempt never answers ESTALE,
//! whatever other clients do; its only loop is over symlinks met on the path (the server never
//! follows one: it sends the target back to be spliced in by name), bounded by
//! `SYMLINKS_FOLLOWED_MAX` exactly as Linux bounds a path walk (ELOOP), which depends on the
//! namespace, not on how many changes race with the call.

use bytes::Bytes;
use rustre_proto::{Errno, Op, OpenFlags, Reply};

use crate::error::{Error, Result};
use crate::file::File;
use crate::path::SYMLINKS_FOLLOWED_MAX;
use crate::path::names_directory;
use crate::{Client, unexpected};

/// A path's components as the server walks them: names and `..` (`.` and empty parts dropped).
pub(crate) fn walkable(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&byte| byte == b'/').filter(|part| !part.is_empty() && *part != b".").map(<[u8]>::to_vec).collect()
}

/// Splits a path into its directory's components and its last name, which must be a plain name.
pub(crate) fn split(path: &[u8]) -> Result<(Vec<Vec<u8>>, Vec<u8>)> {
    let mut parts = walkable(path);
    match parts.pop() {
        None => Err(Error::new(Errno::EBUSY, "the root directory has no parent")),
        Some(last) if last == b".." || path.ends_with(b"/.") => Err(Errno::EINVAL.into()),
        Some(last) => Ok((parts, last)),
    }
}

/// Replaces the symlink at `index` of `dir` by its target.
fn splice(dir: &[Vec<u8>], index: usize, target: &[u8]) -> Vec<Vec<u8>> {
    let mut spliced = if target.starts_with(b"/") { Vec::new() } else { dir[..index].to_vec() };
    spliced.extend(walkable(target));
    spliced.extend_from_slice(&dir[(index + 1).min(dir.len())..]);
    spliced
}

/// What an `AtPath` attempt asks for, with the names to put into the op.
pub(crate) struct ByName {
    pub path: Vec<u8>,
    pub new_path: Option<Vec<u8>>,
    /// Follow a symlink at the name itself (open without O_NOFOLLOW).
    pub follow_last: bool,
    /// What to run (`OnPath`) if a followed symlink leads to a directory rather than a name in
    /// one (its target is `/`, or ends in `/`, `.` or `..`); without it such a path is EISDIR.
    pub at_directory: Option<Op>,
}

/// Does `path` end at a directory itself rather than at a name in one: `/`, `.`, `..`, or a
/// trailing `/`, `/.` or `/..`? Such a path is opened with `OnPath`, as it has no last name.
pub(crate) fn ends_at_directory(path: &[u8]) -> bool {
    let last = path.rsplit(|&byte| byte == b'/').next().unwrap_or_default();
    path.ends_with(b"/") || last == b"." || last == b".."
}

impl Client {
    /// Runs `make_op(name, new_name)` at `request.path` (and `new_path`), resolved by name on the
    /// server in one atomic step. See the module doc.
    pub(crate) async fn by_name(
        &self,
        request: ByName,
        make_op: impl Fn(Vec<u8>, Option<Vec<u8>>) -> Op,
    ) -> Result<(Reply, Bytes)> {
        self.inner.shared.counters.stale_retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (mut dir, mut name) = split(&request.path)?;
        let mut target = request.new_path.as_deref().map(split).transpose()?;
        for _ in 0..=SYMLINKS_FOLLOWED_MAX {
            let op = make_op(name.clone(), target.as_ref().map(|(_, new_name)| new_name.clone()));
            let new_dir = target.as_ref().map(|(new_dir, _)| new_dir.clone());
            let at_path = Op::AtPath { dir: dir.clone(), new_dir, follow_last: request.follow_last, op: Box::new(op) };
            let (reply, payload) = self.call(at_path, Bytes::new()).await?;
            let Reply::SymlinkOnPath { in_new_dir, index, target: link } = reply else {
                return Ok((reply, payload));
            };
            let index = index as usize;
            match (&mut target, in_new_dir) {
                (Some((new_dir, _)), true) => *new_dir = splice(new_dir, index, &link),
                (_, false) if index < dir.len() => dir = splice(&dir, index, &link),
                (_, false) if request.follow_last => {
                    // The name itself is a symlink: go where it points.
                    let mut path = if link.starts_with(b"/") { Vec::new() } else { dir.clone() };
                    path.extend(walkable(&link));
                    if ends_at_directory(&link) {
                        let Some(op) = request.at_directory else {
                            return Err(Error::new(Errno::EISDIR, "the symlink points at a directory"));
                        };
                        // The target names a directory: it is found and acted on in one step too.
                        return self.on_components(path, true, op, Bytes::new()).await;
                    }
                    // (An empty target names nothing, as on Linux.)
                    name = path.pop().ok_or_else(|| Error::new(Errno::ENOENT, "the symlink's target is empty"))?;
                    dir = path;
                }
                _ => return Err(Errno::ELOOP.into()),
            }
        }
        Err(Errno::ELOOP.into())
    }
}

impl Client {
    /// Runs `op` on the inode `path` names, found by name on the server in the same atomic step
    /// (`Op::OnPath`): the retry after a stale id for calls that act on an inode. Symlinks met
    /// are spliced in by name, at most `SYMLINKS_FOLLOWED_MAX` times.
    pub(crate) async fn on_path(
        &self,
        path: &[u8],
        follow_last: bool,
        op: Op,
        payload: Bytes,
    ) -> Result<(Reply, Bytes)> {
        self.inner.shared.counters.stale_retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.on_components(walkable(path), follow_last, op, payload).await
    }

    /// `on_path` with the path already split into the components the server walks.
    async fn on_components(
        &self,
        mut components: Vec<Vec<u8>>,
        follow_last: bool,
        op: Op,
        payload: Bytes,
    ) -> Result<(Reply, Bytes)> {
        for _ in 0..=SYMLINKS_FOLLOWED_MAX {
            let on_path = Op::OnPath { path: components.clone(), follow_last, op: Box::new(op.clone()) };
            let (reply, data) = self.call(on_path, payload.clone()).await?;
            let Reply::SymlinkOnPath { index, target, .. } = reply else {
                return Ok((reply, data));
            };
            // The symlink at `index` (the last component included) is replaced by its target.
            components = splice(&components, index as usize, &target);
        }
        Err(Errno::ELOOP.into())
    }
}

impl Client {
    /// `link(original, link)` resolved by name on the server in one step (`AtPath` carrying Link:
    /// the source's whole path, not followed at its end, and the new name's directory).
    pub(crate) async fn link_by_name(&self, original: &[u8], link: &[u8]) -> Result<Reply> {
        self.inner.shared.counters.stale_retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut source = walkable(original);
        let (mut new_dir, new_name) = split(link)?;
        for _ in 0..=SYMLINKS_FOLLOWED_MAX {
            let op = Op::Link { ino: 0, new_parent: 0, new_name: new_name.clone() };
            let at_path = Op::AtPath {
                dir: source.clone(),
                new_dir: Some(new_dir.clone()),
                follow_last: false,
                op: Box::new(op),
            };
            let (reply, _) = self.call(at_path, Bytes::new()).await?;
            match reply {
                Reply::SymlinkOnPath { in_new_dir: true, index, target } => {
                    new_dir = splice(&new_dir, index as usize, &target)
                }
                Reply::SymlinkOnPath { index, target, .. } => source = splice(&source, index as usize, &target),
                other => return Ok(other),
            }
        }
        Err(Errno::ELOOP.into())
    }
}

impl Client {
    /// `open` resolved by name on the server in one atomic step: `Op::AtPath` carrying Open for a
    /// path ending in a name, `Op::OnPath` carrying OpenIno for one ending at a directory
    /// (`/`, `..`, `dir/`), where there is no name to open by.
    pub(crate) async fn open_by_name(&self, path: &[u8], flags: OpenFlags, perm: u32, follow: bool) -> Result<File> {
        let directory_only = names_directory(path);
        let reply = if directory_only || ends_at_directory(path) {
            // "dir/" opens only a directory (ENOTDIR otherwise), and can never create one.
            let flags = if directory_only { flags | OpenFlags::DIRECTORY } else { flags };
            match self.on_path(path, true, Op::OpenIno { ino: 0, flags }, Bytes::new()).await {
                Err(error) if error.errno == Errno::ENOENT && directory_only && flags.contains(OpenFlags::CREATE) => {
                    return Err(Errno::EISDIR.into());
                }
                other => other?.0,
            }
        } else {
            let request = ByName {
                path: path.to_vec(),
                new_path: None,
                follow_last: follow,
                at_directory: Some(Op::OpenIno { ino: 0, flags }),
            };
            self.by_name(request, |name, _| Op::Open { parent: 0, name, flags, perm }).await?.0
        };
        match reply {
            Reply::Opened { handle, attr, created } => Ok(File::new(self.clone(), handle, attr, created, flags)),
            other => Err(unexpected(&other)),
        }
    }
}
