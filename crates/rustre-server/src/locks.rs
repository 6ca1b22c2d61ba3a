//! Per-inode data locks. Data writes and size changes (truncate, and the O_TRUNC of an open)
//! of one file exclude each other and reads; reads share. This keeps the data object and the
//! recorded size in step: a writer holds the lock from reading the size, through the object
//! write, to the commit of the new size, so no size change can come in between.
//!
//! Entries exist only while someone holds or waits for them, so the table is bounded by the
//! number of requests in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

#[derive(Default)]
pub struct InodeLocks {
    table: Mutex<HashMap<u64, Arc<RwLock<()>>>>,
}

enum Held {
    Shared(#[allow(dead_code)] OwnedRwLockReadGuard<()>),
    Exclusive(#[allow(dead_code)] OwnedRwLockWriteGuard<()>),
}

pub struct InodeGuard<'a> {
    locks: &'a InodeLocks,
    ino: u64,
    lock: Arc<RwLock<()>>,
    held: Option<Held>,
}

impl InodeLocks {
    fn entry(&self, ino: u64) -> Arc<RwLock<()>> {
        self.table.lock().expect("inode lock table").entry(ino).or_default().clone()
    }

    pub async fn shared(&self, ino: u64) -> InodeGuard<'_> {
        let lock = self.entry(ino);
        let held = Held::Shared(lock.clone().read_owned().await);
        InodeGuard { locks: self, ino, lock, held: Some(held) }
    }

    pub async fn exclusive(&self, ino: u64) -> InodeGuard<'_> {
        let lock = self.entry(ino);
        let held = Held::Exclusive(lock.clone().write_owned().await);
        InodeGuard { locks: self, ino, lock, held: Some(held) }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap().len()
    }
}

impl Drop for InodeGuard<'_> {
    fn drop(&mut self) {
        self.held = None;
        let mut table = self.locks.table.lock().expect("inode lock table");
        // Clones are taken only under the table lock, so the count is stable here: the table's
        // copy and ours mean nobody else holds or waits for this inode.
        if Arc::strong_count(&self.lock) == 2 {
            table.remove(&self.ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The table forgets an inode once its last holder is gone, and exclusive excludes shared.
    #[tokio::test]
    async fn entries_go_away_and_exclusion_holds() {
        let locks = InodeLocks::default();
        {
            let _a = locks.shared(7).await;
            let _b = locks.shared(7).await;
            assert_eq!(locks.len(), 1);
        }
        assert_eq!(locks.len(), 0);
        let writer = locks.exclusive(7).await;
        let blocked = tokio::time::timeout(std::time::Duration::from_millis(50), locks.shared(7)).await;
        assert!(blocked.is_err(), "a shared lock waits for the exclusive holder");
        drop(writer);
        let _reader = locks.shared(7).await;
        assert_eq!(locks.len(), 1);
    }
}
