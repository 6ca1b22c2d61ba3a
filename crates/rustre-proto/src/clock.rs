//! Time and randomness come from outside, so a simulation can run the same code on its own clock.

use std::time::SystemTime;

/// Wall-clock time for timestamps. Timeouts use `tokio::time`, which a simulator also controls.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
