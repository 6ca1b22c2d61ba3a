//! A real server on a free loopback port with a temporary data directory, for tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use rustre_client::{Client, Error, Result};
use rustre_proto::Errno;
use rustre_server::{Server, ServerConfig};

pub struct TestServer {
    pub server: Option<Server>,
    pub address: String,
    pub data: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts a server, letting the test adjust its configuration first.
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let data = tempfile::tempdir().expect("temporary data directory");
        let mut config = ServerConfig::new(data.path());
        // The tests run as root and act as root: squashed, root could write nowhere.
        config.root_squash = rustre_server::RootSquash::Off;
        adjust(&mut config);
        let server = Server::open(config).await.expect("server opens");
        let address = server.listen("127.0.0.1:0").await.expect("server listens").to_string();
        TestServer { server: Some(server), address, data }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.path().to_path_buf()
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.address).await.expect("client connects")
    }

    /// Stops the server and starts a new one on the same data directory (a new port).
    pub async fn restart(&mut self) {
        self.restart_with(|_| {}).await
    }

    /// `restart`, letting the test adjust the new server's configuration first.
    pub async fn restart_with(&mut self, adjust: impl FnOnce(&mut ServerConfig)) {
        self.stop().await;
        let mut config = ServerConfig::new(self.data.path());
        config.root_squash = rustre_server::RootSquash::Off;
        adjust(&mut config);
        let server = Server::open(config).await.expect("server reopens");
        self.address = server.listen("127.0.0.1:0").await.expect("server listens").to_string();
        self.server = Some(server);
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

/// Asserts that `result` failed with `errno`.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(result: Result<T>, errno: Errno) {
    match result {
        Err(Error { errno: got, message }) => assert_eq!(got, errno, "wrong errno; message: {message}"),
        Ok(value) => panic!("expected {errno:?}, got Ok({value:?})"),
    }
}

/// Bounded wait for a condition, for things that happen in the background (no timing asserts).
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Waits (bounded) until a task stops at an armed pause point, so a broken test fails instead of
/// hanging.
pub async fn reach(paused: &rustre_proto::pause::Paused) {
    tokio::time::timeout(Duration::from_secs(30), paused.reached()).await.expect("a task reached the pause point");
}

/// A TCP proxy on loopback between clients and a server, that a test can partition (bytes are
/// dropped both ways, connections stay open), cut (every proxied connection closes), and point
/// at another server address (a restarted server).
pub struct Proxy {
    pub address: String,
    state: std::sync::Arc<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    target: std::sync::Mutex<String>,
    /// Drop bytes towards the server, towards the client.
    dropping: [std::sync::atomic::AtomicBool; 2],
    connections: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let address = listener.local_addr().expect("proxy address").to_string();
        let state = std::sync::Arc::new(ProxyState {
            target: std::sync::Mutex::new(target.to_string()),
            dropping: Default::default(),
            connections: std::sync::Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = shared.target.lock().unwrap().clone();
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let mut connections = shared.connections.lock().unwrap();
                for (direction, (from, to)) in
                    [(client_read, server_write), (server_read, client_write)].into_iter().enumerate()
                {
                    let state = shared.clone();
                    connections.push(tokio::spawn(forward(from, to, state, direction)).abort_handle());
                }
            }
        });
        Proxy { address, state, accept }
    }

    /// Drops every byte from now on, both ways, without closing anything.
    pub fn partition(&self, on: bool) {
        for dropping in &self.state.dropping {
            dropping.store(on, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Drops what the server sends (replies, pings, revocations): requests still arrive.
    pub fn lose_replies(&self, on: bool) {
        self.state.dropping[1].store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every proxied connection.
    pub fn cut(&self) {
        for connection in self.state.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// New connections go to `target` from now on.
    pub fn retarget(&self, target: &str) {
        *self.state.target.lock().unwrap() = target.to_string();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: std::sync::Arc<ProxyState>,
    direction: usize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if state.dropping[direction].load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
