//! `rustre scale`: many sessions and a large namespace against a running server on this machine,
//! with the server's memory (resident set, from `/proc/PID/status`) read after each step, to
//! give its memory per namespace entry, per session and per lease.
//!
//! The steps, each measured after the previous one:
//! 1. *namespace*: `--populators` sessions with a small cache (so they hold few leases) make
//!    `--entries` empty files spread over `--dirs` directories, then close;
//! 2. *sessions*: `--sessions` sessions connect and stay connected;
//! 3. *leases*: each of them stats `--stats-per-session` entries, and so holds a lease on each
//!    name and on each inode's attributes (the client caps its cache at `CACHE_ENTRIES_MAX`
//!    entries and gives back the leases of what it evicts, so the server's lease table is bounded
//!    by sessions times that cap, whatever the clients do).
//!
//! Resident memory only grows in steps the allocator chooses, so the figures are estimates; large
//! counts make them good ones. The run's directory is left in place (removing a million entries
//! takes as long as making them): run it against a scratch server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use rustre_client::rustre_proto::OpenFlags;
use rustre_client::{Client, ClientConfig};
use serde::Serialize;

/// Cache entries of each populating session: enough for its walk, few leases.
const POPULATOR_CACHE_ENTRIES: usize = 64;

/// How often progress is written to stderr during a long step.
const PROGRESS_PERIOD: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// The server's process id (it must run on this machine): its memory is read from
    /// /proc/PID/status.
    #[arg(long, value_name = "PID")]
    server_pid: u32,
    /// Sessions connected at once in the session and lease steps.
    #[arg(long, default_value_t = 200, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    sessions: u32,
    /// Entries (empty files) in the namespace.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    entries: u64,
    /// Directories the entries are spread over.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    dirs: u32,
    /// Sessions making the entries, concurrently.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    populators: u32,
    /// Entries each session stats (and so holds leases on) in the lease step.
    #[arg(long, default_value_t = 5000, value_name = "N")]
    stats_per_session: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Step {
    step: &'static str,
    seconds: f64,
    /// Calls per second made in the step (creates, stats), if it made any.
    calls_per_second: Option<f64>,
    server_rss_bytes: u64,
    /// Leases the connected sessions hold at the end of the step (their own count).
    leases_held: u64,
}

#[derive(Serialize)]
struct ScaleReport {
    server: String,
    run_dir: String,
    sessions: u32,
    entries: u64,
    dirs: u32,
    stats_per_session: u64,
    steps: Vec<Step>,
    bytes_per_entry: f64,
    bytes_per_session: f64,
    bytes_per_lease: f64,
}

/// The server's resident memory, in bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("scale: reading {path}"))?;
    let line =
        status.lines().find(|line| line.starts_with("VmRSS:")).with_context(|| format!("scale: no VmRSS in {path}"))?;
    let kib: u64 = line.split_whitespace().nth(1).and_then(|field| field.parse().ok()).context("scale: VmRSS field")?;
    Ok(kib * 1024)
}

async fn connect(server: &str, sessions: u32, cache_entries_max: usize) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::new();
    for index in 0..sessions {
        let config =
            ClientConfig { client_name: format!("rustre-scale-{index}"), cache_entries_max, ..crate::client_config() };
        clients.push(Client::connect_with(server, config).await.with_context(|| format!("scale: session {index}"))?);
    }
    Ok(clients)
}

fn leases_held(clients: &[Client]) -> u64 {
    clients.iter().map(|client| client.stats().leases_held).sum()
}

/// Runs `work(session index, client, item)` for every item below `items`, item `i` by session
/// `i % clients.len()`, all sessions at once; reports progress on stderr.
async fn spread<F, Fut>(what: &str, clients: &[Client], items: u64, work: F) -> anyhow::Result<f64>
where
    F: Fn(Client, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = rustre_client::Result<()>> + Send,
{
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let work = Arc::new(work);
    let mut tasks = tokio::task::JoinSet::new();
    let count = clients.len() as u64;
    for (index, client) in clients.iter().enumerate() {
        let (client, done, work) = (client.clone(), done.clone(), work.clone());
        tasks.spawn(async move {
            let mut item = index as u64;
            while item < items {
                work(client.clone(), item).await?;
                done.fetch_add(1, Ordering::Relaxed);
                item += count;
            }
            Ok::<_, rustre_client::Error>(())
        });
    }
    let mut ticker = tokio::time::interval(PROGRESS_PERIOD);
    ticker.tick().await;
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(result) => result.context("scale: a task panicked")?.with_context(|| format!("scale: {what}"))?,
                None => break,
            },
            _ = ticker.tick() => {
                let made = done.load(Ordering::Relaxed);
                eprintln!("rustre scale: {what}: {made} of {items} ({:.0}/s)", made as f64 / started.elapsed().as_secs_f64());
            }
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

pub async fn run(args: ScaleArgs, server: &str) -> anyhow::Result<()> {
    if args.stats_per_session > args.entries {
        bail!("scale: --stats-per-session ({}) is more than --entries ({})", args.stats_per_session, args.entries);
    }
    let start_rss = rss(args.server_pid)?;
    let mut steps = Vec::new();
    steps.push(Step {
        step: "start",
        seconds: 0.0,
        calls_per_second: None,
        server_rss_bytes: start_rss,
        leases_held: 0,
    });

    // 1. The namespace.
    let populators = connect(server, args.populators, POPULATOR_CACHE_ENTRIES).await?;
    let run_dir = format!("/{}", crate::bench::run_dir("scale"));
    let root = populators[0].mkdir(&run_dir, 0o755).await.with_context(|| format!("scale: mkdir {run_dir}"))?;
    let mut dir_inos = Vec::new();
    for dir in 0..args.dirs {
        dir_inos.push(populators[0].mkdir_at(root.ino, format!("d{dir}").as_bytes(), 0o755).await?.ino);
    }
    let dir_inos = Arc::new(dir_inos);
    let seconds = {
        let dir_inos = dir_inos.clone();
        spread("creates", &populators, args.entries, move |client, item| {
            let parent = dir_inos[(item % dir_inos.len() as u64) as usize];
            async move {
                let flags = OpenFlags::READ | OpenFlags::CREATE | OpenFlags::EXCLUSIVE;
                client.open_at(parent, format!("f{item}").as_bytes(), flags, 0o644).await?.close().await
            }
        })
        .await?
    };
    for client in &populators {
        client.end().await;
    }
    drop(populators);
    // The server drops a closed session's leases when it sees the connection end.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let namespace_rss = rss(args.server_pid)?;
    steps.push(Step {
        step: "namespace",
        seconds,
        calls_per_second: Some(args.entries as f64 / seconds),
        server_rss_bytes: namespace_rss,
        leases_held: 0,
    });

    // 2. The sessions.
    let started = Instant::now();
    let clients = connect(server, args.sessions, rustre_client::CACHE_ENTRIES_MAX).await?;
    for client in &clients {
        client.stat(&run_dir).await?; // one call each, so every session has served a request
    }
    let sessions_rss = rss(args.server_pid)?;
    let leases_before = leases_held(&clients);
    steps.push(Step {
        step: "sessions",
        seconds: started.elapsed().as_secs_f64(),
        calls_per_second: None,
        server_rss_bytes: sessions_rss,
        leases_held: leases_before,
    });

    // 3. The leases: session s stats entries s*K .. s*K+K (wrapping), through their paths.
    let (per_session, entries, dirs, sessions) =
        (args.stats_per_session, args.entries, u64::from(args.dirs), u64::from(args.sessions));
    let stats = per_session * sessions;
    let run = run_dir.clone();
    let seconds = spread("stats", &clients, stats, move |client, item| {
        let (session, nth) = (item % sessions, item / sessions);
        let entry = (session * per_session + nth) % entries;
        let path = format!("{run}/d{}/f{entry}", entry % dirs);
        async move { client.stat(&path).await.map(|_| ()) }
    })
    .await?;
    let leases_rss = rss(args.server_pid)?;
    let leases = leases_held(&clients);
    steps.push(Step {
        step: "leases",
        seconds,
        calls_per_second: Some(stats as f64 / seconds),
        server_rss_bytes: leases_rss,
        leases_held: leases,
    });
    for client in &clients {
        client.end().await;
    }

    let per = |grown: u64, before: u64, count: u64| grown.saturating_sub(before) as f64 / count.max(1) as f64;
    let report = ScaleReport {
        server: server.to_string(),
        run_dir,
        sessions: args.sessions,
        entries: args.entries,
        dirs: args.dirs,
        stats_per_session: args.stats_per_session,
        bytes_per_entry: per(namespace_rss, start_rss, args.entries),
        bytes_per_session: per(sessions_rss, namespace_rss, u64::from(args.sessions)),
        bytes_per_lease: per(leases_rss, sessions_rss, leases.saturating_sub(leases_before)),
        steps,
    };
    crate::report::print(&report, args.json, human)
}

fn human(report: &ScaleReport) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut out = format!(
        "rustre scale: {} sessions, {} entries in {} directories, {} stats per session; server {}, run directory {}\n\n",
        report.sessions, report.entries, report.dirs, report.stats_per_session, report.server, report.run_dir
    );
    out +=
        &format!("{:<10} {:>9} {:>12} {:>14} {:>12}\n", "step", "seconds", "calls/s", "server RSS MiB", "leases held");
    for step in &report.steps {
        let rate = step.calls_per_second.map_or("-".to_string(), crate::bench::figure);
        out += &format!(
            "{:<10} {:>9.1} {:>12} {:>14.1} {:>12}\n",
            step.step,
            step.seconds,
            rate,
            mib(step.server_rss_bytes),
            step.leases_held
        );
    }
    out += &format!(
        "\nserver memory: {:.0} bytes per namespace entry, {:.0} bytes per session, {:.0} bytes per lease\n",
        report.bytes_per_entry, report.bytes_per_session, report.bytes_per_lease
    );
    out
}
