//! Open files: a server handle plus a position, as a file descriptor is.

use bytes::Bytes;
use rustre_proto::msg::IO_SIZE_MAX;
use rustre_proto::{Attr, Errno, Op, OpenFlags, Reply, SetAttrIn};

use crate::Client;
use crate::error::{Error, Result};

/// How a file is to be opened, as `std::fs::OpenOptions`.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    append: bool,
    truncate: bool,
    create: bool,
    create_new: bool,
    pub(crate) no_follow: bool,
    pub(crate) perm: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions::new()
    }
}

impl OpenOptions {
    pub fn new() -> OpenOptions {
        OpenOptions {
            read: false,
            write: false,
            append: false,
            truncate: false,
            create: false,
            create_new: false,
            no_follow: false,
            perm: 0o644,
        }
    }

    pub fn read(&mut self, on: bool) -> &mut Self {
        self.read = on;
        self
    }
    pub fn write(&mut self, on: bool) -> &mut Self {
        self.write = on;
        self
    }
    pub fn append(&mut self, on: bool) -> &mut Self {
        self.append = on;
        self
    }
    pub fn truncate(&mut self, on: bool) -> &mut Self {
        self.truncate = on;
        self
    }
    pub fn create(&mut self, on: bool) -> &mut Self {
        self.create = on;
        self
    }
    /// `O_CREAT | O_EXCL`: fail with EEXIST if the name exists.
    pub fn create_new(&mut self, on: bool) -> &mut Self {
        self.create_new = on;
        self
    }
    /// `O_NOFOLLOW`: a final symlink fails the open with ELOOP.
    pub fn no_follow(&mut self, on: bool) -> &mut Self {
        self.no_follow = on;
        self
    }
    /// Permission bits of a file this open creates.
    pub fn mode(&mut self, perm: u32) -> &mut Self {
        self.perm = perm & 0o7777;
        self
    }

    /// The protocol flags these options stand for (for the inode-level `Client::open_at`).
    pub fn flags(&self) -> Result<OpenFlags> {
        if !self.read && !self.write && !self.append {
            return Err(Error::new(Errno::EINVAL, "open: neither read nor write access asked for"));
        }
        if (self.create || self.create_new || self.truncate) && !(self.write || self.append) {
            return Err(Error::new(Errno::EINVAL, "open: create or truncate needs write access"));
        }
        let mut flags = OpenFlags(0);
        for (on, flag) in [
            (self.read, OpenFlags::READ),
            (self.write, OpenFlags::WRITE),
            (self.append, OpenFlags::APPEND),
            (self.truncate, OpenFlags::TRUNCATE),
            (self.create || self.create_new, OpenFlags::CREATE),
            (self.create_new, OpenFlags::EXCLUSIVE),
        ] {
            if on {
                flags = flags | flag;
            }
        }
        Ok(flags)
    }
}

/// An open file. Close it with `close` to learn of errors; dropping it closes it in the background.
pub struct File {
    client: Client,
    handle: u64,
    attr: Attr,
    created: bool,
    flags: OpenFlags,
    position: u64,
    closed: bool,
}

impl File {
    pub(crate) fn new(client: Client, handle: u64, attr: Attr, created: bool, flags: OpenFlags) -> File {
        File { client, handle, attr, created, flags, position: 0, closed: false }
    }

    pub fn ino(&self) -> u64 {
        self.attr.ino
    }

    pub fn handle(&self) -> u64 {
        self.handle
    }

    /// Did the open create the file?
    pub fn created(&self) -> bool {
        self.created
    }

    /// Attributes as of the open, or the last write through this handle.
    pub fn cached_attr(&self) -> &Attr {
        &self.attr
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    /// Reads up to `len` bytes at `offset` (fewer at end of file). Does not move the position.
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes> {
        let handle = self.handle;
        read_in_pieces(&self.client, offset, len, |offset, len| Op::Read { handle, offset, len }).await
    }

    /// Reads into `buffer` at the position and advances it. Returns 0 at end of file.
    pub async fn read(&mut self, buffer: &mut [u8]) -> Result<usize> {
        let data = self.read_at(self.position, buffer.len()).await?;
        buffer[..data.len()].copy_from_slice(&data);
        self.position += data.len() as u64;
        Ok(data.len())
    }

    /// Reads from the position to the end of the file.
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let data = self.read_at(self.position, IO_SIZE_MAX as usize).await?;
            if data.is_empty() {
                return Ok(out);
            }
            self.position += data.len() as u64;
            out.extend_from_slice(&data);
        }
    }

    /// Writes all of `data` at `offset` (ignored for append handles). Returns the attributes
    /// after the last piece.
    pub async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<Attr> {
        let attr = self.pwrite(offset, data).await?;
        self.attr = attr.clone();
        Ok(attr)
    }

    /// `write_at` through a shared handle (several writers at once, as the kernel sends them):
    /// the attributes after the last piece are returned, not kept in the handle.
    pub async fn pwrite(&self, offset: u64, data: &[u8]) -> Result<Attr> {
        let mut done = 0;
        loop {
            let piece = &data[done..(done + IO_SIZE_MAX as usize).min(data.len())];
            let op = Op::Write { handle: self.handle, offset: offset + done as u64 };
            let (header, _) = self.client.request(op, Bytes::copy_from_slice(piece)).await?;
            let attr = match header.result? {
                Reply::Written { len, attr } => {
                    if len as usize != piece.len() {
                        return Err(Error::new(Errno::EIO, format!("short write: {len} of {}", piece.len())));
                    }
                    // The writer's own change: its reply leases the new attributes to this client.
                    self.client.remember_attr(&attr, &header.grants);
                    attr
                }
                other => {
                    return Err(Error::new(Errno::EPROTO, format!("unexpected reply {other:?}")));
                }
            };
            done += piece.len();
            if done >= data.len() {
                return Ok(attr);
            }
        }
    }

    /// Writes all of `data` at the position (at the end for append handles) and advances it.
    pub async fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let attr = self.write_at(self.position, data).await?;
        self.position =
            if self.flags.contains(OpenFlags::APPEND) { attr.size } else { self.position + data.len() as u64 };
        Ok(())
    }

    /// Moves the position, as `lseek`. `End` asks the server for the size.
    pub async fn seek(&mut self, to: std::io::SeekFrom) -> Result<u64> {
        let base = match to {
            std::io::SeekFrom::Start(offset) => {
                self.position = offset;
                return Ok(offset);
            }
            std::io::SeekFrom::Current(delta) => (self.position, delta),
            std::io::SeekFrom::End(delta) => (self.metadata().await?.size, delta),
        };
        let position =
            base.0.checked_add_signed(base.1).ok_or(Error::new(Errno::EINVAL, "seek before the start of the file"))?;
        self.position = position;
        Ok(position)
    }

    pub async fn metadata(&mut self) -> Result<Attr> {
        self.attr = self.client.getattr(self.attr.ino).await?;
        Ok(self.attr.clone())
    }

    pub async fn set_len(&mut self, size: u64) -> Result<Attr> {
        // Through the handle: allowed as its open was, as ftruncate(2) is.
        let set = SetAttrIn { size: Some(size), handle: Some(self.handle), ..Default::default() };
        self.attr = self.client.setattr(self.attr.ino, set).await?;
        Ok(self.attr.clone())
    }

    /// Makes the file's data and metadata durable.
    pub async fn fsync(&self) -> Result<()> {
        match self.client.call(Op::Fsync { handle: self.handle }, Bytes::new()).await?.0 {
            Reply::Done => Ok(()),
            other => Err(Error::new(Errno::EPROTO, format!("unexpected reply {other:?}"))),
        }
    }

    /// Releases the handle on the server. The close of a handle that could write answers the
    /// file's attributes with a lease on them, which the cache keeps.
    pub async fn close(mut self) -> Result<()> {
        self.closed = true;
        self.client.close_handle(self.handle).await
    }
}

impl Drop for File {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // Without a runtime (the process is ending) the session's end releases the handle.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let handle = self.handle;
            runtime.spawn(async move {
                let _ = client.close_handle(handle).await;
            });
        }
    }
}

/// Reads up to `len` bytes at `offset` in calls of at most `IO_SIZE_MAX` (`op` makes each call's
/// op from its offset and length); fewer at end of file.
pub(crate) async fn read_in_pieces(
    client: &Client,
    offset: u64,
    len: usize,
    op: impl Fn(u64, u32) -> Op,
) -> Result<Bytes> {
    let mut out = Vec::new();
    while out.len() < len {
        let want = (len - out.len()).min(IO_SIZE_MAX as usize) as u32;
        let data = match client.call(op(offset + out.len() as u64, want), Bytes::new()).await? {
            (Reply::Data, data) => data,
            (other, _) => {
                return Err(Error::new(Errno::EPROTO, format!("unexpected reply {other:?}")));
            }
        };
        if data.len() > want as usize {
            return Err(Error::new(Errno::EPROTO, "server returned more than asked"));
        }
        if out.is_empty() && data.len() == len {
            return Ok(data);
        }
        let short = data.len() < want as usize;
        out.extend_from_slice(&data);
        if short {
            break;
        }
    }
    Ok(Bytes::from(out))
}
