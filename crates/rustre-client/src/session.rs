//! The session's link to its server: the current connection, reconnection after a break, and
//! what the session holds that a restarted server must be given back (ARCHITECTURE.md,
//! "Recovery").
//!
//! A connection that closes (the server restarted, the network broke) is replaced by the
//! *reconnector*: it connects again and resumes the session (`Op::Resume`). If the server kept
//! the session (only the connection broke), that is all. If the server restarted, the client
//! gives back what it held (`Op::Reclaim`: open handles with their ids, pins with their counts)
//! before anything else is sent. If the server no longer knows the session (it was evicted, or
//! did not come back within the server's grace period), the client starts a new one: handles of
//! the old one fail with EIO from then on, and its pins are gone (race 12).
//!
//! Requests that were in flight are sent again on the new connection. Those that change state go
//! as `Op::Once` with their slot and sequence number, so the server answers a resend of one that
//! it already carried out instead of running it twice; reads are simply asked again. A change in
//! flight when the session was lost is not sent under the new session (nothing there remembers
//! it, so it could run twice): it fails with EIO, its outcome unknown.
//!
//! Bounds: a request waits at most `ClientConfig::reconnect_wait` for a link, all its waits
//! counted (`RECONNECT_WAIT_FOREVER`: as long as it takes, a mount's default), and is sent at
//! most `RESENDS_MAX` times; the reconnector retries every `RECONNECT_BACKOFF_MAX` at the slowest,
//! for as long as the session lives. A close or an unpin whose wait runs out is answered as done
//! and waits on in the background (`Client::give_back`): failing it would give nothing back.
//!
//! The log: a connection lost and restored at the first attempt is one INFO line. Otherwise the
//! first failed attempt says WARN that the server is unreachable (why, how many requests wait),
//! at most one more WARN follows every `UNREACHABLE_REPORT_INTERVAL` while it stays so, and one
//! line says when it is reachable again, after how long, and what became of the session
//! (`Outage`, `Client::outage`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustre_proto::rpc::{BoxFuture, Connection};
use rustre_proto::{Caller, ONCE_SLOTS_MAX, Op, OpenFlags, ReclaimedHandle, Reply};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, SemaphorePermit, oneshot, watch};
use tokio::time::Instant;

use crate::error::{Error, Result};
use rustre_proto::Errno;

/// Most times one request is sent (the first time included) across reconnections.
pub const RESENDS_MAX: usize = 8;
/// The slowest pace of reconnection attempts.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a request waits for a connection by default (`ClientConfig::reconnect_wait`).
pub const RECONNECT_WAIT_DEFAULT: Duration = Duration::from_secs(120);
/// `ClientConfig::reconnect_wait` for requests that wait for their server as long as it takes
/// (an NFS `hard` mount): they end only with an answer, or when the client closes the session.
pub const RECONNECT_WAIT_FOREVER: Duration = Duration::MAX;
/// While the server stays unreachable, how often the log says so again.
pub const UNREACHABLE_REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// Handles and pins per `Op::Reclaim` request.
pub const RECLAIM_CHUNK: usize = 4096;
/// Most bytes of handles one `Op::Reclaim` carries, far below `HEADER_LEN_MAX` (1 MiB), counted
/// as `RECLAIMED_HANDLE_BYTES` plus 5 per group of each handle's opener (varints: at most).
pub const RECLAIM_CHUNK_BYTES: usize = 256 * 1024;
const RECLAIMED_HANDLE_BYTES: usize = 48;

/// A byte stream to a server.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

/// Opens a new stream to the server, for reconnections.
pub type Connector = Arc<dyn Fn() -> BoxFuture<std::io::Result<Box<dyn Stream>>> + Send + Sync>;

/// What happened to the session's link, for who mirrors the cache (a mount's kernel): told in
/// order, from the task that saw it, never from inside a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// The connection closed: nothing cached may be trusted any more.
    Lost,
    /// Connected again; `kept`: the session and all it held are as they were. Otherwise the server
    /// restarted and the session took back what it could.
    Resumed { kept: bool },
    /// The server no longer knew the session: a new one began, and the handles and pins of the
    /// old one are gone.
    NewSession,
    /// The machine was suspended this long (noticed within `SUSPEND_CHECK_PERIOD` of the
    /// resume). The client's trust counts it already; a mirror whose times to live ran on a
    /// clock that stopped meanwhile (the kernel's) must drop what it holds.
    Suspended { suspended: std::time::Duration },
}

/// Runs on every `LinkEvent`. Must return quickly.
pub type LinkHook = Arc<dyn Fn(&LinkEvent) + Send + Sync>;

#[derive(Clone)]
pub(crate) enum LinkState {
    Up {
        connection: Connection,
        generation: u64,
    },
    /// Reconnecting after the connection closed.
    Down,
    /// For good: the client closed the session, or cannot reconnect.
    Closed {
        reason: String,
    },
}

/// What the session holds on the server, learnt from replies: given back after a restart.
#[derive(Default)]
pub(crate) struct Holdings {
    /// Open handles: id -> (inode, flags, who opened it: the server checks a reclaim as that
    /// identity's open).
    pub handles: HashMap<u64, (u64, OpenFlags, Caller)>,
    /// Pinned inodes: ino -> count.
    pub pins: HashMap<u64, u64>,
    /// Handles of a session the server no longer knows: each use fails with EIO until closed.
    pub dead: HashSet<u64>,
    /// Pins of such a session: unpinning them succeeds without asking the server.
    pub lost_pins: HashMap<u64, u64>,
}

impl Holdings {
    /// The session is gone: every handle is dead, every pin lost.
    pub(crate) fn session_lost(&mut self) {
        self.dead.extend(self.handles.drain().map(|(handle, _)| handle));
        for (ino, count) in self.pins.drain() {
            *self.lost_pins.entry(ino).or_insert(0) += count;
        }
    }

    /// Learns from a successful reply what the session now holds.
    pub(crate) fn note(&mut self, op: &Op, reply: &Reply, caller: &Caller) {
        match (op, reply) {
            (Op::AtPath { op, .. } | Op::OnPath { op, .. }, reply) => self.note(op, reply, caller),
            (Op::Open { flags, .. } | Op::OpenIno { flags, .. }, Reply::Opened { handle, attr, .. }) => {
                let kept = OpenFlags(flags.0 & (OpenFlags::READ.0 | OpenFlags::WRITE.0 | OpenFlags::APPEND.0));
                self.handles.insert(*handle, (attr.ino, kept, caller.clone()));
                if flags.contains(OpenFlags::PIN) {
                    *self.pins.entry(attr.ino).or_insert(0) += 1;
                }
            }
            (Op::Pin { ino }, Reply::Done) => *self.pins.entry(*ino).or_insert(0) += 1,
            (Op::PinName { .. }, Reply::Entry { attr }) => *self.pins.entry(attr.ino).or_insert(0) += 1,
            (Op::Unpin { ino, count }, Reply::Done) => {
                if let Some(held) = self.pins.get_mut(ino) {
                    *held = held.saturating_sub(*count);
                    if *held == 0 {
                        self.pins.remove(ino);
                    }
                }
            }
            _ => {}
        }
    }

    /// A close was answered (or failed): the handle is no longer ours either way.
    pub(crate) fn closed(&mut self, handle: u64) {
        self.handles.remove(&handle);
    }

    /// The handle an op uses, if any.
    pub(crate) fn handle_of(op: &Op) -> Option<u64> {
        match op {
            Op::Read { handle, .. } | Op::Write { handle, .. } | Op::Fsync { handle } | Op::Close { handle } => {
                Some(*handle)
            }
            _ => None,
        }
    }

    /// What to give back to a restarted server, in chunks.
    pub(crate) fn reclaims(&self) -> Vec<Op> {
        // In order, so a replayed run (the simulator) reclaims as the first one did.
        let mut handles: Vec<ReclaimedHandle> = self
            .handles
            .iter()
            .map(|(&handle, (ino, flags, opener))| ReclaimedHandle {
                handle,
                ino: *ino,
                flags: *flags,
                opener: opener.clone(),
            })
            .collect();
        handles.sort_unstable_by_key(|handle| handle.handle);
        let mut pins: Vec<(u64, u64)> = self.pins.iter().map(|(&ino, &count)| (ino, count)).collect();
        pins.sort_unstable();
        // Handles carry their openers' groups, so a chunk is bounded by its size as well: a
        // frame header holds at most `HEADER_LEN_MAX`.
        let mut handle_chunks: Vec<Vec<ReclaimedHandle>> = Vec::new();
        let mut bytes = 0;
        for handle in handles {
            let size = RECLAIMED_HANDLE_BYTES + 5 * handle.opener.groups.len();
            match handle_chunks.last_mut() {
                Some(chunk) if chunk.len() < RECLAIM_CHUNK && bytes + size <= RECLAIM_CHUNK_BYTES => {
                    bytes += size;
                    chunk.push(handle);
                }
                _ => {
                    bytes = size;
                    handle_chunks.push(vec![handle]);
                }
            }
        }
        let mut chunks = Vec::new();
        let mut handles = handle_chunks.into_iter();
        let mut pins = pins.chunks(RECLAIM_CHUNK);
        loop {
            let (h, p) = (handles.next(), pins.next());
            if h.is_none() && p.is_none() && !chunks.is_empty() {
                break;
            }
            chunks.push(Op::Reclaim {
                handles: h.unwrap_or_default(),
                pins: p.unwrap_or_default().to_vec(),
                last: false,
            });
        }
        if let Some(Op::Reclaim { last, .. }) = chunks.last_mut() {
            *last = true;
        }
        chunks
    }
}

/// The slots of `Op::Once`: each request that changes state holds one until answered, with the
/// next sequence number of that slot.
pub(crate) struct Slots {
    permits: Semaphore,
    free: Mutex<Vec<(u32, u64)>>,
}

pub(crate) struct Slot<'a> {
    slots: &'a Slots,
    _permit: SemaphorePermit<'a>,
    pub slot: u32,
    pub seq: u64,
}

impl Slots {
    pub(crate) fn new() -> Slots {
        Slots {
            permits: Semaphore::new(ONCE_SLOTS_MAX as usize),
            free: Mutex::new((0..ONCE_SLOTS_MAX).rev().map(|slot| (slot, 1)).collect()),
        }
    }

    pub(crate) async fn take(&self) -> Slot<'_> {
        let permit = self.permits.acquire().await.expect("the slot semaphore is never closed");
        let (slot, seq) = self.free.lock().expect("slots lock").pop().expect("a permit means a free slot");
        Slot { slots: self, _permit: permit, slot, seq }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        // The next request on this slot is a new one: a higher sequence number.
        self.slots.free.lock().expect("slots lock").push((self.slot, self.seq + 1));
    }
}

/// A time the server has been unreachable (`Client::outage`): from the loss of the connection
/// until a new one is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outage {
    /// How long since the connection was lost.
    pub duration: Duration,
    /// Lines the log has had about it: the first when an attempt to reconnect failed, then one
    /// every `UNREACHABLE_REPORT_INTERVAL`.
    pub reports: u32,
    /// Requests waiting for a connection now.
    pub requests_waiting: usize,
    /// Requests that stopped waiting and failed during this outage (their `reconnect_wait` ran
    /// out).
    pub requests_gave_up: u64,
}

/// What the link remembers of the current outage, for the log.
pub(crate) struct OutageRecord {
    since: Instant,
    /// Why the connection closed.
    lost: String,
    /// When the log last said the server is unreachable; `None`: not yet.
    reported: Option<Instant>,
    reports: u32,
    gave_up: u64,
}

/// How long one request may still wait for a connection, all its waits counted.
pub(crate) struct Patience {
    left: Duration,
    /// Told once `left` has run out, if the request then waits on instead of failing
    /// (`Client::give_back`).
    exhausted: Option<oneshot::Sender<()>>,
}

impl Patience {
    /// Fails the request once it has waited `wait` in all.
    pub(crate) fn new(wait: Duration) -> Patience {
        Patience { left: wait, exhausted: None }
    }

    /// Tells `exhausted` once the request has waited `wait` in all, and waits on.
    pub(crate) fn telling(wait: Duration, exhausted: oneshot::Sender<()>) -> Patience {
        Patience { left: wait, exhausted: Some(exhausted) }
    }
}

/// Counts a request in `Link::waiting` while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The link: its state, the session id, and how to reconnect.
pub(crate) struct Link {
    pub state: watch::Sender<LinkState>,
    pub session: AtomicU64,
    pub connector: Option<Connector>,
    pub reconnect_wait: Duration,
    /// Set by `Client::close`: no reconnection after that.
    pub closing: AtomicBool,
    pub generations: AtomicU64,
    /// Requests waiting for a connection now.
    pub waiting: AtomicUsize,
    /// From the loss of a connection the reconnector replaces until the new one is up.
    pub outage: Mutex<Option<OutageRecord>>,
}

impl Link {
    /// The current connection, waiting while reconnecting (as long as `patience` lasts).
    pub(crate) async fn connection(&self, patience: &mut Patience) -> Result<(Connection, u64)> {
        match self.wait(patience, |state| !matches!(state, LinkState::Down)).await? {
            LinkState::Up { connection, generation } => Ok((connection, generation)),
            LinkState::Closed { reason } => Err(Error::new(Errno::ENOTCONN, reason)),
            LinkState::Down => unreachable!("waited for another state"),
        }
    }

    /// The connection of `generation` broke under a request: waits until a newer one is up (or
    /// the link is closed for good), as long as `patience` lasts.
    pub(crate) async fn after(&self, generation: u64, patience: &mut Patience) -> Result<()> {
        let newer = |state: &LinkState| match state {
            LinkState::Up { generation: current, .. } => *current > generation,
            LinkState::Down => false,
            LinkState::Closed { .. } => true,
        };
        self.wait(patience, newer).await.map(drop)
    }

    /// Waits until the link is `ready`, counted in `waiting` meanwhile, and takes the time it
    /// waited from `patience`.
    async fn wait(&self, patience: &mut Patience, mut ready: impl FnMut(&LinkState) -> bool) -> Result<LinkState> {
        let mut state = self.state.subscribe();
        {
            let now = state.borrow_and_update();
            if ready(&now) {
                return Ok(now.clone());
            }
        }
        let _waiting = Waiting::new(&self.waiting);
        let started = Instant::now();
        // Owned at once: the `Ref` holds the channel's lock.
        let waited =
            tokio::time::timeout(patience.left, async { state.wait_for(&mut ready).await.map(|state| state.clone()) })
                .await;
        patience.left = patience.left.saturating_sub(started.elapsed());
        let result = match (waited, patience.exhausted.take()) {
            (Ok(result), _) => result,
            (Err(_), Some(exhausted)) => {
                let _ = exhausted.send(());
                // From now on it waits as long as it takes, this wait and any later one (the
                // connection may break again while the request is in flight).
                patience.left = RECONNECT_WAIT_FOREVER;
                state.wait_for(&mut ready).await.map(|state| state.clone())
            }
            (Err(_), None) => {
                if let Some(outage) = self.outage.lock().expect("outage lock").as_mut() {
                    outage.gave_up += 1;
                }
                return Err(Error::new(
                    Errno::ENOTCONN,
                    format!("server unreachable: waited {:?} for a connection", self.reconnect_wait),
                ));
            }
        };
        result.map_err(|_| Error::new(Errno::ENOTCONN, "the session is gone"))
    }

    /// The connection closed with `reason` and the reconnector starts.
    pub(crate) fn lost(&self, reason: &str) {
        let record =
            OutageRecord { since: Instant::now(), lost: reason.to_string(), reported: None, reports: 0, gave_up: 0 };
        *self.outage.lock().expect("outage lock") = Some(record);
    }

    /// A reconnection attempt to `peer` failed with `error`: the first says the server is
    /// unreachable, and then one every `UNREACHABLE_REPORT_INTERVAL`.
    pub(crate) fn attempt_failed(&self, peer: &str, error: &Error) {
        let mut outage = self.outage.lock().expect("outage lock");
        let Some(outage) = outage.as_mut() else { return };
        let now = Instant::now();
        let waiting = requests(self.waiting.load(Ordering::Relaxed));
        match outage.reported {
            None => {
                let patience = match self.reconnect_wait {
                    RECONNECT_WAIT_FOREVER => "for as long as it takes".to_string(),
                    wait => format!("each for at most {}s", wait.as_secs_f64()),
                };
                tracing::warn!(
                    "server {peer} unreachable: {}, then {error}; {waiting} waiting, {patience}; retrying",
                    outage.lost
                );
            }
            Some(last) if now.duration_since(last) >= UNREACHABLE_REPORT_INTERVAL => {
                tracing::warn!(
                    "server {peer} still unreachable after {}s: {error}; {waiting} waiting, {} gave up; retrying",
                    now.duration_since(outage.since).as_secs(),
                    outage.gave_up
                );
            }
            Some(_) => {
                tracing::debug!(peer, %error, "reconnection failed; trying again");
                return;
            }
        }
        outage.reported = Some(now);
        outage.reports += 1;
    }

    /// Connected to `peer` again, as `event` says: ends the outage and says so.
    pub(crate) fn restored(&self, peer: &str, event: &LinkEvent) {
        let Some(outage) = self.outage.lock().expect("outage lock").take() else { return };
        let what = match event {
            LinkEvent::Resumed { kept: true } => "session resumed",
            LinkEvent::Resumed { kept: false } => {
                "session resumed; the restarted server took back its handles and pins"
            }
            LinkEvent::NewSession => {
                "the server no longer knew the session: a new one began, and files open in the old one fail with EIO"
            }
            LinkEvent::Lost | LinkEvent::Suspended { .. } => unreachable!("a connection is restored with a session"),
        };
        let gave_up = match outage.gave_up {
            0 => String::new(),
            count => format!("; {} gave up meanwhile", requests(count as usize)),
        };
        let lost = outage.lost;
        let after = format!("{:.1}s", outage.since.elapsed().as_secs_f64());
        match (outage.reported, event) {
            (None, LinkEvent::NewSession) => {
                tracing::warn!("connection to server {peer} lost ({lost}) and restored; {what}")
            }
            (None, _) => tracing::info!("connection to server {peer} lost ({lost}) and restored at once; {what}"),
            (Some(_), LinkEvent::NewSession) => {
                tracing::warn!("server {peer} reachable again after {after}; {what}{gave_up}");
            }
            (Some(_), _) => tracing::info!("server {peer} reachable again after {after}; {what}{gave_up}"),
        }
    }

    /// The current outage, if any.
    pub(crate) fn outage(&self) -> Option<Outage> {
        let outage = self.outage.lock().expect("outage lock");
        outage.as_ref().map(|outage| Outage {
            duration: outage.since.elapsed(),
            reports: outage.reports,
            requests_waiting: self.waiting.load(Ordering::Relaxed),
            requests_gave_up: outage.gave_up,
        })
    }

    pub(crate) fn can_reconnect(&self) -> bool {
        self.connector.is_some() && !self.closing.load(Ordering::Relaxed)
    }
}

/// "1 request", "2 requests".
fn requests(count: usize) -> String {
    match count {
        1 => "1 request".to_string(),
        count => format!("{count} requests"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link to no server, down since `lost`.
    fn link_down(reconnect_wait: Duration) -> Link {
        let (state, _) = watch::channel(LinkState::Down);
        let link = Link {
            state,
            session: AtomicU64::new(1),
            connector: None,
            reconnect_wait,
            closing: AtomicBool::new(false),
            generations: AtomicU64::new(1),
            waiting: AtomicUsize::new(0),
            outage: Mutex::new(None),
        };
        link.lost("peer closed the connection");
        link
    }

    fn reports(link: &Link) -> u32 {
        link.outage().expect("an outage").reports
    }

    // What drives the log about an outage: the first failed attempt to reconnect reports it, the
    // next ones (every second at the reconnector's slowest) stay quiet until an interval has
    // passed, then one more report; once restored, there is no outage left to report.
    #[tokio::test(start_paused = true)]
    async fn an_outage_is_reported_once_then_once_an_interval() {
        let link = link_down(RECONNECT_WAIT_FOREVER);
        let refused = Error::new(Errno::ETIMEDOUT, "connecting: timed out");
        assert_eq!(reports(&link), 0, "nothing said before an attempt failed");
        link.attempt_failed("server", &refused);
        assert_eq!(reports(&link), 1);
        for _ in 1..UNREACHABLE_REPORT_INTERVAL.as_secs() {
            tokio::time::advance(RECONNECT_BACKOFF_MAX).await;
            link.attempt_failed("server", &refused);
            assert_eq!(reports(&link), 1, "quiet within the interval");
        }
        tokio::time::advance(RECONNECT_BACKOFF_MAX).await;
        link.attempt_failed("server", &refused);
        assert_eq!(reports(&link), 2, "said again after the interval");
        assert_eq!(link.outage().unwrap().duration, UNREACHABLE_REPORT_INTERVAL);
        link.restored("server", &LinkEvent::Resumed { kept: true });
        assert_eq!(link.outage(), None);
        link.attempt_failed("server", &refused);
        assert_eq!(link.outage(), None, "a late failure reports no outage");
    }

    // A request's patience is counted in all its waits: a request that waited it out fails
    // (ENOTCONN), counted as given up, and a later wait of the same request fails at once. While
    // it waits, it is counted as waiting.
    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_a_connection_as_long_as_its_patience() {
        let wait = Duration::from_secs(30);
        let link = link_down(wait);
        let mut patience = Patience::new(wait);
        let started = Instant::now();
        {
            let mut connecting = std::pin::pin!(link.connection(&mut patience));
            assert!(futures::poll!(&mut connecting).is_pending());
            assert_eq!(link.outage().unwrap().requests_waiting, 1);
            let Err(error) = connecting.await else { panic!("no connection came") };
            assert_eq!(error.errno, Errno::ENOTCONN);
        }
        assert_eq!(started.elapsed(), wait);
        let outage = link.outage().unwrap();
        assert_eq!((outage.requests_waiting, outage.requests_gave_up), (0, 1));
        let again = Instant::now();
        assert_eq!(link.after(1, &mut patience).await.expect_err("patience spent").errno, Errno::ENOTCONN);
        assert_eq!(again.elapsed(), Duration::ZERO, "a spent patience waits no more");
        assert_eq!(link.outage().unwrap().requests_gave_up, 2);
    }

    // A give-back's patience tells when it has run out and waits on, until the link changes
    // (here: closed for good); it is never counted as given up. It waits on also the next time
    // it needs a connection (the link broke again while it was in flight), rather than fail.
    #[tokio::test(start_paused = true)]
    async fn a_give_back_waits_on_after_its_patience() {
        let wait = Duration::from_secs(30);
        let link = link_down(wait);
        let (exhausted, told) = oneshot::channel();
        let mut patience = Patience::telling(wait, exhausted);
        {
            let connecting = link.connection(&mut patience);
            tokio::pin!(connecting);
            let mut told = std::pin::pin!(told);
            tokio::select! {
                _ = &mut connecting => panic!("the link is down"),
                told = &mut told => told.expect("told that the patience ran out"),
            }
            assert!(futures::poll!(&mut connecting).is_pending(), "waits on");
            tokio::time::advance(Duration::from_secs(3600)).await;
            assert!(futures::poll!(&mut connecting).is_pending(), "for as long as it takes");
            assert_eq!(link.outage().unwrap().requests_waiting, 1);
        }
        // A second wait, as after a break while the request was in flight.
        let again = link.connection(&mut patience);
        tokio::pin!(again);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(futures::poll!(&mut again).is_pending(), "the second wait waits on too");
        link.state.send_replace(LinkState::Closed { reason: "client closed the session".into() });
        let Err(error) = again.await else { panic!("closed for good") };
        assert_eq!(error.errno, Errno::ENOTCONN);
        assert_eq!(link.outage().unwrap().requests_gave_up, 0);
    }

    // Handles carry their openers' groups: with many handles of users in many groups, every
    // reclaim still fits a frame header.
    #[test]
    fn reclaims_fit_a_frame_whatever_the_openers_groups() {
        let mut holdings = Holdings::default();
        let opener = Caller { uid: 1000, gid: 1000, groups: (0..300).map(|group| 4_000_000_000 - group).collect() };
        for handle in 0..5000 {
            holdings.handles.insert(handle, (handle + 10, OpenFlags::READ, opener.clone()));
        }
        let chunks = holdings.reclaims();
        let mut handles = 0;
        for chunk in &chunks {
            let request = rustre_proto::Request { caller: opener.clone(), op: chunk.clone() };
            let header = rustre_proto::frame::encode_header(&request);
            assert!(header.len() <= rustre_proto::frame::HEADER_LEN_MAX, "{} bytes", header.len());
            if let Op::Reclaim { handles: chunk, .. } = chunk {
                handles += chunk.len();
            }
        }
        assert_eq!(handles, 5000);
        assert!(matches!(chunks.last(), Some(Op::Reclaim { last: true, .. })));
    }
}
