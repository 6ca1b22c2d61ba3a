//! A sequential model of the namespace: what a correct server and client library answer to each
//! call of the history, applied one at a time.
//!
//! The model mirrors rustre's rules, not only POSIX's: the errno of each refusal and their
//! precedence come from `rustre-store`'s `namespace.rs` (open, mkdir, symlink, link, unlink,
//! rmdir, rename) and the path walk from `rustre-client` (`path.rs` and the path API of
//! `lib.rs`): the client splits a path into names, follows symlinks by splicing their targets
//! into the rest of the path (at most 40 per walk), treats `..` lexically, and resolves the parent
//! of the last name before asking the server to act on that name.
//!
//! Node ids are canonical: after every change the nodes are renumbered in the order of a walk of
//! the tree by name (then orphans, by handle), so two models with the same tree, hard links and
//! handles are equal whatever order of calls built them. The checker relies on that to merge
//! states reached by commuting calls.
//!
//! Besides names and contents, each node has what `stat` shows and the model can predict (its
//! permission bits, owner and group, atime and mtime) and its xattrs. The simulated clients act
//! as root, so no permission check refuses them; the rules that still apply to root (a chown
//! clears set-user-id, a set-group-id directory hands its group down) are the server's
//! (`access.rs`). Times are predicted as far as they can be: one a `SetTimes` set explicitly is
//! known exactly until a change of the node's contents (a write, a truncation that changes the
//! size) or of its entries (a directory's) sets mtime to the server's clock; otherwise a time is
//! only known to come from that clock (`Time::Clock`), and ctime always does. The server keeps no
//! atime on reads (as `noatime`), so atime changes only by `SetTimes`.
//!
//! `apply_traced` also records the call's footprint: the names, listings, nodes (contents, modes,
//! times, xattrs) and handles it read and changed. Two calls whose footprints do not conflict
//! commute (each answers the same in either order, and both orders end in the same model); the
//! checker uses that to try a call of unknown outcome only where it could matter.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rustre_proto::Errno;
use rustre_proto::name::{validate_name, validate_symlink_target};

use crate::history::{Call, HandleId, Kind, Outcome, READ_LEN, Time, Value, XattrMode};

/// Index of a node in `Model::nodes`.
type NodeId = u32;

const ROOT: NodeId = 0;

/// Handle ids from here up are slots of split calls (`phases.rs`), not file handles.
pub(crate) const SLOTS_MIN: HandleId = 1 << 62;

/// Most symlinks the client follows in one walk (its `SYMLINKS_FOLLOWED_MAX`, Linux's
/// `MAXSYMLINKS`).
const SYMLINKS_FOLLOWED_MAX: u32 = 40;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Node {
    /// nlink is 2 + subdirectories, computed; size is always 0.
    Directory {
        entries: BTreeMap<String, NodeId>,
    },
    File {
        data: Vec<u8>,
        nlink: u32,
    },
    /// size is the target's length.
    Symlink {
        target: String,
        nlink: u32,
    },
}

impl Node {
    fn kind(&self) -> Kind {
        match self {
            Node::Directory { .. } => Kind::Directory,
            Node::File { .. } => Kind::File,
            Node::Symlink { .. } => Kind::Symlink,
        }
    }
}

/// Set-user-id, set-group-id and group execute (`access.rs`).
const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o010;

/// What `stat` shows of a node besides its kind, size and links, and its xattrs. ctime is not
/// kept: every change sets it from the server's clock, so it is always `Time::Clock`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Meta {
    /// Permission bits (0o7777 at most).
    perm: u32,
    uid: u32,
    gid: u32,
    atime: Time,
    mtime: Time,
    xattrs: BTreeMap<String, Vec<u8>>,
}

impl Meta {
    /// A new node's, as `access::new_owner` makes it for the superuser (uid 0, gid 0) in a
    /// directory with permission bits `parent_perm` and group `parent_gid`: in a set-group-id
    /// directory the node takes the directory's group, and a new directory keeps the bit.
    fn new(kind: Kind, perm: u32, parent_perm: u32, parent_gid: u32) -> Meta {
        let inherit = parent_perm & S_ISGID != 0;
        let perm = if inherit && kind == Kind::Directory { perm | S_ISGID } else { perm };
        Meta {
            perm,
            uid: 0,
            gid: if inherit { parent_gid } else { 0 },
            atime: Time::Clock,
            mtime: Time::Clock,
            xattrs: BTreeMap::new(),
        }
    }
}

/// A node and what `stat` shows of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Inode {
    node: Node,
    meta: Meta,
}

/// The permission bits the client asks for: a file `open` makes (`OpenOptions`' default), a
/// `mkdir` of the workload's, and a symlink's. The server applies no umask.
const FILE_PERM: u32 = 0o644;
const DIRECTORY_PERM: u32 = 0o755;
const SYMLINK_PERM: u32 = 0o777;

/// The attribute changes of one `SetAttr` (`SetAttrIn`, without a handle).
#[derive(Clone, Copy, Debug, Default)]
struct SetAttr {
    perm: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    atime: Option<Time>,
    mtime: Option<Time>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Handle {
    node: NodeId,
    writable: bool,
}

/// A piece of model state a call can read or change. A node's kind and a symlink's target never
/// change, so reading them is not recorded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// What a name of a directory is bound to (or that it is unbound).
    Entry(Origin, String),
    /// Which names a directory has (its listing, emptiness and nlink): a change of any entry of
    /// the directory changes it, and so does the removal of the directory itself (its nlink
    /// drops to 0, as a handle or a walk under way sees it).
    Listing(Origin),
    /// A file's or symlink's contents and nlink.
    Node(Origin),
    /// A node's permission bits, owner and group.
    Mode(Origin),
    /// A node's atime and mtime.
    Times(Origin),
    /// Only written: a node's mtime set to the server's clock (by a change of its contents or
    /// entries). Two such changes commute; a read or change of the times does not with one.
    Stamp(Origin),
    /// One xattr of a node: its value, or that it has none.
    Xattr(Origin, String),
    /// Which xattrs a node has: only read; a change of any of them changes it.
    Xattrs(Origin),
    Handle(HandleId),
}

impl Key {
    /// Does changing `self` change what `other` stands for?
    fn changes(&self, other: &Key) -> bool {
        match (self, other) {
            (Key::Entry(directory, _), Key::Listing(listed)) => directory == listed,
            (Key::Xattr(node, _), Key::Xattrs(listed)) => node == listed,
            (Key::Stamp(_), Key::Stamp(_)) => false,
            (Key::Stamp(node), Key::Times(times)) | (Key::Times(times), Key::Stamp(node)) => node == times,
            _ => self == other,
        }
    }
}

/// What one call read and changed. Nodes are named by their origin, which stays the same as
/// calls change the model (unlike their ids), so footprints of successive calls compare.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Footprint {
    reads: Vec<Key>,
    writes: Vec<Key>,
}

impl Footprint {
    /// Could the two calls, applied to the same model, not commute? (One changes what the other
    /// reads or changes.) Calls that do not conflict answer the same in either order and end in
    /// the same model.
    pub(crate) fn conflicts(&self, other: &Footprint) -> bool {
        let touches = |writes: &[Key], footprint: &Footprint| {
            writes.iter().any(|key| footprint.reads.iter().chain(&footprint.writes).any(|other| key.changes(other)))
        };
        touches(&self.writes, other) || touches(&other.writes, self)
    }
}

/// The footprint being recorded, if any. Not part of the model's value: every trace compares
/// equal and hashes to nothing.
#[derive(Clone, Debug, Default)]
struct Trace(Option<Footprint>);

impl PartialEq for Trace {
    fn eq(&self, _: &Trace) -> bool {
        true
    }
}

impl Eq for Trace {}

impl Hash for Trace {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

/// A label of a node that no renumbering changes: the root is 0, every node made later gets the
/// next number. Two models that differ only in these labels are equal.
type Origin = u64;

/// The origin of each node (indexed like `Model::nodes`), and the next to hand out. Not part
/// of the model's value, as `Trace`.
#[derive(Clone, Debug)]
struct Origins {
    of: Vec<Origin>,
    next: Origin,
}

impl PartialEq for Origins {
    fn eq(&self, _: &Origins) -> bool {
        true
    }
}

impl Eq for Origins {}

impl Hash for Origins {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

/// The namespace (a tree rooted at `/`, with hard-linked files and symlinks) and the open handles,
/// which keep their node alive after it loses its last name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Model {
    /// Indexed by `NodeId`; the root is node 0. Between a change and the renumbering that ends
    /// it, unreachable nodes may linger; the renumbering drops them. Shared between copies of a
    /// model until changed (the checker copies models a lot).
    nodes: Vec<Arc<Inode>>,
    handles: BTreeMap<HandleId, Handle>,
    /// Walks of split path calls (`phases.rs`) that failed, by slot, until their act takes them.
    /// (Those that succeeded are kept in `handles`, under their slot, so the node stays alive and
    /// renumbering follows it.)
    failed: BTreeMap<HandleId, i32>,
    /// The last name a split call's walk (or an open's follow step) stopped before, by slot.
    names: BTreeMap<HandleId, String>,
    /// Walks of split calls still under way (one symlink is followed per step), by slot; where
    /// each stands is kept in `handles` under the same slot.
    walking: BTreeMap<HandleId, Walking>,
    origins: Origins,
    trace: Trace,
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

/// One component of a path, as the client splits it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Component {
    Parent,
    Name(String),
}

/// A call on what its path names, made by inode id once the walk found it (`Model::on_node`):
/// it adds, removes and moves no node.
fn on_a_node(call: &Call) -> bool {
    matches!(
        call,
        Call::Stat { .. }
            | Call::ReadDir { .. }
            | Call::Chmod { .. }
            | Call::Chown { .. }
            | Call::Truncate { .. }
            | Call::SetTimes { .. }
            | Call::Readlink { .. }
            | Call::SetXattr { .. }
            | Call::GetXattr { .. }
            | Call::ListXattr { .. }
            | Call::RemoveXattr { .. }
    )
}

/// A symlink target made only of names (no `..`, no `.` at its end, at least one name): its
/// directories and its last name. Other targets are followed in one step (`follow_step`).
fn plain_names(target: &str) -> Option<(VecDeque<String>, String)> {
    if target.ends_with("/.") {
        return None;
    }
    let mut names = VecDeque::new();
    for component in components(target) {
        match component {
            Component::Name(name) => names.push_back(name),
            Component::Parent => return None,
        }
    }
    let last = names.pop_back()?;
    Some((names, last))
}

/// The client's `components`: empty parts and `.` dropped.
fn components(path: &str) -> VecDeque<Component> {
    path.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .map(|part| if part == ".." { Component::Parent } else { Component::Name(part.to_string()) })
        .collect()
}

/// The client's `names_directory`: a trailing `/` (other than the root itself).
fn names_directory(path: &str) -> bool {
    path.ends_with('/') && path.bytes().any(|byte| byte != b'/')
}

fn validate(name: &str) -> Result<(), Errno> {
    validate_name(name.as_bytes())
}

/// Where a walk stands: the directories from the root down to the current one (`Walk` of the
/// client; `..` pops one).
type Walk = Vec<NodeId>;

fn top(walk: &Walk) -> NodeId {
    *walk.last().expect("a walk holds the root at least")
}

/// A walk under way: the components still to walk (the workload's paths and symlink targets
/// have no `..`), the symlinks followed so far, and what the walk is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Walking {
    pending: VecDeque<String>,
    followed: u32,
    /// Follow a symlink at the last component (a whole walk that follows).
    follow_last: bool,
    /// The walk goes to what the path names (else to its parent directory).
    whole: bool,
    /// For a walk to the parent: the last name, for the act.
    name: Option<String>,
}

/// The flags of an open, as `OpenOptions::flags` makes them.
#[derive(Clone, Copy, Debug)]
struct OpenFlags {
    write: bool,
    create: bool,
    exclusive: bool,
    truncate: bool,
    directory: bool,
}

impl Model {
    /// An empty namespace: just the root directory, no handles.
    pub fn new() -> Model {
        Model {
            nodes: vec![Arc::new(Inode {
                node: Node::Directory { entries: BTreeMap::new() },
                meta: Meta::new(Kind::Directory, DIRECTORY_PERM, 0, 0),
            })],
            handles: BTreeMap::new(),
            failed: BTreeMap::new(),
            names: BTreeMap::new(),
            walking: BTreeMap::new(),
            origins: Origins { of: vec![0], next: 1 },
            trace: Trace::default(),
        }
    }

    /// Applies `call` and returns what a correct server and client answer to it (never
    /// `Outcome::Unknown`). A failed call changes nothing.
    pub fn apply(&mut self, call: &Call) -> Outcome {
        let result = match call {
            Call::Open { path, write, create, exclusive, truncate, handle } => {
                let flags = OpenFlags {
                    write: *write,
                    create: *create || *exclusive,
                    exclusive: *exclusive,
                    truncate: *truncate,
                    directory: false,
                };
                self.open(path, flags, *handle)
            }
            Call::Write { handle, data } => self.write(*handle, data),
            Call::Read { handle } => self.read(*handle),
            Call::Close { handle } => self.close(*handle),
            Call::Unlink { path } => self.unlink(path),
            Call::Rename { from, to, noreplace } => self.rename(from, to, *noreplace),
            Call::Mkdir { path } => self.mkdir(path),
            Call::Rmdir { path } => self.rmdir(path),
            Call::Link { from, to } => self.link(from, to),
            Call::Symlink { target, path } => self.symlink(target, path),
            Call::Stat { path } => self.resolve(path, true).map(|node| self.attr(node)),
            Call::ReadDir { path } => self.read_dir(path),
            Call::Chmod { path, .. }
            | Call::Chown { path, .. }
            | Call::Truncate { path, .. }
            | Call::SetTimes { path, .. }
            | Call::Readlink { path }
            | Call::SetXattr { path, .. }
            | Call::GetXattr { path, .. }
            | Call::ListXattr { path }
            | Call::RemoveXattr { path, .. } => self.path_call(call, path),
            Call::Resolve { path, whole, follow, slot } => {
                self.resolve_step(path, *whole, *follow, *slot);
                Ok(Value::Done)
            }
            Call::Hop { slot } => {
                if !self.handles.contains_key(slot) && !self.failed.contains_key(slot) {
                    return Outcome::Unknown; // its walk has not started: not possible here
                }
                self.hop(*slot);
                Ok(Value::Done)
            }
            Call::Follow { from, to } => match self.follow_step(*from, *to) {
                Some(()) => Ok(Value::Done),
                None => return Outcome::Unknown,
            },
            Call::Act { call, slots } => match self.act(call, *slots) {
                Some(result) => result,
                // Not possible here (see `act`): an answer no observed outcome equals.
                None => return Outcome::Unknown,
            },
        };
        // Calls that never add, remove or move a node (so need no renumbering).
        let reads_only = matches!(call, Call::Write { .. } | Call::Read { .. }) || on_a_node(call);
        if !reads_only && result.is_ok() {
            self.renumber();
        }
        match result {
            Ok(value) => Outcome::Ok(value),
            Err(errno) => Outcome::Err(errno.0),
        }
    }

    /// `apply`, also giving what the call read and changed (in this model's node ids, as they
    /// were before the call).
    pub(crate) fn apply_traced(&mut self, call: &Call) -> (Outcome, Footprint) {
        self.trace = Trace(Some(Footprint::default()));
        let outcome = self.apply(call);
        let footprint = self.trace.0.take().expect("the trace is on");
        (outcome, footprint)
    }

    /// Is `call` a step of a split call that reads and changes nothing here: a `Hop` of a walk
    /// that has ended (the walks are given hops for their longest case)? It answers `Done`.
    pub(crate) fn settled(&self, call: &Call) -> bool {
        match call {
            Call::Hop { slot } => {
                !self.walking.contains_key(slot) && (self.handles.contains_key(slot) || self.failed.contains_key(slot))
            }
            _ => false,
        }
    }

    /// Drops a handle no later call can use. Only the lifetime of an orphan depends on it, and
    /// no call observes that.
    pub(crate) fn forget_handle(&mut self, handle: HandleId) {
        if self.handles.remove(&handle).is_some() {
            self.renumber();
        }
    }

    // ---- the footprint ----

    fn origin(&self, id: NodeId) -> Origin {
        self.origins.of[id as usize]
    }

    fn record(&mut self, write: bool, key: impl FnOnce() -> Key) {
        if let Some(footprint) = &mut self.trace.0 {
            if write { footprint.writes.push(key()) } else { footprint.reads.push(key()) }
        }
    }

    // ---- nodes ----

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize].node
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut Arc::make_mut(&mut self.nodes[id as usize]).node
    }

    fn meta(&self, id: NodeId) -> &Meta {
        &self.nodes[id as usize].meta
    }

    fn meta_mut(&mut self, id: NodeId) -> &mut Meta {
        &mut Arc::make_mut(&mut self.nodes[id as usize]).meta
    }

    /// A change of a node's contents or entries: its mtime comes from the server's clock.
    fn stamp(&mut self, id: NodeId) {
        let origin = self.origin(id);
        self.record(true, || Key::Stamp(origin));
        if self.meta(id).mtime != Time::Clock {
            self.meta_mut(id).mtime = Time::Clock;
        }
    }

    fn is_directory(&self, id: NodeId) -> bool {
        matches!(self.node(id), Node::Directory { .. })
    }

    fn symlink_target(&self, id: NodeId) -> Option<String> {
        match self.node(id) {
            Node::Symlink { target, .. } => Some(target.clone()),
            _ => None,
        }
    }

    fn entries(&self, directory: NodeId) -> &BTreeMap<String, NodeId> {
        match self.node(directory) {
            Node::Directory { entries } => entries,
            other => panic!("node {directory} is used as a directory but is {other:?}"),
        }
    }

    fn entries_mut(&mut self, directory: NodeId) -> &mut BTreeMap<String, NodeId> {
        match self.node_mut(directory) {
            Node::Directory { entries } => entries,
            other => panic!("node {directory} is used as a directory but is {other:?}"),
        }
    }

    /// What `name` in `directory` is bound to.
    fn lookup(&mut self, directory: NodeId, name: &str) -> Option<NodeId> {
        let origin = self.origin(directory);
        self.record(false, || Key::Entry(origin, name.to_string()));
        self.entries(directory).get(name).copied()
    }

    /// The names of `directory`.
    fn listing(&mut self, directory: NodeId) -> &BTreeMap<String, NodeId> {
        let origin = self.origin(directory);
        self.record(false, || Key::Listing(origin));
        self.entries(directory)
    }

    fn insert_entry(&mut self, directory: NodeId, name: String, id: NodeId) {
        let origin = self.origin(directory);
        self.record(true, || Key::Entry(origin, name.clone()));
        self.entries_mut(directory).insert(name, id);
        self.stamp(directory);
    }

    fn remove_entry(&mut self, directory: NodeId, name: &str) {
        let origin = self.origin(directory);
        self.record(true, || Key::Entry(origin, name.to_string()));
        self.entries_mut(directory).remove(name);
        self.stamp(directory);
    }

    /// A file or symlink, to change.
    fn changing(&mut self, id: NodeId) -> &mut Node {
        let origin = self.origin(id);
        self.record(true, || Key::Node(origin));
        self.node_mut(id)
    }

    /// A new node made in `directory`: its owner, group and mode as the server makes them there
    /// (which reads the directory's mode and group).
    fn add_node(&mut self, node: Node, directory: NodeId) -> NodeId {
        let origin = self.origin(directory);
        self.record(false, || Key::Mode(origin));
        let (kind, perm) = match &node {
            Node::Directory { .. } => (Kind::Directory, DIRECTORY_PERM),
            Node::File { .. } => (Kind::File, FILE_PERM),
            Node::Symlink { .. } => (Kind::Symlink, SYMLINK_PERM),
        };
        let parent = self.meta(directory);
        let meta = Meta::new(kind, perm, parent.perm, parent.gid);
        self.nodes.push(Arc::new(Inode { node, meta }));
        self.origins.of.push(self.origins.next);
        self.origins.next += 1;
        (self.nodes.len() - 1) as NodeId
    }

    /// The attributes the server reports (`InodeRecord::attr`): a directory's size is 0 and its
    /// nlink 2 + subdirectories; a symlink's size is its target's length; the mode, owner and
    /// times as far as the model knows them (see the module's doc).
    fn attr(&mut self, id: NodeId) -> Value {
        let origin = self.origin(id);
        self.record(false, || Key::Mode(origin));
        self.record(false, || Key::Times(origin));
        let (kind, size, nlink) = if self.is_directory(id) {
            self.record(false, || Key::Listing(origin));
            let subdirectories = self.entries(id).values().filter(|&&child| self.is_directory(child)).count();
            (Kind::Directory, 0, 2 + subdirectories as u32)
        } else {
            self.record(false, || Key::Node(origin));
            match self.node(id) {
                Node::File { data, nlink } => (Kind::File, data.len() as u64, *nlink),
                Node::Symlink { target, nlink } => (Kind::Symlink, target.len() as u64, *nlink),
                Node::Directory { .. } => unreachable!("directories are answered above"),
            }
        };
        let type_bits = match kind {
            Kind::File => 0o100000,
            Kind::Directory => 0o040000,
            Kind::Symlink => 0o120000,
        };
        let meta = self.meta(id);
        Value::Attr {
            kind,
            size,
            nlink,
            mode: type_bits | meta.perm,
            uid: meta.uid,
            gid: meta.gid,
            atime: meta.atime,
            mtime: meta.mtime,
            ctime: Time::Clock,
        }
    }

    /// One name of a file or symlink goes (`drop_link`); a directory loses its only one. What
    /// neither a name nor a handle reaches is dropped by the next renumbering.
    fn drop_link(&mut self, id: NodeId) {
        if self.is_directory(id) {
            // Its nlink as a handle or a walk under way sees it: 0 from now on (`act`).
            let origin = self.origin(id);
            self.record(true, || Key::Listing(origin));
            return;
        }
        match self.changing(id) {
            Node::File { nlink, .. } | Node::Symlink { nlink, .. } => {
                assert!(*nlink > 0, "a node reached by a name has a link");
                *nlink -= 1;
            }
            Node::Directory { .. } => unreachable!("directories are skipped above"),
        }
    }

    /// Is `ancestor` the directory `id` or one of its ancestors (`Ns::is_ancestor`)?
    fn is_ancestor(&mut self, ancestor: NodeId, id: NodeId) -> bool {
        if ancestor == id {
            return true;
        }
        let mut pending = vec![ancestor];
        while let Some(directory) = pending.pop() {
            let children: Vec<NodeId> = self.listing(directory).values().copied().collect();
            for child in children {
                if child == id {
                    return true;
                }
                if self.is_directory(child) {
                    pending.push(child);
                }
            }
        }
        false
    }

    /// Renumbers the nodes canonically: a depth-first walk from the root, entries by name, then
    /// the orphans handles hold, by handle. Drops nodes nothing reaches.
    fn renumber(&mut self) {
        const NONE: NodeId = NodeId::MAX;
        let mut renamed = vec![NONE; self.nodes.len()];
        let mut order: Vec<NodeId> = Vec::with_capacity(self.nodes.len());
        let mut pending = vec![ROOT];
        while let Some(id) = pending.pop() {
            if renamed[id as usize] != NONE {
                continue;
            }
            renamed[id as usize] = order.len() as NodeId;
            order.push(id);
            if let Node::Directory { entries } = self.node(id) {
                pending.extend(entries.values().rev().filter(|&&child| renamed[child as usize] == NONE));
            }
        }
        for handle in self.handles.values() {
            if renamed[handle.node as usize] == NONE {
                renamed[handle.node as usize] = order.len() as NodeId;
                order.push(handle.node);
            }
        }
        if order.len() == self.nodes.len() && order.iter().enumerate().all(|(index, &id)| index == id as usize) {
            return;
        }
        self.origins.of = order.iter().map(|&id| self.origins.of[id as usize]).collect();
        let mut old = std::mem::take(&mut self.nodes);
        let taken =
            Arc::new(Inode { node: Node::File { data: Vec::new(), nlink: 0 }, meta: Meta::new(Kind::File, 0, 0, 0) });
        self.nodes = order
            .iter()
            .map(|&id| {
                let mut node = std::mem::replace(&mut old[id as usize], taken.clone());
                let moves = |entries: &BTreeMap<String, NodeId>| {
                    entries.values().any(|&child| renamed[child as usize] != child)
                };
                if let Node::Directory { entries } = &node.node
                    && moves(entries)
                    && let Node::Directory { entries } = &mut Arc::make_mut(&mut node).node
                {
                    for child in entries.values_mut() {
                        *child = renamed[*child as usize];
                    }
                }
                node
            })
            .collect();
        for handle in self.handles.values_mut() {
            handle.node = renamed[handle.node as usize];
        }
    }

    // ---- path walks (rustre-client's path.rs) ----

    /// `Client::walk`: walks `pending` from `walk`, following every symlink met (and the last
    /// component's when `follow_last`). Returns what the path names, and leaves `walk` at the
    /// directory holding it.
    fn walk(&mut self, walk: &mut Walk, mut pending: VecDeque<Component>, follow_last: bool) -> Result<NodeId, Errno> {
        let mut followed = 0;
        while let Some(component) = pending.pop_front() {
            let name = match component {
                Component::Parent => {
                    if walk.len() > 1 {
                        walk.pop();
                    }
                    continue;
                }
                Component::Name(name) => name,
            };
            let last = pending.is_empty();
            validate(&name)?;
            let id = self.lookup(top(walk), &name).ok_or(Errno::ENOENT)?;
            if let Some(target) = self.symlink_target(id)
                && (!last || follow_last)
            {
                followed += 1;
                if followed > SYMLINKS_FOLLOWED_MAX {
                    return Err(Errno::ELOOP);
                }
                if target.starts_with('/') {
                    *walk = vec![ROOT];
                }
                let mut spliced = components(&target);
                spliced.extend(pending);
                pending = spliced;
                continue;
            }
            if last {
                return Ok(id);
            }
            if !self.is_directory(id) {
                return Err(Errno::ENOTDIR);
            }
            walk.push(id);
        }
        // The path ends on a directory of the walk ("/", "a/..", or a symlink to a directory).
        Ok(top(walk))
    }

    /// `Client::resolve`: a whole path, honouring a trailing slash.
    fn resolve(&mut self, path: &str, follow_last: bool) -> Result<NodeId, Errno> {
        let directory_only = names_directory(path);
        let id = self.walk(&mut vec![ROOT], components(path), follow_last || directory_only)?;
        if directory_only && !self.is_directory(id) {
            return Err(Errno::ENOTDIR);
        }
        Ok(id)
    }

    /// `Client::walk_parent`: resolves all but the last component, which must be a name; leaves
    /// `walk` at the directory holding it. The root has no parent (EBUSY); `..` or `/.` at the
    /// end is EINVAL.
    fn walk_parent(&mut self, walk: &mut Walk, path: &str) -> Result<String, Errno> {
        let mut pending = components(path);
        let last = match pending.pop_back() {
            None => return Err(Errno::EBUSY),
            Some(Component::Parent) => return Err(Errno::EINVAL),
            Some(Component::Name(name)) => name,
        };
        if path.ends_with("/.") {
            return Err(Errno::EINVAL);
        }
        if !pending.is_empty() {
            let directory = self.walk(walk, pending, true)?;
            if !self.is_directory(directory) {
                return Err(Errno::ENOTDIR);
            }
            if top(walk) != directory {
                walk.push(directory);
            }
        }
        Ok(last)
    }

    // ---- split path calls (`phases.rs`) ----

    /// The walk of a split path call: to `path`'s parent, or (`whole`) to what it names. What it
    /// found is kept in `slot` for the call's act.
    fn resolve_step(&mut self, path: &str, whole: bool, follow: bool, slot: HandleId) {
        let mut pending: VecDeque<String> = components(path)
            .into_iter()
            .map(|component| match component {
                Component::Name(name) => name,
                Component::Parent => panic!("split paths have no '..': {path:?}"),
            })
            .collect();
        let name = if whole { None } else { pending.pop_back() };
        let walking = Walking { pending, followed: 0, follow_last: !whole || follow, whole, name };
        self.handles.insert(slot, Handle { node: ROOT, writable: false });
        self.walking.insert(slot, walking);
        self.hop(slot);
    }

    /// Takes the walk in `slot` one component further (reading a symlink there and splicing
    /// its target in is part of that step), or ends it. The client looks each component up at
    /// an instant of its own (from its cache, or from the server, maybe after a reconnection),
    /// so any change may fall between two of them.
    fn hop(&mut self, slot: HandleId) {
        let Some(mut walking) = self.walking.remove(&slot) else { return };
        let mut top = self.handles.get(&slot).expect("a walk under way has a position").node;
        let failed = 'step: {
            let Some(name) = walking.pending.pop_front() else { break 'step None };
            let last = walking.pending.is_empty();
            if let Err(errno) = validate(&name) {
                break 'step Some(errno);
            }
            let Some(id) = self.lookup(top, &name) else { break 'step Some(Errno::ENOENT) };
            if let Some(target) = self.symlink_target(id)
                && (!last || walking.follow_last)
            {
                walking.followed += 1;
                if walking.followed > SYMLINKS_FOLLOWED_MAX {
                    break 'step Some(Errno::ELOOP);
                }
                if target.starts_with('/') {
                    top = ROOT;
                }
                let mut spliced: VecDeque<String> = components(&target)
                    .into_iter()
                    .filter_map(|component| match component {
                        Component::Name(name) => Some(name),
                        Component::Parent => None,
                    })
                    .collect();
                spliced.extend(walking.pending.drain(..));
                walking.pending = spliced;
                self.handles.insert(slot, Handle { node: top, writable: false });
                self.walking.insert(slot, walking);
                return;
            }
            if last && walking.whole {
                top = id;
                break 'step None;
            }
            if !self.is_directory(id) {
                break 'step Some(Errno::ENOTDIR);
            }
            top = id;
            if !walking.pending.is_empty() {
                self.handles.insert(slot, Handle { node: top, writable: false });
                self.walking.insert(slot, walking);
                return;
            }
            None
        };
        match failed {
            Some(errno) => {
                self.handles.remove(&slot);
                self.failed.insert(slot, errno.0);
            }
            None => {
                self.handles.insert(slot, Handle { node: top, writable: false });
                if let Some(name) = walking.name {
                    self.names.insert(slot, name);
                }
            }
        }
    }

    /// Ends the walk in `slot`, whatever steps are left, now.
    fn finish_walk(&mut self, slot: HandleId) {
        while self.walking.contains_key(&slot) {
            self.hop(slot);
        }
    }

    fn keep(&mut self, slot: HandleId, found: Result<(NodeId, Option<String>), Errno>) {
        match found {
            Ok((node, name)) => {
                self.handles.insert(slot, Handle { node, writable: false });
                if let Some(name) = name {
                    self.names.insert(slot, name);
                }
            }
            Err(errno) => {
                self.failed.insert(slot, errno.0);
            }
        }
    }

    /// A follow step of a split open (`Call::Follow`); `None` if it cannot happen here.
    fn follow_step(&mut self, from: HandleId, to: HandleId) -> Option<()> {
        if !self.handles.contains_key(&from) && !self.failed.contains_key(&from) {
            return None;
        }
        self.finish_walk(from);
        if let Some(errno) = self.failed.remove(&from) {
            self.failed.insert(to, errno);
            return Some(());
        }
        let directory = self.handles.remove(&from)?.node;
        let name = self.names.remove(&from)?;
        if !self.reachable(directory) {
            return None;
        }
        let target = self.lookup(directory, &name).and_then(|id| self.symlink_target(id));
        if let Some(target) = &target
            && let Some((pending, last)) = plain_names(target)
        {
            // The link is read now (the server's open answered it); each directory of its
            // target is looked up later, at an instant of its own (the `Hop`s after the follow),
            // so a change may come between: a rename that takes the target's directory away
            // after the link was read answers ENOENT (seed 5640).
            let start = if target.starts_with('/') { ROOT } else { directory };
            self.handles.insert(to, Handle { node: start, writable: false });
            let walking = Walking { pending, followed: 1, follow_last: true, whole: false, name: Some(last) };
            self.walking.insert(to, walking);
            return Some(());
        }
        let found = match target {
            None => Ok((directory, Some(name))),
            Some(target) => {
                let mut walk =
                    if target.starts_with('/') || directory == ROOT { vec![ROOT] } else { vec![ROOT, directory] };
                match self.walk_parent(&mut walk, &target) {
                    Ok(name) => Ok((top(&walk), Some(name))),
                    // A target with no last name ("/", "..."): the open goes on from the link.
                    Err(Errno::EBUSY | Errno::EINVAL) => Ok((directory, Some(name))),
                    Err(errno) => Err(errno),
                }
            }
        };
        self.keep(to, found);
        Some(())
    }

    /// The act of a split path call on what its walks found. `None` when it cannot happen here:
    /// a walk of it has not happened yet, or what a walk found is no longer in the tree (the real
    /// client then met a stale id, and retried by name: walk and act in one step, another order
    /// the checker tries). A failed walk answers its errno (the first, in the client's order).
    fn act(&mut self, call: &Call, slots: [HandleId; 2]) -> Option<Result<Value, Errno>> {
        let used: Vec<HandleId> = slots.into_iter().filter(|&slot| slot != 0).collect();
        if !used.iter().all(|slot| self.handles.contains_key(slot) || self.failed.contains_key(slot)) {
            return None;
        }
        for &slot in &used {
            self.finish_walk(slot);
        }
        let failure = used.iter().find_map(|slot| self.failed.get(slot).copied());
        let mut at = [ROOT; 2];
        let kept_name = used.first().and_then(|slot| self.names.get(slot).cloned());
        for (index, slot) in used.iter().enumerate() {
            self.failed.remove(slot);
            self.names.remove(slot);
            if let Some(handle) = self.handles.remove(slot) {
                at[index] = handle.node;
            }
        }
        if let Some(errno) = failure {
            return Some(Err(Errno(errno)));
        }
        for &node in &at[..used.len()] {
            if self.reachable(node) {
                continue;
            }
            // Gone from the tree. A call on the node itself acts on it: the server does, on an
            // orphan a file handle keeps (a stat or a listing sees it, a change changes it); had
            // nothing kept it, the client met a stale id and retried by name, walk and act in one
            // step, which the check tries too. (Which it was, the model cannot always tell: the
            // checker forgets a handle no later call of its own needs, `forget_handle`.) A
            // symlink's target never changes, and the client may have it cached by id.
            if on_a_node(call) {
                let mut answer = self.on_node(call, node);
                // A removed directory has no links at all (`Ns::drop_link`).
                if let Ok(Value::Attr { kind: Kind::Directory, nlink, .. }) = &mut answer {
                    *nlink = 0;
                }
                return Some(answer);
            }
            if !self.held_open(node) {
                // Destroyed on the server: the client met a stale id and retried by name.
                return None;
            }
            // An orphan: a dead directory holds no name and takes none (ENOENT); a link of the
            // orphan fails, and the client retries that by name.
            return match call {
                Call::Link { .. } if node == at[0] => None,
                _ => Some(Err(Errno::ENOENT)),
            };
        }
        let walk = |node: NodeId| if node == ROOT { vec![ROOT] } else { vec![ROOT, node] };
        let last = |path: &str| match components(path).pop_back() {
            Some(Component::Name(name)) => name,
            other => panic!("a split call's path {path:?} ends in a name, not {other:?}"),
        };
        Some(match call {
            Call::Open { path, write, create, exclusive, truncate, handle } => {
                let flags = OpenFlags {
                    write: *write,
                    create: *create || *exclusive,
                    exclusive: *exclusive,
                    truncate: *truncate,
                    directory: false,
                };
                self.open_from(walk(at[0]), &kept_name.unwrap_or_else(|| last(path)), flags, *handle)
            }
            Call::Unlink { path } => self.unlink_from(walk(at[0]), &last(path)),
            Call::Rmdir { path } => self.rmdir_from(walk(at[0]), &last(path)),
            Call::Mkdir { path } => self.mkdir_from(walk(at[0]), &last(path)),
            Call::Symlink { target, path } => self.symlink_from(target, walk(at[0]), &last(path)),
            call if on_a_node(call) => self.on_node(call, at[0]),
            Call::Rename { from, to, noreplace } => {
                self.rename_from(walk(at[0]), &last(from), walk(at[1]), &last(to), *noreplace)
            }
            Call::Link { to, .. } => self.link_from(at[0], walk(at[1]), &last(to)),
            other => panic!("{other:?} is never split"),
        })
    }

    /// Is `node` kept alive by a file handle of the workload (not by a walk's slot)?
    fn held_open(&self, node: NodeId) -> bool {
        self.handles.iter().any(|(&id, handle)| id < SLOTS_MIN && handle.node == node)
    }

    /// Does a name in the tree still lead to `node`?
    fn reachable(&self, node: NodeId) -> bool {
        let mut pending = vec![ROOT];
        while let Some(id) = pending.pop() {
            if id == node {
                return true;
            }
            if let Node::Directory { entries } = self.node(id) {
                pending.extend(entries.values().copied());
            }
        }
        false
    }

    // ---- calls ----

    /// `Client::open_path` over `Ns::open` and `Ns::open_existing`.
    fn open(&mut self, path: &str, flags: OpenFlags, handle: HandleId) -> Result<Value, Errno> {
        self.open_from(vec![ROOT], path, flags, handle)
    }

    /// `open` of `path` from where `walk` stands.
    fn open_from(&mut self, mut walk: Walk, path: &str, flags: OpenFlags, handle: HandleId) -> Result<Value, Errno> {
        // `OpenOptions::flags`: reading is always asked for; creating and truncating need write.
        if (flags.create || flags.truncate) && !flags.write {
            return Err(Errno::EINVAL);
        }
        if names_directory(path) {
            // "name/" opens only an existing directory, and only for reading.
            let writing = flags.write || flags.create || flags.truncate;
            return match self.resolve(path, true) {
                Err(Errno::ENOENT) if flags.create => Err(Errno::EISDIR),
                Err(errno) => Err(errno),
                Ok(_) if writing => Err(Errno::EISDIR),
                Ok(id) => self.open_existing(id, OpenFlags { directory: true, ..flags }, handle),
            };
        }
        let mut path = path.to_string();
        for _ in 0..=SYMLINKS_FOLLOWED_MAX {
            let name = match self.walk_parent(&mut walk, &path) {
                Ok(name) => name,
                // "/" (or "a/..") has no name to open by: the directory itself is opened.
                Err(Errno::EBUSY | Errno::EINVAL) => {
                    let id = self.walk(&mut walk, components(&path), true)?;
                    return self.open_existing(id, flags, handle);
                }
                Err(errno) => return Err(errno),
            };
            validate(&name)?;
            let directory = top(&walk);
            match self.lookup(directory, &name) {
                Some(_) if flags.create && flags.exclusive => return Err(Errno::EEXIST),
                Some(id) => {
                    let Some(target) = self.symlink_target(id) else {
                        return self.open_existing(id, flags, handle);
                    };
                    // The server answers ELOOP for a symlink; the client follows it.
                    if target.starts_with('/') {
                        walk = vec![ROOT];
                    }
                    path = target;
                }
                None if !flags.create => return Err(Errno::ENOENT),
                None => {
                    let id = self.add_node(Node::File { data: Vec::new(), nlink: 1 }, directory);
                    self.insert_entry(directory, name, id);
                    self.record(true, || Key::Handle(handle));
                    self.handles.insert(handle, Handle { node: id, writable: flags.write });
                    return Ok(Value::Opened { created: true, size: 0 });
                }
            }
        }
        Err(Errno::ELOOP)
    }

    /// `Ns::open_existing`, then the truncation `open_reply` makes.
    fn open_existing(&mut self, id: NodeId, flags: OpenFlags, handle: HandleId) -> Result<Value, Errno> {
        match self.node(id) {
            Node::Symlink { .. } => return Err(Errno::ELOOP),
            Node::Directory { .. } if flags.write || flags.truncate => return Err(Errno::EISDIR),
            Node::File { .. } if flags.directory => return Err(Errno::ENOTDIR),
            _ => {}
        }
        // The server truncates only a file that has data (`Opened::needs_truncate`): an empty
        // one keeps its mtime (Linux's O_TRUNC sets it whatever the size).
        if flags.truncate && flags.write && matches!(self.node(id), Node::File { data, .. } if !data.is_empty()) {
            if let Node::File { data, .. } = self.changing(id) {
                data.clear();
            }
            self.stamp(id);
        }
        self.record(true, || Key::Handle(handle));
        self.handles.insert(handle, Handle { node: id, writable: flags.write });
        let size = match self.node(id) {
            Node::Directory { .. } => 0,
            Node::File { data, .. } => data.len() as u64,
            Node::Symlink { target, .. } => target.len() as u64,
        };
        if !self.is_directory(id) {
            let origin = self.origin(id);
            self.record(false, || Key::Node(origin));
        }
        Ok(Value::Opened { created: false, size })
    }

    /// A handle the model knows; one it does not is EBADF, as the server answers.
    fn handle(&mut self, handle: HandleId) -> Result<Handle, Errno> {
        self.record(false, || Key::Handle(handle));
        self.handles.get(&handle).copied().ok_or(Errno::EBADF)
    }

    /// `File::write_at(0, data)`: overwrites from offset 0, extending the file if longer.
    fn write(&mut self, handle: HandleId, data: &[u8]) -> Result<Value, Errno> {
        let handle = self.handle(handle)?;
        if !handle.writable || self.is_directory(handle.node) {
            // Only regular files open for writing.
            return Err(Errno::EBADF);
        }
        match self.changing(handle.node) {
            Node::File { data: contents, .. } => {
                if contents.len() < data.len() {
                    contents.resize(data.len(), 0);
                }
                contents[..data.len()].copy_from_slice(data);
                self.stamp(handle.node);
                Ok(Value::Done)
            }
            _ => Err(Errno::EBADF),
        }
    }

    /// `File::read_at(0, READ_LEN)`.
    fn read(&mut self, handle: HandleId) -> Result<Value, Errno> {
        let handle = self.handle(handle)?;
        if self.is_directory(handle.node) {
            return Err(Errno::EISDIR);
        }
        let origin = self.origin(handle.node);
        self.record(false, || Key::Node(origin));
        match self.node(handle.node) {
            Node::File { data, .. } => Ok(Value::Data(data[..data.len().min(READ_LEN)].to_vec())),
            _ => Err(Errno::EINVAL),
        }
    }

    fn close(&mut self, handle: HandleId) -> Result<Value, Errno> {
        self.record(true, || Key::Handle(handle));
        self.handles.remove(&handle).ok_or(Errno::EBADF)?;
        Ok(Value::Done)
    }

    /// `Client::remove_file` over `Ns::unlink`: does not follow a final symlink.
    fn unlink(&mut self, path: &str) -> Result<Value, Errno> {
        if names_directory(path) {
            // "name/" names a directory, which unlink refuses; or nothing unlink could remove.
            return Err(match self.resolve(path, true) {
                Ok(_) => Errno::EISDIR,
                Err(errno) => errno,
            });
        }
        self.unlink_from(vec![ROOT], path)
    }

    /// `unlink` of `path` from where `walk` stands.
    fn unlink_from(&mut self, mut walk: Walk, path: &str) -> Result<Value, Errno> {
        let name = self.walk_parent(&mut walk, path)?;
        validate(&name)?;
        let directory = top(&walk);
        let id = self.lookup(directory, &name).ok_or(Errno::ENOENT)?;
        if self.is_directory(id) {
            return Err(Errno::EISDIR);
        }
        self.remove_entry(directory, &name);
        self.drop_link(id);
        Ok(Value::Done)
    }

    /// `Client::remove_dir` over `Ns::rmdir`.
    fn rmdir(&mut self, path: &str) -> Result<Value, Errno> {
        self.rmdir_from(vec![ROOT], path)
    }

    fn rmdir_from(&mut self, mut walk: Walk, path: &str) -> Result<Value, Errno> {
        let name = self.walk_parent(&mut walk, path)?;
        validate(&name)?;
        let directory = top(&walk);
        let id = self.lookup(directory, &name).ok_or(Errno::ENOENT)?;
        if !self.is_directory(id) {
            return Err(Errno::ENOTDIR);
        }
        if !self.listing(id).is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.remove_entry(directory, &name);
        self.drop_link(id);
        Ok(Value::Done)
    }

    /// `Client::mkdir` over `Ns::mkdir`: answers the new directory's attributes.
    fn mkdir(&mut self, path: &str) -> Result<Value, Errno> {
        self.mkdir_from(vec![ROOT], path)
    }

    fn mkdir_from(&mut self, mut walk: Walk, path: &str) -> Result<Value, Errno> {
        let name = match self.walk_parent(&mut walk, path) {
            Ok(name) => name,
            // mkdir of the root: it exists.
            Err(_) if components(path).is_empty() => return Err(Errno::EEXIST),
            Err(errno) => return Err(errno),
        };
        validate(&name)?;
        let directory = top(&walk);
        if self.lookup(directory, &name).is_some() {
            return Err(Errno::EEXIST);
        }
        let id = self.add_node(Node::Directory { entries: BTreeMap::new() }, directory);
        self.insert_entry(directory, name, id);
        Ok(self.attr(id))
    }

    /// `Client::symlink` over `Ns::symlink`: answers the symlink's attributes.
    fn symlink(&mut self, target: &str, path: &str) -> Result<Value, Errno> {
        self.symlink_from(target, vec![ROOT], path)
    }

    fn symlink_from(&mut self, target: &str, mut walk: Walk, path: &str) -> Result<Value, Errno> {
        let name = self.walk_parent(&mut walk, path)?;
        validate(&name)?;
        validate_symlink_target(target.as_bytes())?;
        let directory = top(&walk);
        if self.lookup(directory, &name).is_some() {
            return Err(Errno::EEXIST);
        }
        let id = self.add_node(Node::Symlink { target: target.to_string(), nlink: 1 }, directory);
        self.insert_entry(directory, name, id);
        Ok(self.attr(id))
    }

    /// `Client::hard_link` over `Ns::link`: the source is found by `lstat` (a final symlink is
    /// linked, not followed); answers the file's attributes with its new nlink.
    fn link(&mut self, from: &str, to: &str) -> Result<Value, Errno> {
        let source = self.resolve(from, false)?;
        self.link_from(source, vec![ROOT], to)
    }

    /// `link` of the node `source` to `to`, from where `walk` stands.
    fn link_from(&mut self, source: NodeId, mut walk: Walk, to: &str) -> Result<Value, Errno> {
        let name = self.walk_parent(&mut walk, to)?;
        validate(&name)?;
        if self.is_directory(source) {
            return Err(Errno::EPERM);
        }
        let directory = top(&walk);
        if self.lookup(directory, &name).is_some() {
            return Err(Errno::EEXIST);
        }
        match self.changing(source) {
            Node::File { nlink, .. } | Node::Symlink { nlink, .. } => *nlink += 1,
            Node::Directory { .. } => unreachable!("directories are refused above"),
        }
        self.insert_entry(directory, name, source);
        Ok(self.attr(source))
    }

    /// `Client::rename_with` over `Ns::rename` (Replace or NoReplace) and `move_entry`.
    fn rename(&mut self, from: &str, to: &str, noreplace: bool) -> Result<Value, Errno> {
        if names_directory(from) || names_directory(to) {
            // A trailing slash on either side says the source is a directory.
            let source = self.walk(&mut vec![ROOT], components(from), false)?;
            if !self.is_directory(source) {
                return Err(Errno::ENOTDIR);
            }
        }
        self.rename_from(vec![ROOT], from, vec![ROOT], to, noreplace)
    }

    /// `rename` of `from` (from where `source_walk` stands) to `to` (from `target_walk`).
    fn rename_from(
        &mut self,
        mut source_walk: Walk,
        from: &str,
        mut target_walk: Walk,
        to: &str,
        noreplace: bool,
    ) -> Result<Value, Errno> {
        let name = self.walk_parent(&mut source_walk, from)?;
        let new_name = self.walk_parent(&mut target_walk, to)?;
        validate(&name)?;
        validate(&new_name)?;
        let (parent, new_parent) = (top(&source_walk), top(&target_walk));
        let source = self.lookup(parent, &name).ok_or(Errno::ENOENT)?;
        let target = self.lookup(new_parent, &new_name);
        if parent == new_parent && name == new_name {
            return if noreplace { Err(Errno::EEXIST) } else { Ok(Value::Done) };
        }
        // A directory may not move into itself or below itself.
        if self.is_directory(source) && self.is_ancestor(source, new_parent) {
            return Err(Errno::EINVAL);
        }
        if let Some(target) = target {
            if noreplace {
                return Err(Errno::EEXIST);
            }
            if target == source {
                // Two links of one file: POSIX says do nothing.
                return Ok(Value::Done);
            }
            match (self.is_directory(source), self.is_directory(target)) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.listing(target).is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        self.remove_entry(parent, &name);
        if let Some(target) = target {
            self.drop_link(target);
        }
        self.insert_entry(new_parent, new_name, source);
        Ok(Value::Done)
    }

    /// `Client::read_dir` (follows symlinks): the names, sorted.
    fn read_dir(&mut self, path: &str) -> Result<Value, Errno> {
        let id = self.resolve(path, true)?;
        self.list(id)
    }

    fn list(&mut self, id: NodeId) -> Result<Value, Errno> {
        if !self.is_directory(id) {
            return Err(Errno::ENOTDIR);
        }
        Ok(Value::Names(self.listing(id).keys().cloned().collect()))
    }

    /// A call on what a path names (`on_node`), walked to whole: following a final symlink,
    /// except `read_link`'s (`Client::lstat`).
    fn path_call(&mut self, call: &Call, path: &str) -> Result<Value, Errno> {
        let follow = !matches!(call, Call::Readlink { .. });
        let id = self.resolve(path, follow)?;
        self.on_node(call, id)
    }

    /// The act of a call on what its path names, once walked to: the client's request by inode
    /// id (`setattr`, `readlink_ino`, the `*xattr_ino`).
    fn on_node(&mut self, call: &Call, id: NodeId) -> Result<Value, Errno> {
        match call {
            Call::Stat { .. } => Ok(self.attr(id)),
            Call::ReadDir { .. } => self.list(id),
            Call::Chmod { mode, .. } => self.setattr(id, SetAttr { perm: Some(*mode), ..SetAttr::default() }),
            Call::Chown { uid, gid, .. } => self.setattr(id, SetAttr { uid: *uid, gid: *gid, ..SetAttr::default() }),
            Call::Truncate { size, .. } => self.setattr(id, SetAttr { size: Some(*size), ..SetAttr::default() }),
            Call::SetTimes { atime, mtime, .. } => {
                self.setattr(id, SetAttr { atime: *atime, mtime: *mtime, ..SetAttr::default() })
            }
            Call::Readlink { .. } => self.readlink(id),
            Call::GetXattr { name, .. } => self.get_xattr(id, name),
            Call::SetXattr { name, value, mode, .. } => self.set_xattr(id, name, value, *mode),
            Call::ListXattr { .. } => self.list_xattr(id),
            Call::RemoveXattr { name, .. } => self.remove_xattr(id, name),
            other => panic!("{other:?} is not a call on a node"),
        }
    }

    /// `Ns::setattr` for the superuser (`access::check_setattr` refuses it nothing): answers
    /// the new attributes. A size change of a directory is EISDIR, of a symlink EINVAL (the
    /// client's path calls follow symlinks, so it never asks); a size that changes sets mtime.
    /// A chown of a non-directory clears set-user-id, and set-group-id where group execute is
    /// set too, whoever makes it (Linux's `ATTR_KILL_SUID` / `ATTR_KILL_SGID`).
    fn setattr(&mut self, id: NodeId, set: SetAttr) -> Result<Value, Errno> {
        let origin = self.origin(id);
        let mut perm = set.perm.map(|perm| perm & 0o7777);
        if (set.uid.is_some() || set.gid.is_some()) && !self.is_directory(id) {
            self.record(false, || Key::Mode(origin));
            let before = self.meta(id).perm;
            let mut bits = perm.unwrap_or(before) & !S_ISUID;
            if bits & (S_ISGID | S_IXGRP) == S_ISGID | S_IXGRP {
                bits &= !S_ISGID;
            }
            if perm.is_some() || bits != before {
                perm = Some(bits);
            }
        }
        if let Some(size) = set.size {
            match self.node(id) {
                Node::Directory { .. } => return Err(Errno::EISDIR),
                Node::Symlink { .. } => return Err(Errno::EINVAL),
                Node::File { .. } => {}
            }
            self.record(false, || Key::Node(origin));
            if let Node::File { data, .. } = self.node(id)
                && data.len() as u64 != size
            {
                if let Node::File { data, .. } = self.changing(id) {
                    data.resize(size as usize, 0);
                }
                self.stamp(id);
            }
        }
        if perm.is_some() || set.uid.is_some() || set.gid.is_some() {
            self.record(true, || Key::Mode(origin));
            let meta = self.meta_mut(id);
            meta.perm = perm.unwrap_or(meta.perm);
            meta.uid = set.uid.unwrap_or(meta.uid);
            meta.gid = set.gid.unwrap_or(meta.gid);
        }
        if set.atime.is_some() || set.mtime.is_some() {
            self.record(true, || Key::Times(origin));
            let meta = self.meta_mut(id);
            meta.atime = set.atime.unwrap_or(meta.atime);
            meta.mtime = set.mtime.unwrap_or(meta.mtime);
        }
        Ok(self.attr(id))
    }

    /// `Ns::readlink`: a symlink's target; anything else is EINVAL.
    fn readlink(&mut self, id: NodeId) -> Result<Value, Errno> {
        self.symlink_target(id).map(|target| Value::Data(target.into_bytes())).ok_or(Errno::EINVAL)
    }

    /// The value of a node's xattr, recording the read.
    fn xattr(&mut self, id: NodeId, name: &str) -> Option<&Vec<u8>> {
        let origin = self.origin(id);
        self.record(false, || Key::Xattr(origin, name.to_string()));
        self.meta(id).xattrs.get(name)
    }

    /// `Ns::getxattr` (`access::check_xattr_read`: a symlink has no `user.*` xattrs).
    fn get_xattr(&mut self, id: NodeId, name: &str) -> Result<Value, Errno> {
        if user_xattr(name) && matches!(self.node(id), Node::Symlink { .. }) {
            return Err(Errno::ENODATA);
        }
        self.xattr(id, name).map(|value| Value::Data(value.clone())).ok_or(Errno::ENODATA)
    }

    /// `Ns::setxattr` (`access::check_xattr_write`: a symlink takes no `user.*` xattrs; the
    /// superuser passes the rest): creating an existing one is EEXIST, replacing a missing one
    /// ENODATA.
    fn set_xattr(&mut self, id: NodeId, name: &str, value: &[u8], mode: XattrMode) -> Result<Value, Errno> {
        if user_xattr(name) && matches!(self.node(id), Node::Symlink { .. }) {
            return Err(Errno::EPERM);
        }
        let present = self.xattr(id, name).is_some();
        match (mode, present) {
            (XattrMode::Create, true) => return Err(Errno::EEXIST),
            (XattrMode::Replace, false) => return Err(Errno::ENODATA),
            _ => {}
        }
        let origin = self.origin(id);
        self.record(true, || Key::Xattr(origin, name.to_string()));
        self.meta_mut(id).xattrs.insert(name.to_string(), value.to_vec());
        Ok(Value::Done)
    }

    /// `Ns::listxattr`: the names, sorted (the superuser sees every namespace).
    fn list_xattr(&mut self, id: NodeId) -> Result<Value, Errno> {
        let origin = self.origin(id);
        self.record(false, || Key::Xattrs(origin));
        Ok(Value::Names(self.meta(id).xattrs.keys().cloned().collect()))
    }

    /// `Ns::removexattr`: a missing one is ENODATA.
    fn remove_xattr(&mut self, id: NodeId, name: &str) -> Result<Value, Errno> {
        if user_xattr(name) && matches!(self.node(id), Node::Symlink { .. }) {
            return Err(Errno::EPERM);
        }
        if self.xattr(id, name).is_none() {
            return Err(Errno::ENODATA);
        }
        let origin = self.origin(id);
        self.record(true, || Key::Xattr(origin, name.to_string()));
        self.meta_mut(id).xattrs.remove(name);
        Ok(Value::Done)
    }

    fn write_tree(&self, f: &mut fmt::Formatter<'_>, directory: NodeId, depth: usize) -> fmt::Result {
        for (name, &id) in self.entries(directory) {
            let indent = "  ".repeat(depth + 1);
            let meta = describe_meta(self.node(id).kind(), self.meta(id));
            match self.node(id) {
                Node::Directory { .. } => {
                    writeln!(f, "{indent}{name}/{meta}")?;
                    self.write_tree(f, id, depth + 1)?;
                }
                node => writeln!(f, "{indent}{name} {}{meta}", describe(id, node))?,
            }
        }
        Ok(())
    }
}

/// Is `name` in the `user.` namespace (which a symlink has none of, `access.rs`)?
fn user_xattr(name: &str) -> bool {
    name.starts_with("user.")
}

/// A non-directory for `Display`: its node id (hard links share it), nlink and contents.
fn describe(id: NodeId, node: &Node) -> String {
    match node {
        Node::File { data, nlink } => {
            const SHOWN: usize = 40;
            let text = String::from_utf8_lossy(&data[..data.len().min(SHOWN)]);
            let more = if data.len() > SHOWN { "..." } else { "" };
            format!("(file #{id}, nlink {nlink}, {} bytes {text:?}{more})", data.len())
        }
        Node::Symlink { target, nlink } => format!("-> {target:?} (symlink #{id}, nlink {nlink})"),
        Node::Directory { entries } => format!("(directory #{id}, {} entries)", entries.len()),
    }
}

/// What of `meta` differs from a new node's (of `kind`, made by root in a plain directory), for
/// `Display`: ` [mode 4755, owner 1:7, mtime 1000001111.000000007, user.a="x"]`, or nothing.
fn describe_meta(kind: Kind, meta: &Meta) -> String {
    let perm = match kind {
        Kind::File => FILE_PERM,
        Kind::Directory => DIRECTORY_PERM,
        Kind::Symlink => SYMLINK_PERM,
    };
    let mut parts = Vec::new();
    if meta.perm != perm {
        parts.push(format!("mode {:04o}", meta.perm));
    }
    if (meta.uid, meta.gid) != (0, 0) {
        parts.push(format!("owner {}:{}", meta.uid, meta.gid));
    }
    for (what, time) in [("atime", meta.atime), ("mtime", meta.mtime)] {
        if time != Time::Clock {
            parts.push(format!("{what} {time}"));
        }
    }
    for (name, value) in &meta.xattrs {
        parts.push(format!("{name}=\"{}\"", value.escape_ascii()));
    }
    if parts.is_empty() { String::new() } else { format!(" [{}]", parts.join(", ")) }
}

/// The tree, one name a line, then the handles.
impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "/{}", describe_meta(Kind::Directory, self.meta(ROOT)))?;
        self.write_tree(f, ROOT, 0)?;
        for (handle, open) in &self.handles {
            let access = if open.writable { "read-write" } else { "read-only" };
            let node = self.node(open.node);
            let meta = describe_meta(node.kind(), self.meta(open.node));
            writeln!(f, "handle {handle} ({access}): {:?} {}{meta}", node.kind(), describe(open.node, node))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &str, write: bool, create: bool, exclusive: bool, truncate: bool, handle: HandleId) -> Call {
        Call::Open { path: path.into(), write, create, exclusive, truncate, handle }
    }
    fn create(path: &str, handle: HandleId) -> Call {
        open(path, true, true, false, false, handle)
    }
    fn mkdir(path: &str) -> Call {
        Call::Mkdir { path: path.into() }
    }
    fn stat(path: &str) -> Call {
        Call::Stat { path: path.into() }
    }
    fn unlink(path: &str) -> Call {
        Call::Unlink { path: path.into() }
    }
    fn rmdir(path: &str) -> Call {
        Call::Rmdir { path: path.into() }
    }
    fn rename(from: &str, to: &str) -> Call {
        Call::Rename { from: from.into(), to: to.into(), noreplace: false }
    }
    fn rename_noreplace(from: &str, to: &str) -> Call {
        Call::Rename { from: from.into(), to: to.into(), noreplace: true }
    }
    fn link(from: &str, to: &str) -> Call {
        Call::Link { from: from.into(), to: to.into() }
    }
    fn symlink(target: &str, path: &str) -> Call {
        Call::Symlink { target: target.into(), path: path.into() }
    }
    fn write(handle: HandleId, data: &[u8]) -> Call {
        Call::Write { handle, data: data.to_vec() }
    }
    fn read(handle: HandleId) -> Call {
        Call::Read { handle }
    }
    fn close(handle: HandleId) -> Call {
        Call::Close { handle }
    }
    fn read_dir(path: &str) -> Call {
        Call::ReadDir { path: path.into() }
    }

    fn err(errno: Errno) -> Outcome {
        Outcome::Err(errno.0)
    }
    fn done() -> Outcome {
        Outcome::Ok(Value::Done)
    }
    fn attr(kind: Kind, size: u64, nlink: u32) -> Outcome {
        Outcome::Ok(Value::plain(kind, size, nlink))
    }
    fn opened(created: bool, size: u64) -> Outcome {
        Outcome::Ok(Value::Opened { created, size })
    }
    fn data(bytes: &[u8]) -> Outcome {
        Outcome::Ok(Value::Data(bytes.to_vec()))
    }
    fn names(list: &[&str]) -> Outcome {
        Outcome::Ok(Value::Names(list.iter().map(|name| name.to_string()).collect()))
    }
    fn chmod(path: &str, mode: u32) -> Call {
        Call::Chmod { path: path.into(), mode }
    }
    fn chown(path: &str, uid: Option<u32>, gid: Option<u32>) -> Call {
        Call::Chown { path: path.into(), uid, gid }
    }
    fn truncate(path: &str, size: u64) -> Call {
        Call::Truncate { path: path.into(), size }
    }
    fn set_times(path: &str, atime: Option<Time>, mtime: Option<Time>) -> Call {
        Call::SetTimes { path: path.into(), atime, mtime }
    }
    fn readlink(path: &str) -> Call {
        Call::Readlink { path: path.into() }
    }
    fn set_xattr(path: &str, name: &str, value: &str, mode: XattrMode) -> Call {
        Call::SetXattr { path: path.into(), name: name.into(), value: value.as_bytes().to_vec(), mode }
    }
    fn get_xattr(path: &str, name: &str) -> Call {
        Call::GetXattr { path: path.into(), name: name.into() }
    }
    fn list_xattr(path: &str) -> Call {
        Call::ListXattr { path: path.into() }
    }
    fn remove_xattr(path: &str, name: &str) -> Call {
        Call::RemoveXattr { path: path.into(), name: name.into() }
    }
    const T1: Time = Time::At { secs: 1_000_000_000, nanos: 0 };
    const T2: Time = Time::At { secs: -86_400, nanos: 5 };
    /// Full attributes: `mode` is `st_mode`, `owner` (uid, gid), `times` (atime, mtime).
    fn full(kind: Kind, size: u64, nlink: u32, mode: u32, owner: (u32, u32), times: (Time, Time)) -> Outcome {
        let (uid, gid) = owner;
        let (atime, mtime) = times;
        Outcome::Ok(Value::Attr { kind, size, nlink, mode, uid, gid, atime, mtime, ctime: Time::Clock })
    }
    const CLOCK: (Time, Time) = (Time::Clock, Time::Clock);

    /// Applies each call and checks its answer.
    fn run(model: &mut Model, script: &[(Call, Outcome)]) {
        for (step, (call, expected)) in script.iter().enumerate() {
            let answered = model.apply(call);
            assert_eq!(&answered, expected, "step {step}: {call:?}\nmodel:\n{model}");
        }
    }

    fn with(script: &[(Call, Outcome)]) -> Model {
        let mut model = Model::new();
        run(&mut model, script);
        model
    }

    #[test]
    fn mkdir_answers_and_refusals() {
        with(&[
            (mkdir("/d"), attr(Kind::Directory, 0, 2)),
            (stat("/"), attr(Kind::Directory, 0, 3)),
            (mkdir("/d/e"), attr(Kind::Directory, 0, 2)),
            (stat("/d"), attr(Kind::Directory, 0, 3)),
            (mkdir("/d"), err(Errno::EEXIST)),
            (mkdir("/"), err(Errno::EEXIST)),
            (mkdir("/x/y"), err(Errno::ENOENT)),
            (create("/f", 1), opened(true, 0)),
            (mkdir("/f/y"), err(Errno::ENOTDIR)),
            (mkdir("/f"), err(Errno::EEXIST)),
            (symlink("/nowhere", "/s"), attr(Kind::Symlink, 8, 1)),
            // A dangling symlink is a name all the same.
            (mkdir("/s"), err(Errno::EEXIST)),
            (mkdir("/d/.."), err(Errno::EINVAL)),
            (mkdir("/d/e/"), err(Errno::EEXIST)),
        ]);
    }

    #[test]
    fn open_refusals_and_creation() {
        with(&[
            (open("/a", false, false, false, false, 1), err(Errno::ENOENT)),
            (create("/x/a", 1), err(Errno::ENOENT)),
            (mkdir("/d"), attr(Kind::Directory, 0, 2)),
            (open("/d", true, false, false, false, 1), err(Errno::EISDIR)),
            (create("/d", 1), err(Errno::EISDIR)),
            (open("/d", true, true, true, false, 1), err(Errno::EEXIST)),
            (create("/d/", 1), err(Errno::EISDIR)),
            (create("/new/", 1), err(Errno::EISDIR)),
            (open("/d", false, false, false, false, 1), opened(false, 0)),
            (read(1), err(Errno::EISDIR)),
            (close(1), done()),
            (create("/d/f", 2), opened(true, 0)),
            (create("/d/f", 3), opened(false, 0)),
            (open("/d/f", true, true, true, false, 4), err(Errno::EEXIST)),
            (open("/d/f/", false, false, false, false, 4), err(Errno::ENOTDIR)),
            (open("/", false, false, false, false, 4), opened(false, 0)),
            (create("/", 5), err(Errno::EISDIR)),
        ]);
    }

    #[test]
    fn open_follows_symlinks_but_exclusive_create_does_not() {
        with(&[
            (symlink("/target", "/s"), attr(Kind::Symlink, 7, 1)),
            (open("/s", false, false, false, false, 1), err(Errno::ENOENT)),
            // O_CREAT|O_EXCL on a symlink, even a dangling one: EEXIST (namespace.rs `open`).
            (open("/s", true, true, true, false, 1), err(Errno::EEXIST)),
            // O_CREAT alone creates the file the symlink points at.
            (create("/s", 1), opened(true, 0)),
            (stat("/target"), attr(Kind::File, 0, 1)),
            (write(1, b"hello"), done()),
            (stat("/s"), attr(Kind::File, 5, 1)),
            (mkdir("/d"), attr(Kind::Directory, 0, 2)),
            // A relative target is resolved in the symlink's directory.
            (symlink("f", "/d/rel"), attr(Kind::Symlink, 1, 1)),
            (create("/d/rel", 2), opened(true, 0)),
            (stat("/d/f"), attr(Kind::File, 0, 1)),
            (symlink("/d", "/sd"), attr(Kind::Symlink, 2, 1)),
            (stat("/sd/f"), attr(Kind::File, 0, 1)),
            (open("/sd/f", false, false, false, false, 3), opened(false, 0)),
            (open("/sd", false, false, false, false, 4), opened(false, 0)),
            (read_dir("/sd"), names(&["f", "rel"])),
        ]);
    }

    #[test]
    fn symlink_loops_are_eloop() {
        with(&[
            (symlink("/b", "/a"), attr(Kind::Symlink, 2, 1)),
            (symlink("/a", "/b"), attr(Kind::Symlink, 2, 1)),
            (stat("/a"), err(Errno::ELOOP)),
            (stat("/a/x"), err(Errno::ELOOP)),
            (open("/a", false, false, false, false, 1), err(Errno::ELOOP)),
            (create("/a", 1), err(Errno::ELOOP)),
            (mkdir("/a/x"), err(Errno::ELOOP)),
            // The last name of unlink, rename and link is not followed.
            (link("/a", "/c"), attr(Kind::Symlink, 2, 2)),
            (rename("/c", "/d"), done()),
            (unlink("/d"), done()),
            (stat("/b"), err(Errno::ELOOP)),
        ]);
    }

    #[test]
    fn truncation_and_writes() {
        with(&[
            (create("/f", 1), opened(true, 0)),
            (write(1, b"abcdef"), done()),
            (write(1, b"XY"), done()),
            (read(1), data(b"XYcdef")),
            (open("/f", false, false, false, false, 2), opened(false, 6)),
            (write(2, b"no"), err(Errno::EBADF)),
            // Truncation needs write access; the size answered is after it.
            (open("/f", false, false, false, true, 3), err(Errno::EINVAL)),
            (open("/f", true, false, false, true, 3), opened(false, 0)),
            (read(2), data(b"")),
            (stat("/f"), attr(Kind::File, 0, 1)),
            (close(3), done()),
            (close(3), err(Errno::EBADF)),
        ]);
        let mut model = Model::new();
        let long = vec![7u8; READ_LEN + 10];
        run(&mut model, &[(create("/f", 1), opened(true, 0)), (write(1, &long), done())]);
        assert_eq!(model.apply(&read(1)), data(&long[..READ_LEN]));
        assert_eq!(model.apply(&stat("/f")), attr(Kind::File, long.len() as u64, 1));
    }

    #[test]
    fn unlink_and_rmdir_refusals() {
        with(&[
            (mkdir("/d"), attr(Kind::Directory, 0, 2)),
            (create("/d/f", 1), opened(true, 0)),
            (unlink("/d"), err(Errno::EISDIR)),
            (unlink("/d/"), err(Errno::EISDIR)),
            (unlink("/d/f/"), err(Errno::ENOTDIR)),
            (unlink("/x/"), err(Errno::ENOENT)),
            (unlink("/"), err(Errno::EBUSY)),
            (unlink("/x"), err(Errno::ENOENT)),
            (unlink("/d/f/g"), err(Errno::ENOTDIR)),
            (rmdir("/d"), err(Errno::ENOTEMPTY)),
            (rmdir("/d/f"), err(Errno::ENOTDIR)),
            (rmdir("/"), err(Errno::EBUSY)),
            (rmdir("/d/."), err(Errno::EINVAL)),
            (rmdir("/x"), err(Errno::ENOENT)),
            (symlink("/d", "/s"), attr(Kind::Symlink, 2, 1)),
            (rmdir("/s"), err(Errno::ENOTDIR)),
            (unlink("/s"), done()),
            (stat("/d"), attr(Kind::Directory, 0, 2)),
            (unlink("/d/f"), done()),
            (rmdir("/d/"), done()),
            (stat("/d"), err(Errno::ENOENT)),
        ]);
    }

    #[test]
    fn rename_refusals() {
        with(&[
            (mkdir("/a"), attr(Kind::Directory, 0, 2)),
            (mkdir("/a/b"), attr(Kind::Directory, 0, 2)),
            (mkdir("/c"), attr(Kind::Directory, 0, 2)),
            (create("/c/f", 1), opened(true, 0)),
            (create("/g", 2), opened(true, 0)),
            (rename("/x", "/y"), err(Errno::ENOENT)),
            (rename("/a", "/x/y"), err(Errno::ENOENT)),
            // Into itself or below itself.
            (rename("/a", "/a/b/x"), err(Errno::EINVAL)),
            (rename("/a", "/a/x"), err(Errno::EINVAL)),
            (rename_noreplace("/a", "/a/b"), err(Errno::EINVAL)),
            // A directory over a non-empty directory, a file, and the other way round.
            (rename("/a", "/c"), err(Errno::ENOTEMPTY)),
            (rename("/a", "/g"), err(Errno::ENOTDIR)),
            (rename("/g", "/a"), err(Errno::EISDIR)),
            (rename_noreplace("/g", "/c/f"), err(Errno::EEXIST)),
            (rename("/", "/x"), err(Errno::EBUSY)),
            (rename("/g", "/"), err(Errno::EBUSY)),
            (rename("/g/", "/h"), err(Errno::ENOTDIR)),
            // The same name: nothing to do, unless NoReplace.
            (rename("/g", "/g"), done()),
            (rename_noreplace("/g", "/g"), err(Errno::EEXIST)),
            (rename_noreplace("/x", "/x"), err(Errno::ENOENT)),
            // A directory over an empty one replaces it.
            (rename("/c", "/a/b"), done()),
            (stat("/a"), attr(Kind::Directory, 0, 3)),
            (stat("/"), attr(Kind::Directory, 0, 3)),
            (read_dir("/a/b"), names(&["f"])),
            (read_dir("/"), names(&["a", "g"])),
        ]);
    }

    #[test]
    fn rename_of_two_links_of_one_file_does_nothing() {
        with(&[
            (create("/f", 1), opened(true, 0)),
            (link("/f", "/g"), attr(Kind::File, 0, 2)),
            (rename("/f", "/g"), done()),
            (read_dir("/"), names(&["f", "g"])),
            (stat("/f"), attr(Kind::File, 0, 2)),
            (rename_noreplace("/f", "/g"), err(Errno::EEXIST)),
        ]);
    }

    #[test]
    fn link_refusals() {
        with(&[
            (mkdir("/d"), attr(Kind::Directory, 0, 2)),
            (create("/f", 1), opened(true, 0)),
            (link("/d", "/e"), err(Errno::EPERM)),
            (link("/d", "/f"), err(Errno::EPERM)),
            (link("/f", "/d"), err(Errno::EEXIST)),
            (link("/x", "/y"), err(Errno::ENOENT)),
            (link("/f", "/x/y"), err(Errno::ENOENT)),
            (link("/f", "/"), err(Errno::EBUSY)),
            (link("/f", "/d/g"), attr(Kind::File, 0, 2)),
            (link("/d/g", "/h"), attr(Kind::File, 0, 3)),
            (symlink("/f", "/s"), attr(Kind::Symlink, 2, 1)),
            (link("/s", "/t"), attr(Kind::Symlink, 2, 2)),
            (stat("/t"), attr(Kind::File, 0, 3)),
            (unlink("/f"), done()),
            (stat("/h"), attr(Kind::File, 0, 2)),
            (stat("/t"), err(Errno::ENOENT)),
        ]);
    }

    #[test]
    fn symlink_refusals() {
        with(&[
            (symlink("", "/s"), err(Errno::ENOENT)),
            (symlink("a", "/x/s"), err(Errno::ENOENT)),
            (symlink("a", "/s"), attr(Kind::Symlink, 1, 1)),
            (symlink("b", "/s"), err(Errno::EEXIST)),
            (symlink("b", "/"), err(Errno::EBUSY)),
        ]);
    }

    #[test]
    fn orphans_live_while_open() {
        let mut model = with(&[
            (create("/f", 1), opened(true, 0)),
            (write(1, b"data"), done()),
            (unlink("/f"), done()),
            (stat("/f"), err(Errno::ENOENT)),
            (read(1), data(b"data")),
            (write(1, b"more data"), done()),
            (read(1), data(b"more data")),
            (create("/g", 2), opened(true, 0)),
            (write(2, b"g"), done()),
            (create("/h", 3), opened(true, 0)),
            (close(3), done()),
            // Replaced by a rename: the open file lives on.
            (rename("/h", "/g"), done()),
            (read(2), data(b"g")),
            (stat("/g"), attr(Kind::File, 0, 1)),
        ]);
        assert_eq!(model.nodes.len(), 4, "root, /g, and two orphans:\n{model}");
        run(&mut model, &[(close(1), done()), (close(2), done())]);
        assert_eq!(model.nodes.len(), 2, "the orphans are gone:\n{model}");
        assert_eq!(model, with(&[(create("/g", 9), opened(true, 0)), (close(9), done())]));
    }

    #[test]
    fn equal_structures_compare_equal() {
        let one = with(&[
            (mkdir("/a"), attr(Kind::Directory, 0, 2)),
            (mkdir("/b"), attr(Kind::Directory, 0, 2)),
            (create("/b/f", 1), opened(true, 0)),
            (link("/b/f", "/a/g"), attr(Kind::File, 0, 2)),
        ]);
        let two = with(&[
            (mkdir("/b"), attr(Kind::Directory, 0, 2)),
            (create("/b/f", 1), opened(true, 0)),
            (mkdir("/a"), attr(Kind::Directory, 0, 2)),
            (link("/b/f", "/a/g"), attr(Kind::File, 0, 2)),
        ]);
        assert_eq!(one, two);
        let three = with(&[
            (mkdir("/b"), attr(Kind::Directory, 0, 2)),
            (create("/b/f", 1), opened(true, 0)),
            (mkdir("/a"), attr(Kind::Directory, 0, 2)),
            (create("/a/g", 2), opened(true, 0)),
            (close(2), done()),
        ]);
        assert_ne!(one, three, "two files are not two links of one");
    }

    #[test]
    fn failed_calls_change_nothing() {
        let mut model = with(&[
            (mkdir("/a"), attr(Kind::Directory, 0, 2)),
            (create("/a/f", 1), opened(true, 0)),
            (write(1, b"x"), done()),
        ]);
        let before = model.clone();
        for call in [
            rename("/a", "/a/f/x"),
            rename("/a", "/a/x"),
            rmdir("/a"),
            unlink("/a"),
            link("/a", "/b"),
            mkdir("/a/f"),
            open("/a/f", true, true, true, true, 2),
            open("/a", true, false, false, true, 2),
            truncate("/a", 0),
            truncate("/a/f/g", 0),
            chmod("/b", 0o600),
            readlink("/a/f"),
            set_xattr("/a/f", "user.a", "1", XattrMode::Replace),
            remove_xattr("/a", "user.a"),
            get_xattr("/a", "user.a"),
        ] {
            assert!(matches!(model.apply(&call), Outcome::Err(_)), "{call:?}");
            assert_eq!(model, before, "{call:?}");
        }
    }

    #[test]
    fn chmod_and_chown_as_root() {
        with(&[
            (create("/f", 1), opened(true, 0)),
            (chmod("/f", 0o600), full(Kind::File, 0, 1, 0o100600, (0, 0), CLOCK)),
            (chown("/f", Some(1), Some(7)), full(Kind::File, 0, 1, 0o100600, (1, 7), CLOCK)),
            (chown("/f", None, Some(0)), full(Kind::File, 0, 1, 0o100600, (1, 0), CLOCK)),
            // A chown of a non-directory clears set-user-id, and set-group-id with group execute.
            (chmod("/f", 0o4755), full(Kind::File, 0, 1, 0o104755, (1, 0), CLOCK)),
            (chown("/f", Some(1), None), full(Kind::File, 0, 1, 0o100755, (1, 0), CLOCK)),
            (chmod("/f", 0o2755), full(Kind::File, 0, 1, 0o102755, (1, 0), CLOCK)),
            (chown("/f", None, Some(0)), full(Kind::File, 0, 1, 0o100755, (1, 0), CLOCK)),
            (chmod("/f", 0o6744), full(Kind::File, 0, 1, 0o106744, (1, 0), CLOCK)),
            (chown("/f", Some(0), None), full(Kind::File, 0, 1, 0o102744, (0, 0), CLOCK)),
            // One with neither id clears nothing, as the server does (Linux clears set-user-id).
            (chmod("/f", 0o4755), full(Kind::File, 0, 1, 0o104755, (0, 0), CLOCK)),
            (chown("/f", None, None), full(Kind::File, 0, 1, 0o104755, (0, 0), CLOCK)),
            // A directory keeps its bits; only permission bits are taken from a chmod.
            (mkdir("/d"), attr(Kind::Directory, 0, 2)),
            (chmod("/d", 0o177_777), full(Kind::Directory, 0, 2, 0o047777, (0, 0), CLOCK)),
            (chown("/d", Some(7), Some(7)), full(Kind::Directory, 0, 2, 0o047777, (7, 7), CLOCK)),
            // Through a symlink, to what it points at; a dangling one is ENOENT, a loop ELOOP.
            (symlink("/f", "/s"), attr(Kind::Symlink, 2, 1)),
            (chmod("/s", 0o640), full(Kind::File, 0, 1, 0o100640, (0, 0), CLOCK)),
            (stat("/f"), full(Kind::File, 0, 1, 0o100640, (0, 0), CLOCK)),
            (symlink("/nowhere", "/t"), attr(Kind::Symlink, 8, 1)),
            (chmod("/t", 0o640), err(Errno::ENOENT)),
            (symlink("/l", "/l"), attr(Kind::Symlink, 2, 1)),
            (chown("/l", Some(1), None), err(Errno::ELOOP)),
            (chmod("/f/", 0o640), err(Errno::ENOTDIR)),
            (chmod("/x/f", 0o640), err(Errno::ENOENT)),
        ]);
    }

    #[test]
    fn a_set_group_id_directory_hands_down_its_group() {
        with(&[
            (mkdir("/d"), attr(Kind::Directory, 0, 2)),
            (chown("/d", None, Some(7)), full(Kind::Directory, 0, 2, 0o040755, (0, 7), CLOCK)),
            (create("/d/plain", 1), opened(true, 0)),
            (stat("/d/plain"), attr(Kind::File, 0, 1)),
            (chmod("/d", 0o2775), full(Kind::Directory, 0, 2, 0o042775, (0, 7), CLOCK)),
            (create("/d/f", 2), opened(true, 0)),
            (stat("/d/f"), full(Kind::File, 0, 1, 0o100644, (0, 7), CLOCK)),
            (mkdir("/d/e"), full(Kind::Directory, 0, 2, 0o042755, (0, 7), CLOCK)),
            (symlink("x", "/d/s"), full(Kind::Symlink, 1, 1, 0o120777, (0, 7), CLOCK)),
            (mkdir("/d/e/f"), full(Kind::Directory, 0, 2, 0o042755, (0, 7), CLOCK)),
            (mkdir("/x"), attr(Kind::Directory, 0, 2)),
        ]);
    }

    #[test]
    fn truncate_and_what_changes_mtime() {
        with(&[
            (create("/f", 1), opened(true, 0)),
            (write(1, b"abc"), done()),
            (truncate("/f", 5), attr(Kind::File, 5, 1)),
            (read(1), data(b"abc\0\0")),
            (truncate("/f", 2), attr(Kind::File, 2, 1)),
            (read(1), data(b"ab")),
            // Times set exactly read back exactly, until the contents change.
            (set_times("/f", Some(T1), Some(T2)), full(Kind::File, 2, 1, 0o100644, (0, 0), (T1, T2))),
            (stat("/f"), full(Kind::File, 2, 1, 0o100644, (0, 0), (T1, T2))),
            (chmod("/f", 0o600), full(Kind::File, 2, 1, 0o100600, (0, 0), (T1, T2))),
            (set_xattr("/f", "user.a", "1", XattrMode::Either), done()),
            // A truncation to the size the file has changes nothing.
            (truncate("/f", 2), full(Kind::File, 2, 1, 0o100600, (0, 0), (T1, T2))),
            (truncate("/f", 0), full(Kind::File, 0, 1, 0o100600, (0, 0), (T1, Time::Clock))),
            (set_times("/f", None, Some(T1)), full(Kind::File, 0, 1, 0o100600, (0, 0), (T1, T1))),
            // An O_TRUNC of an empty file keeps mtime (the server's rule); of data, sets it.
            (open("/f", true, false, false, true, 2), opened(false, 0)),
            (stat("/f"), full(Kind::File, 0, 1, 0o100600, (0, 0), (T1, T1))),
            (write(1, b"x"), done()),
            (stat("/f"), full(Kind::File, 1, 1, 0o100600, (0, 0), (T1, Time::Clock))),
            (set_times("/f", Some(T2), Some(T2)), full(Kind::File, 1, 1, 0o100600, (0, 0), (T2, T2))),
            (open("/f", true, false, false, true, 3), opened(false, 0)),
            (stat("/f"), full(Kind::File, 0, 1, 0o100600, (0, 0), (T2, Time::Clock))),
            // "Now" is the server's clock; omitted times stay.
            (set_times("/f", Some(Time::Clock), None), full(Kind::File, 0, 1, 0o100600, (0, 0), CLOCK)),
            // A directory's mtime moves with its entries, not with a change below them.
            (mkdir("/d"), attr(Kind::Directory, 0, 2)),
            (create("/d/g", 4), opened(true, 0)),
            (set_times("/d", Some(T1), Some(T1)), full(Kind::Directory, 0, 2, 0o040755, (0, 0), (T1, T1))),
            (write(4, b"data"), done()),
            (chmod("/d/g", 0o600), full(Kind::File, 4, 1, 0o100600, (0, 0), CLOCK)),
            (stat("/d"), full(Kind::Directory, 0, 2, 0o040755, (0, 0), (T1, T1))),
            (link("/d/g", "/h"), full(Kind::File, 4, 2, 0o100600, (0, 0), CLOCK)),
            (stat("/d"), full(Kind::Directory, 0, 2, 0o040755, (0, 0), (T1, T1))),
            (unlink("/d/g"), done()),
            (stat("/d"), full(Kind::Directory, 0, 2, 0o040755, (0, 0), (T1, Time::Clock))),
            // Refusals: a directory (EISDIR), nothing there.
            (truncate("/d", 0), err(Errno::EISDIR)),
            (truncate("/d/g", 0), err(Errno::ENOENT)),
            (truncate("/h/x", 0), err(Errno::ENOTDIR)),
        ]);
    }

    #[test]
    fn readlink_answers_targets_and_refusals() {
        with(&[
            (readlink("/nothing"), err(Errno::ENOENT)),
            (create("/f", 1), opened(true, 0)),
            (readlink("/f"), err(Errno::EINVAL)),
            (mkdir("/d"), attr(Kind::Directory, 0, 2)),
            (readlink("/d"), err(Errno::EINVAL)),
            (symlink("/f", "/s"), attr(Kind::Symlink, 2, 1)),
            (readlink("/s"), data(b"/f")),
            // The last name is not followed: a loop or a dangling target is read all the same.
            (symlink("/b", "/a"), attr(Kind::Symlink, 2, 1)),
            (symlink("/a", "/b"), attr(Kind::Symlink, 2, 1)),
            (readlink("/a"), data(b"/b")),
            (readlink("/a/x"), err(Errno::ELOOP)),
            // Symlinks on the way are followed.
            (symlink("/d", "/sd"), attr(Kind::Symlink, 2, 1)),
            (symlink("../f", "/d/up"), attr(Kind::Symlink, 4, 1)),
            (readlink("/sd/up"), data(b"../f")),
            // A trailing slash asks for a directory.
            (readlink("/s/"), err(Errno::ENOTDIR)),
            (readlink("/sd/"), err(Errno::EINVAL)),
        ]);
    }

    #[test]
    fn xattrs_by_mode() {
        with(&[
            (get_xattr("/f", "user.a"), err(Errno::ENOENT)),
            (list_xattr("/f"), err(Errno::ENOENT)),
            (create("/f", 1), opened(true, 0)),
            (list_xattr("/f"), names(&[])),
            (get_xattr("/f", "user.a"), err(Errno::ENODATA)),
            (set_xattr("/f", "user.a", "1", XattrMode::Replace), err(Errno::ENODATA)),
            (set_xattr("/f", "user.a", "1", XattrMode::Create), done()),
            (set_xattr("/f", "user.a", "2", XattrMode::Create), err(Errno::EEXIST)),
            (get_xattr("/f", "user.a"), data(b"1")),
            (set_xattr("/f", "user.a", "two", XattrMode::Replace), done()),
            (set_xattr("/f", "user.b", "", XattrMode::Either), done()),
            (get_xattr("/f", "user.a"), data(b"two")),
            (get_xattr("/f", "user.b"), data(b"")),
            (list_xattr("/f"), names(&["user.a", "user.b"])),
            (remove_xattr("/f", "user.a"), done()),
            (remove_xattr("/f", "user.a"), err(Errno::ENODATA)),
            (list_xattr("/f"), names(&["user.b"])),
            // They belong to the node: through a symlink, a hard link, a rename.
            (symlink("/f", "/s"), attr(Kind::Symlink, 2, 1)),
            (set_xattr("/s", "user.a", "s", XattrMode::Create), done()),
            (link("/f", "/g"), attr(Kind::File, 0, 2)),
            (rename("/g", "/h"), done()),
            (list_xattr("/h"), names(&["user.a", "user.b"])),
            (get_xattr("/h", "user.a"), data(b"s")),
            // Directories have them too; they do not change mtime.
            (mkdir("/d"), attr(Kind::Directory, 0, 2)),
            (set_times("/d", None, Some(T1)), full(Kind::Directory, 0, 2, 0o040755, (0, 0), (Time::Clock, T1))),
            (set_xattr("/d", "user.a", "d", XattrMode::Either), done()),
            (stat("/d"), full(Kind::Directory, 0, 2, 0o040755, (0, 0), (Time::Clock, T1))),
            (list_xattr("/d"), names(&["user.a"])),
            (symlink("/nowhere", "/t"), attr(Kind::Symlink, 8, 1)),
            (set_xattr("/t", "user.a", "1", XattrMode::Either), err(Errno::ENOENT)),
        ]);
    }

    /// Footprints of the new keys: changes of entries stamp their directory's mtime, which
    /// commutes with another such change but not with a read or a change of the times.
    #[test]
    fn stamps_commute_with_stamps_only() {
        let model = with(&[(mkdir("/d"), attr(Kind::Directory, 0, 2)), (create("/d/f", 1), opened(true, 0))]);
        let footprint = |call: &Call| model.clone().apply_traced(call).1;
        let (one, two) = (footprint(&mkdir("/d/a")), footprint(&mkdir("/d/b")));
        assert!(!one.conflicts(&two), "two names made in one directory");
        assert!(one.conflicts(&footprint(&set_times("/d", None, Some(T1)))));
        assert!(one.conflicts(&footprint(&stat("/d"))));
        assert!(one.conflicts(&footprint(&chown("/d", None, Some(7)))), "a new name's group is the directory's");
        let xattr = footprint(&set_xattr("/d/f", "user.a", "1", XattrMode::Either));
        assert!(!xattr.conflicts(&footprint(&set_xattr("/d/f", "user.b", "1", XattrMode::Either))));
        assert!(xattr.conflicts(&footprint(&list_xattr("/d/f"))));
        assert!(!xattr.conflicts(&footprint(&chmod("/d/f", 0o600))));
        assert!(footprint(&write(1, b"x")).conflicts(&footprint(&set_times("/d/f", Some(T1), None))));
    }

    #[test]
    fn display_shows_the_tree() {
        let model = with(&[
            (mkdir("/d"), attr(Kind::Directory, 0, 2)),
            (create("/d/f", 1), opened(true, 0)),
            (write(1, b"hi"), done()),
            (symlink("/d", "/s"), attr(Kind::Symlink, 2, 1)),
        ]);
        let mut model = model;
        run(&mut model, &[(set_xattr("/d", "user.a", "1", XattrMode::Either), done())]);
        let shown = model.to_string();
        assert!(shown.contains("d/ [user.a=\"1\"]\n    f (file #2, nlink 1, 2 bytes \"hi\")"), "{shown}");
        assert!(shown.contains("s -> \"/d\""), "{shown}");
        assert!(shown.contains("handle 1 (read-write)"), "{shown}");
    }
}
