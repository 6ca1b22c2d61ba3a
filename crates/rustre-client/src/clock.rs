//! The clock that trust in leases is measured on.
//!
//! A client trusts its leases for half the lease timeout after it sent a request the server
//! answered (`cache.rs`). That window must count time the machine spent suspended: a laptop or
//! a VM that resumes after the server evicted it must not trust what it cached for what remained
//! of its window. CLOCK_MONOTONIC (tokio's clock) stops during a suspension; CLOCK_BOOTTIME does
//! not, and their difference is the time the machine has spent suspended since boot.
//!
//! The client's trust clock is tokio's clock plus the suspended time: CLOCK_BOOTTIME in
//! production, and under a paused or simulated tokio clock (unit tests, the simulator) that
//! clock, so one seed replays. Where suspended time comes from is a `SuspendClock`, which tests
//! and the simulator replace (`ManualSuspendClock`) to declare a suspension.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Where the client learns how long the machine has been suspended.
pub trait SuspendClock: Send + Sync {
    /// Time spent suspended since an arbitrary origin; never decreases.
    fn suspended(&self) -> Duration;
}

/// The kernel's account: CLOCK_BOOTTIME minus CLOCK_MONOTONIC.
#[derive(Debug, Default)]
pub struct KernelSuspendClock;

impl SuspendClock for KernelSuspendClock {
    fn suspended(&self) -> Duration {
        let boot = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let monotonic = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let nanos = |time: rustix::time::Timespec| time.tv_sec as i128 * 1_000_000_000 + time.tv_nsec as i128;
        // Read boot time first: a suspension between the two reads makes the difference
        // smaller, never larger, and the next reading catches up.
        let difference = nanos(boot) - nanos(monotonic);
        Duration::from_nanos(difference.clamp(0, u64::MAX as i128) as u64)
    }
}

/// Suspended time a test or the simulator declares (`suspend`).
#[derive(Debug, Default)]
pub struct ManualSuspendClock {
    nanos: AtomicU64,
}

impl ManualSuspendClock {
    /// The machine "was suspended" for `time` just now.
    pub fn suspend(&self, time: Duration) {
        self.nanos.fetch_add(time.as_nanos() as u64, Ordering::AcqRel);
    }
}

impl SuspendClock for ManualSuspendClock {
    fn suspended(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

/// tokio's clock plus the time suspended: times on it are durations since its origin.
#[derive(Clone)]
pub(crate) struct TrustClock {
    origin: Instant,
    suspended_at_origin: Duration,
    suspend: Arc<dyn SuspendClock>,
}

impl TrustClock {
    pub(crate) fn new(suspend: Arc<dyn SuspendClock>) -> TrustClock {
        let suspended_at_origin = suspend.suspended();
        TrustClock { origin: Instant::now(), suspended_at_origin, suspend }
    }

    /// Now, counting suspended time.
    pub(crate) fn now(&self) -> Duration {
        let suspended = self.suspend.suspended().saturating_sub(self.suspended_at_origin);
        self.origin.elapsed() + suspended
    }

    /// Time suspended since the origin.
    pub(crate) fn suspended(&self) -> Duration {
        self.suspend.suspended().saturating_sub(self.suspended_at_origin)
    }
}

impl std::fmt::Debug for TrustClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustClock").field("now", &self.now()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_declared_suspension_counts_as_time() {
        let suspend = Arc::new(ManualSuspendClock::default());
        let clock = TrustClock::new(suspend.clone());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.now(), Duration::from_secs(1));
        suspend.suspend(Duration::from_secs(30));
        assert_eq!(clock.now(), Duration::from_secs(31));
        assert_eq!(clock.suspended(), Duration::from_secs(30));
    }

    #[test]
    fn the_kernels_suspended_time_never_goes_back() {
        let clock = KernelSuspendClock;
        let first = clock.suspended();
        let second = clock.suspended();
        // Each reading may differ by the time between its two clock reads; a real suspension
        // only adds.
        assert!(second + Duration::from_millis(10) >= first, "{first:?} then {second:?}");
    }
}
