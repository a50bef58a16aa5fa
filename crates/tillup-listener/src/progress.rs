//! How far the bytes of a running upgrade have come: what the CLI's bar
//! and the window's progress line show while a long transfer runs (the
//! release over a slow WAN, the release to the terminals), where counting
//! terminals would show nothing moving for minutes.
//!
//! The runner says what it moves and how much ([`Transfers::begin`]) and
//! counts the bytes as they arrive; the CLI and the tray read
//! [`Transfers::now`] whenever they redraw.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What is moving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Moving {
    /// The release and the terminals' folders, to the host (from the
    /// terminals and the server).
    ToHost,
    /// The release, from the host to the terminals.
    ToTerminals,
}

/// Bytes done of bytes to move, and the time left at the rate so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferProgress {
    pub moving: Moving,
    pub done: u64,
    pub total: u64,
    /// Seconds left at the rate so far; `None` until there is a rate.
    pub eta_secs: Option<u64>,
}

/// The running transfer of a listener (one at a time: the phases move
/// one kind of bytes each).
#[derive(Debug, Default)]
pub struct Transfers {
    done: Arc<AtomicU64>,
    current: Mutex<Option<Current>>,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    moving: Moving,
    total: u64,
    /// `done` when it began.
    base: u64,
    since: Instant,
}

/// How long a transfer must have run before its rate makes an estimate.
const RATE_AFTER: Duration = Duration::from_millis(500);

impl Transfers {
    /// Starts counting `total` bytes of `moving`; a transfer of the same
    /// kind already running (several terminals at once) adds to it.
    pub fn begin(&self, moving: Moving, total: u64) {
        let mut cur = self.current.lock().expect("not poisoned");
        match cur.as_mut() {
            Some(c) if c.moving == moving => c.total += total,
            _ => {
                *cur = Some(Current {
                    moving,
                    total,
                    base: self.done.load(Ordering::Relaxed),
                    since: Instant::now(),
                });
            }
        }
    }

    /// The counter the transfers add their bytes to.
    pub fn counter(&self) -> &Arc<AtomicU64> {
        &self.done
    }

    /// Nothing is moving any more.
    pub fn end(&self) {
        *self.current.lock().expect("not poisoned") = None;
    }

    /// Where the running transfer stands, if one runs.
    pub fn now(&self) -> Option<TransferProgress> {
        let c = (*self.current.lock().expect("not poisoned"))?;
        let done = self
            .done
            .load(Ordering::Relaxed)
            .saturating_sub(c.base)
            .min(c.total);
        Some(TransferProgress {
            moving: c.moving,
            done,
            total: c.total,
            eta_secs: eta(done, c.total, c.since.elapsed()),
        })
    }
}

/// Seconds left to move `total` when `done` took `elapsed`.
fn eta(done: u64, total: u64, elapsed: Duration) -> Option<u64> {
    if done == 0 || elapsed < RATE_AFTER {
        return None;
    }
    let rate = done as f64 / elapsed.as_secs_f64();
    Some(((total - done) as f64 / rate).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_follows_the_rate_so_far() {
        assert_eq!(eta(0, 100, Duration::from_secs(5)), None, "no rate yet");
        assert_eq!(eta(50, 100, Duration::from_millis(100)), None, "too soon");
        assert_eq!(eta(25, 100, Duration::from_secs(10)), Some(30));
        assert_eq!(eta(100, 100, Duration::from_secs(10)), Some(0));
    }

    #[test]
    fn transfers_of_one_kind_add_up_and_a_new_kind_starts_afresh() {
        let t = Transfers::default();
        assert_eq!(t.now(), None);
        t.begin(Moving::ToTerminals, 100);
        t.begin(Moving::ToTerminals, 50);
        t.counter().fetch_add(30, Ordering::Relaxed);
        let p = t.now().unwrap();
        assert_eq!((p.moving, p.done, p.total), (Moving::ToTerminals, 30, 150));
        t.begin(Moving::ToHost, 10);
        let p = t.now().unwrap();
        assert_eq!((p.moving, p.done, p.total), (Moving::ToHost, 0, 10));
        t.counter().fetch_add(1000, Ordering::Relaxed);
        assert_eq!(t.now().unwrap().done, 10, "never more than the total");
        t.end();
        assert_eq!(t.now(), None);
    }
}
