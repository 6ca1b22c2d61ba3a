//! A two-way RPC connection over any byte stream.
//!
//! Either side may send requests; each side numbers its own requests, and a reply carries the id
//! of the request it answers, so both id spaces live on one connection without clashing. The
//! server uses this to call its clients (liveness pings, lease revocations) on the
//! connection they opened.
//!
//! Tasks: one reader and one writer per connection, plus one task per incoming request.
//!
//! Flow control: each side keeps at most `IN_FLIGHT_REQUESTS_MAX` of its own requests
//! outstanding (`call` waits for a slot), so the receiving side never has more than that many in
//! flight and its reader never has to stop reading. That matters: a reader that stopped would not
//! read the replies to its own side's calls either, and a handler waiting for such a reply (a
//! server waiting for a revocation to be acknowledged) would wait forever. A peer that sends more
//! breaks the protocol and is disconnected. A request's slot is given back before its reply is
//! queued, so a peer that sends its next request on seeing the reply always finds a free slot.
//! Locks: `Inner::pending` is a std mutex held only for map operations, never across an await.
//!
//! **Architecture Invariant**: after `close`, no call waits forever: `close` marks the pending
//! table closed and drops every waiting sender under the same lock that `call` inserts under.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::frame::{Frame, FrameError, FrameKind, read_frame, write_frame};

/// Requests one side may have outstanding on a connection: the bound each sender keeps for its
/// own calls, and the most a receiver accepts before it cuts the peer off.
pub const IN_FLIGHT_REQUESTS_MAX: usize = 256;
/// Frames queued for the writer task before senders wait.
pub const OUTBOUND_QUEUE_DEPTH: usize = 1024;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What one side does with the requests its peer sends.
///
/// Ordering: `call` itself (before its future first runs) and `observe_reply` run in the
/// connection's reader task, one frame at a time, in the order the frames arrived. So what they do
/// synchronously (the client applying a lease revocation, or the grants of a reply, to its cache)
/// happens in wire order. They must not block.
pub trait Service: Send + Sync + 'static {
    /// Handles one request frame and returns the reply's header and payload.
    fn call(&self, request: Frame) -> BoxFuture<(Bytes, Bytes)>;

    /// Sees each reply to one of our own requests before its caller does, with the stamp its
    /// request was sent with (`Connection::call_stamped`; 0 for `call`), if the request is
    /// still known.
    fn observe_reply(&self, _reply: &Frame, _stamp: Option<u64>) {}
}

/// The reason `Connection::closed` gives when the peer closed its end between frames (an EOF, or
/// a reset from a peer that went away): the peer knows the connection is gone.
pub const PEER_CLOSED: &str = "peer closed the connection";

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("connection {name} closed: {reason}")]
pub struct ConnectionClosed {
    pub name: String,
    pub reason: String,
}

struct Pending {
    closed: bool,
    /// In id order: closing fails them oldest first, the same way on every run (the simulator
    /// replays a seed exactly), and the oldest is at hand.
    waiting: BTreeMap<u64, Waiter>,
}

/// A sent request awaiting its reply. It keeps its slot until the reply comes (or the connection
/// closes) even if its caller gives up, since the peer is still working on it: so the number of
/// our requests the peer holds never exceeds the bound.
struct Waiter {
    reply: oneshot::Sender<Frame>,
    /// What the caller stamped the request with (`call_stamped`).
    stamp: u64,
    _slot: OwnedSemaphorePermit,
}

struct Inner {
    name: String,
    outbound: mpsc::Sender<Frame>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    /// `Some(reason)` once closed; the reader and writer tasks watch it.
    closed: watch::Sender<Option<String>>,
    /// Slots for our own requests awaiting replies; closed when the connection closes.
    outgoing: Arc<Semaphore>,
}

/// A handle on a running connection; cloning it shares the connection.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl Connection {
    /// Starts the reader and writer tasks on `stream` (which has passed its handshake) and
    /// dispatches the peer's requests to `service`. `name` identifies the connection in logs.
    pub fn start<S>(stream: S, service: Arc<dyn Service>, name: String) -> Connection
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(stream);
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE_DEPTH);
        let (closed, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            name,
            outbound,
            pending: Mutex::new(Pending { closed: false, waiting: BTreeMap::new() }),
            next_id: AtomicU64::new(1),
            outgoing: Arc::new(Semaphore::new(IN_FLIGHT_REQUESTS_MAX)),
            closed,
        });
        let connection = Connection { inner };
        tokio::spawn(connection.clone().write_loop(write_half, outbound_rx));
        tokio::spawn(connection.clone().read_loop(read_half, service));
        connection
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Sends a request and waits for its reply frame.
    pub async fn call(&self, header: Bytes, payload: Bytes) -> Result<Frame, ConnectionClosed> {
        self.call_stamped(header, payload, 0).await
    }

    /// `call`, with a stamp the service sees beside the reply (`Service::observe_reply`): a
    /// client stamps each request with when it was sent.
    pub async fn call_stamped(&self, header: Bytes, payload: Bytes, stamp: u64) -> Result<Frame, ConnectionClosed> {
        let Ok(slot) = self.inner.outgoing.clone().acquire_owned().await else {
            return Err(self.closed_error());
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        {
            let mut pending = self.inner.pending.lock().expect("pending lock poisoned");
            if pending.closed {
                drop(pending);
                return Err(self.closed_error());
            }
            let previous = pending.waiting.insert(id, Waiter { reply: sender, stamp, _slot: slot });
            assert!(previous.is_none(), "request ids are never reused on a connection");
        }
        // Until the request is queued, giving up (or failing) must take its entry back: the peer
        // will never answer a request it never got.
        let mut unsent = Unsent { inner: &self.inner, id: Some(id) };
        let frame = Frame { kind: FrameKind::Request, id, header, payload };
        if self.inner.outbound.send(frame).await.is_err() {
            return Err(self.closed_error());
        }
        unsent.id = None;
        match receiver.await {
            Ok(reply) => {
                debug_assert_eq!(reply.id, id);
                Ok(reply)
            }
            Err(_) => Err(self.closed_error()),
        }
    }

    /// Closes the connection; pending and future calls fail with `ConnectionClosed`.
    pub fn close(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let first = self.inner.closed.send_if_modified(|state| {
            if state.is_none() {
                *state = Some(reason.clone());
                true
            } else {
                false
            }
        });
        if first {
            tracing::debug!(connection = %self.inner.name, %reason, "connection closed");
        }
        let mut pending = self.inner.pending.lock().expect("pending lock poisoned");
        pending.closed = true;
        // Oldest first (a `BTreeMap` drops in key order): each waiter wakes with the error.
        pending.waiting.clear();
        drop(pending);
        self.inner.outgoing.close();
    }

    /// The id every request sent from now on will be above (for ordering checks by callers).
    pub fn next_request_id(&self) -> u64 {
        self.inner.next_id.load(Ordering::Relaxed)
    }

    /// The smallest id of our requests still awaiting a reply, if any.
    pub fn oldest_pending_id(&self) -> Option<u64> {
        self.inner.pending.lock().expect("pending lock poisoned").waiting.keys().next().copied()
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.borrow().is_some()
    }

    /// Waits until the connection is closed, and returns why.
    pub async fn closed(&self) -> String {
        let mut watcher = self.inner.closed.subscribe();
        loop {
            if let Some(reason) = watcher.borrow_and_update().clone() {
                return reason;
            }
            if watcher.changed().await.is_err() {
                return "connection dropped".to_string();
            }
        }
    }

    fn closed_error(&self) -> ConnectionClosed {
        let reason = self.inner.closed.borrow().clone().unwrap_or_else(|| "closing".to_string());
        ConnectionClosed { name: self.inner.name.clone(), reason }
    }

    async fn read_loop<R: AsyncRead + Unpin + Send + 'static>(self, read_half: R, service: Arc<dyn Service>) {
        let mut reader = BufReader::with_capacity(64 * 1024, read_half);
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_REQUESTS_MAX));
        let mut closed = self.inner.closed.subscribe();
        let reason = loop {
            let frame = tokio::select! {
                biased;
                frame = read_frame(&mut reader) => frame,
                _ = closed.wait_for(|state| state.is_some()) => return,
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(FrameError::Closed) => break PEER_CLOSED.to_string(),
                // A peer that exits without closing cleanly resets the connection: broken, not
                // malformed, and ordinary (the session's fate is logged where it is decided).
                Err(FrameError::Io(error)) => {
                    tracing::debug!(connection = %self.inner.name, %error, "connection broke");
                    break format!("connection broke: {error}");
                }
                Err(error) => {
                    tracing::warn!(connection = %self.inner.name, %error, "dropping connection: malformed input");
                    break format!("malformed input: {error}");
                }
            };
            match frame.kind {
                FrameKind::Reply => {
                    // Observed while its request still counts as pending (`oldest_pending_id`).
                    let stamp = self
                        .inner
                        .pending
                        .lock()
                        .expect("pending lock poisoned")
                        .waiting
                        .get(&frame.id)
                        .map(|waiter| waiter.stamp);
                    service.observe_reply(&frame, stamp);
                    let waiter = self.inner.pending.lock().expect("pending lock poisoned").waiting.remove(&frame.id);
                    match waiter {
                        // The caller may have given up; its reply is dropped.
                        Some(waiter) => drop(waiter.reply.send(frame)),
                        None => {
                            tracing::debug!(connection = %self.inner.name, id = frame.id, "reply to a forgotten request")
                        }
                    }
                }
                FrameKind::Request => {
                    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                        tracing::warn!(connection = %self.inner.name, "dropping connection: peer exceeded {IN_FLIGHT_REQUESTS_MAX} requests in flight");
                        break format!("peer exceeded {IN_FLIGHT_REQUESTS_MAX} requests in flight");
                    };
                    let id = frame.id;
                    // The synchronous part of the handler runs here, in wire order.
                    let handler = service.call(frame);
                    let connection = self.clone();
                    tokio::spawn(async move {
                        // The handler runs in a task of its own so that a panic in it (a bug) is
                        // caught here: its caller would otherwise wait for a reply forever.
                        let handled = tokio::spawn(handler).await;
                        drop(permit);
                        match handled {
                            Ok((header, payload)) => {
                                // A closed connection drops the reply: nobody is left to read it.
                                let reply = Frame { kind: FrameKind::Reply, id, header, payload };
                                let _ = connection.inner.outbound.send(reply).await;
                            }
                            Err(error) => {
                                tracing::error!(connection = %connection.inner.name, id, %error, "request handler failed; closing the connection");
                                connection.close(format!("request handler failed: {error}"));
                            }
                        }
                    });
                }
            }
        };
        self.close(reason);
    }

    async fn write_loop<W: AsyncWrite + Unpin + Send + 'static>(self, write_half: W, mut queue: mpsc::Receiver<Frame>) {
        let mut writer = BufWriter::with_capacity(64 * 1024, write_half);
        let mut closed = self.inner.closed.subscribe();
        loop {
            let frame = tokio::select! {
                biased;
                frame = queue.recv() => frame,
                _ = closed.wait_for(|state| state.is_some()) => break,
            };
            let Some(frame) = frame else { break };
            let mut result = write_frame(&mut writer, &frame).await;
            // Write whatever else is queued before one flush: many small frames, one syscall.
            while result.is_ok() {
                match queue.try_recv() {
                    Ok(frame) => result = write_frame(&mut writer, &frame).await,
                    Err(_) => break,
                }
            }
            if let Err(error) = result.and(writer.flush().await) {
                self.close(format!("write failed: {error}"));
                break;
            }
        }
        let _ = writer.shutdown().await;
    }
}

struct Unsent<'a> {
    inner: &'a Inner,
    id: Option<u64>,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id
            && let Ok(mut pending) = self.inner.pending.lock()
        {
            pending.waiting.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::write_frame;

    /// Answers every request with its own header, after letting other tasks run.
    struct Echo;

    impl Service for Echo {
        fn call(&self, request: Frame) -> BoxFuture<(Bytes, Bytes)> {
            Box::pin(async move {
                tokio::task::yield_now().await;
                (request.header, request.payload)
            })
        }
    }

    // Four times the in-flight bound of calls at once from both sides of one connection all get
    // their own replies: callers wait for slots, so neither reader is ever overrun.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_calls_both_ways_complete() {
        let (left, right) = tokio::io::duplex(64 * 1024);
        let left = Connection::start(left, Arc::new(Echo), "left".into());
        let right = Connection::start(right, Arc::new(Echo), "right".into());
        let calls = (0..IN_FLIGHT_REQUESTS_MAX * 4).map(|index| {
            let connection = if index % 2 == 0 { left.clone() } else { right.clone() };
            tokio::spawn(async move {
                let header = Bytes::from(index.to_le_bytes().to_vec());
                let reply = connection.call(header.clone(), Bytes::new()).await.unwrap();
                assert_eq!(reply.header, header);
            })
        });
        for call in calls.collect::<Vec<_>>() {
            call.await.unwrap();
        }
    }

    /// Never answers: holds every request forever.
    struct Silent;

    impl Service for Silent {
        fn call(&self, _request: Frame) -> BoxFuture<(Bytes, Bytes)> {
            Box::pin(std::future::pending())
        }
    }

    // A peer that ignores the bound and sends one request too many is disconnected, and calls
    // waiting on that connection fail instead of hanging.
    #[tokio::test]
    async fn a_peer_exceeding_the_bound_is_disconnected() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let connection = Connection::start(ours, Arc::new(Silent), "test".into());
        let waiting = tokio::spawn({
            let connection = connection.clone();
            async move { connection.call(Bytes::new(), Bytes::new()).await }
        });
        for id in 0..=IN_FLIGHT_REQUESTS_MAX as u64 {
            let frame = Frame { kind: FrameKind::Request, id, header: Bytes::new(), payload: Bytes::new() };
            write_frame(&mut theirs, &frame).await.unwrap();
        }
        let reason = connection.closed().await;
        assert!(reason.contains("requests in flight"), "{reason}");
        assert!(waiting.await.unwrap().is_err());
    }

    /// Holds every request until released, counting how many it holds at once.
    struct Gate {
        open: Arc<tokio::sync::Notify>,
    }

    impl Service for Gate {
        fn call(&self, request: Frame) -> BoxFuture<(Bytes, Bytes)> {
            let open = self.open.clone();
            Box::pin(async move {
                open.notified().await;
                (request.header, request.payload)
            })
        }
    }

    // Calls given up by their callers keep their slots while the peer still holds them, so a
    // sender that abandons calls never overruns the peer's bound (which would cut it off), and
    // its next call goes out once the peer answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_calls_keep_their_slots() {
        let (left, right) = tokio::io::duplex(1 << 20);
        let gate = Arc::new(tokio::sync::Notify::new());
        let caller = Connection::start(left, Arc::new(Echo), "caller".into());
        let holder = Connection::start(right, Arc::new(Gate { open: gate.clone() }), "holder".into());
        for _ in 0..IN_FLIGHT_REQUESTS_MAX {
            let abandoned =
                tokio::time::timeout(std::time::Duration::from_millis(1), caller.call(Bytes::new(), Bytes::new()))
                    .await;
            assert!(abandoned.is_err(), "the holder answers nothing yet");
        }
        let next = tokio::spawn({
            let caller = caller.clone();
            async move { caller.call(Bytes::from_static(b"next"), Bytes::new()).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!next.is_finished(), "no slot is free while the holder holds the abandoned calls");
        assert!(!holder.is_closed(), "the holder was never sent more than the bound");
        // Release the held requests (and the next one) until the next call has its reply.
        while !next.is_finished() {
            gate.notify_waiters();
            tokio::task::yield_now().await;
        }
        assert_eq!(next.await.unwrap().unwrap().header, Bytes::from_static(b"next"));
        assert!(!holder.is_closed() && !caller.is_closed());
    }
}
