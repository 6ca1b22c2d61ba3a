//! Deterministic simulation of rustre: the real server and several real library clients run on
//! turmoil's simulated network and clock, with faults, and every answer a client saw is checked
//! against a sequential model of the namespace (linearizability, `checker.rs`).
//!
//! One seed decides everything: the workload of every client, the network's latencies, the
//! faults and their timing. All hosts run on one OS thread, the server commits inline (no commit
//! thread), timestamps come from the simulated clock, and every `select!` on the way is biased,
//! so `run` with the same configuration gives the same history, event for event.
//!
//! Faults (each with its own rate in `Faults`):
//! - latency: every message takes a random 0..=`latency_max` (so messages on different
//!   connections overtake each other: a reply to one client against a revocation to another);
//! - partitions: a client is cut off from the server for a random time, often past the lease
//!   timeout, so the server evicts it and the client's watchdog gives up on the server;
//! - long delays: every message between a client and the server is held for a random time, up
//!   to and past the client's lease trust bound (half the lease timeout), then delivered;
//! - one-way faults: one direction of a client's link (client to server, or server to client)
//!   drops every message (turmoil's one-way partition) or holds them (`Valves`, in our own
//!   transport layer) while the other direction flows;
//! - broken connections: our own transport layer (`FaultyStream`) fails a client's connection
//!   on a random write; the client opens a new session;
//! - client crashes: a client drops its session with files open, and starts a new one;
//! - server crashes: the server host stops (every task and connection gone) and restarts on its
//!   store a little later; every acknowledged change must still be there (the model goes on
//!   from the state before the crash). Clients reconnect by themselves: they resume their
//!   sessions, take back their handles and resend what was in flight, which must take effect
//!   once (a session the server evicted or forgot makes the call `Unknown`, and the client
//!   starts over with a new one). Some of these crashes are power losses in the middle of a commit:
//!   the metadata database sits on a simulated disk (`disk.rs`) that loses its power after a few
//!   more writes and syncs, keeping only what was synced and a seeded part of the rest; the
//!   server answers nothing more, and restarts on what survived.
//!
//! A call's outcome is `Unknown` only where a fault could have made its effect uncertain: it
//! failed for want of a session (EIO, ENOTCONN) and its client's link saw a fault since the call
//! began (or, for a call on a file handle, since the handle was opened). Such a failure with no
//! fault on the link is a `LostWithoutFault` violation, and a run without faults that lose
//! sessions (`Faults::loses_no_session`) must lose none: no link lost, no unknown outcome
//! (`SessionLost` otherwise).

pub mod checker;
mod disk;
pub mod history;
mod kernel;
pub mod model;
mod phases;
mod workload;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use history::Event;

pub use workload::Rng;

/// Longest wait, in simulated time, for the writes inside which an armed power loss happens;
/// past it the power goes between two commits.
const POWER_LOSS_WAIT_MAX: Duration = Duration::from_secs(1);

/// The port the simulated server listens on.
pub const SERVER_PORT: u16 = 7070;
/// The hostname of the simulated server.
pub const SERVER_HOST: &str = "server";
/// A call of a connected client must finish within this much simulated time; past it the run
/// reports a hang (a deadlock, or a lost wake-up). Well above the lease timeout plus the client's
/// silence limit, which bound every legitimate wait.
pub const CALL_TIME_MAX: Duration = Duration::from_secs(60);
/// Simulated time a run may take at most (turmoil stops it with an error past this).
pub const SIMULATED_TIME_MAX: Duration = Duration::from_secs(4 * 3600);
/// Think time of a client between calls, at most (see `SimConfig::think_max`).
pub const THINK_MAX_DEFAULT: Duration = Duration::from_millis(50);
/// The simulated wall clock starts here (2027-01-15), so timestamps replay too.
const EPOCH_SECONDS: u64 = 1_800_000_000;
/// The server's lease timeout (`ServerConfig::lease_timeout`, left at its default); a client
/// trusts a lease for half of it (`LEASE_TRUST_BOUND`).
pub const LEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client trusts what a lease covers without news from the server: the bound the
/// long delays reach and pass.
pub const LEASE_TRUST_BOUND: Duration = Duration::from_millis(LEASE_TIMEOUT.as_millis() as u64 / 2);
/// Most message latency under which a run may lose no session: far below the ping timeout and
/// the trust bound, so latency alone never costs a client its link.
pub const LATENCY_HARMLESS_MAX: Duration = Duration::from_millis(500);

/// Fault rates. Zero everywhere is a fault-free run (latency still varies).
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    /// Most latency of one message.
    pub latency_max: Duration,
    /// Chance, per simulated second, that a partition starts between one client and the server.
    pub partition_rate: f64,
    /// Longest partition; lengths are uniform up to this (the lease timeout is 5 s).
    pub partition_max: Duration,
    /// Chance, per write on a client's connection, that the connection breaks.
    pub break_rate: f64,
    /// Chance, per call, that a client crashes before it (drops its session, files open).
    pub crash_rate: f64,
    /// Chance, per simulated second, that the server crashes; it restarts from its store after
    /// up to `server_down_max`. Every session ends with it (calls in flight are `Unknown`).
    pub server_crash_rate: f64,
    pub server_down_max: Duration,
    /// Share of the server crashes that are power losses, mostly in the middle of a commit (the
    /// rest are process crashes, which keep every write).
    pub power_loss_share: f64,
    /// Chance, per simulated second, that every message between one client and the server is
    /// held (both ways) for a while, then delivered: a long delay.
    pub delay_rate: f64,
    /// Longest such delay; lengths are uniform up to this. Past `LEASE_TRUST_BOUND` by default.
    pub delay_max: Duration,
    /// Chance, per simulated second, that one direction of one client's link fails while the
    /// other flows (an asymmetric partition): its messages dropped, or held until it heals.
    pub oneway_rate: f64,
    /// Longest one-way fault; lengths are uniform up to this.
    pub oneway_max: Duration,
    /// Share of the one-way faults that hold messages (the rest drop them).
    pub oneway_hold_share: f64,
    /// File data lives on the simulated disk too (`disk::Objects`), so power losses hit it as
    /// well as the metadata. Off by default for now: it finds the server making a file's size
    /// durable before its data, and undoing a truncate, which the journaled commit path of the
    /// next issues is to fix; on, every run would stop at those.
    pub data_power_loss: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency_max: Duration::from_millis(20),
            partition_rate: 0.1,
            partition_max: Duration::from_secs(15),
            break_rate: 0.002,
            crash_rate: 0.005,
            server_crash_rate: 0.02,
            server_down_max: Duration::from_secs(2),
            power_loss_share: 0.5,
            data_power_loss: false,
            delay_rate: DELAY_RATE_DEFAULT,
            delay_max: DELAY_MAX_DEFAULT,
            oneway_rate: ONEWAY_RATE_DEFAULT,
            oneway_max: ONEWAY_MAX_DEFAULT,
            oneway_hold_share: 0.5,
        }
    }
}

/// Default chance per simulated second of a long delay on one client's link.
pub const DELAY_RATE_DEFAULT: f64 = 0.05;
/// Default longest delay: past the trust bound, and past the lease timeout (a revocation held
/// that long gets its client evicted).
pub const DELAY_MAX_DEFAULT: Duration = Duration::from_secs(6);
/// Default chance per simulated second of a one-way fault on one client's link.
pub const ONEWAY_RATE_DEFAULT: f64 = 0.05;
/// Default longest one-way fault: past the ping timeout and the client's silence limit, so both
/// ends' watchdogs get to act.
pub const ONEWAY_MAX_DEFAULT: Duration = Duration::from_secs(12);

impl Faults {
    pub fn none() -> Faults {
        Faults {
            latency_max: Duration::from_millis(5),
            partition_rate: 0.0,
            partition_max: Duration::ZERO,
            break_rate: 0.0,
            crash_rate: 0.0,
            server_crash_rate: 0.0,
            server_down_max: Duration::ZERO,
            power_loss_share: 0.0,
            data_power_loss: false,
            delay_rate: 0.0,
            delay_max: Duration::ZERO,
            oneway_rate: 0.0,
            oneway_max: Duration::ZERO,
            oneway_hold_share: 0.0,
        }
    }

    /// The faults of the first simulator, without the long delays and one-way faults: what the
    /// seeds of `tests/sim.rs` that found bugs before those existed ran with (their runs are
    /// unchanged, as the new classes draw from a random stream of their own).
    pub fn without_link_delays() -> Faults {
        Faults { delay_rate: 0.0, oneway_rate: 0.0, ..Faults::default() }
    }

    /// Can no fault of this set cost a client its link or its session? Then a run must lose
    /// none (`ViolationKind::SessionLost`).
    pub fn loses_no_session(&self) -> bool {
        self.partition_rate == 0.0
            && self.break_rate == 0.0
            && self.crash_rate == 0.0
            && self.server_crash_rate == 0.0
            && self.delay_rate == 0.0
            && self.oneway_rate == 0.0
            && self.latency_max <= LATENCY_HARMLESS_MAX
    }
}

/// Bugs planted on purpose, to show the checker finds them (tests only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// The server answers a change before its revocations are acknowledged.
    pub ack_before_revoke: bool,
    /// The library trusts a cached name for a call by id, without the retry by name.
    pub no_stale_retry: bool,
    /// The server acknowledges changes it never makes durable (found only by power losses).
    pub ack_before_durable: bool,
    /// A client's connection drops now and then with no fault behind it, as a regression that
    /// loses links or sessions would: a run without faults must notice (`SessionLost`).
    pub drop_connections: bool,
    /// A mount's client gives leases back without first dropping the kernel's copies
    /// (`ClientConfig::release_through_hook` off): race 13.
    pub release_behind_kernel: bool,
    /// A mount's kernel never gets the revocation hook's notifications
    /// (`MountConfig::fault_skip_kernel_notifications`).
    pub skip_kernel_notifications: bool,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub clients: u32,
    /// Tasks of each client making calls at once through its one `Client` (one session, one
    /// cache): shared lookups, a create waiting for the same client's unlink, a revocation
    /// racing a grant to the same cache.
    pub tasks: u32,
    /// Calls each task of each client makes.
    pub steps: u32,
    /// The first this many clients are mounts: their stats go through a model of the kernel's
    /// caches (`kernel.rs`) fed by the mount's own hooks, and their caches are small
    /// (`MOUNT_CACHE_ENTRIES`), so leases are given back while the kernel holds copies.
    pub mounts: u32,
    /// Most think time of a client between two calls (simulated; uniform up to this), so runs
    /// last long enough for partitions and lease timeouts to matter.
    pub think_max: Duration,
    pub faults: Faults,
    pub bugs: Bugs,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            clients: 3,
            tasks: 1,
            steps: 100,
            mounts: 1,
            think_max: THINK_MAX_DEFAULT,
            faults: Faults::default(),
            bugs: Bugs::default(),
        }
    }
}

/// What one run did and what the checks found.
#[derive(Debug)]
pub struct SimReport {
    pub seed: u64,
    pub history: Vec<Event>,
    /// Everything wrong, each with its kind; empty for a good run.
    pub violations: Vec<Violation>,
    pub stats: SimStats,
}

impl SimReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// A digest of the history: equal for two runs of one configuration.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        for event in &self.history {
            format!("{event:?}").hash(&mut hasher);
        }
        hasher.finish()
    }
}

/// What a run found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: ViolationKind,
    /// In plain words.
    pub text: String,
}

/// The kinds of `Violation`, so a test of a planted bug can say which one it expects: a
/// checker that gave up found nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// The history has no linearization the model agrees with.
    NotLinearizable,
    /// A call did not finish within `CALL_TIME_MAX` of simulated time.
    Stalled,
    /// The checker gave up (too many states): neither a pass nor a find.
    CheckerGaveUp,
    /// A call failed for want of a session (EIO, ENOTCONN) though no fault touched its client's
    /// link since the call began (or since its file handle was opened).
    LostWithoutFault,
    /// A run whose faults cannot cost a session (`Faults::loses_no_session`) lost a link or a
    /// session, or has a call of unknown outcome.
    SessionLost,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub calls: u64,
    pub ok: u64,
    pub errors: u64,
    pub unknown: u64,
    pub partitions: u64,
    pub breaks: u64,
    pub crashes: u64,
    pub server_crashes: u64,
    /// Server crashes that were power losses (in the middle of a commit, or between two when the
    /// server wrote nothing for a while).
    pub power_losses: u64,
    /// Long delays (every message of one client's link held, then delivered).
    pub delays: u64,
    /// One-way faults that dropped the messages of one direction.
    pub oneway_drops: u64,
    /// One-way faults that held the messages of one direction.
    pub oneway_holds: u64,
    /// Sessions the workload opened (one per client, and one more after each client crash or
    /// call of unknown outcome).
    pub sessions: u64,
    /// Connections a client saw close under it (`LinkEvent::Lost`; its own closes and crashes not
    /// counted).
    pub links_lost: u64,
    /// Sessions the server no longer knew when their client came back, which the client replaced
    /// (`LinkEvent::NewSession`).
    pub sessions_replaced: u64,
    /// Stats a mount's model kernel answered from its own caches, without asking the client.
    pub kernel_hits: u64,
    pub simulated: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("creating the server's data directory: {0}")]
    DataDir(std::io::Error),
    #[error("the simulation failed: {0}")]
    Turmoil(String),
}

/// What the hosts of a run share: the history being recorded and the fault counters. All
/// hosts run on the simulation's one thread, so the order of `invoke`/`finish` calls is the
/// real-time order of the calls.
#[derive(Default)]
pub(crate) struct Recorder {
    next: u64,
    pub(crate) history: Vec<Event>,
    pub(crate) violations: Vec<Violation>,
    pub(crate) stats: SimStats,
}

impl Recorder {
    pub(crate) fn tick(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

pub(crate) type Shared = Arc<Mutex<Recorder>>;

/// Timestamps from the simulated clock.
struct SimClock;

impl rustre_proto::clock::Clock for SimClock {
    fn now(&self) -> SystemTime {
        let since_epoch = turmoil::since_epoch().unwrap_or_else(|| Duration::from_secs(EPOCH_SECONDS));
        SystemTime::UNIX_EPOCH + since_epoch
    }
}

/// Tokio numbers tasks from one counter for the whole process, and a runtime that stops (a
/// crashed server) drops its tasks in an order that depends on those numbers (modulo the shards
/// of its task list, 4 for a current-thread runtime). Each run starts at the same offset modulo
/// this period, so a seed run after others in one process (`--seeds A..B`) runs as it does alone
/// (`--seed N`), and a failure found in a range replays.
const TASK_ID_PERIOD: u64 = 64;

/// Spawns empty tasks until the next task number is a multiple of `TASK_ID_PERIOD` (at most
/// that many; runs that spawn tasks on other threads meanwhile, as parallel tests do, defeat it).
fn align_task_ids() {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else { return };
    for _ in 0..TASK_ID_PERIOD {
        let task = runtime.spawn(async {});
        let Ok(id) = task.id().to_string().parse::<u64>() else { return };
        if (id + 1) % TASK_ID_PERIOD == 0 {
            return;
        }
    }
}

/// Runs one simulation and checks it.
pub fn run(config: &SimConfig) -> Result<SimReport, SimError> {
    align_task_ids();
    let scratch = scratch_dir().map_err(SimError::DataDir)?;
    let data: PathBuf = scratch.path().join("data");
    let recorder: Shared = Arc::default();

    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECONDS))
        .simulation_duration(SIMULATED_TIME_MAX)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::ZERO)
        .max_message_latency(config.faults.latency_max)
        .build();

    let bugs = config.bugs;
    let medium = disk::Medium::new(config.seed ^ 0xd15c_0000);
    let disk = medium.clone();
    let data_power_loss = config.faults.data_power_loss;
    sim.host(SERVER_HOST, move || serve(data.clone(), bugs, disk.clone(), data_power_loss));
    let valves: Vec<Arc<workload::Valves>> = (0..config.clients).map(|_| Arc::default()).collect();
    for client in 0..config.clients {
        let plan = workload::Plan {
            client,
            steps: config.steps,
            seed: config.seed,
            faults: config.faults.clone(),
            bugs,
            think_max: config.think_max,
            tasks: config.tasks.max(1),
            mount: client < config.mounts,
            recorder: recorder.clone(),
            valves: valves[client as usize].clone(),
        };
        sim.client(workload::host_name(client), workload::run(plan));
    }

    let mut faults = Rng::new(config.seed ^ 0xfa17_5eed);
    // The long delays and one-way faults draw from a stream of their own, so that turning them
    // off gives a seed the run it had before they existed.
    let mut link_faults = Rng::new(config.seed ^ 0x114e_de1a);
    // The link faults under way: which client's, until when, and what.
    let mut faulted: Vec<(u32, Duration, LinkFault)> = Vec::new();
    let mut server_down_until: Option<Duration> = None;
    // When a power loss was armed: it happens at the latest `POWER_LOSS_WAIT_MAX` later.
    let mut armed_at: Option<Duration> = None;
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => return Err(SimError::Turmoil(error.to_string())),
        }
        let now = sim.elapsed();
        // End the link faults that are over.
        faulted.retain(|&(client, until, fault)| {
            if now < until {
                return true;
            }
            let host = workload::host_name(client);
            match fault {
                LinkFault::Partition => sim.repair(host, SERVER_HOST),
                LinkFault::Delay => sim.release(host, SERVER_HOST),
                LinkFault::Dropped(Direction::Up) => sim.repair_oneway(host, SERVER_HOST),
                LinkFault::Dropped(Direction::Down) => sim.repair_oneway(SERVER_HOST, host),
                LinkFault::Held(_) => valves[client as usize].open(),
            }
            false
        });
        if server_down_until.is_some_and(|until| now >= until) {
            medium.restore_power();
            sim.bounce(SERVER_HOST);
            server_down_until = None;
        }
        // An armed power loss whose writes did not come goes now, between two commits.
        if armed_at.is_some_and(|at| now >= at + POWER_LOSS_WAIT_MAX) {
            medium.cut_power();
        }
        // A power loss armed earlier happened: the machine is dead.
        if server_down_until.is_none() && !medium.powered() {
            armed_at = None;
            sim.crash(SERVER_HOST);
            server_down_until = Some(now + config.faults.server_down_max.mul_f64(faults.unit()));
            let mut recorder = recorder.lock().expect("recorder");
            recorder.stats.server_crashes += 1;
            recorder.stats.power_losses += 1;
        }
        if now.as_millis() % 100 == 50
            && server_down_until.is_none()
            && !medium.armed()
            && faults.chance(config.faults.server_crash_rate / 10.0)
        {
            if faults.chance(config.faults.power_loss_share) {
                // The power goes inside one of the next few writes or syncs of a commit.
                medium.arm();
                armed_at = Some(now);
            } else {
                medium.process_crashed();
                sim.crash(SERVER_HOST);
                server_down_until = Some(now + config.faults.server_down_max.mul_f64(faults.unit()));
                recorder.lock().expect("recorder").stats.server_crashes += 1;
            }
        }
        // Once per simulated 100 ms, maybe start one. (One fault per link at a time: turmoil
        // does not combine its holds with one-way partitions.)
        if now.as_millis() % 100 == 0
            && config.faults.partition_rate > 0.0
            && config.clients > 0
            && faults.chance(config.faults.partition_rate / 10.0)
        {
            let client = faults.below(u64::from(config.clients)) as u32;
            if !faulted.iter().any(|&(cut, _, _)| cut == client) {
                let length = config.faults.partition_max.mul_f64(faults.unit());
                sim.partition(workload::host_name(client), SERVER_HOST);
                faulted.push((client, now + length, LinkFault::Partition));
                recorder.lock().expect("recorder").stats.partitions += 1;
            }
        }
        if now.as_millis() % 100 == 20
            && config.faults.delay_rate > 0.0
            && config.clients > 0
            && link_faults.chance(config.faults.delay_rate / 10.0)
        {
            let client = link_faults.below(u64::from(config.clients)) as u32;
            let length = config.faults.delay_max.mul_f64(link_faults.unit());
            if !faulted.iter().any(|&(cut, _, _)| cut == client) {
                sim.hold(workload::host_name(client), SERVER_HOST);
                faulted.push((client, now + length, LinkFault::Delay));
                recorder.lock().expect("recorder").stats.delays += 1;
            }
        }
        if now.as_millis() % 100 == 70
            && config.faults.oneway_rate > 0.0
            && config.clients > 0
            && link_faults.chance(config.faults.oneway_rate / 10.0)
        {
            let client = link_faults.below(u64::from(config.clients)) as u32;
            let length = config.faults.oneway_max.mul_f64(link_faults.unit());
            let direction = if link_faults.chance(0.5) { Direction::Up } else { Direction::Down };
            let drop = !link_faults.chance(config.faults.oneway_hold_share);
            if !faulted.iter().any(|&(cut, _, _)| cut == client) {
                let host = workload::host_name(client);
                let mut recorder = recorder.lock().expect("recorder");
                let fault = if drop {
                    match direction {
                        Direction::Up => sim.partition_oneway(host, SERVER_HOST),
                        Direction::Down => sim.partition_oneway(SERVER_HOST, host),
                    }
                    recorder.stats.oneway_drops += 1;
                    LinkFault::Dropped(direction)
                } else {
                    valves[client as usize].hold(direction);
                    recorder.stats.oneway_holds += 1;
                    LinkFault::Held(direction)
                };
                faulted.push((client, now + length, fault));
            }
        }
    }

    let mut recorder = std::mem::take(&mut *recorder.lock().expect("recorder"));
    recorder.stats.simulated = sim.elapsed();
    drop(sim);
    let mut violations = std::mem::take(&mut recorder.violations);
    let stats = &recorder.stats;
    if config.faults.loses_no_session() && (stats.links_lost > 0 || stats.sessions_replaced > 0 || stats.unknown > 0) {
        let text = format!(
            "a run whose faults cannot cost a session lost {} links and {} sessions, and has {} calls of unknown outcome",
            stats.links_lost, stats.sessions_replaced, stats.unknown
        );
        violations.push(Violation { kind: ViolationKind::SessionLost, text });
    }
    if let Err(error) = checker::check(&phases::split(&recorder.history)) {
        let kind = match &error {
            checker::CheckError::NotLinearizable(_) => ViolationKind::NotLinearizable,
            checker::CheckError::TooComplex { .. } => ViolationKind::CheckerGaveUp,
        };
        violations.push(Violation { kind, text: error.to_string() });
    }
    Ok(SimReport { seed: config.seed, history: recorder.history, violations, stats: recorder.stats })
}

/// A fault on the link between one client and the server, from its start until it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkFault {
    /// Both ways, messages dropped.
    Partition,
    /// Both ways, messages held, then delivered.
    Delay,
    /// One way, messages dropped (the other way flows).
    Dropped(Direction),
    /// One way, messages held (the other way flows).
    Held(Direction),
}

/// A direction of a client's link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// Where a run keeps its server's store: memory-backed if the machine has it (fsync is then
/// cheap, and a run's speed does not depend on a disk).
fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() { tempfile::Builder::new().prefix("rustre-sim").tempdir_in(shm) } else { tempfile::tempdir() }
}

/// The server host: the real server on the store in `data` (its metadata, and with
/// `data_power_loss` its file data, on the simulated disk `medium`), serving simulated TCP. Its
/// committer is the production group commit, run as a task so the simulated schedule controls
/// it: changes queued while one batch commits go together in the next.
async fn serve(data: PathBuf, bugs: Bugs, medium: Arc<disk::Medium>, data_power_loss: bool) -> turmoil::Result {
    let mut config = rustre_server::ServerConfig::new(&data);
    config.commit_mode = rustre_store::CommitMode::Task;
    config.lease_timeout = LEASE_TIMEOUT;
    // The simulated clients act as root.
    config.root_squash = rustre_server::RootSquash::Off;
    config.clock = Arc::new(SimClock);
    config.fault_ack_before_revoke = bugs.ack_before_revoke;
    config.fault_ack_before_durable = bugs.ack_before_durable;
    let disk = medium.clone();
    config.metadata_backend = Some(Arc::new(move || disk.backend()));
    if data_power_loss {
        config.object_store = Some(medium.objects());
    }
    let server = rustre_server::Server::open(config).await.inspect_err(|error| {
        tracing::error!(%error, "the simulated server could not start");
    })?;
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", SERVER_PORT)).await?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let server = server.clone();
        let stream = disk::Powered { inner: stream, medium: medium.clone() };
        tokio::spawn(async move { server.serve_connection(stream, peer.to_string()).await });
    }
}
