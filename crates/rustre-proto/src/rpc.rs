//! A two-way RPC connection over any byte stream.
//!
//! Either side may send requests; each side numbers its own requests, and a reply carries the id
//! of the request it answers, so both id spaces live on one connection without clashing. The
//! server uses this to call its clients (liveness pings now, lease revocations later) on the
//! connection they opened.
//!
//! Tasks: one reader and one writer per connection, plus one task per incoming request (bounded
//! by `IN_FLIGHT_REQUESTS_MAX`, after which the reader stops reading: back-pressure on the peer).
//! Locks: `Inner::pending` is a std mutex held only for map operations, never across an await.
//!
//! **Architecture Invariant**: after `close`, no call waits forever: `close` marks the pending
//! table closed and drops every waiting sender under the same lock that `call` inserts under.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::frame::{Frame, FrameError, FrameKind, read_frame, write_frame};

/// Incoming requests handled at once on one connection.
pub const IN_FLIGHT_REQUESTS_MAX: usize = 256;
/// Frames queued for the writer task before senders wait.
pub const OUTBOUND_QUEUE_DEPTH: usize = 1024;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What one side does with the requests its peer sends.
pub trait Service: Send + Sync + 'static {
    /// Handles one request frame and returns the reply's header and payload.
    fn call(&self, request: Frame) -> BoxFuture<(Bytes, Bytes)>;
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("connection {name} closed: {reason}")]
pub struct ConnectionClosed {
    pub name: String,
    pub reason: String,
}

struct Pending {
    closed: bool,
    waiting: HashMap<u64, oneshot::Sender<Frame>>,
}

struct Inner {
    name: String,
    outbound: mpsc::Sender<Frame>,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    /// `Some(reason)` once closed; the reader and writer tasks watch it.
    closed: watch::Sender<Option<String>>,
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
            pending: Mutex::new(Pending {
                closed: false,
                waiting: HashMap::new(),
            }),
            next_id: AtomicU64::new(1),
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
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        {
            let mut pending = self.inner.pending.lock().expect("pending lock poisoned");
            if pending.closed {
                drop(pending);
                return Err(self.closed_error());
            }
            let previous = pending.waiting.insert(id, sender);
            assert!(previous.is_none(), "request ids are never reused on a connection");
        }
        // If this future is dropped before the reply, forget the id so the table stays bounded.
        let _forget = ForgetOnDrop { inner: &self.inner, id };
        let frame = Frame {
            kind: FrameKind::Request,
            id,
            header,
            payload,
        };
        if self.inner.outbound.send(frame).await.is_err() {
            return Err(self.closed_error());
        }
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
        pending.waiting.clear();
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
        let reason = self
            .inner
            .closed
            .borrow()
            .clone()
            .unwrap_or_else(|| "closing".to_string());
        ConnectionClosed {
            name: self.inner.name.clone(),
            reason,
        }
    }

    async fn read_loop<R: AsyncRead + Unpin + Send + 'static>(self, read_half: R, service: Arc<dyn Service>) {
        let mut reader = BufReader::with_capacity(64 * 1024, read_half);
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_REQUESTS_MAX));
        let mut closed = self.inner.closed.subscribe();
        let reason = loop {
            let frame = tokio::select! {
                frame = read_frame(&mut reader) => frame,
                _ = closed.wait_for(|state| state.is_some()) => return,
            };
            let frame = match frame {
                Ok(frame) => frame,
                Err(FrameError::Closed) => break "peer closed the connection".to_string(),
                Err(error) => {
                    tracing::warn!(connection = %self.inner.name, %error, "dropping connection: malformed input");
                    break format!("malformed input: {error}");
                }
            };
            match frame.kind {
                FrameKind::Reply => {
                    let waiter = self
                        .inner
                        .pending
                        .lock()
                        .expect("pending lock poisoned")
                        .waiting
                        .remove(&frame.id);
                    match waiter {
                        // The caller may have given up; its reply is dropped.
                        Some(waiter) => drop(waiter.send(frame)),
                        None => {
                            tracing::debug!(connection = %self.inner.name, id = frame.id, "reply to a forgotten request")
                        }
                    }
                }
                FrameKind::Request => {
                    let permit = in_flight.clone().acquire_owned().await.expect("semaphore never closed");
                    let service = service.clone();
                    let outbound = self.inner.outbound.clone();
                    tokio::spawn(async move {
                        let id = frame.id;
                        let (header, payload) = service.call(frame).await;
                        // A closed connection drops the reply: nobody is left to read it.
                        let _ = outbound
                            .send(Frame {
                                kind: FrameKind::Reply,
                                id,
                                header,
                                payload,
                            })
                            .await;
                        drop(permit);
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

struct ForgetOnDrop<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.inner.pending.lock() {
            pending.waiting.remove(&self.id);
        }
    }
}
