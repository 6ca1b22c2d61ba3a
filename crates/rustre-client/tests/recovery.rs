//! Recovery (issue 8; semantics.md promise 6 and race 12): a session survives a broken
//! connection and a server restart, a change whose reply was lost is answered once when it is
//! sent again, and an evicted client is fenced when it comes back. The network faults come from
//! a proxy on loopback between the client and the real server (`common::Proxy`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Proxy, TestServer, eventually};
use rustre_client::{Client, LinkEvent, OpenOptions};
use rustre_proto::Errno;

/// Records the client's link events.
fn record_events(client: &Client) -> Arc<Mutex<Vec<LinkEvent>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    client.set_link_hook(Some(Arc::new(move |event: &LinkEvent| seen.lock().unwrap().push(event.clone()))));
    events
}

/// Waits (bounded) until the server's commit thread has run `count` more operations than
/// `before`: the changes are made, and wait for the requester's acknowledgements of their own
/// revocations, which the proxy drops. (No other client can look: its read would wait for those
/// revocations too.)
async fn until_committed(server: &TestServer, before: u64, count: u64) {
    eventually("the changes are committed", || server.server().commit_stats().operations >= before + count).await;
}

/// The names of a listing, sorted.
fn names(entries: &[rustre_client::Entry]) -> Vec<String> {
    let mut names: Vec<String> =
        entries.iter().map(|entry| String::from_utf8_lossy(&entry.name).into_owned()).collect();
    names.sort();
    names
}

/// Three changes in flight at once, whose replies the test makes sure are lost: an exclusive
/// create of `/x`, a rename of `/a` to `/b`, a mkdir of `/d`.
struct ThreeChanges {
    create: tokio::task::JoinHandle<rustre_client::Result<u64>>,
    rename: tokio::task::JoinHandle<rustre_client::Result<()>>,
    mkdir: tokio::task::JoinHandle<rustre_client::Result<u64>>,
}

impl ThreeChanges {
    /// Sends them, and waits until the server has committed all three.
    async fn send(client: &Client, server: &TestServer) -> ThreeChanges {
        let before = server.server().commit_stats().operations;
        let (c1, c2, c3) = (client.clone(), client.clone(), client.clone());
        let create = tokio::spawn(async move {
            c1.open("/x", OpenOptions::new().write(true).create_new(true)).await.map(|file| file.ino())
        });
        let rename = tokio::spawn(async move { c2.rename("/a", "/b").await });
        let mkdir = tokio::spawn(async move { c3.mkdir("/d", 0o755).await.map(|attr| attr.ino) });
        until_committed(server, before, 3).await;
        ThreeChanges { create, rename, mkdir }
    }

    /// Each is answered as done, not as a second run would answer (EEXIST, ENOENT); `observer`
    /// finds exactly what they made.
    async fn answered_once(self, observer: &Client) {
        let created = self.create.await.unwrap().expect("the exclusive create is answered as made, not EEXIST");
        self.rename.await.unwrap().expect("the rename is answered as done, not ENOENT");
        let made = self.mkdir.await.unwrap().expect("the mkdir is answered as made, not EEXIST");
        assert_eq!(created, observer.stat("/x").await.unwrap().ino);
        assert_eq!(made, observer.stat("/d").await.unwrap().ino);
    }
}

// A connection that breaks is replaced, and the session goes on as it was: same id, its open
// handles still valid (even on a file unlinked meanwhile, which the session keeps as an orphan).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_resumes_the_session_with_its_handles() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(&server.address).await;
    let client = Client::connect(&proxy.address).await.unwrap();
    let events = record_events(&client);
    let other = server.client().await;
    let session = client.session();
    let mut file = client.open("/f", OpenOptions::new().read(true).write(true).create(true)).await.unwrap();
    file.write_all(b"before").await.unwrap();
    other.remove_file("/f").await.unwrap();

    proxy.cut();
    file.write_all(b" after").await.expect("the write went through the resumed session");
    assert_eq!(file.read_at(0, 100).await.unwrap().as_ref(), b"before after");
    assert_eq!(client.session(), session, "the same session");
    assert_eq!(*events.lock().unwrap(), vec![LinkEvent::Lost, LinkEvent::Resumed { kept: true }]);
    assert_eq!(server.server().orphans().unwrap().len(), 1, "the handle kept the orphan through the break");
    file.close().await.unwrap();
    eventually("the last close destroyed the orphan", || server.server().orphans().unwrap().is_empty()).await;
    client.end().await;
}

// Changes whose replies never arrived (the connection broke after the server made them) are sent
// again, and the server answers what it did instead of doing it twice: an exclusive create does
// not fail with EEXIST, a rename does not fail with ENOENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_reply_was_lost_runs_once() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(&server.address).await;
    let client = Client::connect(&proxy.address).await.unwrap();
    let observer = server.client().await;
    client.write("/a", b"a").await.unwrap();

    proxy.lose_replies(true);
    let changes = ThreeChanges::send(&client, &server).await;
    proxy.cut();
    proxy.lose_replies(false);
    changes.answered_once(&observer).await;
    assert_eq!(names(&observer.read_dir("/").await.unwrap()), ["b", "d", "x"]);
    client.end().await;
}

// The same after a server restart: the server's memory of the answers is gone, so the first
// change each request made is recorded in the store with it, and a resend is answered from
// there. The session comes back with the same id, takes back its open handle (on an orphan),
// and recovery ends as soon as it has (long before the grace period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_whose_replies_were_lost_in_a_restart_are_answered_once() {
    let grace = Duration::from_secs(60);
    let mut server = TestServer::start_with(|config| config.recovery_grace = grace).await;
    let proxy = Proxy::start(&server.address).await;
    let client = Client::connect(&proxy.address).await.unwrap();
    let events = record_events(&client);
    let session = client.session();
    client.write("/a", b"a").await.unwrap();
    client.write("/held", b"held open").await.unwrap();
    let held = client.open("/held", OpenOptions::new().read(true)).await.unwrap();
    let observer = server.client().await;
    observer.remove_file("/held").await.unwrap();

    observer.end().await;
    proxy.lose_replies(true);
    let changes = ThreeChanges::send(&client, &server).await;
    server.restart_with(|config| config.recovery_grace = grace).await;
    proxy.retarget(&server.address);
    proxy.lose_replies(false);
    proxy.cut();

    let fresh = server.client().await;
    let finished = tokio::time::timeout(Duration::from_secs(20), changes.answered_once(&fresh));
    finished.await.expect("answered once the session came back");
    assert_eq!(client.session(), session, "the session was taken up again");
    assert!(events.lock().unwrap().contains(&LinkEvent::Resumed { kept: false }), "{:?}", events.lock().unwrap());
    assert_eq!(held.read_at(0, 100).await.unwrap().as_ref(), b"held open", "the handle was taken back");

    let write = tokio::time::timeout(Duration::from_secs(20), fresh.write("/after", b""));
    write.await.expect("recovery ended once the only session of the last run came back").unwrap();
    assert_eq!(names(&fresh.read_dir("/").await.unwrap()), ["after", "b", "d", "x"]);
    assert_eq!(server.server().orphans().unwrap().len(), 1, "the orphan lives while the handle does");
    held.close().await.unwrap();
    eventually("the last close destroyed the orphan", || server.server().orphans().unwrap().is_empty()).await;
    client.end().await;
}

// A change whose reply was lost, and whose result another client removed before the server
// crashed: the resend after the restart gets the answer of the first run (kept in its `ONCE`
// row), not ESTALE about the removed inode, which the client would take for a stale id and
// retry by name, making the directory and the symlink a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_a_restart_is_answered_even_if_what_it_made_is_gone() {
    let grace = Duration::from_secs(60);
    let mut server = TestServer::start_with(|config| config.recovery_grace = grace).await;
    let proxy = Proxy::start(&server.address).await;
    let client = Client::connect(&proxy.address).await.unwrap();
    let observer = server.client().await;

    proxy.lose_replies(true);
    let before = server.server().commit_stats().operations;
    let (c1, c2) = (client.clone(), client.clone());
    let mkdir = tokio::spawn(async move { c1.mkdir("/gone", 0o700).await });
    let symlink = tokio::spawn(async move { c2.symlink("target", "/link").await });
    until_committed(&server, before, 2).await;
    // The replies are lost; from now on the client hears the server again (and acknowledges
    // the revocations of the removals below).
    proxy.lose_replies(false);
    observer.remove_dir("/gone").await.unwrap();
    observer.remove_file("/link").await.unwrap();
    observer.end().await;

    server.restart_with(|config| config.recovery_grace = grace).await;
    proxy.retarget(&server.address);
    proxy.cut();
    let made = tokio::time::timeout(Duration::from_secs(20), mkdir).await.expect("answered").unwrap();
    let made = made.expect("the mkdir is answered as made");
    assert_eq!((made.kind, made.perm & 0o777), (rustre_proto::FileKind::Directory, 0o700));
    let linked = tokio::time::timeout(Duration::from_secs(20), symlink).await.expect("answered").unwrap();
    assert_eq!(linked.expect("the symlink is answered as made").kind, rustre_proto::FileKind::Symlink);
    let fresh = server.client().await;
    assert_eq!(names(&fresh.read_dir("/").await.unwrap()), Vec::<String>::new(), "nothing was made twice");
    client.end().await;
}

// Race 12: a client cut off from the server is evicted so others can go on; when it comes back,
// the server refuses its old session, so its write through an old handle fails (EIO) and the
// data written meanwhile is intact; new calls work on a new session with an empty cache.
// B's write returns only once A is evicted, so the test waits for the eviction, not for a
// time: the lease timeout is short for the test's sake, yet long enough that B, which answers,
// is never late by it on a loaded machine. The ping timeout is far longer, so that A is evicted
// by B's revocation (counted), not cut off by the pings first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_client_is_fenced_when_it_comes_back() {
    let lease_timeout = Duration::from_secs(3);
    let server = TestServer::start_with(|config| {
        config.lease_timeout = lease_timeout;
        config.ping_interval = Duration::from_millis(500);
        config.ping_timeout = lease_timeout * 4;
    })
    .await;
    let proxy = Proxy::start(&server.address).await;
    let a = Client::connect(&proxy.address).await.unwrap();
    let events = record_events(&a);
    let b = server.client().await;
    b.write("/f", b"original").await.unwrap();
    let mut old = a.open("/f", OpenOptions::new().write(true)).await.unwrap();
    assert_eq!(a.stat("/f").await.unwrap().size, 8);
    let evicted = a.session();

    proxy.partition(true);
    let cut_off = a.clone();
    let in_flight = tokio::spawn(async move { cut_off.mkdir("/during", 0o755).await });
    let answering = b.session();
    b.write("/f", b"written by b").await.expect("the change goes on without the cut-off client");
    assert!(server.server().lease_stats().evictions >= 1, "the write went on by evicting the cut-off client");
    assert_eq!(b.session(), answering, "the client that answers was not evicted");
    proxy.partition(false);
    proxy.cut();
    // A change in flight when its session was lost is not sent again under the new session (it
    // could run twice): its outcome is unknown, and the caller is told so.
    let error = in_flight.await.unwrap().expect_err("a change of the evicted session");
    assert_eq!(error.errno, Errno::EIO, "{error}");

    let error = old.write_all(b"stale").await.expect_err("a handle of the evicted session is fenced");
    assert_eq!(error.errno, Errno::EIO, "{error}");
    assert_eq!(b.read("/f").await.unwrap(), b"written by b", "what others wrote meanwhile is intact");
    assert_ne!(a.session(), evicted, "a new session");
    assert!(events.lock().unwrap().contains(&LinkEvent::NewSession), "{:?}", events.lock().unwrap());
    assert_eq!(a.read("/f").await.unwrap(), b"written by b", "new calls see the current state");
    old.close().await.expect("closing a fenced handle is fine");
    a.end().await;
}

/// A relay between one client and the server that the test can make break the protocol towards
/// the server while the client side stays open and silent: the server closes the connection (a
/// protocol violation, as it would after a write error too), the client sees nothing. Connections accepted after a sever
/// are relayed as usual (the client's reconnection).
struct Severable {
    address: String,
    /// Closes the server sides of the connections relayed so far.
    sever: Arc<tokio::sync::Notify>,
    /// Client sides kept open (and never read) after a sever.
    _kept: Arc<Mutex<Vec<tokio::net::TcpStream>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Severable {
    async fn start(target: &str) -> Severable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let sever = Arc::new(tokio::sync::Notify::new());
        let kept = Arc::new(Mutex::new(Vec::new()));
        let (target, severing, keeping) = (target.to_string(), sever.clone(), kept.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else { continue };
                let (severing, keeping) = (severing.clone(), keeping.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = severing.notified() => {
                            // A frame length no rustre peer sends: the server closes the
                            // connection for a protocol violation.
                            use tokio::io::AsyncWriteExt;
                            let _ = server.write_all(&[0xff; 4]).await;
                            keeping.lock().unwrap().push(client);
                            let mut rest = Vec::new();
                            let _ = tokio::io::AsyncReadExt::read_to_end(&mut server, &mut rest).await;
                        }
                    }
                });
            }
        });
        Severable { address, sever, _kept: kept, accept }
    }
}

impl Drop for Severable {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The server closes a client's connection and the client does not notice: the client trusts
/// its cache until its trust window (half the lease timeout since it sent its last answered
/// request) is over, so a conflicting change must not be acknowledged before then, although the
/// server can revoke nothing. Returns the mode A's stat shows right after B's chmod returned.
/// `no_lapse` plants the bug of dropping the leases at once (`ServerConfig::fault_no_lapse`).
async fn stat_after_a_change_while_the_connection_is_severed(no_lapse: bool) -> u32 {
    let server = TestServer::start_with(|config| config.fault_no_lapse = no_lapse).await;
    let relay = Severable::start(&server.address).await;
    let a = Client::connect(&relay.address).await.unwrap();
    let b = server.client().await;
    b.write("/f", b"x").await.unwrap();
    b.set_permissions("/f", 0o600).await.unwrap();
    assert_eq!(a.stat("/f").await.unwrap().perm, 0o600);
    assert_eq!(a.stat("/f").await.unwrap().perm, 0o600);
    assert!(a.stats().cache_hits >= 1, "A caches f's attributes under a lease");

    relay.sever.notify_waiters();
    eventually("the server sees A's connection close", || server.server().session_count() == 1).await;
    b.set_permissions("/f", 0o640).await.unwrap();
    // B's change returned: no stat that starts now may show what it replaced.
    a.stat("/f").await.unwrap().perm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_a_connection_the_server_closed_lapse_before_a_change_goes_through() {
    let perm = stat_after_a_change_while_the_connection_is_severed(false).await;
    assert_eq!(perm, 0o640, "A's stat after B's chmod returned is stale");
}

/// The control: leases dropped at once let B's chmod through while A still answers from its
/// cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_leases_dropped_at_once_leave_a_stale_stat() {
    let perm = stat_after_a_change_while_the_connection_is_severed(true).await;
    assert_eq!(perm, 0o600, "the planted bug went unseen: A's stat showed B's chmod");
}

/// A file that a client of the previous run holds open, removed by another client while the
/// restarted server waits for that client's session to come back. `skip_wait` plants the bug of
/// changes that do not wait for recovery (`ServerConfig::fault_changes_skip_recovery_wait`).
/// Returns whether the removal waited, and what a read through the held handle gives once the
/// holder's session is back.
async fn remove_what_a_returning_client_holds(skip_wait: bool) -> (bool, rustre_client::Result<Vec<u8>>) {
    let pauses = Arc::new(rustre_proto::pause::PausePoints::default());
    let configure = |config: &mut rustre_server::ServerConfig| {
        // Longer than the test: recovery ends only when the holder's session is back.
        config.recovery_grace = Duration::from_secs(600);
        config.pause_points = pauses.clone();
        config.fault_changes_skip_recovery_wait = skip_wait;
    };
    let mut server = TestServer::start_with(configure).await;
    let proxy = Proxy::start(&server.address).await;
    // Made by a session that ends before the restart: nothing of the last run but the holder's
    // open handle keeps the file (an open of the holder's own, or its `ONCE` rows, would).
    let maker = server.client().await;
    maker.write("/f", b"held open").await.unwrap();
    maker.end().await;
    let holder = Client::connect(&proxy.address).await.unwrap();
    let held = holder.open("/f", OpenOptions::new().read(true)).await.unwrap();

    server.restart_with(configure).await;
    // The proxy still points at the old address: the holder cannot come back until it is told.
    let remover = server.client().await;
    let waits = pauses.arm("server.recovery.change_waits");
    let mut removal = tokio::spawn(async move { remover.remove_file("/f").await });
    let waited = tokio::select! {
        _ = common::reach(&waits) => true,
        removed = &mut removal => {
            removed.unwrap().expect("the removal is answered at once");
            false
        }
    };
    waits.release();
    proxy.retarget(&server.address);
    proxy.cut();
    let read = held.read_at(0, 100).await.map(|data| data.to_vec());
    if waited {
        let removed = tokio::time::timeout(Duration::from_secs(60), removal).await;
        removed.expect("the removal goes on once the holder is back").unwrap().unwrap();
        let ino = held.ino();
        assert_eq!(server.server().orphans().unwrap(), [ino], "the handle taken back keeps the file as an orphan");
    }
    holder.end().await;
    (waited, read)
}

// After a restart, changes wait until every session of the previous run has taken back what it
// held (or the grace period is over): here a removal waits for the session holding the file
// open, whose handle is then taken back, so the file lives on as an orphan and reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_wait_for_the_sessions_of_the_last_run_to_come_back() {
    let (waited, read) = remove_what_a_returning_client_holds(false).await;
    assert_eq!(read.expect("the handle was taken back").as_slice(), b"held open");
    assert!(waited, "the removal waited for the holder's session");
}

// Control: with changes not waiting for recovery (a planted bug), the removal destroys the file
// before its holder comes back, and the holder's handle is lost: what the test above would see
// if the wait broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_without_the_recovery_wait_a_returning_client_loses_its_file() {
    let (waited, read) = remove_what_a_returning_client_holds(true).await;
    assert!(!waited, "nothing waited");
    let error = read.expect_err("the handle of a destroyed file cannot be taken back");
    assert_eq!(error.errno, Errno::EIO, "{error}");
}

/// The wall clock, moved on by what a test says (the server's timestamps and recovery deadlines
/// read it; its timers do not).
#[derive(Default)]
struct MovedClock(std::sync::atomic::AtomicU64);

impl MovedClock {
    fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_secs(), std::sync::atomic::Ordering::Relaxed);
    }
}

impl rustre_proto::clock::Clock for MovedClock {
    fn now(&self) -> std::time::SystemTime {
        std::time::SystemTime::now() + Duration::from_secs(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

// A server that restarts during recovery holds a session that never comes back (its client
// crashed) to the deadline the first recovery gave it, not to a fresh grace at every start: a
// crash loop shorter than the grace kept every change waiting for ever (simulator seeds 1094,
// 2361). A session that did come back gets a whole grace again. The clock is moved past the
// first deadline between the two restarts; the grace (600 s) is far longer than the test, so a
// change that completes shows the missing session was let go at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_returns_keeps_its_first_recovery_deadline() {
    let grace = Duration::from_secs(600);
    let clock = Arc::new(MovedClock::default());
    let configure = |config: &mut rustre_server::ServerConfig| {
        config.recovery_grace = grace;
        config.clock = clock.clone();
    };
    let mut server = TestServer::start_with(configure).await;
    let proxy = Proxy::start(&server.address).await;
    let lost = server.client().await;
    lost.write("/f", b"held open").await.unwrap();
    let returning = Client::connect(&proxy.address).await.unwrap();
    let held = returning.open("/f", OpenOptions::new().read(true)).await.unwrap();
    lost.crash();

    server.restart_with(configure).await;
    proxy.retarget(&server.address);
    proxy.cut();
    assert_eq!(held.read_at(0, 100).await.unwrap().as_ref(), b"held open", "taken back after the first restart");

    clock.advance(grace + Duration::from_secs(1));
    server.restart_with(configure).await;
    proxy.retarget(&server.address);
    proxy.cut();
    assert_eq!(held.read_at(0, 100).await.unwrap().as_ref(), b"held open", "a fresh grace after the second");
    let writer = server.client().await;
    let mkdir = tokio::time::timeout(Duration::from_secs(60), writer.mkdir("/d", 0o755));
    mkdir.await.expect("the crashed client's session was let go at its first deadline").unwrap();
    writer.end().await;
    returning.end().await;
}

/// Sends an open that creates `path` through `client`, whose reply the proxy loses, and waits
/// until the server has made the file.
async fn create_unanswered(
    client: &Client,
    server: &TestServer,
    proxy: &Proxy,
    path: &'static str,
) -> tokio::task::JoinHandle<rustre_client::Result<rustre_client::File>> {
    open_unanswered(client, server, proxy, path, OpenOptions::new().write(true).create_new(true).clone(), 1).await
}

/// Sends an open of `path` with `options` through `client`, whose reply the proxy loses, and
/// waits until the server has committed its `steps` changes.
async fn open_unanswered(
    client: &Client,
    server: &TestServer,
    proxy: &Proxy,
    path: &'static str,
    options: OpenOptions,
    steps: u64,
) -> tokio::task::JoinHandle<rustre_client::Result<rustre_client::File>> {
    proxy.lose_replies(true);
    let before = server.server().commit_stats().operations;
    let opener = client.clone();
    let open = tokio::spawn(async move { opener.open(path, &options).await });
    until_committed(server, before, steps).await;
    proxy.lose_replies(false);
    open
}

// An exclusive create whose reply was lost, and whose file another client unlinked before the
// server crashed: the file lives on as an orphan for the creator's resend, which gets a handle
// on it. Recovery ends when the creator has taken back what it held, before it resends; the
// orphan used to be destroyed then, the resend's reopen failed ESTALE, and the client ran the
// create again by name as a new request: the file existed a second time (simulator seeds
// 2087, 2476; 622 had the unlink come after the restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_create_finds_its_file_though_unlinked_before_the_restart() {
    let grace = Duration::from_secs(600);
    let mut server = TestServer::start_with(|config| config.recovery_grace = grace).await;
    let proxy = Proxy::start(&server.address).await;
    let client = Client::connect(&proxy.address).await.unwrap();
    let observer = server.client().await;
    let open = create_unanswered(&client, &server, &proxy, "/x").await;
    observer.remove_file("/x").await.unwrap();
    observer.end().await;

    server.restart_with(|config| config.recovery_grace = grace).await;
    proxy.retarget(&server.address);
    proxy.cut();
    let opened = tokio::time::timeout(Duration::from_secs(20), open).await.expect("answered").unwrap();
    let mut file = opened.expect("the create is answered as made");
    assert!(file.created(), "answered as the first run did");
    file.write_at(0, b"orphan").await.expect("the handle is on the orphan");
    let fresh = server.client().await;
    assert_eq!(names(&fresh.read_dir("/").await.unwrap()), Vec::<String>::new(), "nothing was made twice");
    assert_eq!(server.server().orphans().unwrap(), [file.ino()], "the file lives while the handle does");
    file.close().await.unwrap();
    client.end().await;
}

// The answer to a resent open carries the attributes the open left, not those of later changes:
// another client wrote to the file before the server crashed, and the creator learns it made an
// empty file (simulator seed 1388 saw the writer's size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_create_is_answered_with_the_attributes_it_made() {
    let grace = Duration::from_secs(600);
    let mut server = TestServer::start_with(|config| config.recovery_grace = grace).await;
    let proxy = Proxy::start(&server.address).await;
    let client = Client::connect(&proxy.address).await.unwrap();
    let observer = server.client().await;
    let open = create_unanswered(&client, &server, &proxy, "/y").await;
    observer.write("/y", b"sixteen bytes!!!").await.unwrap();
    observer.end().await;

    server.restart_with(|config| config.recovery_grace = grace).await;
    proxy.retarget(&server.address);
    proxy.cut();
    let opened = tokio::time::timeout(Duration::from_secs(20), open).await.expect("answered").unwrap();
    let file = opened.expect("the create is answered as made");
    assert_eq!(file.cached_attr().size, 0, "the file as the create made it");
    file.close().await.unwrap();
    client.end().await;
}

/// Runs an open of `/t` with O_TRUNC whose reply is lost (`existing`: of a file with data;
/// else it creates it), has another client write to it, restarts the server, and returns what
/// the file holds once the open's resend is answered.
async fn truncating_open_resent_after_a_write(existing: bool) -> Vec<u8> {
    let grace = Duration::from_secs(600);
    let mut server = TestServer::start_with(|config| config.recovery_grace = grace).await;
    let proxy = Proxy::start(&server.address).await;
    let client = Client::connect(&proxy.address).await.unwrap();
    let observer = server.client().await;
    if existing {
        observer.write("/t", b"old contents").await.unwrap();
    }
    // The open of an existing file commits twice: the open (with its `ONCE` row), then the
    // truncate.
    let options = OpenOptions::new().write(true).create(true).truncate(true).clone();
    let open = open_unanswered(&client, &server, &proxy, "/t", options, if existing { 2 } else { 1 }).await;
    observer.write("/t", b"written after the open").await.unwrap();
    observer.end().await;

    server.restart_with(|config| config.recovery_grace = grace).await;
    proxy.retarget(&server.address);
    proxy.cut();
    let opened = tokio::time::timeout(Duration::from_secs(20), open).await.expect("answered").unwrap();
    let file = opened.expect("the open is answered");
    assert_eq!(file.cached_attr().size, 0, "answered as the open and its truncate left the file");
    file.close().await.unwrap();
    let fresh = server.client().await;
    let contents = fresh.read("/t").await.unwrap();
    client.end().await;
    contents
}

// The resend of an open with O_TRUNC does not truncate again what others wrote since its first
// run: not after a create (simulator seed 4533 lost another client's fsynced data so), nor
// after a truncate that committed (its `ONCE` row says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_truncating_open_does_not_truncate_again() {
    assert_eq!(truncating_open_resent_after_a_write(false).await, b"written after the open", "after a create");
    assert_eq!(truncating_open_resent_after_a_write(true).await, b"written after the open", "after a truncate");
}
