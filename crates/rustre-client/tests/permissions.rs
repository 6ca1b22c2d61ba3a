//! The server checks POSIX permissions itself (`rustre_store::access`), for clients that check
//! nothing: each user here is its own session (another machine), with its own cache, so every
//! refusal below comes from the server.

mod common;

use common::*;
use rustre_client::{Client, ClientConfig, OpenOptions};
use rustre_proto::{Caller, Errno, ROOT_INO, TimeSet, Timestamp, XattrMode};
use rustre_server::RootSquash;

const ALICE: u32 = 1000;
const BOB: u32 = 1001;
const STAFF: u32 = 50;

async fn connect_as(server: &TestServer, caller: Caller) -> Client {
    let config = ClientConfig { caller, ..ClientConfig::default() };
    Client::connect_with(&server.address, config).await.expect("client connects")
}

/// Root sets up a tree; alice (in group staff) and bob (in no group) connect as themselves.
async fn users(server: &TestServer) -> (Client, Client, Client) {
    let root = connect_as(server, Caller::ROOT).await;
    let alice = connect_as(server, Caller { uid: ALICE, gid: ALICE, groups: vec![7, STAFF] }).await;
    let bob = connect_as(server, Caller::new(BOB, BOB)).await;
    (root, alice, bob)
}

fn read_only() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true);
    options
}

fn write_only() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true);
    options
}

#[tokio::test]
async fn modes_owners_and_groups_decide_who_may_do_what() {
    let server = TestServer::start().await;
    let (root, alice, bob) = users(&server).await;
    root.mkdir("/home", 0o755).await.unwrap();
    root.mkdir("/home/alice", 0o700).await.unwrap();
    root.set_owner("/home/alice", Some(ALICE), Some(ALICE)).await.unwrap();
    root.mkdir("/shared", 0o770).await.unwrap();
    root.set_owner("/shared", None, Some(STAFF)).await.unwrap();
    root.mkdir("/pub", 0o755).await.unwrap();
    root.write("/pub/readme", b"hello").await.unwrap();
    root.set_permissions("/pub/readme", 0o644).await.unwrap();

    // Alice's home is hers alone.
    alice.write("/home/alice/a", b"mine").await.unwrap();
    let made = alice.stat("/home/alice/a").await.unwrap();
    assert_eq!((made.uid, made.gid), (ALICE, ALICE), "a new file is its creator's");
    assert_errno(bob.create("/home/alice/b").await.map(drop), Errno::EACCES);
    assert_errno(bob.open("/home/alice/a", &read_only()).await.map(drop), Errno::EACCES);
    assert_errno(bob.read_dir("/home/alice").await, Errno::EACCES);
    assert_errno(bob.stat("/home/alice/a").await, Errno::EACCES);

    // A supplementary group counts.
    alice.write("/shared/s", b"ours").await.unwrap();
    assert_errno(bob.create("/shared/x").await.map(drop), Errno::EACCES);
    assert_errno(bob.mkdir("/shared/d", 0o755).await, Errno::EACCES);

    // Others may read what is world-readable, and change nothing.
    assert_eq!(bob.read("/pub/readme").await.unwrap(), b"hello");
    assert_errno(bob.open("/pub/readme", &write_only()).await.map(drop), Errno::EACCES);
    assert_errno(bob.create("/pub/new").await.map(drop), Errno::EACCES);
    assert_errno(bob.remove_file("/pub/readme").await, Errno::EACCES);
    assert_errno(bob.rename("/pub/readme", "/pub/moved").await, Errno::EACCES);
    assert_errno(bob.truncate("/pub/readme", 0).await, Errno::EACCES);
    assert_errno(bob.symlink("readme", "/pub/link").await, Errno::EACCES);
    assert_errno(bob.hard_link("/pub/readme", "/pub/hard").await, Errno::EACCES);
    assert_eq!(root.read("/pub/readme").await.unwrap(), b"hello", "nothing was changed");

    // Ownership: chmod is the owner's, chown root's, chgrp the owner's to a group it is in.
    assert_errno(bob.set_permissions("/pub/readme", 0o666).await, Errno::EPERM);
    assert_errno(alice.set_owner("/home/alice/a", Some(BOB), None).await, Errno::EPERM);
    assert_errno(alice.set_owner("/home/alice/a", None, Some(BOB)).await, Errno::EPERM);
    assert_eq!(alice.set_owner("/home/alice/a", None, Some(STAFF)).await.unwrap().gid, STAFF);
    assert_eq!(alice.set_permissions("/home/alice/a", 0o640).await.unwrap().perm, 0o640);
    assert_errno(bob.set_times("/pub/readme", None, Some(TimeSet::At(Timestamp::default()))).await, Errno::EPERM);

    // A file made 0444 is still open for writing to its creator, through that handle only.
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o444);
    let mut file = alice.open("/home/alice/ro", &options).await.unwrap();
    file.write_all(b"written once").await.unwrap();
    file.set_len(7).await.expect("ftruncate goes through the handle");
    file.close().await.unwrap();
    assert_errno(alice.open("/home/alice/ro", &write_only()).await.map(drop), Errno::EACCES);
    assert_errno(alice.truncate("/home/alice/ro", 0).await, Errno::EACCES);
    assert_eq!(alice.read("/home/alice/ro").await.unwrap(), b"written");
}

#[tokio::test]
async fn a_sticky_directory_protects_others_files() {
    let server = TestServer::start().await;
    let (root, alice, bob) = users(&server).await;
    root.mkdir("/tmp", 0o1777).await.unwrap();
    alice.write("/tmp/alices", b"a").await.unwrap();
    bob.write("/tmp/bobs", b"b").await.unwrap();

    assert_errno(bob.remove_file("/tmp/alices").await, Errno::EPERM);
    assert_errno(bob.rename("/tmp/alices", "/tmp/taken").await, Errno::EPERM);
    assert_errno(bob.rename("/tmp/bobs", "/tmp/alices").await, Errno::EPERM);
    assert_eq!(root.read("/tmp/alices").await.unwrap(), b"a", "alice's file is untouched");
    bob.rename("/tmp/bobs", "/tmp/bobs2").await.expect("bob moves his own");
    alice.remove_file("/tmp/alices").await.expect("alice removes her own");
    root.remove_file("/tmp/bobs2").await.expect("root removes anyone's");
}

#[tokio::test]
async fn setgid_directories_pass_their_group_on() {
    let server = TestServer::start().await;
    let (root, alice, _) = users(&server).await;
    root.mkdir("/project", 0o2777).await.unwrap();
    root.set_owner("/project", None, Some(STAFF)).await.unwrap();
    alice.write("/project/f", b"x").await.unwrap();
    assert_eq!(alice.stat("/project/f").await.unwrap().gid, STAFF);
    let sub = alice.mkdir("/project/sub", 0o755).await.unwrap();
    assert_eq!((sub.gid, sub.perm), (STAFF, 0o2755), "a subdirectory keeps the bit");
}

#[tokio::test]
async fn writes_by_others_than_root_drop_setuid() {
    let server = TestServer::start().await;
    let (root, _, bob) = users(&server).await;
    root.write("/tool", b"#!/bin/sh\n").await.unwrap();
    root.set_permissions("/tool", 0o4777).await.unwrap();
    let mut file = bob.open("/tool", &write_only()).await.unwrap();
    file.write_all(b"#!/bin/sh\nbad\n").await.unwrap();
    file.close().await.unwrap();
    assert_eq!(root.stat("/tool").await.unwrap().perm, 0o777);
}

// A pin only needs a lookup; reading through it without a handle asks read permission now.
#[tokio::test]
async fn reads_without_a_handle_are_checked() {
    let server = TestServer::start().await;
    let (root, _, bob) = users(&server).await;
    root.write("/secret", b"s3cret").await.unwrap();
    root.set_permissions("/secret", 0o600).await.unwrap();
    let attr = bob.lookup_pinned(ROOT_INO, b"secret").await.expect("anyone may look it up");
    assert_errno(bob.read_pinned(attr.ino, 0, 6).await, Errno::EACCES);
    root.set_permissions("/secret", 0o644).await.unwrap();
    assert_eq!(&bob.read_pinned(attr.ino, 0, 6).await.unwrap()[..], b"s3cret");
}

#[tokio::test]
async fn xattr_namespaces_have_their_owners() {
    let server = TestServer::start().await;
    let (root, alice, bob) = users(&server).await;
    root.mkdir("/a", 0o777).await.unwrap();
    alice.write("/a/f", b"").await.unwrap();
    alice.set_xattr("/a/f", b"user.tag", b"1", XattrMode::Either).await.unwrap();
    assert_eq!(bob.get_xattr("/a/f", b"user.tag").await.unwrap(), b"1");
    assert_errno(bob.set_xattr("/a/f", b"user.tag", b"2", XattrMode::Either).await, Errno::EACCES);
    assert_errno(bob.remove_xattr("/a/f", b"user.tag").await, Errno::EACCES);
    // File capabilities live in security.*: no one but root sets them.
    assert_errno(alice.set_xattr("/a/f", b"security.capability", b"x", XattrMode::Either).await, Errno::EPERM);
    root.set_xattr("/a/f", b"trusted.note", b"root's", XattrMode::Either).await.unwrap();
    assert_errno(alice.get_xattr("/a/f", b"trusted.note").await, Errno::ENODATA);
    assert_eq!(alice.list_xattr("/a/f").await.unwrap(), vec![b"user.tag".to_vec()]);
    assert_eq!(root.list_xattr("/a/f").await.unwrap().len(), 2);
}

#[tokio::test]
async fn root_is_squashed_to_nobody_by_default() {
    let mut server = TestServer::start().await;
    let root = connect_as(&server, Caller::ROOT).await;
    root.mkdir("/open", 0o777).await.unwrap();
    root.mkdir("/closed", 0o700).await.unwrap();
    drop(root);
    // The library's own default, which `rustre server` keeps.
    server
        .restart_with(|config| {
            config.root_squash = rustre_server::ServerConfig::new("unused").root_squash;
            config.recovery_grace = std::time::Duration::ZERO;
        })
        .await;
    let root = connect_as(&server, Caller { uid: 0, gid: 0, groups: vec![0] }).await;
    root.write("/open/f", b"x").await.unwrap();
    let made = root.stat("/open/f").await.unwrap();
    assert_eq!((made.uid, made.gid), (rustre_server::NOBODY, rustre_server::NOBODY));
    assert_errno(root.create("/closed/f").await.map(drop), Errno::EACCES);
    assert_errno(root.mkdir("/mine", 0o755).await, Errno::EACCES);
    assert_errno(root.set_permissions("/closed", 0o777).await, Errno::EPERM);
    assert_errno(root.set_owner("/open/f", Some(0), None).await, Errno::EPERM);

    // Squashed to another identity, when configured so.
    server
        .restart_with(|config| {
            config.root_squash = RootSquash::To { uid: 4242, gid: 4343 };
            config.recovery_grace = std::time::Duration::ZERO;
        })
        .await;
    let root = connect_as(&server, Caller::ROOT).await;
    root.write("/open/g", b"y").await.unwrap();
    let made = root.stat("/open/g").await.unwrap();
    assert_eq!((made.uid, made.gid), (4242, 4343));
}

#[tokio::test]
async fn a_caller_with_too_many_groups_is_refused() {
    let server = TestServer::start().await;
    let groups = (0..=rustre_proto::msg::GROUPS_MAX as u32).map(|group| 100_000 + group).collect();
    let many = connect_as(&server, Caller { uid: ALICE, gid: ALICE, groups }).await;
    assert_errno(many.create("/f").await.map(drop), Errno::EINVAL);
    let groups: Vec<u32> = (0..rustre_proto::msg::GROUPS_MAX as u32).collect();
    let most = connect_as(&server, Caller { uid: ALICE, gid: ALICE, groups }).await;
    assert_errno(most.create("/f").await.map(drop), Errno::EACCES);
}

// After a restart a session takes its handles back (`Op::Reclaim`), each checked as the open it
// stands for: one whose opener may no longer open the file so is lost, while an owner keeps
// its handles whatever the mode (a creator's on a 0444 file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_are_taken_back_after_a_restart_as_their_opens_allow() {
    let grace = std::time::Duration::from_secs(60);
    let mut server = TestServer::start_with(|config| config.recovery_grace = grace).await;
    let proxy = Proxy::start(&server.address).await;
    let root = connect_as(&server, Caller::ROOT).await;
    root.mkdir("/w", 0o777).await.unwrap();
    root.write("/w/roots", b"0123").await.unwrap();
    root.set_permissions("/w/roots", 0o666).await.unwrap();
    let config = ClientConfig { caller: Caller::new(BOB, BOB), ..ClientConfig::default() };
    let bob = Client::connect_with(&proxy.address, config).await.unwrap();
    let theirs = bob.open("/w/roots", &write_only()).await.unwrap();
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).mode(0o444);
    let mine = bob.open("/w/mine", &options).await.unwrap();
    root.set_permissions("/w/roots", 0o644).await.unwrap();
    root.end().await;
    // Only bob's session is left for the restarted server to wait for.
    eventually("root's session ended", || server.server().session_count() == 1).await;

    server.restart_with(|config| config.recovery_grace = grace).await;
    proxy.retarget(&server.address);
    proxy.cut();
    mine.pwrite(0, b"still mine").await.expect("the owner's handle was taken back");
    let error = theirs.pwrite(0, b"x").await.expect_err("the handle was not taken back");
    assert_eq!(error.errno, Errno::EIO, "{error:?}");
    let root = connect_as(&server, Caller::ROOT).await;
    assert_eq!(root.read("/w/roots").await.unwrap(), b"0123");
    assert_eq!(root.read("/w/mine").await.unwrap(), b"still mine");
    bob.end().await;
}

/// A raw protocol connection, for requests the library never sends: one request at a time,
/// skipping the server's own requests (pings) on the way to the reply.
struct Raw {
    stream: tokio::net::TcpStream,
    next_id: u64,
}

impl Raw {
    async fn connect(address: &str) -> Raw {
        Raw { stream: tokio::net::TcpStream::connect(address).await.unwrap(), next_id: 1 }
    }

    async fn call(
        &mut self,
        caller: &Caller,
        op: rustre_proto::Op,
    ) -> Result<rustre_proto::Reply, rustre_proto::WireError> {
        use rustre_proto::frame::{Frame, FrameKind, read_frame, write_frame};
        use tokio::io::AsyncWriteExt;
        let id = self.next_id;
        self.next_id += 1;
        let request = rustre_proto::Request { caller: caller.clone(), op };
        write_frame(&mut self.stream, &Frame::new(FrameKind::Request, id, &request, bytes::Bytes::new()))
            .await
            .unwrap();
        self.stream.flush().await.unwrap();
        loop {
            let frame = read_frame(&mut self.stream).await.unwrap();
            if frame.kind == FrameKind::Reply && frame.id == id {
                return frame.decode_header::<rustre_proto::ReplyHeader>().unwrap().result;
            }
        }
    }
}

// A resend after a restart is answered from its ONCE row, but the op resent is the client's
// word: a client whose write open of a file was recorded, and who may no longer write it,
// resends the same slot and sequence number as a truncating open and gets nothing (the replay
// runs as the caller, not as root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_resend_after_a_restart_gets_nothing_the_caller_may_not_have() {
    use rustre_proto::{HELLO_MAGIC, Op, OpenFlags, Reply};
    let grace = std::time::Duration::from_secs(60);
    let mut server = TestServer::start_with(|config| config.recovery_grace = grace).await;
    let root = connect_as(&server, Caller::ROOT).await;
    root.write("/roots", b"root's").await.unwrap();
    root.set_permissions("/roots", 0o666).await.unwrap();
    let ino = root.stat("/roots").await.unwrap().ino;

    let bob = Caller::new(BOB, BOB);
    let versions = (rustre_proto::msg::PROTOCOL_VERSION_MIN, rustre_proto::msg::PROTOCOL_VERSION_MAX);
    let mut raw = Raw::connect(&server.address).await;
    let hello =
        Op::Hello { magic: HELLO_MAGIC, version_min: versions.0, version_max: versions.1, client_name: "raw".into() };
    let Ok(Reply::Hello { session, .. }) = raw.call(&bob, hello).await else { panic!("no hello") };
    let write = Op::Once { slot: 0, seq: 1, op: Box::new(Op::OpenIno { ino, flags: OpenFlags::WRITE }) };
    assert!(matches!(raw.call(&bob, write).await, Ok(Reply::Opened { .. })), "bob may write it");
    drop(raw);
    root.set_permissions("/roots", 0o644).await.unwrap();
    root.end().await;
    eventually("only bob's session is left", || server.server().session_count() <= 1).await;

    server.restart_with(|config| config.recovery_grace = grace).await;
    let mut raw = Raw::connect(&server.address).await;
    let resume = Op::Resume {
        magic: HELLO_MAGIC,
        version_min: versions.0,
        version_max: versions.1,
        client_name: "raw".into(),
        session,
    };
    assert!(matches!(raw.call(&bob, resume).await, Ok(Reply::Resumed { .. })));
    let reclaim = Op::Reclaim { handles: Vec::new(), pins: Vec::new(), last: true };
    assert!(raw.call(&bob, reclaim).await.is_ok());
    let forged =
        Op::Once { slot: 0, seq: 1, op: Box::new(Op::OpenIno { ino, flags: OpenFlags::WRITE | OpenFlags::TRUNCATE }) };
    match raw.call(&bob, forged).await {
        Err(error) => assert_eq!(error.errno, Errno::EACCES, "{error:?}"),
        Ok(reply) => panic!("a forged resend got {reply:?}"),
    }
    let root = connect_as(&server, Caller::ROOT).await;
    assert_eq!(root.read("/roots").await.unwrap(), b"root's", "nothing was truncated");
}
