//! Regression tests for defects found in review: each test names the defect it guards against.
mod common;

use common::*;
use rustre_client::OpenOptions;
use rustre_proto::{Errno, XattrMode};

// Defect: a truncating open did not hold the file's data lock, so a write that had read the old
// size could record its end after the truncate and expose the bytes before it again. Many rounds
// of a truncating open racing a write must only ever end in one of the two serial outcomes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncating_open_racing_a_write_never_exposes_old_bytes() {
    let server = TestServer::start().await;
    let writer_client = server.client().await;
    let truncating_client = server.client().await;
    let mut truncating = OpenOptions::new();
    truncating.write(true).truncate(true);
    for _ in 0..200 {
        writer_client.write("/f", &[b'A'; 100]).await.unwrap();
        let mut writer = writer_client.open("/f", OpenOptions::new().write(true)).await.unwrap();
        let write = writer.write_at(50, &[b'B'; 10]);
        let truncate = truncating_client.open("/f", &truncating);
        let (written, truncated) = tokio::join!(write, truncate);
        written.unwrap();
        truncated.unwrap().close().await.unwrap();
        writer.close().await.unwrap();
        let contents = writer_client.read("/f").await.unwrap();
        let write_then_truncate = contents.is_empty();
        let truncate_then_write = contents.len() == 60 && contents[..50] == [0; 50] && contents[50..] == [b'B'; 10];
        assert!(write_then_truncate || truncate_then_write, "not a serial outcome: {contents:?}");
    }
}

// Defect: fsync with nothing else in its batch committed nothing. It must always produce a
// durable commit (which also persists earlier non-durable size updates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_always_makes_a_durable_commit() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mut file = client.create("/f").await.unwrap();
    file.write_all(b"data").await.unwrap();
    let before = server.server().commit_stats().durable_commits;
    file.fsync().await.unwrap();
    assert!(server.server().commit_stats().durable_commits > before);
    file.fsync().await.unwrap();
    assert!(server.server().commit_stats().durable_commits > before + 1, "every fsync commits durably");
}

// Defect: EMFILE came after the open had created the file. A session at its handle bound is
// refused before anything changes: no file is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emfile_comes_before_the_create() {
    let server = TestServer::start_with(|config| config.handles_per_session_max = 3).await;
    let client = server.client().await;
    let mut files = Vec::new();
    for index in 0..3 {
        files.push(client.create(format!("/f{index}")).await.unwrap());
    }
    assert_errno(client.create("/extra").await.map(|_| ()), Errno::EMFILE);
    assert!(!client.exists("/extra").await.unwrap(), "a refused open created nothing");
    files.pop().unwrap().close().await.unwrap();
    client.create("/extra").await.unwrap().close().await.unwrap();
    // Other sessions have bounds of their own.
    server.client().await.create("/other").await.unwrap();
}

// Pins keep inodes alive as handles do, so they are bounded per session too: the orphans one
// client keeps are at most its handles and its pins. A pin of an inode pinned already passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_per_session_are_bounded() {
    let server = TestServer::start_with(|config| config.pins_per_session_max = 2).await;
    let client = server.client().await;
    for name in ["a", "b", "c"] {
        client.write(format!("/{name}"), b"").await.unwrap();
    }
    let a = client.lookup_pinned(rustre_proto::ROOT_INO, b"a").await.unwrap();
    let b = client.lookup_pinned(rustre_proto::ROOT_INO, b"b").await.unwrap();
    assert_errno(client.lookup_pinned(rustre_proto::ROOT_INO, b"c").await, Errno::EMFILE);
    let c = client.stat("/c").await.unwrap();
    assert_errno(client.pin(c.ino).await, Errno::EMFILE);
    client.pin(a.ino).await.expect("one more pin of a pinned inode");
    client.unpin(b.ino, 1).await.unwrap();
    client.pin(c.ino).await.expect("room again");
    // The orphans it can keep are bounded with the pins.
    for name in ["a", "b", "c"] {
        client.remove_file(format!("/{name}")).await.unwrap();
    }
    assert_eq!(server.server().orphans().unwrap().len(), 2, "a and c, which the session pins");
    // Another session has a bound of its own.
    server.client().await.pin(b.ino).await.expect_err("b is gone: nobody pinned it");
}

// A path from the network is walked on the server component by component, some of it on the
// commit thread: one with more than `PATH_COMPONENTS_MAX` components is refused before a step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_from_the_network_are_bounded() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.mkdir("/d", 0o755).await.unwrap();
    let long = vec![b"..".to_vec(); rustre_proto::msg::PATH_COMPONENTS_MAX + 1];
    let op = rustre_proto::Op::OnPath {
        path: long.clone(),
        follow_last: false,
        op: Box::new(rustre_proto::Op::GetAttr { ino: 0 }),
    };
    assert_errno(client.call(op, bytes::Bytes::new()).await, Errno::ENAMETOOLONG);
    let mkdir = rustre_proto::Op::Mkdir { parent: 0, name: b"x".to_vec(), perm: 0o755 };
    let op = rustre_proto::Op::AtPath { dir: long, new_dir: None, follow_last: false, op: Box::new(mkdir) };
    assert_errno(client.call(op, bytes::Bytes::new()).await, Errno::ENAMETOOLONG);
    // At the bound, a path of ".." walks (to the root).
    let most = vec![b"..".to_vec(); rustre_proto::msg::PATH_COMPONENTS_MAX];
    let op =
        rustre_proto::Op::OnPath { path: most, follow_last: false, op: Box::new(rustre_proto::Op::GetAttr { ino: 0 }) };
    client.call(op, bytes::Bytes::new()).await.expect("a path at the bound walks");
}

// Defect: an inode's xattr name list had no bound, so a listxattr reply could outgrow a frame.
// Adding names stops with ENOSPC at Linux's 64 KiB list bound, and the list still comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xattr_name_lists_are_bounded() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.write("/f", b"").await.unwrap();
    let mut added = 0;
    let refused = loop {
        let name = format!("user.{added:0>250}");
        match client.set_xattr("/f", name.as_bytes(), b"v", XattrMode::Either).await {
            Ok(()) => added += 1,
            Err(error) => break error,
        }
        assert!(added <= 256, "the bound is 64 KiB of names");
    };
    assert_eq!(refused.errno, Errno::ENOSPC);
    let names = client.list_xattr("/f").await.unwrap();
    assert_eq!(names.len(), added);
    assert!(names.iter().map(|name| name.len() + 1).sum::<usize>() <= 65536);
    // Replacing an existing name still works at the bound.
    let first = format!("user.{:0>250}", 0);
    client.set_xattr("/f", first.as_bytes(), b"new", XattrMode::Replace).await.unwrap();
}

// Defect: a trailing slash was ignored. A path ending in "/" names a directory, as on Linux.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trailing_slash_names_a_directory() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.write("/f", b"file").await.unwrap();
    client.mkdir("/d", 0o755).await.unwrap();
    client.symlink("d", "/link").await.unwrap();

    assert_errno(client.stat("/f/").await, Errno::ENOTDIR);
    assert_eq!(client.stat("/d/").await.unwrap().kind, rustre_proto::FileKind::Directory);
    assert_eq!(client.lstat("/link/").await.unwrap().kind, rustre_proto::FileKind::Directory, "slash follows");
    assert_errno(client.open("/f/", OpenOptions::new().read(true)).await.map(|_| ()), Errno::ENOTDIR);
    assert_errno(client.create("/new/").await.map(|_| ()), Errno::EISDIR);
    assert!(!client.exists("/new").await.unwrap());
    assert_errno(client.create("/d/").await.map(|_| ()), Errno::EISDIR);
    client.open("/d/", OpenOptions::new().read(true)).await.unwrap().close().await.unwrap();
    assert_errno(client.remove_file("/f/").await, Errno::ENOTDIR);
    assert_errno(client.remove_file("/d/").await, Errno::EISDIR);
    assert_errno(client.rename("/f", "/g/").await, Errno::ENOTDIR);
    assert!(client.exists("/f").await.unwrap(), "the refused rename moved nothing");
    client.rename("/d/", "/e/").await.unwrap();
    assert!(client.exists("/e").await.unwrap());
    client.mkdir("/m/", 0o755).await.unwrap();
    client.remove_dir("/m/").await.unwrap();
}

// Defect: setattr growing a directory or symlink created a data object before the store refused.
// The refusal comes with nothing made on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_size_changes_touch_no_data_object() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let directory = client.mkdir("/d", 0o755).await.unwrap();
    let link = client.symlink("target", "/l").await.unwrap();
    assert_errno(client.truncate("/d", 4096).await, Errno::EISDIR);
    let set = rustre_proto::SetAttrIn { size: Some(4096), ..Default::default() };
    assert_errno(client.setattr(link.ino, set).await, Errno::EINVAL);
    for ino in [directory.ino, link.ino] {
        let object = server.data_dir().join("objects").join(format!("{:02x}", ino % 256)).join(format!("{ino:016x}"));
        assert!(!object.exists(), "{} exists", object.display());
    }
}

// A rename that does nothing (onto itself, or onto another hard link of the same file) must not
// leave the renaming client believing the source name is gone (reported in review of the
// simulator's model).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_that_does_nothing_leaves_the_source_visible() {
    let server = TestServer::start().await;
    let a = server.client().await;
    a.write("/f", b"x").await.unwrap();
    a.hard_link("/f", "/g").await.unwrap();
    a.rename("/f", "/g").await.unwrap();
    assert_eq!(a.stat("/f").await.unwrap().nlink, 2, "both links are still there");
    a.rename("/f", "/f").await.unwrap();
    assert_eq!(a.stat("/f").await.unwrap().size, 1);
    let names: Vec<_> = a.read_dir("/").await.unwrap().into_iter().map(|entry| entry.name).collect();
    assert_eq!(names, vec![b"f".to_vec(), b"g".to_vec()]);
    a.check_cache_invariants();
}

/// A pin counted while its session ends must not outlive the session (its orphan would live on
/// until the next restart). The pin stops inside its count, holding the session's handles lock;
/// the session ends meanwhile, and its teardown must wait for that lock; then the pin goes on.
/// Either it was counted before the teardown, which gives it back, or it sees the session
/// closed and gives itself back: the orphan goes. (Checked and counted apart, the teardown ran
/// in between and the orphan stayed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pin_counted_while_its_session_ends_goes_with_the_session() {
    let points = std::sync::Arc::new(rustre_proto::pause::PausePoints::default());
    let server = TestServer::start_with(|config| config.pause_points = points.clone()).await;
    let (a, b) = (server.client().await, server.client().await);
    b.write("/f", b"x").await.unwrap();
    let ino = b.stat("/f").await.unwrap().ino;

    let paused = points.arm("server.count_pin.locked");
    let pinning = tokio::spawn({
        let a = a.clone();
        async move { a.pin(ino).await }
    });
    reach(&paused).await;
    b.remove_file("/f").await.unwrap();
    assert_eq!(server.server().orphans().unwrap(), [ino], "the pin keeps f as an orphan");
    // A's session ends while its pin is being counted: give the teardown time to get as far
    // as it can before the pin goes on.
    let ending = tokio::spawn(async move { a.end().await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    paused.release();
    ending.await.unwrap();
    let _ = pinning.await.unwrap();
    eventually("the orphan goes with the session", || server.server().orphans().unwrap().is_empty()).await;
}
