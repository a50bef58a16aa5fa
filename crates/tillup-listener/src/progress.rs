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

/// The running transfers of a listener: to the host and to the terminals
/// may run at once (the host gathers the folders while the terminals
/// stage), each counted on its own.
#[derive(Debug, Default)]
pub struct Transfers {
    to_host: Counted,
    to_terminals: Counted,
}

#[derive(Debug, Default)]
struct Counted {
    done: Arc<AtomicU64>,
    current: Mutex<Option<Current>>,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    total: u64,
    /// `done` when it began.
    base: u64,
    since: Instant,
}

/// How long a transfer must have run before its rate makes an estimate.
const RATE_AFTER: Duration = Duration::from_millis(500);

impl Transfers {
    fn of(&self, moving: Moving) -> &Counted {
        match moving {
            Moving::ToHost => &self.to_host,
            Moving::ToTerminals => &self.to_terminals,
        }
    }

    /// Starts counting `total` bytes of `moving`; a transfer of the same
    /// kind already running (several terminals at once) adds to it.
    pub fn begin(&self, moving: Moving, total: u64) {
        let c = self.of(moving);
        let mut cur = c.current.lock().expect("not poisoned");
        match cur.as_mut() {
            Some(running) => running.total += total,
            None => {
                *cur = Some(Current {
                    total,
                    base: c.done.load(Ordering::Relaxed),
                    since: Instant::now(),
                });
            }
        }
    }

    /// The counter the transfers of `moving` add their bytes to.
    pub fn counter(&self, moving: Moving) -> &Arc<AtomicU64> {
        &self.of(moving).done
    }

    /// Nothing is moving any more.
    pub fn end(&self) {
        for moving in [Moving::ToHost, Moving::ToTerminals] {
            *self.of(moving).current.lock().expect("not poisoned") = None;
        }
    }

    /// Where the running transfer that has the most bytes left stands (the
    /// one the upgrade waits for), if one runs.
    pub fn now(&self) -> Option<TransferProgress> {
        [Moving::ToHost, Moving::ToTerminals]
            .into_iter()
            .filter_map(|moving| {
                let counted = self.of(moving);
                let c = (*counted.current.lock().expect("not poisoned"))?;
                let done = counted
                    .done
                    .load(Ordering::Relaxed)
                    .saturating_sub(c.base)
                    .min(c.total);
                Some(TransferProgress {
                    moving,
                    done,
                    total: c.total,
                    eta_secs: eta(done, c.total, c.since.elapsed()),
                })
            })
            .max_by_key(|p| p.total - p.done)
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
    fn transfers_of_one_kind_add_up_and_the_one_with_most_left_shows() {
        let t = Transfers::default();
        assert_eq!(t.now(), None);
        t.begin(Moving::ToTerminals, 100);
        t.begin(Moving::ToTerminals, 50);
        t.counter(Moving::ToTerminals)
            .fetch_add(30, Ordering::Relaxed);
        let p = t.now().unwrap();
        assert_eq!((p.moving, p.done, p.total), (Moving::ToTerminals, 30, 150));
        // Both at once: each counts its own bytes.
        t.begin(Moving::ToHost, 1000);
        let p = t.now().unwrap();
        assert_eq!((p.moving, p.done, p.total), (Moving::ToHost, 0, 1000));
        t.counter(Moving::ToHost).fetch_add(990, Ordering::Relaxed);
        let p = t.now().unwrap();
        assert_eq!((p.moving, p.done, p.total), (Moving::ToTerminals, 30, 150));
        t.counter(Moving::ToHost).fetch_add(1000, Ordering::Relaxed);
        t.counter(Moving::ToTerminals)
            .fetch_add(1000, Ordering::Relaxed);
        assert_eq!(t.now().unwrap().done, 150, "never more than the total");
        t.end();
        assert_eq!(t.now(), None);
    }
}
