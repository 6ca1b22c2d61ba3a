//! The coherent cache (issue 3): several real clients of one real server, the races of
//! semantics.md forced deterministically with pause points, counters proving what was cached,
//! and eviction of a client that stops answering.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustre_client::{Client, ClientConfig, OpenOptions};
use rustre_proto::pause::PausePoints;
use rustre_proto::{Errno, FileKind, RenameMode};

fn lookups(client: &Client) -> u64 {
    client.stats().requests_by_kind.iter().find(|(kind, _)| *kind == "lookup").map_or(0, |(_, count)| *count)
}

async fn client_with_pauses(server: &TestServer) -> (Client, Arc<PausePoints>) {
    let pauses = Arc::new(PausePoints::default());
    let config = ClientConfig { pause_points: pauses.clone(), ..ClientConfig::default() };
    (Client::connect_with(&server.address, config).await.unwrap(), pauses)
}

// 10,000 stats of a cached path send no request at all; after another client renames over,
// unlinks or creates that name, the very next stat on the first client sees the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_stats_cost_nothing_and_remote_changes_show_at_once() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    b.create_dir_all("/d").await.unwrap();
    b.write("/d/f", b"first").await.unwrap();
    let first = a.stat("/d/f").await.unwrap();

    let before = a.stats();
    for _ in 0..10_000 {
        assert_eq!(a.stat("/d/f").await.unwrap(), first);
    }
    let after = a.stats();
    assert_eq!(after.requests_sent, before.requests_sent, "cached stats sent requests");
    assert!(after.cache_hits >= before.cache_hits + 10_000);

    // Rename over: the first client sees the new inode at once.
    b.write("/d/g", b"second!").await.unwrap();
    b.rename("/d/g", "/d/f").await.unwrap();
    let renamed = a.stat("/d/f").await.unwrap();
    assert_ne!(renamed.ino, first.ino);
    assert_eq!(renamed.size, 7);
    assert!(a.stats().revocations_received > after.revocations_received, "the change revoked a's lease");

    // Unlink: ENOENT at once.
    b.remove_file("/d/f").await.unwrap();
    assert_errno(a.stat("/d/f").await, Errno::ENOENT);
    // ... and that absence is cached in turn.
    let quiet = a.stats().requests_sent;
    assert_errno(a.stat("/d/f").await, Errno::ENOENT);
    assert_eq!(a.stats().requests_sent, quiet, "a cached negative entry answers");

    // Create: found at once, despite the cached negative entry.
    b.write("/d/f", b"third").await.unwrap();
    assert_eq!(a.stat("/d/f").await.unwrap().size, 5);
    a.check_cache_invariants();
    b.check_cache_invariants();
}

// Race 7, stale negative: a cached "no f" is revoked by another client's create; stat and
// open(O_CREAT) then find that client's file, and O_EXCL gives EEXIST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_negative_entry_never_hides_a_file() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    assert_errno(a.stat("/f").await, Errno::ENOENT);
    let created = b.create("/f").await.unwrap();
    let ino = created.ino();
    created.close().await.unwrap();
    assert_eq!(a.stat("/f").await.unwrap().ino, ino);
    let opened = a.open("/f", OpenOptions::new().write(true).create(true)).await.unwrap();
    assert_eq!(opened.ino(), ino);
    assert!(!opened.created());
    opened.close().await.unwrap();
    assert_errno(a.open("/f", OpenOptions::new().write(true).create_new(true)).await.map(|_| ()), Errno::EEXIST);
    a.check_cache_invariants();
}

// Race 2, rename over: a client with `target` cached opens it after another client renamed a new
// file over it, and gets the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_a_cached_name_opens_the_new_file() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    b.write("/target", b"old").await.unwrap();
    assert_eq!(a.read("/target").await.unwrap(), b"old");
    let old = a.stat("/target").await.unwrap();
    b.write("/source", b"new").await.unwrap();
    b.rename("/source", "/target").await.unwrap();
    // First from the cache (a stat), then by the open path.
    assert_ne!(a.stat("/target").await.unwrap().ino, old.ino);
    assert_eq!(a.read("/target").await.unwrap(), b"new");
    assert_errno(a.stat("/source").await, Errno::ENOENT);
    a.check_cache_invariants();
}

// Race 6, directory moved remotely: a client with /a/x cached finds it at /b/y after another
// client moved it, never under two names, and cannot move it below itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_moved_remotely_has_one_cached_name() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    b.create_dir_all("/a/x/inner").await.unwrap();
    b.mkdir("/b", 0o755).await.unwrap();
    let x = a.stat("/a/x").await.unwrap();
    a.stat("/a/x/inner").await.unwrap();
    b.rename("/a/x", "/b/y").await.unwrap();
    assert_errno(a.stat("/a/x").await, Errno::ENOENT);
    assert_eq!(a.stat("/b/y").await.unwrap().ino, x.ino);
    assert_eq!(a.stat("/b/y/inner/..").await.unwrap().ino, x.ino);
    a.check_cache_invariants();
    assert_errno(a.rename("/b/y", "/b/y/inner/z").await, Errno::EINVAL);
    // Moved back by the first client itself: its own cache follows its own change.
    a.rename("/b/y", "/a/x").await.unwrap();
    assert_eq!(a.stat("/a/x").await.unwrap().ino, x.ino);
    assert_errno(a.stat("/b/y").await, Errno::ENOENT);
    assert_errno(b.stat("/b/y").await, Errno::ENOENT);
    a.check_cache_invariants();
    b.check_cache_invariants();
}

// Race 11 on the server: a lookup has read "f exists" when another client unlinks f. The lookup
// may still answer what it read (it began before the unlink returned) but grants no lease, so
// the next stat asks again and sees ENOENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_a_server_lookup_is_never_cached() {
    let pauses = Arc::new(PausePoints::default());
    let server = TestServer::start_with(|config| config.pause_points = pauses.clone()).await;
    let a = server.client().await;
    let b = server.client().await;
    b.write("/f", b"x").await.unwrap();
    let paused = pauses.arm("server.lookup.after_read");
    let lookup = tokio::spawn({
        let a = a.clone();
        async move { a.stat("/f").await }
    });
    reach(&paused).await;
    b.remove_file("/f").await.unwrap();
    paused.release();
    assert!(lookup.await.unwrap().is_ok(), "the lookup answers what it read before the unlink");
    assert_errno(a.stat("/f").await, Errno::ENOENT);

    // The same with a directory renamed away: its inode lives on, so only the name is stale.
    b.mkdir("/dir", 0o755).await.unwrap();
    let paused = pauses.arm("server.lookup.after_read");
    let lookup = tokio::spawn({
        let a = a.clone();
        async move { a.stat("/dir").await }
    });
    reach(&paused).await;
    b.rename("/dir", "/moved").await.unwrap();
    paused.release();
    assert!(lookup.await.unwrap().is_ok(), "the lookup answers what it read before the rename");
    assert_errno(a.stat("/dir").await, Errno::ENOENT);
    assert_eq!(a.stat("/moved").await.unwrap().kind, FileKind::Directory);
    a.check_cache_invariants();
}

// Race 11 on the client: the reply to a lookup has arrived, but before its task caches the
// answer, another client's unlink revokes the lease the reply granted. The revocation wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_between_reply_and_insert_wins() {
    let server = TestServer::start().await;
    let (a, pauses) = client_with_pauses(&server).await;
    let b = server.client().await;
    b.write("/f", b"x").await.unwrap();
    let paused = pauses.arm("client.lookup.before_insert");
    let lookup = tokio::spawn({
        let a = a.clone();
        async move { a.stat("/f").await }
    });
    reach(&paused).await;
    let revocations = a.stats().revocations_received;
    b.remove_file("/f").await.unwrap();
    assert!(a.stats().revocations_received > revocations, "the unlink waited for a's acknowledgement");
    paused.release();
    assert!(lookup.await.unwrap().is_ok());
    assert_errno(a.stat("/f").await, Errno::ENOENT);
    a.check_cache_invariants();
}

// Race 4: parallel lookups of one name on one client send one request; the others wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_lookups_of_one_name_send_one_request() {
    let pauses = Arc::new(PausePoints::default());
    let server = TestServer::start_with(|config| config.pause_points = pauses.clone()).await;
    let a = server.client().await;
    a.write("/f", b"x").await.unwrap();
    a.close();
    let a = server.client().await;
    let before = lookups(&a);
    let paused = pauses.arm("server.lookup.after_read");
    let stats: Vec<_> = (0..10)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.lookup(rustre_proto::ROOT_INO, b"f").await })
        })
        .collect();
    reach(&paused).await;
    eventually("the other nine wait for the first", || a.stats().lookups_shared == 9).await;
    paused.release();
    let mut inos = Vec::new();
    for stat in stats {
        inos.push(stat.await.unwrap().unwrap().ino);
    }
    inos.dedup();
    assert_eq!(inos.len(), 1);
    assert_eq!(lookups(&a) - before, 1, "one lookup request for ten callers");
    a.check_cache_invariants();
}

// Writes by one client revoke other clients' cached attributes, and listings are cached and
// revoked like names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_and_listings_follow_remote_changes() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    b.create_dir_all("/d").await.unwrap();
    b.write("/d/f", b"").await.unwrap();
    assert_eq!(a.stat("/d/f").await.unwrap().size, 0);
    let mut file = b.open("/d/f", OpenOptions::new().write(true)).await.unwrap();
    file.write_all(b"0123456789").await.unwrap();
    assert_eq!(a.stat("/d/f").await.unwrap().size, 10, "the write revoked a's cached size");
    file.close().await.unwrap();

    let listed = a.read_dir("/d").await.unwrap();
    let quiet = a.stats().requests_sent;
    assert_eq!(a.read_dir("/d").await.unwrap(), listed);
    assert_eq!(a.stats().requests_sent, quiet, "the listing came from the cache");
    b.write("/d/new", b"").await.unwrap();
    let names: Vec<_> = a.read_dir("/d").await.unwrap().into_iter().map(|entry| entry.name).collect();
    assert_eq!(names, vec![b"f".to_vec(), b"new".to_vec()]);
    b.mkdir("/d/sub", 0o755).await.unwrap();
    assert_eq!(a.stat("/d").await.unwrap().nlink, 3, "the directory's attributes follow too");
    a.check_cache_invariants();
}

// A client that stops answering revocations is evicted within the lease timeout; the other
// client's change then completes, and the evicted client answers nothing stale afterwards: it
// comes back with a new session (the server refuses to resume an evicted one) and an empty cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_client_is_evicted_and_the_change_completes() {
    let server = TestServer::start_with(|config| config.lease_timeout = Duration::from_millis(300)).await;
    let (a, pauses) = client_with_pauses(&server).await;
    let b = server.client().await;
    b.write("/f", b"x").await.unwrap();
    a.stat("/f").await.unwrap();
    let evicted = a.session();
    let _frozen = pauses.arm("client.revoke.before_ack");
    // Bounded so a regression fails instead of hanging; the bound is far above the timeout.
    let unlink = tokio::time::timeout(Duration::from_secs(20), b.remove_file("/f")).await;
    unlink.expect("the change completed after evicting the silent client").unwrap();
    assert_eq!(server.server().lease_stats().evictions, 1);
    match a.stat("/f").await {
        Err(error) => assert_eq!(error.errno, Errno::ENOENT, "{error}"),
        Ok(attr) => panic!("an evicted client answered from its cache: {attr:?}"),
    }
    assert_ne!(a.session(), evicted, "the evicted session was not taken up again");
    assert_errno(b.stat("/f").await, Errno::ENOENT);
}

// The cache is bounded, and what it evicts is given back: the server's table for the session
// shrinks to the client's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_bounded_and_gives_leases_back() {
    let server = TestServer::start().await;
    let config = ClientConfig { cache_entries_max: 50, ..ClientConfig::default() };
    let a = Client::connect_with(&server.address, config).await.unwrap();
    let b = server.client().await;
    b.mkdir("/d", 0o755).await.unwrap();
    for index in 0..200 {
        b.write(format!("/d/f{index}"), b"").await.unwrap();
    }
    for index in 0..200 {
        a.stat(format!("/d/f{index}")).await.unwrap();
    }
    assert!(a.stats().leases_held <= 50);
    a.check_cache_invariants();
    eventually("the server's table follows the client's bound", || server.server().leases_held(a.session()) <= 50)
        .await;
    assert!(a.stats().leases_released >= 150);
    // Still exact: a change to an evicted name and to a cached one both show.
    b.remove_file("/d/f0").await.unwrap();
    b.remove_file("/d/f199").await.unwrap();
    assert_errno(a.stat("/d/f0").await, Errno::ENOENT);
    assert_errno(a.stat("/d/f199").await, Errno::ENOENT);
}

// Sustained contention on one name from two clients: every stat answers a state that existed,
// and the last word is exact on both clients (no cached entry outlives a change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_on_one_name_leaves_both_caches_exact() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    let churn = tokio::spawn({
        let b = b.clone();
        async move {
            for round in 0..300u32 {
                match round % 3 {
                    0 => b.write("/hot", &round.to_le_bytes()).await.unwrap(),
                    1 => b.rename_with("/hot", "/cold", RenameMode::Replace).await.unwrap(),
                    _ => b.rename_with("/cold", "/hot", RenameMode::Replace).await.unwrap(),
                }
            }
        }
    });
    while !churn.is_finished() {
        match a.stat("/hot").await {
            Ok(attr) => assert_eq!(attr.kind, FileKind::Regular),
            Err(error) => assert_eq!(error.errno, Errno::ENOENT, "{error}"),
        }
    }
    churn.await.unwrap();
    for client in [&a, &b] {
        assert_eq!(client.stat("/hot").await.unwrap().size, 4);
        assert_errno(client.stat("/cold").await, Errno::ENOENT);
        client.check_cache_invariants();
    }
}

// Heartbeats keep a cache trusted; without news from the server for half the lease timeout the
// client stops answering from its cache (the server may have evicted it meanwhile) and asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_without_news_from_the_server_is_not_trusted() {
    let server = TestServer::start_with(|config| {
        config.lease_timeout = Duration::from_millis(1000);
        config.ping_interval = Duration::from_secs(3600); // no heartbeat in this test
    })
    .await;
    let a = server.client().await;
    a.write("/f", b"x").await.unwrap();
    a.stat("/f").await.unwrap();
    let quiet = a.stats().requests_sent;
    a.stat("/f").await.unwrap();
    assert_eq!(a.stats().requests_sent, quiet, "trusted right after contact");
    tokio::time::sleep(Duration::from_millis(800)).await;
    a.stat("/f").await.unwrap();
    assert!(a.stats().requests_sent > quiet, "after 800 ms of silence (trust: 500 ms) the client asked");
}

// Four clients churn a handful of names (create, rename over, unlink) while stat-ing and listing
// them: nothing hangs, every answer is an errno a local file system could give, and at the end
// every client's cached view equals the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_churning_few_names_stay_coherent() {
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 150;
    let server = TestServer::start().await;
    let setup = server.client().await;
    setup.mkdir("/d", 0o755).await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(server.client().await);
    }
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(index, client)| {
            let client = client.clone();
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let name = format!("/d/n{}", (round + index) % 3);
                    let result = match (round + index) % 5 {
                        0 => client.write(&name, b"data").await,
                        1 => client
                            .write(format!("/d/tmp{index}"), b"new")
                            .await
                            .and(client.rename(format!("/d/tmp{index}"), &name).await),
                        2 => client.remove_file(&name).await,
                        3 => client.stat(&name).await.map(|_| ()),
                        _ => client.read_dir("/d").await.map(|_| ()),
                    };
                    if let Err(error) = result {
                        assert_eq!(error.errno, Errno::ENOENT, "client {index} round {round}: {error}");
                    }
                }
            })
        })
        .collect();
    let all = futures::future::join_all(tasks);
    let done = tokio::time::timeout(Duration::from_secs(120), all).await.expect("no client hangs");
    for task in done {
        task.unwrap();
    }
    let truth = setup.read_dir_plus("/d").await.unwrap();
    for client in &clients {
        let listed = client.read_dir("/d").await.unwrap();
        let names: Vec<_> = listed.iter().map(|entry| (entry.name.clone(), entry.ino)).collect();
        let expected: Vec<_> = truth.iter().map(|entry| (entry.name.clone(), entry.ino)).collect();
        assert_eq!(names, expected, "a cached listing differs from the server's");
        for entry in &truth {
            let path = format!("/d/{}", String::from_utf8_lossy(&entry.name));
            assert_eq!(client.stat(&path).await.unwrap().ino, entry.ino);
        }
        client.check_cache_invariants();
    }
    assert_eq!(server.server().lease_stats().evictions, 0, "nobody was too slow to acknowledge");
}

// Cost: a client writing a file it opened for writing is never asked to revoke a lease of its own
// (write replies and write-opens lease no attributes), so each write is one round trip; its stat
// afterwards is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_costs_one_round_trip_per_write() {
    let server = TestServer::start().await;
    let a = server.client().await;
    let before = a.stats();
    let mut file = a.open("/f", OpenOptions::new().write(true).create(true)).await.unwrap();
    for _ in 0..10 {
        file.write_all(b"0123456789").await.unwrap();
    }
    file.close().await.unwrap();
    let after = a.stats();
    assert_eq!(after.revocations_received, before.revocations_received, "the writer revoked its own lease");
    assert_eq!(after.requests_sent - before.requests_sent, 12, "open, ten writes, close");
    assert_eq!(a.stat("/f").await.unwrap().size, 100);
}

// Found by the simulator (rustre sim, seed 1799): a refused change (mkdir answering EEXIST) told
// its caller that a name exists while another client's cache, whose revocation was still in
// flight, could answer that it does not: the refusal did not wait for earlier revocations on
// the name, as every other reply does. Here A caches /d as absent and holds back its
// acknowledgement of B's mkdir; C's mkdir of /d must not answer (EEXIST) before A has dropped
// its copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_change_waits_for_revocations_in_flight_on_its_name() {
    let server = TestServer::start().await;
    let (a, pauses) = client_with_pauses(&server).await;
    let b = server.client().await;
    let c = server.client().await;
    assert_errno(a.stat("/d").await, Errno::ENOENT); // cached: absent
    let paused = pauses.arm("client.revoke.before_ack");
    let made = tokio::spawn({
        let b = b.clone();
        async move { b.mkdir("/d", 0o755).await }
    });
    reach(&paused).await;
    let refused = tokio::spawn({
        let c = c.clone();
        async move { c.mkdir("/d", 0o755).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!refused.is_finished(), "the refusal waits while A may still answer from its cache");
    paused.release();
    made.await.unwrap().unwrap();
    assert_errno(refused.await.unwrap(), Errno::EEXIST);
    assert_eq!(a.stat("/d").await.unwrap().kind, rustre_proto::FileKind::Directory);
}

// `OpenFlags::LEASE_ATTR`: a writing open that asks for the attributes' lease gets it, so a stat
// right after costs nothing; the writer's own first write revokes it (the stat after shows the
// new size), and another client's write does too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writing_open_may_lease_the_attributes() {
    use rustre_proto::OpenFlags;
    let server = TestServer::start().await;
    let a = server.client().await;
    let b = server.client().await;
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::LEASE_ATTR;
    let mut file = a.open_at(rustre_proto::ROOT_INO, b"f", flags, 0o644).await.unwrap();
    let before = a.stats().requests_sent;
    assert_eq!(a.stat("/f").await.unwrap().size, 0);
    assert_eq!(a.stats().requests_sent, before, "leased: the stat asked nothing");
    file.write_at(0, b"four").await.unwrap();
    assert_eq!(a.stat("/f").await.unwrap().size, 4, "the own write revoked the lease");
    b.write("/f", b"another").await.unwrap();
    assert_eq!(a.stat("/f").await.unwrap().size, 7, "another client's write too");
    file.close().await.unwrap();

    // Without the flag, a writing open leases no attributes: the stat asks.
    let file = a.open_at(rustre_proto::ROOT_INO, b"g", OpenFlags::WRITE | OpenFlags::CREATE, 0o644).await.unwrap();
    let before = a.stats().requests_sent;
    a.stat("/g").await.unwrap();
    assert!(a.stats().requests_sent > before);
    file.close().await.unwrap();
    a.check_cache_invariants();
}
