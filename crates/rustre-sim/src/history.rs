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

/// A time of an inode, as far as the model can predict it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Time {
    /// A time the server took from its clock (the simulated one, which the model does not
    /// follow): any instant from the simulation's epoch on. In a `SetTimes`, "now".
    Clock,
    /// Exactly this time, as a `SetTimes` set it (the workload's times are all before the
    /// simulation's epoch, so no clock time is ever one of them).
    At { secs: i64, nanos: u32 },
}

/// The workload's xattr modes (`XATTR_CREATE`, `XATTR_REPLACE`, or neither).
pub use rustre_proto::XattrMode;

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
    /// `Client::set_permissions` (chmod, follows symlinks): the permission bits, 0o7777 at most.
    Chmod { path: String, mode: u32 },
    /// `Client::set_owner` (chown, follows symlinks); `None` leaves that id as it is.
    Chown { path: String, uid: Option<u32>, gid: Option<u32> },
    /// `Client::truncate` (follows symlinks).
    Truncate { path: String, size: u64 },
    /// `Client::set_times` (utimensat, follows symlinks); `None` leaves that time as it is,
    /// `Time::Clock` sets it to the server's now.
    SetTimes { path: String, atime: Option<Time>, mtime: Option<Time> },
    /// `Client::read_link` (does not follow a final symlink): the target.
    Readlink { path: String },
    /// `Client::set_xattr` (follows symlinks).
    SetXattr { path: String, name: String, value: Vec<u8>, mode: XattrMode },
    /// `Client::get_xattr` (follows symlinks): the value.
    GetXattr { path: String, name: String },
    /// `Client::list_xattr` (follows symlinks): the names, sorted.
    ListXattr { path: String },
    /// `Client::remove_xattr` (follows symlinks).
    RemoveXattr { path: String, name: String },
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
    /// Unlink, rename, rmdir, close, write, set_xattr, remove_xattr.
    Done,
    /// Open: whether it created the file, and the size it reports.
    Opened { created: bool, size: u64 },
    /// Stat, mkdir, link, symlink, and the calls that change attributes (chmod, chown, truncate,
    /// set_times): the attributes the model can predict. `mode` is `st_mode` (type and
    /// permission bits). Times are exact where a `SetTimes` set them, and otherwise only known to
    /// come from the server's clock; ctime always does (every change sets it to now).
    Attr { kind: Kind, size: u64, nlink: u32, mode: u32, uid: u32, gid: u32, atime: Time, mtime: Time, ctime: Time },
    /// Read, readlink, get_xattr: the bytes.
    Data(Vec<u8>),
    /// ReadDir, list_xattr: the names, sorted.
    Names(Vec<String>),
}

#[cfg(test)]
impl Value {
    /// The attributes of a node root made in a plain directory and nobody changed since but for
    /// its size and links: the client's permission bits (0o644 for a file, 0o755 for a
    /// directory, 0o777 for a symlink), owner 0:0, every time from the server's clock.
    pub(crate) fn plain(kind: Kind, size: u64, nlink: u32) -> Value {
        let mode = match kind {
            Kind::File => 0o100644,
            Kind::Directory => 0o040755,
            Kind::Symlink => 0o120777,
        };
        Value::Attr {
            kind,
            size,
            nlink,
            mode,
            uid: 0,
            gid: 0,
            atime: Time::Clock,
            mtime: Time::Clock,
            ctime: Time::Clock,
        }
    }
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
            Call::Chmod { path, mode } => write!(f, "chmod {path} {mode:04o}"),
            Call::Chown { path, uid, gid } => {
                let id = |id: &Option<u32>| id.map_or("-1".to_string(), |id| id.to_string());
                write!(f, "chown {path} {}:{}", id(uid), id(gid))
            }
            Call::Truncate { path, size } => write!(f, "truncate {path} to {size}"),
            Call::SetTimes { path, atime, mtime } => {
                let time = |time: &Option<Time>| time.map_or("omit".to_string(), |time| time.to_string());
                write!(f, "utimes {path} atime {} mtime {}", time(atime), time(mtime))
            }
            Call::Readlink { path } => write!(f, "readlink {path}"),
            Call::SetXattr { path, name, value, mode } => {
                write!(f, "setxattr {path} {name}=\"{}\" ({mode:?})", value.escape_ascii())
            }
            Call::GetXattr { path, name } => write!(f, "getxattr {path} {name}"),
            Call::ListXattr { path } => write!(f, "listxattr {path}"),
            Call::RemoveXattr { path, name } => write!(f, "removexattr {path} {name}"),
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

impl std::fmt::Display for Time {
    /// `clock`, or `1000001111.000000007`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Time::Clock => write!(f, "clock"),
            Time::At { secs, nanos } => write!(f, "{secs}.{nanos:09}"),
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
            Outcome::Ok(Value::Attr { kind, size, nlink, mode, uid, gid, atime, mtime, ctime }) => {
                write!(f, "ok: {kind:?}, size {size}, nlink {nlink}, mode {mode:o}, owner {uid}:{gid}, ")?;
                write!(f, "atime {atime}, mtime {mtime}, ctime {ctime}")
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
