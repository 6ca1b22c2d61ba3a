//! The kernel's lookup counts, mirrored (semantics.md: "a lookup count taken for the kernel is
//! released exactly once; counts never go below zero").
//!
//! Every entry the mount hands the kernel (lookup, create, mkdir, symlink, link, readdirplus)
//! adds one kernel reference to that inode; `forget` gives references back. An inode the kernel
//! references may also hold *server pins*: taken by `Op::PinName` when the mount answers a
//! lookup, they keep the inode alive on the server (an orphan once its names are gone), so an
//! open of it by id cannot meet ESTALE. The pins are given back when the kernel's last reference
//! goes.
//!
//! Plain data: no locks, no I/O; `Mount` keeps it under a std mutex held for one call at a time.

use std::collections::HashMap;

/// What the mount knows of one inode the kernel references.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Node {
    /// References the kernel holds (its `nlookup`).
    kernel: u64,
    /// Pins this session holds on the server for it.
    pins: u64,
}

/// The mirror. The root is never in it: the kernel never forgets it, and it is never destroyed.
#[derive(Debug, Default)]
pub struct KernelRefs {
    nodes: HashMap<u64, Node>,
}

/// Pins to give back to the server after a forget (`(ino, count)`), with no lock held.
pub type Unpin = (u64, u64);

impl KernelRefs {
    /// One more kernel reference to `ino`, if it is pinned on the server already: then the
    /// lookup being answered needs no server call. False (and nothing counted) otherwise.
    pub fn add_if_pinned(&mut self, ino: u64) -> bool {
        match self.nodes.get_mut(&ino) {
            Some(node) if node.pins > 0 => {
                assert!(node.kernel > 0, "a pinned inode is referenced by the kernel");
                node.kernel += 1;
                true
            }
            _ => false,
        }
    }

    /// One more kernel reference to `ino`, with one more server pin just taken for it.
    pub fn add_pinned(&mut self, ino: u64) {
        let node = self.nodes.entry(ino).or_default();
        node.kernel += 1;
        node.pins += 1;
    }

    /// One more kernel reference to `ino`, without a pin (an entry the mount just made: create,
    /// mkdir, ..., or one listed by readdirplus). A later lookup of it pins it.
    pub fn add(&mut self, ino: u64) {
        self.nodes.entry(ino).or_default().kernel += 1;
    }

    /// The kernel forgets `count` references to `ino`. When none is left, the pins held for it
    /// are returned, to be given back to the server. A forget of more than the kernel holds is
    /// a kernel (or mirror) bug: it is logged, and the node is dropped rather than going below
    /// zero.
    pub fn forget(&mut self, ino: u64, count: u64) -> Option<Unpin> {
        let Some(node) = self.nodes.get_mut(&ino) else {
            tracing::error!(ino, count, "forget of an inode the kernel holds no reference to");
            return None;
        };
        if count > node.kernel {
            tracing::error!(ino, count, held = node.kernel, "forget of more references than the kernel holds");
        }
        node.kernel = node.kernel.saturating_sub(count);
        if node.kernel > 0 {
            return None;
        }
        let node = self.nodes.remove(&ino).expect("present above");
        (node.pins > 0).then_some((ino, node.pins))
    }

    /// References the kernel holds to `ino` (tests and assertions).
    /// Every inode the kernel references.
    pub fn referenced(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The server no longer knows the session that held the pins (it was evicted): none is held.
    pub fn pins_lost(&mut self) {
        for node in self.nodes.values_mut() {
            node.pins = 0;
        }
    }

    pub fn kernel(&self, ino: u64) -> u64 {
        self.nodes.get(&ino).map_or(0, |node| node.kernel)
    }

    /// Pins held on the server for `ino`.
    pub fn pins(&self, ino: u64) -> u64 {
        self.nodes.get(&ino).map_or(0, |node| node.pins)
    }

    /// Pins held on the server, over all inodes.
    pub fn pinned_total(&self) -> u64 {
        self.nodes.values().map(|node| node.pins).sum()
    }

    /// Inodes the kernel references.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Every node is referenced by the kernel (nodes at zero are removed at once).
    pub fn check_invariants(&self) {
        for (ino, node) in &self.nodes {
            assert!(node.kernel > 0, "inode {ino} is kept with no kernel reference");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A lookup of a pinned inode costs nothing; its pins go back exactly once, with the last
    // kernel reference, however the references were taken.
    #[test]
    fn pins_go_back_with_the_last_reference_exactly_once() {
        let mut refs = KernelRefs::default();
        assert!(!refs.add_if_pinned(5), "not known: the lookup must pin");
        refs.add(5); // created here: referenced, not pinned
        assert!(!refs.add_if_pinned(5), "referenced but not pinned: the lookup must pin");
        refs.add_pinned(5);
        assert!(refs.add_if_pinned(5));
        assert_eq!((refs.kernel(5), refs.pins(5)), (3, 1));
        assert_eq!(refs.forget(5, 2), None);
        refs.check_invariants();
        assert_eq!(refs.forget(5, 1), Some((5, 1)));
        assert!(refs.is_empty());
        assert_eq!(refs.forget(5, 1), None, "a second forget gives nothing back again");
    }

    #[test]
    fn an_unpinned_inode_gives_nothing_back() {
        let mut refs = KernelRefs::default();
        refs.add(7);
        refs.add(7);
        assert_eq!(refs.forget(7, 2), None);
        assert_eq!(refs.len(), 0);
    }

    #[test]
    fn forgetting_too_much_never_goes_below_zero() {
        let mut refs = KernelRefs::default();
        refs.add_pinned(9);
        assert_eq!(refs.forget(9, 4), Some((9, 1)));
        assert_eq!(refs.kernel(9), 0);
    }
}
