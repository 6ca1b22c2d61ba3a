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

/// Race 2, rename over, up to A's first look after it: A has `/target` cached (read, then
/// stat), B renames a new file over it. Returns the server, A, the inode A had cached and the one
/// A's stat shows after B's rename returned. `no_revocation` plants the bug of a change that
/// revokes nothing (`ServerConfig::fault_no_revocation`).
async fn stat_after_a_remote_rename_over(no_revocation: bool) -> (TestServer, Client, u64, u64) {
    let server = TestServer::start_with(|config| config.fault_no_revocation = no_revocation).await;
    let a = server.client().await;
    let b = server.client().await;
    b.write("/target", b"old").await.unwrap();
    assert_eq!(a.read("/target").await.unwrap(), b"old");
    let old = a.stat("/target").await.unwrap().ino;
    b.write("/source", b"new").await.unwrap();
    b.rename("/source", "/target").await.unwrap();
    let seen = a.stat("/target").await.unwrap().ino;
    (server, a, old, seen)
}

// Race 2, rename over: a client with `target` cached opens it after another client renamed a new
// file over it, and gets the new file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_a_cached_name_opens_the_new_file() {
    let (_server, a, old, seen) = stat_after_a_remote_rename_over(false).await;
    // First from the cache (a stat), then by the open path.
    assert_ne!(seen, old, "A's stat after the rename returned shows the replaced file");
    assert_eq!(a.read("/target").await.unwrap(), b"new");
    assert_errno(a.stat("/source").await, Errno::ENOENT);
    a.check_cache_invariants();
}

// Control: with a change that revokes nothing (a planted bug), A's cache answers the replaced
// file after the rename returned: what the test above would see if revocation broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_without_revocation_a_cached_name_is_stale() {
    let (_server, _a, old, seen) = stat_after_a_remote_rename_over(true).await;
    assert_eq!(seen, old, "without a revocation, A's cache still names the replaced file");
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

/// What A's next stats show after race 11 on the server, forced twice: A's lookup has read its
/// answer when B changes it, and answers what it read. First B unlinks the file `/f`; then B
/// renames the directory `/dir` away (its inode lives on, so only the name is stale). Returns A
/// and its stats of `/f` and `/dir` after each change returned. `grant_unchecked` plants the bug
/// of grants without the version check (`ServerConfig::fault_grant_unchecked`).
async fn stats_after_changes_during_lookups(grant_unchecked: bool) -> (TestServer, Client, Vec<AttrOrErrno>) {
    let pauses = Arc::new(PausePoints::default());
    let server = TestServer::start_with(|config| {
        config.pause_points = pauses.clone();
        config.fault_grant_unchecked = grant_unchecked;
    })
    .await;
    let a = server.client().await;
    let b = server.client().await;
    b.write("/f", b"x").await.unwrap();
    b.mkdir("/dir", 0o755).await.unwrap();
    let mut seen = Vec::new();
    for (path, change) in [("/f", "unlink"), ("/dir", "rename")] {
        let paused = pauses.arm("server.lookup.after_read");
        let lookup = tokio::spawn({
            let a = a.clone();
            async move { a.stat(path).await }
        });
        reach(&paused).await;
        match change {
            "unlink" => b.remove_file(path).await.unwrap(),
            _ => b.rename(path, "/moved").await.unwrap(),
        }
        paused.release();
        assert!(lookup.await.unwrap().is_ok(), "the lookup answers what it read before the {change}");
        seen.push(a.stat(path).await.map_err(|error| error.errno));
    }
    (server, a, seen)
}

type AttrOrErrno = Result<rustre_proto::Attr, Errno>;

// Race 11 on the server: a lookup has read "f exists" when another client unlinks f. The lookup
// may still answer what it read (it began before the unlink returned) but grants no lease, so
// the next stat asks again and sees ENOENT. The same for a directory renamed away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_a_server_lookup_is_never_cached() {
    let (_server, a, seen) = stats_after_changes_during_lookups(false).await;
    assert_eq!(seen[0], Err(Errno::ENOENT), "the unlinked file");
    assert_eq!(seen[1], Err(Errno::ENOENT), "the directory renamed away, under its old name");
    assert_eq!(a.stat("/moved").await.unwrap().kind, FileKind::Directory);
    a.check_cache_invariants();
}

// Control: with grants made without the version check (a planted bug), the lookup that read
// across the rename leases the name and attributes it read, and A's next stat answers the
// directory under the name it no longer has, from the cache: what the test above would see if
// the check broke. (The unlinked file does not show: its attributes are gone, so the stat asks
// the server by id, meets ESTALE and retries by name.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_grants_without_the_version_check_cache_a_renamed_name() {
    let (_server, a, seen) = stats_after_changes_during_lookups(true).await;
    let stale = seen[1].as_ref().expect("the name granted across the rename answers from the cache");
    assert_eq!(stale.kind, FileKind::Directory, "the renamed directory under its old name");
    assert!(a.stats().cache_hits >= 1, "answered from the cache");
}

// Race 11 on the client: the reply to a lookup has arrived, but before its task caches the
// answer, another client's unlink revokes the lease the reply granted. The revocation wins.
// `cache_unheld` plants the bug of caching under the revoked lease
// (`ClientConfig::fault_cache_under_revoked_lease`). Returns A's stat of the removed file, and A.
async fn stat_after_a_revocation_between_reply_and_insert(
    cache_unheld: bool,
) -> (rustre_client::Result<rustre_proto::Attr>, Client) {
    let server = TestServer::start().await;
    let pauses = Arc::new(PausePoints::default());
    let config = ClientConfig {
        pause_points: pauses.clone(),
        fault_cache_under_revoked_lease: cache_unheld,
        ..ClientConfig::default()
    };
    let a = Client::connect_with(&server.address, config).await.unwrap();
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
    (a.stat("/f").await, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_between_reply_and_insert_wins() {
    let (stat, a) = stat_after_a_revocation_between_reply_and_insert(false).await;
    assert_errno(stat, Errno::ENOENT);
    a.check_cache_invariants();
}

// The control: a client that caches what the reply carried although its lease was revoked
// meanwhile keeps answering the removed file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_caching_under_a_revoked_lease_answers_a_removed_file() {
    let (stat, _) = stat_after_a_revocation_between_reply_and_insert(true).await;
    assert!(stat.is_ok(), "the planted bug went unseen: the removed file was not answered");
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
// The test waits for the eviction (the unlink returns after it), so the lease timeout is not cut
// short: B, which does answer, must never be late by it, even on a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_client_is_evicted_and_the_change_completes() {
    let lease_timeout = Duration::from_secs(3);
    let server = TestServer::start_with(|config| config.lease_timeout = lease_timeout).await;
    let (a, pauses) = client_with_pauses(&server).await;
    let b = server.client().await;
    b.write("/f", b"x").await.unwrap();
    a.stat("/f").await.unwrap();
    let (evicted, answering) = (a.session(), b.session());
    let _frozen = pauses.arm("client.revoke.before_ack");
    // Bounded so a regression fails instead of hanging; the bound is far above the timeout.
    let unlink = tokio::time::timeout(lease_timeout * 2 + Duration::from_secs(20), b.remove_file("/f")).await;
    unlink.expect("the change completed after evicting the silent client").unwrap();
    assert_eq!(server.server().lease_stats().evictions, 1, "the silent client, and only it");
    assert_eq!(b.session(), answering, "the client that answered kept its session");
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

// A cache is trusted only while the server could not have evicted its client yet: cut off from
// the server (a partition that drops every byte, the connection still open), a client stops
// answering from its cache once its trust window (half the lease timeout) has passed since it
// last heard back, and asks. The partition is the event the test controls; the window is then
// waited out with a margin, which can only make it longer. (The window itself is long enough
// that two calls in a row fall within it on a loaded machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_cut_off_from_the_server_is_not_trusted() {
    let lease_timeout = Duration::from_secs(4);
    let server = TestServer::start_with(|config| {
        config.lease_timeout = lease_timeout;
        config.ping_interval = Duration::from_secs(3600); // no heartbeat in this test
    })
    .await;
    let proxy = Proxy::start(&server.address).await;
    let a = Client::connect(&proxy.address).await.unwrap();
    a.write("/f", b"x").await.unwrap();
    a.stat("/f").await.unwrap();
    let misses = a.stats().cache_misses;
    a.stat("/f").await.unwrap();
    assert_eq!(a.stats().cache_misses, misses, "trusted right after contact");

    proxy.partition(true);
    tokio::time::sleep(lease_timeout / 2 + Duration::from_millis(500)).await;
    let stat = tokio::spawn({
        let a = a.clone();
        async move { a.stat("/f").await }
    });
    eventually("the client asked the server instead of trusting its cache", || a.stats().cache_misses > misses).await;
    // Its request went into the partition: no answer will come.
    stat.abort();
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
    let committed = server.server().commit_stats().operations;
    let refused = tokio::spawn({
        let c = c.clone();
        async move { c.mkdir("/d", 0o755).await }
    });
    // The store has refused C's mkdir (EEXIST): from here a refusal that did not wait would be
    // on its way back. The time given it to arrive starts only now, however slow the machine was
    // to get C's request there. (It can only make the test miss a regression, never fail.)
    eventually("the store ran C's mkdir", || server.server().commit_stats().operations > committed).await;
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

// Found by the simulator (seed 9155): the same for a request by path (`AtPath`, the retry by
// name), which a refusal answered at once: walking through a name another client had just made
// a file, it answered ENOTDIR while A's cache, whose revocation was in flight, still said the
// name did not exist. Here A caches /d as absent and holds back its acknowledgement of B's
// create of the file /d; C's mkdir of /d/e by path must not answer before A has dropped its copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_by_path_waits_for_revocations_in_flight_on_what_it_walked() {
    let server = TestServer::start().await;
    let (a, pauses) = client_with_pauses(&server).await;
    let b = server.client().await;
    let c = server.client().await;
    assert_errno(a.stat("/d").await, Errno::ENOENT); // cached: absent
    let paused = pauses.arm("client.revoke.before_ack");
    let made = tokio::spawn({
        let b = b.clone();
        async move { b.write("/d", b"a file").await }
    });
    reach(&paused).await;
    let committed = server.server().commit_stats().operations;
    let refused = tokio::spawn({
        let c = c.clone();
        async move {
            let mkdir = rustre_proto::Op::Mkdir { parent: 0, name: b"e".to_vec(), perm: 0o755 };
            let op = rustre_proto::Op::AtPath {
                dir: vec![b"d".to_vec()],
                new_dir: None,
                follow_last: true,
                op: Box::new(mkdir),
            };
            c.call(op, bytes::Bytes::new()).await
        }
    });
    // As above: the time given a refusal that did not wait starts once the store has run it.
    eventually("the store ran C's mkdir", || server.server().commit_stats().operations > committed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!refused.is_finished(), "the refusal waits while A may still answer from its cache");
    paused.release();
    made.await.unwrap().unwrap();
    assert_errno(refused.await.unwrap(), Errno::ENOTDIR);
    assert_eq!(a.stat("/d").await.unwrap().kind, FileKind::Regular);
}
