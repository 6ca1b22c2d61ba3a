//! Storage faults (issue 8): a full disk answers ENOSPC and loses nothing, and a store altered
//! outside the server is refused at start with a clear message. The full disk is a small tmpfs
//! mounted for the test (we run as root), unmounted when the test ends, even on failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::assert_errno;
use rustre_client::Client;
use rustre_proto::Errno;
use rustre_server::{Server, ServerConfig};

/// A tmpfs of `size` mounted on `path` until dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).status();
        assert!(status.is_ok_and(|status| status.success()), "mounting a tmpfs on {}", path.display());
        Tmpfs { path: path.to_path_buf() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

async fn serve(data: &Path, reserve: u64) -> (Server, Client) {
    let mut config = ServerConfig::new(data);
    config.root_squash = rustre_server::RootSquash::Off;
    config.space_reserve = reserve;
    let server = Server::open(config).await.expect("server opens");
    let address = server.listen("127.0.0.1:0").await.expect("server listens").to_string();
    let client = Client::connect(&address).await.expect("client connects");
    (server, client)
}

// Writes fill the disk up to the server's reserve and then answer ENOSPC (not EIO); the server
// keeps serving, what was written before is intact, deleting makes room again, and the store is
// clean afterwards and across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_enospc_and_loses_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&scratch.path().join("disk"), "24m");
    let data = disk.path.join("data");
    let (server, client) = serve(&data, 4 << 20).await;
    let chunk: Vec<u8> = (0..1 << 20).map(|index: u32| (index % 251) as u8).collect();
    let mut written = Vec::new();
    let mut refused = None;
    for index in 0..64 {
        match client.write(format!("/f{index}"), &chunk).await {
            Ok(()) => written.push(index),
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let refused = refused.expect("a 24 MiB disk takes fewer than 64 files of 1 MiB");
    assert_eq!(refused.errno, Errno::ENOSPC, "{refused}");
    assert!(written.len() >= 4, "the disk took {} files before it was full", written.len());
    assert_errno(client.write("/more", &chunk).await, Errno::ENOSPC);
    // Metadata changes on the full disk are refused cleanly too, never with a failed commit
    // (EIO, which would stop the store: without the reserve, mkdir 4272 did that here).
    let mut mkdir_refused = None;
    for index in 0..50_000 {
        if let Err(error) = client.mkdir(format!("/dir-with-a-longish-name-{index}"), 0o755).await {
            mkdir_refused = Some(error);
            break;
        }
    }
    let mkdir_refused = mkdir_refused.expect("the disk fills up with directories too");
    assert_eq!(mkdir_refused.errno, Errno::ENOSPC, "{mkdir_refused}");
    for index in &written {
        assert_eq!(client.read(format!("/f{index}")).await.unwrap(), chunk, "file {index} intact");
    }
    for index in &written[..2] {
        client.remove_file(format!("/f{index}")).await.expect("deleting works on a full disk");
    }
    client.write("/again", &chunk).await.expect("deleting made room");
    client.end().await;
    server.shutdown().await;

    let report = rustre_store::fsck(&data, false).unwrap();
    assert!(report.clean(), "{:?}", report.problems);
    let (server, client) = serve(&data, 4 << 20).await;
    for index in &written[2..] {
        assert_eq!(client.read(format!("/f{index}")).await.unwrap(), chunk, "file {index} after a restart");
    }
    assert_eq!(client.read("/again").await.unwrap(), chunk);
    client.end().await;
    server.shutdown().await;
}

// A metadata database changed outside the server (here: garbage written over its pages) is
// refused at start with a message naming the file and what to do, and fsck refuses it too;
// nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_store_is_refused_at_start() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let (server, client) = serve(&data, 0).await;
    for index in 0..200 {
        client.write(format!("/f{index}"), b"some data").await.unwrap();
    }
    client.end().await;
    server.shutdown().await;

    let path = data.join("meta.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    // Everything after the header: every page of the trees.
    for (index, byte) in bytes.iter_mut().enumerate().skip(4096) {
        *byte = (index as u8).wrapping_mul(31) ^ 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();

    let error = Server::open(ServerConfig::new(&data)).await.err().expect("a corrupted store does not open");
    let message = error.to_string();
    assert!(message.contains("meta.redb") || message.contains("corrupt"), "{message}");
    let checked = rustre_store::fsck(&data, false);
    assert!(checked.is_err(), "fsck refuses it too: {checked:?}");
}

/// A metadata disk whose writes and syncs fail with an I/O error while `failing` is set.
#[derive(Debug)]
struct FailingDisk {
    file: std::fs::File,
    failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FailingDisk {
    fn fail(&self) -> std::io::Result<()> {
        match self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            true => Err(std::io::Error::other("injected I/O error")),
            false => Ok(()),
        }
    }
}

impl redb::StorageBackend for FailingDisk {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, out, offset)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.fail()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.fail()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.fail()?;
        std::os::unix::fs::FileExt::write_all_at(&self.file, data, offset)
    }

    fn close(&self) -> std::io::Result<()> {
        Ok(())
    }
}

// An I/O error of the metadata disk stops every change (fail-stop: EIO, with a message), while
// what was committed stays readable; a restart on the healed disk has every acknowledged change
// and nothing of the failed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_io_error_in_the_store_stops_changes_and_loses_nothing_acknowledged() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let disk = scratch.path().join("meta-disk");
    let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let config = |failing: std::sync::Arc<std::sync::atomic::AtomicBool>| {
        let mut config = ServerConfig::new(&data);
        config.root_squash = rustre_server::RootSquash::Off;
        let disk = disk.clone();
        config.metadata_backend = Some(std::sync::Arc::new(move || {
            let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&disk);
            Box::new(FailingDisk { file: file.expect("the metadata disk"), failing: failing.clone() })
                as Box<dyn redb::StorageBackend>
        }));
        config
    };
    let server = Server::open(config(failing.clone())).await.unwrap();
    let address = server.listen("127.0.0.1:0").await.unwrap().to_string();
    let client = Client::connect(&address).await.unwrap();
    client.write("/kept", b"acknowledged").await.unwrap();
    client.mkdir("/d", 0o755).await.unwrap();

    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_errno(client.mkdir("/lost", 0o755).await, Errno::EIO);
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let stopped = client.mkdir("/later", 0o755).await.expect_err("the store stopped for good");
    assert_eq!(stopped.errno, Errno::EIO);
    assert!(stopped.message.contains("restart"), "{stopped}");
    assert_eq!(client.stat("/kept").await.unwrap().size, 12, "committed state still answers");
    client.end().await;
    server.shutdown().await;

    let server = Server::open(config(std::sync::Arc::default())).await.unwrap();
    let address = server.listen("127.0.0.1:0").await.unwrap().to_string();
    let client = Client::connect(&address).await.unwrap();
    assert_eq!(client.read("/kept").await.unwrap(), b"acknowledged");
    assert!(client.stat("/d").await.is_ok());
    assert_errno(client.stat("/lost").await, Errno::ENOENT);
    client.end().await;
    server.shutdown().await;
}
