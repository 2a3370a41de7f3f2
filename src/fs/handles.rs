//! Open file and directory handles. Numbers come from a counter and are never reused, so a
//! stale number can only miss. A handle is looked up, its `Arc` cloned and the table lock
//! dropped before any work on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::error::{FsError, FsResult};

pub struct HandleTable<T> {
    next: AtomicU64,
    open: RwLock<HashMap<u64, Arc<T>>>,
}

impl<T> HandleTable<T> {
    pub fn new() -> Self {
        HandleTable {
            next: AtomicU64::new(1),
            open: RwLock::new(HashMap::new()),
        }
    }

    pub fn insert(&self, handle: T) -> u64 {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.write().insert(number, Arc::new(handle));
        number
    }

    pub fn get(&self, number: u64) -> FsResult<Arc<T>> {
        self.open
            .read()
            .get(&number)
            .cloned()
            .ok_or_else(|| unknown(number))
    }

    pub fn remove(&self, number: u64) -> FsResult<Arc<T>> {
        self.open
            .write()
            .remove(&number)
            .ok_or_else(|| unknown(number))
    }

    /// Any open handle that `matches`; a scan, for the rare requests that come without one.
    pub fn find(&self, matches: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        self.open
            .read()
            .values()
            .find(|handle| matches(handle))
            .cloned()
    }
}

fn unknown(number: u64) -> FsError {
    FsError::refused(libc::EBADF, format!("file handle {number} is not open"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_never_reused() {
        let table = HandleTable::new();
        let first = table.insert("a");
        assert_eq!(*table.get(first).unwrap(), "a");
        assert_eq!(*table.remove(first).unwrap(), "a");
        let second = table.insert("b");
        assert_ne!(first, second);
        assert_eq!(table.get(first).unwrap_err().errno(), libc::EBADF);
        assert_eq!(table.remove(first).unwrap_err().errno(), libc::EBADF);
    }

    #[test]
    fn find_scans_the_open_handles() {
        let table = HandleTable::new();
        table.insert(3);
        let four = table.insert(4);
        assert_eq!(table.find(|&n| n % 2 == 0).as_deref(), Some(&4));
        table.remove(four).unwrap();
        assert_eq!(table.find(|&n| n % 2 == 0), None);
    }
}
