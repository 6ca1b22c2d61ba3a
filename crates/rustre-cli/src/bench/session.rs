//! What `rustre bench` measures through: a client session of the library, or a directory of any
//! file system reached by system calls. Both are driven from plain threads, one call at a time,
//! so that the two are measured the same way: a library call is run to completion on the
//! calling thread (`Handle::block_on`), which for a cached answer never leaves that thread.

use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustre_client::{Client, OpenOptions};

/// A failed call: what failed, on what, and why.
#[derive(Debug)]
pub struct Failure(pub String);

impl From<rustre_client::Error> for Failure {
    fn from(error: rustre_client::Error) -> Self {
        Failure(format!("{} ({})", error.message, error.errno.name()))
    }
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Failure {
    let message = format!("{what} {}", path.display());
    move |error| Failure(format!("{message}: {error}"))
}

/// How `Session::open_file` opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    /// For writing, created if missing and truncated.
    Create,
    /// For writing what is there.
    Update,
}

/// One client of the file system under test. Paths are relative to the session's root.
pub trait Session: Send + Sync {
    /// `open(O_CREAT|O_EXCL|O_WRONLY, 0644)` and close.
    fn create(&self, path: &str) -> Result<(), Failure>;
    fn stat(&self, path: &str) -> Result<(), Failure>;
    /// `open(O_RDONLY)` and close.
    fn open_close(&self, path: &str) -> Result<(), Failure>;
    fn rename(&self, from: &str, to: &str) -> Result<(), Failure>;
    fn unlink(&self, path: &str) -> Result<(), Failure>;
    fn mkdir(&self, path: &str) -> Result<(), Failure>;
    fn rmdir(&self, path: &str) -> Result<(), Failure>;
    fn chmod(&self, path: &str, mode: u32) -> Result<(), Failure>;
    /// Lists a directory, and with `stat_each` stats every entry too (`ls -l`); returns how
    /// many entries it holds.
    fn list(&self, path: &str, stat_each: bool) -> Result<u64, Failure>;
    fn open_file(&self, path: &str, access: Access) -> Result<Box<dyn Handle + '_>, Failure>;
    /// Removes a directory and everything below it; absent is fine.
    fn remove_all(&self, path: &str) -> Result<(), Failure>;
    /// Requests this session has sent to a server so far by kind, where that is known.
    fn requests_sent(&self) -> Option<Vec<(&'static str, u64)>>;
}

/// An open file.
pub trait Handle {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Failure>;
    /// Reads up to `buffer.len()` bytes; returns how many.
    fn read_at(&mut self, offset: u64, buffer: &mut [u8]) -> Result<usize, Failure>;
    fn fsync(&mut self) -> Result<(), Failure>;
    fn close(self: Box<Self>) -> Result<(), Failure>;
}

// ---- any file system, by system calls ----

pub struct DirSession {
    root: PathBuf,
}

impl DirSession {
    pub fn new(root: PathBuf) -> DirSession {
        DirSession { root }
    }

    fn path(&self, path: &str) -> PathBuf {
        if path.is_empty() { self.root.clone() } else { self.root.join(path) }
    }
}

impl Session for DirSession {
    fn create(&self, path: &str) -> Result<(), Failure> {
        let path = self.path(path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(io("create", &path))?;
        Ok(())
    }

    fn stat(&self, path: &str) -> Result<(), Failure> {
        let path = self.path(path);
        std::fs::metadata(&path).map_err(io("stat", &path))?;
        Ok(())
    }

    fn open_close(&self, path: &str) -> Result<(), Failure> {
        let path = self.path(path);
        std::fs::File::open(&path).map_err(io("open", &path))?;
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), Failure> {
        let from = self.path(from);
        std::fs::rename(&from, self.path(to)).map_err(io("rename", &from))
    }

    fn unlink(&self, path: &str) -> Result<(), Failure> {
        let path = self.path(path);
        std::fs::remove_file(&path).map_err(io("unlink", &path))
    }

    fn mkdir(&self, path: &str) -> Result<(), Failure> {
        let path = self.path(path);
        std::fs::create_dir(&path).map_err(io("mkdir", &path))
    }

    fn rmdir(&self, path: &str) -> Result<(), Failure> {
        let path = self.path(path);
        std::fs::remove_dir(&path).map_err(io("rmdir", &path))
    }

    fn chmod(&self, path: &str, mode: u32) -> Result<(), Failure> {
        let path = self.path(path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", &path))
    }

    fn list(&self, path: &str, stat_each: bool) -> Result<u64, Failure> {
        let path = self.path(path);
        let mut count = 0;
        for entry in std::fs::read_dir(&path).map_err(io("readdir", &path))? {
            let entry = entry.map_err(io("readdir", &path))?;
            if stat_each {
                entry.metadata().map_err(io("stat", &entry.path()))?;
            }
            count += 1;
        }
        Ok(count)
    }

    fn open_file(&self, path: &str, access: Access) -> Result<Box<dyn Handle + '_>, Failure> {
        let path = self.path(path);
        let mut options = std::fs::OpenOptions::new();
        match access {
            Access::Read => options.read(true),
            Access::Create => options.write(true).create(true).truncate(true).mode(0o644),
            Access::Update => options.write(true),
        };
        let file = options.open(&path).map_err(io("open", &path))?;
        Ok(Box::new(DirHandle { file, path }))
    }

    fn remove_all(&self, path: &str) -> Result<(), Failure> {
        let path = self.path(path);
        match std::fs::remove_dir_all(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &path)(error)),
            _ => Ok(()),
        }
    }

    fn requests_sent(&self) -> Option<Vec<(&'static str, u64)>> {
        None
    }
}

struct DirHandle {
    file: std::fs::File,
    path: PathBuf,
}

impl Handle for DirHandle {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Failure> {
        self.file.write_all_at(data, offset).map_err(io("write", &self.path))
    }

    fn read_at(&mut self, offset: u64, buffer: &mut [u8]) -> Result<usize, Failure> {
        self.file.read_at(buffer, offset).map_err(io("read", &self.path))
    }

    fn fsync(&mut self) -> Result<(), Failure> {
        self.file.sync_all().map_err(io("fsync", &self.path))
    }

    fn close(self: Box<Self>) -> Result<(), Failure> {
        // std gives no close(2) error; dropping closes.
        Ok(())
    }
}

// ---- rustre through the library ----

pub struct LibrarySession {
    client: Client,
    runtime: tokio::runtime::Handle,
    root: String,
}

impl LibrarySession {
    pub fn new(client: Client, runtime: tokio::runtime::Handle, root: &str) -> LibrarySession {
        LibrarySession { client, runtime, root: root.trim_end_matches('/').to_string() }
    }

    fn path(&self, path: &str) -> String {
        if path.is_empty() { self.root.clone() } else { format!("{}/{path}", self.root) }
    }

    fn wait<T>(&self, future: impl Future<Output = rustre_client::Result<T>>) -> Result<T, Failure> {
        self.runtime.block_on(future).map_err(Failure::from)
    }
}

impl Session for LibrarySession {
    fn create(&self, path: &str) -> Result<(), Failure> {
        let path = self.path(path);
        let file = self.wait(self.client.open(&path, OpenOptions::new().write(true).create_new(true).mode(0o644)))?;
        self.wait(file.close())
    }

    fn stat(&self, path: &str) -> Result<(), Failure> {
        self.wait(self.client.stat(self.path(path))).map(drop)
    }

    fn open_close(&self, path: &str) -> Result<(), Failure> {
        let file = self.wait(self.client.open(self.path(path), OpenOptions::new().read(true)))?;
        self.wait(file.close())
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), Failure> {
        self.wait(self.client.rename(self.path(from), self.path(to)))
    }

    fn unlink(&self, path: &str) -> Result<(), Failure> {
        self.wait(self.client.remove_file(self.path(path)))
    }

    fn mkdir(&self, path: &str) -> Result<(), Failure> {
        self.wait(self.client.mkdir(self.path(path), 0o755)).map(drop)
    }

    fn rmdir(&self, path: &str) -> Result<(), Failure> {
        self.wait(self.client.remove_dir(self.path(path)))
    }

    fn chmod(&self, path: &str, mode: u32) -> Result<(), Failure> {
        self.wait(self.client.set_permissions(self.path(path), mode)).map(drop)
    }

    fn list(&self, path: &str, stat_each: bool) -> Result<u64, Failure> {
        let path = self.path(path);
        // The library's listing with attributes is one call, as readdirplus is to the kernel.
        let entries = if stat_each {
            self.wait(self.client.read_dir_plus(&path))?
        } else {
            self.wait(self.client.read_dir(&path))?
        };
        Ok(entries.len() as u64)
    }

    fn open_file(&self, path: &str, access: Access) -> Result<Box<dyn Handle + '_>, Failure> {
        let path = self.path(path);
        let mut options = OpenOptions::new();
        match access {
            Access::Read => options.read(true),
            Access::Create => options.write(true).create(true).truncate(true).mode(0o644),
            Access::Update => options.write(true),
        };
        let file = self.wait(self.client.open(&path, &options))?;
        Ok(Box::new(LibraryHandle { session: self, file }))
    }

    fn remove_all(&self, path: &str) -> Result<(), Failure> {
        match self.runtime.block_on(self.client.remove_all(self.path(path))) {
            Err(error) if error.errno != rustre_client::rustre_proto::Errno::ENOENT => Err(error.into()),
            _ => Ok(()),
        }
    }

    fn requests_sent(&self) -> Option<Vec<(&'static str, u64)>> {
        Some(self.client.stats().requests_by_kind)
    }
}

struct LibraryHandle<'a> {
    session: &'a LibrarySession,
    file: rustre_client::File,
}

impl Handle for LibraryHandle<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), Failure> {
        self.session.wait(self.file.pwrite(offset, data)).map(drop)
    }

    fn read_at(&mut self, offset: u64, buffer: &mut [u8]) -> Result<usize, Failure> {
        let data = self.session.wait(self.file.read_at(offset, buffer.len()))?;
        buffer[..data.len()].copy_from_slice(&data);
        Ok(data.len())
    }

    fn fsync(&mut self) -> Result<(), Failure> {
        self.session.wait(self.file.fsync())
    }

    fn close(self: Box<Self>) -> Result<(), Failure> {
        let LibraryHandle { session, file } = *self;
        session.wait(file.close())
    }
}
