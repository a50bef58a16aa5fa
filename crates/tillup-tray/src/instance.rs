//! One tray per data folder: `tray.lock`, held for the process's life.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::Context as _;

/// The held lock; released when the process ends.
pub struct Instance(#[allow(dead_code)] File);

/// Takes `dir/tray.lock` and writes our pid into it. `Ok(Err(pid))` when
/// another tray holds it (`pid` as it wrote it, if readable).
pub fn acquire(dir: &Path) -> anyhow::Result<Result<Instance, String>> {
    let path = dir.join("tray.lock");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            file.flush()?;
            Ok(Ok(Instance(file)))
        }
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            Ok(Err(if pid.is_empty() {
                "unknown".into()
            } else {
                pid.to_owned()
            }))
        }
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Asks the tray `pid` (as read from `tray.lock`) to open its window.
pub fn open_window_of(pid: &str) -> Result<(), String> {
    let pid = pid
        .parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| {
            format!("its pid `{pid}` is unreadable: open the window from its tray icon")
        })?;
    rustix::process::kill_process(pid, rustix::process::Signal::USR1)
        .map_err(|e| format!("cannot ask it to open its window ({e}): use its tray icon"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_tray_sees_the_first_ones_pid_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let Ok(first) = acquire(dir.path()).unwrap() else {
            panic!("the first takes the lock");
        };
        let Err(pid) = acquire(dir.path()).unwrap() else {
            panic!("the second is refused");
        };
        assert_eq!(pid, std::process::id().to_string());
        drop(first);
        assert!(acquire(dir.path()).unwrap().is_ok());
    }
}
