//! rustre's persistent namespace: metadata in redb tables, file contents as data objects, and
//! the group committer that applies changes. See `docs/storage.md`.

pub mod access;
mod commit;
mod error;
mod fsck;
mod namespace;
mod objects;
mod record;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable};

/// Makes the storage backend of the metadata database each time a store opens (a restart opens
/// a new one on the same medium). Tests and the simulator only.
pub type MetadataBackend = std::sync::Arc<dyn Fn() -> Box<dyn redb::StorageBackend> + Send + Sync>;

/// A backend chosen at run time (redb takes a concrete type).
#[derive(Debug)]
struct BoxedBackend(Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for BoxedBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.0.close()
    }
}
use rustre_proto::Timestamp;
use rustre_proto::clock::Clock;

pub use commit::{COMMIT_BATCH_MAX, COMMIT_QUEUE_DEPTH, CommitMode, CommitStats, Committer};
pub use error::{Result, StoreError};
pub use fsck::{LOST_AND_FOUND, PROBLEMS_LISTED_MAX, Problem, Report, fsck};
pub use namespace::{Dirent, LINK_COUNT_MAX, Ns, Opened, ReadNs, Walked};
pub use objects::{LocalObjects, ObjectStore};
pub use record::InodeRecord;

/// What the store recorded of a request that changed it (`record::ONCE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnceMarker {
    /// The request's sequence number on its slot.
    pub seq: u64,
    /// The inode it made, opened, linked, changed or wrote (0: none).
    pub subject: u64,
    /// It made its subject.
    pub made: bool,
    /// A later step of the request committed too (an open's truncate): a resend must not run
    /// it again.
    pub followed: bool,
    /// The subject's attributes right after the change (if it had a subject).
    pub attr: Option<rustre_proto::Attr>,
}

/// The metadata database and data objects of one data directory, held exclusively.
pub struct Store {
    dir: PathBuf,
    db: Arc<Database>,
    objects: Arc<dyn ObjectStore>,
    boot: u64,
    /// Holds the directory's lock for as long as the store lives.
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`. Refuses with `StoreError::Locked` when
    /// another server holds the directory.
    pub fn open(dir: &Path, clock: &dyn Clock) -> Result<Store> {
        Store::open_with(dir, clock, None, None)
    }

    /// `open`, with the metadata database on `backend` instead of `dir/meta.redb` when given,
    /// and the data objects in `objects` instead of `LocalObjects` under `dir/objects/` when
    /// given: the simulator's disk and object store, which lose unsynced writes when their power
    /// goes. The directory still holds the lock.
    pub fn open_with(
        dir: &Path,
        clock: &dyn Clock,
        backend: Option<Box<dyn redb::StorageBackend>>,
        objects: Option<Arc<dyn ObjectStore>>,
    ) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|error| StoreError::io(format!("creating {}", dir.display()), error))?;
        let lock = lock_directory(dir)?;
        // Every page's checksum is verified at open: a store altered outside redb (a disk fault)
        // is refused with a clear error instead of being served (or making redb panic).
        let mut builder = Database::builder();
        builder.set_check_integrity_on_open(true);
        let db = match backend {
            Some(backend) => builder.create_with_backend(BoxedBackend(backend)),
            None => builder.create(dir.join("meta.redb")),
        }
        .map_err(|error| match error {
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)) => StoreError::Corrupt(format!(
                "{}/meta.redb failed its integrity check ({why}); run `rustre fsck --data {}` on a copy, or restore it",
                dir.display(),
                dir.display()
            )),
            other => other.into(),
        })?;
        let objects: Arc<dyn ObjectStore> = match objects {
            Some(objects) => objects,
            None => Arc::new(
                LocalObjects::open(&dir.join("objects"))
                    .map_err(|error| StoreError::io(format!("opening {}/objects", dir.display()), error))?,
            ),
        };
        let txn = db.begin_write()?;
        let now = Timestamp::from_system_time(clock.now());
        let boot = namespace::initialize(&txn, now)?;
        let removed = namespace::remove_doomed(&txn, objects.as_ref())?;
        let cut = namespace::finish_cuts(&txn, objects.as_ref())?;
        let restored = namespace::reconcile_writable(&txn, objects.as_ref(), now)?;
        txn.commit()?;
        tracing::info!(dir = %dir.display(), boot, removed, cut, restored, "store opened");
        Ok(Store { dir: dir.to_path_buf(), db: Arc::new(db), objects, boot, _lock: lock })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many times this store has been opened, this time included.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// A consistent snapshot of the namespace as last committed.
    pub fn read(&self) -> Result<ReadNs> {
        ReadNs::new(&self.db.begin_read()?)
    }

    /// The client sessions the store remembers (see `record::SESSIONS`).
    pub fn sessions(&self) -> Result<Vec<u64>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(record::SESSIONS)?;
        let mut sessions = Vec::new();
        for item in table.iter()? {
            sessions.push(item?.0.value());
        }
        Ok(sessions)
    }

    /// The last request of `session`'s `slot` that changed the store (see `record::ONCE`).
    pub fn once_marker(&self, session: u64, slot: u32) -> Result<Option<OnceMarker>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(record::ONCE)?;
        let Some(value) = table.get((session, slot))? else { return Ok(None) };
        let (seq, subject, flags, record) = value.value();
        let attr = match record.is_empty() {
            true => None,
            false => Some(record::InodeRecord::decode(subject, record)?.attr(subject)),
        };
        Ok(Some(OnceMarker {
            seq,
            subject,
            made: flags & record::ONCE_MADE != 0,
            followed: flags & record::ONCE_FOLLOWED != 0,
            attr,
        }))
    }

    /// Every inode a `ONCE` row says its request opened, with the row's (session, slot): a
    /// restarted server keeps each one until that slot's resend is answered (or its session
    /// ends), so the resend gets its new handle on the inode its first run opened even if
    /// another change has unlinked it since.
    pub fn once_opened(&self) -> Result<Vec<((u64, u32), u64)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(record::ONCE)?;
        let mut opened = Vec::new();
        for item in table.iter()? {
            let (key, row) = item?;
            let (_, subject, flags, _) = row.value();
            if subject != 0 && flags & record::ONCE_OPENED != 0 {
                opened.push((key.value(), subject));
            }
        }
        Ok(opened)
    }

    pub fn objects(&self) -> &Arc<dyn ObjectStore> {
        &self.objects
    }

    /// Starts the writer thread, which owns `state` from now on.
    pub fn start_committer<S: Send + 'static>(&self, clock: Arc<dyn Clock>, state: S) -> Committer<S> {
        self.start_committer_in(CommitMode::Thread, clock, state)
    }

    /// The writer without a thread: each operation is committed on the caller's task, alone
    /// (tests; see `commit.rs`).
    pub fn start_inline_committer<S: Send + 'static>(&self, clock: Arc<dyn Clock>, state: S) -> Committer<S> {
        self.start_committer_in(CommitMode::Inline, clock, state)
    }

    /// Starts the writer in `mode`, which owns `state` from now on. `CommitMode::Task` spawns it
    /// on the current tokio runtime, so it must be called inside one (as `tokio::spawn`).
    pub fn start_committer_in<S: Send + 'static>(
        &self,
        mode: CommitMode,
        clock: Arc<dyn Clock>,
        state: S,
    ) -> Committer<S> {
        Committer::start(self.db.clone(), self.objects.clone(), clock, self.boot, state, mode)
    }
}

/// Takes an exclusive `flock` on `DIR/LOCK` and writes our pid into it, so a second server on the
/// same directory is refused with a message naming the holder.
fn lock_directory(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|error| StoreError::io(format!("opening {}", path.display()), error))?;
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "unknown process".to_string(),
            pid => format!("pid {pid}"),
        };
        return Err(StoreError::Locked { dir: dir.display().to_string(), holder });
    }
    let pid = std::process::id().to_string();
    let written = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(pid.as_bytes()));
    written.map_err(|error| StoreError::io(format!("writing {}", path.display()), error))?;
    Ok(file)
}
