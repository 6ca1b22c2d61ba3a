//! No ESTALE from a path (issue 4; semantics.md promise 1, races 1, 3, 9 and 10): the races of
//! the seed forced deterministically between two library clients, and a control run showing the
//! same races would surface ESTALE without the retry by name.
mod common;

use std::sync::Arc;

use common::*;
use rustre_client::{Client, ClientConfig, OpenOptions};
use rustre_proto::Errno;
use rustre_proto::pause::PausePoints;

async fn client_with(server: &TestServer, retry: bool) -> (Client, Arc<PausePoints>) {
    let pauses = Arc::new(PausePoints::default());
    let config = ClientConfig { pause_points: pauses.clone(), retry_stale_by_name: retry, ..ClientConfig::default() };
    (Client::connect_with(&server.address, config).await.unwrap(), pauses)
}

fn create_rw() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true);
    options
}

// Race 1, the seed: A has f cached, B unlinks f, A opens f with O_CREAT: a valid descriptor on a
// new file, never ESTALE or ENOENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_open_creat_after_a_remote_unlink_gets_a_new_file() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    b.write("/f", b"old").await.unwrap();
    let old = a.stat("/f").await.unwrap();
    b.remove_file("/f").await.unwrap();
    let mut file = a.open("/f", &create_rw()).await.unwrap();
    assert!(file.created(), "a new file");
    assert_ne!(file.ino(), old.ino);
    file.write_all(b"new").await.unwrap();
    file.close().await.unwrap();
    assert_eq!(b.read("/f").await.unwrap(), b"new");
}

// The stale-id case, forced: A's open(O_CREAT) of /d/f has resolved /d when B removes /d and
// makes a new /d. A's open by (old /d, f) meets a stale id; the library retries by name in one
// atomic server step and creates f in the new /d. Never ESTALE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_creat_under_a_replaced_directory_retries_by_name() {
    let server = TestServer::start().await;
    let (a, pauses) = client_with(&server, true).await;
    let b = server.client().await;
    b.create_dir_all("/d").await.unwrap();
    let paused = pauses.arm("client.walk.after_directory");
    let open = tokio::spawn({
        let a = a.clone();
        async move { a.open("/d/f", &create_rw()).await }
    });
    reach(&paused).await;
    b.remove_dir("/d").await.unwrap();
    let new_directory = b.mkdir("/d", 0o755).await.unwrap();
    paused.release();
    let file = open.await.unwrap().expect("O_CREAT open succeeds");
    assert!(file.created());
    file.close().await.unwrap();
    assert_eq!(a.stats().stale_retries, 1);
    let names: Vec<_> = b.read_dir("/d").await.unwrap().into_iter().map(|entry| entry.name).collect();
    assert_eq!(names, vec![b"f".to_vec()]);
    assert_eq!(b.stat("/d").await.unwrap().ino, new_directory.ino);
}

// The same for stat, unlink, mkdir and rename: each meets a stale directory id and answers as a
// local file system would at that instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_calls_under_a_replaced_directory_never_answer_estale() {
    let server = TestServer::start().await;
    let (a, pauses) = client_with(&server, true).await;
    let b = server.client().await;
    for round in 0..4 {
        b.create_dir_all("/d").await.unwrap();
        b.write("/d/f", b"x").await.unwrap();
        let paused = pauses.arm("client.walk.after_directory");
        let call = tokio::spawn({
            let a = a.clone();
            async move {
                match round {
                    0 => a.stat("/d/f").await.map(|attr| attr.size),
                    1 => a.remove_file("/d/f").await.map(|()| 0),
                    2 => a.mkdir("/d/sub", 0o755).await.map(|_| 0),
                    _ => a.rename("/d/f", "/d/g").await.map(|()| 0),
                }
            }
        });
        reach(&paused).await;
        // Replace /d by a new directory holding a new f of another size.
        b.remove_all("/d").await.unwrap();
        b.mkdir("/d", 0o755).await.unwrap();
        b.write("/d/f", b"new!").await.unwrap();
        paused.release();
        let answer = call.await.unwrap();
        assert_eq!(answer, Ok(if round == 0 { 4 } else { 0 }), "round {round}");
        let expected: &[&[u8]] = match round {
            0 => &[b"f"],
            1 => &[],
            2 => &[b"f", b"sub"],
            _ => &[b"g"],
        };
        let names: Vec<_> = b.read_dir("/d").await.unwrap().into_iter().map(|entry| entry.name).collect();
        assert_eq!(names, expected.iter().map(|name| name.to_vec()).collect::<Vec<_>>(), "round {round}");
        b.remove_all("/d").await.unwrap();
    }
    assert_eq!(a.stats().stale_retries, 4);
}

// Control: with the retry by name switched off, the forced race hands the application ESTALE.
// This is what the test above would see if the retry broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_without_the_retry_the_race_gives_estale() {
    let server = TestServer::start().await;
    let (a, pauses) = client_with(&server, false).await;
    let b = server.client().await;
    b.create_dir_all("/d").await.unwrap();
    let paused = pauses.arm("client.walk.after_directory");
    let open = tokio::spawn({
        let a = a.clone();
        async move { a.open("/d/f", &create_rw()).await.map(|_| ()) }
    });
    reach(&paused).await;
    b.remove_dir("/d").await.unwrap();
    b.mkdir("/d", 0o755).await.unwrap();
    paused.release();
    assert_errno(open.await.unwrap(), Errno::ESTALE);
}

// Race 3, sustained contention: B loops unlink, create and rename-over of f while A loops
// open(f, O_CREAT|O_RDWR): every open succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_contention_every_open_creat_succeeds() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    let churn = tokio::spawn({
        let b = b.clone();
        async move {
            for round in 0..300 {
                let result = match round % 3 {
                    0 => b.remove_file("/f").await,
                    1 => b.write("/f", b"b").await,
                    _ => match b.write("/tmp", b"r").await {
                        Ok(()) => b.rename("/tmp", "/f").await,
                        error => error,
                    },
                };
                if let Err(error) = result {
                    assert_eq!(error.errno, Errno::ENOENT, "{error}");
                }
            }
        }
    });
    let mut opens = 0;
    while !churn.is_finished() || opens < 100 {
        let mut file = a.open("/f", &create_rw()).await.expect("every O_CREAT open succeeds");
        file.write_all(b"a").await.unwrap();
        file.close().await.unwrap();
        opens += 1;
    }
    churn.await.unwrap();
    assert_eq!(a.stats().stale_retries, 0, "opens by name never meet a stale id");
}

// Race 9, overwrite against unlink: A truncates and writes f while B removes it: both succeed,
// and A's descriptor stays valid (the inode lives on as an orphan until A closes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_against_unlink_both_succeed() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    b.write("/f", b"old contents").await.unwrap();
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(true);
    let mut file = a.open("/f", &options).await.unwrap();
    b.remove_file("/f").await.unwrap();
    file.write_all(b"x").await.unwrap();
    assert_eq!(file.read_at(0, 100).await.unwrap().as_ref(), b"x");
    assert_eq!(server.server().orphans().unwrap(), vec![file.ino()]);
    file.close().await.unwrap();
    assert!(server.server().orphans().unwrap().is_empty());
    assert_errno(b.stat("/f").await, Errno::ENOENT);
}

// Race 10: an unlink and a create of one name in flight at once on one client take effect in
// program order: the create waits for the unlink, so it never fails and its data is never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_then_create_in_flight_keep_program_order() {
    let server = TestServer::start().await;
    let a = server.client().await;
    for round in 0..100u32 {
        a.write("/f", b"old").await.unwrap();
        let unlink = a.remove_file("/f");
        let create = async {
            let mut file = a.open("/f", OpenOptions::new().write(true).create(true)).await?;
            file.write_all(&round.to_le_bytes()).await?;
            file.close().await
        };
        let (unlinked, created) = tokio::join!(unlink, create);
        unlinked.unwrap();
        created.unwrap();
        assert_eq!(a.read("/f").await.unwrap(), round.to_le_bytes(), "round {round}: the new data is there");
    }
}

// Calls that act on an inode (chmod here) after resolving it: A has found /f when B replaces it
// by a new file. A's chmod by id meets a stale id, and is retried on whatever /f names now, found
// by name in the same server step. Without the retry (control), A would get ESTALE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chmod_of_a_replaced_file_retries_on_the_new_one() {
    let server = TestServer::start().await;
    let b = server.client().await;
    for retry in [true, false] {
        let (a, pauses) = client_with(&server, retry).await;
        b.write("/f", b"old").await.unwrap();
        let paused = pauses.arm("client.setattr.after_resolve");
        let chmod = tokio::spawn({
            let a = a.clone();
            async move { a.set_permissions("/f", 0o600).await }
        });
        reach(&paused).await;
        b.remove_file("/f").await.unwrap();
        b.write("/f", b"new").await.unwrap();
        paused.release();
        if retry {
            assert_eq!(chmod.await.unwrap().unwrap().perm, 0o600);
            assert_eq!(b.stat("/f").await.unwrap().perm, 0o600, "the new /f got the mode");
        } else {
            assert_errno(chmod.await.unwrap(), Errno::ESTALE);
        }
    }
}

// hard_link: A has found /f when B replaces it by a new file. A's link of the old inode meets a
// stale id and is retried by name in one step: /l is a new name of the new /f. The control
// (retry off) shows the ESTALE an application would otherwise get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_of_a_replaced_file_links_the_new_one() {
    let server = TestServer::start().await;
    let b = server.client().await;
    for retry in [true, false] {
        let (a, pauses) = client_with(&server, retry).await;
        b.write("/f", b"old").await.unwrap();
        let paused = pauses.arm("client.link.after_resolve");
        let link = tokio::spawn({
            let a = a.clone();
            async move { a.hard_link("/f", "/l").await }
        });
        reach(&paused).await;
        b.remove_file("/f").await.unwrap();
        b.write("/f", b"new").await.unwrap();
        paused.release();
        if retry {
            let linked = link.await.unwrap().unwrap();
            assert_eq!(linked.ino, b.stat("/f").await.unwrap().ino);
            assert_eq!(b.read("/l").await.unwrap(), b"new");
            b.remove_file("/l").await.unwrap();
        } else {
            assert_errno(link.await.unwrap(), Errno::ESTALE);
        }
    }
}

// Pins (what a mount holds for the kernel's references): a pinned inode whose last name goes
// lives on as an orphan, can still be opened by id, and goes when the last pin does. Unpinning
// more than held is refused. A session that ends gives its pins back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_inode_outlives_its_name() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    b.write("/f", b"pinned").await.unwrap();
    let ino = a.stat("/f").await.unwrap().ino;
    a.pin(ino).await.unwrap();
    a.pin(ino).await.unwrap();
    b.remove_file("/f").await.unwrap();
    assert_eq!(server.server().orphans().unwrap(), vec![ino]);
    let file = a.open_ino(ino, rustre_proto::OpenFlags::READ).await.unwrap();
    assert_eq!(file.read_at(0, 100).await.unwrap().as_ref(), b"pinned");
    file.close().await.unwrap();
    assert_errno(a.unpin(ino, 3).await, Errno::EINVAL);
    a.unpin(ino, 1).await.unwrap();
    assert_eq!(server.server().orphans().unwrap(), vec![ino], "one pin left");
    a.unpin(ino, 1).await.unwrap();
    assert!(server.server().orphans().unwrap().is_empty(), "the last pin destroyed it");
    assert_errno(a.open_ino(ino, rustre_proto::OpenFlags::READ).await.map(|_| ()), Errno::ESTALE);
    assert_errno(a.pin(ino).await, Errno::ESTALE);

    // A session that ends gives its pins back.
    b.write("/g", b"x").await.unwrap();
    let ino = a.stat("/g").await.unwrap().ino;
    a.pin(ino).await.unwrap();
    b.remove_file("/g").await.unwrap();
    assert_eq!(server.server().orphans().unwrap(), vec![ino]);
    a.close();
    eventually("the closed session's pins are released", || server.server().orphans().unwrap().is_empty()).await;
}

// Listing a path: A has resolved /d when B replaces it by a new directory holding other names.
// A's listing by the old id meets a stale id; the library opens what /d names now, by name in one
// step, and lists it through that handle: the new directory's names, never ESTALE. The control
// (retry off) shows the ESTALE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_dir_of_a_replaced_directory_lists_the_new_one() {
    let server = TestServer::start().await;
    let b = server.client().await;
    for (retry, plus) in [(true, false), (true, true), (false, false)] {
        let (a, pauses) = client_with(&server, retry).await;
        b.create_dir_all("/d").await.unwrap();
        b.write("/d/old", b"x").await.unwrap();
        let paused = pauses.arm("client.readdir.after_resolve");
        let list = tokio::spawn({
            let a = a.clone();
            async move { if plus { a.read_dir_plus("/d").await } else { a.read_dir("/d").await } }
        });
        reach(&paused).await;
        b.remove_all("/d").await.unwrap();
        b.mkdir("/d", 0o755).await.unwrap();
        b.write("/d/new", b"yz").await.unwrap();
        paused.release();
        if retry {
            let entries = list.await.unwrap().expect("listing by name");
            let names: Vec<_> = entries.iter().map(|entry| entry.name.clone()).collect();
            assert_eq!(names, vec![b"new".to_vec()]);
            if plus {
                assert_eq!(entries[0].attr.as_ref().expect("readdirplus gives attributes").size, 2);
            }
            assert_eq!(a.stats().stale_retries, 1);
            assert!(server.server().orphans().unwrap().is_empty(), "the listing's handle was closed");
        } else {
            assert_errno(list.await.unwrap(), Errno::ESTALE);
        }
        b.remove_all("/d").await.unwrap();
    }
}

// Opening "dir/": A has resolved /d when B replaces it, first by a new directory (A opens the new
// one), then by a file (ENOTDIR, as a local "d/" naming a file). Never ESTALE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_of_dir_slash_after_a_replace_opens_what_the_path_names() {
    let server = TestServer::start().await;
    let b = server.client().await;
    let (a, pauses) = client_with(&server, true).await;
    for replace_by_file in [false, true] {
        b.create_dir_all("/d").await.unwrap();
        let paused = pauses.arm("client.open.after_resolve");
        let open = tokio::spawn({
            let a = a.clone();
            async move { a.open("/d/", OpenOptions::new().read(true)).await }
        });
        reach(&paused).await;
        b.remove_dir("/d").await.unwrap();
        let new = if replace_by_file {
            b.write("/d", b"file").await.unwrap();
            None
        } else {
            Some(b.mkdir("/d", 0o755).await.unwrap())
        };
        paused.release();
        match new {
            Some(new) => {
                let directory = open.await.unwrap().expect("opens the new directory");
                assert_eq!(directory.ino(), new.ino);
                directory.close().await.unwrap();
                b.remove_dir("/d").await.unwrap();
            }
            None => {
                assert_errno(open.await.unwrap().map(|_| ()), Errno::ENOTDIR);
                b.remove_file("/d").await.unwrap();
            }
        }
    }
    assert_eq!(a.stats().stale_retries, 2);
}

// The retry by name through a symlink to the root: A opens /d/l (l -> "/") after resolving /d,
// B replaces /d by a new one with the same symlink. The retry meets the symlink on the server,
// and its target names a directory, not a name in one: it is opened on its path in one step
// (before, this answered EISDIR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_retried_through_a_symlink_to_the_root_opens_the_root() {
    let server = TestServer::start().await;
    let b = server.client().await;
    let (a, pauses) = client_with(&server, true).await;
    for target in ["/", "/d/..", "."] {
        b.create_dir_all("/d").await.unwrap();
        b.symlink(target, "/d/l").await.unwrap();
        let paused = pauses.arm("client.walk.after_directory");
        let open = tokio::spawn({
            let a = a.clone();
            async move { a.open("/d/l", OpenOptions::new().read(true)).await }
        });
        reach(&paused).await;
        b.remove_all("/d").await.unwrap();
        b.mkdir("/d", 0o755).await.unwrap();
        b.symlink(target, "/d/l").await.unwrap();
        paused.release();
        let directory = open.await.unwrap().unwrap_or_else(|error| panic!("open through {target}: {error}"));
        let expected = if target == "." { b.stat("/d").await.unwrap().ino } else { rustre_proto::ROOT_INO };
        assert_eq!(directory.ino(), expected, "through {target}");
        directory.close().await.unwrap();
        b.remove_all("/d").await.unwrap();
    }
    assert_eq!(a.stats().stale_retries, 3, "each open went through the retry by name");
}

// Found by the simulator (rustre sim, seed 208 of the first runs): an O_CREAT open meets a
// symlink (the server answers ELOOP, the client follows), and another client unlinks the
// symlink before the client reads it. The open must then create the name, as a local O_CREAT
// open after the unlink would; it answered ENOENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_creat_of_a_symlink_unlinked_meanwhile_creates_the_name() {
    let server = TestServer::start().await;
    let b = server.client().await;
    let (a, pauses) = client_with(&server, true).await;
    b.symlink("/target", "/l").await.unwrap();
    let paused = pauses.arm("client.open.after_eloop");
    let open = tokio::spawn({
        let a = a.clone();
        async move { a.open("/l", &create_rw()).await }
    });
    reach(&paused).await;
    b.remove_file("/l").await.unwrap();
    paused.release();
    let file = open.await.unwrap().expect("the O_CREAT open creates /l");
    assert!(file.created());
    file.close().await.unwrap();
    let made = b.lstat("/l").await.unwrap();
    assert_eq!(made.kind, rustre_proto::FileKind::Regular, "a new file, not a symlink");
    assert_errno(b.stat("/target").await, Errno::ENOENT);
}

// Found by the simulator (rustre sim --clients 6 --steps 150 --no-faults, seed 15): a stale id
// met during the walk to the parent (not in the change itself) escaped as ESTALE. A's mkdir of
// /d/e/x has gone through /d when B replaces the whole tree; A's next lookup, in the old /d,
// meets a stale id, and the mkdir is made by name in the new tree. Same for unlink, rmdir and
// symlink, which share the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_directory_met_during_the_walk_retries_by_name() {
    let server = TestServer::start().await;
    let b = server.client().await;
    let (a, pauses) = client_with(&server, true).await;
    for round in 0..4 {
        b.create_dir_all("/d/e").await.unwrap();
        b.write("/d/e/x", b"old").await.unwrap();
        if round == 2 {
            b.remove_file("/d/e/x").await.unwrap();
            b.mkdir("/d/e/x", 0o755).await.unwrap();
        }
        a.stat("/d/e").await.unwrap(); // cached, so the walk uses the old ids
        let paused = pauses.arm("client.walk.after_directory");
        let call = tokio::spawn({
            let a = a.clone();
            async move {
                match round {
                    0 => a.mkdir("/d/e/y", 0o755).await.map(|_| ()),
                    1 => a.remove_file("/d/e/x").await,
                    2 => a.remove_dir("/d/e/x").await,
                    _ => a.symlink("/t", "/d/e/y").await.map(|_| ()),
                }
            }
        });
        reach(&paused).await;
        b.remove_all("/d").await.unwrap();
        b.create_dir_all("/d/e").await.unwrap();
        if round == 1 {
            b.write("/d/e/x", b"new").await.unwrap();
        }
        if round == 2 {
            b.mkdir("/d/e/x", 0o755).await.unwrap();
        }
        paused.release();
        call.await.unwrap().unwrap_or_else(|error| panic!("round {round}: {error}"));
        let names: Vec<_> = b.read_dir("/d/e").await.unwrap().into_iter().map(|entry| entry.name).collect();
        let expected: Vec<Vec<u8>> = if round == 0 || round == 3 { vec![b"y".to_vec()] } else { vec![] };
        assert_eq!(names, expected, "round {round}");
        b.remove_all("/d").await.unwrap();
    }
}

// `lookup_pinned` (Op::PinName, what a mount answers the kernel's lookups with): it asks the
// server even when the name is cached, answers what the name names now, and pins that inode in
// the same step, so it outlives a remote unlink until unpinned. A missing name is ENOENT and
// pins nothing; its absence is cached like a lookup's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_pinned_resolves_and_pins_in_one_step() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    b.write("/f", b"first").await.unwrap();
    let old = a.stat("/f").await.unwrap().ino; // cached on A
    b.remove_file("/f").await.unwrap();
    b.write("/f", b"second").await.unwrap();
    let before = a.stats().requests_sent;
    let pinned = a.lookup_pinned(rustre_proto::ROOT_INO, b"f").await.unwrap();
    assert_eq!(a.stats().requests_sent - before, 1, "one request, never the cache");
    assert_ne!(pinned.ino, old, "the file the name has now");
    b.remove_file("/f").await.unwrap();
    assert_eq!(server.server().orphans().unwrap(), vec![pinned.ino], "pinned: an orphan, not destroyed");
    let file = a.open_ino(pinned.ino, rustre_proto::OpenFlags::READ).await.unwrap();
    assert_eq!(file.read_at(0, 100).await.unwrap().as_ref(), b"second");
    file.close().await.unwrap();
    a.unpin(pinned.ino, 1).await.unwrap();
    assert!(server.server().orphans().unwrap().is_empty());

    assert_errno(a.lookup_pinned(rustre_proto::ROOT_INO, b"f").await, Errno::ENOENT);
    let before = a.stats().requests_sent;
    assert_errno(a.stat("/f").await, Errno::ENOENT);
    assert_eq!(a.stats().requests_sent, before, "the absence was cached");
    a.check_cache_invariants();
}

// `OpenFlags::PIN` (what a mount creates with): the open pins the inode in its own step, so the
// file outlives a remote unlink after its handle is closed, until unpinned. Other ops that take
// open flags refuse it, so a pin is never silently dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_with_pin_pins_what_it_opens() {
    use rustre_proto::OpenFlags;
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    let flags = OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::PIN;
    let mut file = a.open_at(rustre_proto::ROOT_INO, b"p", flags, 0o644).await.unwrap();
    let ino = file.cached_attr().ino;
    file.write_at(0, b"kept").await.unwrap();
    file.close().await.unwrap();
    b.remove_file("/p").await.unwrap();
    assert_eq!(server.server().orphans().unwrap(), vec![ino], "pinned: an orphan, not destroyed");
    let reopened = a.open_ino(ino, OpenFlags::READ).await.unwrap();
    assert_eq!(reopened.read_at(0, 100).await.unwrap().as_ref(), b"kept");
    reopened.close().await.unwrap();
    // The pin alone reads it (Op::ReadPinned), as a mount reads a file opened read-only; a
    // session without the pin may not.
    assert_eq!(a.read_pinned(ino, 1, 100).await.unwrap().as_ref(), b"ept");
    assert_errno(b.read_pinned(ino, 0, 100).await.map(|_| ()), Errno::EBADF);
    a.unpin(ino, 1).await.unwrap();
    assert!(server.server().orphans().unwrap().is_empty(), "the last pin given back destroys it");
    assert_errno(a.unpin(ino, 1).await, Errno::EINVAL);
    assert_errno(a.read_pinned(ino, 0, 100).await.map(|_| ()), Errno::EBADF);

    b.write("/q", b"x").await.unwrap();
    let q = b.stat("/q").await.unwrap().ino;
    let refused = a.open_ino(q, OpenFlags::READ | OpenFlags::PIN).await.map(|_| ());
    assert_errno(refused, Errno::EINVAL);
    assert_errno(a.unpin(q, 1).await, Errno::EINVAL);
    a.check_cache_invariants();
}
