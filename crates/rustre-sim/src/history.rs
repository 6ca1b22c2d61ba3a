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
