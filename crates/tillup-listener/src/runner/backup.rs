//! The host's backup folders: `backups/<UTC time>_<version>/terminal-<n>/`,
//! one per terminal, by number, as the store's staff expect to find them.
//!
//! A backup's bytes live once in the host's blob store, however many
//! terminals hold the same file; each `terminal-<n>` folder is a view of
//! hard links to those read-only blobs (no copy), with the terminal's
//! manifest beside it (`terminal-<n>.manifest.json`: sizes, hashes, exec
//! bits). [`restore`] materialises a terminal's folder from it.

use std::path::{Path, PathBuf};

use tillup_core::Manifest;
use tillup_fs::{BlobStore, IoContext};

use crate::Error;

/// The backup folders, oldest first: by the time in their name, then by
/// version (two upgrades in one second, to 2.9.0 and then 2.10.0, sort
/// in that order, which their names alone do not).
pub fn folders(data_dir: &Path) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(data_dir.join("backups"))
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    folders.sort_by_cached_key(|p| {
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let version = name
            .split_once('_')
            .and_then(|(_, v)| semver::Version::parse(v).ok());
        let stamp = name.split('_').next().unwrap_or_default().to_owned();
        (stamp, version, name)
    });
    folders
}

/// The manifest kept beside a terminal's backup folder.
fn marker(folder: &Path) -> PathBuf {
    folder.with_extension("manifest.json")
}

/// Writes a terminal's backup folder `dest` from `manifest`, as links to
/// the blobs (every one checked when it entered the store). A folder left
/// by an interrupted run is replaced; a complete one is kept.
pub fn write_folder(dest: &Path, manifest: &Manifest, blobs: &BlobStore) -> Result<(), Error> {
    let marker = marker(dest);
    if dest.exists() {
        if std::fs::read(&marker)
            .ok()
            .and_then(|b| Manifest::parse(&b).ok())
            .as_ref()
            == Some(manifest)
        {
            return Ok(());
        }
        std::fs::remove_dir_all(dest).at(dest)?;
    }
    let parent = dest.parent().expect("backup folders have a parent");
    std::fs::create_dir_all(parent).at(parent)?;
    let tmp = dest.with_extension("partial");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    tillup_fs::link_tree(&tmp, manifest, blobs)?;
    tillup_fs::write_atomic(&marker, &manifest.to_bytes())?;
    std::fs::rename(&tmp, dest).at(dest)?;
    tillup_fs::fsync_dir(parent)?;
    Ok(())
}

/// Materialises the terminal's folder kept in backup folder `backup` into
/// `to` (which must not exist): every file copied from the backup and
/// checked against the manifest kept beside it, exec bits included.
pub fn restore(backup: &Path, to: &Path) -> Result<Manifest, Error> {
    let marker = marker(backup);
    let bytes = std::fs::read(&marker).at(&marker)?;
    let manifest = Manifest::parse(&bytes).map_err(|e| Error::Damaged {
        path: marker.clone(),
        message: e.to_string(),
    })?;
    tillup_fs::materialize(to, &manifest, &|f| Ok(tillup_fs::join(backup, &f.path)))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_folders_sort_by_time_then_version() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "20261201T013049Z_2.10.0",
            "20261201T013048Z_2.11.0",
            "20261201T013049Z_2.9.0",
        ] {
            std::fs::create_dir_all(dir.path().join("backups").join(name)).unwrap();
        }
        let names: Vec<String> = folders(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "20261201T013048Z_2.11.0",
                "20261201T013049Z_2.9.0",
                "20261201T013049Z_2.10.0"
            ]
        );
    }

    #[test]
    fn a_backup_costs_no_copy_and_restores_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let folder = dir.path().join("cupos");
        for (path, bytes) in [
            ("bin/pos", &b"program"[..]),
            ("报表/日结.tpl", b"template"),
            ("data/sales.db", b"sales"),
            ("copy/of/pos", b"program"),
        ] {
            let p = folder.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                folder.join("bin/pos"),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
        }
        let manifest = tillup_fs::scan_folder(&folder, &mut Default::default()).unwrap();
        for f in manifest.files() {
            blobs
                .put_file(&tillup_fs::join(&folder, &f.path), &f.sha256)
                .unwrap();
        }
        let backup = dir.path().join("backups/20261130T000000Z_1.0.0/terminal-1");
        write_folder(&backup, &manifest, &blobs).unwrap();
        write_folder(&backup, &manifest, &blobs).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let f = manifest.files().iter().find(|f| !f.exec).unwrap();
            let linked = std::fs::metadata(tillup_fs::join(&backup, &f.path)).unwrap();
            let blob = std::fs::metadata(blobs.path(&f.sha256)).unwrap();
            assert_eq!(linked.ino(), blob.ino(), "a link, not a copy");
        }
        let restored = dir.path().join("restored");
        assert_eq!(restore(&backup, &restored).unwrap(), manifest);
        let again = tillup_fs::scan_folder(&restored, &mut Default::default()).unwrap();
        assert_eq!(again, manifest, "byte for byte, exec bits too");
        for f in manifest.files() {
            assert_eq!(
                std::fs::read(tillup_fs::join(&restored, &f.path)).unwrap(),
                std::fs::read(tillup_fs::join(&folder, &f.path)).unwrap()
            );
        }
    }
}
