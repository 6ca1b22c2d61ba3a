//! The rustre server: accepts connections, runs the hello handshake, keeps one session per
//! connection with its open handles, and answers requests from the store.
//!
//! Tasks and locks (no lock is held across an await):
//! - one accept task; per connection the RPC reader and writer tasks and one task per request
//!   (`rustre_proto::rpc`), plus a ping task;
//! - the commit thread (`rustre_store::Committer`) owns the open-handle counts (`OpenCounts`), so
//!   opens, closes, unlinks and destroys are ordered by that one thread without a lock;
//! - `Session::handles` (std mutex) maps a session's handle ids to inodes;
//! - `InodeLocks` (async RwLock per inode) orders data writes, truncates and reads of one file.
//!   Order: an inode lock may be held while waiting for the commit thread; the commit thread
//!   never waits for an inode lock. So no cycle, no deadlock.

mod locks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustre_proto::clock::{Clock, SystemClock};
use rustre_proto::frame::{Frame, FrameKind, encode_header, read_frame, write_frame};
use rustre_proto::msg::{FILE_SIZE_MAX, IO_SIZE_MAX, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use rustre_proto::rpc::{BoxFuture, Connection, Service};
use rustre_proto::{
    Attr, Callback, CallbackReply, Errno, FileKind, HELLO_MAGIC, Op, OpenFlags, ROOT_INO, Reply, ReplyHeader, Request,
    SetAttrIn, StatFs, WireError,
};
use rustre_store::{Committer, Ns, Opened, Store, StoreError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::locks::InodeLocks;

/// Open handles one session may hold by default; the next open gets EMFILE.
pub const HANDLES_PER_SESSION_MAX: usize = 65536;
/// How long a new connection has to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for connection tasks to let go of the store.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Name reported in the hello reply.
    pub server_name: String,
    /// How often the server pings each client on its connection.
    pub ping_interval: Duration,
    /// A client that does not answer a ping within this is disconnected.
    pub ping_timeout: Duration,
    /// Open handles one session may hold; the next open gets EMFILE.
    pub handles_per_session_max: usize,
    pub clock: Arc<dyn Clock>,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
            server_name: format!("rustre {}", env!("CARGO_PKG_VERSION")),
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(30),
            handles_per_session_max: HANDLES_PER_SESSION_MAX,
            clock: Arc::new(SystemClock),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("listening on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
}

/// Open handles per inode, owned by the commit thread.
#[derive(Default)]
pub struct OpenCounts {
    counts: HashMap<u64, u32>,
}

impl OpenCounts {
    fn acquire(&mut self, ino: u64) {
        *self.counts.entry(ino).or_insert(0) += 1;
    }

    /// Returns true when this was the last handle.
    fn release(&mut self, ino: u64) -> bool {
        let count = self.counts.get_mut(&ino).expect("a released inode was acquired");
        assert!(*count > 0, "open counts never go below zero");
        *count -= 1;
        if *count == 0 {
            self.counts.remove(&ino);
            true
        } else {
            false
        }
    }

    fn is_open(&self, ino: u64) -> bool {
        self.counts.contains_key(&ino)
    }
}

/// Destroys the inodes this operation unlinked that nobody holds open; the others stay orphans.
fn reap(ns: &mut Ns<'_>, opens: &OpenCounts) -> Result<(), StoreError> {
    for ino in std::mem::take(&mut ns.newly_unlinked) {
        if !opens.is_open(ino) {
            ns.destroy(ino)?;
        }
    }
    Ok(())
}

struct Handle {
    ino: u64,
    flags: OpenFlags,
}

struct Handles {
    closed: bool,
    next: u64,
    map: HashMap<u64, Handle>,
    /// Opens in flight that have a slot kept for their handle (so EMFILE comes before the open
    /// changes anything, never after it created or truncated a file).
    reserved: usize,
}

struct Session {
    id: u64,
    handles_max: usize,
    handles: Mutex<Handles>,
}

struct Inner {
    config: ServerConfig,
    store: Store,
    committer: Committer<OpenCounts>,
    locks: InodeLocks,
    sessions: Mutex<HashMap<u64, Connection>>,
    next_session: AtomicU64,
    shutdown: watch::Sender<bool>,
}

/// A running server. Cloning shares it.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl Server {
    /// Opens the store and reclaims orphans left by the previous run (no session survives a
    /// restart yet, so nothing can still hold them).
    pub async fn open(config: ServerConfig) -> Result<Server, ServerError> {
        let store = Store::open(&config.data_dir, config.clock.as_ref())?;
        let committer = store.start_committer(config.clock.clone(), OpenCounts::default());
        let leftover = committer
            .run(|ns, _| {
                let orphans = ns.orphans()?;
                for &ino in &orphans {
                    ns.destroy(ino)?;
                }
                Ok(orphans.len())
            })
            .await?;
        if leftover > 0 {
            tracing::info!(count = leftover, "reclaimed orphans of the previous run");
        }
        let boot = store.boot();
        let (shutdown, _) = watch::channel(false);
        Ok(Server {
            inner: Arc::new(Inner {
                config,
                store,
                committer,
                locks: InodeLocks::default(),
                sessions: Mutex::new(HashMap::new()),
                next_session: AtomicU64::new(boot << 32),
                shutdown,
            }),
        })
    }

    /// Binds `address` and serves it until `shutdown`. Returns the bound address.
    pub async fn listen(&self, address: &str) -> Result<SocketAddr, ServerError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ServerError::Listen { address: address.to_string(), source })?;
        let local =
            listener.local_addr().map_err(|source| ServerError::Listen { address: address.to_string(), source })?;
        let server = self.clone();
        tokio::spawn(async move { server.accept_loop(listener).await });
        tracing::info!(%local, data = %self.inner.config.data_dir.display(), "serving");
        Ok(local)
    }

    async fn accept_loop(self, listener: TcpListener) {
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let server = self.clone();
                    tokio::spawn(async move { server.serve_connection(stream, peer.to_string()).await });
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Serves one connection over any byte stream: handshake, then requests until it closes.
    pub async fn serve_connection<S>(&self, mut stream: S, peer: String)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let session_id = match tokio::time::timeout(HELLO_TIMEOUT, self.handshake(&mut stream, &peer)).await {
            Ok(Ok(id)) => id,
            Ok(Err(reason)) => {
                tracing::warn!(%peer, %reason, "refusing connection");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "refusing connection: no hello within {HELLO_TIMEOUT:?}");
                return;
            }
        };
        let session = Arc::new(Session {
            id: session_id,
            handles_max: self.inner.config.handles_per_session_max,
            handles: Mutex::new(Handles { closed: false, next: 1, map: HashMap::new(), reserved: 0 }),
        });
        let service = Arc::new(SessionService { inner: self.inner.clone(), session: session.clone() });
        let connection = Connection::start(stream, service, format!("session {session_id:#x} ({peer})"));
        self.inner.sessions.lock().expect("sessions lock").insert(session_id, connection.clone());
        tracing::info!(%peer, session = format_args!("{session_id:#x}"), "session opened");

        let pinger = tokio::spawn(ping_loop(self.inner.clone(), connection.clone()));
        let reason = connection.closed().await;
        pinger.abort();
        self.inner.sessions.lock().expect("sessions lock").remove(&session_id);
        let released = close_session_handles(&self.inner, &session).await;
        tracing::info!(%peer, session = format_args!("{session_id:#x}"), released, %reason, "session closed");
    }

    /// Reads and answers the hello. Returns the new session id, or why the peer is refused.
    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: &mut S, peer: &str) -> Result<u64, String> {
        let frame = read_frame(stream).await.map_err(|error| format!("reading hello: {error}"))?;
        if frame.kind != FrameKind::Request {
            return Err("first frame is not a request".into());
        }
        let request: Request = frame.decode_header().map_err(|error| format!("undecodable hello: {error}"))?;
        let Op::Hello { magic, version_min, version_max, client_name } = request.op else {
            return Err(format!("first request is {}, not hello", request.op.kind_name()));
        };
        if magic != HELLO_MAGIC {
            return Err(format!("bad magic {magic:#x}"));
        }
        let version = version_max.min(PROTOCOL_VERSION_MAX);
        if version < version_min.max(PROTOCOL_VERSION_MIN) {
            let message = format!(
                "no common protocol version: client speaks {version_min}..={version_max}, server {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION_MAX}"
            );
            let reply: ReplyHeader = Err(WireError { errno: Errno::EPROTO, message: message.clone() });
            let _ = write_frame(stream, &Frame::new(FrameKind::Reply, frame.id, &reply, Bytes::new())).await;
            let _ = stream.flush().await;
            return Err(message);
        }
        let root = self
            .inner
            .store
            .read()
            .and_then(|ns| ns.getattr(ROOT_INO))
            .map_err(|error| format!("reading root: {error}"))?;
        let session = self.inner.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let reply: ReplyHeader =
            Ok(Reply::Hello { version, session, root, server_name: self.inner.config.server_name.clone() });
        write_frame(stream, &Frame::new(FrameKind::Reply, frame.id, &reply, Bytes::new()))
            .await
            .map_err(|error| format!("answering hello: {error}"))?;
        stream.flush().await.map_err(|error| format!("answering hello: {error}"))?;
        tracing::debug!(%peer, %client_name, version, "hello");
        Ok(session)
    }

    /// Pings every connected session now; returns how many answered. (Used by tests and admin.)
    pub async fn ping_all(&self) -> usize {
        let connections: Vec<Connection> =
            self.inner.sessions.lock().expect("sessions lock").values().cloned().collect();
        let mut answered = 0;
        for connection in connections {
            if ping(&connection, 0, self.inner.config.ping_timeout).await.is_ok() {
                answered += 1;
            }
        }
        answered
    }

    /// What the commit thread has done (operations, batches, fsyncs) since the server opened.
    pub fn commit_stats(&self) -> rustre_store::CommitStats {
        self.inner.committer.stats()
    }

    pub fn session_count(&self) -> usize {
        self.inner.sessions.lock().expect("sessions lock").len()
    }

    /// Inodes kept alive only by open handles.
    pub fn orphans(&self) -> Result<Vec<u64>, StoreError> {
        self.inner.store.read()?.orphans()
    }

    /// Stops accepting, closes every connection, stops the commit thread, and waits until the
    /// data directory is released (so it can be opened again).
    pub async fn shutdown(self) {
        self.inner.shutdown.send_replace(true);
        let connections: Vec<Connection> =
            self.inner.sessions.lock().expect("sessions lock").values().cloned().collect();
        for connection in connections {
            connection.close("server shutting down");
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        while Arc::strong_count(&self.inner) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.inner.committer.stop().await;
        if Arc::strong_count(&self.inner) > 1 {
            tracing::warn!("shutdown: connection tasks still hold the store");
        }
    }
}

async fn ping(connection: &Connection, nonce: u64, timeout: Duration) -> Result<(), String> {
    let header = encode_header(&Callback::Ping { nonce });
    let reply = tokio::time::timeout(timeout, connection.call(header, Bytes::new()))
        .await
        .map_err(|_| format!("no answer to ping within {timeout:?}"))?
        .map_err(|closed| closed.to_string())?;
    match reply.decode_header::<CallbackReply>() {
        Ok(CallbackReply::Pong { nonce: answered }) if answered == nonce => Ok(()),
        Ok(other) => Err(format!("wrong answer to ping: {other:?}")),
        Err(error) => Err(format!("undecodable answer to ping: {error}")),
    }
}

async fn ping_loop(inner: Arc<Inner>, connection: Connection) {
    let interval = inner.config.ping_interval;
    let timeout = inner.config.ping_timeout;
    drop(inner);
    let mut nonce = 0u64;
    loop {
        tokio::time::sleep(interval).await;
        nonce += 1;
        if let Err(reason) = ping(&connection, nonce, timeout).await {
            tracing::warn!(connection = connection.name(), %reason, "client does not answer; disconnecting");
            connection.close(reason);
            return;
        }
    }
}

async fn close_session_handles(inner: &Arc<Inner>, session: &Session) -> usize {
    let handles: Vec<Handle> = {
        let mut handles = session.handles.lock().expect("handles lock");
        handles.closed = true;
        handles.map.drain().map(|(_, handle)| handle).collect()
    };
    let count = handles.len();
    for handle in handles {
        if let Err(error) = release_handle(inner, handle.ino).await {
            tracing::error!(ino = handle.ino, %error, "releasing a handle of a closed session");
        }
    }
    count
}

/// Drops one open of `ino`; the last one destroys an unlinked inode.
async fn release_handle(inner: &Inner, ino: u64) -> Result<(), StoreError> {
    inner
        .committer
        .run(move |ns, opens| {
            if opens.release(ino) {
                ns.newly_unlinked.extend(ns.inode(ino)?.filter(|record| record.nlink == 0).map(|_| ino));
                reap(ns, opens)?;
            }
            Ok(())
        })
        .await
}

struct SessionService {
    inner: Arc<Inner>,
    session: Arc<Session>,
}

impl Service for SessionService {
    fn call(&self, frame: Frame) -> BoxFuture<(Bytes, Bytes)> {
        let inner = self.inner.clone();
        let session = self.session.clone();
        Box::pin(async move {
            let (reply, payload) = match frame.decode_header::<Request>() {
                Ok(request) => {
                    let kind = request.op.kind_name();
                    match handle(&inner, &session, request, frame.payload).await {
                        Ok((reply, payload)) => (Ok(reply), payload),
                        Err(error) => {
                            if error.errno() == Errno::EIO {
                                tracing::error!(session = format_args!("{:#x}", session.id), op = kind, %error, "request failed");
                            } else {
                                tracing::debug!(session = format_args!("{:#x}", session.id), op = kind, %error, "request refused");
                            }
                            (Err(WireError { errno: error.errno(), message: error.to_string() }), Bytes::new())
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(session = format_args!("{:#x}", session.id), %error, "undecodable request");
                    (
                        Err(WireError { errno: Errno::EPROTO, message: format!("undecodable request: {error}") }),
                        Bytes::new(),
                    )
                }
            };
            let reply: ReplyHeader = reply;
            (encode_header(&reply), payload)
        })
    }
}

fn errno(errno: Errno) -> StoreError {
    StoreError::Fs(errno)
}

impl Session {
    fn handle(&self, handle: u64) -> Result<(u64, OpenFlags), StoreError> {
        let handles = self.handles.lock().expect("handles lock");
        let found = handles.map.get(&handle).ok_or(errno(Errno::EBADF))?;
        Ok((found.ino, found.flags))
    }
}

/// A slot for the handle of an open in flight; given back on drop unless the open used it.
struct Reservation<'a> {
    session: &'a Session,
    used: bool,
}

impl Session {
    fn reserve_handle(&self) -> Result<Reservation<'_>, StoreError> {
        let mut handles = self.handles.lock().expect("handles lock");
        if handles.closed {
            return Err(errno(Errno::ENOTCONN));
        }
        if handles.map.len() + handles.reserved >= self.handles_max {
            return Err(errno(Errno::EMFILE));
        }
        handles.reserved += 1;
        Ok(Reservation { session: self, used: false })
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.used {
            let mut handles = self.session.handles.lock().expect("handles lock");
            assert!(handles.reserved > 0, "a reservation was counted");
            handles.reserved -= 1;
        }
    }
}

/// Turns a reservation into a handle for an inode the commit thread has counted open. If the
/// session closed meanwhile, the open is undone: nobody is left to close it.
async fn add_handle(
    inner: &Inner,
    mut reservation: Reservation<'_>,
    ino: u64,
    flags: OpenFlags,
) -> Result<u64, StoreError> {
    let session = reservation.session;
    {
        let mut handles = session.handles.lock().expect("handles lock");
        assert!(handles.reserved > 0, "a reservation was counted");
        handles.reserved -= 1;
        reservation.used = true;
        if !handles.closed {
            let id = handles.next;
            handles.next += 1;
            handles.map.insert(id, Handle { ino, flags });
            return Ok(id);
        }
    }
    release_handle(inner, ino).await?;
    Err(errno(Errno::ENOTCONN))
}

/// Changes a regular file's size under its data lock, keeping the data object in step: before
/// growing, the object is cut back to the old size (its tail is garbage, the new tail must read as
/// zeros); after shrinking, it is cut to the new size to free space.
async fn set_size(inner: &Inner, ino: u64, set: SetAttrIn) -> Result<Attr, StoreError> {
    let size = set.size.expect("set_size changes a size");
    let _guard = inner.locks.exclusive(ino).await;
    let before = inner.store.read()?.getattr(ino)?;
    if before.kind != FileKind::Regular {
        // The store refuses (EISDIR, EINVAL); no data object may be touched first.
        return Ok(inner.committer.run(move |ns, _| ns.setattr(ino, &set)).await?.0);
    }
    if size > before.size {
        inner.store.objects().set_len(ino, before.size).map_err(|error| io_error("truncate", ino, error))?;
    }
    let (attr, _) = inner.committer.run(move |ns, _| ns.setattr(ino, &set)).await?;
    if size < before.size {
        inner.store.objects().set_len(ino, size).map_err(|error| io_error("truncate", ino, error))?;
    }
    Ok(attr)
}

fn io_error(context: &str, ino: u64, error: std::io::Error) -> StoreError {
    StoreError::io(format!("{context} of inode {ino}"), error)
}

async fn handle(
    inner: &Arc<Inner>,
    session: &Session,
    request: Request,
    payload: Bytes,
) -> Result<(Reply, Bytes), StoreError> {
    let caller = request.caller;
    let none = Bytes::new();
    let reply = match request.op {
        Op::Hello { .. } => return Err(errno(Errno::EPROTO)),
        Op::Lookup { parent, name } => Reply::Entry { attr: inner.store.read()?.lookup(parent, &name)? },
        Op::GetAttr { ino } => Reply::Attr { attr: inner.store.read()?.getattr(ino)? },
        Op::SetAttr { ino, set } => {
            let attr = if set.size.is_some() {
                set_size(inner, ino, set).await?
            } else {
                inner.committer.run(move |ns, _| ns.setattr(ino, &set)).await?.0
            };
            Reply::Attr { attr }
        }
        Op::Open { parent, name, flags, perm } => {
            let reservation = session.reserve_handle()?;
            let opened = inner
                .committer
                .run(move |ns, opens| {
                    let opened = ns.open(parent, &name, flags, perm, caller)?;
                    opens.acquire(opened.attr.ino);
                    Ok(opened)
                })
                .await?;
            open_reply(inner, session, reservation, opened, flags).await?
        }
        Op::OpenIno { ino, flags } => {
            let reservation = session.reserve_handle()?;
            let opened = inner
                .committer
                .run(move |ns, opens| {
                    let opened = ns.open_existing(ino, flags)?;
                    opens.acquire(ino);
                    Ok(opened)
                })
                .await?;
            open_reply(inner, session, reservation, opened, flags).await?
        }
        Op::Close { handle } => {
            let removed = session.handles.lock().expect("handles lock").map.remove(&handle);
            let handle = removed.ok_or(errno(Errno::EBADF))?;
            release_handle(inner, handle.ino).await?;
            Reply::Done
        }
        Op::Read { handle, offset, len } => {
            let (ino, flags) = session.handle(handle)?;
            if !flags.contains(OpenFlags::READ) {
                return Err(errno(Errno::EBADF));
            }
            let len = len.min(IO_SIZE_MAX);
            let _guard = inner.locks.shared(ino).await;
            let attr = inner.store.read()?.getattr(ino)?;
            if attr.kind == FileKind::Directory {
                return Err(errno(Errno::EISDIR));
            }
            let size = attr.size;
            let available = size.saturating_sub(offset).min(u64::from(len)) as usize;
            let mut buffer = vec![0u8; available];
            // Short reads from the object (a hole at the end) leave zeros, as a hole reads.
            inner.store.objects().read_at(ino, offset, &mut buffer).map_err(|error| io_error("read", ino, error))?;
            return Ok((Reply::Data, Bytes::from(buffer)));
        }
        Op::Write { handle, offset } => {
            let (ino, flags) = session.handle(handle)?;
            if !flags.contains(OpenFlags::WRITE) && !flags.contains(OpenFlags::APPEND) {
                return Err(errno(Errno::EBADF));
            }
            if payload.len() > IO_SIZE_MAX as usize {
                return Err(errno(Errno::EINVAL));
            }
            let _guard = inner.locks.exclusive(ino).await;
            let attr = inner.store.read()?.getattr(ino)?;
            if payload.is_empty() {
                // POSIX: writing nothing to a regular file has no other result.
                return Ok((Reply::Written { len: 0, attr }, none));
            }
            let size = attr.size;
            let offset = if flags.contains(OpenFlags::APPEND) { size } else { offset };
            let end = offset
                .checked_add(payload.len() as u64)
                .filter(|&end| end <= FILE_SIZE_MAX)
                .ok_or(errno(Errno::EFBIG))?;
            if offset > size {
                // Writing past the end leaves a hole: make sure it holds zeros, not old garbage.
                inner.store.objects().set_len(ino, size).map_err(|error| io_error("extend", ino, error))?;
            }
            inner.store.objects().write_at(ino, offset, &payload).map_err(|error| io_error("write", ino, error))?;
            let attr = inner.committer.run(move |ns, _| ns.note_write(ino, end)).await?;
            Reply::Written { len: payload.len() as u32, attr }
        }
        Op::Fsync { handle } => {
            let (ino, _) = session.handle(handle)?;
            inner.store.objects().sync(ino).map_err(|error| io_error("fsync", ino, error))?;
            inner
                .committer
                .run(|ns, _| {
                    ns.require_durable();
                    Ok(())
                })
                .await?;
            Reply::Done
        }
        Op::Mkdir { parent, name, perm } => {
            Reply::Entry { attr: inner.committer.run(move |ns, _| ns.mkdir(parent, &name, perm, caller)).await? }
        }
        Op::Symlink { parent, name, target } => {
            Reply::Entry { attr: inner.committer.run(move |ns, _| ns.symlink(parent, &name, &target, caller)).await? }
        }
        Op::Link { ino, new_parent, new_name } => {
            Reply::Entry { attr: inner.committer.run(move |ns, _| ns.link(ino, new_parent, &new_name)).await? }
        }
        Op::Unlink { parent, name } => {
            inner
                .committer
                .run(move |ns, opens| {
                    ns.unlink(parent, &name)?;
                    reap(ns, opens)
                })
                .await?;
            Reply::Done
        }
        Op::Rmdir { parent, name } => {
            inner
                .committer
                .run(move |ns, opens| {
                    ns.rmdir(parent, &name)?;
                    reap(ns, opens)
                })
                .await?;
            Reply::Done
        }
        Op::Rename { parent, name, new_parent, new_name, mode } => {
            inner
                .committer
                .run(move |ns, opens| {
                    ns.rename(parent, &name, new_parent, &new_name, mode)?;
                    reap(ns, opens)
                })
                .await?;
            Reply::Done
        }
        Op::Readlink { ino } => Reply::Target { target: inner.store.read()?.readlink(ino)? },
        Op::ReadDir { ino, cookie, max_entries, with_attrs } => {
            let (entries, end) = inner.store.read()?.read_dir(ino, cookie, max_entries, with_attrs)?;
            Reply::Entries { entries, end }
        }
        Op::StatFs => Reply::StatFs { statfs: statfs(inner)? },
        Op::GetXattr { ino, name } => {
            let value = inner.store.read()?.getxattr(ino, &name)?;
            return Ok((Reply::Xattr, Bytes::from(value)));
        }
        Op::SetXattr { ino, name, mode } => {
            inner.committer.run(move |ns, _| ns.setxattr(ino, &name, &payload, mode)).await?;
            Reply::Done
        }
        Op::ListXattr { ino } => Reply::XattrNames { names: inner.store.read()?.listxattr(ino)? },
        Op::RemoveXattr { ino, name } => {
            inner.committer.run(move |ns, _| ns.removexattr(ino, &name)).await?;
            Reply::Done
        }
    };
    Ok((reply, none))
}

async fn open_reply(
    inner: &Arc<Inner>,
    session: &Session,
    reservation: Reservation<'_>,
    opened: Opened,
    flags: OpenFlags,
) -> Result<Reply, StoreError> {
    let ino = opened.attr.ino;
    let handle = add_handle(inner, reservation, ino, flags).await?;
    let mut attr = opened.attr;
    if opened.needs_truncate {
        // While the handle is registered its count keeps the inode; if the session closes meanwhile,
        // the session's teardown takes the handle, and the truncate may then meet a destroy (ESTALE).
        match set_size(inner, ino, SetAttrIn { size: Some(0), ..SetAttrIn::default() }).await {
            Ok(truncated) => attr = truncated,
            Err(error) => {
                // Release only a handle still ours: a closed session's teardown released it already.
                let ours = session.handles.lock().expect("handles lock").map.remove(&handle);
                if ours.is_some() {
                    release_handle(inner, ino).await?;
                }
                return Err(error);
            }
        }
    }
    Ok(Reply::Opened { handle, attr, created: opened.created })
}

/// Space figures from the file system holding the data directory; inode figures from the store.
fn statfs(inner: &Inner) -> Result<StatFs, StoreError> {
    let vfs = rustix::fs::statvfs(&inner.config.data_dir)
        .map_err(|error| StoreError::io("statfs of the data directory", error.into()))?;
    let files = inner.store.read()?.inode_count()?;
    let files_free = u64::from(u32::MAX);
    Ok(StatFs {
        block_size: vfs.f_frsize as u32,
        blocks: vfs.f_blocks,
        blocks_free: vfs.f_bfree,
        blocks_available: vfs.f_bavail,
        files: files + files_free,
        files_free,
        name_len_max: rustre_proto::name::NAME_LEN_MAX as u32,
    })
}
