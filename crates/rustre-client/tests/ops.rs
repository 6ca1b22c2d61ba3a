//! Every operation of the client API against a real server over TCP: results, exact errnos and the
//! exact state left behind, checked the way a POSIX file system is expected to behave.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rustre_client::{Client, OpenOptions};
use rustre_proto::msg::FILE_SIZE_MAX;
use rustre_proto::{
    Attr, Errno, FileKind, Op, OpenFlags, Orphan, ROOT_INO, RenameMode, SetAttrIn, TimeSet, Timestamp, XattrMode,
};

// ---- helpers ----

/// A path from raw bytes (names are bytes, not UTF-8).
fn bpath(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

fn read_only() -> OpenOptions {
    OpenOptions::new().read(true).clone()
}

fn write_only() -> OpenOptions {
    OpenOptions::new().write(true).clone()
}

fn read_write() -> OpenOptions {
    OpenOptions::new().read(true).write(true).clone()
}

fn create_rw() -> OpenOptions {
    OpenOptions::new().read(true).write(true).create(true).clone()
}

async fn ino(client: &Client, path: &str) -> u64 {
    client.lstat(path).await.unwrap_or_else(|error| panic!("lstat {path}: {error}")).ino
}

async fn nlink(client: &Client, path: &str) -> u32 {
    client.lstat(path).await.unwrap_or_else(|error| panic!("lstat {path}: {error}")).nlink
}

/// Slack on top of a recovery grace period the tests wait out: generous, for a loaded machine.
/// A bound, never a measure of speed.
const GRACE_SLACK: Duration = Duration::from_secs(30);

/// Waits (bounded by `limit`) until `condition` holds.
async fn within(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Lets the server's wall clock move on, so a timestamp taken afterwards differs from one before.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

/// The result of an operation as (value or errno), for table comparisons.
fn outcome<T>(result: rustre_client::Result<T>) -> Result<T, Errno> {
    result.map_err(|error| error.errno)
}

/// Fails the test listing every mismatch at once.
#[track_caller]
fn assert_no_failures(failures: &[String]) {
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// A node of a tree as tests describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    File(Vec<u8>),
    Dir,
    Link(Vec<u8>),
}

/// What to build: a file with contents, a directory, a symlink to a target, a hard link to an
/// earlier path of the same spec.
#[derive(Clone, Copy, Debug)]
enum Spec {
    F(&'static str),
    D,
    L(&'static str),
    H(&'static str),
}

async fn build(client: &Client, root: &str, specs: &[(&str, Spec)]) {
    client.mkdir(root, 0o755).await.unwrap();
    for (path, spec) in specs {
        let full = format!("{root}/{path}");
        match spec {
            Spec::F(contents) => client.write(&full, contents.as_bytes()).await.unwrap(),
            Spec::D => {
                client.mkdir(&full, 0o755).await.unwrap();
            }
            Spec::L(target) => {
                client.symlink(target, &full).await.unwrap();
            }
            Spec::H(original) => {
                client.hard_link(format!("{root}/{original}"), &full).await.unwrap();
            }
        }
    }
}

fn expected_tree(specs: &[(&str, Spec)]) -> BTreeMap<String, Node> {
    let contents_of = |path: &str| -> Node {
        match specs.iter().find(|(name, _)| *name == path).map(|(_, spec)| *spec) {
            Some(Spec::F(contents)) => Node::File(contents.as_bytes().to_vec()),
            other => panic!("a hard link in a spec names a file of the spec, not {other:?}"),
        }
    };
    specs
        .iter()
        .map(|(path, spec)| {
            let node = match spec {
                Spec::F(contents) => Node::File(contents.as_bytes().to_vec()),
                Spec::D => Node::Dir,
                Spec::L(target) => Node::Link(target.as_bytes().to_vec()),
                Spec::H(original) => contents_of(original),
            };
            (path.to_string(), node)
        })
        .collect()
}

/// Everything below `root`, as relative path -> node, read through the client.
async fn tree(client: &Client, root: &str) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut pending = vec![String::new()];
    while let Some(relative) = pending.pop() {
        for entry in client.read_dir(format!("{root}{relative}")).await.unwrap() {
            let name = String::from_utf8(entry.name).expect("test names are UTF-8");
            let child = format!("{relative}/{name}");
            let path = format!("{root}{child}");
            assert_eq!(client.lstat(&path).await.unwrap().kind, entry.kind, "readdir kind of {path}");
            let node = match entry.kind {
                FileKind::Directory => {
                    pending.push(child.clone());
                    Node::Dir
                }
                FileKind::Regular => Node::File(client.read(&path).await.unwrap()),
                FileKind::Symlink => Node::Link(client.read_link(&path).await.unwrap()),
            };
            let previous = out.insert(child[1..].to_string(), node);
            assert!(previous.is_none(), "{path} listed twice");
        }
    }
    out
}

fn names(entries: &[rustre_proto::DirEntry]) -> Vec<Vec<u8>> {
    entries.iter().map(|entry| entry.name.clone()).collect()
}

fn object_path(server: &TestServer, ino: u64) -> PathBuf {
    server.data_dir().join("objects").join(format!("{:02x}", ino % 256)).join(format!("{ino:016x}"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + seed as usize) % 251) as u8).collect()
}

// ---- lookup, stat, lstat ----

// Proves stat/lstat resolve paths as POSIX does: ENOENT, ENOTDIR, `..`, and symlinks (relative, absolute, chains, loops, the 40-link limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_and_lstat_resolve_paths_as_posix() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_dir_all("/d/sub").await.unwrap();
    client.write("/d/f", b"data").await.unwrap();
    client.write("/d/sub/g", b"gg").await.unwrap();
    for (target, link) in [
        ("d/f", "/rel"),
        ("/d/f", "/abs"),
        ("../d/sub/g", "/d/up"),
        ("sub/..", "/d/back"),
        ("chain2", "/chain1"),
        ("chain3", "/chain2"),
        ("/d/f", "/chain3"),
        ("loop_b", "/loop_a"),
        ("loop_a", "/loop_b"),
        ("self", "/self"),
        ("d", "/dirlink"),
        ("/d/sub", "/d/abs_sub"),
        ("nowhere", "/dangling"),
        ("/", "/rootlink"),
    ] {
        client.symlink(target, link).await.unwrap();
    }
    // s0 -> /d/f and s{i} -> s{i-1}: resolving s{i} follows i + 1 symlinks.
    client.symlink("/d/f", "/s0").await.unwrap();
    for i in 1..=40 {
        client.symlink(format!("s{}", i - 1), format!("/s{i}")).await.unwrap();
    }
    let d = ino(&client, "/d").await;
    let f = ino(&client, "/d/f").await;
    let sub = ino(&client, "/d/sub").await;
    let g = ino(&client, "/d/sub/g").await;

    let stat_cases: Vec<(&str, Result<u64, Errno>)> = vec![
        ("/", Ok(ROOT_INO)),
        ("/d", Ok(d)),
        ("/d/f", Ok(f)),
        ("//d///f", Ok(f)),
        ("/d/./sub/./g", Ok(g)),
        ("/d/missing", Err(Errno::ENOENT)),
        ("/missing/f", Err(Errno::ENOENT)),
        ("/d/f/x", Err(Errno::ENOTDIR)),
        ("/d/f/..", Err(Errno::ENOTDIR)),
        ("/d/f/x/y", Err(Errno::ENOTDIR)),
        ("/d/sub/..", Ok(d)),
        ("/d/sub/../f", Ok(f)),
        ("/d/sub/../..", Ok(ROOT_INO)),
        ("/..", Ok(ROOT_INO)),
        ("/../../d", Ok(d)),
        ("/rel", Ok(f)),
        ("/abs", Ok(f)),
        ("/d/up", Ok(g)),
        ("/d/back", Ok(d)),
        ("/d/back/f", Ok(f)),
        ("/chain1", Ok(f)),
        ("/loop_a", Err(Errno::ELOOP)),
        ("/loop_b/x", Err(Errno::ELOOP)),
        ("/self", Err(Errno::ELOOP)),
        ("/dirlink", Ok(d)),
        ("/dirlink/sub/g", Ok(g)),
        ("/dirlink/../d/f", Ok(f)),
        ("/d/abs_sub/..", Ok(d)),
        ("/d/abs_sub/g", Ok(g)),
        ("/rootlink/d/f", Ok(f)),
        ("/rel/x", Err(Errno::ENOTDIR)),
        ("/dangling", Err(Errno::ENOENT)),
        ("/s39", Ok(f)),
        ("/s40", Err(Errno::ELOOP)),
    ];
    let rel = ino(&client, "/rel").await;
    let loop_a = ino(&client, "/loop_a").await;
    let dangling = ino(&client, "/dangling").await;
    let dirlink = ino(&client, "/dirlink").await;
    let s40 = ino(&client, "/s40").await;
    type Found = Result<(u64, FileKind), Errno>;
    let lstat_cases: Vec<(&str, Found)> = vec![
        ("/rel", Ok((rel, FileKind::Symlink))),
        ("/loop_a", Ok((loop_a, FileKind::Symlink))),
        ("/dangling", Ok((dangling, FileKind::Symlink))),
        ("/dirlink", Ok((dirlink, FileKind::Symlink))),
        ("/s40", Ok((s40, FileKind::Symlink))),
        ("/dirlink/f", Ok((f, FileKind::Regular))),
        ("/d/sub", Ok((sub, FileKind::Directory))),
        ("/d/f/x", Err(Errno::ENOTDIR)),
        ("/d/nothing", Err(Errno::ENOENT)),
        ("/loop_a/x", Err(Errno::ELOOP)),
    ];

    let mut failures = Vec::new();
    for (path, expected) in stat_cases {
        let got = outcome(client.stat(path).await).map(|attr| attr.ino);
        if got != expected {
            failures.push(format!("stat {path}: expected {expected:?}, got {got:?}"));
        }
    }
    for (path, expected) in lstat_cases {
        let got = outcome(client.lstat(path).await).map(|attr| (attr.ino, attr.kind));
        if got != expected {
            failures.push(format!("lstat {path}: expected {expected:?}, got {got:?}"));
        }
    }
    for (path, expected) in [("/d/f", true), ("/dangling", true), ("/d/nope", false)] {
        let got = client.exists(path).await.unwrap();
        if got != expected {
            failures.push(format!("exists {path}: expected {expected}, got {got}"));
        }
    }
    assert_errno(client.exists("/d/f/x").await, Errno::ENOTDIR);
    assert_no_failures(&failures);
}

// Proves a trailing slash demands a directory, as on Linux: ENOTDIR on files, and it makes lstat follow a final symlink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailing_slash_requires_a_directory() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.mkdir("/d", 0o755).await.unwrap();
    client.write("/f", b"file").await.unwrap();
    client.symlink("f", "/lf").await.unwrap();
    client.symlink("d", "/ld").await.unwrap();
    let d = ino(&client, "/d").await;
    let mut failures = Vec::new();
    let stat_cases: Vec<(&str, bool, Result<u64, Errno>)> = vec![
        ("/d/", true, Ok(d)),
        ("/f/", true, Err(Errno::ENOTDIR)),
        ("/f/", false, Err(Errno::ENOTDIR)),
        ("/lf/", true, Err(Errno::ENOTDIR)),
        ("/ld/", true, Ok(d)),
        ("/ld/", false, Ok(d)),
    ];
    for (path, follow, expected) in stat_cases {
        let got = if follow { outcome(client.stat(path).await) } else { outcome(client.lstat(path).await) }
            .map(|attr| attr.ino);
        if got != expected {
            let verb = if follow { "stat" } else { "lstat" };
            failures.push(format!("{verb} {path}: expected {expected:?}, got {got:?}"));
        }
    }
    let got = outcome(client.open("/f/", &read_only()).await).map(|file| file.ino());
    if got != Err(Errno::ENOTDIR) {
        failures.push(format!("open /f/ for reading: expected ENOTDIR, got {got:?}"));
    }
    let got = outcome(client.open("/new/", &create_rw()).await).map(|file| file.ino());
    if got != Err(Errno::EISDIR) {
        failures.push(format!("open /new/ with O_CREAT: expected EISDIR, got {got:?}"));
    }
    let got = outcome(client.remove_file("/f/").await);
    if got != Err(Errno::ENOTDIR) {
        failures.push(format!("unlink /f/: expected ENOTDIR, got {got:?}"));
    }
    if !client.exists("/f").await.unwrap() {
        failures.push("unlink /f/ removed the file /f".to_string());
    }
    // mkdir accepts a trailing slash.
    let made = client.mkdir("/nd/", 0o755).await.unwrap();
    assert_eq!(made.kind, FileKind::Directory);
    assert_eq!(client.stat("/nd").await.unwrap().ino, made.ino);
    assert_no_failures(&failures);
}

// Proves name validation: 255 bytes work, 256 are ENAMETOOLONG, and NUL, '/', "", "." and ".." are EINVAL, in the client and again in the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_validated_by_client_and_server() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let longest = vec![b'n'; 255];
    let dir = client.mkdir_at(ROOT_INO, &longest, 0o755).await.unwrap();
    assert_eq!(client.lookup(ROOT_INO, &longest).await.unwrap().ino, dir.ino);
    let mut path = b"/".to_vec();
    path.extend_from_slice(&longest);
    assert_eq!(client.stat(bpath(&path)).await.unwrap().ino, dir.ino);
    let mut longest_file = longest.clone();
    longest_file[0] = b'f';
    let file = client.open_at(ROOT_INO, &longest_file, OpenFlags::WRITE | OpenFlags::CREATE, 0o644).await.unwrap();
    assert!(file.created());
    let file_ino = file.ino();
    file.close().await.unwrap();
    client.write("/victim", b"v").await.unwrap();
    let victim = ino(&client, "/victim").await;

    let too_long = vec![b'n'; 256];
    let mut long_path = b"/".to_vec();
    long_path.extend_from_slice(&too_long);
    assert_errno(client.stat(bpath(&long_path)).await, Errno::ENAMETOOLONG);
    assert_errno(client.mkdir(bpath(&long_path), 0o755).await, Errno::ENAMETOOLONG);
    assert_errno(client.write(bpath(&long_path), b"x").await, Errno::ENAMETOOLONG);

    let bad: Vec<(&[u8], Errno)> = vec![
        (too_long.as_slice(), Errno::ENAMETOOLONG),
        (b"a\0b", Errno::EINVAL),
        (b"\0", Errno::EINVAL),
        (b"a/b", Errno::EINVAL),
        (b"", Errno::EINVAL),
        (b".", Errno::EINVAL),
        (b"..", Errno::EINVAL),
    ];
    let mut failures = Vec::new();
    let mut check = |what: String, got: Result<(), Errno>, expected: Errno| {
        if got != Err(expected) {
            failures.push(format!("{what}: expected {expected:?}, got {got:?}"));
        }
    };
    for (name, errno) in bad {
        let shown = String::from_utf8_lossy(name).escape_debug().to_string();
        // Through the client's inode API (validated before sending).
        check(format!("lookup {shown:?}"), outcome(client.lookup(ROOT_INO, name).await).map(drop), errno);
        check(format!("mkdir_at {shown:?}"), outcome(client.mkdir_at(ROOT_INO, name, 0o755).await).map(drop), errno);
        check(
            format!("open_at {shown:?}"),
            outcome(client.open_at(ROOT_INO, name, OpenFlags::WRITE | OpenFlags::CREATE, 0o644).await).map(drop),
            errno,
        );
        check(format!("unlink_at {shown:?}"), outcome(client.unlink_at(ROOT_INO, name).await), errno);
        check(format!("rmdir_at {shown:?}"), outcome(client.rmdir_at(ROOT_INO, name).await), errno);
        check(
            format!("symlink_at {shown:?}"),
            outcome(client.symlink_at(ROOT_INO, name, b"target").await).map(drop),
            errno,
        );
        check(format!("link_at {shown:?}"), outcome(client.link_at(victim, ROOT_INO, name).await).map(drop), errno);
        check(
            format!("rename_at to {shown:?}"),
            outcome(client.rename_at(ROOT_INO, b"victim", ROOT_INO, name, RenameMode::Replace).await),
            errno,
        );
        check(
            format!("rename_at from {shown:?}"),
            outcome(client.rename_at(ROOT_INO, name, ROOT_INO, b"other", RenameMode::Replace).await),
            errno,
        );
        // Straight to the server, bypassing the client's checks.
        let raw_ops = vec![
            Op::Lookup { parent: ROOT_INO, name: name.to_vec() },
            Op::Mkdir { parent: ROOT_INO, name: name.to_vec(), perm: 0o755 },
            Op::Open {
                parent: ROOT_INO,
                name: name.to_vec(),
                flags: OpenFlags::WRITE | OpenFlags::CREATE,
                perm: 0o644,
            },
            Op::Unlink { parent: ROOT_INO, name: name.to_vec() },
            Op::Rmdir { parent: ROOT_INO, name: name.to_vec() },
            Op::Symlink { parent: ROOT_INO, name: name.to_vec(), target: b"target".to_vec() },
            Op::Link { ino: victim, new_parent: ROOT_INO, new_name: name.to_vec() },
            Op::Rename {
                parent: ROOT_INO,
                name: b"victim".to_vec(),
                new_parent: ROOT_INO,
                new_name: name.to_vec(),
                mode: RenameMode::Replace,
            },
        ];
        for op in raw_ops {
            let kind = op.kind_name();
            check(format!("raw {kind} {shown:?}"), outcome(client.call(op, Bytes::new()).await).map(drop), errno);
        }
    }
    assert_no_failures(&failures);
    // Nothing was created or renamed by the refused calls.
    let mut listed = names(&client.read_dir("/").await.unwrap());
    listed.sort();
    let mut expected = vec![longest.clone(), longest_file.clone(), b"victim".to_vec()];
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(client.stat(bpath(&[&b"/"[..], &longest_file[..]].concat())).await.unwrap().ino, file_ino);
    assert_eq!(nlink(&client, "/victim").await, 1);
}

// ---- open ----

// Proves O_CREAT, O_CREAT|O_EXCL and plain opens: creation, reuse of the same inode, EEXIST, ENOENT, ENOTDIR and invalid option sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_create_exclusive_and_missing() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let before = client.statfs().await.unwrap().files;
    let file = client.open("/f", OpenOptions::new().write(true).create(true).mode(0o640)).await.unwrap();
    assert!(file.created());
    let attr = file.cached_attr().clone();
    assert_eq!(attr.kind, FileKind::Regular);
    assert_eq!(attr.perm, 0o640);
    assert_eq!(attr.mode(), 0o100640);
    assert_eq!(attr.nlink, 1);
    assert_eq!(attr.size, 0);
    let created_ino = file.ino();
    file.close().await.unwrap();
    assert_eq!(client.statfs().await.unwrap().files, before + 1);
    assert_eq!(client.stat("/f").await.unwrap(), attr);

    let again = client.open("/f", OpenOptions::new().write(true).create(true).mode(0o600)).await.unwrap();
    assert!(!again.created(), "O_CREAT on an existing file opens it");
    assert_eq!(again.ino(), created_ino);
    assert_eq!(again.cached_attr().perm, 0o640, "the mode applies only to a new file");
    again.close().await.unwrap();

    client.mkdir("/dir", 0o755).await.unwrap();
    let cases: Vec<(&str, OpenOptions, Result<u64, Errno>)> = vec![
        ("/f", OpenOptions::new().write(true).create_new(true).clone(), Err(Errno::EEXIST)),
        ("/dir", OpenOptions::new().write(true).create_new(true).clone(), Err(Errno::EEXIST)),
        ("/f", read_only(), Ok(created_ino)),
        ("/missing", read_only(), Err(Errno::ENOENT)),
        ("/missing", read_write(), Err(Errno::ENOENT)),
        ("/missing", OpenOptions::new().write(true).truncate(true).clone(), Err(Errno::ENOENT)),
        ("/nodir/x", create_rw(), Err(Errno::ENOENT)),
        ("/f/x", create_rw(), Err(Errno::ENOTDIR)),
        ("/f/x", read_only(), Err(Errno::ENOTDIR)),
        ("/f", OpenOptions::new().clone(), Err(Errno::EINVAL)),
        ("/f", OpenOptions::new().read(true).create(true).clone(), Err(Errno::EINVAL)),
        ("/f", OpenOptions::new().read(true).truncate(true).clone(), Err(Errno::EINVAL)),
    ];
    let mut failures = Vec::new();
    for (path, options, expected) in cases {
        let got = match client.open(path, &options).await {
            Ok(file) => {
                let ino = file.ino();
                file.close().await.unwrap();
                Ok(ino)
            }
            Err(error) => Err(error.errno),
        };
        if got != expected {
            failures.push(format!("open {path} {options:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert_no_failures(&failures);

    // O_EXCL on a new name creates it.
    let fresh = client.open("/dir/new", OpenOptions::new().write(true).create_new(true)).await.unwrap();
    assert!(fresh.created());
    fresh.close().await.unwrap();
    let mut listed = names(&client.read_dir("/").await.unwrap());
    listed.sort();
    assert_eq!(listed, vec![b"dir".to_vec(), b"f".to_vec()], "failed opens created nothing");
    assert_eq!(names(&client.read_dir("/dir").await.unwrap()), vec![b"new".to_vec()]);
}

// Proves O_TRUNC empties the file and old bytes never reappear, whether the file is then written past a hole or grown by truncate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_truncate_discards_old_data() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mut file = client.open("/t", &create_rw()).await.unwrap();
    file.write_at(0, &[0xAB; 100]).await.unwrap();
    file.close().await.unwrap();

    let mut file = client.open("/t", OpenOptions::new().read(true).write(true).truncate(true)).await.unwrap();
    assert!(!file.created());
    assert_eq!(file.cached_attr().size, 0);
    assert_eq!(client.stat("/t").await.unwrap().size, 0);
    assert!(file.read_at(0, 100).await.unwrap().is_empty());
    let attr = file.write_at(50, &[0xCD; 10]).await.unwrap();
    assert_eq!(attr.size, 60);
    let mut expected = vec![0u8; 50];
    expected.extend_from_slice(&[0xCD; 10]);
    assert_eq!(file.read_at(0, 1000).await.unwrap(), expected);
    file.close().await.unwrap();
    assert_eq!(client.read("/t").await.unwrap(), expected);
    assert_eq!(client.stat("/t").await.unwrap().size, 60);

    // Truncate by open, rewrite the head, then grow: the tail must read as zeros.
    let mut file = client.open("/t", &create_rw()).await.unwrap();
    file.write_at(0, &[0xEE; 200]).await.unwrap();
    file.close().await.unwrap();
    let mut file = client.open("/t", OpenOptions::new().read(true).write(true).truncate(true)).await.unwrap();
    file.write_at(0, b"0123456789").await.unwrap();
    let attr = file.set_len(200).await.unwrap();
    assert_eq!(attr.size, 200);
    let mut expected = b"0123456789".to_vec();
    expected.resize(200, 0);
    assert_eq!(file.read_at(0, 300).await.unwrap(), expected);
    file.close().await.unwrap();
    assert_eq!(client.read("/t").await.unwrap(), expected);

    // client.write (create + truncate) replaces a longer file's contents completely.
    client.write("/t", b"short").await.unwrap();
    assert_eq!(client.read("/t").await.unwrap(), b"short");
    assert_eq!(client.stat("/t").await.unwrap().size, 5);
}

// Proves O_APPEND writes land at the end of the file even with two handles appending alternately, whatever offset is passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_handles_always_write_at_the_end() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.write("/log", b"start:").await.unwrap();
    let mut a = client.open("/log", OpenOptions::new().append(true)).await.unwrap();
    let mut b = client.open("/log", OpenOptions::new().read(true).append(true)).await.unwrap();
    a.write_all(b"aaa").await.unwrap();
    assert_eq!(a.position(), 9);
    b.write_all(b"bbb").await.unwrap();
    assert_eq!(b.position(), 12);
    a.write_all(b"ccc").await.unwrap();
    assert_eq!(a.position(), 15);
    let attr = b.write_at(0, b"ddd").await.unwrap();
    assert_eq!(attr.size, 18, "an append write ignores its offset");
    assert_eq!(b.read_at(0, 100).await.unwrap(), &b"start:aaabbbcccddd"[..]);
    a.close().await.unwrap();
    b.close().await.unwrap();
    assert_eq!(client.read("/log").await.unwrap(), b"start:aaabbbcccddd");
    assert_eq!(client.stat("/log").await.unwrap().size, 18);
}

// Proves directories open only for reading: any write access (write, append, truncate, create) is EISDIR; "/", "." and ".." open as directories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_directories() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.mkdir("/dir", 0o755).await.unwrap();
    let dir = ino(&client, "/dir").await;
    let cases: Vec<(&str, OpenOptions, Result<u64, Errno>)> = vec![
        ("/dir", write_only(), Err(Errno::EISDIR)),
        ("/dir", read_write(), Err(Errno::EISDIR)),
        ("/dir", OpenOptions::new().append(true).clone(), Err(Errno::EISDIR)),
        ("/dir", OpenOptions::new().write(true).truncate(true).clone(), Err(Errno::EISDIR)),
        ("/dir", OpenOptions::new().write(true).create(true).clone(), Err(Errno::EISDIR)),
        ("/", write_only(), Err(Errno::EISDIR)),
        ("/dir/.", write_only(), Err(Errno::EISDIR)),
        ("/dir", read_only(), Ok(dir)),
        ("/dir/", read_only(), Ok(dir)),
        ("/dir/.", read_only(), Ok(dir)),
        ("/dir/..", read_only(), Ok(ROOT_INO)),
        ("/", read_only(), Ok(ROOT_INO)),
    ];
    let mut failures = Vec::new();
    for (path, options, expected) in cases {
        let got = match client.open(path, &options).await {
            Ok(file) => {
                let ino = file.ino();
                file.close().await.unwrap();
                Ok(ino)
            }
            Err(error) => Err(error.errno),
        };
        if got != expected {
            failures.push(format!("open {path} {options:?}: expected {expected:?}, got {got:?}"));
        }
    }
    // By inode as well.
    for (flags, expected) in [
        (OpenFlags::WRITE, Err(Errno::EISDIR)),
        (OpenFlags::APPEND, Err(Errno::EISDIR)),
        (OpenFlags::READ | OpenFlags::TRUNCATE, Err(Errno::EISDIR)),
        (OpenFlags::READ, Ok(dir)),
        (OpenFlags::READ | OpenFlags::DIRECTORY, Ok(dir)),
    ] {
        let got = match client.open_ino(dir, flags).await {
            Ok(file) => {
                let ino = file.ino();
                file.close().await.unwrap();
                Ok(ino)
            }
            Err(error) => Err(error.errno),
        };
        if got != expected {
            failures.push(format!("open_ino dir {flags:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert_no_failures(&failures);
    // The refused opens changed nothing.
    assert_eq!(client.stat("/dir").await.unwrap().nlink, 2);
}

// Proves open follows symlinks (relative, absolute, chained, in the middle), honours no_follow, reports ELOOP and ENOENT, and O_CREAT through a dangling link creates its target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_follows_symlinks() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.mkdir("/d", 0o755).await.unwrap();
    client.write("/d/f", b"hello").await.unwrap();
    for (target, link) in [
        ("d/f", "/rel"),
        ("/d/f", "/abs"),
        ("rel", "/chain"),
        ("d", "/dirlink"),
        ("../d/f", "/d/up"),
        ("loop", "/loop"),
        ("d/new", "/dangling"),
        ("/d/newabs", "/dangling_abs"),
    ] {
        client.symlink(target, link).await.unwrap();
    }
    let f = ino(&client, "/d/f").await;
    let cases: Vec<(&str, OpenOptions, Result<u64, Errno>)> = vec![
        ("/rel", read_only(), Ok(f)),
        ("/abs", read_only(), Ok(f)),
        ("/chain", read_only(), Ok(f)),
        ("/dirlink/f", read_only(), Ok(f)),
        ("/d/up", read_only(), Ok(f)),
        ("/rel", read_write(), Ok(f)),
        ("/rel", OpenOptions::new().read(true).no_follow(true).clone(), Err(Errno::ELOOP)),
        ("/dirlink/f", OpenOptions::new().read(true).no_follow(true).clone(), Ok(f)),
        ("/loop", read_only(), Err(Errno::ELOOP)),
        ("/loop", create_rw(), Err(Errno::ELOOP)),
        ("/dangling", read_only(), Err(Errno::ENOENT)),
        ("/rel", OpenOptions::new().write(true).create_new(true).clone(), Err(Errno::EEXIST)),
        ("/dangling", OpenOptions::new().write(true).create_new(true).clone(), Err(Errno::EEXIST)),
    ];
    let mut failures = Vec::new();
    for (path, options, expected) in cases {
        let got = match client.open(path, &options).await {
            Ok(file) => {
                let ino = file.ino();
                file.close().await.unwrap();
                Ok(ino)
            }
            Err(error) => Err(error.errno),
        };
        if got != expected {
            failures.push(format!("open {path} {options:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert_no_failures(&failures);

    let mut file = client.open("/chain", &read_only()).await.unwrap();
    assert_eq!(file.read_to_end().await.unwrap(), b"hello");
    file.close().await.unwrap();

    // O_CREAT through dangling symlinks creates the targets; the links stay links.
    for (link, target) in [("/dangling", "/d/new"), ("/dangling_abs", "/d/newabs")] {
        let mut file = client.open(link, &create_rw()).await.unwrap();
        assert!(file.created(), "open {link} with O_CREAT creates {target}");
        file.write_all(b"made").await.unwrap();
        let made = file.ino();
        file.close().await.unwrap();
        assert_eq!(client.stat(target).await.unwrap().ino, made);
        assert_eq!(client.lstat(link).await.unwrap().kind, FileKind::Symlink);
        assert_eq!(client.read(target).await.unwrap(), b"made");
    }
    // Writing through a link changes the target.
    client.write("/abs", b"via link").await.unwrap();
    assert_eq!(client.read("/d/f").await.unwrap(), b"via link");
    assert_eq!(client.lstat("/abs").await.unwrap().kind, FileKind::Symlink);
}

// Proves open resolves a relative symlink whose target is "." or ".." from the link's own directory, as stat does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_resolves_dot_symlinks_from_their_directory() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_dir_all("/a/b").await.unwrap();
    client.symlink("..", "/a/b/up").await.unwrap();
    client.symlink(".", "/a/b/here").await.unwrap();
    client.symlink("/", "/a/b/root").await.unwrap();
    client.symlink("../..", "/a/b/upup").await.unwrap();
    let a = ino(&client, "/a").await;
    let b = ino(&client, "/a/b").await;
    let mut failures = Vec::new();
    for (path, expected) in [("/a/b/up", a), ("/a/b/here", b), ("/a/b/root", ROOT_INO), ("/a/b/upup", ROOT_INO)] {
        let stat = outcome(client.stat(path).await).map(|attr| attr.ino);
        if stat != Ok(expected) {
            failures.push(format!("stat {path}: expected {expected}, got {stat:?}"));
        }
        let opened = match client.open(path, &read_only()).await {
            Ok(file) => {
                let ino = file.ino();
                file.close().await.unwrap();
                Ok(ino)
            }
            Err(error) => Err(error.errno),
        };
        if opened != Ok(expected) {
            failures.push(format!("open {path}: expected ino {expected}, got {opened:?}"));
        }
    }
    assert_no_failures(&failures);
}

// Proves an inode that is unlinked and closed is gone for good: open_ino, getattr, setattr, xattrs and readdir by its id are ESTALE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_on_a_destroyed_inode_are_estale() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.write("/x", b"contents").await.unwrap();
    client.mkdir("/gone_dir", 0o755).await.unwrap();
    let file = ino(&client, "/x").await;
    let dir = ino(&client, "/gone_dir").await;
    let reopened = client.open_ino(file, OpenFlags::READ).await.unwrap();
    assert_eq!(reopened.read_at(0, 100).await.unwrap(), &b"contents"[..]);
    reopened.close().await.unwrap();
    client.remove_file("/x").await.unwrap();
    client.remove_dir("/gone_dir").await.unwrap();
    assert_eq!(server.server().orphans().unwrap(), Vec::<u64>::new());

    let mut failures = Vec::new();
    let never = 1 << 40;
    for gone in [file, dir, never] {
        let results: Vec<(&str, Result<(), Errno>)> = vec![
            ("open_ino", outcome(client.open_ino(gone, OpenFlags::READ).await).map(drop)),
            ("getattr", outcome(client.getattr(gone).await).map(drop)),
            (
                "setattr",
                outcome(client.setattr(gone, SetAttrIn { perm: Some(0o600), ..Default::default() }).await).map(drop),
            ),
            (
                "truncate",
                outcome(client.setattr(gone, SetAttrIn { size: Some(0), ..Default::default() }).await).map(drop),
            ),
            ("getxattr", outcome(client.getxattr_ino(gone, b"user.a").await).map(drop)),
            ("setxattr", outcome(client.setxattr_ino(gone, b"user.a", b"1", XattrMode::Either).await)),
            ("listxattr", outcome(client.listxattr_ino(gone).await).map(drop)),
            ("removexattr", outcome(client.removexattr_ino(gone, b"user.a").await)),
            ("readlink", outcome(client.readlink_ino(gone).await).map(drop)),
            ("readdir", outcome(client.read_dir_page(gone, 0, 10, false).await).map(drop)),
            ("link", outcome(client.link_at(gone, ROOT_INO, b"back").await).map(drop)),
        ];
        for (what, got) in results {
            if got != Err(Errno::ESTALE) {
                failures.push(format!("{what} on gone inode {gone}: expected ESTALE, got {got:?}"));
            }
        }
    }
    // A name in a directory that is gone cannot be looked up or created.
    for (what, got) in [
        ("lookup", outcome(client.lookup(dir, b"a").await).map(drop)),
        ("mkdir_at", outcome(client.mkdir_at(dir, b"a", 0o755).await).map(drop)),
        ("open_at", outcome(client.open_at(dir, b"a", OpenFlags::WRITE | OpenFlags::CREATE, 0o644).await).map(drop)),
    ] {
        if got != Err(Errno::ESTALE) {
            failures.push(format!("{what} in removed directory: expected ESTALE, got {got:?}"));
        }
    }
    assert_no_failures(&failures);
    assert!(!client.exists("/x").await.unwrap());
}

// Proves handles enforce their access mode (EBADF) and belong to one session; a closed handle is EBADF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_enforce_access_mode() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.write("/f", b"0123456789").await.unwrap();
    let mut write_only_file = client.open("/f", &write_only()).await.unwrap();
    assert_errno(write_only_file.read_at(0, 10).await, Errno::EBADF);
    let mut buffer = [0u8; 4];
    assert_errno(write_only_file.read(&mut buffer).await, Errno::EBADF);
    write_only_file.write_at(0, b"ab").await.unwrap();
    let mut read_only_file = client.open("/f", &read_only()).await.unwrap();
    assert_errno(read_only_file.write_at(0, b"zz").await, Errno::EBADF);
    assert_errno(read_only_file.write_all(b"zz").await, Errno::EBADF);
    assert_eq!(read_only_file.read_at(0, 10).await.unwrap(), &b"ab23456789"[..]);
    let append_only = client.open("/f", OpenOptions::new().append(true)).await.unwrap();
    assert_errno(append_only.read_at(0, 10).await, Errno::EBADF);

    // The handle of one session means nothing in another.
    let other = server.client().await;
    let handle = read_only_file.handle();
    assert_errno(other.call(Op::Read { handle, offset: 0, len: 10 }, Bytes::new()).await, Errno::EBADF);

    let closed = write_only_file.handle();
    write_only_file.close().await.unwrap();
    for op in [
        Op::Read { handle: closed, offset: 0, len: 1 },
        Op::Write { handle: closed, offset: 0 },
        Op::Fsync { handle: closed },
        Op::Close { handle: closed },
    ] {
        let kind = op.kind_name();
        let got = outcome(client.call(op, Bytes::from_static(b"x")).await).map(drop);
        assert_eq!(got, Err(Errno::EBADF), "{kind} on a closed handle");
    }
    read_only_file.close().await.unwrap();
    append_only.close().await.unwrap();
    assert_eq!(client.read("/f").await.unwrap(), b"ab23456789");
}

// Proves read(2) on a directory handle fails with EISDIR instead of returning data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_directory_handle_is_eisdir() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.mkdir("/dir", 0o755).await.unwrap();
    client.write("/dir/f", b"x").await.unwrap();
    let dir = client.open("/dir", &read_only()).await.unwrap();
    assert_errno(dir.read_at(0, 10).await, Errno::EISDIR);
    dir.close().await.unwrap();
}

// Proves O_CREAT|O_EXCL is atomic: of many concurrent exclusive creates of one name from two sessions, exactly one wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_create_is_atomic_across_clients() {
    let server = TestServer::start().await;
    let clients = [server.client().await, server.client().await];
    for round in 0..5 {
        let path = format!("/race{round}");
        let attempts = (0..16).map(|i| {
            let client = clients[i % 2].clone();
            let path = path.clone();
            async move {
                match client.open(&path, OpenOptions::new().write(true).create_new(true)).await {
                    Ok(file) => {
                        let ino = file.ino();
                        file.close().await.unwrap();
                        Ok(ino)
                    }
                    Err(error) => Err(error.errno),
                }
            }
        });
        let results = futures::future::join_all(attempts).await;
        let winners: Vec<u64> = results.iter().filter_map(|result| result.ok()).collect();
        assert_eq!(winners.len(), 1, "exactly one exclusive create wins: {results:?}");
        assert!(
            results.iter().all(|result| result.is_ok() || *result == Err(Errno::EEXIST)),
            "the losers see EEXIST: {results:?}"
        );
        assert_eq!(ino(&clients[0], &path).await, winners[0]);
    }
    assert_eq!(clients[1].read_dir("/").await.unwrap().len(), 5);
}

// ---- read and write ----

// Proves writes far past the end leave a hole that reads as zeros and sets the size exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_files_read_zeros_in_holes() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mut file = client.open("/sparse", &create_rw()).await.unwrap();
    let attr = file.write_at(1 << 20, b"x").await.unwrap();
    assert_eq!(attr.size, (1 << 20) + 1);
    let data = file.read_at(0, (1 << 20) + 100).await.unwrap();
    assert_eq!(data.len(), (1 << 20) + 1);
    assert!(data[..1 << 20].iter().all(|&byte| byte == 0), "the hole reads as zeros");
    assert_eq!(data[1 << 20], b'x');
    // A second hole further on, and a write into the first hole.
    file.write_at(3 << 20, b"yz").await.unwrap();
    file.write_at(4096, b"mid").await.unwrap();
    let data = file.read_at(0, 4 << 20).await.unwrap();
    assert_eq!(data.len(), (3 << 20) + 2);
    let mut expected = vec![0u8; (3 << 20) + 2];
    expected[4096..4099].copy_from_slice(b"mid");
    expected[1 << 20] = b'x';
    expected[3 << 20..].copy_from_slice(b"yz");
    assert!(data[..] == expected[..], "sparse file contents");
    // Writes ending past the largest file size are EFBIG and change nothing.
    assert_errno(file.write_at(FILE_SIZE_MAX, b"x").await, Errno::EFBIG);
    assert_errno(file.write_at(FILE_SIZE_MAX - 1, b"xy").await, Errno::EFBIG);
    assert_errno(file.write_at(u64::MAX - 1, b"xy").await, Errno::EFBIG);
    file.close().await.unwrap();
    assert_eq!(client.stat("/sparse").await.unwrap().size, (3 << 20) + 2);
    assert!(client.read("/sparse").await.unwrap() == expected);
}

// Proves reads at and past the end of file are short or empty, at any offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_and_past_end_of_file() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.write("/f", b"0123456789").await.unwrap();
    let mut file = client.open("/f", &read_only()).await.unwrap();
    let cases: Vec<(u64, usize, &[u8])> = vec![
        (0, 10, b"0123456789"),
        (0, 100, b"0123456789"),
        (0, 0, b""),
        (5, 3, b"567"),
        (8, 10, b"89"),
        (9, 1, b"9"),
        (10, 5, b""),
        (11, 5, b""),
        (1 << 40, 5, b""),
        (u64::MAX / 2, 5, b""),
    ];
    for (offset, len, expected) in cases {
        assert_eq!(file.read_at(offset, len).await.unwrap(), expected, "read_at({offset}, {len})");
    }
    // Positioned reads: the position advances and reads 0 at the end.
    let mut buffer = [0u8; 4];
    let mut seen = Vec::new();
    loop {
        let read = file.read(&mut buffer).await.unwrap();
        if read == 0 {
            break;
        }
        seen.extend_from_slice(&buffer[..read]);
    }
    assert_eq!(seen, b"0123456789");
    assert_eq!(file.position(), 10);
    assert_eq!(file.seek(std::io::SeekFrom::End(-3)).await.unwrap(), 7);
    assert_eq!(file.read_to_end().await.unwrap(), b"789");
    assert_errno(file.seek(std::io::SeekFrom::Current(-100)).await, Errno::EINVAL);
    file.close().await.unwrap();
}

// Proves a write of zero bytes past the end does not change the file size (POSIX: "no other results").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_write_does_not_extend_the_file() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.write("/f", b"abc").await.unwrap();
    let mut file = client.open("/f", &read_write()).await.unwrap();
    let attr = file.write_at(100, b"").await.unwrap();
    assert_eq!(attr.size, 3, "size in the write reply");
    file.close().await.unwrap();
    assert_eq!(client.stat("/f").await.unwrap().size, 3);
    assert_eq!(client.read("/f").await.unwrap(), b"abc");
}

// Proves writes and reads larger than one request (IO_SIZE_MAX) round trip byte for byte, at offset 0 and unaligned offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_writes_round_trip() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let data = pattern(9 << 20, 3);
    let mut file = client.open("/big", &create_rw()).await.unwrap();
    let attr = file.write_at(0, &data).await.unwrap();
    assert_eq!(attr.size, 9 << 20);
    let back = file.read_at(0, data.len()).await.unwrap();
    assert!(back[..] == data[..], "9 MiB read back");
    // A slice across a request boundary.
    let boundary = 4 << 20;
    assert_eq!(file.read_at(boundary as u64 - 3, 10).await.unwrap(), &data[boundary - 3..boundary + 7]);
    // Overwrite an unaligned 5 MiB range in the middle.
    let patch = pattern(5 << 20, 99);
    file.write_at(1_000_001, &patch).await.unwrap();
    file.close().await.unwrap();
    let mut expected = data.clone();
    expected[1_000_001..1_000_001 + patch.len()].copy_from_slice(&patch);
    let read = client.read("/big").await.unwrap();
    assert_eq!(read.len(), expected.len());
    assert!(read == expected, "patched 9 MiB file");
    assert_eq!(client.stat("/big").await.unwrap().size, 9 << 20);
    // The path API's write of more than one chunk.
    client.write("/big2", &patch).await.unwrap();
    assert!(client.read("/big2").await.unwrap() == patch);
}

// ---- setattr ----

// Proves truncate grows with zeros, shrinks, and grows again without resurrecting the cut bytes, through paths, handles and links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_grow_and_shrink() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.write("/f", b"hello world").await.unwrap();
    client.symlink("f", "/link").await.unwrap();
    let steps: Vec<(&str, u64, &[u8])> = vec![
        ("/f", 11, b"hello world"),
        ("/f", 15, b"hello world\0\0\0\0"),
        ("/f", 5, b"hello"),
        ("/f", 8, b"hello\0\0\0"),
        ("/link", 2, b"he"),
        ("/link", 6, b"he\0\0\0\0"),
        ("/f", 0, b""),
        ("/f", 3, b"\0\0\0"),
    ];
    for (path, size, expected) in steps {
        let attr = client.truncate(path, size).await.unwrap();
        assert_eq!(attr.size, size, "truncate {path} {size}");
        assert_eq!(attr.kind, FileKind::Regular);
        assert_eq!(client.read("/f").await.unwrap(), expected, "after truncate {path} {size}");
    }
    assert_eq!(client.lstat("/link").await.unwrap().size, 1, "the link itself is untouched");

    // Through a handle, with data written between the shrink and the grow.
    let mut file = client.open("/f", &read_write()).await.unwrap();
    file.write_at(0, &[7u8; 64]).await.unwrap();
    assert_eq!(file.set_len(10).await.unwrap().size, 10);
    file.write_at(20, b"z").await.unwrap();
    let mut expected = vec![7u8; 10];
    expected.resize(20, 0);
    expected.push(b'z');
    assert_eq!(file.read_at(0, 100).await.unwrap(), expected);
    assert_eq!(file.set_len(64).await.unwrap().size, 64);
    expected.resize(64, 0);
    assert_eq!(file.read_at(0, 100).await.unwrap(), expected);
    file.close().await.unwrap();
    assert_eq!(client.read("/f").await.unwrap(), expected);
}

// Proves truncate refuses directories (EISDIR), symlinks (EINVAL), sizes past the limit (EFBIG) and missing paths (ENOENT), changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_errors() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.mkdir("/dir", 0o755).await.unwrap();
    client.write("/f", b"keep").await.unwrap();
    client.symlink("f", "/link").await.unwrap();
    let link = ino(&client, "/link").await;
    let dir_before = client.stat("/dir").await.unwrap();
    assert_errno(client.truncate("/dir", 0).await, Errno::EISDIR);
    assert_errno(client.truncate("/dir", 100).await, Errno::EISDIR);
    assert_errno(client.truncate("/", 0).await, Errno::EISDIR);
    assert_errno(client.setattr(link, SetAttrIn { size: Some(0), ..Default::default() }).await, Errno::EINVAL);
    assert_errno(client.truncate("/f", FILE_SIZE_MAX + 1).await, Errno::EFBIG);
    assert_errno(client.truncate("/missing", 0).await, Errno::ENOENT);
    assert_errno(client.truncate("/f/x", 0).await, Errno::ENOTDIR);
    assert_eq!(client.stat("/dir").await.unwrap(), dir_before);
    assert_eq!(client.read("/f").await.unwrap(), b"keep");
    assert_eq!(client.read_link("/link").await.unwrap(), b"f");
    // Growing a symlink is refused without leaving a data object behind for it.
    assert_errno(client.setattr(link, SetAttrIn { size: Some(100), ..Default::default() }).await, Errno::EINVAL);
    assert_eq!(client.lstat("/link").await.unwrap().size, 1);
    assert!(!object_path(&server, link).exists(), "a refused truncate of a symlink created a data object for it");
    // The largest size is allowed.
    assert_eq!(client.truncate("/f", FILE_SIZE_MAX).await.unwrap().size, FILE_SIZE_MAX);
    assert_eq!(client.truncate("/f", 4).await.unwrap().size, 4);
    assert_eq!(client.read("/f").await.unwrap(), b"keep");
}

// Proves chmod, chown and utimes set exactly what was asked, leave the rest alone, and move ctime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chmod_chown_and_utimes() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.write("/f", b"x").await.unwrap();
    client.mkdir("/dir", 0o755).await.unwrap();
    client.symlink("f", "/link").await.unwrap();

    // chmod: permission bits only; ctime moves, mtime does not.
    let before = client.stat("/f").await.unwrap();
    tick().await;
    for (asked, stored) in [(0o600, 0o600), (0o4755, 0o4755), (0o7777, 0o7777), (0o100644, 0o644), (0o000, 0o000)] {
        let attr = client.set_permissions("/f", asked).await.unwrap();
        assert_eq!(attr.perm, stored, "chmod {asked:o}");
        assert_eq!(attr.mode(), 0o100000 | stored);
        assert_eq!(client.stat("/f").await.unwrap().perm, stored);
    }
    let after = client.stat("/f").await.unwrap();
    assert!(after.ctime > before.ctime, "chmod moves ctime");
    assert_eq!(after.mtime, before.mtime, "chmod leaves mtime");
    assert_eq!(after.size, before.size);
    // chmod through a symlink changes the target, not the link.
    client.set_permissions("/link", 0o640).await.unwrap();
    assert_eq!(client.stat("/f").await.unwrap().perm, 0o640);
    assert_eq!(client.lstat("/link").await.unwrap().perm, 0o777);
    let dir = client.set_permissions("/dir", 0o700).await.unwrap();
    assert_eq!((dir.kind, dir.perm, dir.mode()), (FileKind::Directory, 0o700, 0o040700));

    // chown: each of uid and gid alone and together.
    let owner = client.stat("/f").await.unwrap();
    let steps = vec![
        (Some(1234), Some(5678), (1234, 5678)),
        (None, Some(42), (1234, 42)),
        (Some(7), None, (7, 42)),
        (None, None, (7, 42)),
        (Some(owner.uid), Some(owner.gid), (owner.uid, owner.gid)),
    ];
    for (uid, gid, expected) in steps {
        let attr = client.set_owner("/f", uid, gid).await.unwrap();
        assert_eq!((attr.uid, attr.gid), expected, "chown {uid:?} {gid:?}");
        let stat = client.stat("/f").await.unwrap();
        assert_eq!((stat.uid, stat.gid), expected);
    }

    // utimes with exact times come back exactly.
    let at = |secs, nanos| Timestamp { secs, nanos };
    let times = [
        (at(1_000_000_000, 123_456_789), at(1_234_567_890, 987_654_321)),
        (at(0, 0), at(1, 999_999_999)),
        (at(4_102_444_800, 1), at(2_000_000_000, 0)),
        (at(-1, 500), at(-86_400, 0)),
    ];
    for (atime, mtime) in times {
        let before = client.stat("/f").await.unwrap();
        tick().await;
        let attr = client.set_times("/f", Some(TimeSet::At(atime)), Some(TimeSet::At(mtime))).await.unwrap();
        assert_eq!((attr.atime, attr.mtime), (atime, mtime));
        let stat = client.stat("/f").await.unwrap();
        assert_eq!((stat.atime, stat.mtime), (atime, mtime), "utimes {atime:?} {mtime:?}");
        assert!(stat.ctime > before.ctime, "utimes moves ctime");
    }
    // One time alone leaves the other.
    let only_atime = at(1_500_000_000, 5);
    let attr = client.set_times("/f", Some(TimeSet::At(only_atime)), None).await.unwrap();
    assert_eq!((attr.atime, attr.mtime), (only_atime, at(-86_400, 0)));
    let only_mtime = at(1_600_000_000, 6);
    let attr = client.set_times("/f", None, Some(TimeSet::At(only_mtime))).await.unwrap();
    assert_eq!((attr.atime, attr.mtime), (only_atime, only_mtime));
    // TimeSet::Now stamps the change time on both.
    let attr = client.set_times("/f", Some(TimeSet::Now), Some(TimeSet::Now)).await.unwrap();
    assert_eq!(attr.atime, attr.ctime);
    assert_eq!(attr.mtime, attr.ctime);
    assert!(attr.mtime > only_mtime);
    // utimes on a directory too.
    let attr = client.set_times("/dir", Some(TimeSet::At(only_atime)), Some(TimeSet::At(only_mtime))).await.unwrap();
    assert_eq!((attr.atime, attr.mtime), (only_atime, only_mtime));
}

// ---- mkdir, rmdir, unlink ----

// Proves mkdir and rmdir: EEXIST, ENOENT, ENOTDIR, ENOTEMPTY, EBUSY, and the parent's nlink going 2 -> 3 -> 2 (files do not count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mkdir_and_rmdir() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let p = client.mkdir("/p", 0o750).await.unwrap();
    assert_eq!((p.kind, p.perm, p.nlink), (FileKind::Directory, 0o750, 2));
    assert_eq!(client.stat("/p").await.unwrap(), p);
    let c = client.mkdir("/p/c", 0o755).await.unwrap();
    assert_eq!(c.nlink, 2);
    assert_eq!(nlink(&client, "/p").await, 3);
    client.write("/p/f", b"file").await.unwrap();
    assert_eq!(nlink(&client, "/p").await, 3, "a file adds no link to its directory");
    client.symlink("c", "/p/lc").await.unwrap();
    assert_eq!(nlink(&client, "/p").await, 3, "a symlink adds no link to its directory");
    client.mkdir("/p/c2", 0o755).await.unwrap();
    assert_eq!(nlink(&client, "/p").await, 4);

    let mkdir_cases: Vec<(&str, Errno)> = vec![
        ("/p/c", Errno::EEXIST),
        ("/p/f", Errno::EEXIST),
        ("/p/lc", Errno::EEXIST),
        ("/", Errno::EEXIST),
        ("/p/missing/x", Errno::ENOENT),
        ("/p/f/x", Errno::ENOTDIR),
    ];
    let rmdir_cases: Vec<(&str, Errno)> = vec![
        ("/p", Errno::ENOTEMPTY),
        ("/p/f", Errno::ENOTDIR),
        ("/p/lc", Errno::ENOTDIR),
        ("/p/missing", Errno::ENOENT),
        ("/p/missing/x", Errno::ENOENT),
        ("/p/f/x", Errno::ENOTDIR),
        ("/", Errno::EBUSY),
        ("/p/c/.", Errno::EINVAL),
    ];
    let mut failures = Vec::new();
    for (path, errno) in mkdir_cases {
        let got = outcome(client.mkdir(path, 0o755).await).map(|attr| attr.ino);
        if got != Err(errno) {
            failures.push(format!("mkdir {path}: expected {errno:?}, got {got:?}"));
        }
    }
    for (path, errno) in rmdir_cases {
        let got = outcome(client.remove_dir(path).await);
        if got != Err(errno) {
            failures.push(format!("rmdir {path}: expected {errno:?}, got {got:?}"));
        }
    }
    assert_no_failures(&failures);
    assert_eq!(nlink(&client, "/p").await, 4, "failed calls changed nothing");

    client.remove_dir("/p/c2").await.unwrap();
    assert_eq!(nlink(&client, "/p").await, 3);
    client.remove_dir("/p/c").await.unwrap();
    assert_eq!(nlink(&client, "/p").await, 2);
    assert_errno(client.remove_dir("/p/c").await, Errno::ENOENT);
    assert_errno(client.getattr(c.ino).await, Errno::ESTALE);
    client.remove_file("/p/f").await.unwrap();
    client.remove_file("/p/lc").await.unwrap();
    assert_eq!(client.read_dir("/p").await.unwrap(), vec![]);
    let root_links = nlink(&client, "/").await;
    client.remove_dir("/p").await.unwrap();
    assert_eq!(nlink(&client, "/").await, root_links - 1);
    assert_errno(client.getattr(p.ino).await, Errno::ESTALE);
    assert_eq!(client.read_dir("/").await.unwrap(), vec![]);
}

// Proves unlink removes files and symlinks (not their targets) and refuses directories (EISDIR) and missing names (ENOENT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_files_and_errors() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.mkdir("/dir", 0o755).await.unwrap();
    client.write("/dir/f", b"data").await.unwrap();
    client.symlink("dir/f", "/link").await.unwrap();
    client.symlink("dir", "/dirlink").await.unwrap();
    let f = ino(&client, "/dir/f").await;
    let cases: Vec<(&str, Errno)> = vec![
        ("/dir", Errno::EISDIR),
        ("/missing", Errno::ENOENT),
        ("/missing/x", Errno::ENOENT),
        ("/dir/f/x", Errno::ENOTDIR),
    ];
    for (path, errno) in cases {
        assert_errno(client.remove_file(path).await, errno);
    }
    // Unlinking a symlink removes the link only, also one to a directory.
    client.remove_file("/link").await.unwrap();
    client.remove_file("/dirlink").await.unwrap();
    assert_eq!(client.read("/dir/f").await.unwrap(), b"data");
    assert_eq!(nlink(&client, "/dir").await, 2);
    // A path through a symlink unlinks in the link's target directory.
    client.symlink("dir", "/dirlink").await.unwrap();
    client.remove_file("/dirlink/f").await.unwrap();
    assert_errno(client.stat("/dir/f").await, Errno::ENOENT);
    assert_errno(client.getattr(f).await, Errno::ESTALE);
    assert_errno(client.remove_file("/dir/f").await, Errno::ENOENT);
    let mut listed = names(&client.read_dir("/").await.unwrap());
    listed.sort();
    assert_eq!(listed, vec![b"dir".to_vec(), b"dirlink".to_vec()]);
}

// ---- rename ----

struct RenameCase {
    what: &'static str,
    setup: &'static [(&'static str, Spec)],
    from: &'static str,
    to: &'static str,
    mode: RenameMode,
    expect: Result<(), Errno>,
    /// The tree afterwards; `None` when it must be unchanged.
    after: Option<&'static [(&'static str, Spec)]>,
}

// Proves rename in all three modes over every pairing of kinds, with the exact errno and the exact tree left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_table() {
    use RenameMode::{Exchange, NoReplace, Replace};
    use Spec::{D, F, H, L};
    let two_files: &[(&str, Spec)] = &[("a", F("A")), ("b", F("B"))];
    let cases = [
        RenameCase {
            what: "file over file replaces",
            setup: two_files,
            from: "a",
            to: "b",
            mode: Replace,
            expect: Ok(()),
            after: Some(&[("b", F("A"))]),
        },
        RenameCase {
            what: "file to a free name",
            setup: two_files,
            from: "a",
            to: "c",
            mode: Replace,
            expect: Ok(()),
            after: Some(&[("b", F("B")), ("c", F("A"))]),
        },
        RenameCase {
            what: "NoReplace onto an existing name",
            setup: two_files,
            from: "a",
            to: "b",
            mode: NoReplace,
            expect: Err(Errno::EEXIST),
            after: None,
        },
        RenameCase {
            what: "NoReplace onto an existing directory",
            setup: &[("d1", D), ("d2", D)],
            from: "d1",
            to: "d2",
            mode: NoReplace,
            expect: Err(Errno::EEXIST),
            after: None,
        },
        RenameCase {
            what: "NoReplace to a free name",
            setup: two_files,
            from: "a",
            to: "c",
            mode: NoReplace,
            expect: Ok(()),
            after: Some(&[("b", F("B")), ("c", F("A"))]),
        },
        RenameCase {
            what: "Exchange two files",
            setup: two_files,
            from: "a",
            to: "b",
            mode: Exchange,
            expect: Ok(()),
            after: Some(&[("a", F("B")), ("b", F("A"))]),
        },
        RenameCase {
            what: "Exchange files across directories",
            setup: &[("d1", D), ("d1/a", F("A")), ("d2", D), ("d2/b", F("B"))],
            from: "d1/a",
            to: "d2/b",
            mode: Exchange,
            expect: Ok(()),
            after: Some(&[("d1", D), ("d1/a", F("B")), ("d2", D), ("d2/b", F("A"))]),
        },
        RenameCase {
            what: "Exchange a file and a directory in one directory",
            setup: &[("a", F("A")), ("d", D), ("d/x", F("X"))],
            from: "a",
            to: "d",
            mode: Exchange,
            expect: Ok(()),
            after: Some(&[("a", D), ("a/x", F("X")), ("d", F("A"))]),
        },
        RenameCase {
            what: "Exchange with a missing target",
            setup: two_files,
            from: "a",
            to: "zz",
            mode: Exchange,
            expect: Err(Errno::ENOENT),
            after: None,
        },
        RenameCase {
            what: "Exchange with a missing source",
            setup: two_files,
            from: "zz",
            to: "a",
            mode: Exchange,
            expect: Err(Errno::ENOENT),
            after: None,
        },
        RenameCase {
            what: "missing source",
            setup: two_files,
            from: "zz",
            to: "a",
            mode: Replace,
            expect: Err(Errno::ENOENT),
            after: None,
        },
        RenameCase {
            what: "into a missing directory",
            setup: two_files,
            from: "a",
            to: "nodir/a",
            mode: Replace,
            expect: Err(Errno::ENOENT),
            after: None,
        },
        RenameCase {
            what: "through a file",
            setup: two_files,
            from: "a",
            to: "b/x",
            mode: Replace,
            expect: Err(Errno::ENOTDIR),
            after: None,
        },
        RenameCase {
            what: "directory over an empty directory",
            setup: &[("d1", D), ("d1/x", F("X")), ("d2", D)],
            from: "d1",
            to: "d2",
            mode: Replace,
            expect: Ok(()),
            after: Some(&[("d2", D), ("d2/x", F("X"))]),
        },
        RenameCase {
            what: "directory over a non-empty directory",
            setup: &[("d1", D), ("d1/x", F("X")), ("d2", D), ("d2/y", F("Y"))],
            from: "d1",
            to: "d2",
            mode: Replace,
            expect: Err(Errno::ENOTEMPTY),
            after: None,
        },
        RenameCase {
            what: "file over a directory",
            setup: &[("a", F("A")), ("d", D)],
            from: "a",
            to: "d",
            mode: Replace,
            expect: Err(Errno::EISDIR),
            after: None,
        },
        RenameCase {
            what: "file over a non-empty directory",
            setup: &[("a", F("A")), ("d", D), ("d/x", F("X"))],
            from: "a",
            to: "d",
            mode: Replace,
            expect: Err(Errno::EISDIR),
            after: None,
        },
        RenameCase {
            what: "directory over a file",
            setup: &[("a", F("A")), ("d", D)],
            from: "d",
            to: "a",
            mode: Replace,
            expect: Err(Errno::ENOTDIR),
            after: None,
        },
        RenameCase {
            what: "directory into itself",
            setup: &[("d", D)],
            from: "d",
            to: "d/sub",
            mode: Replace,
            expect: Err(Errno::EINVAL),
            after: None,
        },
        RenameCase {
            what: "directory under its own descendant",
            setup: &[("d", D), ("d/e", D), ("d/e/f", D)],
            from: "d",
            to: "d/e/f/g",
            mode: Replace,
            expect: Err(Errno::EINVAL),
            after: None,
        },
        RenameCase {
            what: "directory under its own descendant, NoReplace",
            setup: &[("d", D), ("d/e", D)],
            from: "d",
            to: "d/e/g",
            mode: NoReplace,
            expect: Err(Errno::EINVAL),
            after: None,
        },
        RenameCase {
            what: "Exchange a directory with its own child",
            setup: &[("d", D), ("d/e", D)],
            from: "d",
            to: "d/e",
            mode: Exchange,
            expect: Err(Errno::EINVAL),
            after: None,
        },
        RenameCase {
            what: "Exchange a file with a directory above it",
            setup: &[("d", D), ("d/e", D), ("d/e/x", F("X"))],
            from: "d/e/x",
            to: "d",
            mode: Exchange,
            expect: Err(Errno::EINVAL),
            after: None,
        },
        RenameCase {
            what: "file onto itself",
            setup: two_files,
            from: "a",
            to: "a",
            mode: Replace,
            expect: Ok(()),
            after: None,
        },
        RenameCase {
            what: "directory onto itself",
            setup: &[("d", D), ("d/x", F("X"))],
            from: "d",
            to: "d",
            mode: Replace,
            expect: Ok(()),
            after: None,
        },
        RenameCase {
            what: "file onto itself, Exchange",
            setup: two_files,
            from: "a",
            to: "a",
            mode: Exchange,
            expect: Ok(()),
            after: None,
        },
        RenameCase {
            what: "file onto itself, NoReplace",
            setup: two_files,
            from: "a",
            to: "a",
            mode: NoReplace,
            expect: Err(Errno::EEXIST),
            after: None,
        },
        RenameCase {
            what: "hard links of one file onto each other",
            setup: &[("a", F("A")), ("b", H("a"))],
            from: "a",
            to: "b",
            mode: Replace,
            expect: Ok(()),
            after: None,
        },
        RenameCase {
            what: "hard links in two directories onto each other",
            setup: &[("d1", D), ("d1/a", F("A")), ("d2", D), ("d2/b", H("d1/a"))],
            from: "d1/a",
            to: "d2/b",
            mode: Replace,
            expect: Ok(()),
            after: None,
        },
        RenameCase {
            what: "Exchange hard links of one file",
            setup: &[("a", F("A")), ("b", H("a"))],
            from: "a",
            to: "b",
            mode: Exchange,
            expect: Ok(()),
            after: None,
        },
        RenameCase {
            what: "a symlink moves itself, not its target",
            setup: &[("a", F("A")), ("l", L("a"))],
            from: "l",
            to: "m",
            mode: Replace,
            expect: Ok(()),
            after: Some(&[("a", F("A")), ("m", L("a"))]),
        },
        RenameCase {
            what: "file over a symlink replaces the link",
            setup: &[("a", F("A")), ("b", F("B")), ("l", L("b"))],
            from: "a",
            to: "l",
            mode: Replace,
            expect: Ok(()),
            after: Some(&[("b", F("B")), ("l", F("A"))]),
        },
        RenameCase {
            what: "directory over a symlink to a directory",
            setup: &[("d", D), ("e", D), ("l", L("e"))],
            from: "d",
            to: "l",
            mode: Replace,
            expect: Err(Errno::ENOTDIR),
            after: None,
        },
        RenameCase {
            what: "directory across directories",
            setup: &[("p1", D), ("p1/d", D), ("p1/d/x", F("X")), ("p2", D)],
            from: "p1/d",
            to: "p2/e",
            mode: Replace,
            expect: Ok(()),
            after: Some(&[("p1", D), ("p2", D), ("p2/e", D), ("p2/e/x", F("X"))]),
        },
        RenameCase {
            what: "file across directories over a file",
            setup: &[("p1", D), ("p1/a", F("A")), ("p2", D), ("p2/b", F("B"))],
            from: "p1/a",
            to: "p2/b",
            mode: Replace,
            expect: Ok(()),
            after: Some(&[("p1", D), ("p2", D), ("p2/b", F("A"))]),
        },
        RenameCase {
            what: "a directory up to its grandparent",
            setup: &[("d", D), ("d/e", D), ("d/e/f", D), ("d/e/f/x", F("X"))],
            from: "d/e/f",
            to: "f",
            mode: Replace,
            expect: Ok(()),
            after: Some(&[("d", D), ("d/e", D), ("f", D), ("f/x", F("X"))]),
        },
    ];

    let server = TestServer::start().await;
    let client = server.client().await;
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let root = format!("/case{i}");
        build(&client, &root, case.setup).await;
        let got = outcome(
            client.rename_with(format!("{root}/{}", case.from), format!("{root}/{}", case.to), case.mode).await,
        );
        if got != case.expect {
            failures.push(format!(
                "{} ({} -> {}, {:?}): expected {:?}, got {got:?}",
                case.what, case.from, case.to, case.mode, case.expect
            ));
        }
        let expected = expected_tree(case.after.unwrap_or(case.setup));
        let actual = tree(&client, &root).await;
        if actual != expected {
            failures.push(format!("{}: tree afterwards\n  expected {expected:?}\n  got      {actual:?}", case.what));
        }
    }
    assert_no_failures(&failures);
}

// Proves a rename over a file destroys the old target's inode (or leaves it an orphan while open) and keeps the moved inode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_a_file_drops_the_old_target() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.write("/a", b"A").await.unwrap();
    client.write("/b", b"B").await.unwrap();
    let (a, b) = (ino(&client, "/a").await, ino(&client, "/b").await);
    let files = client.statfs().await.unwrap().files;
    client.rename("/a", "/b").await.unwrap();
    assert_eq!(ino(&client, "/b").await, a);
    assert_errno(client.stat("/a").await, Errno::ENOENT);
    assert_errno(client.getattr(b).await, Errno::ESTALE);
    assert_eq!(client.statfs().await.unwrap().files, files - 1);
    assert_eq!(client.read("/b").await.unwrap(), b"A");

    // An open target lives on as an orphan until closed.
    client.write("/c", b"C").await.unwrap();
    let c = ino(&client, "/c").await;
    let open = client.open("/c", &read_only()).await.unwrap();
    client.rename("/b", "/c").await.unwrap();
    assert_eq!(server.server().orphans().unwrap(), vec![c]);
    assert_eq!(client.getattr(c).await.unwrap().nlink, 0);
    assert_eq!(open.read_at(0, 10).await.unwrap(), &b"C"[..]);
    open.close().await.unwrap();
    assert_eq!(server.server().orphans().unwrap(), Vec::<u64>::new());
    assert_errno(client.getattr(c).await, Errno::ESTALE);
    assert_eq!(client.read("/c").await.unwrap(), b"A");

    // A hard-linked target only loses a link.
    client.write("/d", b"D").await.unwrap();
    client.hard_link("/d", "/d2").await.unwrap();
    let d = ino(&client, "/d").await;
    client.rename("/c", "/d").await.unwrap();
    assert_eq!(client.getattr(d).await.unwrap().nlink, 1);
    assert_eq!(client.read("/d2").await.unwrap(), b"D");
    assert_eq!(client.read("/d").await.unwrap(), b"A");
}

// Proves a directory rename fixes both parents' nlink and the directory's "..", so the loop check then sees its new place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_directory_updates_links_and_dotdot() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_dir_all("/p1/dir/inner").await.unwrap();
    client.mkdir("/p2", 0o755).await.unwrap();
    let (p1, p2, dir) = (ino(&client, "/p1").await, ino(&client, "/p2").await, ino(&client, "/p1/dir").await);
    assert_eq!((nlink(&client, "/p1").await, nlink(&client, "/p2").await), (3, 2));
    client.rename("/p1/dir", "/p2/dir").await.unwrap();
    assert_eq!((nlink(&client, "/p1").await, nlink(&client, "/p2").await), (2, 3));
    assert_eq!(nlink(&client, "/p2/dir").await, 3, "the moved directory keeps its own links");
    assert_eq!(ino(&client, "/p2/dir").await, dir);
    assert_eq!(client.stat("/p2/dir/..").await.unwrap().ino, p2);
    assert_eq!(client.stat("/p2/dir/inner/../..").await.unwrap().ino, p2);
    // The server's idea of the parent moved too: p2 may not go below dir, p1 may.
    assert_errno(client.rename("/p2", "/p2/dir/x").await, Errno::EINVAL);
    assert_errno(client.rename("/p2", "/p2/dir/inner/x").await, Errno::EINVAL);
    client.rename("/p1", "/p2/dir/inner/p1").await.unwrap();
    assert_eq!(ino(&client, "/p2/dir/inner/p1").await, p1);
    assert_eq!(nlink(&client, "/p2/dir/inner").await, 3);
    assert_eq!(nlink(&client, "/").await, 3, "root holds only p2 now");

    // A directory replacing an empty directory in another parent.
    client.mkdir("/q1", 0o755).await.unwrap();
    client.mkdir("/q1/mover", 0o755).await.unwrap();
    client.mkdir("/q2", 0o755).await.unwrap();
    client.mkdir("/q2/empty", 0o755).await.unwrap();
    let empty = ino(&client, "/q2/empty").await;
    let mover = ino(&client, "/q1/mover").await;
    client.rename("/q1/mover", "/q2/empty").await.unwrap();
    assert_eq!((nlink(&client, "/q1").await, nlink(&client, "/q2").await), (2, 3));
    assert_eq!(ino(&client, "/q2/empty").await, mover);
    assert_errno(client.getattr(empty).await, Errno::ESTALE);
    assert_errno(client.rename("/q2", "/q2/empty/x").await, Errno::EINVAL);

    // A directory replacing an empty sibling: the parent loses exactly one link.
    client.create_dir_all("/s/one/inside").await.unwrap();
    client.mkdir("/s/two", 0o755).await.unwrap();
    assert_eq!(nlink(&client, "/s").await, 4);
    client.rename("/s/one", "/s/two").await.unwrap();
    assert_eq!(nlink(&client, "/s").await, 3);
    assert_eq!(nlink(&client, "/s/two").await, 3);
    assert_eq!(client.stat("/s/two/inside/..").await.unwrap().ino, ino(&client, "/s/two").await);
}

// Proves Exchange of a directory and a file across two directories moves one parent link between them and re-parents the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_file_and_directory_across_directories() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.create_dir_all("/x1/sub").await.unwrap();
    client.write("/x1/sub/inner", b"I").await.unwrap();
    client.mkdir("/x2", 0o755).await.unwrap();
    client.write("/x2/f", b"F").await.unwrap();
    let (sub, f) = (ino(&client, "/x1/sub").await, ino(&client, "/x2/f").await);
    assert_eq!((nlink(&client, "/x1").await, nlink(&client, "/x2").await), (3, 2));
    client.rename_with("/x1/sub", "/x2/f", RenameMode::Exchange).await.unwrap();
    assert_eq!((nlink(&client, "/x1").await, nlink(&client, "/x2").await), (2, 3));
    let at_sub = client.lstat("/x1/sub").await.unwrap();
    let at_f = client.lstat("/x2/f").await.unwrap();
    assert_eq!((at_sub.ino, at_sub.kind), (f, FileKind::Regular));
    assert_eq!((at_f.ino, at_f.kind), (sub, FileKind::Directory));
    assert_eq!(client.read("/x1/sub").await.unwrap(), b"F");
    assert_eq!(client.read("/x2/f/inner").await.unwrap(), b"I");
    assert_eq!(client.stat("/x2/f/..").await.unwrap().ino, ino(&client, "/x2").await);
    // The directory's parent is now x2 on the server: x2 cannot move below it, x1 can.
    assert_errno(client.rename("/x2", "/x2/f/y").await, Errno::EINVAL);
    client.rename("/x1", "/x2/f/x1").await.unwrap();
    assert_eq!(client.read("/x2/f/x1/sub").await.unwrap(), b"F");
    // Exchanging the directory with something below it is a loop.
    assert_errno(client.rename_with("/x2/f", "/x2/f/x1/sub", RenameMode::Exchange).await, Errno::EINVAL);
}

// ---- link ----

// Proves hard links: nlink counts, EPERM on directories, EEXIST, ENOENT, and data staying reachable through any remaining name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.mkdir("/l", 0o755).await.unwrap();
    client.mkdir("/l/sub", 0o755).await.unwrap();
    client.write("/l/a", b"data").await.unwrap();
    let a = ino(&client, "/l/a").await;
    assert_eq!(nlink(&client, "/l/a").await, 1);
    let before = client.stat("/l/a").await.unwrap();
    tick().await;
    let linked = client.hard_link("/l/a", "/l/b").await.unwrap();
    assert_eq!((linked.ino, linked.nlink), (a, 2));
    assert!(linked.ctime > before.ctime, "link moves the inode's ctime");
    let linked = client.hard_link("/l/b", "/l/sub/c").await.unwrap();
    assert_eq!((linked.ino, linked.nlink), (a, 3));
    for path in ["/l/a", "/l/b", "/l/sub/c"] {
        let attr = client.stat(path).await.unwrap();
        assert_eq!((attr.ino, attr.nlink), (a, 3), "{path}");
    }
    assert_eq!(nlink(&client, "/l").await, 3, "links to files add no directory links");

    let cases: Vec<(&str, &str, Errno)> = vec![
        ("/l/sub", "/l/sublink", Errno::EPERM),
        ("/", "/rootlink", Errno::EPERM),
        ("/l/a", "/l/b", Errno::EEXIST),
        ("/l/a", "/l/sub", Errno::EEXIST),
        ("/l/a", "/l/a", Errno::EEXIST),
        ("/l/a", "/l/missing/x", Errno::ENOENT),
        ("/l/a", "/l/a/x", Errno::ENOTDIR),
        ("/l/missing", "/l/x", Errno::ENOENT),
    ];
    for (original, link, errno) in cases {
        assert_errno(client.hard_link(original, link).await, errno);
    }
    assert_errno(client.stat("/l/sublink").await, Errno::ENOENT);
    assert_eq!(nlink(&client, "/l/a").await, 3);

    // Writes through one name show through the others; unlinking names keeps the data.
    client.write("/l/sub/c", b"new data").await.unwrap();
    assert_eq!(client.read("/l/a").await.unwrap(), b"new data");
    client.remove_file("/l/a").await.unwrap();
    assert_eq!(nlink(&client, "/l/b").await, 2);
    assert_eq!(client.read("/l/b").await.unwrap(), b"new data");
    client.remove_file("/l/b").await.unwrap();
    assert_eq!(client.stat("/l/sub/c").await.unwrap().nlink, 1);
    assert_eq!(client.read("/l/sub/c").await.unwrap(), b"new data");
    client.remove_file("/l/sub/c").await.unwrap();
    assert_errno(client.getattr(a).await, Errno::ESTALE);

    // A hard link to a symlink links the symlink itself.
    client.write("/l/t", b"T").await.unwrap();
    client.symlink("t", "/l/s").await.unwrap();
    let s = ino(&client, "/l/s").await;
    let linked = client.hard_link("/l/s", "/l/s2").await.unwrap();
    assert_eq!((linked.ino, linked.kind, linked.nlink), (s, FileKind::Symlink, 2));
    assert_eq!(client.read_link("/l/s2").await.unwrap(), b"t");
    assert_eq!(nlink(&client, "/l/t").await, 1);
}

// ---- symlink and readlink ----

// Proves symlinks store their target bytes exactly, lstat reports them (kind, size, perm), readlink refuses other kinds, and targets are validated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_and_readlink() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.mkdir("/s", 0o755).await.unwrap();
    client.write("/s/file", b"x").await.unwrap();
    let s = ino(&client, "/s").await;
    let targets: Vec<&[u8]> =
        vec![b"some/target/../x", b"/absolute/path", b"..", b"spaces and \xff\xfe bytes", b"dangling", b"a//b/./c/"];
    for (i, target) in targets.iter().enumerate() {
        let name = format!("link{i}");
        let attr = client.symlink_at(s, name.as_bytes(), target).await.unwrap();
        assert_eq!(attr.kind, FileKind::Symlink);
        assert_eq!(attr.size, target.len() as u64);
        assert_eq!(attr.nlink, 1);
        assert_eq!(attr.perm, 0o777);
        assert_eq!(client.readlink_ino(attr.ino).await.unwrap(), *target);
        let path = format!("/s/{name}");
        assert_eq!(client.read_link(&path).await.unwrap(), *target);
        let lstat = client.lstat(&path).await.unwrap();
        assert_eq!(lstat, attr);
        assert_eq!(lstat.mode(), 0o120777);
    }
    // The path API stores the target as given.
    let attr = client.symlink("file", "/s/plain").await.unwrap();
    assert_eq!((attr.kind, attr.size), (FileKind::Symlink, 4));
    assert_eq!(client.read_link("/s/plain").await.unwrap(), b"file");
    assert_eq!(client.stat("/s/plain").await.unwrap().ino, ino(&client, "/s/file").await);

    // readlink of other kinds is EINVAL; a readlink path follows intermediate links.
    client.symlink("s", "/sl").await.unwrap();
    assert_eq!(client.read_link("/sl/plain").await.unwrap(), b"file");
    assert_errno(client.read_link("/s/file").await, Errno::EINVAL);
    assert_errno(client.read_link("/s").await, Errno::EINVAL);
    assert_errno(client.read_link("/").await, Errno::EINVAL);
    assert_errno(client.read_link("/s/missing").await, Errno::ENOENT);
    assert_errno(client.readlink_ino(ino(&client, "/s/file").await).await, Errno::EINVAL);

    // Names already taken, and invalid targets.
    let longest = vec![b't'; 4095];
    let too_long = vec![b't'; 4096];
    let cases: Vec<(&str, &[u8], Result<u64, Errno>)> = vec![
        ("plain", b"x", Err(Errno::EEXIST)),
        ("file", b"x", Err(Errno::EEXIST)),
        ("empty", b"", Err(Errno::ENOENT)),
        ("nul", b"a\0b", Err(Errno::EINVAL)),
        ("too_long", too_long.as_slice(), Err(Errno::ENAMETOOLONG)),
        ("longest", longest.as_slice(), Ok(4095)),
    ];
    for (name, target, expected) in cases {
        let got = outcome(client.symlink_at(s, name.as_bytes(), target).await).map(|attr| attr.size);
        assert_eq!(got, expected, "symlink {name}");
    }
    assert_eq!(client.read_link("/s/longest").await.unwrap(), longest);
    assert_eq!(client.read("/s/plain").await.unwrap(), b"x", "the existing link was kept");
    assert_errno(client.stat("/s/empty").await, Errno::ENOENT);
    assert_errno(client.symlink("x", "/missing/l").await, Errno::ENOENT);
}

// ---- readdir ----

// Proves readdir lists each entry exactly once with its kind and ino, without "." or "..", and ENOTDIR for non-directories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_lists_each_entry_once() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.mkdir("/r", 0o755).await.unwrap();
    let mut expected = BTreeMap::new();
    for i in 0..10 {
        let path = format!("/r/file{i}");
        client.write(&path, b"x").await.unwrap();
        expected.insert(format!("file{i}"), (ino(&client, &path).await, FileKind::Regular));
    }
    for i in 0..3 {
        let path = format!("/r/dir{i}");
        let attr = client.mkdir(&path, 0o755).await.unwrap();
        expected.insert(format!("dir{i}"), (attr.ino, FileKind::Directory));
    }
    let attr = client.symlink("file0", "/r/link").await.unwrap();
    expected.insert("link".to_string(), (attr.ino, FileKind::Symlink));
    client.hard_link("/r/file1", "/r/hard").await.unwrap();
    expected.insert("hard".to_string(), (ino(&client, "/r/file1").await, FileKind::Regular));
    client.write("/r/dir0/nested", b"n").await.unwrap();

    let entries = client.read_dir("/r").await.unwrap();
    let mut listed = BTreeMap::new();
    let mut previous_cookie = 0;
    for entry in &entries {
        assert!(entry.cookie > previous_cookie, "cookies grow");
        previous_cookie = entry.cookie;
        assert!(entry.attr.is_none(), "no attributes unless asked");
        let name = String::from_utf8(entry.name.clone()).unwrap();
        assert!(listed.insert(name, (entry.ino, entry.kind)).is_none(), "listed once");
    }
    assert_eq!(listed, expected);
    assert_eq!(client.read_dir("/r/dir1").await.unwrap(), vec![]);
    // Through a symlink to the directory.
    client.symlink("r", "/rl").await.unwrap();
    assert_eq!(client.read_dir("/rl").await.unwrap(), entries);

    client.write("/plain", b"p").await.unwrap();
    let plain = ino(&client, "/plain").await;
    assert_errno(client.read_dir("/plain").await, Errno::ENOTDIR);
    assert_errno(client.read_dir("/r/link").await, Errno::ENOTDIR);
    assert_errno(client.read_dir_page(plain, 0, 10, false).await, Errno::ENOTDIR);
    assert_errno(client.read_dir("/missing").await, Errno::ENOENT);
}

// Proves paging through 100 entries 7 at a time returns every entry exactly once, `end` only on the last page, and nothing after the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_pages_with_cookies() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let dir = client.mkdir("/many", 0o755).await.unwrap().ino;
    let mut expected = BTreeSet::new();
    for i in 0..100 {
        let name = format!("e{i:03}");
        let file = client.open_at(dir, name.as_bytes(), OpenFlags::WRITE | OpenFlags::CREATE, 0o644).await.unwrap();
        file.close().await.unwrap();
        expected.insert(name.into_bytes());
    }
    let mut seen = Vec::new();
    let mut cookie = 0;
    let mut pages = Vec::new();
    loop {
        let (page, end) = client.read_dir_page(dir, cookie, 7, false).await.unwrap();
        pages.push((page.len(), end));
        for entry in &page {
            assert!(entry.cookie > cookie, "cookies grow");
            cookie = entry.cookie;
            seen.push(entry.name.clone());
        }
        if end {
            break;
        }
        assert!(pages.len() <= 15, "paging does not end: {pages:?}");
    }
    let mut expected_pages = vec![(7, false); 14];
    expected_pages.push((2, true));
    assert_eq!(pages, expected_pages);
    assert_eq!(seen.len(), 100);
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);
    // Past the last cookie: nothing, and the end.
    assert_eq!(client.read_dir_page(dir, cookie, 7, false).await.unwrap(), (vec![], true));
    assert_eq!(client.read_dir_page(dir, u64::MAX, 7, false).await.unwrap(), (vec![], true));
    // An exact fit reports the end on the page that holds the last entry.
    let (page, end) = client.read_dir_page(dir, 0, 100, false).await.unwrap();
    assert_eq!((page.len(), end), (100, true));
    assert_eq!(names(&page), seen);
}

// Proves entries that exist throughout a paged readdir appear exactly once even while others are removed and added between pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_paging_survives_concurrent_changes() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let dir = client.mkdir("/churn", 0o755).await.unwrap().ino;
    for i in 0..60 {
        client.write(format!("/churn/e{i:02}"), b"").await.unwrap();
    }
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut cookie = 0;
    let mut round = 0;
    let mut removed_unseen = Vec::new();
    loop {
        let (page, end) = client.read_dir_page(dir, cookie, 10, false).await.unwrap();
        for entry in &page {
            cookie = entry.cookie;
            seen.push(entry.name.clone());
        }
        if end {
            break;
        }
        // Between pages: remove one seen entry and one from the far end, add a new one.
        for name in [format!("e{:02}", round * 10), format!("e{:02}", 59 - round)] {
            if !seen.contains(&name.clone().into_bytes()) {
                removed_unseen.push(name.clone().into_bytes());
            }
            client.remove_file(format!("/churn/{name}")).await.unwrap();
        }
        client.write(format!("/churn/new{round}"), b"").await.unwrap();
        round += 1;
    }
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no entry listed twice: {seen:?}");
    let survivors: BTreeSet<Vec<u8>> = names(&client.read_dir("/churn").await.unwrap()).into_iter().collect();
    for name in &survivors {
        let original = name.starts_with(b"e");
        if original {
            assert!(unique.contains(name), "{} existed throughout but was not listed", String::from_utf8_lossy(name));
        }
    }
    assert!(!removed_unseen.is_empty(), "the test removed entries ahead of the listing");
    for name in &removed_unseen {
        assert!(!unique.contains(name), "{} was removed before its page yet listed", String::from_utf8_lossy(name));
    }
}

// Proves read_dir_plus gives each entry's full attributes, equal to a fresh lstat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readdir_plus_gives_attributes() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.mkdir("/r", 0o755).await.unwrap();
    client.write("/r/f", b"12345").await.unwrap();
    client.mkdir("/r/d", 0o700).await.unwrap();
    client.symlink("f", "/r/l").await.unwrap();
    client.hard_link("/r/f", "/r/h").await.unwrap();
    let entries = client.read_dir_plus("/r").await.unwrap();
    assert_eq!(entries.len(), 4);
    for entry in &entries {
        let name = String::from_utf8(entry.name.clone()).unwrap();
        let attr = entry.attr.clone().unwrap_or_else(|| panic!("{name} has attributes"));
        assert_eq!(attr, client.lstat(format!("/r/{name}")).await.unwrap(), "{name}");
        assert_eq!((attr.ino, attr.kind), (entry.ino, entry.kind));
        let expected: (FileKind, u64, u32, u32) = match name.as_str() {
            "f" | "h" => (FileKind::Regular, 5, 2, attr.perm),
            "d" => (FileKind::Directory, attr.size, 2, 0o700),
            "l" => (FileKind::Symlink, 1, 1, 0o777),
            other => panic!("unexpected entry {other}"),
        };
        assert_eq!((attr.kind, attr.size, attr.nlink, attr.perm), expected, "{name}");
    }
    let plain: Vec<_> = client.read_dir("/r").await.unwrap();
    let stripped: Vec<_> = entries
        .into_iter()
        .map(|mut entry| {
            entry.attr = None;
            entry
        })
        .collect();
    assert_eq!(plain, stripped);
}

// ---- POSIX times ----

#[derive(Clone, Copy, Debug)]
enum Timed {
    Create,
    Mkdir,
    Symlink,
    Write,
    Truncate,
    Chmod,
    SetXattr,
    Link,
    Unlink,
    Rename,
    Read,
    ReadDir,
    Open,
}

// Proves which timestamps each operation moves: directory mtime/ctime on entry changes, file mtime on data changes, file ctime on any inode change, nothing on reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_move_the_right_timestamps() {
    // (operation, dir mtime, dir ctime, file mtime, file ctime): which must change.
    let cases = [
        (Timed::Create, true, true, false, false),
        (Timed::Mkdir, true, true, false, false),
        (Timed::Symlink, true, true, false, false),
        (Timed::Write, false, false, true, true),
        (Timed::Truncate, false, false, true, true),
        (Timed::Chmod, false, false, false, true),
        (Timed::SetXattr, false, false, false, true),
        (Timed::Link, true, true, false, true),
        (Timed::Unlink, true, true, false, true),
        (Timed::Rename, true, true, false, true),
        (Timed::Read, false, false, false, false),
        (Timed::ReadDir, false, false, false, false),
        (Timed::Open, false, false, false, false),
    ];
    let server = TestServer::start().await;
    let client = server.client().await;
    let mut failures = Vec::new();
    for (i, (op, dir_m, dir_c, file_m, file_c)) in cases.into_iter().enumerate() {
        let dir = format!("/times{i}");
        client.mkdir(&dir, 0o755).await.unwrap();
        client.write(format!("{dir}/f"), b"contents").await.unwrap();
        // A second name keeps the file reachable when the operation unlinks "f".
        client.hard_link(format!("{dir}/f"), format!("{dir}/h")).await.unwrap();
        let file = ino(&client, &format!("{dir}/f")).await;
        let dir_before = client.stat(&dir).await.unwrap();
        let file_before = client.getattr(file).await.unwrap();
        tick().await;
        match op {
            Timed::Create => client.write(format!("{dir}/new"), b"n").await.unwrap(),
            Timed::Mkdir => {
                client.mkdir(format!("{dir}/sub"), 0o755).await.unwrap();
            }
            Timed::Symlink => {
                client.symlink("f", format!("{dir}/s")).await.unwrap();
            }
            Timed::Write => {
                let mut handle = client.open(format!("{dir}/f"), &write_only()).await.unwrap();
                handle.write_at(3, b"X").await.unwrap();
                handle.close().await.unwrap();
            }
            Timed::Truncate => {
                client.truncate(format!("{dir}/f"), 2).await.unwrap();
            }
            Timed::Chmod => {
                client.set_permissions(format!("{dir}/f"), 0o600).await.unwrap();
            }
            Timed::SetXattr => client.set_xattr(format!("{dir}/f"), b"user.t", b"v", XattrMode::Either).await.unwrap(),
            Timed::Link => {
                client.hard_link(format!("{dir}/f"), format!("{dir}/l")).await.unwrap();
            }
            Timed::Unlink => client.remove_file(format!("{dir}/f")).await.unwrap(),
            Timed::Rename => client.rename(format!("{dir}/f"), format!("{dir}/g")).await.unwrap(),
            Timed::Read => {
                client.read(format!("{dir}/f")).await.unwrap();
            }
            Timed::ReadDir => {
                client.read_dir(&dir).await.unwrap();
            }
            Timed::Open => client.open(format!("{dir}/f"), &read_write()).await.unwrap().close().await.unwrap(),
        }
        let dir_after = client.stat(&dir).await.unwrap();
        let file_after = client.getattr(file).await.unwrap();
        let moved = [
            ("dir mtime", dir_before.mtime, dir_after.mtime, dir_m),
            ("dir ctime", dir_before.ctime, dir_after.ctime, dir_c),
            ("file mtime", file_before.mtime, file_after.mtime, file_m),
            ("file ctime", file_before.ctime, file_after.ctime, file_c),
        ];
        let mut stamps = BTreeSet::new();
        for (what, before, after, expected) in moved {
            if after < before {
                failures.push(format!("{op:?}: {what} went back from {before:?} to {after:?}"));
            }
            if (after != before) != expected {
                failures.push(format!(
                    "{op:?}: {what} expected {}, got {before:?} -> {after:?}",
                    if expected { "to move" } else { "to stay" }
                ));
            }
            if after != before {
                stamps.insert(after);
            }
        }
        if stamps.len() > 1 {
            failures.push(format!("{op:?}: one operation stamped several times {stamps:?}"));
        }
        if file_after.atime != file_before.atime && !matches!(op, Timed::Read) {
            failures.push(format!("{op:?}: atime moved"));
        }
    }
    assert_no_failures(&failures);
}

// Proves a new file's own times equal its parent's new mtime and ctime (one change, one time), and a write's reply carries the new mtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_and_write_times_agree() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.mkdir("/p", 0o755).await.unwrap();
    let old = Timestamp { secs: 1_000_000_000, nanos: 0 };
    client.set_times("/p", Some(TimeSet::At(old)), Some(TimeSet::At(old))).await.unwrap();
    let parent_before = client.stat("/p").await.unwrap();
    tick().await;
    let mut file = client.open("/p/new", &create_rw()).await.unwrap();
    let created = file.cached_attr().clone();
    let parent = client.stat("/p").await.unwrap();
    assert!(parent.ctime > parent_before.ctime);
    assert_eq!(parent.mtime, created.mtime);
    assert_eq!(parent.ctime, created.ctime);
    assert_eq!((created.atime, created.mtime), (created.ctime, created.ctime));
    assert_eq!(parent.atime, old, "creating an entry leaves the directory's atime");

    client.set_times("/p/new", None, Some(TimeSet::At(old))).await.unwrap();
    tick().await;
    let written = file.write_at(0, b"data").await.unwrap();
    assert!(written.mtime > old);
    assert_eq!(written.mtime, written.ctime);
    assert_eq!(client.stat("/p/new").await.unwrap(), written);
    file.close().await.unwrap();
}

// ---- xattrs ----

enum X {
    Set(&'static [u8], &'static [u8], XattrMode, Result<(), Errno>),
    Get(&'static [u8], Result<&'static [u8], Errno>),
    Remove(&'static [u8], Result<(), Errno>),
    List(&'static [&'static [u8]]),
}

// Proves xattr set/get/list/remove with Create/Replace semantics, exact errnos, size limits, and that they live on the inode a path resolves to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xattrs() {
    use X::{Get, List, Remove, Set};
    use XattrMode::{Create, Either, Replace};
    let steps = [
        List(&[]),
        Get(b"user.a", Err(Errno::ENODATA)),
        Remove(b"user.a", Err(Errno::ENODATA)),
        Set(b"user.a", b"1", Create, Ok(())),
        Get(b"user.a", Ok(b"1")),
        Set(b"user.a", b"2", Create, Err(Errno::EEXIST)),
        Get(b"user.a", Ok(b"1")),
        Set(b"user.b", b"x", Replace, Err(Errno::ENODATA)),
        Get(b"user.b", Err(Errno::ENODATA)),
        Set(b"user.a", b"22", Replace, Ok(())),
        Get(b"user.a", Ok(b"22")),
        Set(b"user.b", b"", Either, Ok(())),
        Get(b"user.b", Ok(b"")),
        Set(b"user.b", b"bee\0with nul", Either, Ok(())),
        Get(b"user.b", Ok(b"bee\0with nul")),
        Set(b"trusted.c", b"\xff", Either, Ok(())),
        List(&[b"trusted.c", b"user.a", b"user.b"]),
        Remove(b"user.a", Ok(())),
        Remove(b"user.a", Err(Errno::ENODATA)),
        Get(b"user.a", Err(Errno::ENODATA)),
        Set(b"", b"v", Either, Err(Errno::EINVAL)),
        Get(b"", Err(Errno::EINVAL)),
        Set(b"user.\0", b"v", Either, Err(Errno::EINVAL)),
        Remove(b"", Err(Errno::EINVAL)),
        List(&[b"trusted.c", b"user.b"]),
        Set(b"user.a", b"again", Create, Ok(())),
        Get(b"user.a", Ok(b"again")),
    ];
    let server = TestServer::start().await;
    let client = server.client().await;
    client.write("/f", b"x").await.unwrap();
    let mut failures = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Set(name, value, mode, expected) => {
                let got = outcome(client.set_xattr("/f", name, value, *mode).await);
                if got != *expected {
                    failures.push(format!("step {i}: set {name:?} {mode:?}: expected {expected:?}, got {got:?}"));
                }
            }
            Get(name, expected) => {
                let got = outcome(client.get_xattr("/f", name).await);
                if got.as_deref() != expected.as_deref() {
                    failures.push(format!("step {i}: get {name:?}: expected {expected:?}, got {got:?}"));
                }
            }
            Remove(name, expected) => {
                let got = outcome(client.remove_xattr("/f", name).await);
                if got != *expected {
                    failures.push(format!("step {i}: remove {name:?}: expected {expected:?}, got {got:?}"));
                }
            }
            List(expected) => {
                let mut got = client.list_xattr("/f").await.unwrap();
                got.sort();
                let expected: Vec<Vec<u8>> = expected.iter().map(|name| name.to_vec()).collect();
                if got != expected {
                    failures.push(format!("step {i}: list: expected {expected:?}, got {got:?}"));
                }
            }
        }
    }
    assert_no_failures(&failures);

    // Size limits: a 64 KiB value fits, one byte more is E2BIG and changes nothing.
    let biggest = pattern(64 * 1024, 1);
    client.set_xattr("/f", b"user.big", &biggest, Either).await.unwrap();
    assert!(client.get_xattr("/f", b"user.big").await.unwrap() == biggest);
    let too_big = pattern(64 * 1024 + 1, 2);
    assert_errno(client.set_xattr("/f", b"user.big", &too_big, Either).await, Errno::E2BIG);
    assert_errno(client.set_xattr("/f", b"user.new", &too_big, Either).await, Errno::E2BIG);
    assert!(client.get_xattr("/f", b"user.big").await.unwrap() == biggest);
    assert_errno(client.get_xattr("/f", b"user.new").await, Errno::ENODATA);
    // Name limits: 255 bytes fit, 256 are ERANGE.
    let long_name = vec![b'n'; 255];
    client.set_xattr("/f", &long_name, b"v", Either).await.unwrap();
    assert_eq!(client.get_xattr("/f", &long_name).await.unwrap(), b"v");
    let too_long = vec![b'n'; 256];
    assert_errno(client.set_xattr("/f", &too_long, b"v", Either).await, Errno::ERANGE);

    // On directories and symlinks; paths follow links, the inode API addresses the link itself.
    client.mkdir("/d", 0o755).await.unwrap();
    client.symlink("f", "/l").await.unwrap();
    let link = ino(&client, "/l").await;
    client.set_xattr("/d", b"user.dir", b"D", Either).await.unwrap();
    assert_eq!(client.get_xattr("/d", b"user.dir").await.unwrap(), b"D");
    // user.* lives on files and directories only, as on Linux; trusted.* (the superuser's) also
    // on symlinks.
    assert_errno(client.setxattr_ino(link, b"user.link", b"L", Either).await, Errno::EPERM);
    client.setxattr_ino(link, b"trusted.link", b"L", Either).await.unwrap();
    assert_eq!(client.listxattr_ino(link).await.unwrap(), vec![b"trusted.link".to_vec()]);
    assert_eq!(client.get_xattr("/l", b"user.b").await.unwrap(), b"bee\0with nul");
    assert_errno(client.get_xattr("/l", b"trusted.link").await, Errno::ENODATA);
    client.set_xattr("/l", b"user.via", b"V", Either).await.unwrap();
    assert_eq!(client.get_xattr("/f", b"user.via").await.unwrap(), b"V");
    assert_errno(client.getxattr_ino(link, b"user.via").await, Errno::ENODATA);
    assert_errno(client.get_xattr("/missing", b"user.a").await, Errno::ENOENT);
    // Xattrs stay with the inode across renames and hard links.
    client.hard_link("/f", "/f2").await.unwrap();
    client.rename("/f", "/g").await.unwrap();
    assert_eq!(client.get_xattr("/f2", b"user.via").await.unwrap(), b"V");
    assert_eq!(client.get_xattr("/g", b"user.via").await.unwrap(), b"V");
}

// ---- statfs ----

// Proves statfs counts inodes exactly as they are created and destroyed, and reports the 255-byte name limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statfs_counts_inodes() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let before = client.statfs().await.unwrap();
    assert_eq!(before.name_len_max, 255);
    assert!(before.block_size > 0);
    assert!(before.blocks >= before.blocks_free);
    assert!(before.blocks_free >= before.blocks_available);
    assert!(before.files >= before.files_free);
    for i in 0..5 {
        client.write(format!("/f{i}"), b"x").await.unwrap();
    }
    client.mkdir("/d", 0o755).await.unwrap();
    client.symlink("f0", "/l").await.unwrap();
    client.hard_link("/f1", "/h").await.unwrap();
    let after = client.statfs().await.unwrap();
    assert_eq!(after.files - after.files_free, before.files - before.files_free + 7);
    assert_eq!(after.files, before.files + 7, "a hard link is no new inode");
    client.remove_file("/f0").await.unwrap();
    client.remove_file("/f1").await.unwrap();
    assert_eq!(client.statfs().await.unwrap().files, before.files + 6, "f1 lives on as /h");
    client.remove_file("/h").await.unwrap();
    client.remove_dir("/d").await.unwrap();
    assert_eq!(client.statfs().await.unwrap().files, before.files + 4);
}

// ---- unlinked while open ----

// Proves an unlinked file stays readable and writable through open handles as an orphan, is reopenable by ino while held, and is destroyed by the last close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_file_lives_while_open() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.write("/o", b"orphan data").await.unwrap();
    let files = client.statfs().await.unwrap().files;
    let mut file = client.open("/o", &read_write()).await.unwrap();
    let o = file.ino();
    assert!(object_path(&server, o).exists(), "the data object is where the test expects");
    client.remove_file("/o").await.unwrap();
    assert_errno(client.stat("/o").await, Errno::ENOENT);
    assert_eq!(client.read_dir("/").await.unwrap(), vec![]);
    assert_eq!(server.server().orphans().unwrap(), vec![o]);
    let attr = file.metadata().await.unwrap();
    assert_eq!((attr.nlink, attr.size), (0, 11));
    assert_eq!(file.read_at(0, 100).await.unwrap(), &b"orphan data"[..]);
    file.write_at(11, b"+more").await.unwrap();
    assert_eq!(file.read_to_end().await.unwrap(), b"orphan data+more");
    assert_eq!(client.statfs().await.unwrap().files, files, "the orphan still counts");
    // A second handle by ino, then it closes: the first keeps the orphan alive.
    let second = client.open_ino(o, OpenFlags::READ).await.unwrap();
    assert_eq!(second.read_at(7, 4).await.unwrap(), &b"data"[..]);
    second.close().await.unwrap();
    assert_eq!(server.server().orphans().unwrap(), vec![o]);
    assert_eq!(file.read_at(0, 6).await.unwrap(), &b"orphan"[..]);
    // An orphan cannot be linked back into the namespace.
    assert_errno(client.link_at(o, ROOT_INO, b"revived").await, Errno::ENOENT);
    file.fsync().await.unwrap();
    file.close().await.unwrap();
    assert_eq!(server.server().orphans().unwrap(), Vec::<u64>::new());
    assert_errno(client.getattr(o).await, Errno::ESTALE);
    assert_errno(client.open_ino(o, OpenFlags::READ).await.map(|file| file.ino()), Errno::ESTALE);
    assert_eq!(client.statfs().await.unwrap().files, files - 1);
    let object = object_path(&server, o);
    eventually("the orphan's data object is removed", || !object.exists()).await;
}

// Proves orphans held by a session are reclaimed when that session ends without closing its handles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_of_a_closed_session_are_reclaimed() {
    let server = TestServer::start().await;
    let holder = server.client().await;
    let other = server.client().await;
    holder.write("/o", b"held").await.unwrap();
    let file = holder.open("/o", &read_only()).await.unwrap();
    let o = file.ino();
    other.remove_file("/o").await.unwrap();
    assert_eq!(server.server().orphans().unwrap(), vec![o]);
    assert_eq!(other.getattr(o).await.unwrap().nlink, 0);
    std::mem::forget(file);
    holder.close();
    let srv = server.server().clone();
    eventually("the closed session's orphan is destroyed", || srv.orphans().unwrap().is_empty()).await;
    assert_errno(other.getattr(o).await, Errno::ESTALE);
}

/// Who holds an orphan, as `Client::orphans` shows it: `(session, connected, handles, pins)` per
/// holder, in session order.
fn holders(orphan: &Orphan) -> Vec<(u64, bool, u64, u64)> {
    orphan.holders.iter().map(|holder| (holder.session, holder.connected, holder.handles, holder.pins)).collect()
}

// Proves the orphan listing shows what keeps each orphan alive: the session that opened it, with
// its one handle (and its client's address and name), then a session that pins it as well (what a
// mount does for its kernel's references); the close leaves the pin the only holder, and the
// unpin leaves no orphan to list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_show_the_sessions_holding_them() {
    let server = TestServer::start().await;
    let opener = server.client().await;
    let pinner = server.client().await;
    let admin = server.client().await;
    opener.write("/o", b"held").await.unwrap();
    let file = opener.open("/o", &read_only()).await.unwrap();
    let o = file.ino();
    admin.remove_file("/o").await.unwrap();
    let orphans = admin.orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    let orphan = &orphans[0];
    assert_eq!((orphan.attr.ino, orphan.attr.nlink, orphan.attr.size), (o, 0, 4));
    assert_eq!((orphan.opens, orphan.kept_for_recovery), (1, false));
    assert_eq!(holders(orphan), vec![(opener.session(), true, 1, 0)]);
    let holder = &orphan.holders[0];
    assert!(holder.peer.starts_with("127.0.0.1:"), "the client's address: {holder:?}");
    assert!(holder.client_name.starts_with("rustre-client pid "), "the name from its hello: {holder:?}");

    pinner.pin(o).await.unwrap();
    let orphans = admin.orphans().await.unwrap();
    assert_eq!(orphans[0].opens, 2);
    let mut expected = vec![(opener.session(), true, 1, 0), (pinner.session(), true, 0, 1)];
    expected.sort_unstable();
    assert_eq!(holders(&orphans[0]), expected);

    file.close().await.unwrap();
    let orphans = admin.orphans().await.unwrap();
    assert_eq!((orphans.len(), orphans[0].opens), (1, 1));
    assert_eq!(holders(&orphans[0]), vec![(pinner.session(), true, 0, 1)]);
    pinner.unpin(o, 1).await.unwrap();
    assert_eq!(admin.orphans().await.unwrap(), vec![]);
}

// Proves a session whose connection broke still shows as holding its orphan, as disconnected,
// while the server keeps it for its client to resume (a grace period longer than the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_show_a_disconnected_holder() {
    let server = TestServer::start_with(|config| config.recovery_grace = Duration::from_secs(600)).await;
    let holder = server.client().await;
    let admin = server.client().await;
    holder.write("/o", b"held").await.unwrap();
    let file = holder.open("/o", &read_only()).await.unwrap();
    admin.remove_file("/o").await.unwrap();
    let session = holder.session();
    std::mem::forget(file);
    holder.crash();
    // The server learns of the broken connection in the background.
    let mut shown = Vec::new();
    for _ in 0..500 {
        shown = holders(&admin.orphans().await.unwrap()[0]);
        if shown == vec![(session, false, 1, 0)] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(shown, vec![(session, false, 1, 0)], "the detached session still holds its handle");
}

// Proves an orphan left by the previous run shows as kept for recovery, held by no session,
// until a session of the new run claims it by id, which then shows as holding it too. The
// previous run's session never comes back (its client does not know the new address), so
// recovery lasts the whole test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_of_the_previous_run_show_as_kept_for_recovery() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.write("/o", b"orphaned").await.unwrap();
    let file = client.open("/o", &read_only()).await.unwrap();
    let o = file.ino();
    client.remove_file("/o").await.unwrap();
    std::mem::forget(file);
    server.restart_with(|config| config.recovery_grace = Duration::from_secs(600)).await;
    client.close();

    let admin = server.client().await;
    let orphans = admin.orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!((orphans[0].attr.ino, orphans[0].opens, orphans[0].kept_for_recovery), (o, 0, true));
    assert_eq!(holders(&orphans[0]), vec![]);
    let claimed = admin.open_ino(o, OpenFlags::READ).await.unwrap();
    let orphans = admin.orphans().await.unwrap();
    assert_eq!((orphans[0].opens, orphans[0].kept_for_recovery), (1, true));
    assert_eq!(holders(&orphans[0]), vec![(admin.session(), true, 1, 0)]);
    claimed.close().await.unwrap();
    let orphans = admin.orphans().await.unwrap();
    assert_eq!((orphans.len(), orphans[0].opens, orphans[0].kept_for_recovery), (1, 0, true), "kept still");
}

// ---- fsync ----

// Proves fsync succeeds on write, read and append handles, for files and directories, and the data is intact afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_succeeds() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mut file = client.open("/f", &create_rw()).await.unwrap();
    file.fsync().await.unwrap();
    file.write_all(b"synced").await.unwrap();
    file.fsync().await.unwrap();
    file.close().await.unwrap();
    let reader = client.open("/f", &read_only()).await.unwrap();
    reader.fsync().await.unwrap();
    reader.close().await.unwrap();
    let appender = client.open("/f", OpenOptions::new().append(true)).await.unwrap();
    appender.fsync().await.unwrap();
    appender.close().await.unwrap();
    client.mkdir("/d", 0o755).await.unwrap();
    let dir = client.open("/d", &read_only()).await.unwrap();
    dir.fsync().await.unwrap();
    dir.close().await.unwrap();
    assert_eq!(client.read("/f").await.unwrap(), b"synced");
}

// ---- persistence ----

/// A path's attributes, xattr names and xattr values.
type Details = (String, Attr, Vec<Vec<u8>>, Vec<Vec<u8>>);

// Proves a tree of files, directories, symlinks, hard links and xattrs survives a restart with identical attributes, contents and directory order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_survives_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.create_dir_all("/p/dir/deep").await.unwrap();
    client.write("/p/dir/file1", &pattern(1000, 5)).await.unwrap();
    client.write("/p/big", &pattern(5 << 20, 9)).await.unwrap();
    let mut sparse = client.open("/p/sparse", &create_rw()).await.unwrap();
    sparse.write_at(1 << 20, b"end").await.unwrap();
    sparse.close().await.unwrap();
    client.write("/p/empty", b"").await.unwrap();
    client.symlink("dir/file1", "/p/link").await.unwrap();
    client.symlink("/p/big", "/p/abs").await.unwrap();
    client.symlink("nowhere", "/p/dangling").await.unwrap();
    client.hard_link("/p/dir/file1", "/p/hard").await.unwrap();
    client.set_xattr("/p/dir/file1", b"user.a", b"1", XattrMode::Either).await.unwrap();
    client.set_xattr("/p/dir/file1", b"user.big", &pattern(60_000, 3), XattrMode::Either).await.unwrap();
    client.set_xattr("/p/dir", b"user.d", b"", XattrMode::Either).await.unwrap();
    let link = ino(&client, "/p/link").await;
    client.setxattr_ino(link, b"trusted.l", b"L", XattrMode::Either).await.unwrap();
    client.set_permissions("/p/dir/file1", 0o600).await.unwrap();
    client.set_owner("/p/big", Some(4321), Some(8765)).await.unwrap();
    let at = Timestamp { secs: 1_111_111_111, nanos: 222_333_444 };
    client.set_times("/p/empty", Some(TimeSet::At(at)), Some(TimeSet::At(at))).await.unwrap();
    for i in 0..30 {
        client.write(format!("/p/dir/deep/n{i}"), format!("{i}").as_bytes()).await.unwrap();
    }
    client.remove_file("/p/dir/deep/n7").await.unwrap();
    client.rename("/p/dir/deep/n8", "/p/dir/deep/renamed").await.unwrap();
    // The last change before the restart is a plain data write, with no fsync.
    let mut last = client.open("/p/dir/file1", &read_write()).await.unwrap();
    last.write_at(1000, b"tail").await.unwrap();
    last.close().await.unwrap();

    async fn snapshot(client: &Client) -> (BTreeMap<String, Node>, Vec<Details>) {
        let nodes = tree(client, "/p").await;
        let mut details = Vec::new();
        for path in nodes.keys() {
            let full = format!("/p/{path}");
            let attr = client.lstat(&full).await.unwrap();
            let mut xattrs = client.listxattr_ino(attr.ino).await.unwrap();
            xattrs.sort();
            let mut values = Vec::new();
            for name in &xattrs {
                values.push(client.getxattr_ino(attr.ino, name).await.unwrap());
            }
            details.push((full, attr, xattrs, values));
        }
        (nodes, details)
    }
    let (nodes_before, details_before) = snapshot(&client).await;
    let listing_before = client.read_dir("/p/dir/deep").await.unwrap();
    let statfs_before = client.statfs().await.unwrap().files;
    assert_eq!(nodes_before.len(), 10 + 29);
    assert_eq!(nodes_before["dir/file1"], Node::File([pattern(1000, 5), b"tail".to_vec()].concat()));
    client.close();

    server.restart().await;
    let client = server.client().await;
    let (nodes_after, details_after) = snapshot(&client).await;
    assert!(nodes_after == nodes_before, "contents after restart");
    for (before, after) in details_before.iter().zip(&details_after) {
        assert_eq!(before, after, "attributes and xattrs of {}", before.0);
    }
    assert_eq!(details_before.len(), details_after.len());
    assert_eq!(client.read_dir("/p/dir/deep").await.unwrap(), listing_before);
    assert_eq!(client.statfs().await.unwrap().files, statfs_before);
    assert_eq!(client.stat("/p/abs").await.unwrap().size, 5 << 20);
    assert_eq!(nlink(&client, "/p/hard").await, 2);
    assert_eq!(server.server().orphans().unwrap(), Vec::<u64>::new());
    // The restarted server keeps working on the old tree, and new inodes get new numbers.
    let highest = details_after.iter().map(|(_, attr, _, _)| attr.ino).max().unwrap();
    let fresh = client.mkdir("/p/fresh", 0o755).await.unwrap();
    assert!(fresh.ino > highest, "inode numbers are not reused after a restart");
    client.write("/p/dir/deep/n0", b"rewritten").await.unwrap();
    assert_eq!(client.read("/p/dir/deep/n0").await.unwrap(), b"rewritten");
}

// Proves a file that was open and unlinked when the server stopped is reclaimed once the grace
// period after the next start ends unclaimed: no orphan, no inode, no data object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_is_reclaimed_after_restart() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.write("/keep", b"kept").await.unwrap();
    let files = client.statfs().await.unwrap().files;
    client.write("/o", &pattern(10_000, 4)).await.unwrap();
    let file = client.open("/o", &read_write()).await.unwrap();
    let o = file.ino();
    client.remove_file("/o").await.unwrap();
    assert_eq!(server.server().orphans().unwrap(), vec![o]);
    assert_eq!(file.read_at(0, 10).await.unwrap(), &pattern(10_000, 4)[..10]);
    // The handle is still open when the server goes down.
    std::mem::forget(file);
    let grace = Duration::from_secs(3);
    server.restart_with(|config| config.recovery_grace = grace).await;
    // Looked at right away, in the server itself: the grace period cannot be over yet.
    assert_eq!(server.server().orphans().unwrap(), vec![o], "kept through the grace period");
    client.close();

    let client = server.client().await;
    within(grace + GRACE_SLACK, "the unclaimed orphan is reclaimed", || server.server().orphans().unwrap().is_empty())
        .await;
    assert_errno(client.getattr(o).await, Errno::ESTALE);
    assert_errno(client.open_ino(o, OpenFlags::READ).await.map(|file| file.ino()), Errno::ESTALE);
    assert_eq!(client.statfs().await.unwrap().files, files);
    let object = object_path(&server, o);
    eventually("the orphan's data object is removed", || !object.exists()).await;
    assert_eq!(client.read("/keep").await.unwrap(), b"kept");
    assert_eq!(names(&client.read_dir("/").await.unwrap()), vec![b"keep".to_vec()]);
}

// Proves an orphan of the previous run survives the restart: during the grace period a new
// session can claim it by id (open, pin), read it, and it lives until the last claim goes; the
// grace period ending does not destroy a claimed orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_claimed_after_restart_lives_until_released() {
    let mut server = TestServer::start().await;
    let client = server.client().await;
    client.write("/o", b"orphaned data").await.unwrap();
    let file = client.open("/o", &read_write()).await.unwrap();
    let o = file.ino();
    client.remove_file("/o").await.unwrap();
    std::mem::forget(file);
    // Long enough for the claim below to come first on a loaded machine (checked: the orphan
    // still shows as kept for recovery once claimed); its end is then awaited, not slept out.
    let grace = Duration::from_secs(3);
    server.restart_with(|config| config.recovery_grace = grace).await;
    client.close();

    let client = server.client().await;
    let claimed = client.open_ino(o, OpenFlags::READ).await.expect("the orphan survived the restart");
    client.pin(o).await.unwrap();
    assert!(client.orphans().await.unwrap()[0].kept_for_recovery, "claimed before the grace period ended");
    assert_eq!(claimed.read_at(0, 100).await.unwrap().as_ref(), b"orphaned data");
    let mut over = false;
    let deadline = tokio::time::Instant::now() + grace + GRACE_SLACK;
    while !over && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        over = !client.orphans().await.unwrap()[0].kept_for_recovery;
    }
    assert!(over, "the grace period ended");
    assert_eq!(server.server().orphans().unwrap(), vec![o], "claimed: the grace period's end keeps it");
    claimed.close().await.unwrap();
    assert_eq!(server.server().orphans().unwrap(), vec![o], "still pinned");
    client.unpin(o, 1).await.unwrap();
    assert!(server.server().orphans().unwrap().is_empty(), "the last claim destroyed it");
    assert_errno(client.getattr(o).await, Errno::ESTALE);
}
