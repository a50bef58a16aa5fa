//! `tillup-server`: the chain's update server (DESIGN §5).
//!
//! It publishes releases (files and manifests into a content-addressed
//! [`tillup_fs::BlobStore`]), signs one version log per channel in the
//! minisign format, and serves an HTTP API to the stores' listeners: the
//! log, blobs with Range, backup upload, per-terminal processing
//! (DESIGN §3.5) and reports.
//!
//! **Architecture invariant:** state lives behind [`db::Db`] and files behind
//! [`tillup_fs::BlobStore`]; no handler writes SQL or touches blob paths, so
//! PostgreSQL and an S3-compatible store can replace them.
#![deny(missing_docs)]

pub mod access;
pub mod admin;
mod backups;
pub mod catalog;
pub mod dashboard;
pub mod data;
pub mod db;
pub mod error;
pub mod export;
pub mod fleet;
pub mod http;
pub mod jobs;
pub mod keylist;
pub mod openapi;
pub mod ops;
pub mod packs;
mod parallel;
pub mod people;
pub mod rollouts;
pub mod storage;

pub use data::{DataDir, KeySource};
pub use db::{Db, Location};
pub use error::Error;
pub use http::{AppError, AppState, Limits, app, serve};
pub use storage::{BlobsLocation, Storage};
