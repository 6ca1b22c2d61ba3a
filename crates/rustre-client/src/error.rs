use rustre_proto::{Errno, WireError};

/// Every error of the library carries the errno an application would see from a local file
/// system, and a message saying what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub errno: Errno,
    pub message: String,
}

impl Error {
    pub fn new(errno: Errno, message: impl Into<String>) -> Error {
        Error { errno, message: message.into() }
    }

    pub fn from_errno(errno: Errno) -> Error {
        Error { errno, message: errno.to_string() }
    }

    /// Prefixes the message with what was being done (`"stat /a/b"`).
    pub fn context(self, what: impl std::fmt::Display) -> Error {
        Error { errno: self.errno, message: format!("{what}: {}", self.message) }
    }

    pub fn errno(&self) -> Errno {
        self.errno
    }
}

impl From<Errno> for Error {
    fn from(errno: Errno) -> Self {
        Error::from_errno(errno)
    }
}

impl From<WireError> for Error {
    fn from(error: WireError) -> Self {
        Error { errno: error.errno, message: error.message }
    }
}

impl From<Error> for std::io::Error {
    fn from(error: Error) -> Self {
        std::io::Error::new(std::io::Error::from_raw_os_error(error.errno.0).kind(), error)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
