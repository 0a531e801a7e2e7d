//! The run lock: at most one batch job run writes to a database at a time.
//!
//! The lock is an advisory lock on a file beside the database (`<db>.lock`). The operating
//! system releases it when the holder exits for any reason, so a crashed or killed run
//! never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// A held run lock; released on drop.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another run holds it.
    #[error("another run holds the lock {}", .0.display())]
    Held(PathBuf),
    /// The lock file could not be opened or locked.
    #[error("cannot lock {}", .0.display())]
    Io(PathBuf, #[source] std::io::Error),
}

impl RunLock {
    /// The path of the lock file guarding `db`.
    pub fn path_for(db: &Path) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Takes the lock guarding `db` without waiting.
    pub fn try_acquire(db: &Path) -> Result<RunLock, LockError> {
        let path = Self::path_for(db);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| LockError::Io(path.clone(), e))?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(LockError::Held(path)),
            Err(TryLockError::Error(e)) => Err(LockError::Io(path, e)),
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("p.db");

        let first = RunLock::try_acquire(&db).unwrap();
        let second = RunLock::try_acquire(&db);
        drop(first);
        let third = RunLock::try_acquire(&db);

        assert!(matches!(second, Err(LockError::Held(_))));
        assert!(third.is_ok());
    }
}
