//! A server that is down (issue 24, point 8): a call waits for it as long as the client's
//! `reconnect_wait` allows, for ever if told so (a hard mount), or fails once it has waited that
//! long (a soft mount); the session comes back when the server does; and the log says once that
//! the server is unreachable and once that it is back, not once per attempt. The server runs on
//! loopback behind `common::Proxy`, which is pointed at the restarted server (a new port).

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Proxy, TestServer, assert_errno};
use rustre_client::{Client, ClientConfig, RECONNECT_WAIT_FOREVER};
use rustre_proto::Errno;

/// Generous: what the test waits for happens in a second or two on an idle machine.
const EVENT_WAIT_MAX: Duration = Duration::from_secs(60);

/// The WARN and INFO lines of this test binary's log.
static LOG: Mutex<Vec<(tracing::Level, String)>> = Mutex::new(Vec::new());

/// Keeps the message of each event at INFO or above in `LOG`.
struct Capture;

impl tracing::Subscriber for Capture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::INFO
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        LOG.lock().unwrap().push((*event.metadata().level(), message.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

fn capture_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| tracing::subscriber::set_global_default(Capture).expect("the first subscriber"));
}

/// The lines of the log from the `from`th on that contain `text` (tests run in parallel: each
/// looks for its own server's address, from when it had it).
fn log_lines(from: usize, text: &str) -> Vec<(tracing::Level, String)> {
    LOG.lock().unwrap()[from..].iter().filter(|(_, line)| line.contains(text)).cloned().collect()
}

/// Waits (bounded) until `condition` holds.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < EVENT_WAIT_MAX, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client through `proxy` that waits `reconnect_wait` for a server.
async fn client(proxy: &Proxy, reconnect_wait: Duration) -> Client {
    let config = ClientConfig { reconnect_wait, ..ClientConfig::default() };
    Client::connect_with(&proxy.address, config).await.expect("client connects")
}

/// Stops `server`, and waits until the client has found that no server answers (the log said
/// so).
async fn stop(server: &mut TestServer, client: &Client) {
    server.stop().await;
    until("the outage is reported", || client.outage().is_some_and(|outage| outage.reports == 1)).await;
}

/// Starts `server` again (same data, a new port), points `proxy` at it, and waits until the
/// client has its session back.
async fn restart(server: &mut TestServer, proxy: &Proxy, client: &Client) {
    server.restart().await;
    proxy.retarget(&server.address);
    until("the client is connected again", || client.outage().is_none()).await;
}

// The soft case: with a bound, a call made while the server is down fails with ENOTCONN (the
// mount answers EIO) once it has waited that long, not before and not for ever; the outage
// counts it. When the server is back the session resumes, and calls work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_wait_fails_calls_while_the_server_is_down_and_they_work_after() {
    let mut server = TestServer::start().await;
    let proxy = Proxy::start(&server.address).await;
    let wait = Duration::from_secs(1);
    let client = client(&proxy, wait).await;
    client.write("/f", b"written before").await.unwrap();
    let session = client.session();

    stop(&mut server, &client).await;
    let started = Instant::now();
    // Nothing is cached any more (the cache empties with the connection): this asks the server.
    assert_errno(client.stat("/f").await, Errno::ENOTCONN);
    let waited = started.elapsed();
    assert!(waited >= wait, "gave up after {waited:?}, before its {wait:?}");
    assert!(waited < wait + EVENT_WAIT_MAX, "gave up after {waited:?}");
    let outage = client.outage().expect("still down");
    assert_eq!((outage.requests_waiting, outage.requests_gave_up), (0, 1));

    restart(&mut server, &proxy, &client).await;
    assert_eq!(client.read("/f").await.unwrap(), b"written before");
    assert_eq!(client.session(), session, "the session resumed");
    client.end().await;
}

// The hard case: without a bound, a call made while the server is down waits for it, and is
// answered once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_bound_a_call_waits_for_the_server_to_come_back() {
    let mut server = TestServer::start().await;
    let proxy = Proxy::start(&server.address).await;
    let client = client(&proxy, RECONNECT_WAIT_FOREVER).await;
    client.write("/f", b"written before").await.unwrap();

    stop(&mut server, &client).await;
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.read("/f").await }
    });
    until("the read waits", || client.outage().is_some_and(|outage| outage.requests_waiting == 1)).await;
    assert!(!waiting.is_finished());

    restart(&mut server, &proxy, &client).await;
    assert_eq!(waiting.await.unwrap().expect("answered once the server is back"), b"written before");
    assert_eq!(client.outage(), None);
    client.end().await;
}

// A close whose wait for the server runs out is not failed (failing it would give nothing back,
// and the handle would stay open on the server for the session's life): it is answered, and
// sent once the server is back, which then holds no handle of the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_that_waited_out_its_bound_is_made_when_the_server_is_back() {
    let grace = Duration::from_secs(60);
    let mut server = TestServer::start_with(|config| config.recovery_grace = grace).await;
    let proxy = Proxy::start(&server.address).await;
    let client = client(&proxy, Duration::from_secs(1)).await;
    let file = client.open("/f", rustre_client::OpenOptions::new().write(true).create(true)).await.unwrap();
    client.remove_file("/f").await.unwrap();

    stop(&mut server, &client).await;
    file.close().await.expect("a close is answered, server or not");
    assert_eq!(client.outage().expect("still down").requests_waiting, 1, "the close waits on");

    server.restart_with(|config| config.recovery_grace = grace).await;
    proxy.retarget(&server.address);
    // The restarted server keeps the orphan for the session's handle until the close arrives.
    until("the close reached the server", || {
        client.outage().is_none() && server.server().orphans().is_ok_and(|orphans| orphans.is_empty())
    })
    .await;
    client.end().await;
}

// The log: one WARN when the server is found unreachable, whatever the number of attempts
// (several, a second apart at the slowest), with the number of requests waiting, and one INFO
// when it is back, after how long, with the session resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_says_once_that_the_server_is_unreachable_and_once_that_it_is_back() {
    capture_log();
    let mut server = TestServer::start().await;
    let proxy = Proxy::start(&server.address).await;
    let client = client(&proxy, RECONNECT_WAIT_FOREVER).await;
    client.write("/f", b"data").await.unwrap();
    let peer = format!("server {}", proxy.address);
    let from = LOG.lock().unwrap().len();

    stop(&mut server, &client).await;
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.stat("/f").await }
    });
    // Several attempts fail meanwhile (the backoff reaches one second); none says more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    restart(&mut server, &proxy, &client).await;
    waiting.await.unwrap().expect("answered once the server is back");

    let lines = log_lines(from, &peer);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let (level, line) = &lines[0];
    assert_eq!(*level, tracing::Level::WARN, "{line}");
    assert!(line.starts_with(&format!("{peer} unreachable: ")), "{line}");
    assert!(line.contains("requests waiting") || line.contains("request waiting"), "{line}");
    let (level, line) = &lines[1];
    assert_eq!(*level, tracing::Level::INFO, "{line}");
    assert!(line.starts_with(&format!("{peer} reachable again after ")), "{line}");
    assert!(line.ends_with("session resumed; the restarted server took back its handles and pins"), "{line}");
    client.end().await;
}
