//! `rustre sim`: runs the deterministic simulator (`rustre-sim`) for one seed (a replay) or a
//! range of seeds (exploration), and says which seeds failed and how to replay them.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use rustre_sim::{Bugs, Faults, SimConfig, SimReport};

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Run this one seed (a replay: the same seed gives the same run).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Explore a range of seeds, `A..B` (B excluded); the default is 0..100.
    #[arg(long, value_name = "A..B")]
    seeds: Option<String>,
    /// Calls each task of each client makes.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    steps: u32,
    /// Simulated clients (each a host with its own sessions).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
    clients: u32,
    /// Tasks of each client making calls at once through its one session and cache (each makes
    /// --steps calls).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    tasks: u32,
    /// How many of the clients are mounts: their stats go through a model of the kernel's
    /// caches fed by the mount's own revocation hooks, and their caches are small.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=32))]
    mounts: u32,
    /// Most think time of a client between two calls, in milliseconds.
    #[arg(long, default_value_t = rustre_sim::THINK_MAX_DEFAULT.as_millis() as u64, value_name = "MS")]
    think_ms: u64,
    /// Most latency of one message, in milliseconds.
    #[arg(long, default_value_t = 20, value_name = "MS")]
    latency_ms: u64,
    /// Chance per simulated second that a client is cut off from the server.
    #[arg(long, default_value_t = 0.1, value_name = "P")]
    partition_rate: f64,
    /// Longest partition, in seconds (the lease timeout is 5).
    #[arg(long, default_value_t = 15, value_name = "S")]
    partition_max: u64,
    /// Chance per write on a client's connection that it breaks.
    #[arg(long, default_value_t = 0.002, value_name = "P")]
    break_rate: f64,
    /// Chance per call that the client crashes first (drops its session, files open).
    #[arg(long, default_value_t = 0.005, value_name = "P")]
    crash_rate: f64,
    /// Chance per simulated second that the server crashes (it restarts from its store).
    #[arg(long, default_value_t = 0.02, value_name = "P")]
    server_crash_rate: f64,
    /// Share of the server crashes that are power losses in the middle of a commit (the disk
    /// keeps what was synced and part of the rest).
    #[arg(long, default_value_t = 0.5, value_name = "P")]
    power_loss_share: f64,
    /// File data on the simulated disk too, so power losses hit it as well as the metadata (off
    /// by default: it finds a size made durable before its data, fixed by a later issue)
    #[arg(long)]
    data_power_loss: bool,
    /// Chance per simulated second that every message between a client and the server is held
    /// for a while (a long delay, up to --delay-max-ms), then delivered.
    #[arg(long, default_value_t = rustre_sim::DELAY_RATE_DEFAULT, value_name = "P")]
    delay_rate: f64,
    /// Longest such delay, in milliseconds (the clients trust a lease for 2500 without news).
    #[arg(long, default_value_t = rustre_sim::DELAY_MAX_DEFAULT.as_millis() as u64, value_name = "MS")]
    delay_max_ms: u64,
    /// Chance per simulated second that one direction of a client's link fails (messages
    /// dropped or held) while the other flows.
    #[arg(long, default_value_t = rustre_sim::ONEWAY_RATE_DEFAULT, value_name = "P")]
    oneway_rate: f64,
    /// Longest one-way fault, in milliseconds.
    #[arg(long, default_value_t = rustre_sim::ONEWAY_MAX_DEFAULT.as_millis() as u64, value_name = "MS")]
    oneway_max_ms: u64,
    /// Share of the one-way faults that hold messages (the rest drop them).
    #[arg(long, default_value_t = 0.5, value_name = "P")]
    oneway_hold_share: f64,
    /// No partitions, delays, one-way faults, breaks or crashes (latency still varies up to
    /// --latency-ms); then no client may lose its link or session.
    #[arg(long)]
    no_faults: bool,
    /// Print every call of the run with its outcome (with --seed).
    #[arg(long, requires = "seed")]
    history: bool,
    /// Run each seed twice and fail if the two histories differ (determinism check).
    #[arg(long)]
    twice: bool,
    /// Plant a bug, to see the checker find it (tests of the simulator).
    #[arg(long, value_enum, hide = true)]
    plant: Option<Plant>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Plant {
    /// The server answers a change before its revocations are acknowledged.
    AckBeforeRevoke,
    /// The library does not retry by name after a stale inode id.
    NoStaleRetry,
    /// The server acknowledges changes it never makes durable.
    AckBeforeDurable,
    /// Connections drop now and then with no fault behind them.
    DropConnections,
    /// A mount's client gives leases back without dropping its kernel's copies first.
    ReleaseBehindKernel,
    /// A mount's revocation hook never reaches its kernel.
    SkipKernelNotifications,
}

fn parse_range(text: &str) -> anyhow::Result<std::ops::Range<u64>> {
    let (start, end) = text.split_once("..").context("--seeds takes A..B")?;
    let start: u64 = start.trim().parse().context("--seeds: the start is not a number")?;
    let end: u64 = end.trim().parse().context("--seeds: the end is not a number")?;
    if end <= start {
        bail!("--seeds {text}: the range is empty");
    }
    Ok(start..end)
}

impl SimArgs {
    fn config(&self, seed: u64) -> SimConfig {
        let faults = if self.no_faults {
            Faults { latency_max: Duration::from_millis(self.latency_ms), ..Faults::none() }
        } else {
            Faults {
                latency_max: Duration::from_millis(self.latency_ms),
                partition_rate: self.partition_rate,
                partition_max: Duration::from_secs(self.partition_max),
                break_rate: self.break_rate,
                crash_rate: self.crash_rate,
                server_crash_rate: self.server_crash_rate,
                server_down_max: Duration::from_secs(2),
                power_loss_share: self.power_loss_share,
                data_power_loss: self.data_power_loss,
                delay_rate: self.delay_rate,
                delay_max: Duration::from_millis(self.delay_max_ms),
                oneway_rate: self.oneway_rate,
                oneway_max: Duration::from_millis(self.oneway_max_ms),
                oneway_hold_share: self.oneway_hold_share,
            }
        };
        let bugs = Bugs {
            ack_before_revoke: matches!(self.plant, Some(Plant::AckBeforeRevoke)),
            no_stale_retry: matches!(self.plant, Some(Plant::NoStaleRetry)),
            ack_before_durable: matches!(self.plant, Some(Plant::AckBeforeDurable)),
            drop_connections: matches!(self.plant, Some(Plant::DropConnections)),
            release_behind_kernel: matches!(self.plant, Some(Plant::ReleaseBehindKernel)),
            skip_kernel_notifications: matches!(self.plant, Some(Plant::SkipKernelNotifications)),
        };
        let think_max = Duration::from_millis(self.think_ms);
        SimConfig {
            seed,
            clients: self.clients,
            tasks: self.tasks,
            steps: self.steps,
            mounts: self.mounts,
            think_max,
            faults,
            bugs,
        }
    }

    /// The command line that replays `seed` with the same options.
    fn replay(&self, seed: u64) -> String {
        let mut line = format!(
            "rustre sim --seed {seed} --steps {} --clients {} --tasks {} --mounts {} --think-ms {}",
            self.steps, self.clients, self.tasks, self.mounts, self.think_ms
        );
        if self.no_faults {
            line += &format!(" --no-faults --latency-ms {}", self.latency_ms);
        } else {
            line += &format!(
                " --latency-ms {} --partition-rate {} --partition-max {} --break-rate {} --crash-rate {} --server-crash-rate {} --power-loss-share {} --delay-rate {} --delay-max-ms {} --oneway-rate {} --oneway-max-ms {} --oneway-hold-share {}",
                self.latency_ms,
                self.partition_rate,
                self.partition_max,
                self.break_rate,
                self.crash_rate,
                self.server_crash_rate,
                self.power_loss_share,
                self.delay_rate,
                self.delay_max_ms,
                self.oneway_rate,
                self.oneway_max_ms,
                self.oneway_hold_share
            );
        }
        if self.data_power_loss {
            line += " --data-power-loss";
        }
        if let Some(plant) = self.plant {
            line += &format!(" --plant {}", plant.to_possible_value().expect("a visible value").get_name());
        }
        line
    }
}

/// Runs one seed; a panic inside the simulation (an assertion of the server, client or cache)
/// is a failure of that seed, not of the tool.
fn run_seed(args: &SimArgs, seed: u64) -> Result<SimReport, String> {
    let config = args.config(seed);
    let run = std::panic::catch_unwind(|| rustre_sim::run(&config));
    let report = match run {
        Ok(Ok(report)) => report,
        Ok(Err(error)) => return Err(error.to_string()),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "a panic".into());
            return Err(format!("panicked: {message}"));
        }
    };
    if args.twice {
        let again = rustre_sim::run(&config).map_err(|error| error.to_string())?;
        if again.fingerprint() != report.fingerprint() {
            let first = report
                .history
                .iter()
                .zip(&again.history)
                .position(|(one, two)| format!("{one:?}") != format!("{two:?}"));
            let at = first.unwrap_or(report.history.len().min(again.history.len()));
            let event = |history: &[rustre_sim::history::Event]| {
                history.get(at).map_or_else(|| "nothing (the run ended)".to_string(), |event| format!("{event}"))
            };
            return Err(format!(
                "not deterministic: two runs of seed {seed} gave different histories, from event {at}: {} against {}",
                event(&report.history),
                event(&again.history)
            ));
        }
    }
    Ok(report)
}

/// The faults a run met, per class, as one line.
fn faults_seen(stats: &rustre_sim::SimStats) -> String {
    format!(
        "{} partitions, {} long delays, {} one-way drops, {} one-way holds, {} broken connections, {} client crashes, {} server crashes ({} power losses)",
        stats.partitions,
        stats.delays,
        stats.oneway_drops,
        stats.oneway_holds,
        stats.breaks,
        stats.crashes,
        stats.server_crashes,
        stats.power_losses
    )
}

/// Runs outside any async runtime: every simulated host has its own.
pub fn run(args: SimArgs) -> anyhow::Result<bool> {
    let seeds = match (&args.seed, &args.seeds) {
        (Some(seed), _) => *seed..*seed + 1,
        (None, Some(range)) => parse_range(range)?,
        (None, None) => 0..100,
    };
    let started = Instant::now();
    let (mut passed, mut failed) = (0u64, Vec::new());
    let mut totals = rustre_sim::SimStats::default();
    for seed in seeds.clone() {
        match run_seed(&args, seed) {
            Ok(report) => {
                let stats = &report.stats;
                if args.seed.is_some() {
                    if args.history {
                        for event in &report.history {
                            println!("{event}");
                        }
                    }
                    println!(
                        "seed {seed}: {} calls ({} ok, {} errors, {} unknown), {} sessions ({} replaced), {} links lost; faults: {}; {:.1} s simulated, history {:016x}",
                        stats.calls,
                        stats.ok,
                        stats.errors,
                        stats.unknown,
                        stats.sessions,
                        stats.sessions_replaced,
                        stats.links_lost,
                        faults_seen(stats),
                        stats.simulated.as_secs_f64(),
                        report.fingerprint()
                    );
                }
                totals.calls += stats.calls;
                totals.ok += stats.ok;
                totals.errors += stats.errors;
                totals.unknown += stats.unknown;
                totals.partitions += stats.partitions;
                totals.delays += stats.delays;
                totals.oneway_drops += stats.oneway_drops;
                totals.oneway_holds += stats.oneway_holds;
                totals.breaks += stats.breaks;
                totals.crashes += stats.crashes;
                totals.server_crashes += stats.server_crashes;
                totals.power_losses += stats.power_losses;
                totals.sessions += stats.sessions;
                totals.sessions_replaced += stats.sessions_replaced;
                totals.links_lost += stats.links_lost;
                totals.kernel_hits += stats.kernel_hits;
                totals.simulated += stats.simulated;
                if report.passed() {
                    passed += 1;
                } else {
                    println!("seed {seed}: FAILED");
                    for violation in &report.violations {
                        println!("  {violation}");
                    }
                    println!("  replay: {}", args.replay(seed));
                    failed.push(seed);
                }
            }
            Err(error) => {
                println!("seed {seed}: FAILED: {error}");
                println!("  replay: {}", args.replay(seed));
                failed.push(seed);
            }
        }
    }
    println!(
        "{} seeds in {:.1} s: {passed} passed, {} failed; {} calls ({} unknown), {} stats answered by a model kernel, {} sessions ({} replaced), {} links lost; faults: {}; {:.0} s simulated",
        seeds.end - seeds.start,
        started.elapsed().as_secs_f64(),
        failed.len(),
        totals.calls,
        totals.unknown,
        totals.kernel_hits,
        totals.sessions,
        totals.sessions_replaced,
        totals.links_lost,
        faults_seen(&totals),
        totals.simulated.as_secs_f64()
    );
    if !failed.is_empty() {
        println!("failed seeds: {failed:?}");
    }
    Ok(failed.is_empty())
}
