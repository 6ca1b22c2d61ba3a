//! Pause points: named places in client and server code where a test can stop a task and let
//! another actor run, so a race between two steps of an operation is forced deterministically
//! instead of hoped for. Unarmed, a pause point costs one atomic load.
//!
//! ```text
//! let paused = points.arm("server.lookup.after_read");   // the next task to get there stops
//! let lookup = tokio::spawn(async move { client_a.stat("/f").await });
//! paused.reached().await;                                // it is there now
//! client_b.remove_file("/f").await?;                     // the other actor runs in between
//! paused.release();                                      // and the first goes on
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore};

/// A set of pause points, shared by the code that has them and the test that arms them.
#[derive(Default)]
pub struct PausePoints {
    armed_count: AtomicUsize,
    armed: Mutex<HashMap<&'static str, Arc<Armed>>>,
}

struct Armed {
    reached: Semaphore,
    release: Notify,
    released: std::sync::atomic::AtomicBool,
}

/// An armed pause point, as the test sees it.
pub struct Paused {
    armed: Arc<Armed>,
}

impl PausePoints {
    /// Arms `point`: the next task to reach it stops there until `Paused::release`.
    pub fn arm(&self, point: &'static str) -> Paused {
        let armed = Arc::new(Armed {
            reached: Semaphore::new(0),
            release: Notify::new(),
            released: std::sync::atomic::AtomicBool::new(false),
        });
        let previous = self.armed.lock().expect("pause points lock").insert(point, armed.clone());
        assert!(previous.is_none(), "pause point {point} armed twice");
        self.armed_count.fetch_add(1, Ordering::SeqCst);
        Paused { armed }
    }

    /// Stops here if a test armed `point` (once: the point disarms as it is reached).
    pub async fn pause(&self, point: &'static str) {
        if self.armed_count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let armed = self.armed.lock().expect("pause points lock").remove(point);
        let Some(armed) = armed else { return };
        self.armed_count.fetch_sub(1, Ordering::SeqCst);
        let released = armed.release.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        armed.reached.add_permits(1);
        if !armed.released.load(Ordering::SeqCst) {
            released.await;
        }
    }
}

impl PausePoints {
    /// `pause` for a place where no await may be: inside a critical section, to show a test that
    /// nothing can get in between (the thread blocks until `Paused::release`, holding what it
    /// holds). Only ever armed by tests; unarmed, one atomic load.
    pub fn pause_blocking(&self, point: &'static str) {
        if self.armed_count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let armed = self.armed.lock().expect("pause points lock").remove(point);
        let Some(armed) = armed else { return };
        self.armed_count.fetch_sub(1, Ordering::SeqCst);
        armed.reached.add_permits(1);
        while !armed.released.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

impl Paused {
    /// Waits until a task has reached the point and stopped there.
    pub async fn reached(&self) {
        self.armed.reached.acquire().await.expect("never closed").forget();
    }

    /// Lets the stopped task (or the next one to arrive) go on.
    pub fn release(&self) {
        self.armed.released.store(true, Ordering::SeqCst);
        self.armed.release.notify_waiters();
    }
}
