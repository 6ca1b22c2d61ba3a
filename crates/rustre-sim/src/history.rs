//! What the simulated clients did and saw: the input of the linearizability checker.
//!
//! Every call a client makes is one `Event`: the call, its outcome, and when it was invoked and
//! when it returned, as positions in one global sequence of invocations and returns (all hosts of
//! a simulation run on one OS thread, so the sequence is the real-time order).

/// Which simulated client made a call.
pub type ClientId = u32;
/// A file handle of the workload, unique over the whole run (not the server's handle number).
pub type HandleId = u64;

/// The kinds of inode the model knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    File,
    Directory,
    Symlink,
}

/// One call of the library's path API (or of a `File` the workload holds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `Client::open`: `write` opens read-write (else read-only); `create` adds O_CREAT,
    /// `exclusive` O_EXCL (with `create`), `truncate` O_TRUNC (with `write`). On success the
    /// file is known as `handle` to later calls.
    Open { path: String, write: bool, create: bool, exclusive: bool, truncate: bool, handle: HandleId },
    /// `File::write_at(0, data)` on a handle opened for writing, then `File::fsync`.
    Write { handle: HandleId, data: Vec<u8> },
    /// `File::read_at(0, READ_LEN)`.
    Read { handle: HandleId },
    /// `File::close`.
    Close { handle: HandleId },
    /// `Client::remove_file`.
    Unlink { path: String },
    /// `Client::rename_with` (`Replace`, or `NoReplace` when `noreplace`).
    Rename { from: String, to: String, noreplace: bool },
    /// `Client::mkdir`.
    Mkdir { path: String },
    /// `Client::remove_dir`.
    Rmdir { path: String },
    /// `Client::hard_link(from, to)`.
    Link { from: String, to: String },
    /// `Client::symlink(target, path)`.
    Symlink { target: String, path: String },
    /// `Client::stat` (follows symlinks).
    Stat { path: String },
    /// `Client::read_dir`: the names, sorted.
    ReadDir { path: String },
    /// Not a client call: the first step of a path call the checker splits (`phases.rs`), the
    /// walk to `path`'s parent directory (or, `whole`, to what `path` names), kept in `slot`.
    Resolve { path: String, whole: bool, follow: bool, slot: HandleId },
    /// Not a client call: the walk in `slot` goes one step further (through its next symlink).
    Hop { slot: HandleId },
    /// Not a client call: a step of a split open between its walk and its act. If the name kept
    /// in slot `from` is a symlink, its target's parent is walked to and kept, with the target's
    /// last name, in slot `to`; otherwise `from` moves to `to` as it is. (The client follows a
    /// final symlink in steps of its own: open, ELOOP, read the link, walk its target.)
    Follow { from: HandleId, to: HandleId },
    /// Not a client call: the last step of a split path call, on what its `Resolve` steps kept
    /// in `slots` (0: none).
    Act { call: Box<Call>, slots: [HandleId; 2] },
}

/// Most bytes a `Read` asks for; files of the workload stay smaller.
pub const READ_LEN: usize = 4096;

/// What a successful call answered (only what the model can predict).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Unlink, rename, rmdir, close, write.
    Done,
    /// Open: whether it created the file, and the size it reports.
    Opened { created: bool, size: u64 },
    /// Stat, mkdir, link, symlink: the attributes the model can predict.
    Attr { kind: Kind, size: u64, nlink: u32 },
    /// Read: the bytes.
    Data(Vec<u8>),
    /// ReadDir: the names, sorted.
    Names(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Value),
    /// The errno the call failed with.
    Err(i32),
    /// The session broke before the answer came (connection lost, evicted): the call may or may
    /// not have taken effect, at any time after it was invoked.
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub client: ClientId,
    pub call: Call,
    pub outcome: Outcome,
    /// Position of the invocation in the global sequence.
    pub invoked: u64,
    /// Position of the return; `u64::MAX` for `Outcome::Unknown`.
    pub returned: u64,
}

impl std::fmt::Display for Call {
    /// A call as a person reads it: `open /a/f (write, create)`, `rename /a -> /b (noreplace)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Open { path, write, create, exclusive, truncate, handle } => {
                let flags: Vec<&str> =
                    [(*write, "write"), (*create, "create"), (*exclusive, "excl"), (*truncate, "trunc")]
                        .into_iter()
                        .filter_map(|(set, name)| set.then_some(name))
                        .collect();
                let flags = if flags.is_empty() { "read".to_string() } else { flags.join(", ") };
                write!(f, "open {path} ({flags}) as handle {handle}")
            }
            Call::Write { handle, data } => write!(f, "write {} bytes to handle {handle}, fsync", data.len()),
            Call::Read { handle } => write!(f, "read handle {handle}"),
            Call::Close { handle } => write!(f, "close handle {handle}"),
            Call::Unlink { path } => write!(f, "unlink {path}"),
            Call::Rename { from, to, noreplace } => {
                write!(f, "rename {from} -> {to}{}", if *noreplace { " (noreplace)" } else { "" })
            }
            Call::Mkdir { path } => write!(f, "mkdir {path}"),
            Call::Rmdir { path } => write!(f, "rmdir {path}"),
            Call::Link { from, to } => write!(f, "link {from} -> {to}"),
            Call::Symlink { target, path } => write!(f, "symlink {path} -> {target}"),
            Call::Stat { path } => write!(f, "stat {path}"),
            Call::ReadDir { path } => write!(f, "readdir {path}"),
            Call::Resolve { path, whole, follow, slot } => {
                let what = if *whole { "" } else { "the parent of " };
                let follow = if *follow { ", following symlinks" } else { "" };
                write!(f, "(walk to {what}{path}{follow}, kept in slot {slot})")
            }
            Call::Hop { slot } => write!(f, "(walk of slot {slot} through its next symlink)"),
            Call::Follow { from, to } => write!(f, "(follow slot {from} into slot {to})"),
            Call::Act { call, slots } => write!(f, "{call} (on slots {} and {})", slots[0], slots[1]),
        }
    }
}

impl std::fmt::Display for Outcome {
    /// `ok`, `ok: created, size 0`, `ENOTDIR`, `unknown (the session broke)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok(Value::Done) => write!(f, "ok"),
            Outcome::Ok(Value::Opened { created, size }) => {
                write!(f, "ok: {}, size {size}", if *created { "created" } else { "opened" })
            }
            Outcome::Ok(Value::Attr { kind, size, nlink }) => {
                write!(f, "ok: {kind:?}, size {size}, nlink {nlink}")
            }
            Outcome::Ok(Value::Data(data)) => write!(f, "ok: {} bytes \"{}\"", data.len(), data.escape_ascii()),
            Outcome::Ok(Value::Names(names)) => write!(f, "ok: [{}]", names.join(", ")),
            Outcome::Err(errno) => write!(f, "{}", rustre_proto::Errno(*errno).name()),
            Outcome::Unknown => write!(f, "unknown (the session broke before the answer)"),
        }
    }
}

impl std::fmt::Display for Event {
    /// `client 1 [12..15] open /a (write, create) as handle 3 -> ok: created, size 0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let returned = if self.returned == u64::MAX { "?".to_string() } else { self.returned.to_string() };
        write!(f, "client {} [{}..{returned}] {} -> {}", self.client, self.invoked, self.call, self.outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_reads_as_calls_and_errno_names() {
        let event = Event {
            client: 1,
            call: Call::Open {
                path: "/a/f".into(),
                write: true,
                create: true,
                exclusive: false,
                truncate: false,
                handle: 3,
            },
            outcome: Outcome::Err(20),
            invoked: 12,
            returned: 15,
        };
        assert_eq!(event.to_string(), "client 1 [12..15] open /a/f (write, create) as handle 3 -> ENOTDIR");
        let lost =
            Event { outcome: Outcome::Unknown, returned: u64::MAX, call: Call::Unlink { path: "/f".into() }, ..event };
        assert_eq!(lost.to_string(), "client 1 [12..?] unlink /f -> unknown (the session broke before the answer)");
    }
}
