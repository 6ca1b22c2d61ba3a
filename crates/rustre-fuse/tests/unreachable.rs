//! A mount whose server is down (issue 24, point 8): soft (`rustre mount --soft-timeout`), a
//! request that waited its bound fails with EIO, as an NFS soft mount's; hard (the default of
//! `rustre mount`), it waits for the server. Either way the mount stays, and works again once the
//! server is back (restarted on the same address and data directory).

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{Fixture, errno_of};
use rustre_client::{Client, RECONNECT_WAIT_FOREVER};

/// Generous: what the tests wait for happens in a second or two on an idle machine.
const EVENT_WAIT_MAX: Duration = Duration::from_secs(60);

/// Waits (bounded) until `condition` holds.
#[track_caller]
fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < EVENT_WAIT_MAX, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops the server, and waits until the mount's client has found that none answers.
fn stop_server(fixture: &mut Fixture, client: &Client) {
    fixture.stop_server();
    until("the outage is reported", || client.outage().is_some_and(|outage| outage.reports > 0));
}

/// If the test fails while a process waits on a hard mount, fails what waits, so that the
/// fixture's unmount ends instead of hanging.
struct FailWaitsOnPanic(Client);

impl Drop for FailWaitsOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.close();
        }
    }
}

// Soft: while the server is down, a stat on the mount fails with EIO (not ENOTCONN, which users
// read as a dead mount) once it has waited its bound, and the mount stays: when the server is
// back, the same path works and the file reads as before.
#[test]
fn a_soft_mount_answers_eio_while_the_server_is_down_and_works_after() {
    let mut fixture = Fixture::new(0);
    let wait = Duration::from_secs(1);
    let root = fixture.mount_with(|config| config.reconnect_wait = wait);
    let client = fixture.mounts[0].client().clone();
    fs::write(root.join("f"), b"before").unwrap();

    stop_server(&mut fixture, &client);
    let started = Instant::now();
    // The kernel forgot what it cached when the connection was lost: this asks the mount.
    assert_eq!(errno_of(fs::metadata(root.join("f"))), libc::EIO);
    assert!(started.elapsed() >= wait, "failed after {:?}, before its bound", started.elapsed());
    assert!(client.outage().expect("still down").requests_gave_up >= 1);

    fixture.restart_server();
    until("the mount is connected again", || client.outage().is_none());
    assert_eq!(fs::metadata(root.join("f")).unwrap().len(), 6);
    assert_eq!(fs::read(root.join("f")).unwrap(), b"before");
}

// Hard: a read made while the server is down waits for it, and is answered once it is back.
#[test]
fn a_hard_mount_waits_for_the_server_and_answers_once_it_is_back() {
    let mut fixture = Fixture::new(0);
    let root = fixture.mount_with(|config| config.reconnect_wait = RECONNECT_WAIT_FOREVER);
    let client = fixture.mounts[0].client().clone();
    let _guard = FailWaitsOnPanic(client.clone());
    fs::write(root.join("f"), b"before").unwrap();

    stop_server(&mut fixture, &client);
    let reader = std::thread::spawn({
        let path = root.join("f");
        move || fs::read(path)
    });
    until("the read waits for the server", || client.outage().is_some_and(|outage| outage.requests_waiting > 0));
    assert!(!reader.is_finished());

    fixture.restart_server();
    assert_eq!(reader.join().unwrap().expect("answered once the server is back"), b"before");
    assert_eq!(client.outage(), None);
}
