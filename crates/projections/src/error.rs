use thiserror::Error;

#[derive(Debug, Error)]
pub enum ViewError {
    #[error("view store {path}: {source}")]
    Db { path: String, source: Box<redb::Error> },
    #[error("view store: {0}")]
    Store(String),
    /// The view store's file failed a read or write (a full disk, an I/O
    /// error) or is closed after one: redb refuses the file until it is
    /// reopened ([`crate::ViewStore::reopen`]).
    #[error("view store i/o: {0}")]
    Io(String),
    /// The store's disk is below its free-space reserve: the runner does
    /// not write until space is freed (reads keep working, the view lags).
    #[error(
        "view store {path}: disk nearly full ({free} bytes free, below the reserve of {reserve}); the view waits for space"
    )]
    DiskLow { path: String, free: u64, reserve: u64 },
    #[error("view row {table}: {reason}")]
    Corrupt { table: String, reason: String },
    #[error("log: {0}")]
    Log(#[from] eventlog::LogError),
    #[error("keys: {0}")]
    Keys(#[from] keystore::KeyError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for ViewError {
            fn from(e: $t) -> Self {
                let e = redb::Error::from(e);
                match e {
                    redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed => {
                        ViewError::Io(e.to_string())
                    }
                    other => ViewError::Store(other.to_string()),
                }
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl ViewError {
    /// The store's file failed on the disk (or is closed after that): the
    /// store must be reopened before it serves again.
    pub fn is_io(&self) -> bool {
        match self {
            ViewError::Io(_) => true,
            ViewError::Db { source, .. } => {
                matches!(**source, redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed)
            }
            _ => false,
        }
    }
}
