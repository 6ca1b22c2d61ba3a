//! rustre's client library: one session with a server, an inode-level API that maps one to one
//! onto protocol requests, and a path-based API over it for applications and the CLI.
//!
//! ```no_run
//! # async fn demo() -> rustre_client::Result<()> {
//! let client = rustre_client::Client::connect("127.0.0.1:7070").await?;
//! client.create_dir_all("/a/b").await?;
//! client.write("/a/b/hello.txt", b"hello").await?;
//! assert_eq!(client.read("/a/b/hello.txt").await?, b"hello");
//! # Ok(()) }
//! ```

mod cache;
mod clock;
mod error;
mod file;
mod inode;
mod path;
mod retry;
mod session;
mod sync;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rustre_proto::auth;
use rustre_proto::frame::{Frame, FrameError, FrameKind, encode_header, read_frame, write_frame};
use rustre_proto::msg::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use rustre_proto::pause::PausePoints;
use rustre_proto::rpc::{BoxFuture, Connection, Service};
use rustre_proto::{
    Attr, Callback, CallbackReply, Caller, DirEntry, Errno, FileKind, Grant, HELLO_MAGIC, Op, OpenFlags, RenameMode,
    Reply, ReplyHeader, Request, SetAttrIn, TimeSet, XattrMode,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, watch};

pub use cache::CACHE_ENTRIES_MAX;
pub use clock::{KernelSuspendClock, ManualSuspendClock, SuspendClock};
pub use error::{Error, Result};
pub use file::{File, OpenOptions};
pub use rustre_proto;
pub use rustre_proto::auth::Secret;
pub use rustre_proto::tls::ClientTls;
pub use rustre_proto::{Attr as Metadata, DirEntry as Entry};
pub use session::{
    Connector, LinkEvent, LinkHook, Outage, RECONNECT_WAIT_DEFAULT, RECONNECT_WAIT_FOREVER, RESENDS_MAX, Stream,
    UNREACHABLE_REPORT_INTERVAL,
};

use path::{Walk, bytes, components};

#[derive(Clone)]
pub struct ClientConfig {
    /// Reported to the server in the hello, for its logs.
    pub client_name: String,
    /// The identity stamped on requests, which the server checks permissions against (owner of
    /// what this client creates). By default this process's (`process_caller`).
    pub caller: Caller,
    /// Cache entries (leases) kept; beyond, the least recently used are given back to the server.
    pub cache_entries_max: usize,
    /// Pause points for tests that force races (unarmed, they cost one atomic load).
    pub pause_points: Arc<PausePoints>,
    /// Retry by name after a stale inode id (`retry.rs`). Always on, except in control runs that
    /// prove tests and tools notice the ESTALE an application would otherwise see.
    pub retry_stale_by_name: bool,
    /// Run the revocation hook on the leases the cache gives back (`Cause::Released`), so a
    /// mount's kernel drops its copies first. Always on, except in control runs that show the
    /// stale stat a kernel would otherwise keep (race 13).
    pub release_through_hook: bool,
    /// When the revocation hook could not drop a copy (`Forgotten::Kept`), acknowledge the
    /// revocation, or give the lease back, only after the trust window. Always on, except in
    /// control runs that show the stale stat a kernel would otherwise keep.
    pub wait_out_kept_copies: bool,
    /// A planted bug, for control runs only: cache what a reply carried even when its lease was
    /// revoked between the reply and the insert (race 11), to show the tests notice.
    pub fault_cache_under_revoked_lease: bool,
    /// Where the time the machine spent suspended comes from: trust in leases counts it
    /// (`clock.rs`). `KernelSuspendClock` by default; tests and the simulator declare
    /// suspensions with a `ManualSuspendClock`.
    pub suspend_clock: Arc<dyn SuspendClock>,
    /// How long a call waits in all for the connection to come back after it broke
    /// (`session.rs`); then it fails with ENOTCONN (a mount answers the kernel EIO). By default
    /// `RECONNECT_WAIT_DEFAULT`, so a tool stops rather than hang; `RECONNECT_WAIT_FOREVER`
    /// waits as long as it takes (a hard mount). A close or an unpin is never failed for this:
    /// it is answered as done and waits on in the background (`Client::give_back`).
    pub reconnect_wait: Duration,
    /// The cluster secret to prove in the hello (`rustre_proto::auth`). With one, the client
    /// also requires the server to prove it, and refuses a server that does not ask.
    pub secret: Option<Secret>,
    /// TLS to the server (`rustre_proto::tls::ClientTls`): whom to trust, and the name the
    /// server's certificate must carry. `None`: plain TCP. Used by `connect_with` (and each
    /// reconnection); `handshake` takes a stream as it is.
    pub tls: Option<rustre_proto::tls::ClientTls>,
}

/// How long a TLS handshake with the server may take (a server that accepts and says nothing
/// would otherwise hold a connect forever).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to answer the hello: a peer that is not a rustre server (an
/// HTTP server waiting for a line that never comes) would otherwise hold a connect forever.
pub const HELLO_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// This process's identity: effective uid and gid, and supplementary groups.
pub fn process_caller() -> Caller {
    let groups = rustix::process::getgroups().unwrap_or_default();
    Caller {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        groups: groups.into_iter().map(|gid| gid.as_raw()).collect(),
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_name: format!("rustre-client pid {}", std::process::id()),
            caller: process_caller(),
            cache_entries_max: cache::CACHE_ENTRIES_MAX,
            pause_points: Arc::default(),
            retry_stale_by_name: true,
            release_through_hook: true,
            wait_out_kept_copies: true,
            fault_cache_under_revoked_lease: false,
            suspend_clock: Arc::new(KernelSuspendClock),
            reconnect_wait: session::RECONNECT_WAIT_DEFAULT,
            secret: None,
            tls: None,
        }
    }
}

/// Counters of one client, readable at any time (`Client::stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub requests_sent: u64,
    /// Requests sent, by kind (only kinds sent at least once).
    pub requests_by_kind: Vec<(&'static str, u64)>,
    /// Lookups, stats and listings answered from the cache, and those that asked the server.
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Lookups that waited for another task's identical lookup instead of sending their own.
    pub lookups_shared: u64,
    pub callbacks_received: u64,
    pub revocations_received: u64,
    /// Time spent applying revocations (from arrival to cache updated), in total.
    pub revocation_handling_micros: u64,
    /// Revocations acknowledged and give-backs sent only after the trust window, because the
    /// revocation hook could not drop a copy (`Forgotten::Kept`).
    pub hook_copies_kept: u64,
    pub leases_held: u64,
    pub leases_released: u64,
    /// Path calls retried by name after the server found an inode id stale.
    pub stale_retries: u64,
}

impl std::fmt::Display for ClientStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "requests sent: {}", self.requests_sent)?;
        for (kind, count) in &self.requests_by_kind {
            writeln!(f, "  {kind}: {count}")?;
        }
        writeln!(f, "cache hits: {}", self.cache_hits)?;
        writeln!(f, "cache misses: {}", self.cache_misses)?;
        writeln!(f, "lookups shared: {}", self.lookups_shared)?;
        writeln!(f, "callbacks received: {}", self.callbacks_received)?;
        writeln!(f, "revocations received: {}", self.revocations_received)?;
        writeln!(f, "revocation handling: {} µs in total", self.revocation_handling_micros)?;
        writeln!(f, "copies the hook could not drop: {}", self.hook_copies_kept)?;
        writeln!(f, "leases held: {}", self.leases_held)?;
        writeln!(f, "leases released: {}", self.leases_released)?;
        write!(f, "stale ids retried by name: {}", self.stale_retries)
    }
}

/// One counter per request kind (`Op::KIND_NAMES`).
struct KindCounters([AtomicU64; Op::KIND_NAMES.len()]);

impl Default for KindCounters {
    fn default() -> Self {
        KindCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl std::ops::Deref for KindCounters {
    type Target = [AtomicU64];
    fn deref(&self) -> &[AtomicU64] {
        &self.0
    }
}

#[derive(Default)]
struct Counters {
    requests_sent: AtomicU64,
    requests_by_kind: KindCounters,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    lookups_shared: AtomicU64,
    callbacks_received: AtomicU64,
    revocations_received: AtomicU64,
    revocation_handling_micros: AtomicU64,
    hook_copies_kept: AtomicU64,
    leases_released: AtomicU64,
    stale_retries: AtomicU64,
}

/// What the connection's reader task and the application tasks share.
struct Shared {
    /// Behind the `sync` facade, so the cache's interleavings can be model-checked.
    cache: sync::Mutex<cache::State>,
    counters: Counters,
    /// Wakes the task that gives leases back.
    releases: Notify,
    pause_points: Arc<PausePoints>,
    retry_stale_by_name: bool,
    /// `ClientConfig::release_through_hook`.
    release_through_hook: bool,
    /// `ClientConfig::wait_out_kept_copies`.
    wait_out_kept_copies: bool,
    /// Run on every revocation, after the cache dropped the leases and before the
    /// acknowledgement (`Client::set_revocation_hook`).
    revocation_hook: std::sync::RwLock<Option<RevocationHook>>,
    /// Run on every change of the link (`Client::set_link_hook`).
    link_hook: std::sync::RwLock<Option<LinkHook>>,
}

impl Shared {
    fn link_event(&self, event: LinkEvent) {
        let hook = self.link_hook.read().expect("link hook lock").clone();
        if let Some(hook) = hook {
            hook(&event);
        }
    }
}

/// What else must forget what a revoked lease covered, and be done with it before the server
/// learns it is revoked: a FUSE mount's kernel caches (`rustre-fuse`). Called on the
/// connection's reader task with the revoked leases and their cause, after this client's cache
/// dropped them, and with the leases this client gives back, before it does. It must not block:
/// what it cannot finish at once it returns as `Forgotten::Again`, which the client calls later
/// from a task of its own, and the acknowledgement (or the give-back) waits for the outcome.
pub type RevocationHook = Arc<dyn Fn(&[Grant], Cause) -> Forgotten + Send + Sync>;

/// Rounds of `Forgotten::Again` a client waits through before it treats the copy as kept.
pub const HOOK_ROUNDS_MAX: usize = 10_000;

/// What a revocation hook made of the copies under the leases it was given.
pub enum Forgotten {
    /// Every copy is gone: the server may be told at once.
    All,
    /// Not yet (a copy is on its way into the kernel and cannot be dropped before it lands):
    /// call `again` after `after`, and go by what it returns.
    Again { after: std::time::Duration, again: Box<dyn FnOnce() -> Forgotten + Send> },
    /// A copy could not be dropped. It was handed out for no longer than this client trusted its
    /// leases then, so it is gone once the trust window (half the lease timeout) has passed;
    /// the server is told only then (fail closed: never acknowledge a lease given up while a
    /// copy may still answer from it). The hook also stops handing out copies that it could not
    /// take back.
    Kept,
}

impl Forgotten {
    /// Waits until every copy is gone: retries while the hook asks to, and waits out the trust
    /// window (`trust_window`) for a copy it could not drop. Returns whether a copy was kept.
    pub async fn settle(self, trust_window: std::time::Duration) -> bool {
        let mut outcome = self;
        for _ in 0..HOOK_ROUNDS_MAX {
            match outcome {
                Forgotten::All => return false,
                Forgotten::Kept => break,
                Forgotten::Again { after, again } => {
                    tokio::time::sleep(after).await;
                    outcome = again();
                }
            }
        }
        tokio::time::sleep(trust_window).await;
        true
    }
}

/// Why leases are revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A change another session (or the server itself) is making.
    Other,
    /// A change this session's own request is making (`Callback::RevokeOwn`).
    Own,
    /// No change: this client gives the leases back (its cache evicted them to stay within
    /// `cache_entries_max`). Whatever mirrors the cache drops its copies before the server hears
    /// of it, since from then on nobody revokes them (promise 8).
    Released,
}

impl Shared {
    fn cache(&self) -> sync::MutexGuard<'_, cache::State> {
        self.cache.lock().expect("cache lock")
    }

    /// How long a copy the revocation hook could not drop may live: the trust window (its time
    /// to live was no longer than what the client's trust had left when it was handed out).
    fn kept_copies_wait(&self) -> std::time::Duration {
        match self.wait_out_kept_copies {
            true => self.cache().validity(),
            false => std::time::Duration::ZERO,
        }
    }

    fn hit(&self) {
        self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    fn miss(&self) {
        self.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
    }
}

/// The least silence after which a client gives up on its server (see `watch_server`).
pub const SERVER_SILENCE_MIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Closes the connection once the server has been silent for `silence_max` (twice its lease
/// timeout, at least `SERVER_SILENCE_MIN`; a server pings every second, and has evicted us long
/// before), so calls waiting on a dead server or across a partition fail with ENOTCONN instead
/// of hanging. Ends with the connection.
async fn watch_server(connection: Connection, shared: Arc<Shared>, silence_max: std::time::Duration) {
    let period = silence_max / 4;
    loop {
        tokio::select! {
            biased;
            _ = connection.closed() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let silent = shared.cache().silent_for();
        if silent >= silence_max {
            // The reason is in the log's line about the loss (`session::Link::attempt_failed`).
            tracing::debug!(connection = connection.name(), ?silent, "server silent; closing the connection");
            connection.close(format!("server silent for {silent:?}"));
            return;
        }
    }
}

/// The share of the trust window after which an idle client renews it (`keep_trust`).
const RENEW_DIVISOR: u32 = 4;

/// Keeps an idle client's trust renewed: trust runs from when the client sent a request the
/// server answered (`cache::State::renew`), so a client that sends nothing for a while sends an
/// empty `ReleaseLeases` (answered without touching the store) once a quarter of its trust
/// window has passed without one. A busy client's own requests renew it, and this sends
/// nothing. Ends with the connection.
async fn keep_trust(connection: Connection, shared: Arc<Shared>, caller: Caller) {
    let header = encode_header(&Request { caller, op: Op::ReleaseLeases { leases: Vec::new() } });
    loop {
        let validity = shared.cache().validity();
        let period = validity / RENEW_DIVISOR;
        if period.is_zero() {
            return;
        }
        tokio::select! {
            biased;
            _ = connection.closed() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if shared.cache().trust_left() > validity - period {
            continue;
        }
        let sent = shared.cache().now().as_nanos() as u64;
        if connection.call_stamped(header.clone(), Bytes::new(), sent).await.is_err() {
            return;
        }
    }
}

/// How often a client with a link hook (a mount) looks for a suspension of the machine.
const SUSPEND_CHECK_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);
/// Suspended time below this is not told (the two clocks' readings jitter by microseconds).
const SUSPEND_NOTICE_MIN: std::time::Duration = std::time::Duration::from_millis(20);

/// Tells the link hook of every suspension of the machine (`LinkEvent::Suspended`), within
/// `SUSPEND_CHECK_PERIOD` of the resume (tokio's timers run on the monotonic clock, which
/// stopped meanwhile, so the first tick after the resume comes at once). The client's own cache
/// needs no telling (its trust clock counts the suspension), but what mirrors it does: the
/// kernel counts the times to live of its entries on a clock that stopped too. Ends with the
/// session.
async fn watch_suspension(inner: std::sync::Weak<Inner>) {
    let mut told = match inner.upgrade() {
        Some(inner) => inner.shared.cache().suspended(),
        None => return,
    };
    loop {
        tokio::time::sleep(SUSPEND_CHECK_PERIOD).await;
        let Some(inner) = inner.upgrade() else { return };
        let suspended = inner.shared.cache().suspended();
        let more = suspended.saturating_sub(told);
        if more >= SUSPEND_NOTICE_MIN {
            told = suspended;
            tracing::info!(suspended = ?more, "the machine was suspended; mirrored caches are dropped");
            inner.shared.link_event(LinkEvent::Suspended { suspended: more });
        }
    }
}

/// Ends (its sender is dropped) when a removal in flight completes.
type RemovalDone = watch::Receiver<()>;

/// Where the tasks waiting for a shared lookup find its answer.
type LookupAnswer = watch::Receiver<Option<Result<Attr>>>;
/// A lookup in flight: (parent, name, caller).
type LookupKey = (u64, Vec<u8>, Caller);

struct Inner {
    link: session::Link,
    /// What the session holds (handles, pins), for a restarted server.
    holdings: Mutex<session::Holdings>,
    slots: session::Slots,
    config: ClientConfig,
    peer: String,
    server_name: String,
    caller: Caller,
    shared: Arc<Shared>,
    /// (parent, name) -> the lookup in flight for it; other tasks wait for its answer.
    lookups: Mutex<HashMap<LookupKey, LookupAnswer>>,
    /// (parent, name) -> removals (unlink, rmdir) of it in flight; a create of the same name
    /// waits for them (semantics.md race 10: in program order, never EEXIST, never lost data).
    removals: Mutex<HashMap<(u64, Vec<u8>), RemovalDone>>,
    /// The runtime the session was made on, for tasks started from outside it.
    runtime: tokio::runtime::Handle,
    /// `watch_suspension` runs (started with the first link hook).
    suspension_watched: std::sync::atomic::AtomicBool,
}

/// A session with a rustre server. Cloning shares the session (and its cache).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    /// Stamped on this handle's requests; `as_caller` makes a handle for another identity.
    caller: Caller,
}

/// Answers the server's calls on our connection, and sees our replies before their callers do.
/// Both run in the reader task, in wire order (see `cache.rs`).
struct CallbackService {
    shared: Arc<Shared>,
    /// Set right after the connection starts; the reader may see a frame before that (it then
    /// has no request of ours to order against).
    connection: Arc<OnceLock<Connection>>,
}

impl Service for CallbackService {
    fn call(&self, frame: Frame) -> BoxFuture<(Bytes, Bytes)> {
        let shared = self.shared.clone();
        shared.counters.callbacks_received.fetch_add(1, Ordering::Relaxed);
        let reply = match frame.decode_header::<Callback>() {
            Ok(Callback::Ping { nonce }) => {
                shared.cache().heard();
                CallbackReply::Pong { nonce }
            }
            Ok(Callback::Revoke { leases }) => return revoked(shared, self.connection.get(), leases, Cause::Other),
            Ok(Callback::RevokeOwn { leases }) => return revoked(shared, self.connection.get(), leases, Cause::Own),
            Err(error) => {
                // An answer the server cannot use makes it disconnect us: the right outcome for a
                // server speaking something we do not understand.
                tracing::warn!(%error, "undecodable call from the server");
                CallbackReply::Pong { nonce: u64::MAX }
            }
        };
        Box::pin(async move { (encode_header(&reply), Bytes::new()) })
    }

    fn observe_reply(&self, reply: &Frame, stamp: Option<u64>) {
        let Ok(header) = reply.decode_header::<ReplyHeader>() else { return };
        let oldest_pending = self.connection.get().and_then(Connection::oldest_pending_id);
        let mut cache = self.shared.cache();
        // The server answered a request sent at `stamp` (nanoseconds on the trust clock; 0 for
        // a request sent unstamped, which renews nothing).
        if let Some(sent) = stamp {
            cache.renew(std::time::Duration::from_nanos(sent));
        }
        cache.on_reply(reply.id, &header.grants, oldest_pending);
        if cache.has_releases() {
            self.shared.releases.notify_one();
        }
    }
}

/// What a server's answer to the hello that is not a rustre frame says: the peer speaks another
/// protocol (an HTTP server's "HTTP/1.1 400" reads as a frame length of 1,347,703,880 bytes).
fn not_rustre(error: FrameError) -> String {
    let first = match &error {
        FrameError::BadLength(length) => Some((*length as u32).to_le_bytes().escape_ascii().to_string()),
        _ => None,
    };
    match (error, first) {
        (FrameError::Io(error), _) => format!("i/o error: {error}"),
        (FrameError::Closed, _) => "the server closed the connection".to_string(),
        (_, Some(first)) => {
            format!("the server does not speak the rustre protocol (its answer began with \"{first}\")")
        }
        (error, None) => format!("the server does not speak the rustre protocol ({error})"),
    }
}

/// Says hello on `stream` (or, with `resume`, takes up that session again) and starts a
/// connection on it. Returns the connection and the server's `Hello` or `Resumed` reply.
async fn open_connection<S: Stream>(
    mut stream: S,
    peer: &str,
    config: &ClientConfig,
    shared: &Arc<Shared>,
    resume: Option<u64>,
) -> Result<(Connection, Reply)> {
    let op = match resume {
        None => Op::Hello {
            magic: HELLO_MAGIC,
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION_MAX,
            client_name: config.client_name.clone(),
        },
        Some(session) => Op::Resume {
            magic: HELLO_MAGIC,
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION_MAX,
            client_name: config.client_name.clone(),
            session,
        },
    };
    let hello = Frame::new(FrameKind::Request, 0, &Request { caller: config.caller.clone(), op }, Bytes::new());
    // Trust in the new connection's leases is measured from here (`cache::State::renew`).
    let hello_sent = shared.cache().now();
    let failed = |error: &dyn std::fmt::Display| Error::new(Errno::EPROTO, format!("hello to {peer}: {error}"));
    write_frame(&mut stream, &hello).await.map_err(|error| failed(&error))?;
    stream.flush().await.map_err(|error| failed(&error))?;
    let answer = async |stream: &mut S| -> Result<Reply> {
        let frame = read_frame(stream).await.map_err(|error| failed(&not_rustre(error)))?;
        let reply: ReplyHeader = frame.decode_header().map_err(|error| failed(&not_rustre(error)))?;
        reply.result.map_err(|error| Error::from(error).context(format!("hello to {peer}")))
    };
    let denied = |why: &str| Error::new(Errno::EACCES, format!("hello to {peer}: {why}"));
    // The challenge-response of `rustre_proto::auth`: both sides prove the cluster secret.
    let first = tokio::time::timeout(HELLO_ANSWER_TIMEOUT, answer(&mut stream)).await.unwrap_or_else(|_| {
        Err(Error::new(
            Errno::ETIMEDOUT,
            format!("hello to {peer}: no answer within {HELLO_ANSWER_TIMEOUT:?} (is it a rustre server?)"),
        ))
    });
    let first = first.map_err(|mut error| {
        if config.tls.is_none()
            && error.errno == Errno::EPROTO
            && (error.message.contains("i/o error") || error.message.contains("closed the connection"))
        {
            error.message.push_str(
                " (a server that speaks TLS closes a plain connection: trust its CA with --tls-ca or RUSTRE_TLS_CA)",
            );
        }
        error
    })?;
    let reply = match (first, &config.secret) {
        (Reply::Challenge { .. }, None) => {
            return Err(denied(
                "the server asks for the cluster secret (give its file with --secret-file or RUSTRE_SECRET_FILE)",
            ));
        }
        (Reply::Challenge { nonce: server_nonce }, Some(secret)) => {
            let client_nonce = auth::nonce().map_err(|error| Error::new(Errno::EIO, error.to_string()))?;
            let proof = secret.client_proof(&server_nonce, &client_nonce, &hello.header);
            let prove = Request { caller: config.caller.clone(), op: Op::Prove { nonce: client_nonce, proof } };
            write_frame(&mut stream, &Frame::new(FrameKind::Request, 1, &prove, Bytes::new()))
                .await
                .map_err(|error| failed(&error))?;
            stream.flush().await.map_err(|error| failed(&error))?;
            match answer(&mut stream).await {
                Ok(Reply::Welcome { proof, reply })
                    if secret.verify_server(&server_nonce, &client_nonce, &hello.header, &proof) =>
                {
                    *reply
                }
                Ok(Reply::Welcome { .. }) => return Err(denied("the server does not know the cluster secret")),
                Ok(other) => return Err(failed(&format!("unexpected reply {other:?}"))),
                Err(error) => return Err(error),
            }
        }
        (_, Some(_)) => return Err(denied("the server did not ask for the cluster secret; it is not trusted")),
        (reply, None) => reply,
    };
    let lease_timeout_ms = match &reply {
        Reply::Hello { lease_timeout_ms, .. } | Reply::Resumed { lease_timeout_ms, .. } => *lease_timeout_ms,
        other => return Err(failed(&format!("unexpected reply {other:?}"))),
    };
    let validity = Duration::from_millis(lease_timeout_ms) / 2;
    shared.cache().set_validity(validity);
    shared.cache().reconnected(hello_sent);
    let slot = Arc::new(OnceLock::new());
    let service = Arc::new(CallbackService { shared: shared.clone(), connection: slot.clone() });
    let connection = Connection::start(stream, service, format!("server {peer}"));
    assert!(slot.set(connection.clone()).is_ok(), "the connection is set once");
    let silence_max = (validity * 4).max(SERVER_SILENCE_MIN);
    tokio::spawn(watch_server(connection.clone(), shared.clone(), silence_max));
    tokio::spawn(keep_trust(connection.clone(), shared.clone(), config.caller.clone()));
    Ok((connection, reply))
}

/// Waits for the connection to close; then empties the cache and, unless the
/// client is closing, starts reconnecting.
async fn watch_connection(inner: std::sync::Weak<Inner>, connection: Connection) {
    let reason = connection.closed().await;
    let Some(strong) = inner.upgrade() else { return };
    let shared = strong.shared.clone();
    // A session that is gone holds no lease: nothing cached may be trusted.
    shared.cache().disconnected();
    shared.releases.notify_one();
    shared.link_event(LinkEvent::Lost);
    if strong.link.can_reconnect() {
        // Said in the log once the first attempt to reconnect has told whether the server is
        // reachable (`session::Link::attempt_failed`, `restored`).
        tracing::debug!(peer = %strong.peer, %reason, "connection lost; reconnecting");
        strong.link.lost(&reason);
        strong.link.state.send_replace(session::LinkState::Down);
        drop(strong);
        tokio::spawn(reconnect(inner));
    } else {
        strong.link.state.send_replace(session::LinkState::Closed { reason });
    }
}

/// Connects again until it succeeds or the client goes; see `session.rs`. (Boxed: it starts
/// the next `watch_connection`, which may start it again.)
fn reconnect(inner: std::sync::Weak<Inner>) -> BoxFuture<()> {
    Box::pin(reconnect_loop(inner))
}

async fn reconnect_loop(inner: std::sync::Weak<Inner>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(session::RECONNECT_BACKOFF_MAX);
        let Some(inner) = inner.upgrade() else { return };
        if !inner.link.can_reconnect() {
            inner.link.state.send_replace(session::LinkState::Closed { reason: "client closed the session".into() });
            return;
        }
        match reconnect_once(&inner).await {
            Ok((connection, event)) => {
                let generation = inner.link.generations.fetch_add(1, Ordering::Relaxed) + 1;
                inner.link.restored(&inner.peer, &event);
                inner.shared.link_event(event);
                inner.link.state.send_replace(session::LinkState::Up { connection: connection.clone(), generation });
                tokio::spawn(watch_connection(Arc::downgrade(&inner), connection));
                return;
            }
            Err(error) => inner.link.attempt_failed(&inner.peer, &error),
        }
    }
}

async fn new_stream(inner: &Inner) -> Result<Box<dyn Stream>> {
    let connector = inner.link.connector.as_ref().expect("only a session with a connector reconnects");
    let connecting = tokio::time::timeout(session::RECONNECT_BACKOFF_MAX * 5, connector());
    match connecting.await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(Error::new(Errno::from_io(&error), format!("connecting to {}: {error}", inner.peer))),
        Err(_) => Err(Error::new(Errno::ETIMEDOUT, format!("connecting to {}", inner.peer))),
    }
}

/// One attempt: resume the session (giving back what it held, if the server restarted), or
/// start a new one if the server no longer knows it.
async fn reconnect_once(inner: &Arc<Inner>) -> Result<(Connection, LinkEvent)> {
    let session = inner.link.session.load(Ordering::Relaxed);
    let stream = new_stream(inner).await?;
    match open_connection(stream, &inner.peer, &inner.config, &inner.shared, Some(session)).await {
        Ok((connection, Reply::Resumed { state_kept: true, .. })) => {
            Ok((connection, LinkEvent::Resumed { kept: true }))
        }
        Ok((connection, _)) => {
            let chunks = inner.holdings.lock().expect("holdings lock").reclaims();
            for chunk in chunks {
                if let Err(error) = reclaim(inner, &connection, chunk).await {
                    connection.close(format!("reclaim failed: {error}"));
                    return Err(error);
                }
            }
            Ok((connection, LinkEvent::Resumed { kept: false }))
        }
        Err(error) if error.errno == Errno::ESTALE => {
            // Said in the log with the outcome (`session::Link::restored`).
            tracing::debug!(peer = %inner.peer, %error, "the server no longer knows this session; starting a new one");
            let stream = new_stream(inner).await?;
            let (connection, reply) = open_connection(stream, &inner.peer, &inner.config, &inner.shared, None).await?;
            let Reply::Hello { session, .. } = reply else {
                connection.close("unexpected reply to hello");
                return Err(Error::new(Errno::EPROTO, format!("unexpected reply {reply:?}")));
            };
            inner.holdings.lock().expect("holdings lock").session_lost();
            inner.link.session.store(session, Ordering::Relaxed);
            Ok((connection, LinkEvent::NewSession))
        }
        Err(error) => Err(error),
    }
}

/// Sends one `Op::Reclaim` chunk on `connection`; what could not be taken back is dead.
async fn reclaim(inner: &Inner, connection: &Connection, chunk: Op) -> Result<()> {
    let header = encode_header(&Request { caller: inner.caller.clone(), op: chunk });
    let frame = connection
        .call(header, Bytes::new())
        .await
        .map_err(|closed| Error::new(Errno::ENOTCONN, closed.to_string()))?;
    let reply: ReplyHeader = frame
        .decode_header()
        .map_err(|error| Error::new(Errno::EPROTO, format!("undecodable reply to reclaim: {error}")))?;
    match reply.result? {
        Reply::Reclaimed { lost_handles, lost_pins } => {
            let mut holdings = inner.holdings.lock().expect("holdings lock");
            for handle in lost_handles {
                holdings.handles.remove(&handle);
                holdings.dead.insert(handle);
            }
            for ino in lost_pins {
                if let Some(count) = holdings.pins.remove(&ino) {
                    *holdings.lost_pins.entry(ino).or_insert(0) += count;
                }
            }
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}

/// A revocation: drops the leases from the cache, runs the hook, then acknowledges.
fn revoked(
    shared: Arc<Shared>,
    connection: Option<&Connection>,
    leases: Vec<Grant>,
    cause: Cause,
) -> BoxFuture<(Bytes, Bytes)> {
    let started = std::time::Instant::now();
    let next_request = connection.map_or(1, Connection::next_request_id);
    shared.cache().on_revoke(&leases, next_request);
    let hook = shared.revocation_hook.read().expect("revocation hook lock").clone();
    let forgotten = hook.map_or(Forgotten::All, |hook| hook(&leases, cause));
    shared.counters.revocations_received.fetch_add(1, Ordering::Relaxed);
    let micros = started.elapsed().as_micros() as u64;
    shared.counters.revocation_handling_micros.fetch_add(micros, Ordering::Relaxed);
    if shared.cache().has_releases() {
        shared.releases.notify_one();
    }
    // The cache is updated already; the acknowledgement waits until the hook's copies are gone
    // (a copy kept makes it wait the trust window, shorter than the server's patience, which is
    // the whole lease timeout), and in tests at a pause point.
    Box::pin(async move {
        let trust_window = shared.kept_copies_wait();
        if forgotten.settle(trust_window).await {
            shared.counters.hook_copies_kept.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(?trust_window, "a revocation was acknowledged late: a mirrored copy could not be dropped");
        }
        shared.pause_points.pause("client.revoke.before_ack").await;
        (encode_header(&CallbackReply::Revoked), Bytes::new())
    })
}

impl Client {
    /// Connects over TCP with the default configuration.
    pub async fn connect(address: &str) -> Result<Client> {
        Client::connect_with(address, ClientConfig::default()).await
    }

    pub async fn connect_with(address: &str, config: ClientConfig) -> Result<Client> {
        let target = address.to_string();
        let tls = match &config.tls {
            Some(tls) => {
                let name = tls.name_for(address).map_err(|error| Error::new(Errno::EINVAL, error.to_string()))?;
                Some((tokio_rustls::TlsConnector::from(tls.config.clone()), name))
            }
            None => None,
        };
        let connector: Connector = Arc::new(move || {
            let target = target.clone();
            let tls = tls.clone();
            Box::pin(async move {
                let stream = tokio::net::TcpStream::connect(&target).await?;
                let _ = stream.set_nodelay(true);
                match tls {
                    // A failed TLS handshake (an untrusted certificate, a server without TLS)
                    // is an I/O error here: ECONNREFUSED-like, with rustls's reason.
                    Some((connector, name)) => {
                        let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connector.connect(name, stream));
                        let stream = handshake
                            .await
                            .map_err(|_| {
                                std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    format!("no TLS handshake within {TLS_HANDSHAKE_TIMEOUT:?}"),
                                )
                            })?
                            .map_err(|error| {
                                // A plain server reads the ClientHello as a broken frame and
                                // hangs up: all rustls sees is a reset.
                                std::io::Error::new(
                                    error.kind(),
                                    format!("TLS handshake: {error} (is the server running with --tls?)"),
                                )
                            })?;
                        Ok(Box::new(stream) as Box<dyn Stream>)
                    }
                    None => Ok(Box::new(stream) as Box<dyn Stream>),
                }
            })
        });
        let stream = connector()
            .await
            .map_err(|error| Error::new(Errno::from_io(&error), format!("connecting to {address}: {error}")))?;
        Client::start(stream, address.to_string(), config, Some(connector)).await
    }

    /// Runs the hello on any byte stream and starts the session on it. Such a session cannot
    /// reconnect (use `handshake_with` with a connector for that).
    pub async fn handshake<S: Stream>(stream: S, peer: String, config: ClientConfig) -> Result<Client> {
        Client::start(stream, peer, config, None).await
    }

    /// `handshake`, with a way to open new streams to the same server, so the session survives a
    /// broken connection and a server restart (`session.rs`).
    pub async fn handshake_with<S: Stream>(
        stream: S,
        peer: String,
        config: ClientConfig,
        connector: Connector,
    ) -> Result<Client> {
        Client::start(stream, peer, config, Some(connector)).await
    }

    async fn start<S: Stream>(
        stream: S,
        peer: String,
        config: ClientConfig,
        connector: Option<Connector>,
    ) -> Result<Client> {
        let shared = Arc::new(Shared {
            // The validity is set from the server's lease timeout below.
            cache: sync::Mutex::new(cache::State::with_clock(
                Duration::ZERO,
                config.cache_entries_max,
                clock::TrustClock::new(config.suspend_clock.clone()),
            )),
            counters: Counters::default(),
            releases: Notify::new(),
            pause_points: config.pause_points.clone(),
            retry_stale_by_name: config.retry_stale_by_name,
            release_through_hook: config.release_through_hook,
            wait_out_kept_copies: config.wait_out_kept_copies,
            revocation_hook: std::sync::RwLock::new(None),
            link_hook: std::sync::RwLock::new(None),
        });
        if config.fault_cache_under_revoked_lease {
            shared.cache().plant_cache_unheld();
        }
        let (connection, reply) = open_connection(stream, &peer, &config, &shared, None).await?;
        let Reply::Hello { session, server_name, .. } = reply else {
            return Err(Error::new(Errno::EPROTO, format!("hello to {peer}: unexpected reply {reply:?}")));
        };
        let (state, _) = watch::channel(session::LinkState::Up { connection: connection.clone(), generation: 1 });
        let inner = Arc::new(Inner {
            link: session::Link {
                state,
                session: AtomicU64::new(session),
                connector,
                reconnect_wait: config.reconnect_wait,
                closing: std::sync::atomic::AtomicBool::new(false),
                generations: AtomicU64::new(1),
                waiting: std::sync::atomic::AtomicUsize::new(0),
                outage: Mutex::new(None),
            },
            holdings: Mutex::new(session::Holdings::default()),
            slots: session::Slots::new(),
            peer,
            server_name,
            caller: config.caller.clone(),
            config,
            shared: shared.clone(),
            lookups: Mutex::new(HashMap::new()),
            removals: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            suspension_watched: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(give_leases_back(Arc::downgrade(&inner), shared));
        tokio::spawn(watch_connection(Arc::downgrade(&inner), connection));
        Ok(Client { caller: inner.caller.clone(), inner })
    }

    /// The same session (cache, connection) making calls as `caller`: the owner of what they
    /// create. A FUSE mount stamps each kernel request's uid and gid this way.
    pub fn as_caller(&self, caller: Caller) -> Client {
        Client { inner: self.inner.clone(), caller }
    }

    /// Sets (or with `None`, clears) what runs on every revocation before it is acknowledged
    /// (see `RevocationHook`). One per session; a later call replaces it.
    pub fn set_revocation_hook(&self, hook: Option<RevocationHook>) {
        *self.inner.shared.revocation_hook.write().expect("revocation hook lock") = hook;
    }

    /// How long another cache (the kernel's) may keep the entry `name` -> `ino` in `parent`, and
    /// the attributes of `ino`: while this client holds their leases (it runs the revocation hook
    /// before any change to them is answered) and trusts them, that is until half the lease
    /// timeout after the client sent the latest request the server answered, if no later one
    /// is. Zero for what is not leased (or a name that names another inode). One look at the
    /// cache for both.
    pub fn leases_left(&self, parent: u64, name: &[u8], ino: u64) -> (Duration, Duration) {
        let mut cache = self.inner.shared.cache();
        let trust = cache.trust_left();
        let name = match cache.name(parent, name) {
            Some(Some((cached, _))) if cached == ino => trust,
            _ => Duration::ZERO,
        };
        (name, if cache.has_attr(ino) { trust } else { Duration::ZERO })
    }

    /// The same for the attributes of `ino` alone.
    pub fn attr_lease_left(&self, ino: u64) -> Duration {
        let cache = self.inner.shared.cache();
        if cache.has_attr(ino) { cache.trust_left() } else { Duration::ZERO }
    }

    /// The session's id (a new one after the server stopped knowing the old one).
    pub fn session(&self) -> u64 {
        self.inner.link.session.load(Ordering::Relaxed)
    }

    /// Sets (or with `None`, clears) what runs on every change of the link: lost, resumed, new
    /// session, the machine suspended (see `LinkEvent`). One per session; a later call replaces
    /// it.
    pub fn set_link_hook(&self, hook: Option<LinkHook>) {
        let watch = hook.is_some() && !self.inner.suspension_watched.swap(true, Ordering::AcqRel);
        *self.inner.shared.link_hook.write().expect("link hook lock") = hook;
        if watch {
            self.inner.runtime.spawn(watch_suspension(Arc::downgrade(&self.inner)));
        }
    }

    pub fn server_name(&self) -> &str {
        &self.inner.server_name
    }

    /// The server has been unreachable since the connection was lost, and no new one is up yet:
    /// for how long, and the requests waiting for it. `None` while connected.
    pub fn outage(&self) -> Option<Outage> {
        self.inner.link.outage()
    }

    pub fn stats(&self) -> ClientStats {
        let counters = &self.inner.shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ClientStats {
            requests_sent: load(&counters.requests_sent),
            requests_by_kind: Op::KIND_NAMES
                .iter()
                .zip(counters.requests_by_kind.iter())
                .map(|(kind, count)| (*kind, load(count)))
                .filter(|(_, count)| *count > 0)
                .collect(),
            cache_hits: load(&counters.cache_hits),
            cache_misses: load(&counters.cache_misses),
            lookups_shared: load(&counters.lookups_shared),
            callbacks_received: load(&counters.callbacks_received),
            revocations_received: load(&counters.revocations_received),
            revocation_handling_micros: load(&counters.revocation_handling_micros),
            hook_copies_kept: load(&counters.hook_copies_kept),
            leases_held: self.inner.shared.cache().leases_held() as u64,
            leases_released: load(&counters.leases_released),
            stale_retries: load(&counters.stale_retries),
        }
    }

    /// Asserts the cache invariants of semantics.md (for tests; panics on a violation).
    #[doc(hidden)]
    pub fn check_cache_invariants(&self) {
        self.inner.shared.cache().check_invariants();
    }

    /// The pause points this client stops at (for tests that force races).
    #[doc(hidden)]
    pub fn pause_points(&self) -> &PausePoints {
        &self.inner.shared.pause_points
    }

    /// Ends the session: the server releases its handles, pins and leases at once (rather than
    /// keep them for a reconnection). Returns before the server has heard it; `end` waits.
    pub fn close(&self) {
        self.inner.link.closing.store(true, Ordering::Relaxed);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let client = self.clone();
                runtime.spawn(async move { client.end().await });
            }
            Err(_) => self.inner.drop_connection("client closed the session"),
        }
    }

    /// Drops the connection as a crashed client would: no goodbye, no reconnection. The server
    /// keeps the session for its grace period (simulator and tests only).
    #[doc(hidden)]
    pub fn crash(&self) {
        self.inner.drop_connection("client crashed");
    }

    /// Ends the session and waits (briefly) for the server to have heard it.
    pub async fn end(&self) {
        self.inner.link.closing.store(true, Ordering::Relaxed);
        let state = self.inner.link.state.borrow().clone();
        if let session::LinkState::Up { connection, .. } = state {
            let header = encode_header(&Request { caller: self.caller.clone(), op: Op::EndSession });
            let _ = tokio::time::timeout(END_SESSION_WAIT, connection.call(header, Bytes::new())).await;
        }
        self.inner.drop_connection("client closed the session");
    }

    /// Sends one request; returns its reply header (with grants) and payload. A request that
    /// changes state goes as `Op::Once`, and every request is sent again after a reconnection
    /// (at most `RESENDS_MAX` times in all; see `session.rs`).
    pub(crate) async fn request(&self, op: Op, payload: Bytes) -> Result<(ReplyHeader, Bytes)> {
        let wait = self.inner.link.reconnect_wait;
        if matches!(op, Op::Close { .. } | Op::Unpin { .. }) && wait != session::RECONNECT_WAIT_FOREVER {
            return self.give_back(op, payload, wait).await;
        }
        self.request_with(op, payload, session::Patience::new(wait)).await
    }

    /// A close or an unpin gives back what the server keeps for the session. Failing it for want
    /// of a server would give nothing back: the server keeps the handle or pin as long as the
    /// session, and a restarted one is handed it again (`Holdings`), while the caller (a mount's
    /// `forget`, a `File` dropped) would count it as given. So once it has waited `wait` for a
    /// connection, the caller is answered as if it were done, and the request waits on in a task
    /// of its own: sent (once, as `Op::Once`) when the connection is back, or ended with the
    /// session (`close`, `end`), which that task keeps alive meanwhile.
    async fn give_back(&self, op: Op, payload: Bytes, wait: Duration) -> Result<(ReplyHeader, Bytes)> {
        let (exhausted, waited_out) = tokio::sync::oneshot::channel();
        let client = self.clone();
        let mut sending =
            tokio::spawn(
                async move { client.request_with(op, payload, session::Patience::telling(wait, exhausted)).await },
            );
        tokio::select! {
            biased;
            sent = &mut sending => match sent {
                Ok(result) => result,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => Err(Error::new(Errno::ENOTCONN, "the runtime is shutting down")),
            },
            // Not told (the sender dropped): the request ended, the branch above answers.
            Ok(()) = waited_out => {
                tracing::debug!(?wait, "a give-back waits on for the server in the background");
                Ok((ReplyHeader::new(Ok(Reply::Done)), Bytes::new()))
            }
        }
    }

    /// `request`, waiting for a connection as long as `patience` lasts.
    async fn request_with(
        &self,
        op: Op,
        payload: Bytes,
        mut patience: session::Patience,
    ) -> Result<(ReplyHeader, Bytes)> {
        let counters = &self.inner.shared.counters;
        counters.requests_sent.fetch_add(1, Ordering::Relaxed);
        counters.requests_by_kind[op.kind_index()].fetch_add(1, Ordering::Relaxed);
        let kind = op.kind_name();
        let slot = match op.changes_state() {
            true => {
                // While the server is unreachable, wait for it here, where the wait counts
                // against `patience`, rather than hold one of the few slots: a change queued
                // behind give-backs waiting on (`give_back`) would wait for a slot unbounded.
                self.inner.link.connection(&mut patience).await?;
                Some(self.inner.slots.take().await)
            }
            false => None,
        };
        let wire = match &slot {
            Some(slot) => Op::Once { slot: slot.slot, seq: slot.seq, op: Box::new(op.clone()) },
            None => op.clone(),
        };
        let header = encode_header(&Request { caller: self.caller.clone(), op: wire });
        let mut sent = 0;
        let mut first_session = None;
        let frame = loop {
            let (connection, generation) = self.inner.link.connection(&mut patience).await?;
            // Checked on each attempt: the session may have been lost while the last one failed.
            if let Some(answer) = self.answer_locally(&op) {
                return answer;
            }
            let session = self.session();
            if slot.is_some() && *first_session.get_or_insert(session) != session {
                // The server forgot the session that may have made this change (it was evicted):
                // sent again under a new one, it could run twice. Its outcome is unknown.
                return Err(Error::new(
                    Errno::EIO,
                    format!(
                        "the session was evicted while this {kind} was in flight; it may or may not have been made"
                    ),
                ));
            }
            sent += 1;
            tracing::trace!(session, sent, ?op, "request");
            let sent_at = self.inner.shared.cache().now().as_nanos() as u64;
            match connection.call_stamped(header.clone(), payload.clone(), sent_at).await {
                Ok(frame) => break frame,
                Err(closed) if sent >= session::RESENDS_MAX || !self.inner.link.can_reconnect() => {
                    return Err(Error::new(Errno::ENOTCONN, closed.to_string()));
                }
                // Sent again once the session is back: as `Once`, a change is not run twice.
                Err(_) => self.inner.link.after(generation, &mut patience).await?,
            }
        };
        drop(slot);
        let reply: ReplyHeader = frame
            .decode_header()
            .map_err(|error| Error::new(Errno::EPROTO, format!("undecodable reply to {kind}: {error}")))?;
        tracing::trace!(result = ?reply.result, "reply");
        let mut holdings = self.inner.holdings.lock().expect("holdings lock");
        if let Op::Close { handle } = op {
            holdings.closed(handle);
        }
        if let Ok(reply) = &reply.result {
            holdings.note(&op, reply, &self.caller);
        }
        drop(holdings);
        Ok((reply, frame.payload))
    }

    /// Answers a request about what a lost session held, without the server: a handle of it
    /// fails with EIO (its close succeeds), and unpinning one of its pins succeeds.
    fn answer_locally(&self, op: &Op) -> Option<Result<(ReplyHeader, Bytes)>> {
        let mut holdings = self.inner.holdings.lock().expect("holdings lock");
        let done = || Some(Ok((ReplyHeader::new(Ok(Reply::Done)), Bytes::new())));
        if let Some(handle) = session::Holdings::handle_of(op)
            && holdings.dead.contains(&handle)
        {
            if matches!(op, Op::Close { .. }) {
                holdings.dead.remove(&handle);
                return done();
            }
            return Some(Err(Error::new(Errno::EIO, "the file was open in a session the server no longer knows")));
        }
        if let Op::Unpin { ino, count } = op
            && let Some(lost) = holdings.lost_pins.get_mut(ino)
            && *lost >= *count
        {
            *lost -= count;
            if *lost == 0 {
                holdings.lost_pins.remove(ino);
            }
            return done();
        }
        None
    }

    /// Sends one request and waits for its reply (no caching).
    pub async fn call(&self, op: Op, payload: Bytes) -> Result<(Reply, Bytes)> {
        let (header, payload) = self.request(op, payload).await?;
        Ok((header.result?, payload))
    }

    // ---- path API ----

    /// Attributes of what `path` names, following symlinks.
    pub async fn stat(&self, path: impl AsRef<Path>) -> Result<Attr> {
        let path = path.as_ref();
        self.stat_path(bytes(path), true).await.map_err(|error| error.context(format!("stat {}", path.display())))
    }

    /// Attributes of what `path` names, not following a final symlink.
    pub async fn lstat(&self, path: impl AsRef<Path>) -> Result<Attr> {
        let path = path.as_ref();
        self.stat_path(bytes(path), false).await.map_err(|error| error.context(format!("lstat {}", path.display())))
    }

    async fn stat_path(&self, path: &[u8], follow: bool) -> Result<Attr> {
        let fast = self.resolve(path, follow).await;
        // A trailing slash follows a final symlink and asks for a directory (as in `resolve`).
        let directory_only = path::names_directory(path);
        let op = Op::GetAttr { ino: 0 };
        let attr = self.or_on_path(fast, path, follow || directory_only, op, Bytes::new(), expect_attr).await?;
        if directory_only && attr.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR.into());
        }
        Ok(attr)
    }

    /// Gives a path call's fast result, or, if the fast path met a stale inode id, the result of
    /// the same call made by name on the server in one atomic step (see `retry.rs`).
    async fn or_by_name<T>(
        &self,
        fast: Result<T>,
        path: &[u8],
        new_path: Option<&[u8]>,
        make_op: impl Fn(Vec<u8>, Option<Vec<u8>>) -> Op,
        convert: impl FnOnce(Reply) -> Result<T>,
    ) -> Result<T> {
        match fast {
            Err(error) if error.errno == Errno::ESTALE && self.inner.shared.retry_stale_by_name => {
                let request = retry::ByName {
                    path: path.to_vec(),
                    new_path: new_path.map(<[u8]>::to_vec),
                    follow_last: false,
                    at_directory: None,
                };
                convert(self.by_name(request, make_op).await?.0)
            }
            other => other,
        }
    }

    /// Does `path` name something? (Errors other than ENOENT are errors.)
    pub async fn exists(&self, path: impl AsRef<Path>) -> Result<bool> {
        match self.lstat(path).await {
            Ok(_) => Ok(true),
            Err(error) if error.errno == Errno::ENOENT => Ok(false),
            Err(error) => Err(error),
        }
    }

    pub async fn open(&self, path: impl AsRef<Path>, options: &OpenOptions) -> Result<File> {
        let path = path.as_ref();
        let fast = self.open_path(bytes(path), options).await;
        let opened = match fast {
            Err(error) if error.errno == Errno::ESTALE && self.inner.shared.retry_stale_by_name => {
                self.open_by_name(bytes(path), options.flags()?, options.perm, !options.no_follow).await
            }
            other => other,
        };
        opened.map_err(|error| error.context(format!("open {}", path.display())))
    }

    async fn open_path(&self, path: &[u8], options: &OpenOptions) -> Result<File> {
        let flags = options.flags()?;
        if path::names_directory(path) {
            // "name/" can only open an existing directory, and only for reading.
            let changes = [OpenFlags::WRITE, OpenFlags::APPEND, OpenFlags::CREATE, OpenFlags::TRUNCATE];
            let writing = changes.into_iter().any(|flag| flags.contains(flag));
            return match self.resolve(path, true).await {
                Err(error) if error.errno == Errno::ENOENT && flags.contains(OpenFlags::CREATE) => {
                    Err(Errno::EISDIR.into())
                }
                Err(error) => Err(error),
                Ok(_) if writing => Err(Errno::EISDIR.into()),
                Ok(attr) => {
                    // Tests stop here to let another client replace the directory.
                    self.inner.shared.pause_points.pause("client.open.after_resolve").await;
                    self.open_ino(attr.ino, flags | OpenFlags::DIRECTORY).await
                }
            };
        }
        let original = path;
        let mut walk = Walk::root();
        let mut path = path.to_vec();
        for _ in 0..=path::SYMLINKS_FOLLOWED_MAX {
            let name = match self.walk_parent(&mut walk, &path).await {
                Ok(name) => name,
                // Opening "/" (or "a/.."): there is no name to open by; open the directory itself.
                // (From where the walk stands: a symlink's "." or ".." is relative to its directory.)
                Err(error) if error.errno == Errno::EBUSY || error.errno == Errno::EINVAL => {
                    let attr = self.walk(&mut walk, components(&path), true).await?;
                    return self.open_ino(attr.ino, flags).await;
                }
                Err(error) => return Err(error),
            };
            match self.open_at(walk.directory(), &name, flags, options.perm).await {
                Err(error) if error.errno == Errno::ELOOP && !options.no_follow => {
                    // The name is a symlink: the server never follows one, we do.
                    self.inner.shared.pause_points.pause("client.open.after_eloop").await;
                    let attr = match self.lookup(walk.directory(), &name).await {
                        Ok(attr) if attr.kind == FileKind::Symlink => attr,
                        // Removed or replaced since the open saw a symlink there (an O_CREAT open
                        // must then create, not fail): open by name on the server, where finding
                        // the symlink and reading its target are one step.
                        Ok(_) | Err(Error { errno: Errno::ENOENT, .. }) => {
                            return self.open_by_name(original, flags, options.perm, true).await;
                        }
                        Err(error) => return Err(error),
                    };
                    path = self.readlink_ino(attr.ino).await?;
                    if path.starts_with(b"/") {
                        walk = Walk::root();
                    }
                }
                other => return other,
            }
        }
        Err(Errno::ELOOP.into())
    }

    /// Opens for writing, creating or truncating (`File::create` of std).
    pub async fn create(&self, path: impl AsRef<Path>) -> Result<File> {
        self.open(path, OpenOptions::new().write(true).create(true).truncate(true)).await
    }

    /// The whole contents of a file.
    pub async fn read(&self, path: impl AsRef<Path>) -> Result<Vec<u8>> {
        let mut file = self.open(&path, OpenOptions::new().read(true)).await?;
        let contents = file.read_to_end().await;
        file.close().await?;
        contents.map_err(|error| error.context(format!("read {}", path.as_ref().display())))
    }

    /// Replaces the contents of a file, creating it if needed.
    pub async fn write(&self, path: impl AsRef<Path>, contents: &[u8]) -> Result<()> {
        let mut file = self.create(&path).await?;
        let written = file.write_all(contents).await;
        file.close().await?;
        written.map_err(|error| error.context(format!("write {}", path.as_ref().display())))
    }

    /// Walks to `path`'s parent with cached names and runs `action` on (parent, last name).
    async fn at_parent<T, F, Fut>(&self, path: &Path, action: F) -> Result<T>
    where
        F: FnOnce(u64, Vec<u8>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut walk = Walk::root();
        let name = self.walk_parent(&mut walk, bytes(path)).await?;
        action(walk.directory(), name).await
    }

    async fn with_parent<T, F, Fut>(&self, verb: &str, path: &Path, action: F) -> Result<T>
    where
        F: FnOnce(u64, Vec<u8>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.at_parent(path, action).await.map_err(|error| error.context(format!("{verb} {}", path.display())))
    }

    /// A namespace change at `path`'s parent: the fast path walks to the parent with cached names
    /// and runs `fast` there by id; if anything on the way (the walk included: a directory or
    /// symlink it went through may be gone) met a stale id, the change is made by name (`make`).
    async fn change_at_parent<T, F, Fut>(
        &self,
        verb: &str,
        path: &Path,
        fast: F,
        make: impl Fn(Vec<u8>, Option<Vec<u8>>) -> Op,
        convert: impl FnOnce(Reply) -> Result<T>,
    ) -> Result<T>
    where
        F: FnOnce(u64, Vec<u8>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let fast = self.at_parent(path, fast).await;
        let result = self.or_by_name(fast, bytes(path), None, make, convert).await;
        result.map_err(|error| error.context(format!("{verb} {}", path.display())))
    }

    pub async fn mkdir(&self, path: impl AsRef<Path>, perm: u32) -> Result<Attr> {
        let path = path.as_ref();
        let fast = |parent, name: Vec<u8>| async move { self.mkdir_at(parent, &name, perm).await };
        let make = |name, _| Op::Mkdir { parent: 0, name, perm };
        self.change_at_parent("mkdir", path, fast, make, expect_entry).await.map_err(|error| {
            if components(bytes(path)).is_empty() {
                Error::from(Errno::EEXIST).context(format!("mkdir {}", path.display()))
            } else {
                error
            }
        })
    }

    /// Makes a directory and any missing parents (`mkdir -p`); an existing directory is fine.
    pub async fn create_dir_all(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut walk = Walk::root();
        let mut pending = components(bytes(path));
        while let Some(component) = pending.pop_front() {
            let name = match component {
                path::Component::Parent => {
                    self.walk(&mut walk, [path::Component::Parent].into(), true).await?;
                    continue;
                }
                path::Component::Name(name) => name,
            };
            let attr = match self.mkdir_at(walk.directory(), &name, 0o755).await {
                Ok(attr) => attr,
                Err(error) if error.errno == Errno::EEXIST => {
                    self.walk(&mut walk.clone(), [path::Component::Name(name)].into(), true).await?
                }
                Err(error) => return Err(error.context(format!("mkdir -p {}", path.display()))),
            };
            if attr.kind != FileKind::Directory {
                return Err(Error::from(Errno::ENOTDIR).context(format!("mkdir -p {}", path.display())));
            }
            walk.stack.push(attr.ino);
        }
        Ok(())
    }

    pub async fn remove_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if path::names_directory(bytes(path)) {
            // "name/" names a directory, which unlink refuses; or nothing unlink could remove.
            let refusal = match self.resolve(bytes(path), true).await {
                Ok(_) => Error::from(Errno::EISDIR),
                Err(error) => error,
            };
            return Err(refusal.context(format!("unlink {}", path.display())));
        }
        let fast = |parent, name: Vec<u8>| async move { self.unlink_at(parent, &name).await };
        self.change_at_parent("unlink", path, fast, |name, _| Op::Unlink { parent: 0, name }, expect_done).await
    }

    pub async fn remove_dir(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let fast = |parent, name: Vec<u8>| async move { self.rmdir_at(parent, &name).await };
        self.change_at_parent("rmdir", path, fast, |name, _| Op::Rmdir { parent: 0, name }, expect_done).await
    }

    /// Removes a directory and everything below it (`rm -r`), or a single non-directory.
    pub async fn remove_all(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let attr = self.lstat(path).await?;
        if attr.kind != FileKind::Directory {
            return self.remove_file(path).await;
        }
        self.with_parent("rm -r", path, |parent, name| async move { self.remove_tree_at(parent, &name).await }).await
    }

    /// Removes the directory `name` in `parent` with everything below it.
    async fn remove_tree_at(&self, parent: u64, name: &[u8]) -> Result<()> {
        // (directory holding it, its name, its inode)
        let mut stack: Vec<(u64, Vec<u8>, u64)> = Vec::new();
        let top = self.lookup(parent, name).await?;
        stack.push((parent, name.to_vec(), top.ino));
        while let Some((holder, name, ino)) = stack.last().cloned() {
            let entries = self.read_dir_ino(ino, false).await?;
            let mut descended = false;
            for entry in entries {
                if entry.kind == FileKind::Directory {
                    stack.push((ino, entry.name.clone(), entry.ino));
                    descended = true;
                    break;
                }
                self.unlink_at(ino, &entry.name).await.or_else(ignore_enoent)?;
            }
            if !descended {
                self.rmdir_at(holder, &name).await.or_else(ignore_enoent)?;
                stack.pop();
            }
        }
        Ok(())
    }

    pub async fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<()> {
        self.rename_with(from, to, RenameMode::Replace).await
    }

    pub async fn rename_with(&self, from: impl AsRef<Path>, to: impl AsRef<Path>, mode: RenameMode) -> Result<()> {
        let (from, to) = (from.as_ref(), to.as_ref());
        let run = async {
            if path::names_directory(bytes(from)) || path::names_directory(bytes(to)) {
                // A trailing slash on either side says the source is a directory.
                let source = self.walk(&mut Walk::root(), components(bytes(from)), false).await?;
                if source.kind != FileKind::Directory {
                    return Err(Errno::ENOTDIR.into());
                }
            }
            let fast = async {
                let mut source = Walk::root();
                let name = self.walk_parent(&mut source, bytes(from)).await?;
                let mut target = Walk::root();
                let new_name = self.walk_parent(&mut target, bytes(to)).await?;
                self.rename_at(source.directory(), &name, target.directory(), &new_name, mode).await
            };
            let fast = fast.await;
            let make = |name, new_name: Option<Vec<u8>>| Op::Rename {
                parent: 0,
                name,
                new_parent: 0,
                new_name: new_name.expect("a rename has a target"),
                mode,
            };
            self.or_by_name(fast, bytes(from), Some(bytes(to)), make, expect_done).await
        };
        run.await.map_err(|error| error.context(format!("rename {} to {}", from.display(), to.display())))
    }

    /// Makes `link` a new name of the file at `original` (not following a final symlink).
    pub async fn hard_link(&self, original: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<Attr> {
        let (original, link) = (original.as_ref(), link.as_ref());
        let source = self.lstat(original).await?;
        // Tests stop here to let another client replace the source between its lookup and the link.
        self.inner.shared.pause_points.pause("client.link.after_resolve").await;
        let fast = self
            .with_parent("link", link, |parent, name| async move { self.link_at(source.ino, parent, &name).await })
            .await;
        match fast {
            // ENOENT too: the inode found may have lost its name (an orphan) to a newer file.
            Err(error)
                if (error.errno == Errno::ESTALE || error.errno == Errno::ENOENT)
                    && self.inner.shared.retry_stale_by_name =>
            {
                self.link_by_name(bytes(original), bytes(link))
                    .await
                    .and_then(expect_entry)
                    .map_err(|error| error.context(format!("link {}", link.display())))
            }
            other => other,
        }
    }

    /// Makes `link` a symlink pointing at `target` (stored as given).
    pub async fn symlink(&self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<Attr> {
        let target = bytes(target.as_ref()).to_vec();
        let link = link.as_ref();
        let fast = |parent, name: Vec<u8>| {
            let target = target.clone();
            async move { self.symlink_at(parent, &name, &target).await }
        };
        let make = |name, _| Op::Symlink { parent: 0, name, target: target.clone() };
        self.change_at_parent("symlink", link, fast, make, expect_entry).await
    }

    pub async fn read_link(&self, path: impl AsRef<Path>) -> Result<Vec<u8>> {
        let path = path.as_ref();
        let attr = self.lstat(path).await?;
        let fast = self.readlink_ino(attr.ino).await;
        let convert = |reply, _| match reply {
            Reply::Target { target } => Ok(target),
            other => Err(unexpected(&other)),
        };
        let result = self.or_on_path(fast, bytes(path), false, Op::Readlink { ino: 0 }, Bytes::new(), convert).await;
        result.map_err(|error| error.context(format!("readlink {}", path.display())))
    }

    /// All entries of a directory (without "." and ".."), in cookie order.
    pub async fn read_dir(&self, path: impl AsRef<Path>) -> Result<Vec<DirEntry>> {
        self.read_dir_path(path.as_ref(), false).await
    }

    /// All entries of a directory with their attributes.
    pub async fn read_dir_plus(&self, path: impl AsRef<Path>) -> Result<Vec<DirEntry>> {
        self.read_dir_path(path.as_ref(), true).await
    }

    async fn read_dir_path(&self, path: &Path, with_attrs: bool) -> Result<Vec<DirEntry>> {
        let fast = match self.stat(path).await {
            Ok(attr) if attr.kind != FileKind::Directory => Err(Errno::ENOTDIR.into()),
            Ok(attr) => {
                // Tests stop here to let another client replace the directory before it is listed.
                self.inner.shared.pause_points.pause("client.readdir.after_resolve").await;
                self.read_dir_ino(attr.ino, with_attrs).await
            }
            Err(error) => Err(error),
        };
        let listed = match fast {
            // The directory the walk found was removed before (or while) it was listed. List what
            // the path names now through a handle, opened by name in one step: the handle keeps
            // the directory alive to the last page (an orphan, if removed meanwhile), so the
            // pages cannot go stale, and the listing is that of an opendir at that instant.
            Err(error) if error.errno == Errno::ESTALE && self.inner.shared.retry_stale_by_name => {
                let directory = self.open_by_name(bytes(path), OpenFlags::READ | OpenFlags::DIRECTORY, 0, true).await?;
                let listed = self.read_dir_ino(directory.ino(), with_attrs).await;
                let closed = directory.close().await;
                listed.and_then(|entries| closed.map(|()| entries))
            }
            other => other,
        };
        listed.map_err(|error| error.context(format!("readdir {}", path.display())))
    }

    async fn setattr_path(&self, verb: &str, path: &Path, set: SetAttrIn) -> Result<Attr> {
        let attr = self.stat(path).await?;
        // Tests stop here to let another client replace the file between its lookup and the change.
        self.inner.shared.pause_points.pause("client.setattr.after_resolve").await;
        let fast = self.setattr(attr.ino, set.clone()).await;
        let op = Op::SetAttr { ino: 0, set };
        self.or_on_path(fast, bytes(path), true, op, Bytes::new(), expect_attr)
            .await
            .map_err(|error| error.context(format!("{verb} {}", path.display())))
    }

    /// Gives a call's fast result, or, if it met a stale inode id, the result of `op` run on the
    /// inode `path` names, found by name on the server in the same step (see `retry.rs`).
    async fn or_on_path<T>(
        &self,
        fast: Result<T>,
        path: &[u8],
        follow_last: bool,
        op: Op,
        payload: Bytes,
        convert: impl FnOnce(Reply, Bytes) -> Result<T>,
    ) -> Result<T> {
        match fast {
            Err(error) if error.errno == Errno::ESTALE && self.inner.shared.retry_stale_by_name => {
                let (reply, data) = self.on_path(path, follow_last, op, payload).await?;
                convert(reply, data)
            }
            other => other,
        }
    }

    pub async fn set_permissions(&self, path: impl AsRef<Path>, perm: u32) -> Result<Attr> {
        self.setattr_path("chmod", path.as_ref(), SetAttrIn { perm: Some(perm), ..Default::default() }).await
    }

    pub async fn set_owner(&self, path: impl AsRef<Path>, uid: Option<u32>, gid: Option<u32>) -> Result<Attr> {
        self.setattr_path("chown", path.as_ref(), SetAttrIn { uid, gid, ..Default::default() }).await
    }

    pub async fn truncate(&self, path: impl AsRef<Path>, size: u64) -> Result<Attr> {
        self.setattr_path("truncate", path.as_ref(), SetAttrIn { size: Some(size), ..Default::default() }).await
    }

    pub async fn set_times(
        &self,
        path: impl AsRef<Path>,
        atime: Option<TimeSet>,
        mtime: Option<TimeSet>,
    ) -> Result<Attr> {
        self.setattr_path("utimes", path.as_ref(), SetAttrIn { atime, mtime, ..Default::default() }).await
    }

    pub async fn get_xattr(&self, path: impl AsRef<Path>, name: &[u8]) -> Result<Vec<u8>> {
        let path = path.as_ref();
        let attr = self.stat(path).await?;
        let fast = self.getxattr_ino(attr.ino, name).await;
        let op = Op::GetXattr { ino: 0, name: name.to_vec() };
        let convert = |reply, value: Bytes| match reply {
            Reply::Xattr => Ok(value.to_vec()),
            other => Err(unexpected(&other)),
        };
        let result = self.or_on_path(fast, bytes(path), true, op, Bytes::new(), convert).await;
        result.map_err(|error| error.context(format!("getxattr {}", path.display())))
    }

    pub async fn set_xattr(&self, path: impl AsRef<Path>, name: &[u8], value: &[u8], mode: XattrMode) -> Result<()> {
        let path = path.as_ref();
        let attr = self.stat(path).await?;
        let fast = self.setxattr_ino(attr.ino, name, value, mode).await;
        let op = Op::SetXattr { ino: 0, name: name.to_vec(), mode };
        let result = self
            .or_on_path(fast, bytes(path), true, op, Bytes::copy_from_slice(value), |reply, _| expect_done(reply))
            .await;
        result.map_err(|error| error.context(format!("setxattr {}", path.display())))
    }

    pub async fn list_xattr(&self, path: impl AsRef<Path>) -> Result<Vec<Vec<u8>>> {
        let path = path.as_ref();
        let attr = self.stat(path).await?;
        let fast = self.listxattr_ino(attr.ino).await;
        let convert = |reply, _| match reply {
            Reply::XattrNames { names } => Ok(names),
            other => Err(unexpected(&other)),
        };
        let result = self.or_on_path(fast, bytes(path), true, Op::ListXattr { ino: 0 }, Bytes::new(), convert).await;
        result.map_err(|error| error.context(format!("listxattr {}", path.display())))
    }

    pub async fn remove_xattr(&self, path: impl AsRef<Path>, name: &[u8]) -> Result<()> {
        let path = path.as_ref();
        let attr = self.stat(path).await?;
        let fast = self.removexattr_ino(attr.ino, name).await;
        let op = Op::RemoveXattr { ino: 0, name: name.to_vec() };
        let result = self.or_on_path(fast, bytes(path), true, op, Bytes::new(), |reply, _| expect_done(reply)).await;
        result.map_err(|error| error.context(format!("removexattr {}", path.display())))
    }
}

fn ignore_enoent(error: Error) -> Result<()> {
    if error.errno == Errno::ENOENT { Ok(()) } else { Err(error) }
}

/// Gives leases the cache dropped back to the server, in batches, until the session ends.
async fn give_leases_back(inner: std::sync::Weak<Inner>, shared: Arc<Shared>) {
    loop {
        shared.releases.notified().await;
        loop {
            let batch = shared.cache().take_releases();
            if batch.is_empty() {
                break;
            }
            // What the kernel of a mount holds under these leases goes first: once the server
            // has them back, no change to what they covered is revoked here any more. A copy
            // the hook could not drop delays the give-back by the trust window; meanwhile the
            // server still counts the leases as ours and revokes them before any change.
            let hook = shared.revocation_hook.read().expect("revocation hook lock").clone();
            if let Some(hook) = hook.filter(|_| shared.release_through_hook) {
                let trust_window = shared.kept_copies_wait();
                if hook(&batch, Cause::Released).settle(trust_window).await {
                    shared.counters.hook_copies_kept.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(?trust_window, "leases given back late: a mirrored copy could not be dropped");
                }
            }
            let Some(inner) = inner.upgrade() else { return };
            let client = Client { caller: inner.caller.clone(), inner };
            let count = batch.len() as u64;
            if client.call(Op::ReleaseLeases { leases: batch }, Bytes::new()).await.is_err() {
                return; // the session is gone, and its leases with it
            }
            shared.counters.leases_released.fetch_add(count, Ordering::Relaxed);
        }
        if inner.strong_count() == 0 {
            return;
        }
    }
}

impl Inner {
    fn drop_connection(&self, reason: &str) {
        self.link.closing.store(true, Ordering::Relaxed);
        let state = self.link.state.send_replace(session::LinkState::Closed { reason: reason.to_string() });
        if let session::LinkState::Up { connection, .. } = state {
            connection.close(reason);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle on the session is gone (files hold one too): end it, so the server
        // releases its handles and leases rather than keep them for a client nobody uses.
        let state = self.link.state.borrow().clone();
        if let session::LinkState::Up { connection, .. } = state
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let header = encode_header(&Request { caller: self.caller.clone(), op: Op::EndSession });
            runtime.spawn(async move {
                let _ = tokio::time::timeout(END_SESSION_WAIT, connection.call(header, Bytes::new())).await;
                connection.close("client dropped");
            });
            return;
        }
        self.drop_connection("client dropped");
    }
}

/// How long ending a session waits for the server's answer.
pub const END_SESSION_WAIT: Duration = Duration::from_secs(1);

fn unexpected(reply: &Reply) -> Error {
    Error::new(Errno::EPROTO, format!("unexpected reply {reply:?}"))
}

fn expect_entry(reply: Reply) -> Result<Attr> {
    match reply {
        Reply::Entry { attr } => Ok(attr),
        other => Err(unexpected(&other)),
    }
}

fn expect_done(reply: Reply) -> Result<()> {
    match reply {
        Reply::Done => Ok(()),
        other => Err(unexpected(&other)),
    }
}

fn expect_attr(reply: Reply, _: Bytes) -> Result<Attr> {
    match reply {
        Reply::Attr { attr } => Ok(attr),
        other => Err(unexpected(&other)),
    }
}

#[cfg(test)]
mod forgotten_tests {
    use std::time::Duration;

    use super::*;

    /// A hook that never finishes is given `HOOK_ROUNDS_MAX` rounds, then treated as a kept copy:
    /// the wait ends, after the trust window.
    #[tokio::test(start_paused = true)]
    async fn a_hook_that_never_finishes_is_waited_out() {
        fn forever() -> Forgotten {
            Forgotten::Again { after: Duration::from_millis(1), again: Box::new(forever) }
        }
        let started = tokio::time::Instant::now();
        let trust_window = Duration::from_secs(5);
        assert!(forever().settle(trust_window).await, "reported kept");
        let waited = started.elapsed();
        let rounds = Duration::from_millis(1) * HOOK_ROUNDS_MAX as u32;
        assert!(waited >= rounds + trust_window, "waited {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_hook_costs_no_wait() {
        let started = tokio::time::Instant::now();
        assert!(!Forgotten::All.settle(Duration::from_secs(5)).await);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
