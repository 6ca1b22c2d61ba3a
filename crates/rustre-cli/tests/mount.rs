//! `rustre mount` and `rustre up MOUNTPOINT`, the real binaries: two mount processes of one
//! server race through the kernel without a violation or a stall, and a mount ends cleanly on
//! SIGINT, SIGTERM and `umount`. Every process is stopped and every mountpoint unmounted when its
//! guard drops, so a failing test leaves nothing mounted or running.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use common::{free_address, rustre_command};
use serde_json::Value;

/// Is `mountpoint` a mount now (`/proc/self/mounts`)?
fn mounted(mountpoint: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    let wanted = mountpoint.to_str().expect("utf-8 path");
    mounts.lines().any(|line| line.split(' ').nth(1) == Some(wanted))
}

/// A `rustre` process, its output in files; on drop it is asked to stop (SIGTERM), killed if it
/// does not, and its mountpoint (if any) is detached.
struct Process {
    child: Child,
    name: String,
    logs: PathBuf,
    mountpoint: Option<PathBuf>,
}

impl Process {
    fn spawn(args: &[&str], logs: &Path, name: &str) -> Process {
        let child = rustre_command()
            .args(args)
            .stdout(std::fs::File::create(logs.join(format!("{name}.stdout"))).unwrap())
            .stderr(std::fs::File::create(logs.join(format!("{name}.stderr"))).unwrap())
            .spawn()
            .expect("rustre starts");
        Process { child, name: name.to_string(), logs: logs.to_path_buf(), mountpoint: None }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.join(format!("{}.stderr", self.name))).unwrap_or_default()
    }

    /// Waits (bounded) until `ready` holds, failing early if the process ends.
    #[track_caller]
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited ({status}) before {what}; stderr: {}", self.name, self.stderr());
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; stderr: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A mount process: waits until its mountpoint is mounted.
    fn mount(server: &str, mountpoint: &Path, logs: &Path, name: &str) -> Process {
        std::fs::create_dir_all(mountpoint).unwrap();
        let mut process = Process::spawn(&["mount", server, mountpoint.to_str().unwrap()], logs, name);
        process.mountpoint = Some(mountpoint.to_path_buf());
        process.wait_until("the mount", || mounted(mountpoint));
        process
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("kill runs");
        assert!(sent.success(), "kill {signal} failed");
    }

    /// Waits (bounded) for the process to end by itself.
    #[track_caller]
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not end within {limit:?}; stderr: {}", self.name, self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(mountpoint) = &self.mountpoint
            && mounted(mountpoint)
        {
            let _ = Command::new("umount").arg("-l").arg(mountpoint).status();
        }
    }
}

/// A `rustre server` process on a free port, accepting when this returns.
fn spawn_server(scratch: &Path) -> (Process, String) {
    let address = free_address();
    let data = scratch.join("data");
    let mut server =
        Process::spawn(&["server", "--data", data.to_str().unwrap(), "--listen", &address], scratch, "server");
    server.wait_until("the server accepts", || TcpStream::connect(&address).is_ok());
    (server, address)
}

fn number(value: &Value, what: &str) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("{what} is not a count: {value}"))
}

/// The acceptance run: `rustre race --dirs M1/d M2/d` across two mount processes of one
/// server, every role, 30 s: no violation, and no call slower than 10 s (the tool's stall
/// watchdog counts those as violations; the process itself must end within a bound too).
#[test]
fn race_across_two_mounts_thirty_seconds_without_violation_or_stall() {
    let scratch = tempfile::tempdir().unwrap();
    let (_server, address) = spawn_server(scratch.path());
    let (one, two) = (scratch.path().join("m1"), scratch.path().join("m2"));
    let _first = Process::mount(&address, &one, scratch.path(), "mount1");
    let _second = Process::mount(&address, &two, scratch.path(), "mount2");
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
    let (_server, address) = spawn_server(scratch.path());
    let (one, two) = (scratch.path().join("m1"), scratch.path().join("m2"));
    let _first = Process::mount(&address, &one, scratch.path(), "mount1");
    let _second = Process::mount(&address, &two, scratch.path(), "mount2");
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
/// SIGTERM, SIGINT, `umount`, and `fusermount3 -u` where fuse3 is installed (CI installs it).
#[test]
fn a_mount_ends_cleanly_on_signals_and_umount() {
    let scratch = tempfile::tempdir().unwrap();
    let (_server, address) = spawn_server(scratch.path());
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
        eprintln!("fusermount3 is not installed: that way of unmounting is not tried");
    }
    for (round, (how, stop)) in stops.iter().enumerate() {
        let mut mount = Process::mount(&address, &mountpoint, scratch.path(), &format!("mount{round}"));
        std::fs::write(mountpoint.join(format!("file{round}")), how).unwrap();
        stop(&mount);
        let status = mount.wait(Duration::from_secs(20));
        assert!(status.success(), "{how}: exit {status}; stderr: {}", mount.stderr());
        assert!(!mounted(&mountpoint), "{how}: still mounted");
    }
    // What each mount wrote is on the server.
    let listed = rustre_command().args(["--server", &address, "ls", "/"]).output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert_eq!(listed.lines().count(), stops.len(), "{listed}");
}

/// `rustre up MOUNTPOINT`, the README's main job: a server on a data directory, mounted; Ctrl-C
/// unmounts and stops; the next `up` on the same data directory shows what was written.
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
        } else {
            assert_eq!(std::fs::read(mountpoint.join("docs/note")).unwrap(), b"kept across restarts");
        }
        up.signal("-INT");
        let status = up.wait(Duration::from_secs(20));
        assert!(status.success(), "up exit {status}; stderr: {}", up.stderr());
        assert!(!mounted(&mountpoint), "unmounted on Ctrl-C");
        assert!(TcpStream::connect(&address).is_err(), "the server stopped");
    }
}
