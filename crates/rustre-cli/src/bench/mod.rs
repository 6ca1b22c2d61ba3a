//! `rustre bench`: an mdtest-like benchmark of a file system, phase by phase, with latency
//! percentiles. It runs on any directory (rustre's mount, tmpfs, a FUSE passthrough, another
//! network file system) through system calls, or on rustre directly through the library
//! (`--server`), so that all of them are measured by the same program in the same run.
//!
//! Threads each work in a directory of their own (`t<N>`), except in the listing phases, which
//! share one large directory. Several directories (`DIR...`) are several clients of one file
//! system, for example one directory seen through two mounts; with the library, `--clients`
//! opens that many sessions. Threads are spread over the clients round-robin.
//!
//! Rates are calls per second of wall-clock time from the moment every thread starts the phase
//! to the moment the last one ends, except in `stat-changed`, where each stat follows a change
//! made by another client that is not timed: there, a thread's time is the sum of its timed
//! calls. Latencies are per call (per listing, per block), in microseconds.

mod compare;
mod session;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use rustre_client::{Client, ClientConfig};
use serde::{Deserialize, Serialize};
use session::{Access, DirSession, Failure, LibrarySession, Session};

pub use compare::{CompareArgs, run as compare};

/// Failures quoted in the report per phase (all are counted).
const FAILURES_QUOTED_MAX: usize = 3;
/// The slowest call a latency histogram tells apart from the next (longer ones count as this).
const LATENCY_MAX: Duration = Duration::from_secs(600);
/// How often the progress bar is redrawn from the threads' counters.
const PROGRESS_PERIOD: Duration = Duration::from_millis(100);
/// The most threads and clients.
const THREADS_MAX: u32 = 256;
const CLIENTS_MAX: u32 = 64;

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// `open(O_CREAT|O_EXCL)` and close of new files.
    Create,
    /// stat of every file, as cached by the client that just made it.
    Stat,
    /// stat of every file right after another client changed its mode (the change is not timed).
    StatChanged,
    /// `open(O_RDONLY)` and close.
    Open,
    /// Renames every file to a new name in its directory.
    Rename,
    /// Removes every file.
    Unlink,
    /// Makes directories.
    Mkdir,
    /// Removes them.
    Rmdir,
    /// Lists one large shared directory (names and types only).
    Readdir,
    /// Lists it and stats every entry (`ls -l`; readdirplus where the file system has it).
    ReaddirStat,
    /// Writes a file per thread sequentially in blocks.
    Write,
    /// Reads it back sequentially through a new open.
    Read,
    /// Small writes at random aligned offsets in that file.
    RandomWrite,
    /// Small reads at random aligned offsets in that file.
    RandomRead,
}

impl Phase {
    const ALL: [Phase; 14] = [
        Phase::Create,
        Phase::Stat,
        Phase::StatChanged,
        Phase::Open,
        Phase::Rename,
        Phase::Unlink,
        Phase::Mkdir,
        Phase::Rmdir,
        Phase::Readdir,
        Phase::ReaddirStat,
        Phase::Write,
        Phase::Read,
        Phase::RandomWrite,
        Phase::RandomRead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Create => "create",
            Phase::Stat => "stat",
            Phase::StatChanged => "stat-changed",
            Phase::Open => "open",
            Phase::Rename => "rename",
            Phase::Unlink => "unlink",
            Phase::Mkdir => "mkdir",
            Phase::Rmdir => "rmdir",
            Phase::Readdir => "readdir",
            Phase::ReaddirStat => "readdir-stat",
            Phase::Write => "write",
            Phase::Read => "read",
            Phase::RandomWrite => "random-write",
            Phase::RandomRead => "random-read",
        }
    }

    /// What the phase's rate counts.
    fn unit(self) -> &'static str {
        match self {
            Phase::Readdir | Phase::ReaddirStat => "entries/s",
            Phase::Write | Phase::Read => "MiB/s",
            Phase::RandomWrite | Phase::RandomRead => "IOPS",
            _ => "ops/s",
        }
    }
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Directories to benchmark in (each gets a fresh subdirectory, removed at the end). Several
    /// are several clients of one file system (the same directory through several mounts).
    /// Without any, benchmarks rustre through the library, on the server of `--server`.
    #[arg(value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Library sessions (each with its own connection), without DIR.
    #[arg(long, default_value_t = 1, value_name = "N", conflicts_with = "dirs",
          value_parser = clap::value_parser!(u32).range(1..=CLIENTS_MAX as i64))]
    clients: u32,
    /// The directory inside rustre to work in, without DIR (a fresh subdirectory of it is used).
    #[arg(long, default_value = "/", value_name = "PATH", conflicts_with = "dirs")]
    dir: String,
    /// Threads, each making one call at a time.
    #[arg(long, short = 't', default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=THREADS_MAX as i64))]
    threads: u32,
    /// Files (and directories) per thread in the metadata phases.
    #[arg(long, short = 'n', default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    files: u32,
    /// The phases to run, in their fixed order (what they need is made without being timed).
    #[arg(long, value_delimiter = ',', value_name = "PHASE,...")]
    phases: Vec<Phase>,
    /// Entries in the shared directory of the listing phases.
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    readdir_entries: u32,
    /// Listings of it per thread.
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    readdir_rounds: u32,
    /// Bytes per thread in the sequential phases (suffixes K, M, G: powers of 1024).
    #[arg(long, default_value = "64M", value_name = "SIZE", value_parser = size)]
    io_size: u64,
    /// Bytes per call in the sequential phases.
    #[arg(long, default_value = "1M", value_name = "SIZE", value_parser = size)]
    block_size: u64,
    /// Calls per thread in the random phases.
    #[arg(long, default_value_t = 2000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    random_ops: u32,
    /// Bytes per call in the random phases.
    #[arg(long, default_value = "4K", value_name = "SIZE", value_parser = size)]
    random_size: u64,
    /// fsync the file at the end of the sequential write (timed as part of the phase).
    #[arg(long)]
    fsync: bool,
    /// Seed of the random offsets.
    #[arg(long, default_value_t = 1, value_name = "N")]
    seed: u64,
    /// What to call this run in the report and in `rustre bench-compare`.
    #[arg(long, value_name = "TEXT")]
    label: Option<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Parses `4096`, `4K`, `64M`, `1G` (powers of 1024).
fn size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((at, 'k' | 'K')) => (&text[..at], 10),
        Some((at, 'm' | 'M')) => (&text[..at], 20),
        Some((at, 'g' | 'G')) => (&text[..at], 30),
        _ => (text, 0),
    };
    let value: u64 = digits.parse().map_err(|error| format!("{text:?}: {error}"))?;
    let bytes = value.checked_shl(shift).filter(|bytes| bytes >> shift == value).ok_or("too large")?;
    if bytes == 0 {
        return Err("must not be 0".into());
    }
    Ok(bytes)
}

/// The whole report, also what `--json` prints and `bench-compare` reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    /// What was measured: the directories, or the server.
    pub target: String,
    /// `dirs` or `library`.
    pub through: String,
    pub machine: Machine,
    pub threads: u32,
    pub clients: u32,
    pub files_per_thread: u32,
    pub readdir_entries: u32,
    pub io_size: u64,
    pub block_size: u64,
    pub random_size: u64,
    pub phases: Vec<PhaseReport>,
    /// Failed calls over all phases (setup included).
    pub failures: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    pub kernel: String,
    pub cpus: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PhaseReport {
    pub phase: Phase,
    pub calls: u64,
    pub failures: u64,
    pub seconds: f64,
    pub calls_per_second: f64,
    /// The phase's headline figure, in `unit`.
    pub rate: f64,
    pub unit: String,
    pub latency_us: Latency,
    /// Requests the library's sessions sent to the server during the phase (library only).
    /// Untimed calls in the phase (the changes of `stat-changed`) count too.
    pub requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_by_kind: Option<BTreeMap<String, u64>>,
    pub quoted_failures: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// What one thread saw in one phase.
struct Recorder<'a> {
    latency: Histogram<u64>,
    calls: u64,
    failures: u64,
    quoted: Vec<String>,
    /// Sum of the timed calls.
    busy: Duration,
    progress: &'a AtomicU64,
}

impl<'a> Recorder<'a> {
    fn new(progress: &'a AtomicU64) -> Recorder<'a> {
        let latency = Histogram::new_with_bounds(1, LATENCY_MAX.as_nanos() as u64, 3).expect("histogram bounds");
        Recorder { latency, calls: 0, failures: 0, quoted: Vec::new(), busy: Duration::ZERO, progress }
    }

    /// Times one call.
    fn time<T>(&mut self, call: impl FnOnce() -> Result<T, Failure>) -> Option<T> {
        let start = Instant::now();
        let result = call();
        let took = start.elapsed();
        self.busy += took;
        self.calls += 1;
        self.latency.saturating_record((took.as_nanos() as u64).max(1));
        self.progress.fetch_add(1, Ordering::Relaxed);
        self.settle(result)
    }

    /// Times `call` if `timed`, else only counts its result (the phase is setup for another).
    fn call<T>(&mut self, timed: bool, call: impl FnOnce() -> Result<T, Failure>) -> Option<T> {
        match timed {
            true => self.time(call),
            false => self.untimed(call()),
        }
    }

    /// Counts the result of an untimed call (setup, or the other client's change).
    fn untimed<T>(&mut self, result: Result<T, Failure>) -> Option<T> {
        self.settle(result)
    }

    fn settle<T>(&mut self, result: Result<T, Failure>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(Failure(message)) => {
                self.failures += 1;
                if self.quoted.len() < FAILURES_QUOTED_MAX {
                    self.quoted.push(message);
                }
                None
            }
        }
    }
}

/// One thread's place in the run.
struct Worker<'a> {
    index: u32,
    session: &'a dyn Session,
    /// Another client's session (this one's if there is one client): who changes the files in
    /// `stat-changed`.
    other: &'a dyn Session,
}

impl Worker<'_> {
    fn dir(&self) -> String {
        format!("t{}", self.index)
    }

    fn file(&self, at: u32) -> String {
        format!("t{}/f{at}", self.index)
    }

    fn renamed(&self, at: u32) -> String {
        format!("t{}/r{at}", self.index)
    }

    fn subdir(&self, at: u32) -> String {
        format!("t{}/d{at}", self.index)
    }

    fn io_file(&self) -> String {
        format!("t{}/io", self.index)
    }
}

struct Bench {
    args: BenchArgs,
    sessions: Vec<Box<dyn Session>>,
    /// The name of the run's directory inside every session's root.
    run_dir: String,
    phases: Vec<Phase>,
    /// What the phases measured, in order (`step` runs with `&self`: the phases' closures read
    /// the plan while a step runs them).
    reports: Mutex<Vec<PhaseReport>>,
    failures: AtomicU64,
}

/// Where the listing phases' shared directory lives (inside the run directory).
const SHARED_DIR: &str = "shared";

impl Bench {
    fn workers(&self) -> Vec<Worker<'_>> {
        let clients = self.sessions.len() as u32;
        (0..self.args.threads)
            .map(|index| Worker {
                index,
                session: self.sessions[(index % clients) as usize].as_ref(),
                other: self.sessions[((index + 1) % clients) as usize].as_ref(),
            })
            .collect()
    }

    /// Requests sent so far by all sessions, by kind (library only).
    fn requests(&self) -> Option<BTreeMap<String, u64>> {
        let mut total = BTreeMap::new();
        for session in &self.sessions {
            for (kind, count) in session.requests_sent()? {
                *total.entry(kind.to_string()).or_default() += count;
            }
        }
        Some(total)
    }

    /// Runs `work` on every thread at once. With `phase`, the run is timed and reported.
    fn step(
        &self,
        phase: Option<Phase>,
        what: &str,
        calls_per_thread: u64,
        work: impl Fn(&Worker, &mut Recorder) + Sync,
    ) -> anyhow::Result<()> {
        let total = calls_per_thread * u64::from(self.args.threads);
        let progress = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        let bar = progress_bar(what, total, self.args.json);
        let requests_before = self.requests();
        let workers = self.workers();
        let barrier = Barrier::new(workers.len() + 1);
        let (recorders, seconds) = std::thread::scope(|scope| -> anyhow::Result<_> {
            let ticker = scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    bar.set_position(progress.load(Ordering::Relaxed));
                    std::thread::sleep(PROGRESS_PERIOD);
                }
            });
            let mut threads = Vec::new();
            for worker in &workers {
                let (barrier, work, progress) = (&barrier, &work, &progress);
                let thread = std::thread::Builder::new()
                    .name(format!("bench-{}", worker.index))
                    .spawn_scoped(scope, move || {
                        let mut recorder = Recorder::new(progress);
                        barrier.wait();
                        let started = Instant::now();
                        work(worker, &mut recorder);
                        (recorder, started, Instant::now())
                    })
                    .context("starting a thread")?;
                threads.push(thread);
            }
            // The phase runs from the first thread's start to the last one's end (this thread
            // may be scheduled late after the barrier: the workers' clocks are the ones to use).
            barrier.wait();
            let mut recorders = Vec::new();
            let (mut start, mut end) = (None::<Instant>, None::<Instant>);
            for thread in threads {
                let (recorder, started, ended) = thread.join().expect("a bench thread panicked");
                start = Some(start.map_or(started, |start| start.min(started)));
                end = Some(end.map_or(ended, |end| end.max(ended)));
                recorders.push(recorder);
            }
            let (start, end) = (start.expect("at least one thread"), end.expect("at least one thread"));
            done.store(true, Ordering::Relaxed);
            ticker.join().expect("the progress thread panicked");
            Ok((recorders, (end - start).as_secs_f64()))
        })?;
        bar.finish_and_clear();
        let requests_by_kind = match (requests_before, self.requests()) {
            (Some(before), Some(after)) => Some(
                after
                    .into_iter()
                    .map(|(kind, count)| {
                        let sent = count - before.get(&kind).copied().unwrap_or(0);
                        (kind, sent)
                    })
                    .filter(|(_, sent)| *sent > 0)
                    .collect::<BTreeMap<_, _>>(),
            ),
            _ => None,
        };
        let requests = requests_by_kind.as_ref().map(|kinds| kinds.values().sum());
        let failures: u64 = recorders.iter().map(|recorder| recorder.failures).sum();
        self.failures.fetch_add(failures, Ordering::Relaxed);
        let quoted: Vec<String> =
            recorders.iter().flat_map(|recorder| recorder.quoted.iter().cloned()).take(FAILURES_QUOTED_MAX).collect();
        let Some(phase) = phase else {
            if failures > 0 {
                bail!("{what}: {failures} calls failed, for example: {}", quoted.join("; "));
            }
            return Ok(());
        };
        let mut latency = Histogram::new_with_bounds(1, LATENCY_MAX.as_nanos() as u64, 3).expect("histogram bounds");
        for recorder in &recorders {
            latency.add(&recorder.latency).expect("histograms of the same bounds");
        }
        let calls = latency.len();
        let seconds = if phase == Phase::StatChanged {
            recorders.iter().map(|recorder| recorder.busy.as_secs_f64()).fold(0.0, f64::max)
        } else {
            seconds
        };
        let seconds = seconds.max(f64::MIN_POSITIVE);
        let calls_per_second = calls as f64 / seconds;
        let rate = match phase {
            Phase::Readdir | Phase::ReaddirStat => calls as f64 * f64::from(self.args.readdir_entries) / seconds,
            Phase::Write | Phase::Read => calls as f64 * self.args.block_size as f64 / seconds / f64::from(1 << 20),
            _ => calls_per_second,
        };
        let micros = |nanos: u64| nanos as f64 / 1000.0;
        self.reports.lock().expect("reports lock").push(PhaseReport {
            phase,
            calls,
            failures,
            seconds,
            calls_per_second,
            rate,
            unit: phase.unit().to_string(),
            latency_us: Latency {
                mean: latency.mean() / 1000.0,
                p50: micros(latency.value_at_quantile(0.50)),
                p90: micros(latency.value_at_quantile(0.90)),
                p99: micros(latency.value_at_quantile(0.99)),
                p999: micros(latency.value_at_quantile(0.999)),
                max: micros(latency.max()),
            },
            requests,
            requests_by_kind,
            quoted_failures: quoted,
        });
        Ok(())
    }

    fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    fn runs_any(&self, phases: &[Phase]) -> bool {
        phases.iter().any(|phase| self.runs(*phase))
    }

    fn timed(&self, phase: Phase) -> Option<Phase> {
        self.runs(phase).then_some(phase)
    }

    /// One step calling `op` on each thread's `files` paths named by `name`; timed as `phase` if
    /// that phase runs, else setup (or clean-up) for the phases that do.
    fn each_path(
        &self,
        phase: Phase,
        name: impl Fn(&Worker, u32) -> String + Sync,
        op: impl Fn(&dyn Session, &str) -> Result<(), Failure> + Sync,
    ) -> anyhow::Result<()> {
        let timed = self.runs(phase);
        self.step(timed.then_some(phase), phase.name(), u64::from(self.args.files), |worker, recorder| {
            for at in 0..self.args.files {
                let path = name(worker, at);
                recorder.call(timed, || op(worker.session, &path));
            }
        })
    }

    fn run(&self) -> anyhow::Result<()> {
        let files = self.args.files;
        let per_thread = u64::from(files);
        self.step(None, "setup: thread directories", 1, |worker, recorder| {
            recorder.untimed(worker.session.mkdir(&worker.dir()));
        })?;

        // Files: create, stat, stat-changed, open, rename, unlink.
        if self.runs_any(&[Phase::Create, Phase::Stat, Phase::StatChanged, Phase::Open, Phase::Rename, Phase::Unlink]) {
            self.each_path(Phase::Create, |worker, at| worker.file(at), |session, path| session.create(path))?;
            if self.runs(Phase::Stat) {
                self.step(Some(Phase::Stat), "stat", per_thread, |worker, recorder| {
                    for at in 0..files {
                        recorder.time(|| worker.session.stat(&worker.file(at)));
                    }
                })?;
            }
            if self.runs(Phase::StatChanged) {
                // Cached first, so that the change has something to invalidate.
                self.step(None, "setup: stat before the changes", per_thread, |worker, recorder| {
                    for at in 0..files {
                        recorder.untimed(worker.session.stat(&worker.file(at)));
                    }
                })?;
                self.step(Some(Phase::StatChanged), "stat-changed", per_thread, |worker, recorder| {
                    for at in 0..files {
                        let path = worker.file(at);
                        recorder.untimed(worker.other.chmod(&path, 0o600));
                        recorder.time(|| worker.session.stat(&path));
                    }
                })?;
            }
            if self.runs(Phase::Open) {
                self.step(Some(Phase::Open), "open", per_thread, |worker, recorder| {
                    for at in 0..files {
                        recorder.time(|| worker.session.open_close(&worker.file(at)));
                    }
                })?;
            }
            let renamed = self.runs(Phase::Rename);
            if renamed {
                self.step(Some(Phase::Rename), "rename", per_thread, |worker, recorder| {
                    for at in 0..files {
                        recorder.time(|| worker.session.rename(&worker.file(at), &worker.renamed(at)));
                    }
                })?;
            }
            let name = |worker: &Worker, at| if renamed { worker.renamed(at) } else { worker.file(at) };
            self.each_path(Phase::Unlink, name, |session, path| session.unlink(path))?;
        }

        if self.runs_any(&[Phase::Mkdir, Phase::Rmdir]) {
            self.each_path(Phase::Mkdir, |worker, at| worker.subdir(at), |session, path| session.mkdir(path))?;
            self.each_path(Phase::Rmdir, |worker, at| worker.subdir(at), |session, path| session.rmdir(path))?;
        }

        if self.runs_any(&[Phase::Readdir, Phase::ReaddirStat]) {
            self.list_phases()?;
        }

        if self.runs_any(&[Phase::Write, Phase::Read, Phase::RandomWrite, Phase::RandomRead]) {
            self.io_phases()?;
        }
        Ok(())
    }

    fn list_phases(&self) -> anyhow::Result<()> {
        let entries = self.args.readdir_entries;
        let threads = self.args.threads;
        let rounds = self.args.readdir_rounds;
        self.sessions[0].mkdir(SHARED_DIR).map_err(|Failure(message)| anyhow::anyhow!(message))?;
        // Entry k is made by thread k % threads.
        let mine = |worker: &Worker| (worker.index..entries).step_by(threads as usize);
        let per_thread = u64::from(entries.div_ceil(threads));
        self.step(None, "setup: the shared directory", per_thread, |worker, recorder| {
            for at in mine(worker) {
                recorder.untimed(worker.session.create(&format!("{SHARED_DIR}/e{at}")));
                recorder.progress.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        for (phase, stat_each) in [(Phase::Readdir, false), (Phase::ReaddirStat, true)] {
            if !self.runs(phase) {
                continue;
            }
            self.step(Some(phase), phase.name(), u64::from(rounds), |worker, recorder| {
                for _ in 0..rounds {
                    if let Some(count) = recorder.time(|| worker.session.list(SHARED_DIR, stat_each))
                        && count != u64::from(entries)
                    {
                        recorder.untimed::<()>(Err(Failure(format!(
                            "{SHARED_DIR}: listed {count} entries, {entries} expected"
                        ))));
                    }
                }
            })?;
        }
        self.step(None, "clean-up: the shared directory", per_thread, |worker, recorder| {
            for at in mine(worker) {
                recorder.untimed(worker.session.unlink(&format!("{SHARED_DIR}/e{at}")));
                recorder.progress.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        self.sessions[0].rmdir(SHARED_DIR).map_err(|Failure(message)| anyhow::anyhow!(message))
    }

    fn io_phases(&self) -> anyhow::Result<()> {
        let (size, block) = (self.args.io_size, self.args.block_size.min(self.args.io_size));
        let blocks = size.div_ceil(block);
        let fsync = self.args.fsync;
        let sequential_write = |worker: &Worker, recorder: &mut Recorder, timed: bool| {
            let Some(mut file) = recorder.untimed(worker.session.open_file(&worker.io_file(), Access::Create)) else {
                return;
            };
            let data = vec![0x5a_u8; block as usize];
            for at in 0..blocks {
                let offset = at * block;
                let len = block.min(size - offset) as usize;
                if recorder.call(timed, || file.write_at(offset, &data[..len])).is_none() {
                    break;
                }
            }
            if fsync {
                recorder.untimed(file.fsync());
            }
            recorder.untimed(file.close());
        };
        self.step(self.timed(Phase::Write), "write", blocks, |worker, recorder| {
            sequential_write(worker, recorder, self.runs(Phase::Write))
        })?;
        if self.runs(Phase::Read) {
            self.step(Some(Phase::Read), "read", blocks, |worker, recorder| {
                let Some(mut file) = recorder.untimed(worker.session.open_file(&worker.io_file(), Access::Read)) else {
                    return;
                };
                let mut buffer = vec![0_u8; block as usize];
                for at in 0..blocks {
                    let offset = at * block;
                    let len = block.min(size - offset) as usize;
                    match recorder.time(|| file.read_at(offset, &mut buffer[..len])) {
                        Some(read) if read == len => {}
                        Some(read) => {
                            recorder.untimed::<()>(Err(Failure(format!(
                                "{}: read {read} bytes at {offset}, {len} expected",
                                worker.io_file()
                            ))));
                            break;
                        }
                        None => break,
                    }
                }
                recorder.untimed(file.close());
            })?;
        }
        let small = self.args.random_size.min(size);
        let slots = size / small;
        let ops = self.args.random_ops;
        let seed = self.args.seed;
        for (phase, write) in [(Phase::RandomWrite, true), (Phase::RandomRead, false)] {
            if !self.runs(phase) {
                continue;
            }
            self.step(Some(phase), phase.name(), u64::from(ops), |worker, recorder| {
                let access = if write { Access::Update } else { Access::Read };
                let Some(mut file) = recorder.untimed(worker.session.open_file(&worker.io_file(), access)) else {
                    return;
                };
                let mut random = SplitMix(seed ^ u64::from(worker.index).wrapping_mul(0x9e37_79b9));
                let mut buffer = vec![0xa5_u8; small as usize];
                for _ in 0..ops {
                    let offset = random.below(slots) * small;
                    if write {
                        recorder.time(|| file.write_at(offset, &buffer));
                    } else {
                        recorder.time(|| file.read_at(offset, &mut buffer));
                    }
                }
                recorder.untimed(file.close());
            })?;
        }
        Ok(())
    }
}

/// A small seeded generator (SplitMix64) for the random offsets.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

fn progress_bar(what: &str, total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template("{prefix:>28} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(what.to_string());
    bar
}

fn machine() -> Machine {
    let read = |path: &str| std::fs::read_to_string(path).map(|text| text.trim().to_string()).unwrap_or_default();
    Machine {
        hostname: read("/proc/sys/kernel/hostname"),
        kernel: read("/proc/sys/kernel/osrelease"),
        cpus: std::thread::available_parallelism().map(|count| count.get()).unwrap_or(1),
    }
}

/// A name for this run's directory that no other run picks.
pub fn run_dir(tool: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{tool}-{}-{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// Runs the benchmark (on the calling thread, which must not be one of the runtime's workers)
/// and prints its report; fails if any call failed.
pub fn run(args: BenchArgs, server: &str, runtime: tokio::runtime::Handle) -> anyhow::Result<()> {
    if args.phases.iter().any(|phase| matches!(phase, Phase::Read | Phase::RandomRead | Phase::RandomWrite))
        && args.io_size < args.random_size
    {
        bail!("bench: --io-size must be at least --random-size");
    }
    let mut phases = if args.phases.is_empty() { Phase::ALL.to_vec() } else { args.phases.clone() };
    phases.sort();
    phases.dedup();
    let run_dir = run_dir("bench");
    let (sessions, clients, target, through, libraries): (Vec<Box<dyn Session>>, _, _, _, Vec<Client>) =
        if args.dirs.is_empty() {
            let mut sessions: Vec<Box<dyn Session>> = Vec::new();
            let mut clients = Vec::new();
            let root = format!("{}/{run_dir}", args.dir.trim_end_matches('/'));
            for index in 0..args.clients {
                let config =
                    ClientConfig { client_name: format!("rustre bench client {index}"), ..crate::client_config() };
                let client = runtime
                    .block_on(Client::connect_with(server, config))
                    .with_context(|| format!("connecting to {server}"))?;
                clients.push(client.clone());
                sessions.push(Box::new(LibrarySession::new(client, runtime.clone(), &root)));
            }
            runtime.block_on(clients[0].mkdir(&root, 0o755)).with_context(|| format!("making {root}"))?;
            (sessions, args.clients, format!("rustre at {server}, {}", args.dir), "library", clients)
        } else {
            for dir in &args.dirs {
                if !dir.is_dir() {
                    bail!("bench: {} is not a directory", dir.display());
                }
            }
            let first = args.dirs[0].join(&run_dir);
            std::fs::create_dir(&first).with_context(|| format!("making {}", first.display()))?;
            let sessions: Vec<Box<dyn Session>> =
                args.dirs.iter().map(|dir| Box::new(DirSession::new(dir.join(&run_dir))) as Box<dyn Session>).collect();
            let target = args.dirs.iter().map(|dir| dir.display().to_string()).collect::<Vec<_>>().join(" ");
            (sessions, args.dirs.len() as u32, target, "dirs", Vec::new())
        };
    if args.dirs.len() > 1 {
        wait_until_seen(&args.dirs, &run_dir)?;
    }
    let label = args.label.clone().unwrap_or_else(|| target.clone());
    let bench = Bench { args, sessions, run_dir, phases, reports: Mutex::default(), failures: AtomicU64::new(0) };
    let result = bench.run();
    // A session's root is the run directory itself.
    let cleanup = bench.sessions[0]
        .remove_all("")
        .map_err(|Failure(message)| anyhow::anyhow!("removing the run directory {}: {message}", bench.run_dir));
    for client in &libraries {
        client.close();
    }
    result?;
    cleanup?;
    let report = Report {
        label,
        target,
        through: through.to_string(),
        machine: machine(),
        threads: bench.args.threads,
        clients,
        files_per_thread: bench.args.files,
        readdir_entries: bench.args.readdir_entries,
        io_size: bench.args.io_size,
        block_size: bench.args.block_size,
        random_size: bench.args.random_size,
        phases: bench.reports.into_inner().expect("reports lock"),
        failures: bench.failures.into_inner(),
    };
    crate::report::print(&report, bench.args.json, human)?;
    if report.failures > 0 {
        eprintln!("rustre: bench: {} calls failed", report.failures);
        return Err(crate::Reported.into());
    }
    Ok(())
}

/// Checks that the directories are one directory: the run directory made through the first
/// shows in all of them.
fn wait_until_seen(dirs: &[PathBuf], run_dir: &str) -> anyhow::Result<()> {
    if let Err(dir) = crate::report::wait_until_shown(&dirs[1..], |dir| dir.join(run_dir).is_dir()) {
        let _ = std::fs::remove_dir(dirs[0].join(run_dir));
        bail!("bench: {} does not show what is made in {}: not one directory", dir.display(), dirs[0].display());
    }
    Ok(())
}

/// Formats a figure with three significant digits at most and thousands separators.
pub fn figure(value: f64) -> String {
    if value >= 100.0 {
        let rounded = value.round() as u64;
        let digits = rounded.to_string();
        let mut out = String::new();
        for (at, digit) in digits.chars().enumerate() {
            if at > 0 && (digits.len() - at).is_multiple_of(3) {
                out.push(',');
            }
            out.push(digit);
        }
        out
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn human(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "rustre bench: {} ({}), {} thread(s), {} client(s); {} files per thread, {} entries listed, {} bytes per thread in {}-byte blocks\n",
        report.label,
        report.through,
        report.threads,
        report.clients,
        report.files_per_thread,
        report.readdir_entries,
        report.io_size,
        report.block_size
    ));
    out.push_str(&format!(
        "machine: {}, Linux {}, {} CPUs\n\n",
        report.machine.hostname, report.machine.kernel, report.machine.cpus
    ));
    out.push_str(&format!(
        "{:<14} {:>9} {:>12} {:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}\n",
        "phase", "calls", "rate", "unit", "mean µs", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs", "requests"
    ));
    for phase in &report.phases {
        let requests = phase.requests.map(|count| count.to_string()).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<14} {:>9} {:>12} {:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}\n",
            phase.phase.name(),
            phase.calls,
            figure(phase.rate),
            phase.unit,
            figure(phase.latency_us.mean),
            figure(phase.latency_us.p50),
            figure(phase.latency_us.p90),
            figure(phase.latency_us.p99),
            figure(phase.latency_us.p999),
            figure(phase.latency_us.max),
            requests
        ));
        if phase.failures > 0 {
            out.push_str(&format!("  {} failed: {}\n", phase.failures, phase.quoted_failures.join("; ")));
        }
    }
    if report.failures > 0 {
        out.push_str(&format!("\n{} calls failed\n", report.failures));
    }
    out
}
