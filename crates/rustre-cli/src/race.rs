//! `rustre race`: the seed's reproducer as a tool. Creators, exclusive creators, unlinkers,
//! renamers-over and readers race on a few names for a bounded time, and every failure is sorted
//! into the errnos the contract allows (`semantics.md`) and the violations.
//!
//! Two targets: rustre through N independent client sessions of the library (async tasks), or
//! any file system through `--dirs` (std threads making real system calls), for example one
//! directory seen through two mounts. Races on names only mean something if every role sees the
//! same directory, so `--dirs` checks that the directories show the same entries.
//!
//! Roles and what each may legitimately get (anything else is a violation; ESTALE and EIO are
//! never expected):
//! - creator: `open(O_CREAT|O_RDWR)`, write, close: nothing (semantics.md promises 1 and 5);
//! - exclusive creator: `open(O_CREAT|O_EXCL|O_RDWR)` of a fresh name per round, raced by every
//!   exclusive creator of every client: EEXIST for the losers, and exactly one winner per round;
//!   the winner closes and unlinks it once the round is over: nothing;
//! - unlinker: unlink: ENOENT (someone else removed it first);
//! - renamer: create, write and close a private temporary file, rename it over a name: nothing
//!   (the temporary name is private, so even ENOENT on the rename is a violation);
//! - reader: `open(O_RDONLY)` and close, stat: ENOENT (the name is absent right now).
//!
//! On `--dirs` there is no close op: std gives no way to see an error of close(2).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rustre_client::rustre_proto::Errno;
use rustre_client::{Client, ClientConfig, OpenOptions};
use serde::Serialize;

/// How long past `--seconds` a run may take before it is stopped and reported as hung.
const HARD_CAP_GRACE: Duration = Duration::from_secs(30);
/// How long the final clean-up (removing the names) may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Violation messages kept per role and op, to say what failed.
const SAMPLES_MAX: usize = 3;
/// Bad exclusive rounds listed in the report (all are counted).
const BAD_ROUNDS_LISTED_MAX: usize = 10;
/// What creators and renamers write.
const PAYLOAD: &[u8] = b"rustre race: written by a creator or a renamer, 64 bytes long....\n";

#[derive(Args, Debug)]
pub struct RaceArgs {
    /// Client sessions of the library, each with its own connection to the server of
    /// `--server`; role threads are spread over them round-robin.
    #[arg(long, default_value_t = 2, value_name = "N", conflicts_with = "dirs",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    clients: u32,
    /// The directory inside rustre to race in (created if missing).
    #[arg(long, default_value = "/race", value_name = "PATH", conflicts_with = "dirs")]
    dir: PathBuf,
    /// Race in these local directories instead of rustre, with real system calls; they must all
    /// show one directory (the same one through several mounts, or the same path repeated).
    /// Role threads are spread over them round-robin.
    #[arg(long, num_args = 1.., value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// How many names (`race-0` ...) the creators, unlinkers, renamers and readers share.
    #[arg(long, default_value_t = 8, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    names: u32,
    /// Threads per role, unless a role's own option says otherwise.
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = threads)]
    threads: u32,
    /// Creator threads (`open(O_CREAT|O_RDWR)`, write, close).
    #[arg(long, value_name = "N", value_parser = threads)]
    creators: Option<u32>,
    /// Exclusive creator threads (`O_CREAT|O_EXCL`, one winner per round).
    #[arg(long, value_name = "N", value_parser = threads)]
    exclusive: Option<u32>,
    /// Unlinker threads.
    #[arg(long, value_name = "N", value_parser = threads)]
    unlinkers: Option<u32>,
    /// Renamer threads (create a temporary file, rename it over a name).
    #[arg(long, value_name = "N", value_parser = threads)]
    renamers: Option<u32>,
    /// Reader threads (`open(O_RDONLY)`, close, stat).
    #[arg(long, value_name = "N", value_parser = threads)]
    readers: Option<u32>,
    /// How long the race runs; every thread stops by itself then.
    #[arg(long, default_value_t = 10, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    seconds: u64,
    /// A call that takes longer than this counts as a violation (a stall: a hang or a
    /// deadlock in the file system under test).
    #[arg(long, default_value_t = 10, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=3_600))]
    stall_seconds: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Control runs only: the library gives up its retry by name after a stale inode id, so the
    /// ESTALE of a faulty server (`rustre server --fault-estale-every N`) reaches the race.
    #[arg(long, hide = true, conflicts_with = "dirs")]
    no_stale_retry: bool,
}

fn threads(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(count) if count <= 256 => Ok(count),
        Ok(_) => Err("at most 256 threads per role".into()),
        Err(error) => Err(error.to_string()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Creator,
    Exclusive,
    Unlinker,
    Renamer,
    Reader,
}

impl Role {
    const ALL: [Role; 5] = [Role::Creator, Role::Exclusive, Role::Unlinker, Role::Renamer, Role::Reader];

    fn name(self) -> &'static str {
        match self {
            Role::Creator => "creator",
            Role::Exclusive => "exclusive",
            Role::Unlinker => "unlinker",
            Role::Renamer => "renamer",
            Role::Reader => "reader",
        }
    }

    /// The ops this role makes, in the order it makes them.
    fn ops(self, closes: bool) -> Vec<Op> {
        let all: &[Op] = match self {
            Role::Creator => &[Op::Open, Op::Write, Op::Close],
            Role::Exclusive => &[Op::Open, Op::Close, Op::Unlink],
            Role::Unlinker => &[Op::Unlink],
            Role::Renamer => &[Op::Create, Op::Write, Op::Close, Op::Rename],
            Role::Reader => &[Op::Open, Op::Close, Op::Stat],
        };
        all.iter().copied().filter(|op| closes || *op != Op::Close).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Open,
    /// The renamer's create of its temporary file.
    Create,
    Write,
    Close,
    Unlink,
    Rename,
    Stat,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Open => "open",
            Op::Create => "create",
            Op::Write => "write",
            Op::Close => "close",
            Op::Unlink => "unlink",
            Op::Rename => "rename",
            Op::Stat => "stat",
        }
    }
}

/// Is `errno` an answer the contract allows for this role's op?
fn expected(role: Role, op: Op, errno: Option<i32>) -> bool {
    let Some(errno) = errno else { return false };
    matches!(
        (role, op, Errno(errno)),
        (Role::Exclusive, Op::Open, Errno::EEXIST)
            | (Role::Unlinker, Op::Unlink, Errno::ENOENT)
            | (Role::Reader, Op::Open | Op::Stat, Errno::ENOENT)
    )
}

fn errno_label(errno: Option<i32>) -> String {
    match errno {
        Some(number) => match Errno(number).name() {
            "E?" => format!("errno {number}"),
            name => name.to_string(),
        },
        None => "no errno".to_string(),
    }
}

/// A failed op: its errno (none for an I/O error that carries none) and what the error said.
struct Failure {
    errno: Option<i32>,
    message: String,
}

impl From<rustre_client::Error> for Failure {
    fn from(error: rustre_client::Error) -> Self {
        Failure { errno: Some(error.errno.0), message: error.message }
    }
}

/// A std error, with the path it was about (std's messages do not say).
fn io_failure(error: std::io::Error, what: &str, path: &Path) -> Failure {
    Failure { errno: error.raw_os_error(), message: format!("{what} {}: {error}", path.display()) }
}

#[derive(Clone, Debug, Default)]
struct OpStats {
    count: u64,
    ok: u64,
    expected: BTreeMap<String, u64>,
    violations: BTreeMap<String, u64>,
    samples: Vec<String>,
}

/// What one thread saw. Each thread has its own (its lock is uncontended), readable by the main
/// thread even if the thread never finishes.
#[derive(Default)]
struct Tally {
    ops: BTreeMap<(Role, Op), OpStats>,
    /// When this thread last finished a call, and the longest time between two of its calls
    /// finishing: a bound from above on its slowest call (a thread does nothing else between
    /// calls), measured without timing each call.
    last: Option<Instant>,
    slowest: Duration,
}

impl Tally {
    fn record<T>(&mut self, role: Role, op: Op, result: Result<T, Failure>) -> Option<T> {
        let now = Instant::now();
        if let Some(last) = self.last {
            self.slowest = self.slowest.max(now - last);
        }
        self.last = Some(now);
        let stats = self.ops.entry((role, op)).or_default();
        stats.count += 1;
        match result {
            Ok(value) => {
                stats.ok += 1;
                Some(value)
            }
            Err(failure) => {
                let label = errno_label(failure.errno);
                if expected(role, op, failure.errno) {
                    *stats.expected.entry(label).or_default() += 1;
                } else {
                    if stats.samples.len() < SAMPLES_MAX {
                        stats.samples.push(format!("{label}: {}", failure.message));
                    }
                    *stats.violations.entry(label).or_default() += 1;
                }
                None
            }
        }
    }

    fn merge_into(&self, total: &mut BTreeMap<(Role, Op), OpStats>) {
        for (key, stats) in &self.ops {
            let sum = total.entry(*key).or_default();
            sum.count += stats.count;
            sum.ok += stats.ok;
            for (label, count) in &stats.expected {
                *sum.expected.entry(label.clone()).or_default() += count;
            }
            for (label, count) in &stats.violations {
                *sum.violations.entry(label.clone()).or_default() += count;
            }
            for sample in &stats.samples {
                if sum.samples.len() < SAMPLES_MAX {
                    sum.samples.push(sample.clone());
                }
            }
        }
    }
}

type SharedTally = Arc<Mutex<Tally>>;

fn record<T>(tally: &SharedTally, role: Role, op: Op, result: Result<T, Failure>) -> Option<T> {
    tally.lock().expect("tally lock").record(role, op, result)
}

/// The exclusive creators' rounds: every exclusive creator races on one fresh name per round.
/// Rounds are synchronized by a barrier; between two rounds, the barrier's leader closes the
/// round just run (counting its winners) and decides whether another starts.
#[derive(Default)]
struct Rounds {
    state: Mutex<RoundsState>,
}

#[derive(Default)]
struct RoundsState {
    /// Winners of the round in progress.
    winners: u32,
    /// May another round start? (Decided by the leader, read by all after the second barrier.)
    go: bool,
    rounds: u64,
    one_winner: u64,
    no_winner: u64,
    several_winners: u64,
    bad: Vec<BadRound>,
}

impl Rounds {
    fn won(&self) {
        self.state.lock().expect("rounds lock").winners += 1;
    }

    /// Run by the barrier's leader alone, while every other exclusive creator waits: closes round
    /// `next - 1` (if any), then decides whether round `next` starts.
    fn between(&self, next: u64, deadline: Instant) {
        let mut state = self.state.lock().expect("rounds lock");
        if next > 0 {
            let winners = std::mem::take(&mut state.winners);
            state.rounds += 1;
            match winners {
                1 => state.one_winner += 1,
                0 => state.no_winner += 1,
                _ => state.several_winners += 1,
            }
            if winners != 1 && state.bad.len() < BAD_ROUNDS_LISTED_MAX {
                state.bad.push(BadRound { round: next - 1, winners });
            }
        }
        state.go = Instant::now() < deadline;
    }

    fn go(&self) -> bool {
        self.state.lock().expect("rounds lock").go
    }

    fn report(&self) -> RoundsReport {
        let state = self.state.lock().expect("rounds lock");
        RoundsReport {
            rounds: state.rounds,
            one_winner: state.one_winner,
            no_winner: state.no_winner,
            several_winners: state.several_winners,
            bad: state.bad.clone(),
        }
    }
}

/// A small xorshift generator: which name to hit next (no need for a good one).
struct Rng(u64);

impl Rng {
    fn new(thread: usize) -> Rng {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Rng((nanos as u64 ^ (thread as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }

    fn below(&mut self, bound: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % u64::from(bound)) as u32
    }
}

/// What every thread of a run shares.
struct Plan {
    names: u32,
    threads: [u32; 5],
    seconds: u64,
    /// A call slower than this is a violation.
    stall: Duration,
    /// Tells this run's exclusive names and temporary files from any other run's.
    run: String,
}

impl Plan {
    fn threads_of(&self, role: Role) -> u32 {
        self.threads[role as usize]
    }

    /// (role, index within the role) of every thread, role by role.
    fn all_threads(&self) -> Vec<(Role, u32)> {
        Role::ALL.iter().flat_map(|role| (0..self.threads_of(*role)).map(move |index| (*role, index))).collect()
    }

    fn name(&self, index: u32) -> String {
        format!("race-{index}")
    }

    fn exclusive_name(&self, round: u64) -> String {
        format!("excl-{}-{round}", self.run)
    }

    fn temporary_name(&self, thread: u32) -> String {
        format!(".tmp-renamer-{}-{thread}", self.run)
    }
}

static RUNS: AtomicU64 = AtomicU64::new(0);

fn run_id() -> String {
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{}-{seconds:x}-{}", std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed))
}

// ---- the report ----

#[derive(Serialize)]
struct Report {
    /// "rustre" or "dirs".
    target: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    clients: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dir: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    dirs: Vec<String>,
    names: u32,
    threads: BTreeMap<&'static str, u32>,
    seconds: u64,
    elapsed_seconds: f64,
    ops: Vec<OpReport>,
    exclusive_rounds: RoundsReport,
    /// Path calls the library retried by name after a stale inode id, over all sessions (rustre
    /// only; not violations: the application never saw those ESTALE).
    #[serde(skip_serializing_if = "Option::is_none")]
    stale_retries: Option<u64>,
    /// Threads still running at the hard cap (`--seconds` + 30 s), and threads that panicked.
    hung_threads: u64,
    panicked_threads: u64,
    /// The slowest call of any thread (bounded from above: the longest time between two calls of
    /// one thread finishing), and the threads with a call slower than `stall_seconds`.
    slowest_call_seconds: f64,
    stall_seconds: u64,
    stalled_threads: u64,
    /// Violations of all ops, by errno.
    violations_by_errno: BTreeMap<String, u64>,
    /// Every violation: failed ops not allowed, bad rounds, hung or panicked threads.
    violations: u64,
}

#[derive(Serialize)]
struct OpReport {
    role: &'static str,
    op: &'static str,
    count: u64,
    ok: u64,
    ops_per_sec: f64,
    expected: BTreeMap<String, u64>,
    violations: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    violation_samples: Vec<String>,
}

#[derive(Clone, Serialize)]
struct RoundsReport {
    rounds: u64,
    one_winner: u64,
    no_winner: u64,
    several_winners: u64,
    /// The first bad rounds (no winner, or several).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bad: Vec<BadRound>,
}

#[derive(Clone, Serialize)]
struct BadRound {
    round: u64,
    winners: u32,
}

/// What a run leaves for the report.
struct Outcome {
    tallies: Vec<SharedTally>,
    rounds: Arc<Rounds>,
    elapsed: Duration,
    hung: u64,
    panicked: u64,
    stale_retries: Option<u64>,
}

fn report(plan: &Plan, outcome: &Outcome, closes: bool, target: Target) -> Report {
    let mut total = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let mut stalled_threads = 0;
    for tally in &outcome.tallies {
        let tally = tally.lock().expect("tally lock");
        tally.merge_into(&mut total);
        slowest = slowest.max(tally.slowest);
        stalled_threads += u64::from(tally.slowest > plan.stall);
    }
    // Every op of every role that ran shows, even one that was never made.
    for role in Role::ALL {
        if plan.threads_of(role) > 0 {
            for op in role.ops(closes) {
                total.entry((role, op)).or_default();
            }
        }
    }
    let elapsed = outcome.elapsed.as_secs_f64().max(1e-3);
    // Hung threads made the run last until the hard cap; the ops were made before the deadline.
    let window = if outcome.hung > 0 { plan.seconds as f64 } else { elapsed };
    let mut violations_by_errno = BTreeMap::new();
    let mut violations = 0;
    let ops = total
        .into_iter()
        .map(|((role, op), stats)| {
            for (label, count) in &stats.violations {
                *violations_by_errno.entry(label.clone()).or_default() += count;
                violations += count;
            }
            OpReport {
                role: role.name(),
                op: op.name(),
                count: stats.count,
                ok: stats.ok,
                ops_per_sec: (stats.count as f64 / window * 10.0).round() / 10.0,
                expected: stats.expected,
                violations: stats.violations,
                violation_samples: stats.samples,
            }
        })
        .collect();
    let rounds = outcome.rounds.report();
    violations += rounds.no_winner + rounds.several_winners + outcome.hung + outcome.panicked + stalled_threads;
    let (target, server, clients, dir, dirs) = match target {
        Target::Rustre { server, clients, dir } => {
            ("rustre", Some(server.to_string()), Some(clients), Some(dir.display().to_string()), Vec::new())
        }
        Target::Dirs(dirs) => ("dirs", None, None, None, dirs.iter().map(|dir| dir.display().to_string()).collect()),
    };
    Report {
        target,
        server,
        clients,
        dir,
        dirs,
        names: plan.names,
        threads: Role::ALL.iter().map(|role| (role.name(), plan.threads_of(*role))).collect(),
        seconds: plan.seconds,
        elapsed_seconds: (elapsed * 1000.0).round() / 1000.0,
        ops,
        exclusive_rounds: rounds,
        stale_retries: outcome.stale_retries,
        hung_threads: outcome.hung,
        panicked_threads: outcome.panicked,
        slowest_call_seconds: (slowest.as_secs_f64() * 1000.0).round() / 1000.0,
        stall_seconds: plan.stall.as_secs(),
        stalled_threads,
        violations_by_errno,
        violations,
    }
}

fn histogram(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "-".to_string();
    }
    counts.iter().map(|(label, count)| format!("{label} {count}")).collect::<Vec<_>>().join(", ")
}

fn human(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let target = match (&report.server, &report.dir) {
        (Some(server), Some(dir)) => {
            format!("rustre at {server}, {} client sessions, directory {dir}", report.clients.unwrap_or(0))
        }
        _ => format!("directories {}", report.dirs.join(" ")),
    };
    let threads = Role::ALL
        .iter()
        .map(|role| format!("{} {}", role.name(), report.threads.get(role.name()).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(out, "rustre race: {target}");
    let _ = writeln!(
        out,
        "{} names; threads per role: {threads}; {} s asked, {:.1} s run",
        report.names, report.seconds, report.elapsed_seconds
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<10} {:<7} {:>10} {:>10} {:>10}  {:<24} violations",
        "role", "op", "count", "ok", "ops/s", "expected errnos"
    );
    for op in &report.ops {
        let _ = writeln!(
            out,
            "{:<10} {:<7} {:>10} {:>10} {:>10.1}  {:<24} {}",
            op.role,
            op.op,
            op.count,
            op.ok,
            op.ops_per_sec,
            histogram(&op.expected),
            histogram(&op.violations)
        );
    }
    let rounds = &report.exclusive_rounds;
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "exclusive rounds: {} (one winner {}, no winner {}, several winners {})",
        rounds.rounds, rounds.one_winner, rounds.no_winner, rounds.several_winners
    );
    for bad in &rounds.bad {
        let _ = writeln!(out, "  round {}: {} winners", bad.round, bad.winners);
    }
    if let Some(retries) = report.stale_retries {
        let _ = writeln!(out, "stale ids the library retried by name (not violations): {retries}");
    }
    let _ = writeln!(
        out,
        "slowest call: {:.3} s (threads with a call over {} s: {})",
        report.slowest_call_seconds, report.stall_seconds, report.stalled_threads
    );
    if report.hung_threads > 0 || report.panicked_threads > 0 {
        let _ = writeln!(
            out,
            "threads hung at the hard cap: {}, panicked: {}",
            report.hung_threads, report.panicked_threads
        );
    }
    let samples: Vec<_> = report.ops.iter().filter(|op| !op.violation_samples.is_empty()).collect();
    if !samples.is_empty() {
        let _ = writeln!(out, "violations seen (first {SAMPLES_MAX} per op):");
        for op in samples {
            for sample in &op.violation_samples {
                let _ = writeln!(out, "  {} {}: {sample}", op.role, op.op);
            }
        }
    }
    let _ = writeln!(out, "violations: {}", report.violations);
    out
}

// ---- running ----

#[derive(Clone, Copy)]
enum Target<'a> {
    Rustre { server: &'a str, clients: u32, dir: &'a Path },
    Dirs(&'a [PathBuf]),
}

/// Runs the race and prints its report; fails (exit status 1) on any violation.
pub async fn run(args: RaceArgs, server: &str, client_stats: bool) -> anyhow::Result<()> {
    let per_role = |own: Option<u32>| own.unwrap_or(args.threads);
    let plan = Arc::new(Plan {
        names: args.names,
        threads: [
            per_role(args.creators),
            per_role(args.exclusive),
            per_role(args.unlinkers),
            per_role(args.renamers),
            per_role(args.readers),
        ],
        seconds: args.seconds,
        stall: Duration::from_secs(args.stall_seconds),
        run: run_id(),
    });
    if plan.threads.iter().all(|count| *count == 0) {
        bail!("race: no threads in any role");
    }
    let report = if args.dirs.is_empty() {
        let config = ClientConfig { retry_stale_by_name: !args.no_stale_retry, ..crate::client_config() };
        let outcome = run_rustre(plan.clone(), server, config, args.clients, &args.dir, client_stats).await?;
        report(&plan, &outcome, true, Target::Rustre { server, clients: args.clients, dir: &args.dir })
    } else {
        let dirs = args.dirs.clone();
        let run_plan = plan.clone();
        let outcome = tokio::task::spawn_blocking(move || run_dirs(run_plan, &dirs)).await??;
        report(&plan, &outcome, false, Target::Dirs(&args.dirs))
    };
    crate::report::print(&report, args.json, human)?;
    if report.violations > 0 {
        eprintln!("rustre: race: {} violations", report.violations);
        return Err(crate::Reported.into());
    }
    Ok(())
}

// ---- rustre through the library: async tasks ----

async fn run_rustre(
    plan: Arc<Plan>,
    server: &str,
    config: ClientConfig,
    clients: u32,
    dir: &Path,
    client_stats: bool,
) -> anyhow::Result<Outcome> {
    let mut sessions = Vec::new();
    for _ in 0..clients {
        let session = Client::connect_with(server, config.clone()).await;
        sessions.push(session.with_context(|| format!("race: connecting to {server}"))?);
    }
    sessions[0].create_dir_all(dir).await.with_context(|| format!("race: making {}", dir.display()))?;
    let exclusive = plan.threads_of(Role::Exclusive) as usize;
    let barrier = Arc::new(tokio::sync::Barrier::new(exclusive.max(1)));
    let rounds = Arc::new(Rounds::default());
    let start = Instant::now();
    let deadline = start + Duration::from_secs(plan.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    let mut tallies = Vec::new();
    for (k, (role, index)) in plan.all_threads().into_iter().enumerate() {
        let tally = SharedTally::default();
        tallies.push(tally.clone());
        let worker = Worker {
            plan: plan.clone(),
            client: sessions[k % sessions.len()].clone(),
            dir: dir.to_path_buf(),
            tally,
            rng: Rng::new(k),
            deadline,
        };
        let (barrier, rounds) = (barrier.clone(), rounds.clone());
        tasks.spawn(async move {
            match role {
                Role::Creator => worker.creator().await,
                Role::Exclusive => worker.exclusive(&barrier, &rounds).await,
                Role::Unlinker => worker.unlinker().await,
                Role::Renamer => worker.renamer(index).await,
                Role::Reader => worker.reader().await,
            }
        });
    }
    let hard_cap = tokio::time::Instant::from_std(deadline + HARD_CAP_GRACE);
    let mut panicked = 0;
    let _ = tokio::time::timeout_at(hard_cap, async {
        while let Some(joined) = tasks.join_next().await {
            if joined.is_err() {
                panicked += 1;
            }
        }
    })
    .await;
    let elapsed = start.elapsed();
    let hung = tasks.len() as u64;
    tasks.abort_all();
    // Leave the directory as small as it was (errors here are not part of the race), unless the
    // server hangs.
    let names = (0..plan.names)
        .map(|index| plan.name(index))
        .chain((0..plan.threads_of(Role::Renamer)).map(|thread| plan.temporary_name(thread)));
    let client = sessions[0].clone();
    let cleanup = async {
        for name in names {
            let _ = client.remove_file(dir.join(name)).await;
        }
    };
    if hung == 0 {
        let _ = tokio::time::timeout(CLEANUP_TIMEOUT, cleanup).await;
    }
    let mut stale_retries = 0;
    for (number, session) in sessions.iter().enumerate() {
        let stats = session.stats();
        stale_retries += stats.stale_retries;
        if client_stats {
            eprintln!("client {number}:\n{stats}");
        }
        session.end().await;
    }
    Ok(Outcome { tallies, rounds, elapsed, hung, panicked, stale_retries: Some(stale_retries) })
}

/// One task of the rustre target.
struct Worker {
    plan: Arc<Plan>,
    client: Client,
    dir: PathBuf,
    tally: SharedTally,
    rng: Rng,
    deadline: Instant,
}

impl Worker {
    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    fn random_name(&mut self) -> PathBuf {
        let index = self.rng.below(self.plan.names);
        self.dir.join(self.plan.name(index))
    }

    fn record<T>(&self, role: Role, op: Op, result: rustre_client::Result<T>) -> Option<T> {
        record(&self.tally, role, op, result.map_err(Failure::from))
    }

    async fn creator(mut self) {
        let options = OpenOptions::new().read(true).write(true).create(true).clone();
        while self.running() {
            let path = self.random_name();
            let Some(mut file) = self.record(Role::Creator, Op::Open, self.client.open(&path, &options).await) else {
                continue;
            };
            self.record(Role::Creator, Op::Write, file.write_all(PAYLOAD).await);
            self.record(Role::Creator, Op::Close, file.close().await);
        }
    }

    async fn exclusive(self, barrier: &tokio::sync::Barrier, rounds: &Rounds) {
        let options = OpenOptions::new().read(true).write(true).create_new(true).clone();
        let mut won: Option<(rustre_client::File, PathBuf)> = None;
        let mut round = 0;
        loop {
            if barrier.wait().await.is_leader() {
                rounds.between(round, self.deadline);
            }
            barrier.wait().await;
            // Every exclusive creator has made its attempt at the last round: its winner cleans up.
            if let Some((file, path)) = won.take() {
                self.record(Role::Exclusive, Op::Close, file.close().await);
                self.record(Role::Exclusive, Op::Unlink, self.client.remove_file(&path).await);
            }
            if !rounds.go() {
                return;
            }
            let path = self.dir.join(self.plan.exclusive_name(round));
            if let Some(file) = self.record(Role::Exclusive, Op::Open, self.client.open(&path, &options).await) {
                rounds.won();
                won = Some((file, path));
            }
            round += 1;
        }
    }

    async fn unlinker(mut self) {
        while self.running() {
            let path = self.random_name();
            self.record(Role::Unlinker, Op::Unlink, self.client.remove_file(&path).await);
        }
    }

    async fn renamer(mut self, thread: u32) {
        let temporary = self.dir.join(self.plan.temporary_name(thread));
        let options = OpenOptions::new().write(true).create(true).truncate(true).clone();
        while self.running() {
            let Some(mut file) = self.record(Role::Renamer, Op::Create, self.client.open(&temporary, &options).await)
            else {
                continue;
            };
            self.record(Role::Renamer, Op::Write, file.write_all(PAYLOAD).await);
            if self.record(Role::Renamer, Op::Close, file.close().await).is_none() {
                continue;
            }
            let target = self.random_name();
            self.record(Role::Renamer, Op::Rename, self.client.rename(&temporary, &target).await);
        }
    }

    async fn reader(mut self) {
        let options = OpenOptions::new().read(true).clone();
        while self.running() {
            let path = self.random_name();
            if let Some(file) = self.record(Role::Reader, Op::Open, self.client.open(&path, &options).await) {
                self.record(Role::Reader, Op::Close, file.close().await);
            }
            let path = self.random_name();
            self.record(Role::Reader, Op::Stat, self.client.stat(&path).await);
        }
    }
}

// ---- any file system through directories: std threads, real system calls ----

/// Fails unless every directory shows what is made in the first (the same directory, perhaps
/// through several mounts): names race only if they are the same names.
fn check_same_directory(plan: &Plan, dirs: &[PathBuf]) -> anyhow::Result<()> {
    for dir in dirs {
        let metadata = std::fs::metadata(dir).with_context(|| format!("race: {}", dir.display()))?;
        if !metadata.is_dir() {
            bail!("race: {}: {}", dir.display(), Errno::ENOTDIR);
        }
    }
    let probe = format!(".race-probe-{}", plan.run);
    let made = dirs[0].join(&probe);
    std::fs::File::create(&made).with_context(|| format!("race: creating {}", made.display()))?;
    let shown = crate::report::wait_until_shown(&dirs[1..], |dir| std::fs::symlink_metadata(dir.join(&probe)).is_ok());
    let _ = std::fs::remove_file(&made);
    if let Err(dir) = shown {
        bail!(
            "race: {} and {} do not show the same directory ({probe} made in the first is not in the second after \
             {} s); --dirs races on names, so it needs one directory seen several times",
            dirs[0].display(),
            dir.display(),
            crate::report::SAME_DIRECTORY_WAIT.as_secs()
        );
    }
    Ok(())
}

/// Sends on drop, so the main thread learns of a thread's end even if it panicked.
struct Finished {
    sender: std::sync::mpsc::Sender<bool>,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let _ = self.sender.send(std::thread::panicking());
    }
}

fn run_dirs(plan: Arc<Plan>, dirs: &[PathBuf]) -> anyhow::Result<Outcome> {
    check_same_directory(&plan, dirs)?;
    let exclusive = plan.threads_of(Role::Exclusive) as usize;
    let barrier = Arc::new(std::sync::Barrier::new(exclusive.max(1)));
    let rounds = Arc::new(Rounds::default());
    let (sender, finished) = std::sync::mpsc::channel();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(plan.seconds);
    let mut tallies = Vec::new();
    let threads = plan.all_threads();
    for (k, (role, index)) in threads.iter().copied().enumerate() {
        let tally = SharedTally::default();
        tallies.push(tally.clone());
        let worker =
            DirWorker { plan: plan.clone(), dir: dirs[k % dirs.len()].clone(), tally, rng: Rng::new(k), deadline };
        let (barrier, rounds) = (barrier.clone(), rounds.clone());
        let done = Finished { sender: sender.clone() };
        std::thread::Builder::new()
            .name(format!("race-{}-{index}", role.name()))
            .spawn(move || {
                let _done = done;
                match role {
                    Role::Creator => worker.creator(),
                    Role::Exclusive => worker.exclusive(&barrier, &rounds),
                    Role::Unlinker => worker.unlinker(),
                    Role::Renamer => worker.renamer(index),
                    Role::Reader => worker.reader(),
                }
            })
            .context("race: starting a thread")?;
    }
    drop(sender);
    let hard_cap = deadline + HARD_CAP_GRACE;
    let (mut ended, mut panicked) = (0, 0);
    while ended < threads.len() {
        match finished.recv_timeout(hard_cap.saturating_duration_since(Instant::now())) {
            Ok(did_panic) => {
                ended += 1;
                panicked += u64::from(did_panic);
            }
            Err(_) => break, // the hard cap: the threads left are reported as hung
        }
    }
    let elapsed = start.elapsed();
    let hung = (threads.len() - ended) as u64;
    if hung == 0 {
        remove_names(&plan, dirs, &threads);
    }
    Ok(Outcome { tallies, rounds, elapsed, hung, panicked, stale_retries: None })
}

/// Leaves the directories as small as they were (errors here are not part of the race). Not
/// done when threads hang: a file system that hangs would hang this too.
fn remove_names(plan: &Plan, dirs: &[PathBuf], threads: &[(Role, u32)]) {
    let mut cleaned = Vec::new();
    for (k, (role, index)) in threads.iter().copied().enumerate() {
        let dir = &dirs[k % dirs.len()];
        if role == Role::Renamer {
            let _ = std::fs::remove_file(dir.join(plan.temporary_name(index)));
        }
        if !cleaned.contains(dir) {
            for name in 0..plan.names {
                let _ = std::fs::remove_file(dir.join(plan.name(name)));
            }
            cleaned.push(dir.clone());
        }
    }
}

/// One thread of the `--dirs` target.
struct DirWorker {
    plan: Arc<Plan>,
    dir: PathBuf,
    tally: SharedTally,
    rng: Rng,
    deadline: Instant,
}

impl DirWorker {
    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    fn random_name(&mut self) -> PathBuf {
        let index = self.rng.below(self.plan.names);
        self.dir.join(self.plan.name(index))
    }

    fn record<T>(&self, role: Role, op: Op, what: &str, path: &Path, result: std::io::Result<T>) -> Option<T> {
        record(&self.tally, role, op, result.map_err(|error| io_failure(error, what, path)))
    }

    fn creator(mut self) {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true);
        while self.running() {
            let path = self.random_name();
            let Some(mut file) = self.record(Role::Creator, Op::Open, "open", &path, options.open(&path)) else {
                continue;
            };
            self.record(Role::Creator, Op::Write, "write", &path, file.write_all(PAYLOAD));
        }
    }

    fn exclusive(self, barrier: &std::sync::Barrier, rounds: &Rounds) {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create_new(true);
        let mut won: Option<(std::fs::File, PathBuf)> = None;
        let mut round = 0;
        loop {
            if barrier.wait().is_leader() {
                rounds.between(round, self.deadline);
            }
            barrier.wait();
            // Every exclusive creator has made its attempt at the last round: its winner cleans up.
            if let Some((file, path)) = won.take() {
                drop(file);
                self.record(Role::Exclusive, Op::Unlink, "unlink", &path, std::fs::remove_file(&path));
            }
            if !rounds.go() {
                return;
            }
            let path = self.dir.join(self.plan.exclusive_name(round));
            if let Some(file) = self.record(Role::Exclusive, Op::Open, "open", &path, options.open(&path)) {
                rounds.won();
                won = Some((file, path));
            }
            round += 1;
        }
    }

    fn unlinker(mut self) {
        while self.running() {
            let path = self.random_name();
            self.record(Role::Unlinker, Op::Unlink, "unlink", &path, std::fs::remove_file(&path));
        }
    }

    fn renamer(mut self, thread: u32) {
        use std::io::Write;
        let temporary = self.dir.join(self.plan.temporary_name(thread));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        while self.running() {
            let Some(mut file) = self.record(Role::Renamer, Op::Create, "create", &temporary, options.open(&temporary))
            else {
                continue;
            };
            self.record(Role::Renamer, Op::Write, "write", &temporary, file.write_all(PAYLOAD));
            drop(file);
            let target = self.random_name();
            self.record(Role::Renamer, Op::Rename, "rename to", &target, std::fs::rename(&temporary, &target));
        }
    }

    fn reader(mut self) {
        while self.running() {
            let path = self.random_name();
            self.record(Role::Reader, Op::Open, "open", &path, std::fs::File::open(&path));
            let path = self.random_name();
            self.record(Role::Reader, Op::Stat, "stat", &path, std::fs::metadata(&path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_allowed_errnos_are_expected() {
        let (enoent, eexist, estale, eio) = (Some(2), Some(17), Some(116), Some(5));
        assert!(expected(Role::Exclusive, Op::Open, eexist));
        assert!(!expected(Role::Creator, Op::Open, eexist), "EEXIST without O_EXCL");
        assert!(!expected(Role::Creator, Op::Open, enoent), "an O_CREAT open that failed");
        assert!(expected(Role::Unlinker, Op::Unlink, enoent));
        assert!(expected(Role::Reader, Op::Open, enoent));
        assert!(expected(Role::Reader, Op::Stat, enoent));
        assert!(!expected(Role::Renamer, Op::Rename, enoent), "the temporary name is private");
        assert!(!expected(Role::Exclusive, Op::Unlink, enoent));
        for role in Role::ALL {
            for op in role.ops(true) {
                assert!(!expected(role, op, estale) && !expected(role, op, eio) && !expected(role, op, None));
            }
        }
    }

    #[test]
    fn rounds_with_other_than_one_winner_are_bad() {
        let rounds = Rounds::default();
        let later = Instant::now() + Duration::from_secs(60);
        rounds.between(0, later);
        assert!(rounds.go());
        rounds.won();
        rounds.between(1, later);
        rounds.between(2, later); // round 1: nobody
        rounds.won();
        rounds.won();
        rounds.between(3, Instant::now()); // round 2: two, and time is up
        assert!(!rounds.go());
        let report = rounds.report();
        assert_eq!((report.rounds, report.one_winner, report.no_winner, report.several_winners), (3, 1, 1, 1));
        assert_eq!(report.bad.iter().map(|bad| (bad.round, bad.winners)).collect::<Vec<_>>(), [(1, 0), (2, 2)]);
    }

    #[test]
    fn errno_labels() {
        assert_eq!(errno_label(Some(116)), "ESTALE");
        assert_eq!(errno_label(Some(4242)), "errno 4242");
        assert_eq!(errno_label(None), "no errno");
    }
}
