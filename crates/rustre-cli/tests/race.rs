//! `rustre race`, the real binary against a real `rustre server` process (and against local
//! directories): a clean run finds no violation, and a control run against a server that answers
//! ESTALE on purpose finds them. Every child process is killed when its guard drops, so a failing
//! test leaves nothing running.

mod common;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use common::{Process, number, spawn_server};
use serde_json::Value;

/// What one `rustre race --json` run gave.
struct Race {
    status: ExitStatus,
    report: Value,
    stderr: String,
}

/// Runs `rustre race ARGS --seconds S --json`, its output into files (no pipe to fill up).
fn race(scratch: &Path, seconds: u64, args: &[&str]) -> Race {
    let seconds_text = seconds.to_string();
    let mut all = vec!["race"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--seconds", &seconds_text, "--json"]);
    let mut race = Process::spawn(&all, scratch, "race");
    // The tool stops by itself at `seconds`, and gives up on hung threads 30 s later.
    let status = race.wait(Duration::from_secs(seconds + 60));
    let (stdout_path, stderr_path) = (scratch.join("race.stdout"), scratch.join("race.stderr"));
    let stdout = std::fs::read_to_string(&stdout_path).expect("race output");
    let stderr = std::fs::read_to_string(&stderr_path).expect("race errors");
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|error| panic!("race --json printed no JSON ({error}): {stdout}\nstderr: {stderr}"));
    Race { status, report, stderr }
}

/// The ops of the report as (role, op) -> the op's object.
fn ops(report: &Value) -> Vec<(String, String, &Value)> {
    report["ops"]
        .as_array()
        .expect("ops")
        .iter()
        .map(|op| (op["role"].as_str().unwrap().to_string(), op["op"].as_str().unwrap().to_string(), op))
        .collect()
}

/// Every role made every one of its ops at least once, and the exclusive creators ran rounds.
fn assert_every_role_worked(report: &Value, expected_ops: &[(&str, &str)]) {
    let ops = ops(report);
    for (role, op) in expected_ops {
        let found = ops.iter().find(|(r, o, _)| r == role && o == op);
        let (_, _, found) = found.unwrap_or_else(|| panic!("no {role} {op} in the report: {report:#}"));
        assert!(number(&found["count"], "count") > 0, "{role} {op} never ran: {report:#}");
        assert!(number(&found["ok"], "ok") > 0, "{role} {op} never succeeded: {report:#}");
    }
    assert!(number(&report["exclusive_rounds"]["rounds"], "rounds") > 0, "no exclusive round: {report:#}");
}

const RUSTRE_OPS: &[(&str, &str)] = &[
    ("creator", "open"),
    ("creator", "write"),
    ("creator", "close"),
    ("exclusive", "open"),
    ("exclusive", "close"),
    ("exclusive", "unlink"),
    ("unlinker", "unlink"),
    ("renamer", "create"),
    ("renamer", "write"),
    ("renamer", "close"),
    ("renamer", "rename"),
    ("reader", "open"),
    ("reader", "close"),
    ("reader", "stat"),
];

/// The acceptance run: 20 s, two client sessions, every role, no violation.
#[test]
fn two_clients_every_role_twenty_seconds_without_violation() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let (_server, address) = spawn_server(scratch.path(), &[]);
    let run = race(scratch.path(), 20, &["--server", &address, "--clients", "2"]);
    let report = &run.report;
    assert_eq!(report["violations"], 0, "violations against rustre: {report:#}\nserver log: {}", _server.stderr());
    assert!(run.status.success(), "rustre race failed ({}): {}", run.status, run.stderr);
    assert_eq!(report["target"], "rustre");
    assert_eq!(report["clients"], 2);
    assert_every_role_worked(report, RUSTRE_OPS);
    let rounds = &report["exclusive_rounds"];
    assert_eq!(rounds["one_winner"], rounds["rounds"], "{rounds}");
    // An exclusive open has one winner and losers that got EEXIST, nothing else.
    let (_, _, exclusive) = ops(report).into_iter().find(|(r, o, _)| r == "exclusive" && o == "open").unwrap();
    assert_eq!(
        number(&exclusive["ok"], "ok"),
        number(&rounds["rounds"], "rounds"),
        "one successful exclusive open per round"
    );
    assert!(report["elapsed_seconds"].as_f64().unwrap() >= 20.0, "{report:#}");
}

/// Control: a server that answers ESTALE to every 7th open, and a library told not to retry by
/// name, must make the tool fail and report ESTALE; with the retry (the default) the application
/// never sees those ESTALE and the tool counts the retries instead.
#[test]
fn control_run_reports_estale_of_a_faulty_server() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let (_server, address) = spawn_server(scratch.path(), &["--fault-estale-every", "7"]);

    let run = race(scratch.path(), 3, &["--server", &address, "--clients", "2", "--no-stale-retry"]);
    let report = &run.report;
    assert!(!run.status.success(), "the control run must fail: {report:#}");
    assert!(run.stderr.contains("violations"), "stderr: {}", run.stderr);
    let estale = number(&report["violations_by_errno"]["ESTALE"], "ESTALE violations");
    assert!(estale > 0, "{report:#}");
    assert!(number(&report["violations"], "violations") >= estale);
    // The O_CREAT opens are among them: the seed's symptom, open(O_CREAT) failing with ESTALE.
    let (_, _, creator) = ops(report).into_iter().find(|(r, o, _)| r == "creator" && o == "open").unwrap();
    assert!(number(&creator["violations"]["ESTALE"], "creator open ESTALE") > 0, "{report:#}");

    let run = race(scratch.path(), 2, &["--server", &address, "--clients", "2"]);
    let report = &run.report;
    assert_eq!(report["violations"], 0, "with the retry by name, no ESTALE may reach the race: {report:#}");
    assert!(run.status.success(), "{}", run.stderr);
    assert!(number(&report["stale_retries"], "stale retries") > 0, "{report:#}");
}

/// The same tool on a local file system, through `--dirs` naming one directory twice: the kernel
/// path gives no violation either.
#[test]
fn local_directory_twice_without_violation() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let dir = scratch.path().join("shared");
    std::fs::create_dir(&dir).expect("the raced directory");
    let dir = dir.to_str().expect("utf-8 path");
    let run = race(scratch.path(), 3, &["--dirs", dir, dir]);
    let report = &run.report;
    assert_eq!(report["violations"], 0, "violations on the local file system: {report:#}");
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(report["target"], "dirs");
    // No close op: std shows no error of close(2).
    let local_ops: Vec<_> = RUSTRE_OPS.iter().copied().filter(|(_, op)| *op != "close").collect();
    assert_every_role_worked(report, &local_ops);
    // The tool leaves the directory as it found it.
    let left: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Two directories that are not one directory seen twice cannot race on names: refused.
#[test]
fn directories_that_differ_are_refused() {
    let scratch = tempfile::tempdir().expect("scratch directory");
    let (one, two) = (scratch.path().join("one"), scratch.path().join("two"));
    std::fs::create_dir(&one).unwrap();
    std::fs::create_dir(&two).unwrap();
    let (one_text, two_text) = (one.to_str().unwrap(), two.to_str().unwrap());
    let mut race = Process::spawn(&["race", "--seconds", "1", "--dirs", one_text, two_text], scratch.path(), "race");
    let status = race.wait(Duration::from_secs(30));
    let stderr = race.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("do not show the same directory"), "{stderr}");
    assert_eq!(std::fs::read_dir(&one).unwrap().count(), 0, "the probe is removed");
}
