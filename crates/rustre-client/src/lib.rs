//! rustre's client library: one session with a server, an inode-level API that maps one to one
//! onto protocol requests, and a path-based API over it for applications and the CLI.
//!
//! ```no_run
//! # async fn demo() -> rustre_client::Result<()> {
//! let client = rustre_client::Client::connect("127.0.0.1:7070").await?;
//! client.create_dir_all("/a/b").await?;
//! client.write("/a/b/hello.txt", b"hello").await?;
//! assert_eq!(client.read("/a/b/hello.txt").await?, b"hello");
//! # Ok(()) }
//! ```

mod error;
mod file;
mod path;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rustre_proto::frame::{Frame, FrameKind, encode_header, read_frame, write_frame};
use rustre_proto::msg::{PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN, READDIR_ENTRIES_MAX};
use rustre_proto::rpc::{BoxFuture, Connection, Service};
use rustre_proto::{
    Attr, Callback, CallbackReply, Caller, DirEntry, Errno, FileKind, HELLO_MAGIC, Op, OpenFlags, RenameMode, Reply,
    ReplyHeader, Request, SetAttrIn, StatFs, TimeSet, XattrMode,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

pub use error::{Error, Result};
pub use file::{File, OpenOptions};
pub use rustre_proto;
pub use rustre_proto::{Attr as Metadata, DirEntry as Entry};

use path::{Walk, bytes, components};

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Reported to the server in the hello, for its logs.
    pub client_name: String,
    /// The identity stamped on requests (owner of what this client creates).
    pub caller: Caller,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_name: format!("rustre-client pid {}", std::process::id()),
            caller: Caller { uid: rustix::process::getuid().as_raw(), gid: rustix::process::getgid().as_raw() },
        }
    }
}

/// Counters of one client, readable at any time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub requests_sent: u64,
    pub callbacks_received: u64,
}

#[derive(Default)]
struct Counters {
    requests_sent: AtomicU64,
    callbacks_received: AtomicU64,
}

struct Inner {
    connection: Connection,
    session: u64,
    server_name: String,
    caller: Caller,
    counters: Arc<Counters>,
}

/// A session with a rustre server. Cloning shares the session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Answers the server's calls on our connection.
struct CallbackService {
    counters: Arc<Counters>,
}

impl Service for CallbackService {
    fn call(&self, frame: Frame) -> BoxFuture<(Bytes, Bytes)> {
        self.counters.callbacks_received.fetch_add(1, Ordering::Relaxed);
        let reply = match frame.decode_header::<Callback>() {
            Ok(Callback::Ping { nonce }) => CallbackReply::Pong { nonce },
            Err(error) => {
                // An answer the server cannot match to a ping makes it disconnect us: the right
                // outcome for a server speaking something we do not understand.
                tracing::warn!(%error, "undecodable call from the server");
                CallbackReply::Pong { nonce: u64::MAX }
            }
        };
        Box::pin(async move { (encode_header(&reply), Bytes::new()) })
    }
}

impl Client {
    /// Connects over TCP with the default configuration.
    pub async fn connect(address: &str) -> Result<Client> {
        Client::connect_with(address, ClientConfig::default()).await
    }

    pub async fn connect_with(address: &str, config: ClientConfig) -> Result<Client> {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|error| Error::new(Errno::from_io(&error), format!("connecting to {address}: {error}")))?;
        let _ = stream.set_nodelay(true);
        Client::handshake(stream, address.to_string(), config).await
    }

    /// Runs the hello on any byte stream and starts the session on it.
    pub async fn handshake<S>(mut stream: S, peer: String, config: ClientConfig) -> Result<Client>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let hello = Request {
            caller: config.caller,
            op: Op::Hello {
                magic: HELLO_MAGIC,
                version_min: PROTOCOL_VERSION_MIN,
                version_max: PROTOCOL_VERSION_MAX,
                client_name: config.client_name.clone(),
            },
        };
        let failed = |error: &dyn std::fmt::Display| Error::new(Errno::EPROTO, format!("hello to {peer}: {error}"));
        write_frame(&mut stream, &Frame::new(FrameKind::Request, 0, &hello, Bytes::new()))
            .await
            .map_err(|error| failed(&error))?;
        stream.flush().await.map_err(|error| failed(&error))?;
        let frame = read_frame(&mut stream).await.map_err(|error| failed(&error))?;
        let reply: ReplyHeader = frame.decode_header().map_err(|error| failed(&error))?;
        let (session, server_name) = match reply {
            Ok(Reply::Hello { session, server_name, .. }) => (session, server_name),
            Ok(other) => return Err(failed(&format!("unexpected reply {other:?}"))),
            Err(error) => return Err(Error::from(error).context(format!("hello to {peer}"))),
        };
        let counters = Arc::new(Counters::default());
        let service = Arc::new(CallbackService { counters: counters.clone() });
        let connection = Connection::start(stream, service, format!("server {peer}"));
        Ok(Client { inner: Arc::new(Inner { connection, session, server_name, caller: config.caller, counters }) })
    }

    pub fn session(&self) -> u64 {
        self.inner.session
    }

    pub fn server_name(&self) -> &str {
        &self.inner.server_name
    }

    pub fn stats(&self) -> ClientStats {
        ClientStats {
            requests_sent: self.inner.counters.requests_sent.load(Ordering::Relaxed),
            callbacks_received: self.inner.counters.callbacks_received.load(Ordering::Relaxed),
        }
    }

    /// Ends the session: the server releases its handles.
    pub fn close(&self) {
        self.inner.connection.close("client closed the session");
    }

    /// Sends one request and waits for its reply.
    pub async fn call(&self, op: Op, payload: Bytes) -> Result<(Reply, Bytes)> {
        self.inner.counters.requests_sent.fetch_add(1, Ordering::Relaxed);
        let kind = op.kind_name();
        let header = encode_header(&Request { caller: self.inner.caller, op });
        let frame = self
            .inner
            .connection
            .call(header, payload)
            .await
            .map_err(|closed| Error::new(Errno::ENOTCONN, closed.to_string()))?;
        let reply: ReplyHeader = frame
            .decode_header()
            .map_err(|error| Error::new(Errno::EPROTO, format!("undecodable reply to {kind}: {error}")))?;
        Ok((reply?, frame.payload))
    }

    // ---- inode-level API: one request each ----

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        rustre_proto::name::validate_name(name)?;
        expect_entry(self.call(Op::Lookup { parent, name: name.to_vec() }, Bytes::new()).await?)
    }

    pub async fn getattr(&self, ino: u64) -> Result<Attr> {
        expect_attr(self.call(Op::GetAttr { ino }, Bytes::new()).await?)
    }

    pub async fn setattr(&self, ino: u64, set: SetAttrIn) -> Result<Attr> {
        expect_attr(self.call(Op::SetAttr { ino, set }, Bytes::new()).await?)
    }

    /// Opens `name` in `parent` in one atomic server step (creating it if `flags` say so).
    pub async fn open_at(&self, parent: u64, name: &[u8], flags: OpenFlags, perm: u32) -> Result<File> {
        rustre_proto::name::validate_name(name)?;
        let reply = self.call(Op::Open { parent, name: name.to_vec(), flags, perm }, Bytes::new()).await?;
        self.opened(reply, flags)
    }

    pub async fn open_ino(&self, ino: u64, flags: OpenFlags) -> Result<File> {
        let reply = self.call(Op::OpenIno { ino, flags }, Bytes::new()).await?;
        self.opened(reply, flags)
    }

    fn opened(&self, reply: (Reply, Bytes), flags: OpenFlags) -> Result<File> {
        match reply.0 {
            Reply::Opened { handle, attr, created } => Ok(File::new(self.clone(), handle, attr, created, flags)),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn mkdir_at(&self, parent: u64, name: &[u8], perm: u32) -> Result<Attr> {
        rustre_proto::name::validate_name(name)?;
        expect_entry(self.call(Op::Mkdir { parent, name: name.to_vec(), perm }, Bytes::new()).await?)
    }

    pub async fn unlink_at(&self, parent: u64, name: &[u8]) -> Result<()> {
        rustre_proto::name::validate_name(name)?;
        expect_done(self.call(Op::Unlink { parent, name: name.to_vec() }, Bytes::new()).await?)
    }

    pub async fn rmdir_at(&self, parent: u64, name: &[u8]) -> Result<()> {
        rustre_proto::name::validate_name(name)?;
        expect_done(self.call(Op::Rmdir { parent, name: name.to_vec() }, Bytes::new()).await?)
    }

    pub async fn rename_at(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<()> {
        rustre_proto::name::validate_name(name)?;
        rustre_proto::name::validate_name(new_name)?;
        let op = Op::Rename { parent, name: name.to_vec(), new_parent, new_name: new_name.to_vec(), mode };
        expect_done(self.call(op, Bytes::new()).await?)
    }

    pub async fn link_at(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> Result<Attr> {
        rustre_proto::name::validate_name(new_name)?;
        expect_entry(self.call(Op::Link { ino, new_parent, new_name: new_name.to_vec() }, Bytes::new()).await?)
    }

    pub async fn symlink_at(&self, parent: u64, name: &[u8], target: &[u8]) -> Result<Attr> {
        rustre_proto::name::validate_name(name)?;
        let op = Op::Symlink { parent, name: name.to_vec(), target: target.to_vec() };
        expect_entry(self.call(op, Bytes::new()).await?)
    }

    pub async fn readlink_ino(&self, ino: u64) -> Result<Vec<u8>> {
        match self.call(Op::Readlink { ino }, Bytes::new()).await?.0 {
            Reply::Target { target } => Ok(target),
            other => Err(unexpected(&other)),
        }
    }

    /// One page of a directory: entries after `cookie` (0 starts), and whether it is the last.
    pub async fn read_dir_page(
        &self,
        ino: u64,
        cookie: u64,
        max_entries: u32,
        with_attrs: bool,
    ) -> Result<(Vec<DirEntry>, bool)> {
        match self.call(Op::ReadDir { ino, cookie, max_entries, with_attrs }, Bytes::new()).await?.0 {
            Reply::Entries { entries, end } => Ok((entries, end)),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn statfs(&self) -> Result<StatFs> {
        match self.call(Op::StatFs, Bytes::new()).await?.0 {
            Reply::StatFs { statfs } => Ok(statfs),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn getxattr_ino(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        match self.call(Op::GetXattr { ino, name: name.to_vec() }, Bytes::new()).await? {
            (Reply::Xattr, value) => Ok(value.to_vec()),
            (other, _) => Err(unexpected(&other)),
        }
    }

    pub async fn setxattr_ino(&self, ino: u64, name: &[u8], value: &[u8], mode: XattrMode) -> Result<()> {
        let op = Op::SetXattr { ino, name: name.to_vec(), mode };
        expect_done(self.call(op, Bytes::copy_from_slice(value)).await?)
    }

    pub async fn listxattr_ino(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        match self.call(Op::ListXattr { ino }, Bytes::new()).await?.0 {
            Reply::XattrNames { names } => Ok(names),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn removexattr_ino(&self, ino: u64, name: &[u8]) -> Result<()> {
        expect_done(self.call(Op::RemoveXattr { ino, name: name.to_vec() }, Bytes::new()).await?)
    }

    // ---- path API ----

    /// Attributes of what `path` names, following symlinks.
    pub async fn stat(&self, path: impl AsRef<Path>) -> Result<Attr> {
        let path = path.as_ref();
        self.resolve(bytes(path), true).await.map_err(|error| error.context(format!("stat {}", path.display())))
    }

    /// Attributes of what `path` names, not following a final symlink.
    pub async fn lstat(&self, path: impl AsRef<Path>) -> Result<Attr> {
        let path = path.as_ref();
        self.resolve(bytes(path), false).await.map_err(|error| error.context(format!("lstat {}", path.display())))
    }

    /// Does `path` name something? (Errors other than ENOENT are errors.)
    pub async fn exists(&self, path: impl AsRef<Path>) -> Result<bool> {
        match self.lstat(path).await {
            Ok(_) => Ok(true),
            Err(error) if error.errno == Errno::ENOENT => Ok(false),
            Err(error) => Err(error),
        }
    }

    pub async fn open(&self, path: impl AsRef<Path>, options: &OpenOptions) -> Result<File> {
        let path = path.as_ref();
        self.open_path(bytes(path), options).await.map_err(|error| error.context(format!("open {}", path.display())))
    }

    async fn open_path(&self, path: &[u8], options: &OpenOptions) -> Result<File> {
        let flags = options.flags()?;
        if path::names_directory(path) {
            // "name/" can only open an existing directory, and only for reading.
            let changes = [OpenFlags::WRITE, OpenFlags::APPEND, OpenFlags::CREATE, OpenFlags::TRUNCATE];
            let writing = changes.into_iter().any(|flag| flags.contains(flag));
            return match self.resolve(path, true).await {
                Err(error) if error.errno == Errno::ENOENT && flags.contains(OpenFlags::CREATE) => {
                    Err(Errno::EISDIR.into())
                }
                Err(error) => Err(error),
                Ok(_) if writing => Err(Errno::EISDIR.into()),
                Ok(attr) => self.open_ino(attr.ino, flags | OpenFlags::DIRECTORY).await,
            };
        }
        let mut walk = Walk::root();
        let mut path = path.to_vec();
        for _ in 0..=path::SYMLINKS_FOLLOWED_MAX {
            let name = match self.walk_parent(&mut walk, &path).await {
                Ok(name) => name,
                // Opening "/" (or "a/.."): there is no name to open by; open the directory itself.
                // (From where the walk stands: a symlink's "." or ".." is relative to its directory.)
                Err(error) if error.errno == Errno::EBUSY || error.errno == Errno::EINVAL => {
                    let attr = self.walk(&mut walk, components(&path), true).await?;
                    return self.open_ino(attr.ino, flags).await;
                }
                Err(error) => return Err(error),
            };
            match self.open_at(walk.directory(), &name, flags, options.perm).await {
                Err(error) if error.errno == Errno::ELOOP && !options.no_follow => {
                    // The name is a symlink: the server never follows one, we do.
                    let attr = self.lookup(walk.directory(), &name).await?;
                    if attr.kind != FileKind::Symlink {
                        continue; // replaced meanwhile: open by name again
                    }
                    path = self.readlink_ino(attr.ino).await?;
                    if path.starts_with(b"/") {
                        walk = Walk::root();
                    }
                }
                other => return other,
            }
        }
        Err(Errno::ELOOP.into())
    }

    /// Opens for writing, creating or truncating (`File::create` of std).
    pub async fn create(&self, path: impl AsRef<Path>) -> Result<File> {
        self.open(path, OpenOptions::new().write(true).create(true).truncate(true)).await
    }

    /// The whole contents of a file.
    pub async fn read(&self, path: impl AsRef<Path>) -> Result<Vec<u8>> {
        let mut file = self.open(&path, OpenOptions::new().read(true)).await?;
        let contents = file.read_to_end().await;
        file.close().await?;
        contents.map_err(|error| error.context(format!("read {}", path.as_ref().display())))
    }

    /// Replaces the contents of a file, creating it if needed.
    pub async fn write(&self, path: impl AsRef<Path>, contents: &[u8]) -> Result<()> {
        let mut file = self.create(&path).await?;
        let written = file.write_all(contents).await;
        file.close().await?;
        written.map_err(|error| error.context(format!("write {}", path.as_ref().display())))
    }

    async fn with_parent<T, F, Fut>(&self, verb: &str, path: &Path, action: F) -> Result<T>
    where
        F: FnOnce(u64, Vec<u8>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let run = async {
            let mut walk = Walk::root();
            let name = self.walk_parent(&mut walk, bytes(path)).await?;
            action(walk.directory(), name).await
        };
        run.await.map_err(|error| error.context(format!("{verb} {}", path.display())))
    }

    pub async fn mkdir(&self, path: impl AsRef<Path>, perm: u32) -> Result<Attr> {
        let path = path.as_ref();
        self.with_parent("mkdir", path, |parent, name| async move { self.mkdir_at(parent, &name, perm).await })
            .await
            .map_err(|error| {
                if components(bytes(path)).is_empty() {
                    Error::from(Errno::EEXIST).context(format!("mkdir {}", path.display()))
                } else {
                    error
                }
            })
    }

    /// Makes a directory and any missing parents (`mkdir -p`); an existing directory is fine.
    pub async fn create_dir_all(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut walk = Walk::root();
        let mut pending = components(bytes(path));
        while let Some(component) = pending.pop_front() {
            let name = match component {
                path::Component::Parent => {
                    self.walk(&mut walk, [path::Component::Parent].into(), true).await?;
                    continue;
                }
                path::Component::Name(name) => name,
            };
            let attr = match self.mkdir_at(walk.directory(), &name, 0o755).await {
                Ok(attr) => attr,
                Err(error) if error.errno == Errno::EEXIST => {
                    self.walk(&mut walk.clone(), [path::Component::Name(name)].into(), true).await?
                }
                Err(error) => return Err(error.context(format!("mkdir -p {}", path.display()))),
            };
            if attr.kind != FileKind::Directory {
                return Err(Error::from(Errno::ENOTDIR).context(format!("mkdir -p {}", path.display())));
            }
            walk.stack.push(attr.ino);
        }
        Ok(())
    }

    pub async fn remove_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if path::names_directory(bytes(path)) {
            // "name/" names a directory, which unlink refuses; or nothing unlink could remove.
            let refusal = match self.resolve(bytes(path), true).await {
                Ok(_) => Error::from(Errno::EISDIR),
                Err(error) => error,
            };
            return Err(refusal.context(format!("unlink {}", path.display())));
        }
        self.with_parent("unlink", path, |parent, name| async move { self.unlink_at(parent, &name).await }).await
    }

    pub async fn remove_dir(&self, path: impl AsRef<Path>) -> Result<()> {
        self.with_parent("rmdir", path.as_ref(), |parent, name| async move { self.rmdir_at(parent, &name).await }).await
    }

    /// Removes a directory and everything below it (`rm -r`), or a single non-directory.
    pub async fn remove_all(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let attr = self.lstat(path).await?;
        if attr.kind != FileKind::Directory {
            return self.remove_file(path).await;
        }
        self.with_parent("rm -r", path, |parent, name| async move { self.remove_tree_at(parent, &name).await }).await
    }

    /// Removes the directory `name` in `parent` with everything below it.
    async fn remove_tree_at(&self, parent: u64, name: &[u8]) -> Result<()> {
        // (directory holding it, its name, its inode)
        let mut stack: Vec<(u64, Vec<u8>, u64)> = Vec::new();
        let top = self.lookup(parent, name).await?;
        stack.push((parent, name.to_vec(), top.ino));
        while let Some((holder, name, ino)) = stack.last().cloned() {
            let entries = self.read_dir_ino(ino, false).await?;
            let mut descended = false;
            for entry in entries {
                if entry.kind == FileKind::Directory {
                    stack.push((ino, entry.name.clone(), entry.ino));
                    descended = true;
                    break;
                }
                self.unlink_at(ino, &entry.name).await.or_else(ignore_enoent)?;
            }
            if !descended {
                self.rmdir_at(holder, &name).await.or_else(ignore_enoent)?;
                stack.pop();
            }
        }
        Ok(())
    }

    pub async fn rename(&self, from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<()> {
        self.rename_with(from, to, RenameMode::Replace).await
    }

    pub async fn rename_with(&self, from: impl AsRef<Path>, to: impl AsRef<Path>, mode: RenameMode) -> Result<()> {
        let (from, to) = (from.as_ref(), to.as_ref());
        let run = async {
            if path::names_directory(bytes(from)) || path::names_directory(bytes(to)) {
                // A trailing slash on either side says the source is a directory.
                let source = self.walk(&mut Walk::root(), components(bytes(from)), false).await?;
                if source.kind != FileKind::Directory {
                    return Err(Errno::ENOTDIR.into());
                }
            }
            let mut source = Walk::root();
            let name = self.walk_parent(&mut source, bytes(from)).await?;
            let mut target = Walk::root();
            let new_name = self.walk_parent(&mut target, bytes(to)).await?;
            self.rename_at(source.directory(), &name, target.directory(), &new_name, mode).await
        };
        run.await.map_err(|error| error.context(format!("rename {} to {}", from.display(), to.display())))
    }

    /// Makes `link` a new name of the file at `original` (not following a final symlink).
    pub async fn hard_link(&self, original: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<Attr> {
        let original = self.lstat(original).await?;
        self.with_parent("link", link.as_ref(), |parent, name| async move {
            self.link_at(original.ino, parent, &name).await
        })
        .await
    }

    /// Makes `link` a symlink pointing at `target` (stored as given).
    pub async fn symlink(&self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<Attr> {
        let target = bytes(target.as_ref()).to_vec();
        self.with_parent("symlink", link.as_ref(), |parent, name| async move {
            self.symlink_at(parent, &name, &target).await
        })
        .await
    }

    pub async fn read_link(&self, path: impl AsRef<Path>) -> Result<Vec<u8>> {
        let path = path.as_ref();
        let attr = self.lstat(path).await?;
        self.readlink_ino(attr.ino).await.map_err(|error| error.context(format!("readlink {}", path.display())))
    }

    /// All entries of a directory (without "." and ".."), in cookie order.
    pub async fn read_dir(&self, path: impl AsRef<Path>) -> Result<Vec<DirEntry>> {
        let path = path.as_ref();
        let attr = self.stat(path).await?;
        self.read_dir_ino(attr.ino, false).await.map_err(|error| error.context(format!("readdir {}", path.display())))
    }

    /// All entries of a directory with their attributes.
    pub async fn read_dir_plus(&self, path: impl AsRef<Path>) -> Result<Vec<DirEntry>> {
        let path = path.as_ref();
        let attr = self.stat(path).await?;
        self.read_dir_ino(attr.ino, true).await.map_err(|error| error.context(format!("readdir {}", path.display())))
    }

    pub async fn read_dir_ino(&self, ino: u64, with_attrs: bool) -> Result<Vec<DirEntry>> {
        let mut entries = Vec::new();
        let mut cookie = 0;
        loop {
            let (page, end) = self.read_dir_page(ino, cookie, READDIR_ENTRIES_MAX, with_attrs).await?;
            if let Some(last) = page.last() {
                assert!(last.cookie > cookie, "cookies grow along a directory");
                cookie = last.cookie;
            }
            entries.extend(page);
            if end {
                return Ok(entries);
            }
        }
    }

    async fn setattr_path(&self, verb: &str, path: &Path, set: SetAttrIn) -> Result<Attr> {
        let attr = self.stat(path).await?;
        self.setattr(attr.ino, set).await.map_err(|error| error.context(format!("{verb} {}", path.display())))
    }

    pub async fn set_permissions(&self, path: impl AsRef<Path>, perm: u32) -> Result<Attr> {
        self.setattr_path("chmod", path.as_ref(), SetAttrIn { perm: Some(perm), ..Default::default() }).await
    }

    pub async fn set_owner(&self, path: impl AsRef<Path>, uid: Option<u32>, gid: Option<u32>) -> Result<Attr> {
        self.setattr_path("chown", path.as_ref(), SetAttrIn { uid, gid, ..Default::default() }).await
    }

    pub async fn truncate(&self, path: impl AsRef<Path>, size: u64) -> Result<Attr> {
        self.setattr_path("truncate", path.as_ref(), SetAttrIn { size: Some(size), ..Default::default() }).await
    }

    pub async fn set_times(
        &self,
        path: impl AsRef<Path>,
        atime: Option<TimeSet>,
        mtime: Option<TimeSet>,
    ) -> Result<Attr> {
        self.setattr_path("utimes", path.as_ref(), SetAttrIn { atime, mtime, ..Default::default() }).await
    }

    pub async fn get_xattr(&self, path: impl AsRef<Path>, name: &[u8]) -> Result<Vec<u8>> {
        let attr = self.stat(&path).await?;
        self.getxattr_ino(attr.ino, name)
            .await
            .map_err(|error| error.context(format!("getxattr {}", path.as_ref().display())))
    }

    pub async fn set_xattr(&self, path: impl AsRef<Path>, name: &[u8], value: &[u8], mode: XattrMode) -> Result<()> {
        let attr = self.stat(&path).await?;
        self.setxattr_ino(attr.ino, name, value, mode)
            .await
            .map_err(|error| error.context(format!("setxattr {}", path.as_ref().display())))
    }

    pub async fn list_xattr(&self, path: impl AsRef<Path>) -> Result<Vec<Vec<u8>>> {
        let attr = self.stat(&path).await?;
        self.listxattr_ino(attr.ino)
            .await
            .map_err(|error| error.context(format!("listxattr {}", path.as_ref().display())))
    }

    pub async fn remove_xattr(&self, path: impl AsRef<Path>, name: &[u8]) -> Result<()> {
        let attr = self.stat(&path).await?;
        self.removexattr_ino(attr.ino, name)
            .await
            .map_err(|error| error.context(format!("removexattr {}", path.as_ref().display())))
    }
}

fn ignore_enoent(error: Error) -> Result<()> {
    if error.errno == Errno::ENOENT { Ok(()) } else { Err(error) }
}

fn unexpected(reply: &Reply) -> Error {
    Error::new(Errno::EPROTO, format!("unexpected reply {reply:?}"))
}

fn expect_entry((reply, _): (Reply, Bytes)) -> Result<Attr> {
    match reply {
        Reply::Entry { attr } => Ok(attr),
        other => Err(unexpected(&other)),
    }
}

fn expect_attr((reply, _): (Reply, Bytes)) -> Result<Attr> {
    match reply {
        Reply::Attr { attr } => Ok(attr),
        other => Err(unexpected(&other)),
    }
}

fn expect_done((reply, _): (Reply, Bytes)) -> Result<()> {
    match reply {
        Reply::Done => Ok(()),
        other => Err(unexpected(&other)),
    }
}
