//! `rustre mount` and `rustre up MOUNTPOINT`, the real binaries: two mount processes of one
//! server race through the kernel without a violation or a stall, and a mount ends cleanly on
//! SIGINT, SIGTERM and `umount`. Every process is stopped and every mountpoint unmounted when its
//! guard drops, so a failing test leaves nothing mounted or running.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Process, accepts, free_address, mounted, number, rustre_command, spawn_server, two_mounts};
use serde_json::Value;

/// The acceptance run: `rustre race --dirs M1/d M2/d` across two mount processes of one
/// server, every role, 30 s: no violation, and no call slower than 10 s (the tool's stall
/// watchdog counts those as violations; the process itself must end within a bound too).
#[test]
fn race_across_two_mounts_thirty_seconds_without_violation_or_stall() {
    let scratch = tempfile::tempdir().unwrap();
    let mounts = two_mounts(scratch.path());
    let (one, two) = (&mounts.one, &mounts.two);
    std::fs::create_dir(one.join("race")).unwrap();
    let mut race = Process::spawn(
        &[
            "race",
            "--dirs",
            one.join("race").to_str().unwrap(),
            two.join("race").to_str().unwrap(),
            "--seconds",
            "30",
            "--stall-seconds",
            "10",
            "--json",
        ],
        scratch.path(),
        "race",
    );
    let status = race.wait(Duration::from_secs(30 + 60));
    let stdout = std::fs::read_to_string(scratch.path().join("race.stdout")).unwrap();
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|error| panic!("no JSON ({error}): {stdout}\nstderr: {}", race.stderr()));
    assert_eq!(report["violations"], 0, "violations through the mounts: {report:#}");
    assert_eq!(report["stalled_threads"], 0, "{report:#}");
    assert!(status.success(), "race failed ({status}): {}", race.stderr());
    for op in report["ops"].as_array().unwrap() {
        assert!(number(&op["ok"], "ok") > 0, "an op never succeeded: {op}");
    }
    let rounds = &report["exclusive_rounds"];
    assert!(number(&rounds["rounds"], "rounds") > 0);
    assert_eq!(rounds["one_winner"], rounds["rounds"], "{rounds}");
    assert!(report["elapsed_seconds"].as_f64().unwrap() >= 30.0);
}

/// Two mount processes of one server (two clients, as two machines): a change returned on one
/// is seen by the very next call on the other: names, negative names, attributes, contents.
#[test]
fn two_mount_processes_see_each_others_changes_at_once() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = tempfile::tempdir().unwrap();
    let mounts = two_mounts(scratch.path());
    let (one, two) = (&mounts.one, &mounts.two);
    let absent =
        |path: PathBuf| std::fs::metadata(path).is_err_and(|error| error.kind() == std::io::ErrorKind::NotFound);
    for round in 0..20 {
        let name = format!("f{round}");
        assert!(absent(two.join(&name)), "round {round}");
        std::fs::write(one.join(&name), format!("one {round}")).unwrap();
        assert_eq!(std::fs::read_to_string(two.join(&name)).unwrap(), format!("one {round}"));
        std::fs::set_permissions(two.join(&name), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(std::fs::metadata(one.join(&name)).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(two.join(&name), format!("two {round}")).unwrap();
        assert_eq!(std::fs::read_to_string(one.join(&name)).unwrap(), format!("two {round}"));
        std::fs::remove_file(one.join(&name)).unwrap();
        assert!(absent(two.join(&name)), "round {round}: the unlink is seen at once");
    }
}

/// A way to stop a mount process.
type Stop = Box<dyn Fn(&Process)>;

/// A mount ends cleanly, with exit status 0 and nothing left mounted, however it is stopped:
/// SIGTERM, SIGINT, `umount`, and `fusermount3 -u` where fuse3 is installed (CI installs it, and
/// fails this test without it; elsewhere its absence is printed past the harness's capture).
#[test]
fn a_mount_ends_cleanly_on_signals_and_umount() {
    let scratch = tempfile::tempdir().unwrap();
    let (_server, address) = spawn_server(scratch.path(), &[]);
    let mountpoint = scratch.path().join("m");
    let mut stops: Vec<(&str, Stop)> = vec![
        ("SIGTERM", Box::new(|process: &Process| process.signal("-TERM"))),
        ("SIGINT", Box::new(|process: &Process| process.signal("-INT"))),
        (
            "umount",
            Box::new(|process: &Process| {
                let path = process.mountpoint.as_ref().unwrap();
                assert!(Command::new("umount").arg(path).status().unwrap().success());
            }),
        ),
    ];
    let fusermount = Command::new("fusermount3").arg("-V").output().is_ok_and(|output| output.status.success());
    if fusermount {
        stops.push((
            "fusermount3 -u",
            Box::new(|process: &Process| {
                let path = process.mountpoint.as_ref().unwrap();
                assert!(Command::new("fusermount3").arg("-u").arg(path).status().unwrap().success());
            }),
        ));
    } else {
        // A case not tried must not pass unseen. CI (`.ci/run` installs fuse3) fails; elsewhere
        // the warning goes straight to the terminal: the harness shows a passing test's
        // `eprintln!` to nobody.
        let skipped = "fusermount3 is not installed (package fuse3): `fusermount3 -u` was NOT tested";
        assert!(std::env::var_os("CI").is_none(), "{skipped}");
        use std::io::Write;
        let _ =
            writeln!(std::io::stderr().lock(), "\nWARNING: a_mount_ends_cleanly_on_signals_and_umount: {skipped}\n");
    }
    for (round, (how, stop)) in stops.iter().enumerate() {
        let mut mount = Process::mount(&address, &mountpoint, scratch.path(), &format!("mount{round}"));
        std::fs::write(mountpoint.join(format!("file{round}")), how).unwrap();
        stop(&mount);
        let status = mount.wait(Duration::from_secs(20));
        assert!(status.success(), "{how}: exit {status}; stderr: {}", mount.stderr());
        assert!(!mounted(&mountpoint), "{how}: still mounted");
        // An ordinary end is not a failure: fuser's "not mounted any more" stays out of the log.
        let stderr = mount.stderr();
        assert!(!stderr.contains(" WARN ") && !stderr.contains(" ERROR "), "{how}: {stderr}");
    }
    // What each mount wrote is on the server.
    let listed = rustre_command().args(["--server", &address, "ls", "/"]).output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert_eq!(listed.lines().count(), stops.len(), "{listed}");
}

/// `rustre up MOUNTPOINT`, the README's main job: a server on a data directory, mounted; Ctrl-C
/// unmounts and stops; the next `up` on the same data directory shows what was written, and
/// takes changes at once: the mount of the last run ended its session, so the server has no
/// client to wait for. What applications ordinarily do (Python's TCGETS ioctl on every open,
/// `cp`'s copy_file_range) leaves the log without a warning.
#[test]
fn up_mounts_serves_and_stops_on_ctrl_c() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let mountpoint = scratch.path().join("mnt"); // made by `up`
    for round in 0..2 {
        let address = free_address();
        let mut up = Process::spawn(
            &["up", mountpoint.to_str().unwrap(), "--data", data.to_str().unwrap(), "--listen", &address],
            scratch.path(),
            &format!("up{round}"),
        );
        up.mountpoint = Some(mountpoint.clone());
        up.wait_until("the mount", || mounted(&mountpoint));
        if round == 0 {
            std::fs::create_dir(mountpoint.join("docs")).unwrap();
            std::fs::write(mountpoint.join("docs/note"), b"kept across restarts").unwrap();
            let file = std::fs::File::open(mountpoint.join("docs/note")).unwrap();
            let asked = rustix::termios::tcgetattr(&file);
            assert_eq!(asked.err(), Some(rustix::io::Errno::NOTTY), "a file is no terminal");
            // std's copy is copy_file_range on Linux, falling back to reads and writes.
            std::fs::copy(mountpoint.join("docs/note"), mountpoint.join("docs/copy")).unwrap();
            assert_eq!(std::fs::read(mountpoint.join("docs/copy")).unwrap(), b"kept across restarts");
        } else {
            assert_eq!(std::fs::read(mountpoint.join("docs/note")).unwrap(), b"kept across restarts");
            std::fs::create_dir(mountpoint.join("docs/changed")).unwrap();
        }
        up.signal("-INT");
        let status = up.wait(Duration::from_secs(20));
        let stderr = up.stderr();
        assert!(status.success(), "up exit {status}; stderr: {stderr}");
        assert!(!mounted(&mountpoint), "unmounted on Ctrl-C");
        assert!(!accepts(&address), "the server stopped");
        assert!(!stderr.contains(" WARN ") && !stderr.contains(" ERROR "), "round {round}: {stderr}");
        // The restart waited for nobody (the session of round 0 ended with its mount).
        assert!(!stderr.contains("waiting for the sessions of the previous run"), "round {round}: {stderr}");
        assert!(stderr.contains("root_squash=\"off\""), "the start-up log says whether root is squashed: {stderr}");
    }
    assert!(!mountpoint.exists(), "the mountpoint `up` made is gone with the mount");
}

/// The control of the test above: a server whose mount did not end its session (`up` killed
/// with SIGKILL, as a crash) waits at its next start for that session to come back, for
/// `--recovery-grace` seconds, before it lets changes through.
#[test]
fn up_after_a_crash_waits_for_the_mounts_of_the_last_run() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let mountpoint = scratch.path().join("mnt");
    let address = free_address();
    let args = ["up", mountpoint.to_str().unwrap(), "--data", data.to_str().unwrap(), "--listen", &address];
    let mut up = Process::spawn(&[&args[..], &["--recovery-grace", "1"]].concat(), scratch.path(), "crashed");
    up.mountpoint = Some(mountpoint.clone());
    up.wait_until("the mount", || mounted(&mountpoint));
    std::fs::write(mountpoint.join("f"), b"before the crash").unwrap();
    up.signal("-KILL");
    up.wait(Duration::from_secs(20));
    assert!(Command::new("umount").arg("-l").arg(&mountpoint).status().unwrap().success());

    let mut again = Process::spawn(&[&args[..], &["--recovery-grace", "1"]].concat(), scratch.path(), "again");
    again.mountpoint = Some(mountpoint.clone());
    again.wait_until("the mount", || mounted(&mountpoint));
    std::fs::create_dir(mountpoint.join("after")).unwrap();
    assert_eq!(std::fs::read(mountpoint.join("f")).unwrap(), b"before the crash");
    again.signal("-INT");
    assert!(again.wait(Duration::from_secs(20)).success(), "{}", again.stderr());
    let stderr = again.stderr();
    assert!(stderr.contains("waiting for the sessions of the previous run"), "{stderr}");
}

/// A mount rides through a server killed with SIGKILL and restarted on the same address: a file
/// open across the crash keeps reading and writing (its handle is taken back), what was written
/// before is there, and new calls work; the applications see a pause, not an error.
#[test]
fn a_mount_rides_through_a_server_crash() {
    use std::io::{Read, Seek, Write};
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let address = free_address();
    let args = ["server", "--data", data.to_str().unwrap(), "--listen", &address];
    let mut server = Process::spawn(&args, scratch.path(), "server");
    server.wait_until("the server accepts", || accepts(&address));
    let mountpoint = scratch.path().join("m");
    let _mount = Process::mount(&address, &mountpoint, scratch.path(), "mount");
    std::fs::write(mountpoint.join("before"), b"written before the crash").unwrap();
    let mut open =
        std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(mountpoint.join("open")).unwrap();
    open.write_all(b"first half, ").unwrap();
    open.sync_all().unwrap();

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut server = Process::spawn(&args, scratch.path(), "server-again");
    server.wait_until("the restarted server accepts", || accepts(&address));

    open.write_all(b"second half").expect("a write through a file open across the crash");
    open.rewind().unwrap();
    let mut contents = String::new();
    open.read_to_string(&mut contents).unwrap();
    assert_eq!(contents, "first half, second half");
    drop(open);
    assert_eq!(std::fs::read(mountpoint.join("before")).unwrap(), b"written before the crash");
    std::fs::write(mountpoint.join("after"), b"new").expect("a create after the crash");
    let mut names: Vec<_> = std::fs::read_dir(&mountpoint)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["after", "before", "open"]);
    // On the server itself, not only in the kernel's page cache.
    let cat = rustre_command().args(["--server", &address, "cat", "/open"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "first half, second half", "{cat:?}");
}
