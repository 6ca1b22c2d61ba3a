//! `rustre bench` and `rustre bench-compare`, the real binary: on a local directory, through the
//! library against a real server, and across two real mounts. The figures themselves are not
//! judged (speed is for `docs/BENCHMARKS.md`); what is checked is that every phase ran every
//! call it should, without a failure, that the library's cached stats sent no request, and that
//! the tool cleans up after itself.

mod common;

use std::path::Path;
use std::process::Output;

use common::{number, rustre_command, spawn_server, two_mounts};
use serde_json::Value;

const ALL_PHASES: [&str; 14] = [
    "create",
    "stat",
    "stat-changed",
    "open",
    "rename",
    "unlink",
    "mkdir",
    "rmdir",
    "readdir",
    "readdir-stat",
    "write",
    "read",
    "random-write",
    "random-read",
];

/// Small sizes: 2 threads, 40 files each, 100 entries listed 2 times each, 1 MiB per thread in
/// 64 KiB blocks, 50 random calls of 4 KiB.
const SMALL: [&str; 14] = [
    "--threads",
    "2",
    "--files",
    "40",
    "--readdir-entries",
    "100",
    "--readdir-rounds",
    "2",
    "--io-size",
    "1M",
    "--block-size",
    "64K",
    "--random-ops",
    "50",
];

/// The calls each phase must have made with `SMALL`.
fn expected_calls(phase: &str) -> u64 {
    match phase {
        "readdir" | "readdir-stat" => 2 * 2,
        "write" | "read" => 2 * 16,
        "random-write" | "random-read" => 2 * 50,
        _ => 2 * 40,
    }
}

fn bench(args: &[&str]) -> (Output, Value) {
    let output = rustre_command().arg("bench").args(args).args(SMALL).arg("--json").output().expect("rustre runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "rustre bench failed ({}): stdout {stdout}; stderr {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("not JSON ({error}): {stdout}"));
    (output, report)
}

fn phase<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .find(|phase| phase["phase"] == name)
        .unwrap_or_else(|| panic!("no phase {name} in {report}"))
}

/// Every phase, in order, made all its calls without a failure, with sane figures.
#[track_caller]
fn assert_complete(report: &Value, phases: &[&str]) {
    let names: Vec<&str> = report["phases"].as_array().unwrap().iter().map(|p| p["phase"].as_str().unwrap()).collect();
    assert_eq!(names, phases, "the phases run, in order");
    assert_eq!(number(&report["failures"], "failures"), 0, "{report}");
    for name in phases {
        let measured = phase(report, name);
        assert_eq!(number(&measured["calls"], "calls"), expected_calls(name), "calls of {name}: {measured}");
        assert_eq!(number(&measured["failures"], "failures"), 0, "{measured}");
        let rate = measured["rate"].as_f64().unwrap();
        assert!(rate.is_finite() && rate > 0.0, "rate of {name}: {measured}");
        let latency = &measured["latency_us"];
        let (p50, p99, max) =
            (latency["p50"].as_f64().unwrap(), latency["p99"].as_f64().unwrap(), latency["max"].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max * 1.001, "percentiles of {name}: {latency}");
    }
}

/// Nothing of the run is left in `dir`.
#[track_caller]
fn assert_cleaned(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().file_name()).collect();
    assert!(left.is_empty(), "bench left {left:?} in {}", dir.display());
}

#[test]
fn every_phase_on_a_local_directory() {
    let scratch = tempfile::tempdir().unwrap();
    let (_, report) = bench(&[scratch.path().to_str().unwrap(), "--label", "local"]);
    assert_complete(&report, &ALL_PHASES);
    assert_eq!(report["label"], "local");
    assert_eq!(report["through"], "dirs");
    assert!(phase(&report, "stat")["requests"].is_null(), "no request counts for a directory");
    assert_cleaned(scratch.path());
}

/// Through the library: every phase; stats of files the client just made and closed are
/// answered from its cache without a single request; a stat after another client's change asks.
#[test]
fn every_phase_through_the_library_and_cached_stats_send_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let (server, address) = spawn_server(scratch.path(), &[]);
    let (_, report) = bench(&["--server", &address, "--clients", "2"]);
    assert_complete(&report, &ALL_PHASES);
    // Clients that exit without waiting for their connections to close are an ordinary end,
    // not malformed input: nothing in the server's log calls for attention.
    let log = server.stderr();
    assert!(!log.contains(" WARN ") && !log.contains(" ERROR "), "{log}");
    assert_eq!(report["through"], "library");
    assert_eq!(number(&report["clients"], "clients"), 2);
    let stat = phase(&report, "stat");
    assert_eq!(number(&stat["requests"], "requests"), 0, "cached stats sent requests: {stat}");
    // Each stat follows the other client's chmod: at least one request (the chmod) per call.
    let changed = phase(&report, "stat-changed");
    assert_eq!(number(&changed["requests_by_kind"]["setattr"], "setattr"), 80, "{changed}");
    assert!(number(&changed["requests_by_kind"]["lookup"], "lookups") >= 80, "stats after a change ask: {changed}");
    // The run directory is gone from the server.
    let listed = rustre_command().args(["--server", &address, "ls", "/"]).output().unwrap();
    assert!(listed.status.success());
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "", "bench left entries in /");
}

/// Two mount processes of one server are two clients: every phase through the kernel, the
/// changes of `stat-changed` made through the other mount.
#[test]
fn every_phase_across_two_mounts() {
    let scratch = tempfile::tempdir().unwrap();
    let mounts = two_mounts(scratch.path());
    let (one, two) = (&mounts.one, &mounts.two);
    let (_, report) = bench(&[one.to_str().unwrap(), two.to_str().unwrap()]);
    assert_complete(&report, &ALL_PHASES);
    assert_eq!(number(&report["clients"], "clients"), 2);
    assert_cleaned(one);
    assert_cleaned(two);
}

#[test]
fn selected_phases_only_and_compare_draws_them() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("fs");
    std::fs::create_dir(&dir).unwrap();
    let mut reports = Vec::new();
    for label in ["first <one>", "second"] {
        let (output, report) = bench(&[dir.to_str().unwrap(), "--phases", "unlink,stat,write", "--label", label]);
        assert_complete(&report, &["stat", "unlink", "write"]);
        let path = scratch.path().join(format!("{}.json", reports.len()));
        std::fs::write(&path, &output.stdout).unwrap();
        reports.push(path);
    }
    assert_cleaned(&dir);
    let svg = scratch.path().join("chart.svg");
    let output = rustre_command().arg("bench-compare").args(&reports).arg("--svg").arg(&svg).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.starts_with("| phase | unit | first <one> | second |"), "{table}");
    for name in ["stat", "unlink", "write"] {
        assert!(table.contains(&format!("\n| {name} |")), "{name} missing: {table}");
    }
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.trim_end().ends_with("</svg>"), "{drawn}");
    assert!(drawn.contains("first &lt;one&gt;") && drawn.contains("unlink (ops/s)"), "{drawn}");
    // One bar per report and phase.
    assert_eq!(drawn.matches("<rect x=\"150\" y=").count() - 2, 6, "{drawn}");
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let scratch = tempfile::tempdir().unwrap();
    let missing = scratch.path().join("missing");
    let output = rustre_command().arg("bench").arg(&missing).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a directory"), "{stderr}");

    let output = rustre_command().args(["bench", "--io-size", "0"]).arg(scratch.path()).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("must not be 0"));

    let not_json = scratch.path().join("x.json");
    std::fs::write(&not_json, "{}").unwrap();
    let output = rustre_command().arg("bench-compare").arg(&not_json).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a `rustre bench --json` report"));
}

/// `rustre scale` against a real server process: it makes the namespace it was asked for, its
/// sessions hold a lease per name and per inode they stat, and it reads the server's memory.
#[test]
fn scale_makes_the_namespace_and_counts_the_leases() {
    let scratch = tempfile::tempdir().unwrap();
    let (server, address) = spawn_server(scratch.path(), &[]);
    let pid = server.child.id().to_string();
    let args = [
        "--server",
        &address,
        "scale",
        "--server-pid",
        &pid,
        "--sessions",
        "3",
        "--entries",
        "300",
        "--dirs",
        "3",
        "--populators",
        "4",
        "--stats-per-session",
        "50",
        "--json",
    ];
    let output = rustre_command().args(args).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let steps: Vec<&str> =
        report["steps"].as_array().unwrap().iter().map(|step| step["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["start", "namespace", "sessions", "leases"]);
    for step in report["steps"].as_array().unwrap() {
        assert!(number(&step["server_rss_bytes"], "rss") > 1 << 20, "the server's memory was read: {step}");
    }
    // Each session holds a name and an attribute lease on each of its 50 files, and on the
    // directories it walked through.
    let leases = number(&report["steps"][3]["leases_held"], "leases");
    assert!((300..=300 + 3 * 10).contains(&leases), "{report:#}");
    let run_dir = report["run_dir"].as_str().unwrap();
    let listed = rustre_command().args(["--server", &address, "ls", &format!("{run_dir}/d1")]).output().unwrap();
    assert!(listed.status.success());
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 100, "300 entries over 3 directories");

    let refused = rustre_command()
        .args(["--server", &address, "scale", "--server-pid", &pid, "--entries", "10", "--stats-per-session", "20"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--stats-per-session"));
}
