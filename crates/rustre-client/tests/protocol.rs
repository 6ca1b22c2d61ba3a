//! The wire from the outside: hostile or broken peers, the handshake, and calls from the server
//! to its clients. Raw TCP sockets stand in for broken clients.
mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rustre_proto::frame::{Frame, FrameKind, read_frame, write_frame};
use rustre_proto::msg::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN};
use rustre_proto::{Caller, Errno, HELLO_MAGIC, Op, Reply, ReplyHeader, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn hello(version_min: u16, version_max: u16) -> Frame {
    let request = Request {
        caller: Caller::default(),
        op: Op::Hello { magic: HELLO_MAGIC, version_min, version_max, client_name: "raw test peer".into() },
    };
    Frame::new(FrameKind::Request, 0, &request, Bytes::new())
}

/// Connects a raw socket and completes the hello, so later bytes reach a live session.
async fn raw_session(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    write_frame(&mut stream, &hello(PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX)).await.unwrap();
    let reply: ReplyHeader = read_frame(&mut stream).await.unwrap().decode_header().unwrap();
    assert!(matches!(reply.result, Ok(Reply::Hello { .. })), "{reply:?}");
    stream
}

/// How long the tests below wait for what a server does on a timer of its configuration: the
/// timer, and generous slack for a loaded machine. A bound, never a measure of speed.
const SLACK: Duration = Duration::from_secs(20);

/// Waits (bounded by `limit`) until `condition` holds.
async fn within(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the server closes `stream` (reads see end of file or a reset). Bounded.
async fn assert_closed_by_server(stream: &mut TcpStream) {
    let mut buffer = [0u8; 1024];
    let outcome = tokio::time::timeout(SLACK, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(outcome.is_ok(), "the server kept a broken connection open");
}

// Garbage of every kind, before and after the hello, closes only the connection that sent it:
// a well-behaved client on the same server keeps working throughout and afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_closes_only_that_connection() {
    let server = TestServer::start().await;
    let good = server.client().await;
    good.write("/kept", b"still here").await.unwrap();

    let mut oversized = Vec::new();
    oversized.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut bad_kind = Vec::new();
    write_frame(&mut bad_kind, &hello(PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX)).await.unwrap();
    bad_kind[4] = 7;
    let mut header_too_long = Vec::new();
    write_frame(&mut header_too_long, &hello(PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX)).await.unwrap();
    header_too_long[13..17].copy_from_slice(&10_000u32.to_le_bytes());
    let mut seeded = 0x2545_f491_4f6c_dd1du64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            seeded ^= seeded << 13;
            seeded ^= seeded >> 7;
            seeded ^= seeded << 17;
            seeded as u8
        })
        .collect();
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("random bytes instead of a hello", random.clone(), false),
        ("an oversized frame length", oversized.clone(), false),
        ("an unknown frame kind", bad_kind.clone(), false),
        ("a header longer than its frame", header_too_long.clone(), false),
        ("random bytes after the hello", random, true),
        ("an oversized frame after the hello", oversized, true),
        ("an unknown frame kind after the hello", bad_kind, true),
    ];
    for (what, bytes, after_hello) in cases {
        let mut stream = if after_hello {
            raw_session(&server.address).await
        } else {
            TcpStream::connect(&server.address).await.unwrap()
        };
        // The server may close before it has read everything: a failed write is fine.
        let _ = stream.write_all(&bytes).await;
        assert_closed_by_server(&mut stream).await;
        assert_eq!(good.read("/kept").await.unwrap(), b"still here", "after {what}");
    }

    // Half a frame, then the peer closes: the session ends, the server goes on.
    let mut stream = raw_session(&server.address).await;
    let mut frame = Vec::new();
    write_frame(&mut frame, &Frame::new(FrameKind::Request, 1, &"x", Bytes::new())).await.unwrap();
    stream.write_all(&frame[..frame.len() / 2]).await.unwrap();
    drop(stream);

    good.write("/after", b"ok").await.unwrap();
    assert_eq!(good.read("/after").await.unwrap(), b"ok");
    eventually("broken sessions are gone", || server.server().session_count() == 1).await;
}

// A peer that sends half a frame and stalls holds nothing for long: before its hello is complete
// the hello timeout cuts it off, after it the pings it cannot answer do. A well-behaved client
// goes on meanwhile.
// The timeouts are what the test waits out, so they are short, but not so short that the
// well-behaved client, whose hello and ping answers they also time, could miss one on a loaded
// machine: that client would be cut off too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_stalled_in_the_middle_of_a_frame_are_cut_off() {
    let server = TestServer::start_with(|config| {
        config.hello_timeout = Duration::from_secs(2);
        config.ping_interval = Duration::from_millis(200);
        config.ping_timeout = Duration::from_secs(2);
    })
    .await;
    let good = server.client().await;
    let mut frame = Vec::new();
    write_frame(&mut frame, &hello(PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX)).await.unwrap();
    let mut stalled_hello = TcpStream::connect(&server.address).await.unwrap();
    stalled_hello.write_all(&frame[..frame.len() / 2]).await.unwrap();
    let mut stalled_request = raw_session(&server.address).await;
    stalled_request.write_all(&frame[..frame.len() / 2]).await.unwrap();
    // Both stay open on this side, silent.
    assert_closed_by_server(&mut stalled_hello).await;
    assert_closed_by_server(&mut stalled_request).await;
    good.write("/f", b"still served").await.unwrap();
    within(SLACK, "the stalled session is gone", || server.server().session_count() == 1).await;
    good.end().await;
}

// Connections beyond `connections_max` (those still in their hello count) are closed at once,
// before anything is read; once one goes, a new one is served. The server counts a connection
// when the task serving it starts, and tasks start in an order of their own: of three raw
// connections made after the client's, whichever is counted last is the one beyond the bound,
// so the test waits for any of them to be closed, and then for no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_bound_are_closed_at_once() {
    let hello_timeout = Duration::from_secs(60);
    let server = TestServer::start_with(|config| {
        config.connections_max = 3;
        config.hello_timeout = hello_timeout;
    })
    .await;
    let good = server.client().await;
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut raw = Vec::new();
    for index in 0..3 {
        let mut stream = TcpStream::connect(&server.address).await.unwrap();
        let closed_tx = closed_tx.clone();
        raw.push(tokio::spawn(async move {
            let mut byte = [0u8; 1];
            if matches!(stream.read(&mut byte).await, Ok(0) | Err(_)) {
                let _ = closed_tx.send(index);
            }
            // Held open until the test drops it (by aborting this task).
            std::future::pending::<()>().await
        }));
    }
    // Well before the hello timeout, which would close the others too: refused for the bound.
    let bound = SLACK.min(hello_timeout / 2);
    let first = tokio::time::timeout(bound, closed_rx.recv()).await;
    let beyond = first.expect("no connection beyond the bound was closed").unwrap();
    good.write("/f", b"still served").await.unwrap();
    assert!(closed_rx.try_recv().is_err(), "only the connection beyond the bound was closed");

    // One of those served goes: a place is free again.
    raw[(beyond + 1) % 3].abort();
    let again = tokio::time::timeout(SLACK, async {
        loop {
            if let Ok(client) = rustre_client::Client::connect(&server.address).await {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let again = again.await.expect("a place is free again once a connection went");
    assert_eq!(again.read("/f").await.unwrap(), b"still served");
    again.end().await;
    good.end().await;
    for task in raw {
        task.abort();
    }
}

// A well-framed request whose header does not decode gets an EPROTO reply; the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_header_gets_eproto_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let mut stream = raw_session(&server.address).await;
    let garbage =
        Frame { kind: FrameKind::Request, id: 9, header: Bytes::from_static(&[0xff; 12]), payload: Bytes::new() };
    write_frame(&mut stream, &garbage).await.unwrap();
    let reply = read_frame(&mut stream).await.unwrap();
    assert_eq!(reply.id, 9);
    let reply: ReplyHeader = reply.decode_header().unwrap();
    assert_eq!(reply.result.unwrap_err().errno, Errno::EPROTO);
    let lookup = Request { caller: Caller::default(), op: Op::GetAttr { ino: rustre_proto::ROOT_INO } };
    write_frame(&mut stream, &Frame::new(FrameKind::Request, 10, &lookup, Bytes::new())).await.unwrap();
    let reply = read_frame(&mut stream).await.unwrap();
    assert_eq!(reply.id, 10);
    assert!(matches!(reply.decode_header::<ReplyHeader>().unwrap().result, Ok(Reply::Attr { .. })));
}

// The hello is checked: a request before it, a wrong magic, or no common version is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_is_checked() {
    let server = TestServer::start().await;

    let mut stream = TcpStream::connect(&server.address).await.unwrap();
    let early = Request { caller: Caller::default(), op: Op::GetAttr { ino: 1 } };
    write_frame(&mut stream, &Frame::new(FrameKind::Request, 1, &early, Bytes::new())).await.unwrap();
    assert_closed_by_server(&mut stream).await;

    let mut stream = TcpStream::connect(&server.address).await.unwrap();
    let wrong_magic = Request {
        caller: Caller::default(),
        op: Op::Hello { magic: 0xdead_beef, version_min: 1, version_max: 1, client_name: String::new() },
    };
    write_frame(&mut stream, &Frame::new(FrameKind::Request, 1, &wrong_magic, Bytes::new())).await.unwrap();
    assert_closed_by_server(&mut stream).await;

    let mut stream = TcpStream::connect(&server.address).await.unwrap();
    write_frame(&mut stream, &hello(50, 60)).await.unwrap();
    let reply: ReplyHeader = read_frame(&mut stream).await.unwrap().decode_header().unwrap();
    let error = reply.result.unwrap_err();
    assert_eq!(error.errno, Errno::EPROTO);
    assert!(error.message.contains("no common protocol version"), "{}", error.message);
    assert_closed_by_server(&mut stream).await;
}

// A server with a cluster secret lets in only clients that prove it, and proves it in turn: the
// right secret works; none, another one, a forged proof or a request in place of the proof are
// refused (EACCES) before any session is made, and a client with a secret refuses a server that
// does not ask for it. Other clients go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_secret_is_proven_both_ways() {
    use rustre_client::{Client, ClientConfig, Secret};
    let secret = Secret::from_bytes(&[7; 32]).unwrap();
    let server = TestServer::start_with(|config| config.secret = Some(secret.clone())).await;
    let with = |secret: Option<Secret>| ClientConfig { secret, ..ClientConfig::default() };

    let good = Client::connect_with(&server.address, with(Some(secret.clone()))).await.expect("the right secret");
    good.write("/f", b"in").await.unwrap();
    let refused = |result: rustre_client::Result<Client>| match result {
        Ok(_) => panic!("let in"),
        Err(error) => error,
    };
    let error = refused(Client::connect_with(&server.address, with(None)).await);
    assert_eq!(error.errno, Errno::EACCES, "{error}");
    assert!(error.to_string().contains("asks for the cluster secret"), "{error}");
    let other = Secret::from_bytes(&[8; 32]).unwrap();
    let error = refused(Client::connect_with(&server.address, with(Some(other))).await);
    assert_eq!(error.errno, Errno::EACCES, "{error}");
    assert!(error.to_string().contains("authentication failed"), "{error}");

    // By hand: a forged proof, then a request where the proof should be.
    for second in [Op::Prove { nonce: [1; 32], proof: [2; 32] }, Op::GetAttr { ino: 1 }] {
        let mut stream = TcpStream::connect(&server.address).await.unwrap();
        write_frame(&mut stream, &hello(PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX)).await.unwrap();
        let challenge: ReplyHeader = read_frame(&mut stream).await.unwrap().decode_header().unwrap();
        assert!(matches!(challenge.result, Ok(Reply::Challenge { .. })), "{challenge:?}");
        let request = Request { caller: Caller::default(), op: second };
        write_frame(&mut stream, &Frame::new(FrameKind::Request, 1, &request, Bytes::new())).await.unwrap();
        let answer: ReplyHeader = read_frame(&mut stream).await.unwrap().decode_header().unwrap();
        assert_eq!(answer.result.unwrap_err().errno, Errno::EACCES);
        assert_closed_by_server(&mut stream).await;
    }

    let open = TestServer::start().await;
    let error = refused(Client::connect_with(&open.address, with(Some(secret.clone()))).await);
    assert_eq!(error.errno, Errno::EACCES, "{error}");
    assert!(error.to_string().contains("did not ask for the cluster secret"), "{error}");

    assert_eq!(good.read("/f").await.unwrap(), b"in", "the client let in works throughout");
    assert_eq!(server.server().session_count(), 1, "no session for a refused peer");
    good.end().await;
}

// The server sends requests to its clients on their own connections: the library answers pings,
// and a peer that never answers is disconnected.
// The ping timeout is what the test waits out for the silent peer; the well-behaved client must
// never miss it, so it is not cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_calls_its_clients_and_drops_silent_ones() {
    let (interval, timeout) = (Duration::from_millis(50), Duration::from_secs(2));
    let server = TestServer::start_with(|config| {
        config.ping_interval = interval;
        config.ping_timeout = timeout;
    })
    .await;
    let client = server.client().await;
    let session = client.session();
    within(interval * 3 + SLACK, "periodic pings reach the client", || client.stats().callbacks_received >= 3).await;
    assert_eq!(server.server().ping_all().await, 1);

    // A raw peer that completes the hello and then never reads or answers.
    let _silent = raw_session(&server.address).await;
    within(SLACK, "the silent peer has a session", || server.server().session_count() == 2).await;
    within(interval + timeout + SLACK, "the silent peer is dropped", || server.server().session_count() == 1).await;
    client.write("/alive", b"yes").await.unwrap();
    assert_eq!(client.session(), session, "the client that answers was never dropped");
}

// A second server on a data directory in use is refused with a message naming the holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_one_data_directory_is_refused() {
    let server = TestServer::start().await;
    let error = match rustre_server::Server::open(rustre_server::ServerConfig::new(server.data_dir())).await {
        Ok(_) => panic!("a second server opened a data directory in use"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("in use by another rustre server"), "{error}");
    assert!(error.contains(&format!("pid {}", std::process::id())), "{error}");
}

/// The server's wall clock, which the test can hold for the commit thread. The commit thread reads
/// it once per batch, after taking the batch from its queue and before running it: held there,
/// it stands for a commit that takes long (a slow fsync), while changes queue up behind it.
#[derive(Default)]
struct HeldClock {
    held: std::sync::Mutex<bool>,
    released: std::sync::Condvar,
    /// The commit thread waits in a reading.
    waiting: std::sync::atomic::AtomicBool,
}

impl HeldClock {
    fn hold(&self) {
        *self.held.lock().unwrap() = true;
    }

    fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.released.notify_all();
    }
}

impl rustre_proto::clock::Clock for HeldClock {
    fn now(&self) -> std::time::SystemTime {
        // Only the commit thread is held: the server's tasks run on the runtime's threads.
        if std::thread::current().name() == Some("rustre-commit") {
            let mut held = self.held.lock().unwrap();
            while *held {
                self.waiting.store(true, std::sync::atomic::Ordering::SeqCst);
                held = self.released.wait(held).unwrap();
            }
        }
        std::time::SystemTime::now()
    }
}

// Group commit: changes that arrive while a commit is in progress share the next transaction
// and its fsync. The test holds the commit thread in one batch (its clock, above), sends 256
// mkdirs at once from two clients (each client has at most `IN_FLIGHT_REQUESTS_MAX` requests
// out), waits until the server has queued every one of them, and lets the thread go: two
// durable commits in all, the held one and one for the 256. (Counts, not timings.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_share_commits() {
    let clock = Arc::new(HeldClock::default());
    let server = TestServer::start_with(|config| config.clock = clock.clone()).await;
    let clients = [server.client().await, server.client().await];
    let before = server.server().commit_stats();
    clock.hold();
    let first = tokio::spawn({
        let client = clients[0].clone();
        async move { client.mkdir("/first", 0o755).await.unwrap() }
    });
    within(SLACK, "the commit thread is held in a batch", || clock.waiting.load(std::sync::atomic::Ordering::SeqCst))
        .await;
    let creates: Vec<_> = (0..256)
        .map(|index| {
            let client = clients[index % 2].clone();
            tokio::spawn(async move { client.mkdir(format!("/d{index}"), 0o755).await.unwrap() })
        })
        .collect();
    within(SLACK, "the server queued every mkdir", || {
        server.server().commit_stats().submitted >= before.submitted + 257
    })
    .await;
    clock.release();
    first.await.unwrap();
    for create in creates {
        create.await.unwrap();
    }
    let after = server.server().commit_stats();
    assert_eq!(after.operations - before.operations, 257);
    assert_eq!(after.durable_commits - before.durable_commits, 2, "257 mkdirs, all but one queued behind a commit");
}
