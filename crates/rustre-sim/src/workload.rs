//! A simulated client: random calls over a small namespace (so names collide often), each
//! recorded with its outcome, through sessions that break, crash and come back.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use rustre_client::rustre_proto::{Caller, Errno, FileKind, RenameMode, TimeSet, Timestamp};
use rustre_client::{Client, ClientConfig, Connector, File, LinkEvent, OpenOptions};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::history::{Call, ClientId, Event, HandleId, Kind, Outcome, READ_LEN, Time, Value, XattrMode};
use crate::{Bugs, CALL_TIME_MAX, Direction, Faults, SERVER_HOST, SERVER_PORT, Shared, Violation, ViolationKind};

/// Files one client holds open at most.
const HANDLES_MAX: usize = 2;
/// How long a client waits before it tries to connect again after a failure.
const RECONNECT_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);
/// Connection attempts in a row before the client gives up (the run then reports it).
const CONNECT_ATTEMPTS_MAX: u32 = 200;
/// Chance per write that a connection drops with no fault behind it, with the planted bug
/// `Bugs::drop_connections`.
const PLANTED_DROP_RATE: f64 = 0.002;

/// Directories where names are made, and the names: few, so calls collide.
/// (The root is listed thrice and `/d` twice: calls land there more often.)
const PARENTS: [&str; 7] = ["", "", "", "/d", "/d", "/e", "/d/e"];
/// Directories the workload wants to exist (mkdir picks them more often than other paths).
const DIRECTORIES: [&str; 3] = ["/d", "/e", "/d/e"];
const NAMES: [&str; 4] = ["a", "b", "d", "e"];
const TARGETS: [&str; 5] = ["/d", "/a", "a", "/e/b", "/s"];
/// Permission bits chmod sets: plain ones, none at all, and the special bits (set-user-id,
/// set-group-id with and without group execute, sticky) that a chown clears or a directory
/// hands down.
const MODES: [u32; 8] = [0o644, 0o600, 0o755, 0o000, 0o4755, 0o2755, 0o2644, 0o1777];
/// Owners and groups chown sets (`None` leaves one as it is).
const IDS: [Option<u32>; 4] = [None, Some(0), Some(1), Some(7)];
/// Sizes truncate sets: within and past what writes leave (at most 24 bytes).
const SIZES: [u64; 5] = [0, 1, 4, 12, 30];
/// Times set explicitly: all before the simulated clock's epoch (one before 1970), so that no
/// time the server's clock gives is ever one of them.
const TIMES: [Time; 3] = [
    Time::At { secs: 1_000_000_000, nanos: 0 },
    Time::At { secs: 1_234_567_890, nanos: 123_456_789 },
    Time::At { secs: -86_400, nanos: 5 },
];
/// Few xattr names and short values, so that calls collide.
const XATTR_NAMES: [&str; 2] = ["user.a", "user.b"];
const XATTR_VALUES: [&[u8]; 3] = [b"1", b"two", b""];

pub(crate) fn host_name(client: ClientId) -> String {
    format!("client{client}")
}

/// SplitMix64: small, good enough, and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.unit() < probability
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

pub(crate) struct Plan {
    pub client: ClientId,
    pub steps: u32,
    pub seed: u64,
    pub faults: Faults,
    pub bugs: Bugs,
    pub think_max: std::time::Duration,
    /// Tasks making calls at once through the client's one `Client` (one session, one cache).
    pub tasks: u32,
    /// The host is a mount: stats go through a model of the kernel's caches.
    pub mount: bool,
    pub recorder: Shared,
    /// The one-way holds of this client's connections, which the simulator opens and closes.
    pub valves: Arc<Valves>,
}

struct Open {
    id: HandleId,
    file: File,
    writable: bool,
    /// The client's link events (`LinkEvents::seen`) when the handle was opened: a failure for
    /// want of a session is unknown only if a fault came since.
    opened_at: u64,
}

/// What happened to one client host's links, over all its sessions: every event the link hook
/// reported, counted, so a call can tell whether a fault touched its link while it ran.
#[derive(Default)]
struct LinkEvents {
    seen: AtomicU64,
}

impl LinkEvents {
    fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }
}

/// What the tasks of one client host share: the session (one `Client`, so one cache) and what
/// happened to its links.
struct Host {
    /// The session in use and its generation (one more for each new session), or none until
    /// the next call makes one.
    session: std::sync::Mutex<Option<(u64, Client)>>,
    /// Held while a task makes a new session, so the others wait for it rather than make theirs.
    connecting: tokio::sync::Mutex<()>,
    /// Sessions made so far (the next one's generation).
    sessions: AtomicU64,
    links: Arc<LinkEvents>,
    /// Tasks still making calls; the last one to finish ends the session.
    running: AtomicU64,
    /// A mount's kernel, made with each session (a new session is a new mount: the old mount's
    /// process crashed or gave up, and its kernel state went with it).
    kernel: std::sync::Mutex<Option<(u64, Arc<crate::kernel::ModelKernel>)>>,
}

impl Host {
    fn session(&self) -> std::sync::MutexGuard<'_, Option<(u64, Client)>> {
        self.session.lock().expect("session lock")
    }

    /// Drops the session of `generation` (if it is still the one in use): the next call makes
    /// a new one.
    fn retire(&self, generation: u64) {
        let mut session = self.session();
        if session.as_ref().is_some_and(|(current, _)| *current == generation) {
            *session = None;
        }
    }
}

/// The client host's software: `Plan::tasks` tasks making calls through one shared `Client`.
pub(crate) async fn run(plan: Plan) -> turmoil::Result {
    let plan = Arc::new(plan);
    let host = Arc::new(Host {
        session: std::sync::Mutex::new(None),
        connecting: tokio::sync::Mutex::new(()),
        sessions: AtomicU64::new(0),
        links: Arc::default(),
        running: AtomicU64::new(u64::from(plan.tasks)),
        kernel: std::sync::Mutex::new(None),
    });
    // The host's tasks run on turmoil's local task set, as the host's own software does.
    let others: Vec<tokio::task::JoinHandle<turmoil::Result>> =
        (1..plan.tasks).map(|task| tokio::task::spawn_local(run_task(plan.clone(), host.clone(), task))).collect();
    let mut result = run_task(plan.clone(), host.clone(), 0).await;
    for other in others {
        let joined = match other.await {
            Ok(done) => done,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(error.to_string().into()),
        };
        if result.is_ok() {
            result = joined;
        }
    }
    result
}

/// The task seed: task 0 draws as a client with one task always did, so its runs are unchanged.
fn task_rng(plan: &Plan, task: u32) -> Rng {
    let seed = plan.seed ^ (u64::from(plan.client) + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
    Rng::new(seed ^ u64::from(task).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Leases a mount's client caches: few, so that the workload's names overflow it and leases are
/// given back while the model kernel holds copies under them (race 13).
const MOUNT_CACHE_ENTRIES: usize = 8;

/// Bits of a handle id below the task's number (the handle's sequence number within its task).
const HANDLE_TASK_SHIFT: u32 = 24;

/// One task of a client host: `Plan::steps` calls, each recorded with its outcome.
async fn run_task(plan: Arc<Plan>, host: Arc<Host>, task: u32) -> turmoil::Result {
    let mut rng = task_rng(&plan, task);
    let mut handles: Vec<Open> = Vec::new();
    // The session the handles were opened in.
    let mut handles_of = u64::MAX;
    let mut next_handle = 0;
    let links = host.links.clone();
    for step in 0..plan.steps {
        // Handles of a session no longer in use go before a new one is made (dropped, each
        // closes in the background on its old session).
        if host.session().as_ref().map(|(generation, _)| *generation) != Some(handles_of) {
            handles.clear();
        }
        let (mut generation, mut client) = session(&plan, &host, &mut rng).await?;
        if generation != handles_of {
            handles.clear();
            handles_of = generation;
        }
        let think = plan.think_max.as_millis() as u64;
        tokio::time::sleep(std::time::Duration::from_millis(rng.below(think + 1))).await;
        // Another task may have crashed or retired the session meanwhile: the call goes on the
        // session in use now (a call on a session crashed before it began would fail with no
        // fault of its own).
        if host.session().as_ref().map(|(current, _)| *current) != Some(generation) {
            (generation, client) = session(&plan, &host, &mut rng).await?;
            if generation != handles_of {
                handles.clear();
                handles_of = generation;
            }
        }
        if rng.chance(plan.faults.crash_rate) {
            // A crash: the session goes with its files open, and nothing is closed politely.
            for open in handles.drain(..) {
                std::mem::forget(open.file);
            }
            // The workload's own doing: not a link the client lost. But a fault for the calls
            // other tasks have in flight on it.
            client.set_link_hook(None);
            links.seen.fetch_add(1, Ordering::Relaxed);
            client.crash();
            host.retire(generation);
            plan.recorder.lock().expect("recorder").stats.crashes += 1;
            continue;
        }
        next_handle += 1;
        let handle = (u64::from(plan.client) << 32) | (u64::from(task) << HANDLE_TASK_SHIFT) | next_handle;
        let call = choose(&mut rng, &handles, handle);
        let invoked = plan.recorder.lock().expect("recorder").tick();
        let kernel = host.kernel.lock().expect("kernel lock").clone();
        let kernel = kernel.filter(|(made, _)| *made == generation).map(|(_, kernel)| kernel);
        let through = Through { client: &client, kernel: kernel.as_deref() };
        let hits = kernel.as_ref().map_or(0, |kernel| kernel.hits());
        let performed = tokio::time::timeout(CALL_TIME_MAX, perform(through, &links, &call, &mut handles)).await;
        if let Some(kernel) = &kernel {
            plan.recorder.lock().expect("recorder").stats.kernel_hits += kernel.hits() - hits;
        }
        let who = if plan.tasks > 1 {
            format!("client {} task {task}", plan.client)
        } else {
            format!("client {}", plan.client)
        };
        let outcome = match performed {
            Ok(Performed::Known(outcome)) => outcome,
            Ok(Performed::LostWithoutFault(errno)) => {
                let mut recorder = plan.recorder.lock().expect("recorder");
                let text = format!(
                    "{who} step {step}: {call} failed with {} though no fault touched its link",
                    Errno(errno).name()
                );
                recorder.violations.push(Violation { kind: ViolationKind::LostWithoutFault, text });
                Outcome::Err(errno)
            }
            Err(_) => {
                let mut recorder = plan.recorder.lock().expect("recorder");
                let text =
                    format!("{who} step {step}: {call} did not finish within {CALL_TIME_MAX:?} of simulated time");
                recorder.violations.push(Violation { kind: ViolationKind::Stalled, text });
                Outcome::Unknown
            }
        };
        if outcome == Outcome::Unknown {
            host.retire(generation); // a new session for what follows
        } else {
            // The cache's own invariants, after every call (panics, with the seed, if broken).
            client.check_cache_invariants();
        }
        let mut recorder = plan.recorder.lock().expect("recorder");
        let returned = if outcome == Outcome::Unknown { u64::MAX } else { recorder.tick() };
        recorder.stats.calls += 1;
        match &outcome {
            Outcome::Ok(_) => recorder.stats.ok += 1,
            Outcome::Err(_) => recorder.stats.errors += 1,
            Outcome::Unknown => recorder.stats.unknown += 1,
        }
        recorder.history.push(Event { client: plan.client, call, outcome, invoked, returned });
    }
    if host.running.fetch_sub(1, Ordering::Relaxed) == 1
        && let Some((_, client)) = host.session().take()
    {
        client.set_link_hook(None);
        client.close();
    }
    Ok(())
}

/// The host's session, made (through `rng`'s streams) if there is none.
async fn session(plan: &Plan, host: &Host, rng: &mut Rng) -> turmoil::Result<(u64, Client)> {
    if let Some(session) = host.session().clone() {
        return Ok(session);
    }
    let _connecting = host.connecting.lock().await;
    if let Some(session) = host.session().clone() {
        return Ok(session); // another task made it meanwhile
    }
    let generation = host.sessions.fetch_add(1, Ordering::Relaxed);
    let client = connect(plan, rng, generation).await?;
    let counting = link_hook(&host.links, &plan.recorder);
    if plan.mount {
        let (kernel, mirror) = crate::kernel::ModelKernel::mount(&client, plan.bugs.skip_kernel_notifications);
        client.set_link_hook(Some(crate::kernel::both(mirror, counting)));
        *host.kernel.lock().expect("kernel lock") = Some((generation, Arc::new(kernel)));
    } else {
        client.set_link_hook(Some(counting));
    }
    plan.recorder.lock().expect("recorder").stats.sessions += 1;
    *host.session() = Some((generation, client.clone()));
    Ok((generation, client))
}

/// Counts what happens to a client's link, in `links` and in the run's figures.
fn link_hook(links: &Arc<LinkEvents>, recorder: &Shared) -> rustre_client::LinkHook {
    let (links, recorder) = (links.clone(), recorder.clone());
    Arc::new(move |event: &LinkEvent| {
        // Only what happens to the connection and the session (not, say, news of a suspended
        // machine, which costs no session).
        if !matches!(event, LinkEvent::Lost | LinkEvent::Resumed { .. } | LinkEvent::NewSession) {
            return;
        }
        links.seen.fetch_add(1, Ordering::Relaxed);
        let mut recorder = recorder.lock().expect("recorder");
        if *event == LinkEvent::Lost {
            recorder.stats.links_lost += 1;
        }
        if *event == LinkEvent::NewSession {
            recorder.stats.sessions_replaced += 1;
        }
    })
}

async fn connect(plan: &Plan, rng: &mut Rng, sessions: u64) -> turmoil::Result<Client> {
    let config = ClientConfig {
        client_name: format!("{} session {sessions}", host_name(plan.client)),
        retry_stale_by_name: !plan.bugs.no_stale_retry,
        // A mount's cache is small, so it gives leases back while its kernel holds copies.
        cache_entries_max: if plan.mount { MOUNT_CACHE_ENTRIES } else { rustre_client::CACHE_ENTRIES_MAX },
        release_through_hook: !(plan.mount && plan.bugs.release_behind_kernel),
        // No suspensions unless a fault declares one (and no reading of the machine's clocks).
        suspend_clock: Arc::new(rustre_client::ManualSuspendClock::default()),
        // A call gives up on a lost server well before the run calls it hung.
        reconnect_wait: CALL_TIME_MAX / 2,
        // The simulated clients act as root (the server squashes no one), whoever runs the
        // simulation: the model's permission rules are the superuser's.
        caller: Caller::ROOT,
        ..ClientConfig::default()
    };
    // The session reconnects by itself (resume, reclaim, resends) through streams as faulty as
    // the first; their randomness comes from this client's seed, so a run replays exactly.
    let streams = std::sync::Arc::new(std::sync::Mutex::new(Rng::new(rng.next_u64())));
    let (break_rate, recorder) = (plan.faults.break_rate, plan.recorder.clone());
    let drop_rate = if plan.bugs.drop_connections { PLANTED_DROP_RATE } else { 0.0 };
    let valves = plan.valves.clone();
    let faulty = move |stream: turmoil::net::TcpStream, seed: u64| FaultyStream {
        inner: stream,
        rng: Rng::new(seed),
        break_rate,
        drop_rate,
        broken: false,
        recorder: recorder.clone(),
        valves: valves.clone(),
    };
    let make = faulty.clone();
    let seeds = streams.clone();
    let connector: Connector = std::sync::Arc::new(move || {
        let make = make.clone();
        let seed = seeds.lock().expect("stream seeds").next_u64();
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect((SERVER_HOST, SERVER_PORT)).await?;
            Ok(Box::new(make(stream, seed)) as Box<dyn rustre_client::Stream>)
        })
    });
    for _ in 0..CONNECT_ATTEMPTS_MAX {
        let attempt = async {
            let stream = turmoil::net::TcpStream::connect((SERVER_HOST, SERVER_PORT)).await?;
            let seed = streams.lock().expect("stream seeds").next_u64();
            Ok::<_, Box<dyn std::error::Error>>(
                Client::handshake_with(
                    faulty(stream, seed),
                    SERVER_HOST.to_string(),
                    config.clone(),
                    connector.clone(),
                )
                .await?,
            )
        };
        match tokio::time::timeout(CALL_TIME_MAX, attempt).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(_)) | Err(_) => tokio::time::sleep(RECONNECT_PAUSE).await,
        }
    }
    Err(format!("{} could not connect {CONNECT_ATTEMPTS_MAX} times in a row", host_name(plan.client)).into())
}

fn path(rng: &mut Rng) -> String {
    format!("{}/{}", rng.pick(&PARENTS), rng.pick(&NAMES))
}

/// A path for an xattr call: half the time a directory the workload wants to exist, which lives
/// longer than most names, so that xattrs are read back before their node goes.
fn xattr_path(rng: &mut Rng) -> String {
    if rng.chance(0.5) { rng.pick(&DIRECTORIES).to_string() } else { path(rng) }
}

/// A time for `SetTimes`: mostly explicit, sometimes "now", sometimes left as it is.
fn set_time(rng: &mut Rng) -> Option<Time> {
    match rng.below(6) {
        0 => None,
        1 => Some(Time::Clock),
        _ => Some(TIMES[rng.below(TIMES.len() as u64) as usize]),
    }
}

/// The next call: mostly namespace calls on colliding names, some on the files held open, some
/// on attributes and xattrs.
fn choose(rng: &mut Rng, handles: &[Open], handle: HandleId) -> Call {
    let held = !handles.is_empty();
    loop {
        let call = match rng.below(120) {
            0..=14 => {
                let write = rng.chance(0.7);
                let create = write && rng.chance(0.8);
                Call::Open {
                    path: path(rng),
                    write,
                    create,
                    exclusive: create && rng.chance(0.3),
                    truncate: write && rng.chance(0.3),
                    handle,
                }
            }
            15..=24 if held => {
                let open = &handles[rng.below(handles.len() as u64) as usize];
                if open.writable {
                    let length = 1 + rng.below(24) as usize;
                    let stamp = format!("h{}-{}:", open.id, rng.below(1000));
                    let data = stamp.bytes().cycle().take(length.max(stamp.len())).collect();
                    Call::Write { handle: open.id, data }
                } else {
                    Call::Read { handle: open.id }
                }
            }
            25..=29 if held => Call::Read { handle: handles[rng.below(handles.len() as u64) as usize].id },
            30..=37 if held => Call::Close { handle: handles[rng.below(handles.len() as u64) as usize].id },
            38..=47 => Call::Unlink { path: path(rng) },
            48..=57 => Call::Rename { from: path(rng), to: path(rng), noreplace: rng.chance(0.25) },
            58..=66 if rng.chance(0.6) => Call::Mkdir { path: rng.pick(&DIRECTORIES).to_string() },
            58..=66 => Call::Mkdir { path: path(rng) },
            67..=71 => Call::Rmdir { path: path(rng) },
            72..=75 => Call::Link { from: path(rng), to: path(rng) },
            76..=78 => Call::Symlink { target: rng.pick(&TARGETS).to_string(), path: path(rng) },
            79..=91 => Call::Stat { path: path(rng) },
            92..=99 => Call::ReadDir { path: rng.pick(&["/", "/d", "/e", "/d/e"]).to_string() },
            100..=103 => Call::Chmod { path: path(rng), mode: MODES[rng.below(MODES.len() as u64) as usize] },
            104..=105 => {
                let uid = IDS[rng.below(IDS.len() as u64) as usize];
                Call::Chown { path: path(rng), uid, gid: IDS[rng.below(IDS.len() as u64) as usize] }
            }
            106..=108 => Call::Truncate { path: path(rng), size: SIZES[rng.below(SIZES.len() as u64) as usize] },
            109..=110 => Call::SetTimes { path: path(rng), atime: set_time(rng), mtime: set_time(rng) },
            111..=112 => Call::Readlink { path: path(rng) },
            113..=115 => {
                let mode = [XattrMode::Either, XattrMode::Create, XattrMode::Replace][rng.below(3) as usize];
                Call::SetXattr {
                    path: xattr_path(rng),
                    name: rng.pick(&XATTR_NAMES).to_string(),
                    value: XATTR_VALUES[rng.below(XATTR_VALUES.len() as u64) as usize].to_vec(),
                    mode,
                }
            }
            116..=117 => Call::GetXattr { path: xattr_path(rng), name: rng.pick(&XATTR_NAMES).to_string() },
            118 => Call::ListXattr { path: xattr_path(rng) },
            119 => Call::RemoveXattr { path: xattr_path(rng), name: rng.pick(&XATTR_NAMES).to_string() },
            _ => continue, // a call on a handle, without one
        };
        if matches!(call, Call::Open { .. }) && handles.len() >= HANDLES_MAX {
            continue;
        }
        return call;
    }
}

fn kind(kind: FileKind) -> Kind {
    match kind {
        FileKind::Directory => Kind::Directory,
        FileKind::Symlink => Kind::Symlink,
        _ => Kind::File,
    }
}

/// A time as the model predicts it: one before the simulated clock's epoch is one the workload
/// set (`TIMES`), kept exactly; any other came from the server's clock.
fn time(time: Timestamp) -> Time {
    if time.secs >= crate::EPOCH_SECONDS as i64 { Time::Clock } else { Time::At { secs: time.secs, nanos: time.nanos } }
}

fn time_set(time: Time) -> TimeSet {
    match time {
        Time::Clock => TimeSet::Now,
        Time::At { secs, nanos } => TimeSet::At(Timestamp { secs, nanos }),
    }
}

fn attr(attr: &rustre_client::rustre_proto::Attr) -> Value {
    Value::Attr {
        kind: kind(attr.kind),
        size: attr.size,
        nlink: attr.nlink,
        mode: attr.mode(),
        uid: attr.uid,
        gid: attr.gid,
        atime: time(attr.atime),
        mtime: time(attr.mtime),
        ctime: time(attr.ctime),
    }
}

/// Names as the history records them: sorted.
fn sorted(names: impl IntoIterator<Item = Vec<u8>>) -> Value {
    let mut names: Vec<String> = names.into_iter().map(|name| String::from_utf8_lossy(&name).into_owned()).collect();
    names.sort();
    Value::Names(names)
}

/// What a call answered, as the history records it.
enum Performed {
    Known(Outcome),
    /// It failed for want of a session (this errno) though no fault touched the link: a bug.
    LostWithoutFault(i32),
}

/// Makes the call and says what it answered. A call that failed for want of a session (ENOTCONN:
/// it gave up on the server; EIO: the server forgot the session while a change was in flight, or
/// the call's file handle was lost with an old session) is `Unknown` if a fault touched the
/// link since the call began, or since its handle was opened: the link was lost, resumed or
/// replaced, or it is down now. Otherwise nothing excuses the failure.
/// What a call goes through: the client, and for a mount its model kernel in front of it.
#[derive(Clone, Copy)]
struct Through<'a> {
    client: &'a Client,
    kernel: Option<&'a crate::kernel::ModelKernel>,
}

async fn perform(through: Through<'_>, links: &LinkEvents, call: &Call, handles: &mut Vec<Open>) -> Performed {
    let client = through.client;
    let handle = match call {
        Call::Write { handle, .. } | Call::Read { handle } | Call::Close { handle } => Some(*handle),
        _ => None,
    };
    let opened_at = handle.and_then(|id| handles.iter().find(|open| open.id == id)).map(|open| open.opened_at);
    let since = opened_at.unwrap_or(links.seen()).min(links.seen());
    let outcome = perform_call(through, links, call, handles).await;
    match outcome {
        Outcome::Err(errno) if errno == Errno::EIO.0 || errno == Errno::ENOTCONN.0 => {
            if links.seen() != since || client.outage().is_some() {
                Performed::Known(Outcome::Unknown)
            } else {
                Performed::LostWithoutFault(errno)
            }
        }
        outcome => Performed::Known(outcome),
    }
}

async fn perform_call(through: Through<'_>, links: &LinkEvents, call: &Call, handles: &mut Vec<Open>) -> Outcome {
    let Some(kernel) = through.kernel else { return perform_library_call(through, links, call, handles).await };
    // A mount: the kernel mirrors its own changes (`ModelKernel::own_change`) once answered.
    let _renaming = matches!(call, Call::Rename { .. }).then(|| kernel.renaming());
    let outcome = perform_library_call(through, links, call, handles).await;
    let last = |path: &str| path.rsplit('/').next().unwrap_or("").to_string();
    let touched: Vec<String> = match call {
        Call::Unlink { path } | Call::Rmdir { path } | Call::Mkdir { path } | Call::Symlink { path, .. } => {
            vec![last(path)]
        }
        Call::Open { path, create: true, .. } => vec![last(path)],
        Call::Rename { from, to, .. } => vec![last(from), last(to)],
        Call::Link { to, .. } => vec![last(to)],
        _ => Vec::new(),
    };
    if !touched.is_empty() {
        kernel.own_change(&touched.iter().map(String::as_str).collect::<Vec<_>>());
    }
    outcome
}

async fn perform_library_call(
    through: Through<'_>,
    links: &LinkEvents,
    call: &Call,
    handles: &mut Vec<Open>,
) -> Outcome {
    let client = through.client;
    let result: rustre_client::Result<Value> = match call {
        Call::Open { path, write, create, exclusive, truncate, handle } => {
            let mut options = OpenOptions::new();
            options.read(true).write(*write).truncate(*truncate);
            if *exclusive {
                options.create_new(true);
            } else {
                options.create(*create);
            }
            let opened_at = links.seen();
            client.open(path, &options).await.map(|file| {
                let value = Value::Opened { created: file.created(), size: file.cached_attr().size };
                handles.push(Open { id: *handle, file, writable: *write, opened_at });
                value
            })
        }
        Call::Write { handle, data } => {
            // Written and synced: acknowledged data must survive a server crash.
            let open = handles.iter_mut().find(|open| open.id == *handle).expect("a held handle");
            match open.file.write_at(0, data).await {
                Ok(_) => open.file.fsync().await.map(|()| Value::Done),
                Err(error) => Err(error),
            }
        }
        Call::Read { handle } => {
            let open = handles.iter().find(|open| open.id == *handle).expect("a held handle");
            open.file.read_at(0, READ_LEN).await.map(|data| Value::Data(data.to_vec()))
        }
        Call::Close { handle } => {
            let index = handles.iter().position(|open| open.id == *handle).expect("a held handle");
            handles.remove(index).file.close().await.map(|()| Value::Done)
        }
        Call::Unlink { path } => client.remove_file(path).await.map(|()| Value::Done),
        Call::Rename { from, to, noreplace } => {
            let mode = if *noreplace { RenameMode::NoReplace } else { RenameMode::Replace };
            client.rename_with(from, to, mode).await.map(|()| Value::Done)
        }
        Call::Mkdir { path } => client.mkdir(path, 0o755).await.map(|made| attr(&made)),
        Call::Rmdir { path } => client.remove_dir(path).await.map(|()| Value::Done),
        Call::Link { from, to } => client.hard_link(from, to).await.map(|made| attr(&made)),
        Call::Symlink { target, path } => client.symlink(target, path).await.map(|made| attr(&made)),
        Call::Stat { path } => match through.kernel {
            Some(kernel) => kernel.stat(client, path).await.map(|found| attr(&found)),
            None => client.stat(path).await.map(|found| attr(&found)),
        },
        Call::Resolve { .. } | Call::Hop { .. } | Call::Follow { .. } | Call::Act { .. } => {
            unreachable!("the workload makes only client calls")
        }
        Call::ReadDir { path } => {
            client.read_dir(path).await.map(|entries| sorted(entries.into_iter().map(|entry| entry.name)))
        }
        Call::Chmod { path, mode } => client.set_permissions(path, *mode).await.map(|changed| attr(&changed)),
        Call::Chown { path, uid, gid } => client.set_owner(path, *uid, *gid).await.map(|changed| attr(&changed)),
        Call::Truncate { path, size } => client.truncate(path, *size).await.map(|changed| attr(&changed)),
        Call::SetTimes { path, atime, mtime } => {
            client.set_times(path, atime.map(time_set), mtime.map(time_set)).await.map(|changed| attr(&changed))
        }
        Call::Readlink { path } => client.read_link(path).await.map(Value::Data),
        Call::SetXattr { path, name, value, mode } => {
            client.set_xattr(path, name.as_bytes(), value, *mode).await.map(|()| Value::Done)
        }
        Call::GetXattr { path, name } => client.get_xattr(path, name.as_bytes()).await.map(Value::Data),
        Call::ListXattr { path } => client.list_xattr(path).await.map(sorted),
        Call::RemoveXattr { path, name } => client.remove_xattr(path, name.as_bytes()).await.map(|()| Value::Done),
    };
    match result {
        Ok(value) => Outcome::Ok(value),
        Err(error) => Outcome::Err(error.errno.0),
    }
}

/// The one-way holds of one client's connections: while a direction is held, what the client
/// writes (up) or what it would read (down) waits, and the other direction flows. Shared by every
/// connection of the client host, so a connection made during a hold is held too.
#[derive(Default)]
pub(crate) struct Valves {
    state: std::sync::Mutex<ValveState>,
}

#[derive(Default)]
struct ValveState {
    up_held: bool,
    down_held: bool,
    /// The streams waiting for a hold to end.
    waiting: Vec<Waker>,
}

impl Valves {
    fn state(&self) -> std::sync::MutexGuard<'_, ValveState> {
        self.state.lock().expect("valves lock")
    }

    /// Holds one direction until `open`.
    pub(crate) fn hold(&self, direction: Direction) {
        let mut state = self.state();
        match direction {
            Direction::Up => state.up_held = true,
            Direction::Down => state.down_held = true,
        }
    }

    /// Ends every hold, and wakes what waited.
    pub(crate) fn open(&self) {
        let mut state = self.state();
        state.up_held = false;
        state.down_held = false;
        for waker in state.waiting.drain(..) {
            waker.wake();
        }
    }

    /// Ready when `direction` flows; otherwise `cx` is woken when it does.
    fn poll_flowing(&self, direction: Direction, cx: &Context<'_>) -> Poll<()> {
        let mut state = self.state();
        let held = match direction {
            Direction::Up => state.up_held,
            Direction::Down => state.down_held,
        };
        if !held {
            return Poll::Ready(());
        }
        if !state.waiting.iter().any(|waiting| waiting.will_wake(cx.waker())) {
            state.waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Our own fault layer under a client's connection: on a random write the connection breaks
/// (every later read and write fails), as a reset would; and one direction waits while the
/// simulator holds it (`Valves`).
struct FaultyStream {
    inner: turmoil::net::TcpStream,
    rng: Rng,
    break_rate: f64,
    /// Chance per write of a break that is no fault of the simulator's (`Bugs::drop_connections`):
    /// not counted, and no excuse for a lost session.
    drop_rate: f64,
    broken: bool,
    recorder: Shared,
    valves: Arc<Valves>,
}

impl FaultyStream {
    fn reset() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection broken by the simulator")
    }
}

impl AsyncRead for FaultyStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.broken {
            return Poll::Ready(Err(FaultyStream::reset()));
        }
        if self.valves.poll_flowing(Direction::Down, cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultyStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if !self.broken {
            if self.valves.poll_flowing(Direction::Up, cx).is_pending() {
                return Poll::Pending;
            }
            let rate = self.break_rate;
            if self.rng.chance(rate) {
                self.broken = true;
                self.recorder.lock().expect("recorder").stats.breaks += 1;
            }
            let drop_rate = self.drop_rate;
            if !self.broken && self.rng.chance(drop_rate) {
                self.broken = true;
            }
        }
        if self.broken {
            return Poll::Ready(Err(FaultyStream::reset()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.broken {
            return Poll::Ready(Err(FaultyStream::reset()));
        }
        if self.valves.poll_flowing(Direction::Up, cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
