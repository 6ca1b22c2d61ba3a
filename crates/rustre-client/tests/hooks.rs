//! The revocation hook through a real server: what the client tells the server (a revocation
//! acknowledged, leases given back) waits until the copies the hook mirrors are gone.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rustre_client::{Cause, Client, ClientConfig, Forgotten};

/// The cache holds at most 8 leases and gives the rest back, while its hook reports every copy
/// kept (as a mount whose kernel refuses to drop one): the server hears of the give-back only
/// once the trust window has passed since the hook ran, when any such copy has expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_whose_copies_were_kept_go_back_after_the_trust_window() {
    let lease_timeout = Duration::from_secs(8);
    let server = TestServer::start_with(|config| config.lease_timeout = lease_timeout).await;
    let maker = server.client().await;
    for index in 0..32 {
        maker.write(format!("/f{index}"), b"x").await.unwrap();
    }
    let config = ClientConfig { cache_entries_max: 8, ..Default::default() };
    let client = Client::connect_with(&server.address, config).await.unwrap();
    let first_kept: Arc<Mutex<Option<Instant>>> = Arc::default();
    let seen = first_kept.clone();
    client.set_revocation_hook(Some(Arc::new(move |_: &[_], cause: Cause| {
        if cause == Cause::Released {
            seen.lock().unwrap().get_or_insert_with(Instant::now);
        }
        Forgotten::Kept
    })));
    for index in 0..32 {
        client.stat(format!("/f{index}")).await.unwrap();
    }
    // Bounded by far more than the trust window; how long it takes is not what is tested.
    let deadline = Instant::now() + lease_timeout * 4;
    while client.stats().leases_released == 0 {
        assert!(Instant::now() < deadline, "no lease given back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let released = Instant::now();
    let kept = first_kept.lock().unwrap().expect("the hook saw the leases first");
    assert!(
        released - kept >= lease_timeout / 2,
        "given back {:?} after the hook kept a copy, within the trust window",
        released - kept
    );
    assert!(client.stats().hook_copies_kept > 0);
}

/// A hook that cannot finish at once (`Forgotten::Again`, as a mount waiting for the kernel to
/// make an inode) is called again later, and the revocation is acknowledged only after that: the
/// other client's chmod returns only once the second round has run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_acknowledged_after_the_hooks_later_rounds() {
    let server = TestServer::start().await;
    let holder = server.client().await;
    let changer = server.client().await;
    changer.write("/g", b"x").await.unwrap();
    holder.stat("/g").await.unwrap();
    let finished = Arc::new(AtomicBool::new(false));
    let flag = finished.clone();
    holder.set_revocation_hook(Some(Arc::new(move |_: &[_], cause: Cause| {
        assert_eq!(cause, Cause::Other);
        let flag = flag.clone();
        Forgotten::Again {
            after: Duration::from_millis(50),
            again: Box::new(move || {
                flag.store(true, Ordering::SeqCst);
                Forgotten::All
            }),
        }
    })));
    changer.set_permissions("/g", 0o600).await.unwrap();
    assert!(finished.load(Ordering::SeqCst), "the chmod returned before the hook's second round");
    assert_eq!(holder.stats().hook_copies_kept, 0);
}
