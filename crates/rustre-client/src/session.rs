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
//! Bounds: a request waits at most `ClientConfig::reconnect_wait` for a link, and is sent at most
//! `RESENDS_MAX` times; the reconnector retries every `RECONNECT_BACKOFF_MAX` at the slowest.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustre_proto::rpc::{BoxFuture, Connection};
use rustre_proto::{Caller, ONCE_SLOTS_MAX, Op, OpenFlags, ReclaimedHandle, Reply};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, SemaphorePermit, watch};

use crate::error::{Error, Result};
use rustre_proto::Errno;

/// Most times one request is sent (the first time included) across reconnections.
pub const RESENDS_MAX: usize = 8;
/// The slowest pace of reconnection attempts.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a request waits for a connection by default (`ClientConfig::reconnect_wait`).
pub const RECONNECT_WAIT_DEFAULT: Duration = Duration::from_secs(120);
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

/// The link: its state, the session id, and how to reconnect.
pub(crate) struct Link {
    pub state: watch::Sender<LinkState>,
    pub session: AtomicU64,
    pub connector: Option<Connector>,
    pub reconnect_wait: Duration,
    /// Set by `Client::close`: no reconnection after that.
    pub closing: AtomicBool,
    pub generations: AtomicU64,
}

impl Link {
    /// The current connection, waiting (bounded) while reconnecting.
    pub(crate) async fn connection(&self) -> Result<(Connection, u64)> {
        let mut state = self.state.subscribe();
        let wait = tokio::time::timeout(self.reconnect_wait, state.wait_for(|state| !matches!(state, LinkState::Down)));
        let state = match wait.await {
            Ok(Ok(state)) => state.clone(),
            Ok(Err(_)) => return Err(Error::new(Errno::ENOTCONN, "the session is gone")),
            Err(_) => {
                return Err(Error::new(
                    Errno::ENOTCONN,
                    format!("no connection to the server within {:?}", self.reconnect_wait),
                ));
            }
        };
        match state {
            LinkState::Up { connection, generation } => Ok((connection, generation)),
            LinkState::Closed { reason } => Err(Error::new(Errno::ENOTCONN, reason)),
            LinkState::Down => unreachable!("waited for another state"),
        }
    }

    /// The connection of `generation` broke under a request: waits until a newer one is up (or
    /// the link is closed for good).
    pub(crate) async fn after(&self, generation: u64) -> Result<()> {
        let mut state = self.state.subscribe();
        let newer = |state: &LinkState| match state {
            LinkState::Up { generation: current, .. } => *current > generation,
            LinkState::Down => false,
            LinkState::Closed { .. } => true,
        };
        match tokio::time::timeout(self.reconnect_wait, state.wait_for(newer)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::new(Errno::ENOTCONN, "the session is gone")),
            Err(_) => Err(Error::new(
                Errno::ENOTCONN,
                format!("no connection to the server within {:?}", self.reconnect_wait),
            )),
        }
    }

    pub(crate) fn can_reconnect(&self) -> bool {
        self.connector.is_some() && !self.closing.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
