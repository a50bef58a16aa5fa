//! Fault injection for tillup's own fault tests. Off unless the
//! environment asks for it; each check is one relaxed atomic load after
//! the first.
//!
//! - `TILLUP_CRASH_AT=NAME` kills the process with SIGKILL the first time
//!   it reaches [`crash_point`]`(NAME)` (`NAME#N`: the N-th time): nothing
//!   is flushed, no destructor runs, exactly as a power cut or `kill -9`
//!   at that line would.
//! - `TILLUP_DISK_BUDGET=BYTES` makes file writes through this crate fail
//!   with "No space left on device" once that many bytes were written in
//!   the process, as a disk filling up would ([`charge`]).
//!
//! Whoever can set a process's environment can already kill it, so these
//! add no power; they exist so that the fault suite kills real processes
//! at exact points instead of racing them with timers.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Faults {
    crash_at: Option<(String, u64)>,
    /// Times the crash point was reached.
    reached: AtomicU64,
    budget: Option<AtomicU64>,
}

fn faults() -> &'static Faults {
    static F: OnceLock<Faults> = OnceLock::new();
    F.get_or_init(|| Faults {
        crash_at: std::env::var("TILLUP_CRASH_AT")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|s| match s.split_once('#') {
                Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
                None => (s, 1),
            }),
        reached: AtomicU64::new(0),
        budget: std::env::var("TILLUP_DISK_BUDGET")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(AtomicU64::new),
    })
}

std::thread_local! {
    static PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// For unit tests: makes [`crash_point`]`(name)` panic in this thread, so
/// a test can catch the unwind and look at the disk as a crash at that
/// point leaves it. `None` turns it off.
pub fn panic_at_in_this_thread(name: Option<&str>) {
    PANIC_AT.with(|p| *p.borrow_mut() = name.map(str::to_owned));
}

/// Kills the process here if `TILLUP_CRASH_AT` names `name`.
pub fn crash_point(name: &str) {
    if PANIC_AT.with(|p| p.borrow().as_deref() == Some(name)) {
        panic!("crash point {name}");
    }
    let f = faults();
    if let Some((at, nth)) = &f.crash_at
        && at == name
        && f.reached.fetch_add(1, Ordering::Relaxed) + 1 == *nth
    {
        eprintln!("tillup: crash point {name} reached: killing this process (TILLUP_CRASH_AT)");
        kill_self();
    }
}

#[cfg(unix)]
fn kill_self() -> ! {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::process::abort()
}

#[cfg(not(unix))]
fn kill_self() -> ! {
    std::process::abort()
}

/// Counts `n` bytes about to be written; fails as a full disk would once
/// the `TILLUP_DISK_BUDGET` is spent.
pub fn charge(n: usize) -> io::Result<()> {
    let Some(budget) = &faults().budget else {
        return Ok(());
    };
    let n = n as u64;
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
            left.checked_sub(n)
        })
        .map(drop)
        .map_err(|_| {
            budget.store(0, Ordering::Relaxed);
            disk_full()
        })
}

#[cfg(unix)]
fn disk_full() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error())
}

#[cfg(not(unix))]
fn disk_full() -> io::Error {
    io::Error::from(io::ErrorKind::StorageFull)
}
