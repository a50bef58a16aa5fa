//! tillup's domain, shared by the server, the agent and the listener.
//!
//! **Architecture invariant:** this crate does no I/O and knows nothing of
//! tokio, HTTP or Tauri. Time comes in as an argument; effects go out as
//! values.

pub mod api;
pub mod hash;
pub mod install;
pub mod keys;
pub mod log;
pub mod manifest;
pub mod openapi;
pub mod pairing;
pub mod path;
pub mod report;
pub mod roles;
pub mod rollout;
pub mod selfupdate;
pub mod sign;
pub mod upgrade;

pub use hash::Sha256Hex;
pub use manifest::{FileEntry, Manifest};
pub use path::RelPath;

/// An error and its causes on one line, each cause once: many messages
/// already quote their cause (`cannot read FILE: No such file`), and
/// printing the chain as is would say it twice. Binaries print their
/// errors with this.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Outer {
        path: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("the config")]
    struct Quiet(#[source] Outer);

    #[test]
    fn each_cause_is_said_once() {
        let e = Quiet(Outer {
            path: "a.toml",
            source: std::io::Error::other("no such file"),
        });
        assert_eq!(
            super::error_chain(&e),
            "the config: cannot read a.toml: no such file"
        );
    }
}
