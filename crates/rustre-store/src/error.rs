use rustre_proto::Errno;

/// Errors of the store. `Fs` is an ordinary file-system answer (ENOENT, EEXIST, ...) and changes
/// nothing; every other variant is a failure of the store itself, after which it stops (fail-stop).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{0}")]
    Fs(Errno),
    #[error("metadata store: {0}")]
    Storage(#[from] redb::Error),
    #[error("data directory {dir} is in use by another rustre server ({holder})")]
    Locked { dir: String, holder: String },
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("the store has stopped after an earlier failure; restart the server")]
    Stopped,
    #[error("a change failed inside the store and its batch was rolled back: {0}")]
    Aborted(String),
}

impl StoreError {
    /// The errno a client sees for this error.
    pub fn errno(&self) -> Errno {
        match self {
            StoreError::Fs(errno) => *errno,
            StoreError::Io { source, .. } => Errno::from_io(source),
            _ => Errno::EIO,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io { context: context.into(), source }
    }
}

impl From<Errno> for StoreError {
    fn from(errno: Errno) -> Self {
        StoreError::Fs(errno)
    }
}

macro_rules! from_redb {
    ($($error:ty),*) => {
        $(impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                StoreError::Storage(error.into())
            }
        })*
    };
}

from_redb!(
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
