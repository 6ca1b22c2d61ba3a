//! End-to-end smoke test: one real server over TCP, one client, the ordinary operations.
mod common;

use common::*;
use rustre_client::OpenOptions;
use rustre_proto::{Errno, FileKind};

// Proves the basic path API works end to end and persists across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_operations_persist_across_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.create_dir_all("/a/b").await.unwrap();
    client.write("/a/b/hello.txt", b"hello world").await.unwrap();
    assert_eq!(client.read("/a/b/hello.txt").await.unwrap(), b"hello world");
    let attr = client.stat("/a/b/hello.txt").await.unwrap();
    assert_eq!(attr.size, 11);
    assert_eq!(attr.kind, FileKind::Regular);
    assert_errno(client.stat("/a/missing").await, Errno::ENOENT);
    let mut file = client.open("/a/b/hello.txt", OpenOptions::new().read(true).write(true)).await.unwrap();
    file.write_at(6, b"rustre").await.unwrap();
    file.close().await.unwrap();
    client.close();

    server.restart().await;
    let client = server.client().await;
    assert_eq!(client.read("/a/b/hello.txt").await.unwrap(), b"hello rustre");
    let names: Vec<_> = client.read_dir("/a").await.unwrap().into_iter().map(|entry| entry.name).collect();
    assert_eq!(names, vec![b"b".to_vec()]);
}
