//! What the tests of the `rustre` binary share.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "secret.rs"]
mod secret;
pub use secret::test_secret_file;

pub const RUSTRE: &str = env!("CARGO_BIN_EXE_rustre");

/// A command line for the binary, free of the caller's environment settings, reading nothing,
/// with the tests' cluster secret.
pub fn rustre_command() -> Command {
    let mut command = Command::new(RUSTRE);
    command.env_remove("RUSTRE_SERVER").env_remove("RUSTRE_DATA").env_remove("RUST_LOG").stdin(Stdio::null());
    command.env("RUSTRE_SECRET_FILE", test_secret_file());
    // The tests run as root and act as root on their mounts: squashed, root could write nowhere.
    command.env("RUSTRE_ROOT_SQUASH", "off");
    command
}

/// A loopback address with a port that was free a moment ago.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").to_string()
}

/// Is `mountpoint` a mount now (`/proc/self/mounts`)?
pub fn mounted(mountpoint: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    let wanted = mountpoint.to_str().expect("utf-8 path");
    mounts.lines().any(|line| line.split(' ').nth(1) == Some(wanted))
}

/// A `rustre` process, its output in files; on drop it is asked to stop (SIGTERM), killed if it
/// does not, and its mountpoint (if any) is detached.
pub struct Process {
    pub child: Child,
    pub name: String,
    logs: PathBuf,
    pub mountpoint: Option<PathBuf>,
}

impl Process {
    pub fn spawn(args: &[&str], logs: &Path, name: &str) -> Process {
        let child = rustre_command()
            .args(args)
            .stdout(std::fs::File::create(logs.join(format!("{name}.stdout"))).unwrap())
            .stderr(std::fs::File::create(logs.join(format!("{name}.stderr"))).unwrap())
            .spawn()
            .expect("rustre starts");
        Process { child, name: name.to_string(), logs: logs.to_path_buf(), mountpoint: None }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.join(format!("{}.stderr", self.name))).unwrap_or_default()
    }

    /// Waits (bounded) until `ready` holds, failing early if the process ends.
    #[track_caller]
    pub fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
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
    pub fn mount(server: &str, mountpoint: &Path, logs: &Path, name: &str) -> Process {
        std::fs::create_dir_all(mountpoint).unwrap();
        let mut process = Process::spawn(&["mount", server, mountpoint.to_str().unwrap()], logs, name);
        process.mountpoint = Some(mountpoint.to_path_buf());
        process.wait_until("the mount", || mounted(mountpoint));
        process
    }

    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("kill runs");
        assert!(sent.success(), "kill {signal} failed");
    }

    /// Waits (bounded) for the process to end by itself.
    #[track_caller]
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
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
pub fn spawn_server(scratch: &Path, extra: &[&str]) -> (Process, String) {
    let address = free_address();
    let data = scratch.join("data");
    let mut args = vec!["server", "--data", data.to_str().unwrap(), "--listen", &address];
    args.extend_from_slice(extra);
    let mut server = Process::spawn(&args, scratch, "server");
    server.wait_until("the server accepts", || accepts(&address));
    (server, address)
}

/// Does a server listen on `address`? A connection to itself does not count: connecting to a
/// free port of the ephemeral range can pick that very port as its source and connect to
/// itself (a TCP simultaneous open), which once passed for a server not yet bound, whose bind
/// then failed (a red CI run: the mounts met "Connection refused").
pub fn accepts(address: &str) -> bool {
    TcpStream::connect(address).is_ok_and(|stream| stream.local_addr().ok() != stream.peer_addr().ok())
}

/// A `rustre server` and two `rustre mount` processes of it (two clients, as two machines), on
/// `SCRATCH/m1` and `SCRATCH/m2`. On drop the mounts stop first, then the server.
pub struct TwoMounts {
    _mounts: [Process; 2],
    _server: Process,
    pub one: PathBuf,
    pub two: PathBuf,
}

pub fn two_mounts(scratch: &Path) -> TwoMounts {
    let (server, address) = spawn_server(scratch, &[]);
    let (one, two) = (scratch.join("m1"), scratch.join("m2"));
    let first = Process::mount(&address, &one, scratch, "mount1");
    let second = Process::mount(&address, &two, scratch, "mount2");
    TwoMounts { _mounts: [first, second], _server: server, one, two }
}

pub fn number(value: &Value, what: &str) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("{what} is not a count: {value}"))
}
