//! Write-temp + fsync + rename + fsync(dir): a file is either its old
//! content or its new content, whatever crashes.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::{Error, IoContext};

/// Makes a directory entry change durable.
pub fn fsync_dir(dir: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).at(dir)?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).at(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .at(dir)?;
    crate::fault::charge(bytes.len()).at(tmp.path())?;
    tmp.write_all(bytes).at(tmp.path())?;
    tmp.as_file().sync_data().at(tmp.path())?;
    persist(tmp, path)?;
    fsync_dir(dir)
}

fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<(), Error> {
    // Windows refuses to rename over a file another process has open for a
    // moment (antivirus, indexer): retry briefly.
    let mut tmp = tmp;
    for attempt in 0.. {
        match tmp.persist(path) {
            Ok(_) => return Ok(()),
            Err(e)
                if cfg!(windows)
                    && e.error.kind() == std::io::ErrorKind::PermissionDenied
                    && attempt < 10 =>
            {
                tmp = e.file;
                std::thread::sleep(std::time::Duration::from_millis(50 << attempt.min(4)));
            }
            Err(e) => return Err(e.error).at(path),
        }
    }
    unreachable!()
}

/// [`write_atomic`] of pretty JSON.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::Json {
        path: path.to_owned(),
        source,
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Removes a file; one that is not there is fine.
pub fn remove_file_if_exists(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(path),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["state.json"]);
    }
}
