//! The server's store plumbing as the simulator uses it: the committer as a task on the server's
//! runtime (`CommitMode::Task`), and data objects kept outside the data directory
//! (`ServerConfig::object_store`).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::TestServer;
use rustre_store::{CommitMode, ObjectStore};

// On one thread (the test's runtime, as the simulator's), the committer task takes the changes
// of several clients queued while it waited as one batch: fewer batches than changes, every
// change acknowledged, and all of them there after a restart.
#[tokio::test]
async fn the_commit_task_shares_commits_between_clients() {
    let mut server = TestServer::start_with(|config| config.commit_mode = CommitMode::Task).await;
    let clients = [server.client().await, server.client().await];
    let before = server.server().commit_stats();
    let creates: Vec<_> = (0..64)
        .map(|index| {
            let client = clients[index % 2].clone();
            tokio::spawn(async move { client.mkdir(format!("/d{index}"), 0o755).await.unwrap() })
        })
        .collect();
    for create in creates {
        create.await.unwrap();
    }
    let after = server.server().commit_stats();
    assert_eq!(after.operations - before.operations, 64, "{after:?}");
    assert!(after.batches - before.batches < 64, "no batch of several changes: {before:?} {after:?}");
    for client in &clients {
        client.end().await;
    }
    server.restart_with(|config| config.commit_mode = CommitMode::Task).await;
    let client = server.client().await;
    for index in 0..64 {
        client.stat(format!("/d{index}")).await.unwrap();
    }
    client.end().await;
    server.stop().await;
}

/// Objects in memory, shared by every server given it; counts writes.
#[derive(Default)]
struct MemoryObjects {
    objects: Mutex<HashMap<u64, Vec<u8>>>,
    writes: AtomicU64,
}

impl ObjectStore for MemoryObjects {
    fn read_at(&self, ino: u64, offset: u64, buffer: &mut [u8]) -> std::io::Result<usize> {
        let objects = self.objects.lock().unwrap();
        let Some(data) = objects.get(&ino) else { return Ok(0) };
        let start = (offset as usize).min(data.len());
        let len = buffer.len().min(data.len() - start);
        buffer[..len].copy_from_slice(&data[start..start + len]);
        Ok(len)
    }

    fn write_at(&self, ino: u64, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        let mut objects = self.objects.lock().unwrap();
        let object = objects.entry(ino).or_default();
        let end = offset as usize + data.len();
        if object.len() < end {
            object.resize(end, 0);
        }
        object[offset as usize..end].copy_from_slice(data);
        Ok(())
    }

    fn set_len(&self, ino: u64, len: u64) -> std::io::Result<()> {
        if let Some(object) = self.objects.lock().unwrap().get_mut(&ino) {
            object.resize(len as usize, 0);
        }
        Ok(())
    }

    fn len(&self, ino: u64) -> std::io::Result<u64> {
        Ok(self.objects.lock().unwrap().get(&ino).map_or(0, |object| object.len() as u64))
    }

    fn sync(&self, _: u64) -> std::io::Result<()> {
        Ok(())
    }

    fn remove(&self, ino: u64) -> std::io::Result<()> {
        self.objects.lock().unwrap().remove(&ino);
        Ok(())
    }
}

// Given an object store, the server keeps file contents there and nowhere in its data
// directory, across a restart on the same store; a destroyed file's object is removed from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_file_contents_in_the_object_store_it_is_given() {
    let objects = Arc::new(MemoryObjects::default());
    let given = objects.clone();
    let mut server = TestServer::start_with(|config| config.object_store = Some(given)).await;
    assert!(!server.data_dir().join("objects").exists());
    let client = server.client().await;
    client.write("/kept", b"in memory").await.unwrap();
    client.write("/gone", b"removed").await.unwrap();
    assert!(objects.writes.load(Ordering::SeqCst) >= 2);
    let gone = client.stat("/gone").await.unwrap().ino;
    client.remove_file("/gone").await.unwrap();
    common::eventually("the destroyed file's object is removed", || {
        !objects.objects.lock().unwrap().contains_key(&gone)
    })
    .await;
    client.end().await;
    let given = objects.clone();
    server.restart_with(|config| config.object_store = Some(given)).await;
    let client = server.client().await;
    assert_eq!(client.read("/kept").await.unwrap(), b"in memory");
    client.end().await;
    server.stop().await;
    assert!(!server.data_dir().join("objects").exists());
}
