//! File contents: one object per regular-file inode, behind `ObjectStore`.
//!
//! **Architecture Invariant**: the inode record's `size` is the file's size. Bytes of an object
//! beyond that size are garbage (left by a truncate, or by a write whose size update was lost in a
//! crash) and are never returned: reads stop at the recorded size, and whoever extends a file past
//! its size first cuts the object back to it (`set_len`), so a hole always reads as zeros.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Open object files kept for reuse; beyond this, half the cache is closed.
pub const OBJECT_FDS_CACHED_MAX: usize = 512;

pub trait ObjectStore: Send + Sync + 'static {
    /// Fills `buffer` from `offset`; returns the bytes read, short at the object's end. A
    /// missing object reads as empty.
    fn read_at(&self, ino: u64, offset: u64, buffer: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `data` at `offset`, creating the object if needed.
    fn write_at(&self, ino: u64, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Sets the object's length. A missing object stays missing (it reads as zeros anyway).
    fn set_len(&self, ino: u64, len: u64) -> io::Result<()>;
    /// The object's length (0 when it does not exist).
    fn len(&self, ino: u64) -> io::Result<u64>;
    /// Makes the object's contents durable.
    fn sync(&self, ino: u64) -> io::Result<()>;
    /// Removes the object; a missing one is fine.
    fn remove(&self, ino: u64) -> io::Result<()>;
}

/// Objects as files under a local directory: `objects/<ino % 256 as 2 hex>/<ino as 16 hex>`.
pub struct LocalObjects {
    root: PathBuf,
    open: Mutex<HashMap<u64, Arc<File>>>,
}

impl LocalObjects {
    pub fn open(root: &Path) -> io::Result<LocalObjects> {
        for shard in 0..256 {
            std::fs::create_dir_all(root.join(format!("{shard:02x}")))?;
        }
        Ok(LocalObjects { root: root.to_path_buf(), open: Mutex::new(HashMap::new()) })
    }

    fn path(&self, ino: u64) -> PathBuf {
        self.root.join(format!("{:02x}", ino % 256)).join(format!("{ino:016x}"))
    }

    /// The object's open file; `None` when it does not exist and `create` is false.
    fn file(&self, ino: u64, create: bool) -> io::Result<Option<Arc<File>>> {
        if let Some(file) = self.open.lock().expect("object cache lock").get(&ino) {
            return Ok(Some(file.clone()));
        }
        let file = match OpenOptions::new().read(true).write(true).create(create).truncate(false).open(self.path(ino)) {
            Ok(file) => Arc::new(file),
            Err(error) if error.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut open = self.open.lock().expect("object cache lock");
        if open.len() >= OBJECT_FDS_CACHED_MAX {
            let victims: Vec<u64> = open.keys().take(OBJECT_FDS_CACHED_MAX / 2).copied().collect();
            for victim in victims {
                open.remove(&victim);
            }
        }
        Ok(Some(open.entry(ino).or_insert(file).clone()))
    }
}

impl ObjectStore for LocalObjects {
    fn read_at(&self, ino: u64, offset: u64, buffer: &mut [u8]) -> io::Result<usize> {
        let Some(file) = self.file(ino, false)? else {
            return Ok(0);
        };
        let mut done = 0;
        while done < buffer.len() {
            match file.read_at(&mut buffer[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(read) => done += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(done)
    }

    fn write_at(&self, ino: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        let file = self.file(ino, true)?.expect("created on demand");
        file.write_all_at(data, offset)
    }

    fn set_len(&self, ino: u64, len: u64) -> io::Result<()> {
        // A missing object reads as zeros at any length already: nothing to cut, nothing to make.
        match self.file(ino, false)? {
            Some(file) => file.set_len(len),
            None => Ok(()),
        }
    }

    fn len(&self, ino: u64) -> io::Result<u64> {
        match self.file(ino, false)? {
            Some(file) => Ok(file.metadata()?.len()),
            None => Ok(0),
        }
    }

    fn sync(&self, ino: u64) -> io::Result<()> {
        match self.file(ino, false)? {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }

    fn remove(&self, ino: u64) -> io::Result<()> {
        self.open.lock().expect("object cache lock").remove(&ino);
        match std::fs::remove_file(self.path(ino)) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}
