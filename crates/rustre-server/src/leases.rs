//! The lease table: which session may cache what, and the ordering rules that keep every cache
//! exact. See ARCHITECTURE.md, "Leases", for the design; in short:
//!
//! - A change *marks* the keys it touches, inside the commit thread and before its batch commits
//!   (`mark`): the key's version moves, the change is *in flight* on the key, and every holder's
//!   lease is taken out of the table to be revoked. After the commit the change revokes those
//!   leases (waiting for acknowledgements or evicting), then *completes* (`complete`).
//! - A read (`ReadTicket`) *observes* each key before it reads the state the key covers. Its
//!   reply may reveal that state only once no change marked on the key so far is still in flight
//!   (so nobody still caches what the change replaced), and it may grant a lease on the key only
//!   if no change was in flight when it observed the key and none was marked since.
//!
//! **Architecture Invariant**: a grant is registered only for state no marked change has made
//! stale; every lease on a key a change touches is out of the table, and revoked, before that
//! change (or any read revealing its result) is answered.
//!
//! Locking: one std mutex, held for table operations only, never across an await. `mark` runs on
//! the commit thread; everything else on request tasks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rustre_proto::{Grant, LeaseKey};
use tokio::sync::Notify;

/// Leases one session may hold; beyond this, replies carry no grants (the client just does not
/// cache) until it gives some back.
pub const LEASES_PER_SESSION_MAX: usize = 1 << 20;

#[derive(Default)]
struct KeyState {
    /// The version of the last change marked on this key (0: none since the key was forgotten).
    version: u64,
    /// Versions of changes marked on this key whose revocations are not complete.
    in_flight: Vec<u64>,
    /// Session -> its newest grant id on this key.
    holders: Holders,
}

/// The sessions holding a lease on one key, with their newest grant ids: a vector, not a map,
/// because most keys have one holder or a few (a vector of one costs 16 bytes on the heap, a
/// hash map of one about 100): memory per lease is what bounds the table (docs/BENCHMARKS.md).
/// A key every session holds (the root) costs a scan of the sessions per grant.
#[derive(Default)]
struct Holders(Vec<(u64, u64)>);

impl Holders {
    fn get(&self, session: u64) -> Option<u64> {
        self.0.iter().find(|(holder, _)| *holder == session).map(|&(_, id)| id)
    }

    /// Records `id` as `session`'s newest grant on the key.
    fn insert(&mut self, session: u64, id: u64) {
        match self.0.iter_mut().find(|(holder, _)| *holder == session) {
            Some(held) => held.1 = id,
            None => {
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(1);
                }
                self.0.push((session, id));
            }
        }
    }

    fn remove(&mut self, session: u64) {
        if let Some(at) = self.0.iter().position(|(holder, _)| *holder == session) {
            self.0.swap_remove(at);
        }
        if self.0.is_empty() {
            self.0 = Vec::new(); // an idle key keeps no allocation
        }
    }

    fn take(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The table's indexes share one allocation per key (`State::intern`): a key with a long name is
/// stored once, however many indexes name it.
#[derive(Default)]
struct State {
    keys: HashMap<Arc<LeaseKey>, KeyState>,
    sessions: HashMap<u64, HashSet<Arc<LeaseKey>>>,
    /// Global change counter; each change takes the next value as its version.
    version: u64,
    next_grant: u64,
    /// Reads in progress, by the global version when they began. A key with no holders and no
    /// change in flight is forgotten only if its last change is older than all of them, so a
    /// read never mistakes a forgotten-and-recreated key for an unchanged one.
    readers: BTreeMap<u64, usize>,
    /// Idle keys kept only because a read in progress is older than their last change, by that
    /// change's version: swept as the oldest reads finish, so the table stays bounded.
    deferred: BTreeMap<u64, Vec<Arc<LeaseKey>>>,
    /// Sessions whose connection closed while their client may not know it yet: their leases
    /// stay in the table until the deadline, by which the client has stopped trusting them
    /// (`Leases::lapse`), with a number telling one lapse of a session from the next.
    lapsing: HashMap<u64, (tokio::time::Instant, u64)>,
    next_lapse: u64,
}

impl State {
    fn oldest_reader(&self) -> u64 {
        self.readers.keys().next().copied().unwrap_or(u64::MAX)
    }

    /// The table's shared copy of `key`, tracking it (idle) if it was not.
    fn intern(&mut self, key: &LeaseKey) -> Arc<LeaseKey> {
        if let Some((shared, _)) = self.keys.get_key_value(key) {
            return shared.clone();
        }
        let shared = Arc::new(key.clone());
        self.keys.insert(shared.clone(), KeyState::default());
        shared
    }

    fn forget_if_idle(&mut self, key: &LeaseKey) {
        let Some((shared, state)) = self.keys.get_key_value(key) else { return };
        if !state.holders.is_empty() || !state.in_flight.is_empty() {
            return;
        }
        if state.version < self.oldest_reader() {
            self.keys.remove(key);
        } else {
            let (version, shared) = (state.version, shared.clone());
            self.deferred.entry(version).or_default().push(shared);
        }
    }

    /// Forgets the deferred keys no read in progress can still need.
    fn sweep_deferred(&mut self) {
        let oldest_reader = self.oldest_reader();
        while let Some(entry) = self.deferred.first_entry() {
            if *entry.key() >= oldest_reader {
                break;
            }
            for key in entry.remove() {
                if let Some(state) = self.keys.get(&key)
                    && state.holders.is_empty()
                    && state.in_flight.is_empty()
                    && state.version < oldest_reader
                {
                    self.keys.remove(&key);
                }
            }
        }
    }
}

/// A handle on the lease table; cloning shares it.
#[derive(Clone, Default)]
pub struct Leases {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Woken whenever a change completes.
    completed: Notify,
    /// Woken whenever a lapse ends (its deadline passed, or its session came back).
    lapse_ended: Notify,
}

/// What a change did to the table.
pub struct Change {
    version: u64,
    /// Each key it marked, and whether another change was in flight on it at the time.
    keys: Vec<(LeaseKey, bool)>,
    /// The leases to revoke, by session.
    pub revocations: BTreeMap<u64, Vec<Grant>>,
}

/// A read in progress. Dropping it without `finish` is fine (an error path).
pub struct ReadTicket {
    leases: Leases,
    start: u64,
    /// Key -> (version, a change was in flight) when observed.
    seen: HashMap<LeaseKey, (u64, bool)>,
    /// Keys changed by the reader's own request, with the version of that change.
    own: HashMap<LeaseKey, u64>,
    finished: bool,
}

impl Leases {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("lease table lock")
    }

    /// Marks a change of `keys` (called on the commit thread, before the batch commits) and takes
    /// every lease on them out of the table, to be revoked by the caller.
    pub fn mark(&self, keys: Vec<LeaseKey>) -> Change {
        let mut keys = keys;
        keys.sort();
        keys.dedup();
        let mut state = self.state();
        state.version += 1;
        let version = state.version;
        let mut revocations: BTreeMap<u64, Vec<Grant>> = BTreeMap::new();
        let mut marked = Vec::with_capacity(keys.len());
        for key in keys {
            state.intern(&key);
            let entry = state.keys.get_mut(&key).expect("interned just now");
            let others_in_flight = !entry.in_flight.is_empty();
            entry.in_flight.push(version);
            entry.version = version;
            let holders = entry.holders.take();
            for (session, id) in holders {
                let held = state.sessions.get_mut(&session).map(|held| held.remove(&key));
                debug_assert_eq!(held, Some(true), "the two indexes of the table agree");
                revocations.entry(session).or_default().push(Grant { key: key.clone(), id });
            }
            marked.push((key, others_in_flight));
        }
        Change { version, keys: marked, revocations }
    }

    /// Ends a change: its revocations are acknowledged (or their holders evicted).
    pub fn complete(&self, change: &Change) {
        let mut state = self.state();
        for (key, _) in &change.keys {
            let entry = state.keys.get_mut(key).expect("a marked key stays until its change completes");
            let position = entry.in_flight.iter().position(|&version| version == change.version);
            entry.in_flight.swap_remove(position.expect("a change completes once"));
            state.forget_if_idle(key);
        }
        drop(state);
        self.shared.completed.notify_waiters();
    }

    /// Waits until every change marked before `change` on any of its keys has completed. A change
    /// answers only then: otherwise its reply could reveal a state that an earlier change's
    /// revocations have not yet taken out of every cache. Versions only grow, so a change waits
    /// only for older ones: no cycle.
    pub async fn wait_prior(&self, change: &Change) {
        loop {
            let completed = self.shared.completed.notified();
            tokio::pin!(completed);
            completed.as_mut().enable();
            let earlier_in_flight = {
                let state = self.state();
                change.keys.iter().any(|(key, _)| {
                    state
                        .keys
                        .get(key)
                        .is_some_and(|entry| entry.in_flight.iter().any(|&version| version < change.version))
                })
            };
            if !earlier_in_flight {
                return;
            }
            completed.await;
        }
    }

    pub fn begin_read(&self) -> ReadTicket {
        let mut state = self.state();
        let start = state.version;
        *state.readers.entry(start).or_default() += 1;
        ReadTicket { leases: self.clone(), start, seen: HashMap::new(), own: HashMap::new(), finished: false }
    }

    /// Gives back leases a client stopped caching; a newer grant than the one named stays.
    pub fn release(&self, session: u64, grants: &[Grant]) {
        let mut state = self.state();
        for grant in grants {
            let Some(entry) = state.keys.get_mut(&grant.key) else { continue };
            if entry.holders.get(session).is_some_and(|id| id <= grant.id) {
                entry.holders.remove(session);
                if let Some(held) = state.sessions.get_mut(&session) {
                    held.remove(&grant.key);
                }
                state.forget_if_idle(&grant.key);
            }
        }
    }

    /// Drops every lease of a session that is gone (disconnected or evicted).
    pub fn drop_session(&self, session: u64) {
        let mut state = self.state();
        let held = state.sessions.remove(&session).unwrap_or_default();
        for key in held {
            if let Some(entry) = state.keys.get_mut(&key) {
                entry.holders.remove(session);
            }
            state.forget_if_idle(&key);
        }
    }

    /// The connection of `session` closed, but its client may not have noticed (the server closed
    /// it: a write error, a protocol violation) and may go on trusting its cache until its own
    /// clock says the trust window since the last news is over. Its leases stay in the table
    /// until `until`, so a conflicting change waits for that (`lapse_deadline`) rather than
    /// go through at once; then they are dropped. Returns the lapse's number, for `expire`.
    pub fn lapse(&self, session: u64, until: tokio::time::Instant) -> u64 {
        let mut state = self.state();
        state.next_lapse += 1;
        let number = state.next_lapse;
        state.lapsing.insert(session, (until, number));
        number
    }

    /// Ends lapse `number` of `session` when its deadline has passed, dropping the leases.
    pub fn expire(&self, session: u64, number: u64) {
        let expired = {
            let mut state = self.state();
            match state.lapsing.get(&session) {
                Some(&(_, current)) if current == number => {
                    state.lapsing.remove(&session);
                    true
                }
                _ => false,
            }
        };
        if expired {
            self.drop_session(session);
            self.shared.lapse_ended.notify_waiters();
        }
    }

    /// The session comes back on a new connection (`Op::Resume`): its client emptied its cache
    /// when it saw the old connection go, so the lapse ends now, and the old leases with it,
    /// before the session can be granted new ones.
    pub fn end_lapse(&self, session: u64) {
        let lapsed = self.state().lapsing.remove(&session).is_some();
        if lapsed {
            self.drop_session(session);
            self.shared.lapse_ended.notify_waiters();
        }
    }

    /// Until when a change must wait for `session`'s leases, which it cannot revoke (no
    /// connection); `None` if the session is not lapsing.
    pub fn lapse_deadline(&self, session: u64) -> Option<tokio::time::Instant> {
        self.state().lapsing.get(&session).map(|&(until, _)| until)
    }

    /// Waits until `session` is not lapsing any more (its deadline passed, or it came back).
    pub async fn wait_lapse(&self, session: u64) {
        loop {
            let ended = self.shared.lapse_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let Some((until, number)) = self.state().lapsing.get(&session).copied() else { return };
            tokio::select! {
                // The task that expires it runs at the same deadline; it may not have yet. Only
                // this lapse: the session may have come back and lapsed again meanwhile.
                _ = tokio::time::sleep_until(until) => self.expire(session, number),
                _ = ended => {}
            }
        }
    }

    /// Leases a session holds (for tests and statistics).
    pub fn held_by(&self, session: u64) -> usize {
        self.state().sessions.get(&session).map_or(0, HashSet::len)
    }

    /// Keys the table tracks (bounded: holders, changes in flight, reads in progress).
    pub fn tracked_keys(&self) -> usize {
        self.state().keys.len()
    }
}

impl ReadTicket {
    /// Records a key's state before the reader reads what it covers.
    pub fn observe(&mut self, key: &LeaseKey) {
        let state = self.leases.state();
        let seen = state.keys.get(key).map_or((0, false), |entry| (entry.version, !entry.in_flight.is_empty()));
        self.seen.insert(key.clone(), seen);
    }

    /// Records the keys the reader's own change marked, so it may be granted leases on the state
    /// it made.
    pub fn own_change(&mut self, change: &Change) {
        for (key, others_in_flight) in &change.keys {
            if !others_in_flight {
                self.own.insert(key.clone(), change.version);
            }
        }
    }

    /// Waits until the state the reply reveals is safe to reveal (no change marked on `reveal`
    /// so far is still revoking), then grants `session` leases on the keys of `grant` that nothing
    /// changed since they were observed.
    pub async fn finish(mut self, session: u64, reveal: &[LeaseKey], grant: &[LeaseKey]) -> Vec<Grant> {
        let shared = self.leases.shared.clone();
        let limit = self.leases.state().version;
        loop {
            let completed = shared.completed.notified();
            tokio::pin!(completed);
            completed.as_mut().enable();
            let revoking = {
                let state = self.leases.state();
                reveal.iter().any(|key| {
                    state.keys.get(key).is_some_and(|entry| entry.in_flight.iter().any(|&version| version <= limit))
                })
            };
            if !revoking {
                break;
            }
            completed.await;
        }
        let mut grants = Vec::new();
        let leases = self.leases.clone();
        let mut state = leases.state();
        for key in grant {
            let current = state.keys.get(key).map_or((0, false), |entry| (entry.version, !entry.in_flight.is_empty()));
            let unchanged = match (self.own.get(key), self.seen.get(key)) {
                (Some(&own_version), _) => current == (own_version, false),
                // Forgotten since it was observed idle: forgetting needs its last change to be
                // older than every read in progress, and a change marked after this read began
                // is newer than it, so keeps the key tracked until this read finishes. Absent
                // now means unchanged since then (without this, a read that overlapped an older
                // one's end lost its grant, and the client asked again for nothing).
                (None, Some(&(_, false))) if current == (0, false) => true,
                (None, Some(&(version, in_flight))) => !in_flight && current == (version, false),
                (None, None) => false,
            };
            let room = state.sessions.get(&session).map_or(0, HashSet::len) < LEASES_PER_SESSION_MAX;
            if !unchanged || !room {
                continue;
            }
            state.next_grant += 1;
            let id = state.next_grant;
            let shared = state.intern(key);
            state.keys.get_mut(key).expect("interned just now").holders.insert(session, id);
            state.sessions.entry(session).or_default().insert(shared);
            grants.push(Grant { key: key.clone(), id });
        }
        self.unregister(&mut state);
        grants
    }

    fn unregister(&mut self, state: &mut State) {
        if self.finished {
            return;
        }
        self.finished = true;
        let count = state.readers.get_mut(&self.start).expect("a read in progress is registered");
        *count -= 1;
        if *count == 0 {
            state.readers.remove(&self.start);
            state.sweep_deferred();
        }
    }
}

impl Drop for ReadTicket {
    fn drop(&mut self) {
        if !self.finished {
            let leases = self.leases.clone();
            let mut state = leases.state();
            self.unregister(&mut state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> LeaseKey {
        LeaseKey::Name { parent: 1, name: text.as_bytes().to_vec() }
    }

    // A read that observed a key before a change was marked on it gets no lease, and one that
    // observes while the change is revoking waits for it before revealing anything.
    #[tokio::test]
    async fn no_grant_across_a_change_and_no_reveal_while_revoking() {
        let leases = Leases::default();
        let key = name("f");

        let mut early = leases.begin_read();
        early.observe(&key);
        let change = leases.mark(vec![key.clone()]);
        leases.complete(&change);
        assert!(
            early.finish(7, std::slice::from_ref(&key), std::slice::from_ref(&key)).await.is_empty(),
            "stale read granted"
        );

        let mut fresh = leases.begin_read();
        fresh.observe(&key);
        let granted = fresh.finish(7, std::slice::from_ref(&key), std::slice::from_ref(&key)).await;
        assert_eq!(granted.len(), 1);
        assert_eq!(leases.held_by(7), 1);

        // A change takes the lease out at once and names it for revocation.
        let change = leases.mark(vec![key.clone()]);
        assert_eq!(change.revocations.get(&7), Some(&granted));
        assert_eq!(leases.held_by(7), 0);
        let reader = leases.begin_read();
        let waiting = tokio::spawn({
            let key = key.clone();
            async move { reader.finish(8, &[key], &[]).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a read revealing a key being revoked waits");
        leases.complete(&change);
        waiting.await.unwrap();
        assert_eq!(leases.tracked_keys(), 0, "idle keys are forgotten");
    }

    // A change answers only after every earlier change on its keys has completed (otherwise its
    // reply could reveal state still cached elsewhere); an earlier one never waits for it.
    #[tokio::test]
    async fn a_change_waits_for_earlier_changes_on_its_keys() {
        let leases = Leases::default();
        let earlier = leases.mark(vec![name("f"), name("g")]);
        let later = Arc::new(leases.mark(vec![name("g")]));
        let unrelated = leases.mark(vec![name("h")]);
        leases.wait_prior(&earlier).await;
        leases.wait_prior(&unrelated).await;
        leases.complete(&later);
        let waiting = tokio::spawn({
            let leases = leases.clone();
            let later = later.clone();
            async move { leases.wait_prior(&later).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the later change waits for the earlier one");
        leases.complete(&earlier);
        waiting.await.unwrap();
        leases.complete(&unrelated);
    }

    // A key observed idle and forgotten before the read finishes (the older read that kept it
    // tracked ended) was not changed: the read is granted its lease. One changed after the read
    // began stays tracked, and the read gets nothing.
    #[tokio::test]
    async fn a_key_forgotten_while_a_read_runs_is_still_granted() {
        let leases = Leases::default();
        let key = name("f");
        let older = leases.begin_read();
        let change = leases.mark(vec![key.clone()]);
        leases.complete(&change);
        assert_eq!(leases.tracked_keys(), 1, "kept for the older read");
        // Some other change, so that the next read begins after the key's last change.
        let unrelated = leases.mark(vec![name("h")]);
        leases.complete(&unrelated);
        let mut read = leases.begin_read();
        read.observe(&key);
        drop(older);
        assert_eq!(leases.tracked_keys(), 1, "f forgotten once the older read ends (h is as new as the read)");
        let granted = read.finish(7, std::slice::from_ref(&key), std::slice::from_ref(&key)).await;
        assert_eq!(granted.len(), 1, "an unchanged key is granted");

        let mut read = leases.begin_read();
        read.observe(&name("g"));
        let change = leases.mark(vec![name("g")]);
        leases.complete(&change);
        assert!(read.finish(7, &[name("g")], &[name("g")]).await.is_empty(), "a changed key is not granted");
    }

    // Releases drop only the named or older grant; sessions that go drop everything.
    #[tokio::test]
    async fn release_and_drop_session() {
        let leases = Leases::default();
        let mut read = leases.begin_read();
        read.observe(&name("a"));
        read.observe(&name("b"));
        let grants = read.finish(3, &[], &[name("a"), name("b")]).await;
        assert_eq!(grants.len(), 2);
        leases.release(3, &[Grant { key: name("a"), id: grants[0].id - 1 }]);
        assert_eq!(leases.held_by(3), 2, "an older release does not drop a newer grant");
        leases.release(3, &grants[..1]);
        assert_eq!(leases.held_by(3), 1);
        leases.drop_session(3);
        assert_eq!(leases.held_by(3), 0);
        assert_eq!(leases.tracked_keys(), 0);
    }
}
