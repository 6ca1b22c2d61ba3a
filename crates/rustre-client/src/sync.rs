//! The lock the cache sits behind, in one place, so a model checker can stand in for it: in this
//! crate's unit tests the cache's mutex is shuttle's, and shuttle explores the interleavings of
//! the reader task (grants, revocations) and the application tasks (insertions, reads) around it
//! (`cache.rs`, tests named `interleavings_*`). Elsewhere it is std's.

#[cfg(not(test))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(test)]
pub(crate) use shuttle::sync::{Mutex, MutexGuard};
