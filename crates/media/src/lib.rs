//! Media blobs: pictures, files and video of Sessions.
//!
//! Two layers. [`sealed`] is the byte format of a blob at rest: a header
//! and the plaintext cut into fixed-size chunks, each sealed with
//! AES-256-GCM under the blob's own media key, with the blob's ids, size
//! and the chunk's index in the AAD (so chunks cannot be reordered, dropped,
//! or moved between blobs). [`BlobStore`] is the port the sealed bytes are
//! kept behind: the embedded [`FileBlobStore`] in the data directory, and
//! an S3-compatible store behind the `s3` feature. A store only ever sees
//! ciphertext; keys live in the key store, so shredding a media key erases
//! the blob wherever its bytes still are (backups included).
//!
//! The format and the guarantees of each store are in `docs/media.md`.

pub mod conformance;
pub mod file;
#[cfg(feature = "s3")]
pub mod s3;
pub mod sealed;
pub mod store;

pub use file::FileBlobStore;
pub use sealed::{CHUNK_SIZE, Decryptor, Encryptor, FormatError, Header};
pub use store::{BlobError, BlobId, BlobReader, BlobStore, BlobWriter};
