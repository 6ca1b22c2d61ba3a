//! Real mounts of a real server for tests: a server on a free loopback port with a temporary data
//! directory, and FUSE mounts of it, each through its own client session (so two mounts are two
//! clients, as two machines would be). Everything unmounts when the fixture is dropped, also
//! when a test fails (`Mounted`'s drop unmounts, lazily if a file is still open).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustre_client::{Client, ClientConfig};
use rustre_fuse::{MountConfig, Mounted};
use rustre_server::{Server, ServerConfig};

pub struct Fixture {
    // Fields drop in order: the mounts first, then the server, then the runtime serving both.
    pub mounts: Vec<Mounted>,
    mountpoints: Vec<tempfile::TempDir>,
    pub server: Option<Server>,
    pub address: String,
    data: tempfile::TempDir,
    pub runtime: tokio::runtime::Runtime,
}

impl Fixture {
    /// A server and `count` mounts of it.
    pub fn new(count: usize) -> Fixture {
        Fixture::with_server(count, |_| {})
    }

    /// `new`, letting the test adjust the server's configuration first.
    pub fn with_server(count: usize, adjust: impl FnOnce(&mut ServerConfig)) -> Fixture {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime");
        let data = tempfile::tempdir().expect("data directory");
        let mut config = ServerConfig::new(data.path());
        // The tests run as root and act as root: squashed, root could write nowhere.
        config.root_squash = rustre_server::RootSquash::Off;
        adjust(&mut config);
        Fixture::serve(runtime, data, config, count)
    }

    /// Opens the server of `config` on `data`, and mounts it `count` times.
    fn serve(runtime: tokio::runtime::Runtime, data: tempfile::TempDir, config: ServerConfig, count: usize) -> Fixture {
        let server = runtime.block_on(Server::open(config)).expect("server opens");
        let address = runtime.block_on(server.listen("127.0.0.1:0")).expect("server listens").to_string();
        let mut fixture =
            Fixture { mounts: Vec::new(), mountpoints: Vec::new(), server: Some(server), address, data, runtime };
        for _ in 0..count {
            fixture.mount();
        }
        fixture
    }

    /// A server that squashes root (`RootSquash::NOBODY`, as `rustre server` by default), and
    /// `count` mounts of it, made by this root process as a production mount is. The tree is
    /// first made by `prepare` through a client of the same data directory with squash off.
    pub fn squashed(count: usize, prepare: impl AsyncFnOnce(&Client)) -> Fixture {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("runtime");
        let data = tempfile::tempdir().expect("data directory");
        runtime.block_on(async {
            let mut config = ServerConfig::new(data.path());
            config.root_squash = rustre_server::RootSquash::Off;
            let server = Server::open(config).await.expect("server opens");
            let address = server.listen("127.0.0.1:0").await.expect("server listens").to_string();
            let client = Client::connect(&address).await.expect("client connects");
            prepare(&client).await;
            client.end().await;
            server.shutdown().await;
        });
        let mut config = ServerConfig::new(data.path());
        config.recovery_grace = Duration::ZERO;
        assert_eq!(config.root_squash, rustre_server::RootSquash::NOBODY, "squashed by default");
        Fixture::serve(runtime, data, config, count)
    }

    /// One more mount, through a new client session.
    pub fn mount(&mut self) -> PathBuf {
        self.mount_with(|_| {})
    }

    /// `mount`, letting the test adjust the client's configuration first.
    pub fn mount_with(&mut self, adjust: impl FnOnce(&mut ClientConfig)) -> PathBuf {
        self.mount_configured(adjust, |_| {})
    }

    /// `mount`, letting the test adjust the client's and the mount's configurations first.
    pub fn mount_configured(
        &mut self,
        adjust: impl FnOnce(&mut ClientConfig),
        adjust_mount: impl FnOnce(&mut MountConfig),
    ) -> PathBuf {
        let client = self.client_with(adjust);
        let mountpoint = tempfile::tempdir().expect("mountpoint");
        let mut config = MountConfig { fsname: format!("rustre-test@{}", self.address), ..Default::default() };
        adjust_mount(&mut config);
        let mounted =
            rustre_fuse::mount(client, self.runtime.handle().clone(), mountpoint.path(), &config).expect("mounts");
        let path = mountpoint.path().to_path_buf();
        self.mounts.push(mounted);
        self.mountpoints.push(mountpoint);
        path
    }

    /// A library client of the same server (another session).
    pub fn client(&self) -> Client {
        self.client_with(|_| {})
    }

    /// `client`, letting the test adjust its configuration first.
    pub fn client_with(&self, adjust: impl FnOnce(&mut ClientConfig)) -> Client {
        let mut config = ClientConfig { client_name: "fuse test".to_string(), ..Default::default() };
        adjust(&mut config);
        self.runtime.block_on(Client::connect_with(&self.address, config)).expect("client connects")
    }

    /// Stops the server; the mounts stay, and their sessions try to reconnect.
    pub fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown());
        }
    }

    /// Starts the server again on its data directory and address (squash off), as a restarted
    /// process: the mounts' sessions reconnect to it.
    pub fn restart_server(&mut self) {
        self.stop_server();
        let mut config = ServerConfig::new(self.data.path());
        config.root_squash = rustre_server::RootSquash::Off;
        let server = self.runtime.block_on(Server::open(config)).expect("server reopens");
        self.runtime.block_on(server.listen(&self.address)).expect("server listens on its address again");
        self.server = Some(server);
    }

    /// Mount `index`'s root.
    pub fn root(&self, index: usize) -> &Path {
        self.mounts[index].mountpoint()
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }
}

/// The errno of a failed std call.
#[track_caller]
pub fn errno_of<T: std::fmt::Debug>(result: std::io::Result<T>) -> i32 {
    match result {
        Ok(value) => panic!("expected an error, got Ok({value:?})"),
        Err(error) => error.raw_os_error().expect("an OS error"),
    }
}

/// Bounded wait for something that happens in the background (no timing asserts).
#[track_caller]
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for: {what}");
}

/// Asks the kernel to drop unused dentries and inodes, so it sends FORGET for them.
pub fn drop_kernel_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop_caches (tests run as root)");
}

pub fn c_path(path: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in test paths")
}

/// `Err(errno)` of a libc call that returned -1.
pub fn check(result: libc::c_int) -> Result<libc::c_int, i32> {
    if result < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { Ok(result) }
}
