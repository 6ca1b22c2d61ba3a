//! The simulator in CI: a few hundred seeds with every fault, a replay, and planted bugs that
//! the checker must find. A failure names its seed; `rustre sim --seed N` replays it.

use rustre_sim::{Bugs, Faults, SimConfig, SimReport, ViolationKind};

fn run(config: &SimConfig) -> SimReport {
    rustre_sim::run(config).unwrap_or_else(|error| panic!("seed {}: {error}", config.seed))
}

fn failures<'a>(reports: impl IntoIterator<Item = &'a SimReport>) -> Vec<String> {
    reports
        .into_iter()
        .filter(|report| !report.passed())
        .map(|report| {
            let violations: Vec<String> = report.violations.iter().map(ToString::to_string).collect();
            format!("seed {}: {}", report.seed, violations.join("; "))
        })
        .collect()
}

/// Seeds CI explores with every fault on; `rustre sim --seeds A..B` explores more.
const CI_SEEDS: u64 = 300;

#[test]
fn a_few_hundred_seeds_with_faults_are_linearizable() {
    let reports: Vec<SimReport> = (0..CI_SEEDS).map(|seed| run(&SimConfig::new(seed))).collect();
    let failed = failures(&reports);
    assert!(failed.is_empty(), "{} of {CI_SEEDS} seeds failed:\n{}", failed.len(), failed.join("\n"));
    // The runs did meet the faults they are meant to survive.
    let total = |stat: fn(&SimReport) -> u64| reports.iter().map(stat).sum::<u64>();
    assert!(total(|report| report.stats.partitions) > 0, "no partition in {CI_SEEDS} seeds");
    assert!(total(|report| report.stats.breaks) > 0, "no broken connection in {CI_SEEDS} seeds");
    assert!(total(|report| report.stats.crashes) > 0, "no client crash in {CI_SEEDS} seeds");
    assert!(total(|report| report.stats.server_crashes) > 0, "no server crash in {CI_SEEDS} seeds");
    assert!(total(|report| report.stats.power_losses) > 0, "no power loss mid-commit in {CI_SEEDS} seeds");
    assert!(total(|report| report.stats.unknown) > 0, "no call lost to a fault in {CI_SEEDS} seeds");
    assert!(total(|report| report.stats.delays) > 0, "no long delay in {CI_SEEDS} seeds");
    assert!(total(|report| report.stats.oneway_drops) > 0, "no one-way drop in {CI_SEEDS} seeds");
    assert!(total(|report| report.stats.oneway_holds) > 0, "no one-way hold in {CI_SEEDS} seeds");
    assert!(total(|report| report.stats.sessions_replaced) > 0, "no session replaced in {CI_SEEDS} seeds");
}

/// Runs 20 seeds with only `faults` (and think times long enough for runs to last), and
/// returns their reports, all of which must pass.
fn only(faults: Faults) -> Vec<SimReport> {
    let think_max = std::time::Duration::from_millis(200);
    let reports: Vec<SimReport> =
        (0..20).map(|seed| run(&SimConfig { faults: faults.clone(), think_max, ..SimConfig::new(seed) })).collect();
    let failed = failures(&reports);
    assert!(failed.is_empty(), "{faults:?}:\n{}", failed.join("\n"));
    reports
}

#[test]
fn delays_past_the_lease_timeout_cost_sessions_and_stay_linearizable() {
    // Every message of a link held for up to 6 s: past the clients' trust bound (2.5 s), and
    // past the lease timeout (5 s), so a revocation or ping held that long gets its client
    // evicted: sessions replaced show the holds really held.
    assert!(rustre_sim::DELAY_MAX_DEFAULT > rustre_sim::LEASE_TIMEOUT);
    let faults = Faults { delay_rate: 0.5, delay_max: rustre_sim::DELAY_MAX_DEFAULT, ..Faults::none() };
    let reports = only(faults);
    let total = |stat: fn(&SimReport) -> u64| reports.iter().map(stat).sum::<u64>();
    assert!(total(|report| report.stats.delays) > 0, "no delay");
    assert!(total(|report| report.stats.sessions_replaced) > 0, "no delay cost a session");
}

#[test]
fn one_way_faults_cost_sessions_and_stay_linearizable() {
    // One direction dropped, or held, while the other flows, for up to 12 s (past the ping
    // timeout and the client's silence limit): the server evicts a client it stops hearing, the
    // client drops a server it stops hearing. Drops and holds apart, so that each shows it acts.
    for (hold_share, what) in [(0.0, "drop"), (1.0, "hold")] {
        let oneway_max = rustre_sim::ONEWAY_MAX_DEFAULT;
        let faults = Faults { oneway_rate: 0.5, oneway_max, oneway_hold_share: hold_share, ..Faults::none() };
        let reports = only(faults);
        let total = |stat: fn(&SimReport) -> u64| reports.iter().map(stat).sum::<u64>();
        let faults = total(|report| report.stats.oneway_drops + report.stats.oneway_holds);
        assert!(faults > 0, "no one-way {what}");
        assert!(total(|report| report.stats.sessions_replaced) > 0, "no one-way {what} cost a session");
        assert!(total(|report| report.stats.unknown) > 0, "no call lost to a one-way {what}");
    }
}

/// Asserts that a run without faults lost nothing: every call has a known outcome, no client
/// saw its link close, and each client had one session throughout.
fn assert_lost_nothing(report: &SimReport, clients: u32) {
    let stats = &report.stats;
    let seed = report.seed;
    assert_eq!(stats.unknown, 0, "seed {seed}: calls of unknown outcome without a fault");
    assert_eq!(stats.links_lost, 0, "seed {seed}: links lost without a fault");
    assert_eq!(stats.sessions_replaced, 0, "seed {seed}: sessions replaced without a fault");
    assert_eq!(stats.sessions, u64::from(clients), "seed {seed}: sessions opened again without a fault");
}

/// Asserts that no run of `reports` found anything, and that the checker gave up on at most
/// `give_ups_max` of them. Histories of many clients, or of tasks sharing a client, now and then
/// take the check past `CHECK_STATES_MAX`, and which seeds do moves with any change to the
/// schedules; a give-up is neither a pass nor a find.
fn assert_none_found(reports: &[SimReport], give_ups_max: usize) {
    let gave_up = |report: &SimReport| {
        !report.passed() && report.violations.iter().all(|violation| violation.kind == ViolationKind::CheckerGaveUp)
    };
    let failed = failures(reports.iter().filter(|report| !gave_up(report)));
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    let undecided: Vec<u64> = reports.iter().filter(|report| gave_up(report)).map(|report| report.seed).collect();
    assert!(
        undecided.len() <= give_ups_max,
        "the checker gave up on seeds {undecided:?}: more than {give_ups_max} of {} undecided",
        reports.len()
    );
    if !undecided.is_empty() {
        eprintln!("the checker gave up on seeds {undecided:?} (neither a pass nor a find)");
    }
}

/// Six library clients (no mount: with one, the histories of seeds 1 and 3 are beyond the
/// checker's `CHECK_STATES_MAX`; mounts are checked by every other run). The checker gave up
/// on 2 of 300 such seeds when this was written.
#[test]
fn fault_free_seeds_are_linearizable_with_many_clients() {
    let config = |seed| SimConfig { clients: 6, steps: 100, mounts: 0, faults: Faults::none(), ..SimConfig::new(seed) };
    let reports: Vec<SimReport> = (0..40).map(|seed| run(&config(seed))).collect();
    assert_none_found(&reports, 2);
    for report in &reports {
        assert_lost_nothing(report, 6);
    }
}

#[test]
fn tasks_sharing_one_client_are_linearizable_without_faults() {
    // Three tasks per client, each making its calls through the client's one session and cache:
    // lookups shared between them, a create waiting for the same cache's unlink, revocations
    // racing grants to that cache. Nothing is lost, and every task makes its calls.
    let config = |seed| SimConfig { clients: 2, tasks: 3, steps: 40, faults: Faults::none(), ..SimConfig::new(seed) };
    let reports: Vec<SimReport> = (0..10).map(|seed| run(&config(seed))).collect();
    let failed = failures(&reports);
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    for report in &reports {
        assert_lost_nothing(report, 2);
        assert_eq!(report.stats.calls, 2 * 3 * 40, "seed {}: every task made its calls", report.seed);
    }
}

/// Tasks sharing a client, with every fault on: a session lost or replaced under three tasks
/// at once, resends of several slots, a mount's kernel shared by them. The checker gave up on 2
/// of 200 such seeds when this was written (`rustre sim --seeds 0..200 --clients 2 --tasks 3
/// --steps 40`), and found nothing on the others.
#[test]
fn tasks_sharing_one_client_are_linearizable_with_faults() {
    let config = |seed| SimConfig { clients: 2, tasks: 3, steps: 40, ..SimConfig::new(seed) };
    let reports: Vec<SimReport> = (0..30).map(|seed| run(&config(seed))).collect();
    assert_none_found(&reports, 2);
    let total = |stat: fn(&SimReport) -> u64| reports.iter().map(stat).sum::<u64>();
    assert!(total(|report| report.stats.sessions_replaced) > 0, "no session replaced in 30 seeds");
    assert!(total(|report| report.stats.unknown) > 0, "no call lost to a fault in 30 seeds");
}

#[test]
fn a_run_without_faults_notices_a_dropped_connection() {
    // A connection dropped with no fault behind it (a regression that loses links or sessions)
    // must fail a run without faults; the same configuration without it passes and loses
    // nothing. Before the outcome rules were strict, such runs passed: their failed calls were
    // taken as `Unknown`, and resumed sessions went unnoticed.
    let bugs = Bugs { drop_connections: true, ..Bugs::default() };
    let found = planted_and_control(crowded, bugs, Finding::Found(ViolationKind::SessionLost));
    let seed = found.expect("no seed found the dropped connections with a passing control");
    assert_lost_nothing(&run(&crowded(seed, Bugs::default())), crowded(seed, bugs).clients);
}

#[test]
fn one_seed_replays_exactly() {
    for seed in [7, 1234] {
        let first = run(&SimConfig::new(seed));
        let second = run(&SimConfig::new(seed));
        assert_eq!(format!("{:?}", first.history), format!("{:?}", second.history), "seed {seed}");
        assert_eq!(first.stats, second.stats, "seed {seed}");
        assert!(first.history.len() > 100, "seed {seed} did something");
    }
    let other = run(&SimConfig::new(8));
    assert_ne!(other.fingerprint(), run(&SimConfig::new(7)).fingerprint(), "another seed, another run");
}

/// Seeds within which each planted bug must be found.
const PLANTED_SEEDS_MAX: u64 = 100;

/// How one run ended, as a planted-bug test judges it.
#[derive(Debug, PartialEq, Eq)]
enum Finding {
    Passed,
    /// A violation of this kind (the first that is not the checker giving up).
    Found(ViolationKind),
    /// The checker gave up and nothing else was wrong: neither a pass nor a find.
    GaveUp,
    /// The run panicked (an invariant the client or server asserts) or failed to run.
    Panicked,
}

fn finding(config: &SimConfig) -> Finding {
    // A broken invariant panics inside the run (turmoil passes it on).
    match std::panic::catch_unwind(|| rustre_sim::run(config)) {
        Ok(Ok(report)) if report.passed() => Finding::Passed,
        Ok(Ok(report)) => report
            .violations
            .iter()
            .map(|violation| violation.kind)
            .find(|&kind| kind != ViolationKind::CheckerGaveUp)
            .map_or(Finding::GaveUp, Finding::Found),
        Ok(Err(_)) | Err(_) => Finding::Panicked,
    }
}

/// The first seed below `PLANTED_SEEDS_MAX` on which the run with `bugs` fails with `expected`
/// and the control, the same configuration with no bug, passes: the find is the bug's, not the
/// configuration's (a checker that gives up, a stall the bug did not cause).
fn planted_and_control(config: impl Fn(u64, Bugs) -> SimConfig, bugs: Bugs, expected: Finding) -> Option<u64> {
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    let found = (0..PLANTED_SEEDS_MAX).find(|&seed| {
        let planted = finding(&config(seed, bugs));
        let hit = planted == expected && finding(&config(seed, Bugs::default())) == Finding::Passed;
        seen.push(planted);
        hit
    });
    eprintln!("{bugs:?}: found on seed {found:?} in {:?}; before it: {seen:?}", started.elapsed());
    found
}

/// Five clients and little think time: more caches, and more calls close together, for a
/// premature answer to be seen stale.
fn crowded(seed: u64, bugs: Bugs) -> SimConfig {
    let think_max = std::time::Duration::from_millis(5);
    SimConfig { bugs, faults: Faults::none(), clients: 5, think_max, steps: 60, ..SimConfig::new(seed) }
}

#[test]
fn the_checker_finds_a_change_acknowledged_before_its_revocations() {
    let bugs = Bugs { ack_before_revoke: true, ..Bugs::default() };
    let found = planted_and_control(crowded, bugs, Finding::Found(ViolationKind::NotLinearizable));
    assert!(found.is_some(), "no seed below {PLANTED_SEEDS_MAX} found the planted bug with a passing control");
}

#[test]
fn power_losses_find_changes_acknowledged_before_they_are_durable() {
    // Process crashes keep every write; only a power loss (mid-commit or between commits) shows
    // changes answered before they were synced. Default think times: runs long enough in
    // simulated time for the crashes to come.
    let config = |seed, bugs| SimConfig {
        bugs,
        faults: Faults {
            server_crash_rate: 0.5,
            power_loss_share: 1.0,
            server_down_max: std::time::Duration::from_secs(1),
            ..Faults::none()
        },
        ..SimConfig::new(seed)
    };
    let bugs = Bugs { ack_before_durable: true, ..Bugs::default() };
    let found = planted_and_control(config, bugs, Finding::Found(ViolationKind::NotLinearizable));
    assert!(found.is_some(), "no seed below {PLANTED_SEEDS_MAX} found the planted bug with a passing control");
}

#[test]
fn the_checker_finds_a_missing_retry_by_name() {
    let bugs = Bugs { no_stale_retry: true, ..Bugs::default() };
    let found = planted_and_control(crowded, bugs, Finding::Found(ViolationKind::NotLinearizable));
    assert!(found.is_some(), "no seed below {PLANTED_SEEDS_MAX} found the planted bug with a passing control");
}

/// A mount whose client gives leases back without dropping its kernel's copies first (race 13):
/// the model kernel then answers stats from copies nobody revokes any more. Every client is a
/// mount, at the default pace (a copy must outlive the give-back and a change by another).
#[test]
fn the_checker_finds_leases_given_back_behind_the_kernels_back() {
    let mounts = |seed, bugs| SimConfig { mounts: 3, bugs, faults: Faults::none(), ..SimConfig::new(seed) };
    let bugs = Bugs { release_behind_kernel: true, ..Bugs::default() };
    let found = planted_and_control(mounts, bugs, Finding::Found(ViolationKind::NotLinearizable));
    assert!(found.is_some(), "no seed below {PLANTED_SEEDS_MAX} found the planted bug with a passing control");
}

/// A mount whose revocation hook never reaches its kernel (no epoch bump, no attribute drop).
#[test]
fn the_checker_finds_kernel_copies_that_revocations_do_not_reach() {
    let mounts = |seed, bugs| SimConfig { mounts: 3, ..crowded(seed, bugs) };
    let bugs = Bugs { skip_kernel_notifications: true, ..Bugs::default() };
    let found = planted_and_control(mounts, bugs, Finding::Found(ViolationKind::NotLinearizable));
    assert!(found.is_some(), "no seed below {PLANTED_SEEDS_MAX} found the planted bug with a passing control");
}

/// Seeds on which the simulator found a bug, each fixed since with a test of its own (named in
/// the comment); kept here so the same run is checked again.
#[test]
fn seeds_that_found_bugs_pass() {
    // Seed 1799 (3 clients, every fault): a refused mkdir (EEXIST) answered before another
    // client's revocation of the name; coherence.rs,
    // a_refused_change_waits_for_revocations_in_flight_on_its_name.
    // They ran before the long delays and one-way faults existed: the same faults again.
    let found = |seed| SimConfig { faults: Faults::without_link_delays(), ..SimConfig::new(seed) };
    let mut reports = vec![run(&found(1799))];
    // Seed 15 (6 clients, 150 steps, no faults): ESTALE from a stale directory met during the
    // walk to a parent; estale.rs, a_stale_directory_met_during_the_walk_retries_by_name. Seed
    // 208 (every fault): an O_CREAT open of a symlink unlinked meanwhile answered ENOENT;
    // estale.rs, open_creat_of_a_symlink_unlinked_meanwhile_creates_the_name.
    let six = SimConfig { clients: 6, steps: 150, faults: Faults::none(), ..SimConfig::new(15) };
    reports.push(run(&six));
    reports.push(run(&found(208)));
    // Seed 81 (every fault, clients reconnecting): a resend after a server restart looked its
    // name up again and re-created a file another client had removed (recovery.rs,
    // `recorded_answer`). Seed 776: a mkdir by id into a directory renamed over but still held
    // open (by a crashed client's detached session) answered ENOENT instead of ESTALE, so the
    // client did not walk the path again (namespace.rs, `usable_directory`).
    reports.push(run(&found(81)));
    reports.push(run(&found(776)));
    // Seed 1392: an evicted session whose end a server crash cut between giving back its
    // handles and forgetting it resumed after the restart, and a resent exclusive create ran
    // twice (recovery.rs, `end_session` now forgets first).
    reports.push(run(&found(1392)));
    // Seed 1268: the checker's fault, not the server's. A stat whose walk was cut by a partition
    // looked up its last name 300 ticks after its first, inside a directory renamed meanwhile;
    // the model took each stretch of a walk between symlinks as one step (`phases.rs`, `hops`).
    // Seed 1277: a symlink's resend after a power loss answered ESTALE (the link it made was
    // removed before the crash), and the client retried it by name, making it twice (the `ONCE`
    // row now keeps the attributes of the answer; recovery.rs, `recorded_answer`).
    reports.push(run(&found(1268)));
    reports.push(run(&found(1277)));
    let failed = failures(&reports);
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
