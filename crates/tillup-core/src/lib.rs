//! tillup's domain, shared by the server, the agent and the listener.
//!
//! **Architecture invariant:** this crate does no I/O and knows nothing of
//! tokio, HTTP or Tauri. Time comes in as an argument; effects go out as
//! values.

pub mod api;
pub mod hash;
pub mod log;
pub mod manifest;
pub mod path;
pub mod sign;
pub mod upgrade;

pub use hash::Sha256Hex;
pub use manifest::{FileEntry, Manifest};
pub use path::RelPath;
