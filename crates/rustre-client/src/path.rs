//! Path walking in the client: the server knows only (directory inode, name), so the library turns
//! paths into lookups, following symlinks as a local file system would.

use std::collections::VecDeque;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustre_proto::{Attr, Errno, FileKind, ROOT_INO};

use crate::Client;
use crate::error::{Error, Result};

/// Most symlinks followed in one path walk (Linux's `MAXSYMLINKS`).
pub const SYMLINKS_FOLLOWED_MAX: u32 = 40;

/// One path component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Component {
    Parent,
    Name(Vec<u8>),
}

pub(crate) fn components(path: &[u8]) -> VecDeque<Component> {
    path.split(|&byte| byte == b'/')
        .filter(|part| !part.is_empty() && *part != b".")
        .map(|part| if part == b".." { Component::Parent } else { Component::Name(part.to_vec()) })
        .collect()
}

/// A path ending in `/` (other than the root itself) names a directory, or fails: a trailing
/// slash makes `stat` follow a final symlink and makes a non-directory ENOTDIR, as on Linux.
pub(crate) fn names_directory(path: &[u8]) -> bool {
    path.ends_with(b"/") && path.iter().any(|&byte| byte != b'/')
}

pub(crate) fn bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

/// Where a walk stands: the directories from the root down to the current one.
#[derive(Clone, Debug)]
pub(crate) struct Walk {
    pub stack: Vec<u64>,
}

impl Walk {
    pub fn root() -> Walk {
        Walk { stack: vec![ROOT_INO] }
    }

    pub fn directory(&self) -> u64 {
        *self.stack.last().expect("the stack holds the root at least")
    }

    fn up(&mut self) {
        if self.stack.len() > 1 {
            self.stack.pop();
        }
    }
}

impl Client {
    /// Walks `pending` from `walk`, following every symlink met (and the last component's when
    /// `follow_last`). Returns the attributes of what the path names and leaves `walk` at the
    /// directory holding it. Inner components need only their cached names (inode and kind:
    /// a kind never changes), so a warm walk sends nothing.
    pub(crate) async fn walk(&self, walk: &mut Walk, pending: VecDeque<Component>, follow_last: bool) -> Result<Attr> {
        let attr = self.walk_to(walk, pending, follow_last, true).await?;
        Ok(attr.expect("a walk for attributes ends with them"))
    }

    /// Walks `pending` from `walk` to a directory, which the walk is left at: every component,
    /// the last one included, needs only its cached name, so that a change in that directory
    /// (which changes its attributes) costs the next walk through it nothing.
    pub(crate) async fn walk_directory(&self, walk: &mut Walk, pending: VecDeque<Component>) -> Result<()> {
        let attr = self.walk_to(walk, pending, true, false).await?;
        debug_assert!(attr.is_none(), "a walk to a directory asks for no attributes");
        Ok(())
    }

    /// `walk`, and with `attr_of_last` false, `walk_directory` (then it returns `None`).
    async fn walk_to(
        &self,
        walk: &mut Walk,
        mut pending: VecDeque<Component>,
        follow_last: bool,
        attr_of_last: bool,
    ) -> Result<Option<Attr>> {
        let mut followed = 0;
        while let Some(component) = pending.pop_front() {
            let name = match component {
                Component::Parent => {
                    walk.up();
                    continue;
                }
                Component::Name(name) => name,
            };
            let last = pending.is_empty();
            let (ino, kind, attr) = if last && attr_of_last {
                let attr = self.lookup(walk.directory(), &name).await?;
                (attr.ino, attr.kind, Some(attr))
            } else {
                let (ino, kind) = self.resolve_name(walk.directory(), &name).await?;
                (ino, kind, None)
            };
            if kind == FileKind::Symlink && (!last || follow_last) {
                followed += 1;
                if followed > SYMLINKS_FOLLOWED_MAX {
                    return Err(Errno::ELOOP.into());
                }
                let target = self.readlink_ino(ino).await?;
                if target.starts_with(b"/") {
                    *walk = Walk::root();
                }
                let mut spliced = components(&target);
                spliced.extend(pending);
                pending = spliced;
                continue;
            }
            if let Some(attr) = attr {
                return Ok(Some(attr));
            }
            if kind != FileKind::Directory {
                return Err(Errno::ENOTDIR.into());
            }
            walk.stack.push(ino);
            // Tests stop here to let another client change the path under a resolved directory.
            self.inner.shared.pause_points.pause("client.walk.after_directory").await;
        }
        if !attr_of_last {
            return Ok(None);
        }
        // The path ends on a directory of the walk ("/", "a/..", or a symlink to a directory).
        self.getattr(walk.directory()).await.map(Some)
    }

    /// Resolves a whole path, honouring a trailing slash.
    pub(crate) async fn resolve(&self, path: &[u8], follow_last: bool) -> Result<Attr> {
        let directory_only = names_directory(path);
        let attr = self.walk(&mut Walk::root(), components(path), follow_last || directory_only).await?;
        if directory_only && attr.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR.into());
        }
        Ok(attr)
    }

    /// Resolves everything but the last component of `path`, which must be a plain name.
    /// Returns the directory and that name. The root itself has no parent: EBUSY.
    pub(crate) async fn walk_parent(&self, walk: &mut Walk, path: &[u8]) -> Result<Vec<u8>> {
        let mut pending = components(path);
        let last = match pending.pop_back() {
            None => return Err(Error::new(Errno::EBUSY, "the root directory has no parent")),
            Some(Component::Parent) => return Err(Errno::EINVAL.into()),
            Some(Component::Name(name)) => name,
        };
        if path.ends_with(b"/.") {
            return Err(Errno::EINVAL.into());
        }
        if !pending.is_empty() {
            self.walk_directory(walk, pending).await?;
        }
        Ok(last)
    }
}
