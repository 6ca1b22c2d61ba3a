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
