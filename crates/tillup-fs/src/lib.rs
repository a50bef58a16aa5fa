//! tillup's disk layer, shared by the server, the agent and the listener.
//!
//! Everything here is synchronous `std::fs`; async callers wrap it in
//! `spawn_blocking`. Nothing here trusts a path: folders are addressed with
//! [`tillup_core::RelPath`] and blobs with their verified digest.

use std::io;
use std::path::{Path, PathBuf};

pub mod archive;
mod atomic;
mod batch;
mod blobs;
pub mod fault;
mod private;
mod scan;

pub use archive::{ArchiveError, ZipLimits, extract_zip, extract_zip_file};
pub use atomic::{fsync_dir, remove_file_if_exists, write_atomic, write_json_atomic};
pub use batch::{Batch, Incoming};
pub use blobs::BlobStore;
pub use private::{keep_new_files_private, private_dir};
pub use scan::{HashCache, copy_verified, hash_file, link_tree, materialize, scan_folder};

/// An I/O failure, with the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path}: expected SHA-256 {expected}, got {actual}; the file is incomplete or altered and was not kept"
    )]
    HashMismatch {
        path: PathBuf,
        expected: tillup_core::Sha256Hex,
        actual: tillup_core::Sha256Hex,
    },
    #[error(
        "{path}: expected {expected} bytes, got {actual}; the file is incomplete and was not kept"
    )]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{path} is a symbolic link (to {}); links are not allowed in a program folder because they could point outside it: replace it with the file or folder itself",
        target.display()
    )]
    Symlink { path: PathBuf, target: PathBuf },
    #[error("{path}: the name is not valid UTF-8 or not a safe relative path: {reason}")]
    BadName { path: PathBuf, reason: String },
    #[error("blob {0} is not in the store")]
    MissingBlob(tillup_core::Sha256Hex),
    #[error(
        "{path}: the upload resumes at byte {offset}, but {held} bytes of it are held; resume at byte {held}"
    )]
    WrongOffset {
        path: PathBuf,
        held: u64,
        offset: u64,
    },
    #[error(
        "{path}: the transfer was cut after {held} bytes ({source}); they are kept, resume from there"
    )]
    TransferCut {
        path: PathBuf,
        held: u64,
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Attaches a path to an `io::Error`.
pub trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T, Error>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &Path) -> Result<T, Error> {
        self.map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// Free bytes on the file system holding `path`.
pub fn free_space(path: &Path) -> Result<u64, Error> {
    fs4::available_space(path).at(path)
}

/// `root` joined with a checked relative path.
pub fn join(root: &Path, rel: &tillup_core::RelPath) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(rel.components());
    p
}
