use thiserror::Error;

#[derive(Debug, Error)]
pub enum ViewError {
    #[error("view store {path}: {source}")]
    Db { path: String, source: Box<redb::Error> },
    #[error("view store: {0}")]
    Store(String),
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
                ViewError::Store(e.to_string())
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
