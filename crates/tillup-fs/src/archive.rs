//! Release archives: a `.zip` from the POS vendor, extracted with bounds.
//!
//! An archive is untrusted input. Before anything is written, every entry
//! is checked: its name must be a [`RelPath`] (no `..`, no absolute path, no
//! drive letter, no backslash), it must be a plain file or folder (no
//! symbolic link, no device), and no two entries may land on the same path,
//! even on a case-insensitive disk. Then the files are decompressed into a
//! fresh temporary folder beside the destination, counting the bytes
//! actually produced (the sizes the archive declares are never trusted) and
//! stopping the moment a bound of [`ZipLimits`] is passed. Only a complete
//! extraction is renamed to the destination; any refusal removes the
//! temporary folder, so nothing is left on disk.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use tillup_core::RelPath;
use tillup_core::path::PathError;
use zip::CompressionMethod;

use crate::{Error, IoContext};

/// The most entries (files and folders) an archive may hold. The largest
/// POS releases seen hold a few thousand files; a hundred thousand leaves
/// room while refusing archives built to exhaust inodes or memory.
pub const MAX_ZIP_ENTRIES: usize = 100_000;

/// The most bytes a whole archive may decompress to: 1 GiB. A release is
/// one program folder (the benchmark folder is 200 MiB); more than this is
/// either the wrong archive or a bomb, and would not fit on small terminals.
pub const MAX_ZIP_TOTAL_BYTES: u64 = 1024 * 1024 * 1024;

/// The largest expansion allowed for one entry, decompressed bytes per
/// compressed byte. Deflate reaches about 1032:1 only on degenerate input
/// (long runs of one byte), which is what bombs are made of; real program
/// files (executables, libraries, databases, text) stay far below 200:1.
pub const MAX_ZIP_RATIO: u64 = 200;

/// Entries that decompress to no more than this (1 MiB) are not held to
/// [`MAX_ZIP_RATIO`]: small files of zeros or repeated text legitimately
/// compress to almost nothing, and a megabyte cannot hurt.
pub const ZIP_RATIO_FREE_BYTES: u64 = 1024 * 1024;

/// The bounds an extraction enforces. [`ZipLimits::default`] is the
/// product's: the `MAX_ZIP_*` constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZipLimits {
    /// See [`MAX_ZIP_ENTRIES`].
    pub max_entries: usize,
    /// See [`MAX_ZIP_TOTAL_BYTES`].
    pub max_total_bytes: u64,
    /// See [`MAX_ZIP_RATIO`].
    pub max_ratio: u64,
    /// See [`ZIP_RATIO_FREE_BYTES`].
    pub ratio_free_bytes: u64,
}

impl Default for ZipLimits {
    fn default() -> Self {
        Self {
            max_entries: MAX_ZIP_ENTRIES,
            max_total_bytes: MAX_ZIP_TOTAL_BYTES,
            max_ratio: MAX_ZIP_RATIO,
            ratio_free_bytes: ZIP_RATIO_FREE_BYTES,
        }
    }
}

/// What an extraction produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extracted {
    /// Files written (folders not counted).
    pub files: usize,
    /// Bytes written, all files together.
    pub bytes: u64,
}

/// Why an archive was refused. Nothing was left on disk.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "it is not a readable zip archive ({0}); check that the file is complete and really is a .zip"
    )]
    NotZip(zip::result::ZipError),
    #[error(
        "it holds {count} entries, more than the {max} allowed; check that this is the right archive (a release is one program folder)"
    )]
    TooManyEntries { count: usize, max: usize },
    #[error(
        "entry `{entry}` is refused: {reason}; every entry must be a relative path inside the release folder: ask the vendor for an archive without it"
    )]
    BadName { entry: String, reason: PathError },
    #[error(
        "entry `{entry}` is a symbolic link; links could point outside the program folder, so a release may not hold any: ask for an archive with the file itself"
    )]
    Symlink { entry: String },
    #[error(
        "entry `{entry}` is not a plain file or folder (unix mode {mode:o}); a release may hold only files and folders"
    )]
    SpecialFile { entry: String, mode: u32 },
    #[error(
        "entry `{entry}` appears twice in the archive; which copy is meant is unclear: ask the vendor for an archive with each path once"
    )]
    Duplicate { entry: String },
    #[error(
        "entries `{first}` and `{second}` differ only in case and would overwrite each other on a Windows terminal; rename one of them"
    )]
    CaseDuplicate { first: String, second: String },
    #[error("`{path}` is both a file and a folder in the archive; rename one of them")]
    FileAndFolder { path: String },
    #[error(
        "entry `{entry}` cannot be read: {reason}; re-create the archive with the deflate or store method and no password"
    )]
    Unsupported { entry: String, reason: String },
    #[error(
        "extracting entry `{entry}` passes the limit of {max} bytes for a whole release; the archive is too large or is a zip bomb, and extraction was stopped"
    )]
    TooLarge { entry: String, max: u64 },
    #[error(
        "entry `{entry}` expands more than {max_ratio} times its {compressed} compressed bytes; this looks like a zip bomb and extraction was stopped (if the file is real, store it in the archive without compression)"
    )]
    Ratio {
        entry: String,
        compressed: u64,
        max_ratio: u64,
    },
    #[error("entry `{entry}` is damaged ({reason}); get a fresh copy of the archive")]
    Corrupt { entry: String, reason: String },
    #[error("{0} already exists; extraction needs a destination that does not")]
    DestinationExists(PathBuf),
    #[error(transparent)]
    Fs(#[from] Error),
}

/// One entry as checked before extraction.
struct Planned {
    index: usize,
    path: RelPath,
    dir: bool,
    exec: bool,
    compressed: u64,
}

const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// [`extract_zip`] of the file at `archive`.
pub fn extract_zip_file(
    archive: &Path,
    dest: &Path,
    limits: &ZipLimits,
) -> Result<Extracted, ArchiveError> {
    let f = File::open(archive).at(archive)?;
    extract_zip(io::BufReader::new(f), dest, limits)
}

/// Extracts the zip `archive` into `dest`, which must not exist, within
/// `limits` (see the module's documentation). The files are written to a
/// temporary folder beside `dest` and renamed to `dest` once all are
/// complete; on any error nothing is left. The result is a working copy,
/// not synced to disk: callers scan (hash) it before they keep anything.
pub fn extract_zip<R: Read + Seek>(
    archive: R,
    dest: &Path,
    limits: &ZipLimits,
) -> Result<Extracted, ArchiveError> {
    if fs::symlink_metadata(dest).is_ok() {
        return Err(ArchiveError::DestinationExists(dest.to_owned()));
    }
    let mut zip = zip::ZipArchive::new(archive).map_err(ArchiveError::NotZip)?;
    if zip.has_duplicate_names() {
        // The index keeps one entry per name: find the name by reading the
        // central directory again.
        let start = zip.central_directory_start();
        let entry = first_duplicate(zip.into_inner(), start, limits.max_entries)
            .unwrap_or_else(|| "(a name)".into());
        return Err(ArchiveError::Duplicate { entry });
    }
    let plan = check_entries(&zip, limits)?;

    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dest
        .file_name()
        .map_or_else(|| "archive".into(), |n| n.to_string_lossy().into_owned());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.unzip-"))
        .tempdir_in(parent)
        .at(parent)?;
    // On any error `tmp` is dropped here, which removes the folder.
    let extracted = write_entries(&mut zip, &plan, tmp.path(), limits)?;
    let kept = tmp.keep();
    if let Err(e) = fs::rename(&kept, dest) {
        let _ = fs::remove_dir_all(&kept);
        return Err(Error::Io {
            path: dest.to_owned(),
            source: e,
        }
        .into());
    }
    Ok(extracted)
}

/// The first name the central directory starting at `start` lists twice,
/// reading at most `max` headers; `None` if it cannot be read.
fn first_duplicate<R: Read + Seek>(mut r: R, start: u64, max: usize) -> Option<String> {
    r.seek(io::SeekFrom::Start(start)).ok()?;
    let mut seen = HashSet::new();
    for _ in 0..max {
        let mut header = [0u8; 46];
        r.read_exact(&mut header).ok()?;
        if header[..4] != [0x50, 0x4b, 0x01, 0x02] {
            return None;
        }
        let len = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        let mut name = vec![0u8; usize::from(len(28))];
        r.read_exact(&mut name).ok()?;
        let name = String::from_utf8_lossy(&name).into_owned();
        let skip = i64::from(len(30)) + i64::from(len(32));
        r.seek(io::SeekFrom::Current(skip)).ok()?;
        if !seen.insert(name.clone()) {
            return Some(name);
        }
    }
    None
}

/// Checks every entry's name, type and uniqueness, before any write.
fn check_entries<R: Read + Seek>(
    zip: &zip::ZipArchive<R>,
    limits: &ZipLimits,
) -> Result<Vec<Planned>, ArchiveError> {
    if zip.len() > limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            count: zip.len(),
            max: limits.max_entries,
        });
    }
    let mut plan = Vec::with_capacity(zip.len());
    // Exact names seen, and every path (files and the folders they imply)
    // by its case-folded form, with its spelling and whether it is a folder.
    let mut names: HashSet<String> = HashSet::new();
    let mut claimed: HashMap<String, (String, bool)> = HashMap::new();
    for index in 0..zip.len() {
        let entry = zip.by_index_data(index).map_err(ArchiveError::NotZip)?;
        let raw = entry.name().map_err(ArchiveError::NotZip)?.into_owned();
        let mode = entry.unix_mode();
        let kind = mode.map_or(0, |m| m & S_IFMT);
        if kind == S_IFLNK {
            return Err(ArchiveError::Symlink { entry: raw });
        }
        if kind != 0 && kind != S_IFREG && kind != S_IFDIR {
            return Err(ArchiveError::SpecialFile {
                entry: raw,
                mode: mode.unwrap_or(0),
            });
        }
        let dir = entry.is_dir() || kind == S_IFDIR;
        let trimmed = if dir {
            raw.strip_suffix('/').unwrap_or(&raw)
        } else {
            &raw
        };
        let path = RelPath::new(trimmed).map_err(|reason| ArchiveError::BadName {
            entry: raw.clone(),
            reason,
        })?;
        if !names.insert(path.as_str().to_owned()) {
            return Err(ArchiveError::Duplicate { entry: raw });
        }
        let s = path.as_str();
        for (i, _) in s.match_indices('/') {
            claim(&mut claimed, &s[..i], true)?;
        }
        claim(&mut claimed, s, dir)?;
        if !dir {
            if entry.encrypted() {
                return Err(ArchiveError::Unsupported {
                    entry: raw,
                    reason: "it is encrypted".into(),
                });
            }
            let method = entry.compression();
            if !matches!(
                method,
                CompressionMethod::Stored | CompressionMethod::Deflated
            ) {
                return Err(ArchiveError::Unsupported {
                    entry: raw,
                    reason: format!("compression method {method} is not supported"),
                });
            }
        }
        plan.push(Planned {
            index,
            path,
            dir,
            exec: !dir && mode.is_some_and(|m| m & 0o111 != 0),
            compressed: entry.compressed_size(),
        });
    }
    Ok(plan)
}

/// Records that `path` is a file or a folder, refusing a second spelling
/// of it and a path that is both.
fn claim(
    claimed: &mut HashMap<String, (String, bool)>,
    path: &str,
    dir: bool,
) -> Result<(), ArchiveError> {
    let folded = path.to_lowercase();
    match claimed.get(&folded) {
        None => {
            claimed.insert(folded, (path.to_owned(), dir));
            Ok(())
        }
        Some((spelling, _)) if spelling != path => Err(ArchiveError::CaseDuplicate {
            first: spelling.clone(),
            second: path.to_owned(),
        }),
        Some((_, was_dir)) if *was_dir != dir => Err(ArchiveError::FileAndFolder {
            path: path.to_owned(),
        }),
        // The same folder again: implied by several files.
        Some(_) => Ok(()),
    }
}

/// Decompresses the planned entries under `root`, within the limits.
fn write_entries<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    plan: &[Planned],
    root: &Path,
    limits: &ZipLimits,
) -> Result<Extracted, ArchiveError> {
    let mut out = Extracted { files: 0, bytes: 0 };
    let mut buf = vec![0u8; 64 * 1024];
    for p in plan {
        let to = crate::join(root, &p.path);
        if p.dir {
            fs::create_dir_all(&to).at(&to)?;
            continue;
        }
        let parent = to.parent().expect("joined paths have a parent");
        fs::create_dir_all(parent).at(parent)?;
        let name = p.path.as_str();
        let corrupt = |e: &dyn std::fmt::Display| ArchiveError::Corrupt {
            entry: name.to_owned(),
            reason: e.to_string(),
        };
        let mut entry = zip.by_index(p.index).map_err(|e| corrupt(&e))?;
        let mut file = File::create_new(&to).at(&to)?;
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(corrupt(&e)),
            };
            written += n as u64;
            out.bytes += n as u64;
            if out.bytes > limits.max_total_bytes {
                return Err(ArchiveError::TooLarge {
                    entry: name.to_owned(),
                    max: limits.max_total_bytes,
                });
            }
            if written > limits.ratio_free_bytes
                && written > p.compressed.saturating_mul(limits.max_ratio)
            {
                return Err(ArchiveError::Ratio {
                    entry: name.to_owned(),
                    compressed: p.compressed,
                    max_ratio: limits.max_ratio,
                });
            }
            file.write_all(&buf[..n]).at(&to)?;
        }
        #[cfg(unix)]
        if p.exec {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(0o755))
                .at(&to)?;
        }
        out.files += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use zip::write::SimpleFileOptions;

    fn deflated() -> SimpleFileOptions {
        SimpleFileOptions::default().compression_method(CompressionMethod::Deflated)
    }

    /// A zip of `(name, bytes)` files, deflated.
    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in files {
            w.start_file(*name, deflated()).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    /// Extracts `bytes` into `<tmp>/out` and checks that a refusal leaves
    /// the parent folder exactly as empty as it was.
    fn extract(bytes: &[u8], limits: &ZipLimits) -> Result<Extracted, ArchiveError> {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let r = extract_zip(Cursor::new(bytes), &dest, limits);
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        match &r {
            Ok(_) => assert_eq!(left.len(), 1, "only the destination"),
            Err(e) => assert!(left.is_empty(), "{e}: left {left:?}"),
        }
        r
    }

    fn refused(bytes: &[u8]) -> ArchiveError {
        extract(bytes, &ZipLimits::default()).unwrap_err()
    }

    #[test]
    fn a_good_archive_is_extracted_with_its_exec_bits() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.add_directory("bin/", deflated()).unwrap();
        w.start_file("bin/pos", deflated().unix_permissions(0o755))
            .unwrap();
        w.write_all(b"program").unwrap();
        w.start_file("数据/收银.db", deflated()).unwrap();
        w.write_all(&[0u8; 5000]).unwrap();
        w.start_file("empty", SimpleFileOptions::default()).unwrap();
        let bytes = w.finish().unwrap().into_inner();

        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("rel");
        let got = extract_zip(Cursor::new(&bytes), &dest, &ZipLimits::default()).unwrap();
        assert_eq!(
            got,
            Extracted {
                files: 3,
                bytes: 5007
            }
        );
        assert_eq!(fs::read(dest.join("bin/pos")).unwrap(), b"program");
        assert_eq!(fs::read(dest.join("数据/收银.db")).unwrap(), [0u8; 5000]);
        assert_eq!(fs::read(dest.join("empty")).unwrap(), b"");
        let m = crate::scan_folder(&dest, &mut crate::HashCache::default()).unwrap();
        assert_eq!(
            m.get(&RelPath::new("bin/pos").unwrap()).unwrap().exec,
            cfg!(unix)
        );
        assert!(!m.get(&RelPath::new("empty").unwrap()).unwrap().exec);
        // Nothing but the destination beside it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A second extraction does not overwrite it.
        let err = extract_zip(Cursor::new(&bytes), &dest, &ZipLimits::default()).unwrap_err();
        assert!(matches!(err, ArchiveError::DestinationExists(_)), "{err}");
    }

    #[test]
    fn names_that_leave_the_folder_are_refused() {
        for (name, want) in [
            ("../x", "`..`"),
            ("a/../../x", "`..`"),
            ("/etc/x", "absolute"),
            ("C:/x", "drive letter"),
            ("c:x", "drive letter"),
            ("a\\..\\x", "backslash"),
            ("a//b", "empty"),
            ("./a", "empty or `.`"),
            ("con.txt", "reserved"),
        ] {
            // The good file first: a refusal must also remove what was
            // already accepted.
            let err = refused(&zip_of(&[("ok", b"fine"), (name, b"evil")]));
            let msg = err.to_string();
            assert!(matches!(err, ArchiveError::BadName { .. }), "{name}: {msg}");
            assert!(msg.contains(name) && msg.contains(want), "{name}: {msg}");
            assert!(msg.contains("ask the vendor"), "{msg}");
        }
    }

    #[test]
    fn symbolic_links_are_refused() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.start_file("ok", deflated()).unwrap();
        w.write_all(b"fine").unwrap();
        w.add_symlink("lib/evil", "/etc/passwd", SimpleFileOptions::default())
            .unwrap();
        let err = refused(&w.finish().unwrap().into_inner());
        assert!(matches!(err, ArchiveError::Symlink { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("lib/evil") && msg.contains("symbolic link"),
            "{msg}"
        );
    }

    #[test]
    fn special_files_are_refused() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        // A FIFO: S_IFIFO | 0644.
        let fifo = SimpleFileOptions::default().external_attributes(0o010_644 << 16);
        w.start_file("fifo", fifo).unwrap();
        let err = refused(&w.finish().unwrap().into_inner());
        assert!(matches!(err, ArchiveError::SpecialFile { .. }), "{err}");
    }

    /// A zip with the same name twice, which `ZipWriter` refuses to make:
    /// written with a placeholder name and patched.
    fn zip_with_names(names: &[&str]) -> Vec<u8> {
        let placeholders: Vec<String> = (0..names.len())
            .map(|i| format!("{:_<width$}", i, width = names[i].len()))
            .collect();
        let files: Vec<(&str, &[u8])> = placeholders
            .iter()
            .map(|p| (p.as_str(), b"x".as_slice()))
            .collect();
        let mut bytes = zip_of(&files);
        for (p, n) in placeholders.iter().zip(names) {
            assert_eq!(p.len(), n.len());
            // Local header and central directory both carry the name.
            let mut found = 0;
            let mut i = 0;
            while let Some(at) = bytes[i..].windows(p.len()).position(|w| w == p.as_bytes()) {
                bytes[i + at..i + at + p.len()].copy_from_slice(n.as_bytes());
                i += at + p.len();
                found += 1;
            }
            assert_eq!(found, 2, "{p}");
        }
        bytes
    }

    #[test]
    fn duplicate_names_are_refused() {
        let err = refused(&zip_with_names(&["pos.exe", "pos.exe"]));
        assert!(matches!(err, ArchiveError::Duplicate { .. }), "{err}");
        assert!(err.to_string().contains("`pos.exe` appears twice"), "{err}");
    }

    #[test]
    fn names_differing_only_in_case_are_refused() {
        let err = refused(&zip_of(&[("bin/POS.exe", b"a"), ("bin/pos.exe", b"b")]));
        let msg = err.to_string();
        assert!(matches!(err, ArchiveError::CaseDuplicate { .. }), "{msg}");
        assert!(
            msg.contains("bin/POS.exe") && msg.contains("bin/pos.exe") && msg.contains("Windows"),
            "{msg}"
        );
        // Folders too: `Bin/a` and `bin/b` would share one folder on Windows.
        let err = refused(&zip_of(&[("Bin/a", b"a"), ("bin/b", b"b")]));
        assert!(matches!(err, ArchiveError::CaseDuplicate { .. }), "{err}");
    }

    #[test]
    fn a_path_both_file_and_folder_is_refused() {
        let err = refused(&zip_of(&[("a", b"file"), ("a/b", b"inside")]));
        assert!(matches!(err, ArchiveError::FileAndFolder { .. }), "{err}");
        let err = refused(&zip_of(&[("a/b", b"inside"), ("a", b"file")]));
        assert!(matches!(err, ArchiveError::FileAndFolder { .. }), "{err}");
    }

    #[test]
    fn too_many_entries_are_refused_before_anything_is_written() {
        let files: Vec<(String, Vec<u8>)> =
            (0..11).map(|i| (format!("f{i}"), vec![b'x'])).collect();
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        let bytes = zip_of(&refs);
        let limits = ZipLimits {
            max_entries: 10,
            ..ZipLimits::default()
        };
        let err = extract(&bytes, &limits).unwrap_err();
        assert!(
            matches!(err, ArchiveError::TooManyEntries { count: 11, max: 10 }),
            "{err}"
        );
        let limits = ZipLimits {
            max_entries: 11,
            ..ZipLimits::default()
        };
        assert_eq!(extract(&bytes, &limits).unwrap().files, 11);
    }

    #[test]
    fn the_total_is_bounded_by_the_bytes_produced() {
        // 3 files of 400 KiB of varied bytes: 1200 KiB in all.
        let data: Vec<u8> = (0..400 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let bytes = zip_of(&[("a", &data), ("b", &data), ("c", &data)]);
        let limits = ZipLimits {
            max_total_bytes: 1000 * 1024,
            ..ZipLimits::default()
        };
        let err = extract(&bytes, &limits).unwrap_err();
        assert!(
            matches!(&err, ArchiveError::TooLarge { entry, .. } if entry == "c"),
            "{err}"
        );
        let limits = ZipLimits {
            max_total_bytes: 1200 * 1024,
            ..ZipLimits::default()
        };
        assert_eq!(extract(&bytes, &limits).unwrap().bytes, 1200 * 1024);
    }

    /// Sets the declared uncompressed size of every entry to `size`, in the
    /// local headers and the central directory, as a lying archive would.
    fn lie_about_sizes(bytes: &mut [u8], size: u32) {
        let mut i = 0;
        while i + 4 <= bytes.len() {
            match bytes[i..i + 4] {
                [0x50, 0x4b, 0x03, 0x04] => {
                    bytes[i + 22..i + 26].copy_from_slice(&size.to_le_bytes());
                }
                [0x50, 0x4b, 0x01, 0x02] => {
                    bytes[i + 24..i + 28].copy_from_slice(&size.to_le_bytes());
                }
                _ => {}
            }
            i += 1;
        }
    }

    #[test]
    fn a_bomb_is_stopped_by_its_ratio_whatever_it_declares() {
        // 8 MiB of zeros deflate to about 8 KiB: about 1000:1.
        let zeros = vec![0u8; 8 * 1024 * 1024];
        let honest = zip_of(&[("ok", b"fine"), ("bomb.dat", &zeros)]);
        // Declaring a larger size changes nothing: the bytes produced count.
        let mut lying = honest.clone();
        lie_about_sizes(&mut lying, 0x7fff_ffff);
        for bytes in [&honest, &lying] {
            let err = refused(bytes);
            let msg = err.to_string();
            assert!(
                matches!(&err, ArchiveError::Ratio { entry, .. } if entry == "bomb.dat"),
                "{msg}"
            );
            assert!(msg.contains("zip bomb") && msg.contains("200"), "{msg}");
            // Under a laxer ratio the total bound stops it, also counted
            // from the bytes produced.
            let limits = ZipLimits {
                max_ratio: 10_000,
                max_total_bytes: 4 * 1024 * 1024,
                ..ZipLimits::default()
            };
            let err = extract(bytes, &limits).unwrap_err();
            assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
        }
        // Declaring a smaller size is caught too (the archive is damaged).
        let mut small = honest.clone();
        lie_about_sizes(&mut small, 100);
        let err = refused(&small);
        assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn small_files_are_free_of_the_ratio() {
        // 1 MiB of zeros compresses about 1000:1 but is small enough.
        let zeros = vec![0u8; 1024 * 1024];
        let got = extract(&zip_of(&[("zeros", &zeros)]), &ZipLimits::default()).unwrap();
        assert_eq!(got.bytes, 1024 * 1024);
    }

    #[test]
    fn damaged_and_foreign_input_is_refused() {
        let err = refused(b"PK\x03\x04 not really a zip");
        assert!(matches!(err, ArchiveError::NotZip(_)), "{err}");
        assert!(err.to_string().contains("not a readable zip"), "{err}");
        // Flip a byte of a stored file's data: the CRC check catches it.
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        w.start_file("a", stored).unwrap();
        w.write_all(b"0123456789abcdef").unwrap();
        let mut bytes = w.finish().unwrap().into_inner();
        let at = bytes.windows(16).position(|w| w == b"0123456789abcdef");
        bytes[at.unwrap() + 3] ^= 1;
        let err = refused(&bytes);
        assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
    }
}
