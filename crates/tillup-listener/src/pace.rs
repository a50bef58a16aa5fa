//! How slow a peer may be.
//!
//! Every exchange with the server or an agent has a deadline that grows
//! with the bytes it moved: `grace + moved / min_rate`. A peer (or a proxy
//! in front of it) that trickles a byte now and then, or answers nothing
//! at all, so fails the exchange within a bounded time, and the host's lock
//! is released; one that moves bytes at any usable speed never does,
//! however large the transfer.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The bounds of one exchange; see the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    /// How long a peer may take to begin its answer once the request is
    /// sent: the longest thing a peer does before it answers (an agent
    /// waiting for a sale to end, the server building a store's folders)
    /// fits in it.
    pub answer_within: Duration,
    /// Time given to a body on top of its bytes.
    pub grace: Duration,
    /// The slowest average rate, in bytes per second, at which a body may
    /// move: 4 KiB/s is a hundredth of the slowest store line tillup is
    /// meant for.
    pub min_rate: u64,
}

impl Pace {
    pub const DEFAULT: Pace = Pace {
        answer_within: Duration::from_secs(10 * 60),
        grace: Duration::from_secs(60),
        min_rate: 4 * 1024,
    };

    /// How long an exchange that moved `moved` bytes may have taken, given
    /// `grace` before its first byte.
    pub fn allowed(&self, grace: Duration, moved: u64) -> Duration {
        grace + Duration::from_secs_f64(moved as f64 / self.min_rate as f64)
    }

    /// Runs `fut` (which counts the bytes it moves in `moved`) unless it
    /// falls behind [`Pace::allowed`]`(grace, moved)`.
    pub async fn run<F: Future>(
        &self,
        grace: Duration,
        moved: &AtomicU64,
        fut: F,
    ) -> Result<F::Output, Stalled> {
        let start = Instant::now();
        let mut fut = std::pin::pin!(fut);
        loop {
            let now_moved = moved.load(Ordering::Relaxed);
            let deadline = start + self.allowed(grace, now_moved);
            tokio::select! {
                out = &mut fut => return Ok(out),
                () = tokio::time::sleep_until(deadline) => {
                    let after = moved.load(Ordering::Relaxed);
                    if after == now_moved {
                        return Err(Stalled {
                            moved: after,
                            waited: start.elapsed(),
                        });
                    }
                }
            }
        }
    }
}

impl Default for Pace {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// An exchange fell behind its [`Pace`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "it moved {moved} bytes in {} s, slower than tillup accepts (is the line or a proxy on it stalling?)",
    waited.as_secs()
)]
pub struct Stalled {
    pub moved: u64,
    pub waited: Duration,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const PACE: Pace = Pace {
        answer_within: Duration::from_secs(100),
        grace: Duration::from_secs(10),
        min_rate: 1000,
    };

    #[test]
    fn the_deadline_grows_with_the_bytes_moved() {
        assert_eq!(PACE.allowed(PACE.grace, 0), Duration::from_secs(10));
        assert_eq!(PACE.allowed(PACE.grace, 5000), Duration::from_secs(15));
        assert_eq!(
            PACE.allowed(PACE.answer_within, 1000),
            Duration::from_secs(101)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silence_fails_after_the_grace() {
        let moved = AtomicU64::new(0);
        let start = Instant::now();
        let err = PACE
            .run(PACE.grace, &moved, std::future::pending::<()>())
            .await
            .unwrap_err();
        assert_eq!(err.moved, 0);
        assert_eq!(start.elapsed(), PACE.grace);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_fails_and_a_steady_flow_does_not() {
        // One byte every 5 s: behind 1000 B/s once the grace is spent.
        let moved = Arc::new(AtomicU64::new(0));
        let m = moved.clone();
        let trickle = async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                m.fetch_add(1, Ordering::Relaxed);
            }
        };
        let err = PACE.run(PACE.grace, &moved, trickle).await.unwrap_err();
        assert!(err.waited < Duration::from_secs(20), "{err:?}");

        // 2000 B/s for 100 s: twice the minimum, never stalled.
        let moved = Arc::new(AtomicU64::new(0));
        let m = moved.clone();
        let steady = async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                m.fetch_add(2000, Ordering::Relaxed);
            }
            "done"
        };
        assert_eq!(PACE.run(PACE.grace, &moved, steady).await, Ok("done"));
    }
}
