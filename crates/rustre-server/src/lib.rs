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

mod leases;
mod locks;
mod recovery;
pub mod tls;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustre_proto::auth::{self, Secret};
use rustre_proto::clock::{Clock, SystemClock};
use rustre_proto::frame::{Frame, FrameKind, encode_header, read_frame, write_frame};
use rustre_proto::msg::{FILE_SIZE_MAX, IO_SIZE_MAX, PATH_COMPONENTS_MAX, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use rustre_proto::pause::PausePoints;
use rustre_proto::rpc::{BoxFuture, Connection, Service};
use rustre_proto::{
    Attr, CLIENT_NAME_SHOWN_MAX, Callback, CallbackReply, Caller, Errno, FileKind, Grant, HELLO_MAGIC, LeaseKey,
    ORPHAN_HOLDERS_MAX, Op, OpenFlags, Orphan, OrphanHolder, ROOT_INO, RenameMode, Reply, ReplyHeader, Request,
    SetAttrIn, StatFs, WireError,
};
use rustre_store::{Committer, Ns, Opened, ReadNs, Store, StoreError, Walked};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::leases::{Change, Leases, ReadTicket};
use crate::locks::InodeLocks;
use crate::recovery::{Fate, OnceSlot, Recovery};

/// Most orphans one `Op::ListOrphans` reply carries.
pub const ORPHANS_PER_REPLY_MAX: usize = 1024;
/// A page of `Op::ListOrphans` stops before its orphans' encoded size could pass this, so that
/// with the holders of one more orphan (at most `ORPHAN_HOLDERS_MAX`, each name bounded) it stays
/// far below `HEADER_LEN_MAX`. A page holds one orphan at least.
pub const ORPHANS_REPLY_BYTES_MAX: usize = 256 * 1024;
/// Encoded bytes of an `Orphan` without its holders, at most: its `Attr` (106: 10 per u64 or
/// i64 varint, 5 per u32, 1 for the kind), `opens` (10), the flag (1) and the holders' count.
const ORPHAN_BYTES_BOUND: usize = 128;
/// Encoded bytes of an `OrphanHolder` beside its two names, at most: three u64 varints, the two
/// names' lengths, the flag.
const HOLDER_BYTES_BOUND: usize = 64;

/// Open handles one session may hold by default; the next open gets EMFILE.
pub const HANDLES_PER_SESSION_MAX: usize = 65536;
/// Inodes one session may pin by default (`ServerConfig::pins_per_session_max`); a pin of one
/// more gets EMFILE. With the handles' bound, this bounds the orphans one client keeps alive. A
/// mount pins what its kernel holds, and beyond the bound looks names up without pinning.
pub const PINS_PER_SESSION_MAX: usize = 1 << 20;
/// Connections a server serves at once by default (`ServerConfig::connections_max`); beyond, a
/// new connection is closed at once, before its hello is read.
pub const CONNECTIONS_MAX: usize = 4096;
/// How long the server waits for the sessions of its previous run to come back after a restart
/// (and keeps their orphans), and how long it keeps a session whose connection broke.
pub const RECOVERY_GRACE_DEFAULT: Duration = Duration::from_secs(15);
/// Free space writes and creates leave on the data directory's file system by default
/// (`ServerConfig::space_reserve`).
pub const SPACE_RESERVE_DEFAULT: u64 = 64 << 20;
/// Handle ids of a run start at `boot << HANDLE_BOOT_SHIFT` (see `Inner::next_handle`).
pub const HANDLE_BOOT_SHIFT: u32 = 40;
/// How long a new connection has to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long past a client's trust window (half the lease timeout) the server keeps the leases
/// of a session whose connection it closed (`Leases::lapse`): for the time the client takes to
/// hear its last news, and clocks that run a little apart.
pub const TRUST_LAPSE_MARGIN: Duration = Duration::from_millis(500);
/// Why a connection is refused whose peer closed it before sending anything.
const CLOSED_BEFORE_HELLO: &str = "closed before its hello";
/// How long shutdown waits for connection tasks to let go of the store.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// The uid and gid of `nobody` on Linux: what a squashed superuser becomes by default.
pub const NOBODY: u32 = 65534;

/// What the superuser of a client machine is on this server (ARCHITECTURE.md, "Trust"). A
/// client's root holds the cluster secret and could claim any identity; squashing keeps it from
/// claiming root's, so files only root may change stay out of reach of every client machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootSquash {
    /// A client's uid 0 is the superuser here too.
    Off,
    /// A client's uid 0 becomes `uid`, and gid 0 (primary or supplementary) becomes `gid`, as
    /// NFS's `root_squash` maps them.
    To { uid: u32, gid: u32 },
}

impl RootSquash {
    /// Squash to `nobody` (the default).
    pub const NOBODY: RootSquash = RootSquash::To { uid: NOBODY, gid: NOBODY };

    /// The identity the server believes for `caller`.
    /// The groups come out normalized (sorted, without repeats), as `Caller::in_group` needs.
    pub fn apply(self, mut caller: Caller) -> Caller {
        if let RootSquash::To { uid, gid } = self {
            if caller.uid == 0 {
                caller.uid = uid;
            }
            if caller.gid == 0 {
                caller.gid = gid;
            }
            for group in &mut caller.groups {
                if *group == 0 {
                    *group = gid;
                }
            }
        }
        caller.normalize();
        caller
    }
}

#[derive(Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    /// Name reported in the hello reply.
    pub server_name: String,
    /// A client that does not acknowledge a revocation within this is evicted (its leases are
    /// dropped, its connection closed) and the change goes on.
    pub lease_timeout: Duration,
    /// How often the server pings each client on its connection (the heartbeat that keeps a
    /// client's cache trusted: clients stop trusting it after `lease_timeout / 2` without news, so
    /// this must be well below that).
    pub ping_interval: Duration,
    /// A client that does not answer a ping within this is disconnected.
    pub ping_timeout: Duration,
    /// Open handles one session may hold; the next open gets EMFILE.
    pub handles_per_session_max: usize,
    /// Distinct inodes one session may pin (`Op::Pin`, `Op::PinName`, an open with `PIN`, a
    /// reclaim); beyond, EMFILE. Pins of an inode already pinned always pass.
    pub pins_per_session_max: usize,
    /// Connections served at once (those still in their hello included); beyond, new ones are
    /// closed at once, with a log line.
    pub connections_max: usize,
    /// A connection whose whole handshake (hello, and with a secret the proof) has not arrived
    /// and been answered within this is closed: a peer that sends half a hello and stalls holds
    /// a connection no longer. (After the handshake, a peer stalled in the middle of a frame
    /// cannot answer pings, and `ping_timeout` cuts it off.)
    pub hello_timeout: Duration,
    /// Free space (bytes) on the data directory's file system that writes and creates leave
    /// alone: they answer ENOSPC rather than eat into it, so the metadata database always has
    /// room to commit (a failed commit would stop the store) and deletes always work.
    pub space_reserve: u64,
    pub clock: Arc<dyn Clock>,
    /// Pause points for tests that force races (unarmed, they cost one atomic load).
    pub pause_points: Arc<PausePoints>,
    /// Recovery after a restart: the sessions of the previous run have this long to come back
    /// (`Op::Resume`) and take back their handles and pins (`Op::Reclaim`); until they all have,
    /// or this has passed, changes wait. Orphans of the previous run are kept as long (a client
    /// may also claim one by opening or pinning it by id); those unclaimed are then destroyed.
    /// A session whose connection broke (not evicted, not ended) is kept this long too.
    pub recovery_grace: Duration,
    /// Where the committer runs (`rustre_store::CommitMode`): its own thread (the default, and
    /// production), a task on the server's runtime (group commit under the deterministic
    /// simulator, `rustre-sim`, where no thread may run outside the simulated schedule), or
    /// inline on each request's task, one operation per transaction.
    pub commit_mode: rustre_store::CommitMode,
    /// A planted bug, for proving the simulator's checker finds it: a change answers before its
    /// revocations are acknowledged. Never set outside those tests.
    pub fault_ack_before_revoke: bool,
    /// A planted bug, for proving the simulator's power losses find it: changes are acknowledged
    /// without ever being made durable. Never set outside those tests.
    pub fault_ack_before_durable: bool,
    /// A planted bug, for proving the recovery tests notice it: changes do not wait while the
    /// server recovers (`recovery::wait_if_recovering`). Never set outside those tests.
    pub fault_changes_skip_recovery_wait: bool,
    /// A planted bug, for proving the coherence tests notice it: a change takes the holders'
    /// leases out of the table but never sends them a revocation, so they keep serving what it
    /// replaced. Never set outside those tests.
    pub fault_no_revocation: bool,
    /// A planted bug, for proving the coherence tests notice it: a lookup grants its leases
    /// without the version check, as if it had observed its name after reading it, so a change
    /// made between its read and its reply does not stop the grant. Never set outside those
    /// tests.
    pub fault_grant_unchecked: bool,
    /// A planted bug, for proving the recovery tests notice it: the leases of a session whose
    /// connection the server closed (or whose client it evicted) are dropped at once instead of
    /// lapsing (`Leases::lapse`), so a change goes through while that client still trusts its
    /// cache. Never set outside those tests.
    pub fault_no_lapse: bool,
    /// The metadata database's storage, when not the data directory's `meta.redb` file: the
    /// simulator's disk, which can lose power in the middle of a commit. Never set in production.
    pub metadata_backend: Option<rustre_store::MetadataBackend>,
    /// The data objects' storage, when not `LocalObjects` under the data directory: the
    /// simulator's object store, which loses unsynced writes when its power goes. Never set in
    /// production.
    pub object_store: Option<Arc<dyn rustre_store::ObjectStore>>,
    /// Fault injection, for proving that tools detect failures (`rustre race`'s control run):
    /// every Nth open answers ESTALE, as a file system that trusts stale inode ids would.
    /// Never set in production.
    pub fault_estale_every_nth_open: Option<u64>,
    /// The cluster secret every client must prove in its hello (`rustre_proto::auth`). `None`:
    /// any peer that speaks the protocol is let in (embedded use, tests, the simulator);
    /// `rustre server` always sets one.
    pub secret: Option<Secret>,
    /// What a client's superuser is here: by default `nobody` (`RootSquash::NOBODY`).
    pub root_squash: RootSquash,
    /// TLS on the listener (`rustre_proto::tls::server_config`; `tls::load_or_generate` makes a
    /// cluster CA and a certificate). `None`: plain TCP. Connections served through
    /// `serve_connection` bring their own transport.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
            server_name: format!("rustre {}", env!("CARGO_PKG_VERSION")),
            lease_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(5),
            handles_per_session_max: HANDLES_PER_SESSION_MAX,
            pins_per_session_max: PINS_PER_SESSION_MAX,
            connections_max: CONNECTIONS_MAX,
            hello_timeout: HELLO_TIMEOUT,
            space_reserve: SPACE_RESERVE_DEFAULT,
            clock: Arc::new(SystemClock),
            pause_points: Arc::default(),
            fault_estale_every_nth_open: None,
            recovery_grace: RECOVERY_GRACE_DEFAULT,
            commit_mode: rustre_store::CommitMode::Thread,
            fault_ack_before_revoke: false,
            fault_ack_before_durable: false,
            fault_changes_skip_recovery_wait: false,
            fault_no_revocation: false,
            fault_grant_unchecked: false,
            fault_no_lapse: false,
            metadata_backend: None,
            object_store: None,
            secret: None,
            root_squash: RootSquash::NOBODY,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("listening on {address}")]
    Listen { address: String, source: std::io::Error },
}

/// Lease figures of a server since it opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Revocations acknowledged.
    pub revocations: u64,
    /// Their total round-trip time, in microseconds.
    pub revocation_micros: u64,
    /// Clients evicted for not acknowledging in time.
    pub evictions: u64,
    /// Keys the lease table tracks now.
    pub tracked_keys: usize,
}

#[derive(Default)]
struct ServerCounters {
    revocations: AtomicU64,
    revocation_micros: AtomicU64,
    evictions: AtomicU64,
}

/// Open handles per inode, owned by the commit thread.
#[derive(Default)]
pub struct OpenCounts {
    counts: HashMap<u64, u32>,
    /// Orphans of the previous run, kept as if open until recovery ends: their sessions may
    /// still come back for them.
    protected: HashSet<u64>,
    /// Handles that may write, per inode: the last one's close drops the inode's `WRITABLE` row.
    writers: HashMap<u64, u32>,
    /// (session, slot) of the previous run -> the inode its request opened, per its `ONCE` row:
    /// kept as if open until that slot's resend is answered with a new handle on it, or the
    /// session ends (`recovery::once`, `stop_awaiting`). Not until recovery ends: a session is
    /// back once it has taken back its handles, before it resends, and the inode of an open
    /// whose reply was lost, unlinked meanwhile, must outlive that gap (simulator seeds 622,
    /// 2087, 2476: its resend found it gone and the client created the file a second time).
    awaiting_resend: HashMap<(u64, u32), u64>,
    /// How many `awaiting_resend` entries keep each inode.
    kept_for_resends: HashMap<u64, u32>,
}

impl OpenCounts {
    fn acquire(&mut self, ino: u64) {
        *self.counts.entry(ino).or_insert(0) += 1;
    }

    /// Takes `count` opens at once (a reclaim); false, taking none, if the count would not fit.
    fn acquire_many(&mut self, ino: u64, count: u32) -> bool {
        let held = self.counts.entry(ino).or_insert(0);
        match held.checked_add(count) {
            Some(sum) => {
                *held = sum;
                true
            }
            None => {
                if *held == 0 {
                    self.counts.remove(&ino);
                }
                false
            }
        }
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

    /// Counts a handle that may write (after `acquire`).
    fn acquire_writer(&mut self, ino: u64, flags: OpenFlags) {
        if flags.writes() {
            *self.writers.entry(ino).or_insert(0) += 1;
        }
    }

    /// Drops a handle that may write; true when it was the inode's last.
    fn release_writer(&mut self, ino: u64) -> bool {
        match self.writers.get_mut(&ino) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                self.writers.remove(&ino);
                true
            }
            None => false,
        }
    }

    fn is_open(&self, ino: u64) -> bool {
        self.counts.contains_key(&ino) || self.protected.contains(&ino) || self.kept_for_resends.contains_key(&ino)
    }

    /// Keeps `ino` for the resend on `slot` (session, slot).
    fn await_resend(&mut self, slot: (u64, u32), ino: u64) {
        if let Some(previous) = self.awaiting_resend.insert(slot, ino) {
            self.forget_resend(previous);
        }
        *self.kept_for_resends.entry(ino).or_insert(0) += 1;
    }

    fn forget_resend(&mut self, ino: u64) {
        let kept = self.kept_for_resends.get_mut(&ino).expect("a kept inode is counted");
        assert!(*kept > 0, "resend counts never go below zero");
        *kept -= 1;
        if *kept == 0 {
            self.kept_for_resends.remove(&ino);
        }
    }
}

/// On the commit thread: the resends on `slots` of `session` are answered (or will never come):
/// the inodes kept for them go unless something else holds them.
pub(crate) fn stop_awaiting(
    ns: &mut Ns<'_>,
    opens: &mut OpenCounts,
    session: u64,
    slots: Option<u32>,
) -> Result<(), StoreError> {
    let mut keys: Vec<(u64, u32)> = match slots {
        Some(slot) => vec![(session, slot)],
        None => opens.awaiting_resend.keys().filter(|(owner, _)| *owner == session).copied().collect(),
    };
    keys.sort_unstable();
    for key in keys {
        let Some(ino) = opens.awaiting_resend.remove(&key) else { continue };
        opens.forget_resend(ino);
        if !opens.is_open(ino) {
            ns.newly_unlinked.extend(ns.inode(ino)?.filter(|record| record.nlink == 0).map(|_| ino));
        }
    }
    reap(ns, opens)
}

/// `stop_awaiting` on the commit thread.
pub(crate) async fn stop_awaiting_resends(inner: &Arc<Inner>, session: u64, slot: Option<u32>) {
    let (result, _) =
        apply(inner, inner.leases.begin_read(), move |ns, opens, _| stop_awaiting(ns, opens, session, slot)).await;
    if let Err(error) = result {
        tracing::error!(session = format_args!("{session:#x}"), %error, "letting go of what a resend was kept for");
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
    map: HashMap<u64, Handle>,
    /// Opens in flight that have a slot kept for their handle (so EMFILE comes before the open
    /// changes anything, never after it created or truncated a file).
    reserved: usize,
}

struct Session {
    id: u64,
    /// Who its client is, as of its latest connection (for `Op::ListOrphans`).
    peer: Mutex<Peer>,
    /// Inode -> pins this session holds on it (each counted in `OpenCounts` like a handle).
    pins: Mutex<HashMap<u64, u64>>,
    pins_max: usize,
    handles_max: usize,
    handles: Mutex<Handles>,
    /// Taken up again after a restart (`Op::Resume`): its handles and pins come back with
    /// `Op::Reclaim`, and the `ONCE` rows of the previous run answer its resends.
    restored: bool,
    /// What becomes of it when its connection closes.
    fate: Mutex<Fate>,
    /// The answer of each `Op::Once` slot's latest request.
    once: Mutex<HashMap<u32, OnceSlot>>,
    /// Counts the connections it has had; the timer of a detached session checks that none came.
    attachments: AtomicU64,
    /// A restored session has sent its last `Op::Reclaim`.
    reclaimed: std::sync::atomic::AtomicBool,
}

impl Session {
    fn new(id: u64, config: &ServerConfig, restored: bool) -> Session {
        let handles_max = config.handles_per_session_max;
        Session {
            id,
            peer: Mutex::new(Peer::default()),
            pins: Mutex::new(HashMap::new()),
            pins_max: config.pins_per_session_max,
            handles_max,
            handles: Mutex::new(Handles { closed: false, map: HashMap::new(), reserved: 0 }),
            restored,
            fate: Mutex::new(Fate::Resumable),
            once: Mutex::new(HashMap::new()),
            attachments: AtomicU64::new(1),
            reclaimed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// May this session pin `ino` (or, with `None`, an inode not known yet)? EMFILE once it pins
    /// `pins_max` distinct inodes, unless `ino` is one of them. Checked before the pin is taken:
    /// pins running at once may pass the bound by the requests in flight, no more.
    fn may_pin(&self, ino: Option<u64>) -> Result<(), StoreError> {
        let pins = self.pins.lock().expect("pins lock");
        if pins.len() >= self.pins_max && ino.is_none_or(|ino| !pins.contains_key(&ino)) {
            tracing::debug!(session = format_args!("{:#x}", self.id), "pin refused: {} inodes pinned", pins.len());
            return Err(StoreError::Fs(Errno::EMFILE));
        }
        Ok(())
    }
}

/// Who a session's client is, as far as the server can tell, for an administrator.
#[derive(Clone, Default)]
struct Peer {
    /// The address of the session's latest connection.
    address: String,
    /// The name the client gave in its hello, cut to `CLIENT_NAME_SHOWN_MAX` bytes.
    client_name: String,
}

impl Peer {
    fn new(address: &str, client_name: &str) -> Peer {
        let mut end = client_name.len().min(CLIENT_NAME_SHOWN_MAX);
        while !client_name.is_char_boundary(end) {
            end -= 1;
        }
        Peer { address: address.to_string(), client_name: client_name[..end].to_string() }
    }
}

/// A session with a connection.
#[derive(Clone)]
struct Live {
    connection: Connection,
    session: Arc<Session>,
}

struct Inner {
    config: ServerConfig,
    store: Store,
    committer: Committer<OpenCounts>,
    locks: InodeLocks,
    sessions: Mutex<HashMap<u64, Live>>,
    /// Sessions whose connection broke, kept for `recovery_grace` for their client to resume.
    detached: Mutex<HashMap<u64, Arc<Session>>>,
    recovery: Recovery,
    /// Handle ids come from one counter per run, starting at `boot << HANDLE_BOOT_SHIFT`: no id
    /// is handed out twice, across sessions and restarts, so a client never mistakes a handle of
    /// a lost session for a new one.
    next_handle: AtomicU64,
    leases: Leases,
    counters: Arc<ServerCounters>,
    opens: AtomicU64,
    next_session: AtomicU64,
    /// Connections being served now (`ServerConfig::connections_max` bounds it).
    connections: AtomicUsize,
    shutdown: watch::Sender<bool>,
}

/// A running server. Cloning shares it.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl Server {
    /// Opens the store. If the previous run left sessions, recovery starts: they have
    /// `recovery_grace` to come back, and their orphans are kept until then (`recovery.rs`).
    pub async fn open(config: ServerConfig) -> Result<Server, ServerError> {
        let backend = config.metadata_backend.as_ref().map(|make| make());
        let store = Store::open_with(&config.data_dir, config.clock.as_ref(), backend, config.object_store.clone())?;
        let leftover = store.read()?.orphans()?;
        let previous = store.sessions()?;
        // Kept until recovery ends: orphans of the last run, and what its unanswered changes made
        // or opened (`recovery.rs`).
        let protected: HashSet<u64> = leftover.iter().copied().collect();
        let mut counts = OpenCounts { counts: HashMap::new(), protected, ..OpenCounts::default() };
        for (slot, ino) in store.once_opened()? {
            counts.await_resend(slot, ino);
        }
        let protecting = !counts.protected.is_empty() || !counts.awaiting_resend.is_empty();
        let committer = store.start_committer_in(config.commit_mode, config.clock.clone(), counts);
        if config.fault_ack_before_durable {
            committer.plant_never_durable();
        }
        let boot = store.boot();
        let (shutdown, _) = watch::channel(false);
        if !previous.is_empty() || !leftover.is_empty() {
            tracing::info!(
                sessions = previous.len(),
                orphans = leftover.len(),
                grace = ?config.recovery_grace,
                "recovery: waiting for the sessions of the previous run"
            );
        }
        let server = Server {
            inner: Arc::new(Inner {
                config,
                store,
                committer,
                locks: InodeLocks::default(),
                sessions: Mutex::new(HashMap::new()),
                detached: Mutex::new(HashMap::new()),
                recovery: Recovery::new(previous, protecting),
                next_handle: AtomicU64::new(boot << HANDLE_BOOT_SHIFT),
                leases: Leases::default(),
                counters: Arc::default(),
                opens: AtomicU64::new(0),
                next_session: AtomicU64::new(boot << 32),
                connections: AtomicUsize::new(0),
                shutdown,
            }),
        };
        recovery::start(&server.inner).await?;
        Ok(server)
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
        let config = &self.inner.config;
        let root_squash = match config.root_squash {
            RootSquash::Off => "off".to_string(),
            RootSquash::To { uid, gid } => format!("on (root acts as {uid}:{gid})"),
        };
        let tls = if config.tls.is_some() { "on" } else { "off" };
        tracing::info!(%local, data = %config.data_dir.display(), root_squash, tls, "serving");
        Ok(local)
    }

    async fn accept_loop(self, listener: TcpListener) {
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let accepted = tokio::select! {
                biased;
                accepted = listener.accept() => accepted,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let server = self.clone();
                    tokio::spawn(async move { server.serve_tcp(stream, peer.to_string()).await });
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Serves one connection over any byte stream: handshake, then requests until it closes.
    pub async fn serve_connection<S>(&self, stream: S, peer: String)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(_counted) = self.count_connection(&peer) else { return };
        self.serve_counted(stream, peer).await
    }

    /// A connection accepted on the listener: with TLS configured, its TLS handshake comes first,
    /// counted among the connections and bounded by the hello timeout as the hello is.
    async fn serve_tcp(&self, stream: TcpStream, peer: String) {
        let Some(tls) = self.inner.config.tls.clone() else { return self.serve_connection(stream, peer).await };
        let Some(_counted) = self.count_connection(&peer) else { return };
        let hello_timeout = self.inner.config.hello_timeout;
        match tokio::time::timeout(hello_timeout, tokio_rustls::TlsAcceptor::from(tls).accept(stream)).await {
            Ok(Ok(stream)) => self.serve_counted(stream, peer).await,
            Ok(Err(error)) => tracing::warn!(%peer, %error, "refusing connection: TLS handshake failed"),
            Err(_) => tracing::warn!(%peer, "refusing connection: no TLS handshake within {hello_timeout:?}"),
        }
    }

    fn count_connection(&self, peer: &str) -> Option<ConnectionCount<'_>> {
        let counted = ConnectionCount::take(&self.inner);
        if counted.is_none() {
            let max = self.inner.config.connections_max;
            tracing::warn!(%peer, "refusing connection: {max} connections already (connections_max)");
        }
        counted
    }

    /// `serve_connection` for a connection already counted.
    async fn serve_counted<S>(&self, mut stream: S, peer: String)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let hello_timeout = self.inner.config.hello_timeout;
        let session = match tokio::time::timeout(hello_timeout, self.handshake(&mut stream, &peer)).await {
            Ok(Ok(session)) => session,
            // A peer that connects and goes without a word is a port probe (a health check, a
            // script waiting for the server to listen), not worth a warning.
            Ok(Err(reason)) if reason == CLOSED_BEFORE_HELLO => {
                tracing::debug!(%peer, "connection closed before its hello");
                return;
            }
            Ok(Err(reason)) => {
                tracing::warn!(%peer, %reason, "refusing connection");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "refusing connection: no hello within {hello_timeout:?}");
                return;
            }
        };
        let session_id = session.id;
        let service = Arc::new(SessionService { inner: self.inner.clone(), session: session.clone() });
        let connection = Connection::start(stream, service, format!("session {session_id:#x} ({peer})"));
        let live = Live { connection: connection.clone(), session: session.clone() };
        {
            let mut sessions = self.inner.sessions.lock().expect("sessions lock");
            if sessions.contains_key(&session_id) {
                // Two connections resumed the same session at once: the first one keeps it.
                drop(sessions);
                tracing::warn!(%peer, session = format_args!("{session_id:#x}"), "session already connected; refused");
                connection.close("the session is connected already");
                return;
            }
            sessions.insert(session_id, live);
        }
        tracing::info!(%peer, session = format_args!("{session_id:#x}"), "session opened");

        let pinger = tokio::spawn(ping_loop(self.inner.clone(), connection.clone(), session.clone()));
        let reason = connection.closed().await;
        pinger.abort();
        let fate = *session.fate.lock().expect("fate lock");
        // A session without a connection caches nothing, once its client knows. One that closed
        // its end knows; one whose connection the server closed (a write error, a protocol
        // violation, a ping gone unanswered, an eviction) may not, and trusts its cache until its
        // own clock says the trust window (half the lease timeout since it sent the last request
        // this server answered, so no later than now) is over: its leases lapse then, and
        // conflicting changes wait for that (`revoke`). An evicted client is no exception: what
        // it cached is as trusted on its side as any other's. Either is settled while the
        // session is still listed as connected, so a resume (which waits for that listing to
        // go, and ends a lapse) cannot get new leases before the old ones are dropped.
        let lapses = reason != rustre_proto::rpc::PEER_CLOSED && !self.inner.config.fault_no_lapse;
        if lapses && !*self.inner.shutdown.borrow() {
            let until = tokio::time::Instant::now() + self.inner.config.lease_timeout / 2 + TRUST_LAPSE_MARGIN;
            let number = self.inner.leases.lapse(session_id, until);
            let leases = self.inner.leases.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(until).await;
                leases.expire(session_id, number);
            });
        } else {
            self.inner.leases.drop_session(session_id);
        }
        if fate == Fate::Resumable && !*self.inner.shutdown.borrow() {
            // Kept before it stops being listed as connected: a resume never finds it in neither.
            recovery::detach(&self.inner, session.clone());
        }
        self.inner.sessions.lock().expect("sessions lock").remove(&session_id);
        // A session whose client said goodbye ends even while the server stops: `shutdown`
        // closes connections and then waits for their tasks before it stops the committer, so
        // the session's row is forgotten here and the next start does not wait for it (a
        // `rustre up` stopped with Ctrl-C ends its own mount's session just before the server).
        if *self.inner.shutdown.borrow() && fate == Fate::Resumable {
            // The server stops, not the client: the session's handles and pins are not given
            // back, so what only they keep alive stays on disk as orphans, and the session stays
            // in the store, for the client to take up again at the next start (recovery).
            session.handles.lock().expect("handles lock").closed = true;
            tracing::info!(%peer, session = format_args!("{session_id:#x}"), "session closed by shutdown");
            return;
        }
        match fate {
            Fate::Resumable => {
                tracing::info!(%peer, session = format_args!("{session_id:#x}"), %reason, "connection lost; session kept");
            }
            Fate::Ending | Fate::Evicted => {
                let released = recovery::end_session(&self.inner, &session).await;
                tracing::info!(%peer, session = format_args!("{session_id:#x}"), ?fate, released, %reason, "session closed");
            }
        }
    }

    /// Challenges the client that sent `hello` to prove the cluster secret (`rustre_proto::auth`).
    /// Returns the id of its proof's frame (the hello is answered there) and the server's own
    /// proof, or the errno and message it is refused with.
    async fn challenge<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        secret: &Secret,
        hello: &Frame,
    ) -> Result<(u64, auth::Proof), (Errno, String)> {
        let server_nonce = auth::nonce().map_err(|error| (Errno::EIO, error.to_string()))?;
        let challenge = ReplyHeader::new(Ok(Reply::Challenge { nonce: server_nonce }));
        let sent = async {
            write_frame(stream, &Frame::new(FrameKind::Reply, hello.id, &challenge, Bytes::new())).await?;
            stream.flush().await
        };
        sent.await.map_err(|error| (Errno::EIO, format!("sending the challenge: {error}")))?;
        let frame = read_frame(stream).await.map_err(|error| (Errno::EPROTO, format!("reading the proof: {error}")))?;
        let request: Request = match frame.kind {
            FrameKind::Request => {
                frame.decode_header().map_err(|error| (Errno::EPROTO, format!("undecodable proof: {error}")))?
            }
            FrameKind::Reply => return Err((Errno::EPROTO, "a reply instead of the proof".into())),
        };
        let Op::Prove { nonce: client_nonce, proof } = request.op else {
            return Err((
                Errno::EACCES,
                format!("{} instead of the proof of the cluster secret", request.op.kind_name()),
            ));
        };
        if !secret.verify_client(&server_nonce, &client_nonce, &hello.header, &proof) {
            return Err((Errno::EACCES, "authentication failed: the client does not know the cluster secret".into()));
        }
        Ok((frame.id, secret.server_proof(&server_nonce, &client_nonce, &hello.header)))
    }

    /// Reads and answers the hello (or resume). Returns the session, or why the peer is refused.
    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        peer: &str,
    ) -> Result<Arc<Session>, String> {
        let frame = read_frame(stream).await.map_err(|error| match error {
            rustre_proto::frame::FrameError::Closed => CLOSED_BEFORE_HELLO.to_string(),
            error => format!("reading hello: {error}"),
        })?;
        if frame.kind != FrameKind::Request {
            return Err("first frame is not a request".into());
        }
        let request: Request = frame.decode_header().map_err(|error| format!("undecodable hello: {error}"))?;
        let (magic, version_min, version_max, client_name, resume) = match request.op {
            Op::Hello { magic, version_min, version_max, client_name } => {
                (magic, version_min, version_max, client_name, None)
            }
            Op::Resume { magic, version_min, version_max, client_name, session } => {
                (magic, version_min, version_max, client_name, Some(session))
            }
            other => return Err(format!("first request is {}, not hello", other.kind_name())),
        };
        if magic != HELLO_MAGIC {
            return Err(format!("bad magic {magic:#x}"));
        }
        let refuse = async |stream: &mut S, errno: Errno, message: String| {
            let reply = ReplyHeader::new(Err(WireError { errno, message: message.clone() }));
            let _ = write_frame(stream, &Frame::new(FrameKind::Reply, frame.id, &reply, Bytes::new())).await;
            let _ = stream.flush().await;
            message
        };
        let version = version_max.min(PROTOCOL_VERSION_MAX);
        if version < version_min.max(PROTOCOL_VERSION_MIN) {
            let message = format!(
                "no common protocol version: client speaks {version_min}..={version_max}, server {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION_MAX}"
            );
            return Err(refuse(stream, Errno::EPROTO, message).await);
        }
        // With a secret, nothing of the hello is believed (no session made or taken up) before
        // the client has proven it; the answer then goes to its proof.
        let (answer_id, server_proof) = match &self.inner.config.secret {
            None => (frame.id, None),
            Some(secret) => match self.challenge(stream, secret, &frame).await {
                Ok((id, proof)) => (id, Some(proof)),
                Err((errno, why)) => return Err(refuse(stream, errno, why).await),
            },
        };
        let root = self
            .inner
            .store
            .read()
            .and_then(|ns| ns.getattr(ROOT_INO))
            .map_err(|error| format!("reading root: {error}"))?;
        let server_name = self.inner.config.server_name.clone();
        let lease_timeout_ms = self.inner.config.lease_timeout.as_millis() as u64;
        let (session, reply) = match resume {
            None => {
                let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed) + 1;
                // Remembered before it is answered: a restart from now on waits for it.
                if let Err(error) = recovery::remember_session(&self.inner, id).await {
                    return Err(refuse(stream, error.errno(), format!("recording the session: {error}")).await);
                }
                let session = Session::new(id, &self.inner.config, false);
                (session.into(), Reply::Hello { version, session: id, root, server_name, lease_timeout_ms })
            }
            Some(id) => match recovery::resume(&self.inner, id).await {
                Ok((session, state_kept)) => {
                    let reply =
                        Reply::Resumed { version, session: id, root, server_name, lease_timeout_ms, state_kept };
                    (session, reply)
                }
                Err(why) => return Err(refuse(stream, Errno::ESTALE, why).await),
            },
        };
        *session.peer.lock().expect("peer lock") = Peer::new(peer, &client_name);
        let reply = match server_proof {
            None => reply,
            Some(proof) => Reply::Welcome { proof, reply: Box::new(reply) },
        };
        let reply = ReplyHeader::new(Ok(reply));
        write_frame(stream, &Frame::new(FrameKind::Reply, answer_id, &reply, Bytes::new()))
            .await
            .map_err(|error| format!("answering hello: {error}"))?;
        stream.flush().await.map_err(|error| format!("answering hello: {error}"))?;
        tracing::debug!(%peer, %client_name, version, resumed = resume.is_some(), "hello");
        Ok(session)
    }

    /// Pings every connected session now; returns how many answered. (Used by tests and admin.)
    pub async fn ping_all(&self) -> usize {
        let connections: Vec<Connection> =
            self.inner.sessions.lock().expect("sessions lock").values().map(|live| live.connection.clone()).collect();
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

    /// Lease figures since the server opened.
    pub fn lease_stats(&self) -> LeaseStats {
        LeaseStats {
            revocations: self.inner.counters.revocations.load(Ordering::Relaxed),
            revocation_micros: self.inner.counters.revocation_micros.load(Ordering::Relaxed),
            evictions: self.inner.counters.evictions.load(Ordering::Relaxed),
            tracked_keys: self.inner.leases.tracked_keys(),
        }
    }

    /// Leases a session holds now.
    pub fn leases_held(&self, session: u64) -> usize {
        self.inner.leases.held_by(session)
    }

    pub fn session_count(&self) -> usize {
        self.inner.sessions.lock().expect("sessions lock").len()
    }

    /// The orphans' ids: inodes whose last name is gone, kept alive by handles, pins or recovery
    /// (`Op::ListOrphans` also tells which).
    pub fn orphans(&self) -> Result<Vec<u64>, StoreError> {
        self.inner.store.read()?.orphans()
    }

    /// Stops accepting, closes every connection, stops the commit thread, and waits until the
    /// data directory is released (so it can be opened again).
    pub async fn shutdown(self) {
        self.inner.shutdown.send_replace(true);
        let connections: Vec<Connection> =
            self.inner.sessions.lock().expect("sessions lock").values().map(|live| live.connection.clone()).collect();
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

async fn ping_loop(inner: Arc<Inner>, connection: Connection, session: Arc<Session>) {
    let interval = inner.config.ping_interval;
    let timeout = inner.config.ping_timeout;
    drop(inner);
    let mut nonce = 0u64;
    loop {
        tokio::time::sleep(interval).await;
        nonce += 1;
        if let Err(reason) = ping(&connection, nonce, timeout).await {
            tracing::warn!(connection = connection.name(), %reason, "client does not answer; evicting it");
            *session.fate.lock().expect("fate lock") = Fate::Evicted;
            connection.close(format!("evicted: {reason}"));
            return;
        }
    }
}

async fn close_session_handles(inner: &Arc<Inner>, session: &Session) -> usize {
    // Released in id order (and pins in inode order), the same on every replay of a simulation.
    let mut handles: Vec<(u64, Handle)> = {
        let mut handles = session.handles.lock().expect("handles lock");
        handles.closed = true;
        handles.map.drain().collect()
    };
    handles.sort_unstable_by_key(|(id, _)| *id);
    let handles: Vec<Handle> = handles.into_iter().map(|(_, handle)| handle).collect();
    let count = handles.len();
    for handle in handles {
        if let Err(error) = release_handle(inner, &handle).await {
            tracing::error!(ino = handle.ino, %error, "releasing a handle of a closed session");
        }
    }
    let mut pins: Vec<(u64, u64)> = session.pins.lock().expect("pins lock").drain().collect();
    pins.sort_unstable();
    for (ino, pinned) in pins {
        if let Err(error) = release_opens(inner, ino, pinned).await {
            tracing::error!(ino, %error, "releasing the pins of a closed session");
        }
    }
    count
}

/// At the end of recovery: destroys the orphans that no session claimed (opened, pinned, or took
/// back), those of the previous run and those made during recovery while protected. One that
/// was claimed goes when its last handle or pin does, as any orphan.
async fn reclaim_orphans(inner: &Arc<Inner>) -> Result<(), StoreError> {
    let (reclaimed, _) = apply(inner, inner.leases.begin_read(), move |ns, opens, _| {
        opens.protected.clear();
        let mut reclaimed = 0;
        for ino in ns.orphans()? {
            let unlinked = ns.inode(ino)?.is_some_and(|record| record.nlink == 0);
            if unlinked && !opens.is_open(ino) {
                ns.destroy(ino)?;
                reclaimed += 1;
            }
        }
        Ok(reclaimed)
    })
    .await;
    tracing::info!(count = reclaimed?, "reclaimed unclaimed orphans of the previous run");
    Ok(())
}

/// On the commit thread: drops one open of `ino` (and, for a handle that may write, its writer's
/// count: the last writer drops the `WRITABLE` row); the last open of an unlinked inode destroys it.
fn drop_open(ns: &mut Ns<'_>, opens: &mut OpenCounts, ino: u64, writes: bool) -> Result<(), StoreError> {
    if writes && opens.release_writer(ino) {
        ns.unmark_writable(ino);
    }
    if opens.release(ino) {
        ns.newly_unlinked.extend(ns.inode(ino)?.filter(|record| record.nlink == 0).map(|_| ino));
        reap(ns, opens)?;
    }
    Ok(())
}

/// Drops a handle (not through `Op::Close`).
async fn release_handle(inner: &Arc<Inner>, handle: &Handle) -> Result<(), StoreError> {
    let (ino, writes) = (handle.ino, handle.flags.writes());
    apply(inner, inner.leases.begin_read(), move |ns, opens, _| drop_open(ns, opens, ino, writes)).await.0
}

/// `Op::Close`. A handle that could write was opened without a lease on the file's attributes
/// (its writes would have had to revoke it from the writer itself): its close answers the
/// attributes as the writes left them, with that lease, so that a stat after writing a file
/// (`tar x`, then `ls -l`) is answered from the client's cache. Other closes answer `Done`.
async fn close(inner: &Arc<Inner>, session: &Session, handle: Handle) -> Answer {
    let wrote = handle.flags.writes();
    let ino = handle.ino;
    let (result, ticket) = apply(inner, inner.leases.begin_read(), move |ns, opens, ticket| {
        drop_open(ns, opens, ino, wrote)?;
        if !wrote {
            return Ok(None);
        }
        ticket.observe(&attr_key(ino));
        // Gone (unlinked and reaped) or unlinked: nothing worth caching.
        match ns.inode(ino)? {
            Some(record) if record.nlink > 0 => ns.getattr(ino).map(Some),
            _ => Ok(None),
        }
    })
    .await;
    match result {
        Ok(Some(attr)) => answer(session, ticket, &[attr_key(ino)], Ok((Reply::Attr { attr }, Bytes::new()))).await,
        Ok(None) => Ok((Reply::Done, Bytes::new())).into(),
        Err(error) => Err(error).into(),
    }
}

/// Drops `count` opens (handles or pins) of `ino`; the last one destroys an unlinked inode.
async fn release_opens(inner: &Arc<Inner>, ino: u64, count: u64) -> Result<(), StoreError> {
    let ticket = inner.leases.begin_read();
    let (result, _) = apply(inner, ticket, move |ns, opens, _| {
        let mut last = false;
        for _ in 0..count {
            last = opens.release(ino);
        }
        if last {
            ns.newly_unlinked.extend(ns.inode(ino)?.filter(|record| record.nlink == 0).map(|_| ino));
            reap(ns, opens)?;
        }
        Ok(())
    })
    .await;
    result
}

/// `Op::Pin`: counts the inode open for this session (ESTALE if it is gone already).
async fn pin(inner: &Arc<Inner>, session: &Session, ino: u64) -> Result<(Reply, Bytes), StoreError> {
    session.may_pin(Some(ino))?;
    let ticket = inner.leases.begin_read();
    let (result, _) = apply(inner, ticket, move |ns, opens, _| {
        if ns.inode(ino)?.is_none() {
            return Err(StoreError::Fs(Errno::ESTALE));
        }
        opens.acquire(ino);
        Ok(())
    })
    .await;
    result?;
    count_pin(inner, session, ino).await?;
    Ok((Reply::Done, Bytes::new()))
}

/// Records a pin the commit thread has just taken for `session`, so that the session's end gives
/// it back; if that end has run already, gives it back at once (ENOTCONN).
///
/// The check and the count are one step under the handles lock, which the teardown
/// (`close_session_handles`) takes to mark the session closed before it drains the pins: a pin
/// counted is drained, and one not counted is given back here. (Checked and counted apart, a
/// teardown could run in between, and the pin would outlive its session with its orphan.)
/// Lock order: handles, then pins (as `recovery::reclaim`).
async fn count_pin(inner: &Arc<Inner>, session: &Session, ino: u64) -> Result<(), StoreError> {
    let counted = {
        let handles = session.handles.lock().expect("handles lock");
        // Tests stop here, holding the lock, to show a teardown cannot get in.
        inner.config.pause_points.pause_blocking("server.count_pin.locked");
        if !handles.closed {
            *session.pins.lock().expect("pins lock").entry(ino).or_insert(0) += 1;
        }
        !handles.closed
    };
    if !counted {
        // The session's teardown has run: nobody is left to unpin.
        release_opens(inner, ino, 1).await?;
        return Err(StoreError::Fs(Errno::ENOTCONN));
    }
    Ok(())
}

/// `Op::PinName`: a lookup that pins what it finds, in one step on the commit thread (where
/// changes are ordered), so the inode answered cannot be destroyed before it is pinned.
async fn pin_name(inner: &Arc<Inner>, session: &Session, caller: Caller, parent: u64, name: Vec<u8>) -> Answer {
    if let Err(error) = session.may_pin(None) {
        return Err(error).into();
    }
    let name_key = name_key(parent, &name);
    let mut ticket = inner.leases.begin_read();
    ticket.observe(&name_key);
    let (found, ticket) = apply(inner, ticket, move |ns, opens, ticket| {
        let attr = ns.lookup(parent, &name, &caller)?;
        ticket.observe(&attr_key(attr.ino));
        opens.acquire(attr.ino);
        Ok(attr)
    })
    .await;
    match found {
        Ok(attr) => {
            if let Err(error) = count_pin(inner, session, attr.ino).await {
                return Err(error).into();
            }
            let keys = [name_key, attr_key(attr.ino)];
            answer(session, ticket, &keys, Ok((Reply::Entry { attr }, Bytes::new()))).await
        }
        Err(StoreError::Fs(Errno::ENOENT)) => answer(session, ticket, &[name_key], Err(errno(Errno::ENOENT))).await,
        Err(error @ StoreError::Fs(_)) => refusal(session, ticket, &[name_key], error).await,
        Err(error) => Err(error).into(),
    }
}

/// `Op::Unpin`: gives back pins; more than held is refused and changes nothing.
async fn unpin(inner: &Arc<Inner>, session: &Session, ino: u64, count: u64) -> Result<(Reply, Bytes), StoreError> {
    {
        let mut pins = session.pins.lock().expect("pins lock");
        let held = pins.get_mut(&ino).filter(|held| **held >= count).ok_or(StoreError::Fs(Errno::EINVAL))?;
        *held -= count;
        if *held == 0 {
            pins.remove(&ino);
        }
    }
    release_opens(inner, ino, count).await?;
    Ok((Reply::Done, Bytes::new()))
}

/// Runs a change on the commit thread inside the lease protocol (see `leases.rs`): the keys the
/// change touched are marked on the commit thread before its batch commits; after the commit
/// their leases are revoked (holders that do not answer in time are evicted), and the change
/// completes. `operation` may observe keys on `ticket` (it runs where changes are ordered); the
/// ticket comes back, knowing the change's own keys, so the reply can grant leases on them.
///
/// Returns the operation's result and the ticket (none if the batch itself failed).
async fn apply<T, F>(
    inner: &Arc<Inner>,
    ticket: ReadTicket,
    operation: F,
) -> (Result<T, StoreError>, Option<ReadTicket>)
where
    T: Send + 'static,
    F: for<'txn> FnOnce(&mut Ns<'txn>, &mut OpenCounts, &mut ReadTicket) -> Result<T, StoreError> + Send + 'static,
{
    let leases = inner.leases.clone();
    let marked: Arc<Mutex<Option<Change>>> = Arc::default();
    let slot = marked.clone();
    let once = recovery::ONCE.try_with(Clone::clone).ok();
    let outcome = inner
        .committer
        .run(move |ns, opens| {
            let mut ticket = ticket;
            let before = ns.mutation_count();
            let mut result = operation(ns, opens, &mut ticket);
            // The first change a `Once` request makes records it, in the same transaction.
            // A later change of it (an open's truncate) flags the row, so a resend does not run
            // that step again over what others wrote since (simulator seed 4533).
            if result.is_ok()
                && ns.mutation_count() > before
                && let Some(once) = once
            {
                let recorded = match once.recorded.swap(true, Ordering::Relaxed) {
                    false => ns.record_once(once.session, once.slot, once.seq),
                    true => ns.record_once_followed(once.session, once.slot, once.seq),
                };
                if let Err(failure) = recorded {
                    result = Err(failure);
                }
            }
            let touched = std::mem::take(&mut ns.touched);
            if !touched.is_empty() {
                let change = leases.mark(touched);
                ticket.own_change(&change);
                *slot.lock().expect("change slot") = Some(change);
            }
            match result {
                Ok(value) => Ok((Ok(value), ticket)),
                Err(StoreError::Fs(errno)) => {
                    assert_eq!(ns.mutation_count(), before, "an operation that answers {errno:?} changes nothing");
                    Ok((Err(StoreError::Fs(errno)), ticket))
                }
                // A failure of the store itself: the committer rolls the whole batch back.
                Err(failure) => Err(failure),
            }
        })
        .await;
    let change = marked.lock().expect("change slot").take();
    let requester = REQUESTER.try_with(|session| *session).ok();
    if inner.config.fault_ack_before_revoke
        && let Some(change) = change
    {
        // A planted bug (simulator tests only): answer before the holders have dropped their
        // copies. The change counts as complete at once, or the reply would still wait for its
        // revocations in `ReadTicket::finish` (the reply reveals the change's own keys), and the
        // bug would hide behind that second guard.
        inner.leases.complete(&change);
        let inner = inner.clone();
        tokio::spawn(async move { revoke(&inner, &change, requester).await });
    } else if let Some(change) = change {
        // Even if the batch failed, the holders are out of the table: they must drop their copies.
        // (Unless the planted bug of `fault_no_revocation` says to tell them nothing.)
        if !inner.config.fault_no_revocation {
            revoke(inner, &change, requester).await;
        }
        inner.leases.complete(&change);
        inner.leases.wait_prior(&change).await;
    }
    match outcome {
        Ok((result, ticket)) => (result, Some(ticket)),
        Err(failure) => (Err(failure), None),
    }
}

tokio::task_local! {
    /// The session whose request the current task serves. Revocations that a change sends to
    /// that session itself say so (`Callback::RevokeOwn`): a mount's kernel made that change
    /// through the session and updated its own entries already.
    static REQUESTER: u64;
}

/// Sends each holder its revocations and waits for the acknowledgements, all sessions at once.
/// A session that does not answer within the lease timeout is evicted: its connection is closed
/// and its leases dropped, and the change goes on.
async fn revoke(inner: &Arc<Inner>, change: &Change, requester: Option<u64>) {
    let mut waiting = tokio::task::JoinSet::new();
    for (&session, grants) in &change.revocations {
        let live = inner.sessions.lock().expect("sessions lock").get(&session).cloned();
        let Some(Live { connection, session: holder }) = live else {
            // Not connected: its leases are gone with it, unless its client may still trust
            // them (a lapse, see `serve_connection`): then the change waits for the lapse.
            if inner.leases.lapse_deadline(session).is_some() {
                let leases = inner.leases.clone();
                waiting.spawn(async move { leases.wait_lapse(session).await });
            }
            continue;
        };
        let leases = grants.clone();
        let header = encode_header(&match requester == Some(session) {
            true => Callback::RevokeOwn { leases },
            false => Callback::Revoke { leases },
        });
        let timeout = inner.config.lease_timeout;
        let lapse = !inner.config.fault_no_lapse;
        let leases = inner.leases.clone();
        let counters = inner.counters.clone();
        let stopping = inner.shutdown.subscribe();
        waiting.spawn(async move {
            let started = tokio::time::Instant::now();
            let answer = tokio::time::timeout(timeout, connection.call(header, Bytes::new())).await;
            let reason = match answer {
                Ok(Ok(reply)) => match reply.decode_header::<CallbackReply>() {
                    Ok(CallbackReply::Revoked) => {
                        counters.revocations.fetch_add(1, Ordering::Relaxed);
                        counters.revocation_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                        return;
                    }
                    other => format!("wrong answer to a revocation: {other:?}"),
                },
                // Closed meanwhile by its client: its leases are gone with it. Closed by this
                // server (a write error, a protocol violation): the client may not know, and
                // trusts what it caches for its trust window, which began before the close;
                // the change waits for that, as for a lapse (`serve_connection`).
                Ok(Err(closed)) => {
                    if lapse && closed.reason != rustre_proto::rpc::PEER_CLOSED && !*stopping.borrow() {
                        tokio::time::sleep(timeout / 2 + TRUST_LAPSE_MARGIN).await;
                    }
                    return;
                }
                Err(_) => format!("no acknowledgement of a revocation within {timeout:?}"),
            };
            tracing::warn!(connection = connection.name(), %reason, "evicting client");
            counters.evictions.fetch_add(1, Ordering::Relaxed);
            if !lapse {
                *holder.fate.lock().expect("fate lock") = Fate::Evicted;
                connection.close(format!("evicted: {reason}"));
                leases.drop_session(session);
                return;
            }
            // The client may have sent a request this server answered until a moment ago (it
            // only failed to acknowledge), so it may trust its cache for a trust window from
            // now: its leases lapse before the change goes on (the connection's end lapses them
            // again, from its close, which `wait_lapse` follows).
            let until = tokio::time::Instant::now() + timeout / 2 + TRUST_LAPSE_MARGIN;
            let number = leases.lapse(session, until);
            // Fenced: its handles and pins go, and it may not come back (`Op::Resume` refused).
            *holder.fate.lock().expect("fate lock") = Fate::Evicted;
            connection.close(format!("evicted: {reason}"));
            let expiring = leases.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(until).await;
                expiring.expire(session, number);
            });
            leases.wait_lapse(session).await;
        });
    }
    while waiting.join_next().await.is_some() {}
}

/// One connection counted in `Inner::connections`, until dropped.
struct ConnectionCount<'a>(&'a Inner);

impl<'a> ConnectionCount<'a> {
    /// Counts one more connection, unless `connections_max` are served already.
    fn take(inner: &'a Inner) -> Option<ConnectionCount<'a>> {
        let before = inner.connections.fetch_add(1, Ordering::Relaxed);
        if before >= inner.config.connections_max {
            inner.connections.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ConnectionCount(inner))
    }
}

impl Drop for ConnectionCount<'_> {
    fn drop(&mut self) {
        let before = self.0.connections.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "a connection counted out more often than in");
    }
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
            let request = frame.decode_header::<Request>().map_err(|error| (Errno::EPROTO, error.to_string()));
            let request = request.and_then(|request| {
                let groups = request.caller.groups.len();
                if groups > rustre_proto::msg::GROUPS_MAX {
                    return Err((Errno::EINVAL, format!("{groups} supplementary groups, more than GROUPS_MAX")));
                }
                // Every identity the server acts for goes through the squash, here and nowhere else
                // (but a reclaim's openers, `recovery::reclaim`).
                Ok(Request { caller: inner.config.root_squash.apply(request.caller), op: request.op })
            });
            let answer = match request {
                Ok(Request { caller, op: Op::Once { slot, seq, op } }) => {
                    recovery::once(&inner, &session, slot, seq, Request { caller, op: *op }, frame.payload).await
                }
                Ok(request) => {
                    recovery::wait_if_recovering(&inner, &request.op).await;
                    run(&inner, &session, request, frame.payload).await
                }
                Err((errno, error)) => {
                    tracing::warn!(session = format_args!("{:#x}", session.id), %error, "request refused");
                    WireAnswer::from_store(Err(StoreError::Fs(errno)))
                }
            };
            (encode_header(&ReplyHeader { result: answer.result, grants: answer.grants }), answer.payload)
        })
    }
}

/// Runs one request for `session` and puts its answer in wire form, logging a failure.
async fn run(inner: &Arc<Inner>, session: &Arc<Session>, request: Request, payload: Bytes) -> WireAnswer {
    let kind = request.op.kind_name();
    let answer = REQUESTER.scope(session.id, handle(inner, session, request, payload)).await;
    if let Err(error) = &answer.result {
        let session = format_args!("{:#x}", session.id);
        if error.errno() == Errno::EIO {
            tracing::error!(session = %session, op = kind, %error, "request failed");
        } else {
            tracing::debug!(session = %session, op = kind, %error, "request refused");
        }
    }
    let mut wire = WireAnswer::from_store(answer.result);
    wire.grants = answer.grants;
    wire
}

/// An answer as it goes on the wire (and as `Op::Once` keeps it for a resend).
#[derive(Clone, Debug)]
struct WireAnswer {
    result: Result<Reply, WireError>,
    payload: Bytes,
    grants: Vec<Grant>,
}

impl WireAnswer {
    fn from_store(result: Result<(Reply, Bytes), StoreError>) -> WireAnswer {
        let (result, payload) = match result {
            Ok((reply, payload)) => (Ok(reply), payload),
            Err(error) => (Err(WireError { errno: error.errno(), message: error.to_string() }), Bytes::new()),
        };
        WireAnswer { result, payload, grants: Vec::new() }
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
    inner: &Arc<Inner>,
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
            let id = inner.next_handle.fetch_add(1, Ordering::Relaxed) + 1;
            handles.map.insert(id, Handle { ino, flags });
            return Ok(id);
        }
    }
    release_handle(inner, &Handle { ino, flags }).await?;
    Err(errno(Errno::ENOTCONN))
}

/// Changes a regular file's size under its data lock, keeping the data object in step: before
/// growing, the object is cut back to the old size (its tail is garbage, the new tail must read as
/// zeros); after shrinking, it is cut to the new size to free space. Returns the new attributes
/// and the ticket of the change (for the reply's grants).
/// A `SetAttr` that changes the size. `by_handle`: made through a handle open for writing
/// (ftruncate), so no write permission is asked for now.
async fn set_size(
    inner: &Arc<Inner>,
    ino: u64,
    set: SetAttrIn,
    caller: Caller,
    by_handle: bool,
) -> (Result<Attr, StoreError>, Option<ReadTicket>) {
    let size = set.size.expect("set_size changes a size");
    let _guard = inner.locks.exclusive(ino).await;
    // Checked before the data object is touched (the store checks again, atomically with the
    // change; under the exclusive lock, no other size change comes between).
    let before = match inner.store.read().and_then(|ns| {
        let record = ns.inode(ino)?.ok_or(StoreError::Fs(Errno::ESTALE))?;
        rustre_store::access::check_setattr(&record, &set, &caller, by_handle)?;
        Ok(record.attr(ino))
    }) {
        Ok(before) => before,
        Err(error) => return (Err(error), None),
    };
    let setattr =
        move |ns: &mut Ns<'_>, _: &mut OpenCounts, _: &mut ReadTicket| Ok(ns.setattr(ino, &set, &caller, by_handle)?.0);
    if before.kind != FileKind::Regular {
        // The store refuses (EISDIR, EINVAL); no data object may be touched first.
        return apply(inner, inner.leases.begin_read(), setattr).await;
    }
    if size > before.size
        && let Err(error) = inner.store.objects().set_len(ino, before.size)
    {
        return (Err(io_error("truncate", ino, error)), None);
    }
    let (result, ticket) = apply(inner, inner.leases.begin_read(), setattr).await;
    if result.is_ok()
        && size < before.size
        && let Err(error) = inner.store.objects().set_len(ino, size)
    {
        return (Err(io_error("truncate", ino, error)), ticket);
    }
    (result, ticket)
}

fn io_error(context: &str, ino: u64, error: std::io::Error) -> StoreError {
    StoreError::io(format!("{context} of inode {ino}"), error)
}

/// A reply in the making: the outcome and the leases granted with it.
struct Answer {
    result: Result<(Reply, Bytes), StoreError>,
    grants: Vec<Grant>,
}

impl From<Result<(Reply, Bytes), StoreError>> for Answer {
    fn from(result: Result<(Reply, Bytes), StoreError>) -> Answer {
        Answer { result, grants: Vec::new() }
    }
}

fn name_key(parent: u64, name: &[u8]) -> LeaseKey {
    LeaseKey::Name { parent, name: name.to_vec() }
}

fn attr_key(ino: u64) -> LeaseKey {
    LeaseKey::Attr { ino }
}

/// A change refused (EEXIST, ENOTEMPTY, ...): the refusal reveals the state of `reveal` (a name
/// exists, a directory has entries), so, like any reply, it waits until no revocation of an
/// earlier change on those keys is in flight; otherwise a cache not yet revoked could still
/// answer the older state after this answer (found by the simulator, seed 1799). Grants nothing.
async fn refusal(session: &Session, ticket: Option<ReadTicket>, reveal: &[LeaseKey], error: StoreError) -> Answer {
    if let Some(ticket) = ticket {
        ticket.finish(session.id, reveal, &[]).await;
    }
    Err(error).into()
}

/// Finishes a reply: reveals and grants `keys` (if the ticket survived), around `result`.
async fn answer(
    session: &Session,
    ticket: Option<ReadTicket>,
    keys: &[LeaseKey],
    result: Result<(Reply, Bytes), StoreError>,
) -> Answer {
    let grants = match ticket {
        Some(ticket) => ticket.finish(session.id, keys, keys).await,
        None => Vec::new(),
    };
    Answer { result, grants }
}

/// How many bytes `op` may add to the data directory, if it adds any: writes their payload,
/// creates and xattrs a little metadata. Removals, renames and truncates are always let through.
fn grows(op: &Op, payload: usize) -> Option<u64> {
    match op {
        Op::AtPath { op, .. } | Op::OnPath { op, .. } => grows(op, payload),
        Op::Write { .. } | Op::SetXattr { .. } => Some(payload as u64),
        Op::Open { flags, .. } if flags.contains(OpenFlags::CREATE) => Some(0),
        Op::Mkdir { .. } | Op::Symlink { .. } | Op::Link { .. } => Some(0),
        _ => None,
    }
}

/// ENOSPC unless the data directory's file system keeps `space_reserve` free after `needed`
/// more bytes.
fn check_space(inner: &Inner, needed: u64) -> Result<(), StoreError> {
    let vfs = rustix::fs::statvfs(&inner.config.data_dir)
        .map_err(|error| StoreError::io("statfs of the data directory", error.into()))?;
    let available = vfs.f_bavail.saturating_mul(vfs.f_frsize);
    if available < needed.saturating_add(inner.config.space_reserve) {
        tracing::warn!(available, needed, reserve = inner.config.space_reserve, "no space left for a change");
        return Err(errno(Errno::ENOSPC));
    }
    Ok(())
}

async fn handle(inner: &Arc<Inner>, session: &Session, request: Request, payload: Bytes) -> Answer {
    let caller = request.caller;
    let none = Bytes::new;
    if let Some(needed) = grows(&request.op, payload.len())
        && let Err(error) = check_space(inner, needed)
    {
        return Err(error).into();
    }
    match request.op {
        Op::Hello { .. } | Op::Resume { .. } | Op::Prove { .. } => Err(errno(Errno::EPROTO)).into(),
        // Unwrapped by `SessionService::call`; one inside another is refused.
        Op::Once { .. } => Err(errno(Errno::EINVAL)).into(),
        Op::Reclaim { handles, pins, last } => recovery::reclaim(inner, session, handles, pins, last).await.into(),
        Op::EndSession => {
            *session.fate.lock().expect("fate lock") = Fate::Ending;
            Ok((Reply::Done, none())).into()
        }
        Op::Lookup { parent, name } => {
            let name_key = name_key(parent, &name);
            let mut ticket = inner.leases.begin_read();
            ticket.observe(&name_key);
            let found = inner.store.read().and_then(|ns| ns.lookup(parent, &name, &caller));
            // Tests stop here to let a change run between this read and its reply.
            inner.config.pause_points.pause("server.lookup.after_read").await;
            if inner.config.fault_grant_unchecked {
                // The planted bug: observed again after the read, the name's version no longer
                // tells of a change made since the read.
                ticket.observe(&name_key);
            }
            match found {
                Ok(found) => {
                    // The attributes are read again, in a snapshot taken after their key is observed.
                    let attr_key = attr_key(found.ino);
                    ticket.observe(&attr_key);
                    let (attr, keys) = match inner.store.read().and_then(|ns| ns.getattr(found.ino)) {
                        Ok(attr) => (attr, vec![name_key, attr_key]),
                        Err(_) => (found, vec![name_key]),
                    };
                    answer(session, Some(ticket), &keys, Ok((Reply::Entry { attr }, none()))).await
                }
                Err(StoreError::Fs(Errno::ENOENT)) => {
                    answer(session, Some(ticket), &[name_key], Err(errno(Errno::ENOENT))).await
                }
                Err(error) => Err(error).into(),
            }
        }
        Op::GetAttr { ino } => {
            let key = attr_key(ino);
            let mut ticket = inner.leases.begin_read();
            ticket.observe(&key);
            match inner.store.read().and_then(|ns| ns.getattr(ino)) {
                Ok(attr) => answer(session, Some(ticket), &[key], Ok((Reply::Attr { attr }, none()))).await,
                Err(error) => Err(error).into(),
            }
        }
        Op::SetAttr { ino, set } => {
            let by_handle = match set.handle.map(|handle| session.handle(handle)).transpose() {
                Ok(None) => false,
                Ok(Some((opened, flags))) if opened == ino && flags.writes() => true,
                Ok(Some(_)) => return Err(errno(Errno::EINVAL)).into(),
                Err(error) => return Err(error).into(),
            };
            let (result, ticket) = if set.size.is_some() {
                set_size(inner, ino, set, caller, by_handle).await
            } else {
                apply(inner, inner.leases.begin_read(), move |ns, _, _| Ok(ns.setattr(ino, &set, &caller, false)?.0))
                    .await
            };
            answer(session, ticket, &[attr_key(ino)], result.map(|attr| (Reply::Attr { attr }, none()))).await
        }
        Op::Open { parent, name, flags, perm } => {
            if let Some(every) = inner.config.fault_estale_every_nth_open
                && (inner.opens.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(every.max(1))
            {
                tracing::debug!("injected fault: ESTALE for an open");
                return Err(errno(Errno::ESTALE)).into();
            }
            let reservation = match session.reserve_handle() {
                Ok(reservation) => reservation,
                Err(error) => return Err(error).into(),
            };
            let name_key = name_key(parent, &name);
            let mut ticket = inner.leases.begin_read();
            ticket.observe(&name_key);
            let pin = flags.contains(OpenFlags::PIN);
            if pin && let Err(error) = session.may_pin(None) {
                return Err(error).into();
            }
            let opener = caller.clone();
            let (opened, ticket) = apply(inner, ticket, move |ns, opens, ticket| {
                let opened = ns.open(parent, &name, flags, perm, &opener)?;
                ticket.observe(&attr_key(opened.attr.ino));
                // The handle's count, and the pin's: both taken where the open is ordered, so
                // no unlink can come between the open and the pin.
                opens.acquire(opened.attr.ino);
                opens.acquire_writer(opened.attr.ino, flags);
                if pin {
                    opens.acquire(opened.attr.ino);
                }
                Ok(opened)
            })
            .await;
            match opened {
                Ok(opened) => {
                    let ino = opened.attr.ino;
                    let keys = open_grants(flags, name_key, ino);
                    let result = match open_reply(inner, session, reservation, opened, flags, caller).await {
                        Ok(reply) if pin => count_pin(inner, session, ino).await.map(|()| reply),
                        Ok(reply) => Ok(reply),
                        Err(error) => {
                            if pin && let Err(release) = release_opens(inner, ino, 1).await {
                                return Err(release).into();
                            }
                            Err(error)
                        }
                    };
                    answer(session, ticket, &keys, result.map(|reply| (reply, none()))).await
                }
                Err(StoreError::Fs(Errno::ENOENT)) => {
                    answer(session, ticket, &[name_key], Err(errno(Errno::ENOENT))).await
                }
                Err(error @ StoreError::Fs(_)) => refusal(session, ticket, &[name_key], error).await,
                Err(error) => Err(error).into(),
            }
        }
        Op::OpenIno { ino, flags } => {
            if flags.contains(OpenFlags::PIN) {
                return Err(errno(Errno::EINVAL)).into();
            }
            let reservation = match session.reserve_handle() {
                Ok(reservation) => reservation,
                Err(error) => return Err(error).into(),
            };
            let opener = caller.clone();
            let (opened, ticket) = apply(inner, inner.leases.begin_read(), move |ns, opens, ticket| {
                ticket.observe(&attr_key(ino));
                let opened = ns.open_existing(ino, flags, &opener)?;
                opens.acquire(ino);
                opens.acquire_writer(ino, flags);
                Ok(opened)
            })
            .await;
            match opened {
                Ok(opened) => {
                    let result = open_reply(inner, session, reservation, opened, flags, caller).await;
                    let keys = open_grants(flags, None, ino);
                    answer(session, ticket, &keys, result.map(|reply| (reply, none()))).await
                }
                Err(error) => Err(error).into(),
            }
        }
        Op::Close { handle } => {
            let removed = session.handles.lock().expect("handles lock").map.remove(&handle);
            match removed {
                Some(handle) => close(inner, session, handle).await,
                None => Err(errno(Errno::EBADF)).into(),
            }
        }
        Op::Read { handle, offset, len } => read(inner, session, handle, offset, len).await.into(),
        Op::ReadPinned { ino, offset, len } => {
            if !session.pins.lock().expect("pins lock").contains_key(&ino) {
                return Err(errno(Errno::EBADF)).into();
            }
            // No handle stands for an open that was checked: read permission is asked for now.
            read_ino(inner, ino, offset, len, Some(&caller)).await.into()
        }
        Op::Write { handle, offset } => {
            let (ino, flags) = match session.handle(handle) {
                Ok(found) => found,
                Err(error) => return Err(error).into(),
            };
            // No lease on the attributes a write returns: the writer's next write would have to
            // revoke it from the writer itself, one more round trip per write.
            let (result, _) = write(inner, ino, flags, offset, payload, caller).await;
            result.map(|reply| (reply, none())).into()
        }
        Op::Fsync { handle } => {
            let result = async {
                let (ino, _) = session.handle(handle)?;
                inner.store.objects().sync(ino).map_err(|error| io_error("fsync", ino, error))?;
                let ticket = inner.leases.begin_read();
                apply(inner, ticket, |ns, _, _| {
                    ns.require_durable();
                    Ok(())
                })
                .await
                .0?;
                Ok((Reply::Done, none()))
            };
            result.await.into()
        }
        Op::Mkdir { parent, name, perm } => {
            let key = name_key(parent, &name);
            let ticket = inner.leases.begin_read();
            let (result, ticket) = apply(inner, ticket, move |ns, _, _| ns.mkdir(parent, &name, perm, &caller)).await;
            entry_answer(session, ticket, key, result).await
        }
        Op::Symlink { parent, name, target } => {
            let key = name_key(parent, &name);
            let ticket = inner.leases.begin_read();
            let (result, ticket) =
                apply(inner, ticket, move |ns, _, _| ns.symlink(parent, &name, &target, &caller)).await;
            entry_answer(session, ticket, key, result).await
        }
        Op::Link { ino, new_parent, new_name } => {
            let key = name_key(new_parent, &new_name);
            let ticket = inner.leases.begin_read();
            let (result, ticket) =
                apply(inner, ticket, move |ns, _, _| ns.link(ino, new_parent, &new_name, &caller)).await;
            entry_answer(session, ticket, key, result).await
        }
        Op::Unlink { parent, name } => {
            let key = name_key(parent, &name);
            let (result, ticket) = apply(inner, inner.leases.begin_read(), move |ns, opens, _| {
                ns.unlink(parent, &name, &caller)?;
                reap(ns, opens)
            })
            .await;
            answer(session, ticket, &[key], result.map(|()| (Reply::Done, none()))).await
        }
        Op::Rmdir { parent, name } => {
            let key = name_key(parent, &name);
            let (result, ticket) = apply(inner, inner.leases.begin_read(), move |ns, opens, _| {
                ns.rmdir(parent, &name, &caller)?;
                reap(ns, opens)
            })
            .await;
            answer(session, ticket, &[key], result.map(|()| (Reply::Done, none()))).await
        }
        Op::Rename { parent, name, new_parent, new_name, mode } => {
            // The source name is gone (unless exchanged); that absence can be cached.
            let key = name_key(parent, &name);
            let target = name_key(new_parent, &new_name);
            let (result, ticket) = apply(inner, inner.leases.begin_read(), move |ns, opens, _| {
                ns.rename(parent, &name, new_parent, &new_name, mode, &caller)?;
                reap(ns, opens)
            })
            .await;
            match result {
                Err(error @ StoreError::Fs(_)) => refusal(session, ticket, &[key, target], error).await,
                result => {
                    let keys = if mode == RenameMode::Exchange { vec![] } else { vec![key] };
                    answer(session, ticket, &keys, result.map(|()| (Reply::Done, none()))).await
                }
            }
        }
        Op::Readlink { ino } => {
            // A symlink's target never changes: nothing to lease.
            inner.store.read().and_then(|ns| ns.readlink(ino)).map(|target| (Reply::Target { target }, none())).into()
        }
        Op::ReadDir { ino, cookie, max_entries, with_attrs } => {
            let key = LeaseKey::Listing { ino };
            let mut ticket = inner.leases.begin_read();
            ticket.observe(&key);
            match inner.store.read().and_then(|ns| ns.read_dir(ino, cookie, max_entries, with_attrs, &caller)) {
                Ok((entries, end)) => {
                    // Every attribute shown is revealed; the listing is leased from its start only.
                    let mut reveal = vec![key.clone()];
                    reveal.extend(entries.iter().filter(|entry| entry.attr.is_some()).map(|entry| attr_key(entry.ino)));
                    let grant = if cookie == 0 { vec![key] } else { vec![] };
                    let grants = ticket.finish(session.id, &reveal, &grant).await;
                    Answer { result: Ok((Reply::Entries { entries, end }, none())), grants }
                }
                Err(error) => Err(error).into(),
            }
        }
        Op::StatFs => statfs(inner).map(|statfs| (Reply::StatFs { statfs }, none())).into(),
        Op::GetXattr { ino, name } => inner
            .store
            .read()
            .and_then(|ns| ns.getxattr(ino, &name, &caller))
            .map(|value| (Reply::Xattr, Bytes::from(value)))
            .into(),
        Op::SetXattr { ino, name, mode } => {
            let ticket = inner.leases.begin_read();
            let (result, _) =
                apply(inner, ticket, move |ns, _, _| ns.setxattr(ino, &name, &payload, mode, &caller)).await;
            result.map(|()| (Reply::Done, none())).into()
        }
        Op::ListXattr { ino } => inner
            .store
            .read()
            .and_then(|ns| ns.listxattr(ino, &caller))
            .map(|names| (Reply::XattrNames { names }, none()))
            .into(),
        Op::RemoveXattr { ino, name } => {
            let ticket = inner.leases.begin_read();
            let (result, _) = apply(inner, ticket, move |ns, _, _| ns.removexattr(ino, &name, &caller)).await;
            result.map(|()| (Reply::Done, none())).into()
        }
        Op::ReleaseLeases { leases } => {
            inner.leases.release(session.id, &leases);
            Ok((Reply::Done, none())).into()
        }
        Op::OnPath { path, follow_last, op } => on_path(inner, session, caller, path, follow_last, *op, payload).await,
        Op::ListOrphans { after } => list_orphans(inner, after).await.map(|reply| (reply, none())).into(),
        Op::Pin { ino } => pin(inner, session, ino).await.into(),
        Op::Unpin { ino, count } => unpin(inner, session, ino, count).await.into(),
        Op::PinName { parent, name } => pin_name(inner, session, caller, parent, name).await,
        Op::AtPath { dir, new_dir, follow_last, op } => {
            at_path(inner, session, caller, AtPaths { dir, new_dir, follow_last }, *op).await
        }
    }
}

/// The paths of an `AtPath` request.
struct AtPaths {
    dir: Vec<Vec<u8>>,
    new_dir: Option<Vec<Vec<u8>>>,
    follow_last: bool,
}

/// Where the paths of an `AtPath` led.
enum Resolved {
    Parents(u64, Option<u64>),
    /// A symlink on the way: the reply to give (`SymlinkOnPath`).
    Symlink(Reply),
}

fn symlink_reply(in_new_dir: bool, index: usize, target: Vec<u8>) -> Reply {
    Reply::SymlinkOnPath { in_new_dir, index: index as u32, target }
}

/// Resolves `AtPath`'s directories by name; every name gone through is added to `revealed`.
fn resolve_paths(
    mut walk: impl FnMut(&[Vec<u8>], &mut Vec<LeaseKey>) -> Result<Walked, StoreError>,
    dir: &[Vec<u8>],
    new_dir: Option<&[Vec<u8>]>,
    revealed: &mut Vec<LeaseKey>,
) -> Result<Resolved, StoreError> {
    let parent = match walk(dir, revealed)? {
        Walked::Directory(parent) => parent,
        Walked::Symlink { index, target } => return Ok(Resolved::Symlink(symlink_reply(false, index, target))),
    };
    let new_parent = match new_dir {
        None => None,
        Some(path) => match walk(path, revealed)? {
            Walked::Directory(new_parent) => Some(new_parent),
            Walked::Symlink { index, target } => return Ok(Resolved::Symlink(symlink_reply(true, index, target))),
        },
    };
    Ok(Resolved::Parents(parent, new_parent))
}

/// Resolves a whole path (`OnPath`) to the inode it names, following a final symlink only when
/// asked: `Ok(ino)`, or the `SymlinkOnPath` reply to give. Names gone through go to `revealed`.
fn resolve_object(
    walk: impl FnMut(&[Vec<u8>], &mut Vec<LeaseKey>) -> Result<Walked, StoreError>,
    entry: impl Fn(u64, &[u8]) -> Result<Option<rustre_store::Dirent>, StoreError>,
    target: impl Fn(u64) -> Result<Vec<u8>, StoreError>,
    path: &[Vec<u8>],
    follow_last: bool,
    revealed: &mut Vec<LeaseKey>,
) -> Result<Result<u64, Reply>, StoreError> {
    let Some((last, dir)) = path.split_last() else { return Ok(Ok(ROOT_INO)) };
    let mut walk = walk;
    if last == b".." {
        // A path ending in "..": the directory it walks to.
        return Ok(match walk(path, revealed)? {
            Walked::Directory(ino) => Ok(ino),
            Walked::Symlink { index, target } => Err(symlink_reply(false, index, target)),
        });
    }
    rustre_proto::name::validate_name(last)?;
    let parent = match resolve_paths(walk, dir, None, revealed)? {
        Resolved::Symlink(reply) => return Ok(Err(reply)),
        Resolved::Parents(parent, _) => parent,
    };
    revealed.push(name_key(parent, last));
    let found = entry(parent, last)?.ok_or(StoreError::Fs(Errno::ENOENT))?;
    if found.kind == FileKind::Symlink && follow_last {
        return Ok(Err(symlink_reply(false, dir.len(), target(found.ino)?)));
    }
    revealed.push(attr_key(found.ino));
    Ok(Ok(found.ino))
}

/// `resolve_object` inside a commit-thread batch (changes under `AtPath` and `OnPath`).
fn resolve_object_in_batch(
    ns: &Ns<'_>,
    caller: &Caller,
    path: &[Vec<u8>],
    follow_last: bool,
    revealed: &mut Vec<LeaseKey>,
) -> Result<Result<u64, Reply>, StoreError> {
    let target = |ino| ns.inode(ino).map(|record| record.map(|record| record.target).unwrap_or_default());
    let walk = |path: &[Vec<u8>], keys: &mut Vec<LeaseKey>| ns.walk(path, keys, caller);
    let entry = |parent, name: &[u8]| ns.searched_entry(parent, name, caller);
    resolve_object(walk, entry, target, path, follow_last, revealed)
}

/// `Op::AtPath`: the path is resolved by name in the same step as the op (for changes, in the
/// same commit-thread closure), so no inode id a client held is used and ESTALE cannot happen.
/// Like any reply, it waits until the state it reveals (the names walked, the name and inode
/// answered) has no revocation in flight; it grants no lease (the client does not know the ids).
async fn at_path(inner: &Arc<Inner>, session: &Session, caller: Caller, paths: AtPaths, op: Op) -> Answer {
    let AtPaths { dir, new_dir, follow_last } = paths;
    let none = Bytes::new;
    if dir.len() + new_dir.as_ref().map_or(0, Vec::len) > PATH_COMPONENTS_MAX {
        return Err(errno(Errno::ENAMETOOLONG)).into();
    }
    match op {
        Op::Lookup { name, .. } => {
            let ticket = inner.leases.begin_read();
            let mut revealed = Vec::new();
            let found = inner.store.read().and_then(|ns| {
                let parent = match resolve_paths(|path, keys| ns.walk(path, keys, &caller), &dir, None, &mut revealed)?
                {
                    Resolved::Symlink(reply) => return Ok(Ok(reply)),
                    Resolved::Parents(parent, _) => parent,
                };
                revealed.push(name_key(parent, &name));
                Ok(match ns.lookup(parent, &name, &caller) {
                    Ok(attr) if follow_last && attr.kind == FileKind::Symlink => {
                        Ok(symlink_reply(false, dir.len(), ns.readlink(attr.ino)?))
                    }
                    Ok(attr) => {
                        revealed.push(attr_key(attr.ino));
                        Ok(Reply::Entry { attr })
                    }
                    Err(error) => Err(error),
                })
            });
            ticket.finish(session.id, &revealed, &[]).await;
            match found {
                Ok(Ok(reply)) => Ok((reply, none())).into(),
                Ok(Err(error)) | Err(error) => Err(error).into(),
            }
        }
        Op::Open { name, flags, perm, .. } => {
            if flags.contains(OpenFlags::PIN) {
                return Err(errno(Errno::EINVAL)).into();
            }
            let reservation = match session.reserve_handle() {
                Ok(reservation) => reservation,
                Err(error) => return Err(error).into(),
            };
            let opener = caller.clone();
            let (outcome, ticket) = apply(inner, inner.leases.begin_read(), move |ns, opens, _| {
                keep_revealed(ns, |ns, revealed| {
                    let parent = match resolve_paths(|path, keys| ns.walk(path, keys, &opener), &dir, None, revealed)? {
                        Resolved::Symlink(reply) => return Ok(Err(reply)),
                        Resolved::Parents(parent, _) => parent,
                    };
                    revealed.push(name_key(parent, &name));
                    if let Some(entry) = ns.searched_entry(parent, &name, &opener)?
                        && entry.kind == FileKind::Symlink
                        && follow_last
                    {
                        // The server never follows a symlink; the client does (or refuses, O_NOFOLLOW).
                        let target = ns.inode(entry.ino)?.map(|record| record.target).unwrap_or_default();
                        return Ok(Err(symlink_reply(false, dir.len(), target)));
                    }
                    let opened = ns.open(parent, &name, flags, perm, &opener)?;
                    opens.acquire(opened.attr.ino);
                    opens.acquire_writer(opened.attr.ino, flags);
                    revealed.push(attr_key(opened.attr.ino));
                    Ok(Ok(opened))
                })
            })
            .await;
            match outcome {
                Err(error) => Err(error).into(),
                Ok((opened, revealed)) => {
                    if let Some(ticket) = ticket {
                        ticket.finish(session.id, &revealed, &[]).await;
                    }
                    let opened = match opened {
                        Ok(opened) => opened,
                        Err(refused) => return Err(StoreError::Fs(refused)).into(),
                    };
                    match opened {
                        Err(symlink) => Ok((symlink, none())).into(),
                        Ok(opened) => open_reply(inner, session, reservation, opened, flags, caller)
                            .await
                            .map(|reply| (reply, none()))
                            .into(),
                    }
                }
            }
        }
        Op::Mkdir { name, perm, .. } => {
            let names = (name.clone(), None);
            at_path_change(inner, session, caller, dir, None, names, move |ns, caller, _, parent, _| {
                ns.mkdir(parent, &name, perm, caller).map(|attr| Reply::Entry { attr })
            })
            .await
            .into()
        }
        Op::Symlink { name, target, .. } => {
            let names = (name.clone(), None);
            at_path_change(inner, session, caller, dir, None, names, move |ns, caller, _, parent, _| {
                ns.symlink(parent, &name, &target, caller).map(|attr| Reply::Entry { attr })
            })
            .await
            .into()
        }
        Op::Unlink { name, .. } => {
            let names = (name.clone(), None);
            at_path_change(inner, session, caller, dir, None, names, move |ns, caller, opens, parent, _| {
                ns.unlink(parent, &name, caller)?;
                reap(ns, opens).map(|()| Reply::Done)
            })
            .await
            .into()
        }
        Op::Rmdir { name, .. } => {
            let names = (name.clone(), None);
            at_path_change(inner, session, caller, dir, None, names, move |ns, caller, opens, parent, _| {
                ns.rmdir(parent, &name, caller)?;
                reap(ns, opens).map(|()| Reply::Done)
            })
            .await
            .into()
        }
        // For Link, `dir` is the whole path of the source (not followed if a symlink, as link(2)),
        // and `new_dir` the directory of the new name.
        Op::Link { new_name, .. } => {
            let Some(new_dir) = new_dir else { return Err(StoreError::Fs(Errno::EINVAL)).into() };
            let (result, ticket) = apply(inner, inner.leases.begin_read(), move |ns, _, _| {
                keep_revealed(ns, |ns, revealed| {
                    let ino = match resolve_object_in_batch(ns, &caller, &dir, false, revealed)? {
                        Err(symlink) => return Ok(symlink),
                        Ok(ino) => ino,
                    };
                    let new_parent = match ns.walk(&new_dir, revealed, &caller)? {
                        Walked::Directory(new_parent) => new_parent,
                        Walked::Symlink { index, target } => return Ok(symlink_reply(true, index, target)),
                    };
                    revealed.push(attr_key(ino));
                    revealed.push(name_key(new_parent, &new_name));
                    Ok(Reply::Entry { attr: ns.link(ino, new_parent, &new_name, &caller)? })
                })
            })
            .await;
            finish_path_reply(session, result, ticket).await.into()
        }
        Op::Rename { name, new_name, mode, .. } => {
            let new_dir = new_dir.unwrap_or_else(|| dir.clone());
            let names = (name.clone(), Some(new_name.clone()));
            at_path_change(
                inner,
                session,
                caller,
                dir,
                Some(new_dir),
                names,
                move |ns, caller, opens, parent, new_parent| {
                    ns.rename(
                        parent,
                        &name,
                        new_parent.expect("a rename has a target directory"),
                        &new_name,
                        mode,
                        caller,
                    )?;
                    reap(ns, opens).map(|()| Reply::Done)
                },
            )
            .await
            .into()
        }
        other => {
            tracing::debug!(op = other.kind_name(), "AtPath does not carry this op");
            Err(StoreError::Fs(Errno::EINVAL)).into()
        }
    }
}

/// A change under `AtPath`: resolve the paths and run `change` in one commit-thread closure;
/// then wait until the names walked have no revocation in flight, before answering.
async fn at_path_change<F>(
    inner: &Arc<Inner>,
    session: &Session,
    caller: Caller,
    dir: Vec<Vec<u8>>,
    new_dir: Option<Vec<Vec<u8>>>,
    names: (Vec<u8>, Option<Vec<u8>>),
    change: F,
) -> Result<(Reply, Bytes), StoreError>
where
    F: for<'txn> FnOnce(&mut Ns<'txn>, &Caller, &mut OpenCounts, u64, Option<u64>) -> Result<Reply, StoreError>
        + Send
        + 'static,
{
    let (result, ticket) = apply(inner, inner.leases.begin_read(), move |ns, opens, _| {
        keep_revealed(ns, |ns, revealed| {
            let walk = |path: &[Vec<u8>], keys: &mut Vec<LeaseKey>| ns.walk(path, keys, &caller);
            match resolve_paths(walk, &dir, new_dir.as_deref(), revealed)? {
                Resolved::Symlink(reply) => Ok(reply),
                Resolved::Parents(parent, new_parent) => {
                    // The names the change reads (a refusal such as EEXIST reveals them).
                    revealed.push(name_key(parent, &names.0));
                    if let (Some(new_parent), Some(new_name)) = (new_parent, &names.1) {
                        revealed.push(name_key(new_parent, new_name));
                    }
                    change(ns, &caller, opens, parent, new_parent)
                }
            }
        })
    })
    .await;
    finish_path_reply(session, result, ticket).await
}

/// Runs `step`, the commit-thread part of a request by path, keeping the keys it reveals even
/// when it is refused: a refusal reveals what it walked as much as a success does (ENOTDIR says
/// a name is there, and is no directory), so its answer too waits until those keys have no
/// revocation in flight. Answered at once, it let a client learn of a file whose creation other
/// clients' caches had not yet heard of, and a mount's cached "no such name" then contradicted it
/// (simulator seed 9155).
fn keep_revealed<'txn, T>(
    ns: &mut Ns<'txn>,
    step: impl FnOnce(&mut Ns<'txn>, &mut Vec<LeaseKey>) -> Result<T, StoreError>,
) -> Result<(Result<T, Errno>, Vec<LeaseKey>), StoreError> {
    let before = ns.mutation_count();
    let mut revealed = Vec::new();
    match step(ns, &mut revealed) {
        Ok(value) => Ok((Ok(value), revealed)),
        Err(StoreError::Fs(refused)) => {
            assert_eq!(ns.mutation_count(), before, "a refused request by path changes nothing");
            Ok((Err(refused), revealed))
        }
        Err(failure) => Err(failure),
    }
}

/// Waits for the revocations in flight on what a path reply (or refusal) reveals, then gives it.
async fn finish_path_reply(
    session: &Session,
    result: Result<(Result<Reply, Errno>, Vec<LeaseKey>), StoreError>,
    ticket: Option<ReadTicket>,
) -> Result<(Reply, Bytes), StoreError> {
    let (reply, revealed) = result?;
    if let Some(ticket) = ticket {
        ticket.finish(session.id, &revealed, &[]).await;
    }
    Ok((reply.map_err(StoreError::Fs)?, Bytes::new()))
}

/// How `OnPath` answers a read once the object is found.
type ReadAnswer<'a> = dyn Fn(&ReadNs, u64) -> Result<(Reply, Bytes), StoreError> + Send + Sync + 'a;

/// `Op::OnPath`: the object is found by name in the same step as the op runs on it, so no inode
/// id a client held is used and ESTALE cannot happen. Its reply waits, like any other, until what
/// it reveals has no revocation in flight.
async fn on_path(
    inner: &Arc<Inner>,
    session: &Session,
    caller: Caller,
    path: Vec<Vec<u8>>,
    follow_last: bool,
    op: Op,
    payload: Bytes,
) -> Answer {
    let none = Bytes::new;
    if path.len() > PATH_COMPONENTS_MAX {
        return Err(errno(Errno::ENAMETOOLONG)).into();
    }
    let who = &caller;
    let result = match op {
        Op::GetAttr { .. } => {
            on_path_read(inner, session, who, &path, follow_last, &|ns, ino| {
                Ok((Reply::Attr { attr: ns.getattr(ino)? }, none()))
            })
            .await
        }
        Op::Readlink { .. } => {
            on_path_read(inner, session, who, &path, follow_last, &|ns, ino| {
                Ok((Reply::Target { target: ns.readlink(ino)? }, none()))
            })
            .await
        }
        Op::GetXattr { name, .. } => {
            on_path_read(inner, session, who, &path, follow_last, &|ns, ino| {
                Ok((Reply::Xattr, Bytes::from(ns.getxattr(ino, &name, who)?)))
            })
            .await
        }
        Op::ListXattr { .. } => {
            on_path_read(inner, session, who, &path, follow_last, &|ns, ino| {
                Ok((Reply::XattrNames { names: ns.listxattr(ino, who)? }, none()))
            })
            .await
        }
        Op::SetAttr { set, .. } if set.size.is_none() => {
            on_path_change(inner, session, caller.clone(), path, follow_last, move |ns, caller, ino| {
                Ok(Reply::Attr { attr: ns.setattr(ino, &set, caller, false)?.0 })
            })
            .await
        }
        Op::SetXattr { name, mode, .. } => {
            on_path_change(inner, session, caller.clone(), path, follow_last, move |ns, caller, ino| {
                ns.setxattr(ino, &name, &payload, mode, caller).map(|()| Reply::Done)
            })
            .await
        }
        Op::RemoveXattr { name, .. } => {
            on_path_change(inner, session, caller.clone(), path, follow_last, move |ns, caller, ino| {
                ns.removexattr(ino, &name, caller).map(|()| Reply::Done)
            })
            .await
        }
        // A size change needs the file's data lock, taken before the commit thread: it resolves
        // the path first, then truncates by id. If the file was destroyed in between, the answer
        // is ENOENT, as if the truncate came after the removal (which it did).
        Op::SetAttr { set, .. } => match on_path_read(inner, session, who, &path, follow_last, &|ns, ino| {
            Ok((Reply::Attr { attr: ns.getattr(ino)? }, none()))
        })
        .await
        {
            Ok((Reply::Attr { attr }, _)) => match set_size(inner, attr.ino, set, caller.clone(), false).await.0 {
                Ok(attr) => Ok((Reply::Attr { attr }, none())),
                Err(StoreError::Fs(Errno::ESTALE)) => Err(StoreError::Fs(Errno::ENOENT)),
                Err(error) => Err(error),
            },
            other => other,
        },
        // Open what the path names (a directory's "dir/", "/", "a/..", or a listing's handle):
        // found and opened in one commit-thread step, so the handle holds what the path named.
        Op::OpenIno { flags, .. } => {
            return on_path_open(inner, session, caller, path, follow_last, flags).await.into();
        }
        other => {
            tracing::debug!(op = other.kind_name(), "OnPath does not carry this op");
            Err(StoreError::Fs(Errno::EINVAL))
        }
    };
    result.into()
}

/// `OnPath` carrying `OpenIno`: resolve the object and open it in one commit-thread closure
/// (the open count is taken there, so the object cannot be destroyed before the handle exists).
async fn on_path_open(
    inner: &Arc<Inner>,
    session: &Session,
    caller: Caller,
    path: Vec<Vec<u8>>,
    follow_last: bool,
    flags: OpenFlags,
) -> Result<(Reply, Bytes), StoreError> {
    let reservation = session.reserve_handle()?;
    let opener = caller.clone();
    let (outcome, ticket) = apply(inner, inner.leases.begin_read(), move |ns, opens, _| {
        keep_revealed(ns, |ns, revealed| {
            let ino = match resolve_object_in_batch(ns, &opener, &path, follow_last, revealed)? {
                Err(symlink) => return Ok(Err(symlink)),
                Ok(ino) => ino,
            };
            revealed.push(attr_key(ino));
            let opened = ns.open_existing(ino, flags, &opener)?;
            opens.acquire(ino);
            opens.acquire_writer(ino, flags);
            Ok(Ok(opened))
        })
    })
    .await;
    let (opened, revealed) = outcome?;
    if let Some(ticket) = ticket {
        ticket.finish(session.id, &revealed, &[]).await;
    }
    match opened.map_err(StoreError::Fs)? {
        Err(symlink) => Ok((symlink, Bytes::new())),
        Ok(opened) => Ok((open_reply(inner, session, reservation, opened, flags, caller).await?, Bytes::new())),
    }
}

/// A read under `OnPath`: one snapshot resolves the object and answers.
async fn on_path_read(
    inner: &Inner,
    session: &Session,
    caller: &Caller,
    path: &[Vec<u8>],
    follow_last: bool,
    answer: &ReadAnswer<'_>,
) -> Result<(Reply, Bytes), StoreError> {
    let ticket = inner.leases.begin_read();
    let mut revealed = Vec::new();
    let result = inner.store.read().and_then(|ns| {
        let target = |ino| ns.readlink(ino);
        let walk = |path: &[Vec<u8>], keys: &mut Vec<LeaseKey>| ns.walk(path, keys, caller);
        let entry = |parent, name: &[u8]| ns.searched_entry(parent, name, caller);
        match resolve_object(walk, entry, target, path, follow_last, &mut revealed)? {
            Err(symlink) => Ok((symlink, Bytes::new())),
            Ok(ino) => answer(&ns, ino),
        }
    });
    ticket.finish(session.id, &revealed, &[]).await;
    result
}

/// A change under `OnPath`: resolve the object and run `change` on it in one commit-thread
/// closure; then wait until what the reply reveals has no revocation in flight.
async fn on_path_change<F>(
    inner: &Arc<Inner>,
    session: &Session,
    caller: Caller,
    path: Vec<Vec<u8>>,
    follow_last: bool,
    change: F,
) -> Result<(Reply, Bytes), StoreError>
where
    F: for<'txn> FnOnce(&mut Ns<'txn>, &Caller, u64) -> Result<Reply, StoreError> + Send + 'static,
{
    let (result, ticket) = apply(inner, inner.leases.begin_read(), move |ns, _, _| {
        keep_revealed(ns, |ns, revealed| match resolve_object_in_batch(ns, &caller, &path, follow_last, revealed)? {
            Err(symlink) => Ok(symlink),
            Ok(ino) => {
                revealed.push(attr_key(ino));
                change(ns, &caller, ino)
            }
        })
    })
    .await;
    finish_path_reply(session, result, ticket).await
}

/// What an open reply leases: the name (if opened by name), and the attributes when opened for
/// reading, or when the client asks (`LEASE_ATTR`). A writer changes the attributes with its first
/// write, which then has to revoke the writer's own lease: one more round trip for every file
/// written, which only a client that asks for the attributes before writing gains from.
fn open_grants(flags: OpenFlags, name_key: impl Into<Option<LeaseKey>>, ino: u64) -> Vec<LeaseKey> {
    let mut keys: Vec<LeaseKey> = name_key.into().into_iter().collect();
    let writing = flags.writes();
    if !writing || flags.contains(OpenFlags::LEASE_ATTR) {
        keys.push(attr_key(ino));
    }
    keys
}

/// The reply to a change that made a name (mkdir, symlink, link): leases on the name and its inode.
async fn entry_answer(
    session: &Session,
    ticket: Option<ReadTicket>,
    key: LeaseKey,
    result: Result<Attr, StoreError>,
) -> Answer {
    match result {
        Ok(attr) => {
            let keys = [key, attr_key(attr.ino)];
            answer(session, ticket, &keys, Ok((Reply::Entry { attr }, Bytes::new()))).await
        }
        Err(error @ StoreError::Fs(_)) => refusal(session, ticket, &[key], error).await,
        Err(error) => Err(error).into(),
    }
}

async fn read(
    inner: &Inner,
    session: &Session,
    handle: u64,
    offset: u64,
    len: u32,
) -> Result<(Reply, Bytes), StoreError> {
    let (ino, flags) = session.handle(handle)?;
    if !flags.contains(OpenFlags::READ) {
        return Err(errno(Errno::EBADF));
    }
    read_ino(inner, ino, offset, len, None).await
}

/// Reads `ino` (which a handle or a pin of the caller keeps alive) under its shared data lock.
/// `check`: the caller to ask read permission of (a read without a handle, `ReadPinned`).
async fn read_ino(
    inner: &Inner,
    ino: u64,
    offset: u64,
    len: u32,
    check: Option<&Caller>,
) -> Result<(Reply, Bytes), StoreError> {
    let len = len.min(IO_SIZE_MAX);
    let _guard = inner.locks.shared(ino).await;
    let record = inner.store.read()?.inode(ino)?.ok_or(StoreError::Fs(Errno::ESTALE))?;
    // The owner may always read (NFS's "owner override"): a file its owner opened and then made
    // 0200 or 0000 is still read through the open, as it would be through a handle.
    if let Some(caller) = check
        && caller.uid != record.uid
    {
        rustre_store::access::check(&record, caller, rustre_store::access::Want::READ)?;
    }
    let attr = record.attr(ino);
    if attr.kind == FileKind::Directory {
        return Err(errno(Errno::EISDIR));
    }
    let available = attr.size.saturating_sub(offset).min(u64::from(len)) as usize;
    let mut buffer = vec![0u8; available];
    // Short reads from the object (a hole at the end) leave zeros, as a hole reads.
    inner.store.objects().read_at(ino, offset, &mut buffer).map_err(|error| io_error("read", ino, error))?;
    Ok((Reply::Data, Bytes::from(buffer)))
}

async fn write(
    inner: &Arc<Inner>,
    ino: u64,
    flags: OpenFlags,
    offset: u64,
    payload: Bytes,
    caller: Caller,
) -> (Result<Reply, StoreError>, Option<ReadTicket>) {
    if !flags.writes() {
        return (Err(errno(Errno::EBADF)), None);
    }
    if payload.len() > IO_SIZE_MAX as usize {
        return (Err(errno(Errno::EINVAL)), None);
    }
    let _guard = inner.locks.exclusive(ino).await;
    let prepared = (|| {
        let attr = inner.store.read()?.getattr(ino)?;
        let offset = if flags.contains(OpenFlags::APPEND) { attr.size } else { offset };
        let end =
            offset.checked_add(payload.len() as u64).filter(|&end| end <= FILE_SIZE_MAX).ok_or(errno(Errno::EFBIG))?;
        Ok::<_, StoreError>((attr, offset, end))
    })();
    let (attr, offset, end) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return (Err(error), None),
    };
    if payload.is_empty() {
        // POSIX: writing nothing to a regular file has no other result.
        return (Ok(Reply::Written { len: 0, attr }), None);
    }
    let objects = inner.store.objects();
    // Writing past the end leaves a hole: make sure it holds zeros, not old garbage.
    let written = if offset > attr.size { objects.set_len(ino, attr.size) } else { Ok(()) }
        .and_then(|()| objects.write_at(ino, offset, &payload));
    if let Err(error) = written {
        return (Err(io_error("write", ino, error)), None);
    }
    let len = payload.len() as u32;
    let (result, ticket) =
        apply(inner, inner.leases.begin_read(), move |ns, _, _| ns.note_write(ino, end, &caller)).await;
    (result.map(|attr| Reply::Written { len, attr }), ticket)
}

async fn open_reply(
    inner: &Arc<Inner>,
    session: &Session,
    reservation: Reservation<'_>,
    opened: Opened,
    flags: OpenFlags,
    caller: Caller,
) -> Result<Reply, StoreError> {
    let ino = opened.attr.ino;
    let handle = add_handle(inner, reservation, ino, flags).await?;
    let mut attr = opened.attr;
    if opened.needs_truncate {
        // While the handle is registered its count keeps the inode; if the session closes meanwhile,
        // the session's teardown takes the handle, and the truncate may then meet a destroy (ESTALE).
        // The open asked for write permission already: the truncate goes as through its handle.
        match set_size(inner, ino, SetAttrIn { size: Some(0), ..SetAttrIn::default() }, caller, true).await.0 {
            Ok(truncated) => attr = truncated,
            Err(error) => {
                // Release only a handle still ours: a closed session's teardown released it already.
                let ours = session.handles.lock().expect("handles lock").map.remove(&handle);
                if let Some(ours) = ours {
                    release_handle(inner, &ours).await?;
                }
                return Err(error);
            }
        }
    }
    Ok(Reply::Opened { handle, attr, created: opened.created })
}

/// `Op::ListOrphans`: a page of the orphans with ids above `after`, and what keeps each alive.
///
/// The orphans, their attributes, their open counts and whether recovery keeps them are read on
/// the commit thread, where changes and the counts they move are ordered, so those agree (the
/// job changes nothing and costs no commit). The holders are then read from the sessions: a
/// handle or pin taken or given back in between shows in one and not the other, and `opens`
/// also counts opens in flight, so the two may differ by what is moving.
async fn list_orphans(inner: &Arc<Inner>, after: u64) -> Result<Reply, StoreError> {
    let found = inner
        .committer
        .run(move |ns, opens| {
            let inos = ns.orphans_after(after, ORPHANS_PER_REPLY_MAX + 1)?;
            let end = inos.len() <= ORPHANS_PER_REPLY_MAX;
            let mut page = Vec::with_capacity(inos.len().min(ORPHANS_PER_REPLY_MAX));
            for ino in inos.into_iter().take(ORPHANS_PER_REPLY_MAX) {
                page.push(Orphan {
                    attr: ns.getattr(ino)?,
                    opens: opens.counts.get(&ino).copied().map_or(0, u64::from),
                    kept_for_recovery: opens.protected.contains(&ino) || opens.kept_for_resends.contains_key(&ino),
                    holders: Vec::new(),
                });
            }
            Ok((page, end))
        })
        .await;
    let (mut page, mut end) = found?;
    // Every session that may hold something: those connected, and those kept for a resume. Each
    // map is locked alone, and each session's handles and pins after that, one at a time.
    let mut sessions: Vec<(Arc<Session>, bool)> = {
        let live = inner.sessions.lock().expect("sessions lock");
        live.values().map(|live| (live.session.clone(), true)).collect()
    };
    {
        let detached = inner.detached.lock().expect("detached lock");
        sessions.extend(detached.values().map(|session| (session.clone(), false)));
    }
    // A session being detached is in both maps for a moment: listed once, as connected.
    sessions.sort_by_key(|(session, connected)| (session.id, !connected));
    sessions.dedup_by_key(|(session, _)| session.id);
    let index: HashMap<u64, usize> = page.iter().enumerate().map(|(at, orphan)| (orphan.attr.ino, at)).collect();
    for (session, connected) in &sessions {
        let mut held: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
        for handle in session.handles.lock().expect("handles lock").map.values() {
            if let Some(&at) = index.get(&handle.ino) {
                held.entry(at).or_default().0 += 1;
            }
        }
        for (ino, &pins) in session.pins.lock().expect("pins lock").iter() {
            if let Some(&at) = index.get(ino) {
                held.entry(at).or_default().1 += pins;
            }
        }
        if held.is_empty() {
            continue;
        }
        let peer = session.peer.lock().expect("peer lock").clone();
        for (at, (handles, pins)) in held {
            let holders = &mut page[at].holders;
            if holders.len() < ORPHAN_HOLDERS_MAX {
                holders.push(OrphanHolder {
                    session: session.id,
                    peer: peer.address.clone(),
                    client_name: peer.client_name.clone(),
                    connected: *connected,
                    handles,
                    pins,
                });
            }
        }
    }
    // The page ends early rather than outgrow a reply header (`ORPHANS_REPLY_BYTES_MAX`).
    let mut bytes = 0;
    let fits = page
        .iter()
        .position(|orphan| {
            bytes += ORPHAN_BYTES_BOUND
                + orphan
                    .holders
                    .iter()
                    .map(|holder| HOLDER_BYTES_BOUND + holder.peer.len() + holder.client_name.len())
                    .sum::<usize>();
            bytes > ORPHANS_REPLY_BYTES_MAX
        })
        .map_or(page.len(), |first_over| first_over.max(1));
    if fits < page.len() {
        page.truncate(fits);
        end = false;
    }
    Ok(Reply::Orphans { orphans: page, end })
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
