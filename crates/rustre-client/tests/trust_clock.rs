//! Trust in leases, measured from what the client sent and on a clock that counts suspended
//! time (`clock.rs`, `cache.rs`): a client trusts its cache only while the server could not yet
//! have evicted it.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustre_client::{Client, ClientConfig, ManualSuspendClock};

/// A client that sends nothing keeps its trust by itself (an empty `ReleaseLeases` each quarter
/// of the window), without the server's pings: a stat three seconds after the last one, with a
/// trust window of two, is still answered from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_renews_its_own_trust() {
    let server = TestServer::start_with(|config| {
        config.lease_timeout = Duration::from_secs(4);
        config.ping_interval = Duration::from_secs(3600); // no heartbeat: renewals only
    })
    .await;
    let client = server.client().await;
    client.write("/f", b"x").await.unwrap();
    client.stat("/f").await.unwrap();
    let asked = client.stats().requests_sent;
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.stat("/f").await.unwrap();
    assert_eq!(client.stats().requests_sent, asked, "the stat asked the server: trust was not renewed");
}

/// A suspension of the machine counts: after the machine "slept" past the trust window (the
/// test declares it on the client's suspend clock; tokio's clock, like CLOCK_MONOTONIC, did not
/// move), the cache no longer answers, and the stat asks the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_past_the_trust_window_ends_trust() {
    let lease_timeout = Duration::from_secs(20);
    let server = TestServer::start_with(|config| config.lease_timeout = lease_timeout).await;
    let suspend = Arc::new(ManualSuspendClock::default());
    let config = ClientConfig { suspend_clock: suspend.clone(), ..Default::default() };
    let client = Client::connect_with(&server.address, config).await.unwrap();
    client.write("/f", b"x").await.unwrap();
    let ino = client.stat("/f").await.unwrap().ino;
    let asked = client.stats().requests_sent;
    client.stat("/f").await.unwrap();
    assert_eq!(client.stats().requests_sent, asked, "answered from the cache before the suspension");
    assert!(client.leases_left(1, b"f", ino).1 > Duration::ZERO);
    suspend.suspend(lease_timeout);
    assert_eq!(client.leases_left(1, b"f", ino), (Duration::ZERO, Duration::ZERO), "nothing trusted after it");
    client.stat("/f").await.unwrap();
    assert!(client.stats().requests_sent > asked, "the stat after the suspension was answered from the cache");
    // The answer renews trust, measured from its send, after the suspension.
    let asked = client.stats().requests_sent;
    client.stat("/f").await.unwrap();
    assert_eq!(client.stats().requests_sent, asked, "trusted again once the server answered");
}
