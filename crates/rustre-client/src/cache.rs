//! The client cache: names (positive and negative), attributes and directory listings, each kept
//! only while the client holds the server's lease on it. See ARCHITECTURE.md, "Leases".
//!
//! Two kinds of event change the lease set, and both are applied by the connection's reader task
//! in the order they arrived (`rustre_proto::rpc::Service`): the grants a reply carries
//! (`on_reply`), and revocations from the server (`on_revoke`). Data enters the cache later, from
//! the task that made the request, and only if the very lease its reply granted is still held: a
//! revocation that arrived in between wins (semantics.md, race 11).
//!
//! A revocation can overtake the reply carrying the grant it revokes (the server may queue them
//! in either order). Whenever a revoked id is newer than the lease held on the key (or none is
//! held), a tombstone remembers it so the late grant is refused. A tombstone lives until every
//! request that was in flight when it was made has been answered: later requests get grants with
//! larger ids.
//!
//! Locking: `State` sits behind one mutex (std's; shuttle's in unit tests, through `sync.rs`)
//! held for map operations only, never across an await; the reader task and application tasks
//! both take it. The in-flight lookup table has its
//! own mutex, never taken while holding the state's.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rustre_proto::{Attr, DirEntry, FileKind, Grant, LeaseKey};
use tokio::time::Instant;

use crate::clock::TrustClock;

/// Cache entries (leases) kept by default; beyond, the least recently used are given back.
pub const CACHE_ENTRIES_MAX: usize = 65536;
/// Tombstones kept; beyond, every grant in replies to requests already sent is refused instead.
pub const TOMBSTONES_MAX: usize = 65536;
/// Leases given back in one request.
pub const RELEASE_BATCH_MAX: usize = 1024;
/// Symlink targets remembered (they never change: no lease needed).
pub const SYMLINK_TARGETS_MAX: usize = 4096;

/// What a name is bound to: an inode and its kind, or nothing (a negative entry).
pub type Binding = Option<(u64, FileKind)>;

struct Held {
    id: u64,
    tick: u64,
}

pub(crate) struct State {
    connected: bool,
    /// Trust is measured on this clock (it counts time the machine spent suspended).
    clock: TrustClock,
    /// When (on `clock`) the latest request the server has answered was sent: the server had
    /// heard from this session no earlier than that, so it evicts it no sooner than a lease
    /// timeout after it, whatever the network delayed or dropped since.
    renewed: Duration,
    /// The last time anything arrived from the server (for the watchdog, `silent_for`).
    last_heard: Instant,
    /// How long after `renewed` the cache is still trusted (half the lease timeout).
    validity: Duration,
    capacity: usize,
    leases: HashMap<LeaseKey, Held>,
    names: HashMap<(u64, Vec<u8>), Binding>,
    attrs: HashMap<u64, Attr>,
    listings: HashMap<u64, Vec<DirEntry>>,
    /// Directory inode -> its one cached name (a directory has a single parent link).
    directory_names: HashMap<u64, (u64, Vec<u8>)>,
    lru: BTreeMap<u64, LeaseKey>,
    next_tick: u64,
    /// Key -> (highest revoked id, first request id that can no longer carry an older grant).
    tombstones: HashMap<LeaseKey, (u64, u64)>,
    /// Replies to requests below this id have their grants refused (after tombstone overflow).
    refuse_below: u64,
    /// Leases dropped here that the server still counts as ours.
    to_release: Vec<Grant>,
    targets: HashMap<u64, Vec<u8>>,
    /// A planted bug for control runs (`ClientConfig::fault_cache_under_revoked_lease`): what
    /// a reply carried is cached even if its lease was revoked before the insert.
    cache_unheld: bool,
}

impl State {
    #[cfg(test)]
    pub(crate) fn new(validity: Duration, capacity: usize) -> State {
        State::with_clock(validity, capacity, TrustClock::new(std::sync::Arc::new(crate::clock::KernelSuspendClock)))
    }

    pub(crate) fn with_clock(validity: Duration, capacity: usize, clock: TrustClock) -> State {
        State {
            connected: true,
            renewed: clock.now(),
            clock,
            last_heard: Instant::now(),
            validity,
            capacity: capacity.max(1),
            leases: HashMap::new(),
            names: HashMap::new(),
            attrs: HashMap::new(),
            listings: HashMap::new(),
            directory_names: HashMap::new(),
            lru: BTreeMap::new(),
            next_tick: 0,
            tombstones: HashMap::new(),
            refuse_below: 0,
            to_release: Vec::new(),
            targets: HashMap::new(),
            cache_unheld: false,
        }
    }

    /// The cache answers only while connected and recently renewed: a client cut off from the
    /// server stops trusting its leases half a lease timeout after it sent the last request the
    /// server answered, before the server evicts it (a lease timeout after it last heard from
    /// the client, which is no earlier) and lets a conflicting change through. Measured from
    /// the send, not from what arrives: a ping or a reply the network held back says nothing of
    /// what the server has done since it was sent.
    fn trusted(&self) -> bool {
        self.connected && self.clock.now().saturating_sub(self.renewed) < self.validity
    }

    /// How long from now the cache stays trusted if no further request is answered (zero if it
    /// is not trusted now).
    pub(crate) fn trust_left(&self) -> Duration {
        match self.connected {
            true => (self.renewed + self.validity).saturating_sub(self.clock.now()),
            false => Duration::ZERO,
        }
    }

    /// How long since anything arrived from the server.
    pub(crate) fn silent_for(&self) -> Duration {
        self.last_heard.elapsed()
    }

    /// Something arrived from the server (the watchdog's measure; trust is not renewed by it).
    pub(crate) fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// Now, on the trust clock: what a request is stamped with when it is sent.
    pub(crate) fn now(&self) -> Duration {
        self.clock.now()
    }

    /// The server answered a request sent at `sent` (on the trust clock).
    pub(crate) fn renew(&mut self, sent: Duration) {
        self.renewed = self.renewed.max(sent);
    }

    /// Time the machine has spent suspended since the cache was made.
    pub(crate) fn suspended(&self) -> Duration {
        self.clock.suspended()
    }

    /// How long the cache is trusted after the last news (half the server's lease timeout).
    pub(crate) fn validity(&self) -> Duration {
        self.validity
    }

    /// Half the server's lease timeout: how long the cache is trusted after the last news.
    pub(crate) fn set_validity(&mut self, validity: Duration) {
        self.validity = validity;
    }

    /// A new connection of the session is up (the cache starts empty again); its hello was
    /// sent at `sent` and answered.
    pub(crate) fn reconnected(&mut self, sent: Duration) {
        self.connected = true;
        self.heard();
        self.renew(sent);
    }

    pub(crate) fn disconnected(&mut self) {
        self.connected = false;
        self.leases.clear();
        self.names.clear();
        self.attrs.clear();
        self.listings.clear();
        self.directory_names.clear();
        self.lru.clear();
        self.tombstones.clear();
        self.to_release.clear();
    }

    fn touch(&mut self, key: &LeaseKey) {
        let tick = self.next_tick;
        self.next_tick += 1;
        if let Some(held) = self.leases.get_mut(key) {
            let old = std::mem::replace(&mut held.tick, tick);
            self.lru.remove(&old);
            self.lru.insert(tick, key.clone());
        }
    }

    // ---- events from the reader task, in wire order ----

    /// A reply to request `request_id` granted these leases. `oldest_pending` is the smallest
    /// id of our requests still unanswered (tombstones older than it can go).
    pub(crate) fn on_reply(&mut self, request_id: u64, grants: &[Grant], oldest_pending: Option<u64>) {
        self.heard();
        if !self.tombstones.is_empty() {
            let horizon = oldest_pending.unwrap_or(u64::MAX);
            self.tombstones.retain(|_, (_, watermark)| *watermark > horizon);
        }
        for grant in grants {
            let revoked = self.tombstones.get(&grant.key).is_some_and(|&(revoked, _)| revoked >= grant.id);
            if revoked {
                continue; // the server already took it back
            }
            if request_id < self.refuse_below || !self.connected {
                self.to_release.push(grant.clone());
                continue;
            }
            match self.leases.get_mut(&grant.key) {
                Some(held) if held.id >= grant.id => {}
                Some(held) => {
                    // A newer lease on the same key: the data under the older one is as current,
                    // but only data inserted under the newest id is accepted from now on.
                    held.id = grant.id;
                }
                None => {
                    let tick = self.next_tick;
                    self.next_tick += 1;
                    self.leases.insert(grant.key.clone(), Held { id: grant.id, tick });
                    self.lru.insert(tick, grant.key.clone());
                }
            }
        }
        self.evict_beyond_capacity();
    }

    /// The server revokes these leases. `next_request_id` is the id our next request will get.
    pub(crate) fn on_revoke(&mut self, grants: &[Grant], next_request_id: u64) {
        self.heard();
        for grant in grants {
            let held = self.leases.get(&grant.key).map(|held| held.id);
            if held.is_some_and(|held| held <= grant.id) {
                self.forget(&grant.key);
            }
            // A revoked id newer than any we hold names a grant still on its way to us (or one
            // dropped here already): remember it, so that grant is refused when it comes.
            if held.is_none_or(|held| held < grant.id) {
                let tombstone = self.tombstones.entry(grant.key.clone()).or_insert((0, 0));
                tombstone.0 = tombstone.0.max(grant.id);
                tombstone.1 = next_request_id;
            }
        }
        if self.tombstones.len() > TOMBSTONES_MAX {
            self.tombstones.clear();
            self.refuse_below = next_request_id;
        }
    }

    /// Drops a key's lease and everything it covered.
    fn forget(&mut self, key: &LeaseKey) {
        let Some(held) = self.leases.remove(key) else { return };
        self.lru.remove(&held.tick);
        match key {
            LeaseKey::Name { parent, name } => {
                let binding = self.names.remove(&(*parent, name.clone()));
                if let Some(Some((ino, FileKind::Directory))) = binding
                    && self.directory_names.get(&ino) == Some(&(*parent, name.clone()))
                {
                    self.directory_names.remove(&ino);
                }
            }
            LeaseKey::Attr { ino } => {
                self.attrs.remove(ino);
            }
            LeaseKey::Listing { ino } => {
                self.listings.remove(ino);
            }
        }
    }

    fn evict_beyond_capacity(&mut self) {
        while self.leases.len() > self.capacity {
            let Some((_, key)) = self.lru.pop_first() else { break };
            let id = self.leases.get(&key).expect("every LRU key is held").id;
            self.forget(&key);
            self.to_release.push(Grant { key, id });
        }
    }

    pub(crate) fn take_releases(&mut self) -> Vec<Grant> {
        let count = self.to_release.len().min(RELEASE_BATCH_MAX);
        self.to_release.drain(..count).collect()
    }

    pub(crate) fn has_releases(&self) -> bool {
        !self.to_release.is_empty()
    }

    // ---- reads by application tasks ----

    /// A cached binding of `name` in `parent`, if its lease is held and trusted.
    pub(crate) fn name(&mut self, parent: u64, name: &[u8]) -> Option<Binding> {
        if !self.trusted() {
            return None;
        }
        let key = LeaseKey::Name { parent, name: name.to_vec() };
        let binding = *self.names.get(&(parent, name.to_vec()))?;
        debug_assert!(self.cache_unheld || self.leases.contains_key(&key), "every cached entry has its lease");
        self.touch(&key);
        Some(binding)
    }

    pub(crate) fn attr(&mut self, ino: u64) -> Option<Attr> {
        if !self.trusted() {
            return None;
        }
        let attr = self.attrs.get(&ino)?.clone();
        self.touch(&LeaseKey::Attr { ino });
        Some(attr)
    }

    /// Are `ino`'s attributes cached (and trusted)? No copy made, no recency touched.
    pub(crate) fn has_attr(&self, ino: u64) -> bool {
        self.trusted() && self.attrs.contains_key(&ino)
    }

    pub(crate) fn listing(&mut self, ino: u64) -> Option<Vec<DirEntry>> {
        if !self.trusted() {
            return None;
        }
        let entries = self.listings.get(&ino)?.clone();
        self.touch(&LeaseKey::Listing { ino });
        Some(entries)
    }

    pub(crate) fn target(&self, ino: u64) -> Option<Vec<u8>> {
        self.targets.get(&ino).cloned()
    }

    // ---- inserts by the task that made a request ----

    /// Is `key` held under exactly the grant `grants` carries for it? Data may be cached only
    /// then: any revocation since, or any newer grant, means the data may be older than the lease.
    fn granted(&self, key: &LeaseKey, grants: &[Grant]) -> bool {
        let Some(grant) = grants.iter().find(|grant| &grant.key == key) else { return false };
        self.cache_unheld || self.leases.get(key).is_some_and(|held| held.id == grant.id)
    }

    /// Plants the bug of caching under a revoked lease (control runs only).
    pub(crate) fn plant_cache_unheld(&mut self) {
        self.cache_unheld = true;
    }

    pub(crate) fn insert_name(&mut self, parent: u64, name: &[u8], binding: Binding, grants: &[Grant]) {
        let key = LeaseKey::Name { parent, name: name.to_vec() };
        if !self.granted(&key, grants) {
            return;
        }
        if let Some((ino, FileKind::Directory)) = binding {
            let here = (parent, name.to_vec());
            if let Some(other) = self.directory_names.get(&ino).cloned()
                && other != here
            {
                // The server revokes a directory's old name before granting its new one, so its
                // old entry is gone already; drop it anyway rather than keep two.
                debug_assert!(false, "directory {ino} cached under two names: {other:?} and {here:?}");
                self.forget(&LeaseKey::Name { parent: other.0, name: other.1 });
            }
            self.directory_names.insert(ino, here);
        }
        self.names.insert((parent, name.to_vec()), binding);
        self.touch(&key);
    }

    pub(crate) fn insert_attr(&mut self, attr: &Attr, grants: &[Grant]) {
        let key = LeaseKey::Attr { ino: attr.ino };
        if self.granted(&key, grants) {
            self.attrs.insert(attr.ino, attr.clone());
            self.touch(&key);
        }
    }

    pub(crate) fn insert_listing(&mut self, ino: u64, entries: Vec<DirEntry>, grants: &[Grant]) {
        let key = LeaseKey::Listing { ino };
        if self.granted(&key, grants) {
            self.listings.insert(ino, entries);
            self.touch(&key);
        }
    }

    pub(crate) fn insert_target(&mut self, ino: u64, target: &[u8]) {
        if self.targets.len() >= SYMLINK_TARGETS_MAX {
            self.targets.clear();
        }
        self.targets.insert(ino, target.to_vec());
    }

    /// Forgets what this client knows of an inode it found gone (ESTALE).
    pub(crate) fn forget_attr(&mut self, ino: u64) {
        let key = LeaseKey::Attr { ino };
        if let Some(held) = self.leases.get(&key) {
            let id = held.id;
            self.forget(&key);
            self.to_release.push(Grant { key, id });
        }
    }

    pub(crate) fn leases_held(&self) -> usize {
        self.leases.len()
    }

    /// Checks the cache invariants of semantics.md (tests call it; it is cheap enough for that).
    pub(crate) fn check_invariants(&self) {
        for (parent, name) in self.names.keys() {
            let key = LeaseKey::Name { parent: *parent, name: name.clone() };
            assert!(self.leases.contains_key(&key), "cached name {parent}/{name:?} has no lease");
        }
        for ino in self.attrs.keys() {
            assert!(
                self.leases.contains_key(&LeaseKey::Attr { ino: *ino }),
                "cached attributes of {ino} have no lease"
            );
        }
        for ino in self.listings.keys() {
            assert!(self.leases.contains_key(&LeaseKey::Listing { ino: *ino }), "cached listing of {ino} has no lease");
        }
        let mut named_directories = HashMap::new();
        for ((parent, name), binding) in &self.names {
            if let Some((ino, FileKind::Directory)) = binding {
                let previous = named_directories.insert(*ino, (*parent, name.clone()));
                assert!(previous.is_none(), "directory {ino} has two cached names");
            }
        }
        assert_eq!(self.lru.len(), self.leases.len(), "every lease is in the LRU order once");
        assert!(self.leases.len() <= self.capacity, "the cache is within its bound");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> LeaseKey {
        LeaseKey::Name { parent: 1, name: text.as_bytes().to_vec() }
    }

    // A revocation that overtakes its grant leaves a tombstone that refuses the late grant, and
    // the tombstone goes once no older request is pending.
    #[tokio::test]
    async fn a_revocation_overtaking_its_grant_wins() {
        let mut state = State::new(Duration::from_secs(60), 100);
        state.on_revoke(&[Grant { key: name("f"), id: 5 }], 10);
        state.on_reply(9, &[Grant { key: name("f"), id: 5 }], Some(9));
        state.insert_name(1, b"f", None, &[Grant { key: name("f"), id: 5 }]);
        assert_eq!(state.name(1, b"f"), None, "the revoked grant was refused");
        // Request 9 is answered; a newer grant on the same key is accepted.
        state.on_reply(12, &[Grant { key: name("f"), id: 6 }], None);
        assert!(state.tombstones.is_empty());
        state.insert_name(1, b"f", None, &[Grant { key: name("f"), id: 6 }]);
        assert_eq!(state.name(1, b"f"), Some(None));
        state.check_invariants();
    }

    // Holding an old lease does not hide a newer grant still in flight: a revocation of that
    // newer grant that overtakes it drops the old lease and refuses the new one.
    #[tokio::test]
    async fn a_revocation_overtaking_a_newer_grant_of_a_held_key_wins() {
        let mut state = State::new(Duration::from_secs(60), 100);
        state.on_reply(1, &[Grant { key: name("f"), id: 5 }], None);
        state.insert_name(1, b"f", None, &[Grant { key: name("f"), id: 5 }]);
        state.on_revoke(&[Grant { key: name("f"), id: 8 }], 3);
        assert_eq!(state.name(1, b"f"), None, "the old lease went");
        state.on_reply(2, &[Grant { key: name("f"), id: 8 }], Some(2));
        state.insert_name(1, b"f", Some((4, FileKind::Regular)), &[Grant { key: name("f"), id: 8 }]);
        assert_eq!(state.name(1, b"f"), None, "the revoked newer grant was refused");
        state.check_invariants();
    }

    // Data arrives after its lease was revoked: it is not cached (race 11, client side).
    #[tokio::test]
    async fn data_under_a_revoked_lease_is_not_cached() {
        let mut state = State::new(Duration::from_secs(60), 100);
        let grant = Grant { key: name("f"), id: 3 };
        state.on_reply(1, std::slice::from_ref(&grant), None);
        state.on_revoke(std::slice::from_ref(&grant), 2);
        state.insert_name(1, b"f", Some((9, FileKind::Regular)), &[grant]);
        assert_eq!(state.name(1, b"f"), None);
        state.check_invariants();
    }

    // The cache stays within its bound and gives back what it evicts.
    #[tokio::test]
    async fn eviction_gives_leases_back() {
        let mut state = State::new(Duration::from_secs(60), 3);
        for index in 0..5u64 {
            let grant = Grant { key: LeaseKey::Attr { ino: index }, id: index + 1 };
            state.on_reply(index, std::slice::from_ref(&grant), None);
        }
        assert_eq!(state.leases_held(), 3);
        let released: Vec<_> = state.take_releases().into_iter().map(|grant| grant.key).collect();
        assert_eq!(released, vec![LeaseKey::Attr { ino: 0 }, LeaseKey::Attr { ino: 1 }]);
        state.check_invariants();
    }

    // Without a request answered in half the lease timeout, the cache answers nothing.
    #[tokio::test(start_paused = true)]
    async fn silence_expires_trust() {
        let mut state = State::new(Duration::from_secs(2), 100);
        let grant = Grant { key: name("f"), id: 1 };
        state.on_reply(1, std::slice::from_ref(&grant), None);
        state.insert_name(1, b"f", None, &[grant]);
        assert_eq!(state.name(1, b"f"), Some(None));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(state.name(1, b"f"), None, "not trusted after the validity window");
        state.heard();
        assert_eq!(state.name(1, b"f"), None, "news from the server renews nothing");
        let sent = state.now();
        state.renew(sent);
        assert_eq!(state.name(1, b"f"), Some(None), "trusted again once a request sent now is answered");
        state.renew(Duration::ZERO);
        assert_eq!(state.name(1, b"f"), Some(None), "an older answer never shortens trust");
    }

    // Trust counts time the machine spent suspended: after a suspension longer than what was
    // left of the window, nothing is answered, although no time passed on tokio's clock.
    #[tokio::test(start_paused = true)]
    async fn a_suspension_expires_trust() {
        let suspend = std::sync::Arc::new(crate::clock::ManualSuspendClock::default());
        let clock = TrustClock::new(suspend.clone());
        let mut state = State::with_clock(Duration::from_secs(2), 100, clock);
        let grant = Grant { key: name("f"), id: 1 };
        state.on_reply(1, std::slice::from_ref(&grant), None);
        state.insert_name(1, b"f", None, &[grant]);
        assert_eq!(state.name(1, b"f"), Some(None));
        suspend.suspend(Duration::from_secs(3));
        assert_eq!(state.name(1, b"f"), None, "not trusted after a suspension past the window");
        assert_eq!(state.trust_left(), Duration::ZERO);
    }
}

/// The cache's concurrency, model-checked with shuttle through the `sync` facade: the reader
/// task applies a reply's grants and the server's revocations in wire order, while the
/// application task that made the request inserts what the reply said, whenever it gets to run.
/// Every interleaving must end with nothing cached under a revoked lease.
#[cfg(test)]
mod interleavings {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::sync::Mutex;

    /// Random schedules explored per test (each a different interleaving of the threads).
    const SCHEDULES: usize = 2000;

    fn name(text: &str) -> LeaseKey {
        LeaseKey::Name { parent: 1, name: text.as_bytes().to_vec() }
    }

    /// The application task: waits until its reply was seen by the reader (it only gets the
    /// reply after that), then inserts what the reply said under the reply's grants.
    fn application(cache: Arc<Mutex<State>>, replied: Arc<AtomicBool>, binding: Binding, grants: Vec<Grant>) {
        while !replied.load(Ordering::Acquire) {
            shuttle::thread::yield_now();
        }
        cache.lock().expect("cache lock").insert_name(1, b"f", binding, &grants);
    }

    fn cached(cache: &Mutex<State>) -> Option<Binding> {
        let mut state = cache.lock().expect("cache lock");
        state.check_invariants();
        state.name(1, b"f")
    }

    // A lookup's reply grants a lease; the server revokes it (a change elsewhere) while the
    // application task has not inserted yet, or has: either way nothing stays cached.
    #[test]
    fn interleavings_a_revocation_after_the_grant_always_wins() {
        shuttle::check_random(
            || {
                let cache = Arc::new(Mutex::new(State::new(Duration::from_secs(60), 100)));
                let replied = Arc::new(AtomicBool::new(false));
                let grant = Grant { key: name("f"), id: 5 };
                let app = {
                    let (cache, replied, grant) = (cache.clone(), replied.clone(), grant.clone());
                    shuttle::thread::spawn(move || {
                        application(cache, replied, Some((7, FileKind::Regular)), vec![grant])
                    })
                };
                let reader = {
                    let cache = cache.clone();
                    shuttle::thread::spawn(move || {
                        cache.lock().expect("cache lock").on_reply(1, std::slice::from_ref(&grant), None);
                        replied.store(true, Ordering::Release);
                        cache.lock().expect("cache lock").on_revoke(&[grant], 2);
                    })
                };
                reader.join().expect("reader");
                app.join().expect("application");
                assert_eq!(cached(&cache), None, "nothing stays cached under a revoked lease");
            },
            SCHEDULES,
        );
    }

    // The revocation overtakes the reply that carries its grant: the late grant is refused, and
    // so is the insertion, in every interleaving.
    #[test]
    fn interleavings_a_revocation_overtaking_its_grant_always_wins() {
        shuttle::check_random(
            || {
                let cache = Arc::new(Mutex::new(State::new(Duration::from_secs(60), 100)));
                let replied = Arc::new(AtomicBool::new(false));
                let grant = Grant { key: name("f"), id: 5 };
                let app = {
                    let (cache, replied, grant) = (cache.clone(), replied.clone(), grant.clone());
                    shuttle::thread::spawn(move || application(cache, replied, None, vec![grant]))
                };
                let reader = {
                    let cache = cache.clone();
                    shuttle::thread::spawn(move || {
                        cache.lock().expect("cache lock").on_revoke(std::slice::from_ref(&grant), 2);
                        cache.lock().expect("cache lock").on_reply(1, &[grant], Some(1));
                        replied.store(true, Ordering::Release);
                    })
                };
                reader.join().expect("reader");
                app.join().expect("application");
                assert_eq!(cached(&cache), None, "the overtaken grant was refused");
            },
            SCHEDULES,
        );
    }

    // Two lookups of one name in flight from two tasks: the older grant is revoked, the newer is
    // not. Whatever the interleaving, what stays cached is the newer reply's answer, never the
    // older one's (which the revocation says may be stale).
    #[test]
    fn interleavings_only_the_unrevoked_answer_stays() {
        shuttle::check_random(
            || {
                let cache = Arc::new(Mutex::new(State::new(Duration::from_secs(60), 100)));
                let (old, new) = (Grant { key: name("f"), id: 5 }, Grant { key: name("f"), id: 6 });
                let replied = [Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false))];
                let apps: Vec<_> = [(None, old.clone()), (Some((9, FileKind::Regular)), new.clone())]
                    .into_iter()
                    .zip(replied.clone())
                    .map(|((binding, grant), replied)| {
                        let cache = cache.clone();
                        shuttle::thread::spawn(move || application(cache, replied, binding, vec![grant]))
                    })
                    .collect();
                let reader = {
                    let cache = cache.clone();
                    shuttle::thread::spawn(move || {
                        cache.lock().expect("cache lock").on_reply(1, std::slice::from_ref(&old), Some(1));
                        replied[0].store(true, Ordering::Release);
                        cache.lock().expect("cache lock").on_revoke(&[old], 3);
                        cache.lock().expect("cache lock").on_reply(2, &[new], None);
                        replied[1].store(true, Ordering::Release);
                    })
                };
                reader.join().expect("reader");
                for app in apps {
                    app.join().expect("application");
                }
                let cached = cached(&cache);
                assert_ne!(cached, Some(None), "the revoked (older) answer never stays");
            },
            SCHEDULES,
        );
    }
}
