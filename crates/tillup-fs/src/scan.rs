//! Folder ↔ manifest: scanning a folder (with a hash cache, like git's
//! index) and building a folder from a manifest.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tillup_core::{FileEntry, Manifest, RelPath, Sha256Hex};

use crate::{Error, IoContext, fsync_dir, join};

/// SHA-256 and size of a file, streamed.
pub fn hash_file(path: &Path) -> Result<(Sha256Hex, u64), Error> {
    let mut f = File::open(path).at(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).at(path),
        }
    }
    Ok((Sha256Hex::from_bytes(hasher.finalize().into()), total))
}

/// Digests of files keyed by path, size and modification time, so that a
/// folder whose files did not change is not read again.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HashCache {
    entries: BTreeMap<String, CachedHash>,
    /// Changed since loaded or saved: a scan of an unchanged folder
    /// writes nothing.
    #[serde(skip)]
    dirty: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CachedHash {
    size: u64,
    mtime_ns: i128,
    sha256: Sha256Hex,
}

impl HashCache {
    /// Loads a cache; a missing or unreadable one is simply empty.
    pub fn load(path: &Path) -> Self {
        fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes the cache if a scan changed it since it was loaded or saved.
    pub fn save(&mut self, path: &Path) -> Result<(), Error> {
        if self.dirty {
            crate::write_json_atomic(path, self)?;
            self.dirty = false;
        }
        Ok(())
    }
}

fn mtime_ns(md: &fs::Metadata) -> i128 {
    md.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128)
}

#[cfg(unix)]
fn is_exec(md: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    md.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_exec(_: &fs::Metadata) -> bool {
    false
}

/// The manifest of `root`. Symbolic links are refused. A file modified in
/// the same instant as its mtime could be stale in the cache, so entries
/// whose mtime is within two seconds of now are always hashed.
pub fn scan_folder(root: &Path, cache: &mut HashCache) -> Result<Manifest, Error> {
    let now_ns = mtime_ns(&fs::metadata(root).at(root)?).max(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128),
    );
    let mut files = Vec::new();
    let mut changed = false;
    walk(root, Within::Root, &mut |path, rel, md| {
        let (size, mtime) = (md.len(), mtime_ns(md));
        let fresh = |c: &CachedHash| {
            c.size == size && c.mtime_ns == mtime && now_ns - mtime > 2_000_000_000
        };
        let sha256 = match cache.entries.get(rel.as_str()).filter(|c| fresh(c)) {
            Some(c) => c.sha256,
            None => {
                let sha256 = hash_file(path)?.0;
                let entry = CachedHash {
                    size,
                    mtime_ns: mtime,
                    sha256,
                };
                if cache.entries.get(rel.as_str()) != Some(&entry) {
                    cache.entries.insert(rel.as_str().to_owned(), entry);
                    changed = true;
                }
                sha256
            }
        };
        files.push(FileEntry {
            path: rel,
            size,
            sha256,
            exec: is_exec(md),
        });
        Ok(())
    })?;
    let manifest = Manifest::new(files).map_err(|e| Error::BadName {
        path: root.to_owned(),
        reason: e.to_string(),
    })?;
    // Files gone since: their entries go too.
    if cache.entries.len() != manifest.len() {
        cache
            .entries
            .retain(|p, _| RelPath::new(p).is_ok_and(|p| manifest.get(&p).is_some()));
        changed = true;
    }
    cache.dirty |= changed;
    Ok(manifest)
}

/// Where a folder of a scan is, relative to the scanned folder.
#[derive(Clone, Copy)]
enum Within<'a> {
    Root,
    /// A folder whose path is a valid [`RelPath`].
    Checked(&'a RelPath),
    /// A folder whose name is not portable: only a file in it is refused
    /// (a scan lists files; an empty folder is not in a manifest).
    Unchecked(&'a str),
}

impl Within<'_> {
    /// The path of `name` in this folder, or why it is not a path.
    fn child(self, name: &str) -> (Result<RelPath, tillup_core::path::PathError>, String) {
        match self {
            Within::Root => (RelPath::new(name), name.to_owned()),
            Within::Checked(p) => {
                let joined = p.join(name);
                let text = match &joined {
                    Ok(_) => String::new(),
                    Err(_) => format!("{p}/{name}"),
                };
                (joined, text)
            }
            Within::Unchecked(s) => {
                let text = format!("{s}/{name}");
                (RelPath::new(&text), text)
            }
        }
    }
}

/// Calls `file` for every file under `dir` (`within` its place in the
/// scanned folder), with its path, relative path and metadata, in name
/// order. Each entry's name is read once and checked once (its folders
/// were checked before it), and its metadata relative to its folder
/// (`DirEntry::metadata`), not by walking its whole path again.
fn walk(
    dir: &Path,
    within: Within<'_>,
    file: &mut dyn FnMut(&Path, RelPath, &fs::Metadata) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut entries = fs::read_dir(dir)
        .at(dir)?
        .map(|e| e.map(|e| (e.file_name(), e)))
        .collect::<Result<Vec<_>, _>>()
        .at(dir)?;
    entries.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    for (name, entry) in entries {
        let path = entry.path();
        let name = name.to_str().ok_or_else(|| Error::BadName {
            path: path.clone(),
            reason: "not UTF-8".into(),
        })?;
        let (rel_path, text) = within.child(name);
        let ft = entry.file_type().at(&path)?;
        if ft.is_symlink() {
            return Err(Error::Symlink {
                target: fs::read_link(&path).unwrap_or_default(),
                path,
            });
        }
        if ft.is_dir() {
            match &rel_path {
                Ok(p) => walk(&path, Within::Checked(p), file)?,
                Err(_) => walk(&path, Within::Unchecked(&text), file)?,
            }
            continue;
        }
        let rel_path = rel_path.map_err(|e| Error::BadName {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let md = entry.metadata().at(&path)?;
        file(&path, rel_path, &md)?;
    }
    Ok(())
}

/// Builds `dest` (which must not exist) from `manifest`, taking each file
/// from `source(entry)`, checking its size and hash on the way, and syncing
/// every file and folder so the result survives a power cut (the files
/// together at the end: one `syncfs` on Linux rather than one sync each).
pub fn materialize(
    dest: &Path,
    manifest: &Manifest,
    source: &dyn Fn(&FileEntry) -> Result<PathBuf, Error>,
) -> Result<(), Error> {
    fs::create_dir(dest).at(dest)?;
    let mut written = Vec::with_capacity(manifest.len());
    let mut dirs = vec![dest.to_owned()];
    for f in manifest.files() {
        let to = join(dest, &f.path);
        let parent = to.parent().expect("joined paths have a parent");
        if !parent.exists() {
            fs::create_dir_all(parent).at(parent)?;
            let mut p = parent;
            while p != dest && !dirs.iter().any(|d| d == p) {
                dirs.push(p.to_owned());
                p = p.parent().expect("under dest");
            }
        }
        let from = source(f)?;
        let copied = copy_checked(&from, &to, f, false);
        if copied.is_err() {
            let _ = fs::remove_file(&to);
        }
        copied?;
        written.push(to);
    }
    crate::batch::sync_files(dest, written.iter().map(PathBuf::as_path))?;
    for d in dirs.iter().rev() {
        fsync_dir(d)?;
    }
    Ok(())
}

/// Builds `dest` (which must not exist) from `manifest` as hard links to
/// the blobs of `blobs`, which were checked when they entered the store and
/// are read-only: a view of the files that costs no copy. Where a link
/// cannot be made (another file system), and for executable files, the
/// file is copied and checked. Linked files keep the blobs' read-only mode.
/// Every folder is synced, so the view survives a power cut.
pub fn link_tree(dest: &Path, manifest: &Manifest, blobs: &crate::BlobStore) -> Result<(), Error> {
    fs::create_dir(dest).at(dest)?;
    let mut dirs = std::collections::BTreeSet::from([dest.to_owned()]);
    for f in manifest.files() {
        let to = join(dest, &f.path);
        let parent = to.parent().expect("joined paths have a parent");
        if !dirs.contains(parent) {
            fs::create_dir_all(parent).at(parent)?;
            let mut p = parent;
            while p != dest && dirs.insert(p.to_owned()) {
                p = p.parent().expect("under dest");
            }
        }
        let from = blobs.path(&f.sha256);
        if !from.is_file() {
            return Err(Error::MissingBlob(f.sha256));
        }
        // Blobs are not executable: an executable file is copied (and set
        // so), so the view holds exactly the manifest's exec bits.
        let linkable = !(cfg!(unix) && f.exec);
        if !linkable || fs::hard_link(&from, &to).is_err() {
            copy_verified(&from, &to, f)?;
        }
    }
    for d in dirs.iter().rev() {
        fsync_dir(d)?;
    }
    Ok(())
}

/// Copies `from` to the new file `to`, checking it against `f`'s size and
/// hash on the way, setting its exec bit, and syncing it. On a mismatch the
/// partial copy is removed.
pub fn copy_verified(from: &Path, to: &Path, f: &FileEntry) -> Result<(), Error> {
    let result = copy_checked(from, to, f, true);
    if result.is_err() {
        let _ = fs::remove_file(to);
    }
    result
}

fn copy_checked(from: &Path, to: &Path, f: &FileEntry, sync: bool) -> Result<(), Error> {
    let mut input = File::open(from).at(from)?;
    let mut out = File::create_new(to).at(to)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).at(from),
        };
        hasher.update(&buf[..n]);
        crate::fault::charge(n).at(to)?;
        io::Write::write_all(&mut out, &buf[..n]).at(to)?;
        total += n as u64;
    }
    if total != f.size {
        return Err(Error::SizeMismatch {
            path: to.to_owned(),
            expected: f.size,
            actual: total,
        });
    }
    let actual = Sha256Hex::from_bytes(hasher.finalize().into());
    if actual != f.sha256 {
        return Err(Error::HashMismatch {
            path: to.to_owned(),
            expected: f.sha256,
            actual,
        });
    }
    #[cfg(unix)]
    if f.exec {
        // Executable by whoever may read it, as the process's umask left
        // it: 0644 becomes 0755, and 0600 (a host's backup) 0700.
        use std::os::unix::fs::PermissionsExt;
        let mode = out.metadata().at(to)?.permissions().mode();
        out.set_permissions(fs::Permissions::from_mode(mode | (mode & 0o444) >> 2))
            .at(to)?;
    }
    if sync {
        out.sync_data().at(to)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    #[test]
    fn scan_then_materialize_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        write(&src, "bin/pos", "program");
        write(&src, "数据/收银.db", "db");
        write(&src, "a.txt", "");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(src.join("bin/pos"), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut cache = HashCache::default();
        let m = scan_folder(&src, &mut cache).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(
            m.get(&RelPath::new("bin/pos").unwrap()).unwrap().exec,
            cfg!(unix)
        );
        let dest = dir.path().join("dest");
        materialize(&dest, &m, &|f| Ok(join(&src, &f.path))).unwrap();
        assert_eq!(scan_folder(&dest, &mut HashCache::default()).unwrap(), m);
    }

    #[test]
    fn a_file_under_an_unportable_name_is_refused_and_an_empty_folder_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        write(&src, "bin/pos", "program");
        fs::create_dir_all(src.join("bin/tmp:1/empty")).unwrap();
        let m = scan_folder(&src, &mut HashCache::default()).unwrap();
        assert_eq!(m.len(), 1);
        write(&src, "bin/tmp:1/empty/x.log", "");
        let err = scan_folder(&src, &mut HashCache::default()).unwrap_err();
        assert!(err.to_string().contains("bin/tmp:1/empty/x.log"), "{err}");
        write(&src, "bin/con", "");
        let err = scan_folder(&src, &mut HashCache::default()).unwrap_err();
        assert!(err.to_string().contains("bin/con"), "{err}");
    }

    #[test]
    fn materialize_refuses_a_source_with_other_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        write(&src, "a", "right");
        let m = scan_folder(&src, &mut HashCache::default()).unwrap();
        write(&src, "a", "wrong");
        let err =
            materialize(&dir.path().join("dest"), &m, &|f| Ok(join(&src, &f.path))).unwrap_err();
        assert!(matches!(err, Error::HashMismatch { .. }), "{err}");
    }

    /// Scans `root` holding `a` and a link `rel` to `target`, and returns
    /// the refusal.
    #[cfg(unix)]
    fn scan_with_link(rel: &str, target: &str) -> (tempfile::TempDir, Error) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cupos");
        write(&root, "a", "x");
        write(&root, "sub/b", "y");
        std::os::unix::fs::symlink(target, root.join(rel)).unwrap();
        let err = scan_folder(&root, &mut HashCache::default()).unwrap_err();
        (dir, err)
    }

    #[cfg(unix)]
    #[test]
    fn scan_refuses_a_link_pointing_out() {
        let (_dir, err) = scan_with_link("link", "/etc/passwd");
        let msg = err.to_string();
        assert!(matches!(err, Error::Symlink { .. }), "{msg}");
        assert!(
            msg.contains("link") && msg.contains("/etc/passwd") && msg.contains("replace it"),
            "{msg}"
        );
        // A relative link that climbs out, deeper in the folder.
        let (_dir, err) = scan_with_link("sub/up", "../../outside");
        assert!(
            matches!(&err, Error::Symlink { path, .. } if path.ends_with("sub/up")),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn scan_refuses_a_link_to_a_parent_folder() {
        // Followed, it would loop forever or pull the parent's files in.
        for target in ["..", "../..", "."] {
            let (_dir, err) = scan_with_link("sub/loop", target);
            assert!(matches!(err, Error::Symlink { .. }), "{target}: {err}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn scan_refuses_even_a_link_that_stays_inside() {
        // A link inside is refused too: a terminal on Windows could not
        // recreate it, and its target could change after the check.
        let (_dir, err) = scan_with_link("sub/again", "../a");
        assert!(matches!(err, Error::Symlink { .. }), "{err}");
    }

    #[test]
    fn the_cache_is_used_only_for_unchanged_old_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", "one");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        File::options()
            .write(true)
            .open(dir.path().join("a"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let mut cache = HashCache::default();
        let first = scan_folder(dir.path(), &mut cache).unwrap();
        // Poison the cache: a hit would return the poisoned digest.
        let poisoned = Sha256Hex::of(b"poison");
        cache.entries.get_mut("a").unwrap().sha256 = poisoned;
        assert_eq!(
            scan_folder(dir.path(), &mut cache).unwrap().files()[0].sha256,
            poisoned
        );
        // Same size, new mtime: hashed again.
        write(dir.path(), "a", "two");
        let again = scan_folder(dir.path(), &mut cache).unwrap();
        assert_ne!(again.files()[0].sha256, first.files()[0].sha256);
        assert_ne!(again.files()[0].sha256, poisoned);
    }

    #[test]
    fn an_unchanged_folder_leaves_the_saved_cache_alone() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("folder");
        fs::create_dir(&folder).unwrap();
        write(&folder, "a", "one");
        let saved = dir.path().join("cache.json");
        let mut cache = HashCache::load(&saved);
        scan_folder(&folder, &mut cache).unwrap();
        cache.save(&saved).unwrap();
        assert!(saved.exists());
        // Nothing changed: nothing written (the file removed stays removed).
        fs::remove_file(&saved).unwrap();
        let mut cache = HashCache {
            entries: cache.entries.clone(),
            dirty: false,
        };
        scan_folder(&folder, &mut cache).unwrap();
        cache.save(&saved).unwrap();
        assert!(!saved.exists());
        // A change is written.
        write(&folder, "b", "two");
        scan_folder(&folder, &mut cache).unwrap();
        cache.save(&saved).unwrap();
        assert!(saved.exists());
    }
}
