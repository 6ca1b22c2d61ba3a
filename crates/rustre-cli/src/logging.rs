//! The log the binary writes on stderr: `RUST_LOG` when set, else a level per command, and
//! one ordinary event of a FUSE session kept out of it.
//!
//! fuser logs at ERROR every reply the kernel refuses. The kernel refuses with ENOENT a reply to
//! a request it no longer waits for: the caller was killed by a signal while the request was
//! being served, or the file system was unmounted (`umount`, `fusermount3 -u`) with a request in
//! flight. Neither is a fault of the mount, and a log that cries ERROR on every `umount` teaches
//! operators to ignore it. Every other refused reply (a malformed one would be EINVAL) still
//! reaches the log.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The module of fuser that logs refused replies.
const FUSER_REPLY_TARGET: &str = "fuser::reply";
/// The target of every event that came from the `log` crate (tracing-log's bridge).
const LOG_BRIDGE_TARGET: &str = "log";
/// How `std::io::Error` shows ENOENT, the kernel's "no such request".
const NO_SUCH_REQUEST: &str = "(os error 2)";

/// Installs the global subscriber: `RUST_LOG` if it parses, else `default_level`.
pub fn init(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    subscriber(filter, std::io::stderr, std::io::stderr().is_terminal()).init();
}

fn subscriber<W>(filter: tracing_subscriber::EnvFilter, writer: W, ansi: bool) -> impl Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let format = tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi);
    tracing_subscriber::registry().with(QuietAbandonedReplies).with(filter).with(format)
}

/// Drops fuser's "Failed to send FUSE reply" events whose cause is ENOENT (see the module's
/// comment); a layer's `event_enabled` of false keeps the event from every layer.
struct QuietAbandonedReplies;

impl<S: Subscriber> Layer<S> for QuietAbandonedReplies {
    fn event_enabled(&self, event: &Event<'_>, _context: Context<'_, S>) -> bool {
        // fuser logs through the `log` crate: its records arrive with the target "log" and
        // their own target in the field `log.target`.
        let target = event.metadata().target();
        if target != FUSER_REPLY_TARGET && target != LOG_BRIDGE_TARGET {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let from_fuser = target == FUSER_REPLY_TARGET || fields.log_target == FUSER_REPLY_TARGET;
        !(from_fuser && is_abandoned_reply(&fields.message))
    }
}

fn is_abandoned_reply(message: &str) -> bool {
    message.starts_with("Failed to send FUSE reply") && message.ends_with(NO_SUCH_REQUEST)
}

/// The fields of an event this layer reads: its message, and the target of a `log` record.
#[derive(Default)]
struct Fields {
    message: String,
    log_target: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "log.target" => self.log_target = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "log.target" => self.log_target = format!("{value:?}"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn only_replies_the_kernel_no_longer_waits_for_are_quiet() {
        let enoent = std::io::Error::from(rustix::io::Errno::NOENT);
        assert!(is_abandoned_reply(&format!("Failed to send FUSE reply: {enoent}")));
        let einval = std::io::Error::from(rustix::io::Errno::INVAL);
        assert!(!is_abandoned_reply(&format!("Failed to send FUSE reply: {einval}")));
        assert!(!is_abandoned_reply(&format!("Unknown operation: {enoent}")));
    }

    /// The whole subscriber, as `init` builds it: the abandoned reply is gone, the rest kept.
    #[test]
    fn the_log_keeps_every_other_refused_reply() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = written.clone();
        let writer = move || Sink(sink.clone());
        let subscriber = subscriber(tracing_subscriber::EnvFilter::new("info"), writer, false);
        tracing::subscriber::with_default(subscriber, || {
            let enoent = std::io::Error::from(rustix::io::Errno::NOENT);
            let einval = std::io::Error::from(rustix::io::Errno::INVAL);
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: {enoent}");
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: {einval}");
            // As fuser's `log` records arrive through tracing-log's bridge.
            tracing::error!(target: "log", { log.target = "fuser::reply" }, "Failed to send FUSE reply: {enoent}");
            tracing::error!(target: "rustre::elsewhere", "disk full: {enoent}");
        });
        let log = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(log.lines().count(), 2, "{log}");
        assert!(!log.lines().any(|line| line.contains("FUSE reply") && line.contains("(os error 2)")), "{log}");
        assert!(log.contains("Invalid argument"), "{log}");
        assert!(log.contains("disk full"), "{log}");
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
