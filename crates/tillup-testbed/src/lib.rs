//! Throwaway services for tests and benchmarks: each is started in its own
//! temporary folder, reachable only from this machine, and stopped (its
//! folder removed) when dropped. Nothing here touches a system-wide
//! instance.
//!
//! `scripts/setup` installs what they run: PostgreSQL from Debian, and
//! moto's S3 server from PyPI.
#![deny(missing_docs)]

mod postgres;
mod s3;

pub use postgres::Postgres;
pub use s3::S3;

use std::path::PathBuf;

/// Why a service could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program it needs is not installed.
    #[error("{what} is not installed ({looked}); run scripts/setup")]
    Missing {
        /// The program.
        what: &'static str,
        /// Where it was looked for.
        looked: String,
    },
    /// A command failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command.
        command: String,
        /// Its status and output.
        detail: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The service did not become ready in time.
    #[error("{what} did not start within {seconds} s; its log: {log}")]
    NotReady {
        /// The service.
        what: &'static str,
        /// How long it was given.
        seconds: u64,
        /// The end of its log.
        log: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The last `n` bytes of a file, as text (for error messages).
fn tail(path: &PathBuf, n: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(n);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}
