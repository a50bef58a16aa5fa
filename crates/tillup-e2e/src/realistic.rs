//! A POS program folder of realistic shape, for `tillup-storebench`.
//!
//! A release of `folder_bytes` in `files` files: two large binaries
//! (`bin/pos.exe`, `bin/engine.dll`, ≈ 40 % of the bytes), DLLs
//! (`lib/*.dll`, ≈ 45 %; 120 of them at the default 2630 files), small
//! resource files (`res/<group>/<name>.dat` in a few hundred groups) and a
//! few report templates with Chinese names (`reports/日结报表.tpl`, …) for
//! the remaining ≈ 15 %. Contents compress about 2:1 with zstd -3: runs of
//! pseudo-random bytes alternate with runs built from a small per-file
//! vocabulary (symbol names, tables, padding). Everything is deterministic
//! from a seed.
//!
//! [`next_release`] makes the next version of a folder: it changes files
//! holding `changed_share` of the bytes (new and changed files together;
//! about one file in eight, DLLs and resources, never the large binaries),
//! adds and removes a few files. A changed file keeps most of its content:
//! a quarter of its 4 KiB blocks are rewritten and some bytes may be
//! inserted, as a rebuilt module would.
//!
//! [`terminal_files`] writes a terminal's own incompressible files, all
//! under the release's preserve patterns (`config/local/**`, `data/**`,
//! `logs/**`). [`walk`] is the oracle's view of a folder: a plain walk with
//! SHA-256, independent of the code under test.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

/// The default shape: 2630 files, of which 120 DLLs; 334 files change.
const DEFAULT_FILES: f64 = 2630.0;
const DEFAULT_DLLS: f64 = 120.0;
const CHANGED_FILES_PER_FILE: f64 = 334.0 / DEFAULT_FILES;
const ADDED_PER_FILE: f64 = 16.0 / DEFAULT_FILES;
const REMOVED_PER_FILE: f64 = 20.0 / DEFAULT_FILES;

/// The report templates (part of the resources' share).
pub const TEMPLATES: &[&str] = &[
    "reports/日结报表.tpl",
    "reports/交班汇总.tpl",
    "reports/会员消费明细.tpl",
    "reports/库存盘点.tpl",
];

/// The large binaries, never changed by [`next_release`].
pub const LARGE: &[&str] = &["bin/pos.exe", "bin/engine.dll"];

/// Share of the content made of pseudo-random bytes; the rest is built
/// from a small vocabulary. Tuned so zstd -3 compresses it about 2:1.
const RANDOM_SHARE: f64 = 0.44;

/// A small deterministic PRNG (splitmix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let x = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    /// A log-normal-ish weight (spread sizes as real folders do).
    fn weight(&mut self) -> f64 {
        let normalish = self.unit() + self.unit() + self.unit() - 1.5;
        (1.6 * normalish).exp()
    }
}

/// `len` bytes of content that compresses about 2:1 with zstd -3.
pub fn content(rng: &mut Rng, len: usize) -> Vec<u8> {
    // A per-call vocabulary of "words": symbol names, table rows, padding.
    let words: Vec<Vec<u8>> = (0..48)
        .map(|_| {
            let n = 4 + rng.below(20) as usize;
            (0..n).map(|_| b' ' + rng.below(95) as u8).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(len + 1024);
    while out.len() < len {
        let run = 256 + rng.below(768) as usize;
        if rng.unit() < RANDOM_SHARE {
            let start = out.len();
            out.resize(start + run, 0);
            rng.fill(&mut out[start..]);
        } else {
            let end = out.len() + run;
            while out.len() < end {
                out.extend_from_slice(&words[rng.below(words.len() as u64) as usize]);
            }
        }
    }
    out.truncate(len);
    out
}

/// The shape of a release.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub folder_bytes: u64,
    pub files: usize,
    pub seed: u64,
}

/// Splits `budget` into `n` sizes of spread weights (at least 64 bytes).
fn split(rng: &mut Rng, budget: u64, n: usize) -> Vec<u64> {
    let w: Vec<f64> = (0..n).map(|_| rng.weight()).collect();
    let total: f64 = w.iter().sum();
    w.iter()
        .map(|x| ((budget as f64 * x / total) as u64).max(64))
        .collect()
}

/// The files of a first release: paths and sizes.
pub fn plan(shape: &Shape) -> Result<Vec<(String, u64)>> {
    let files = shape.files;
    ensure!(
        files >= LARGE.len() + TEMPLATES.len() + 4,
        "a release needs at least {} files",
        LARGE.len() + TEMPLATES.len() + 4
    );
    let mut rng = Rng::new(shape.seed);
    let dlls = ((files as f64 * DEFAULT_DLLS / DEFAULT_FILES).round() as usize).max(1);
    let res = files - LARGE.len() - dlls - TEMPLATES.len();
    ensure!(res >= 1, "too few files for {dlls} DLLs");
    let total = shape.folder_bytes as f64;
    let large = (total * 0.40) as u64;
    let dll_bytes = (total * 0.45) as u64;
    let res_bytes = shape.folder_bytes - large - dll_bytes;

    let mut out = vec![
        (LARGE[0].to_owned(), large * 3 / 5),
        (LARGE[1].to_owned(), large - large * 3 / 5),
    ];
    for (i, size) in split(&mut rng, dll_bytes, dlls).into_iter().enumerate() {
        out.push((format!("lib/module-{i:03}.dll"), size));
    }
    let groups = (res / 8).max(1);
    let small = split(&mut rng, res_bytes, res + TEMPLATES.len());
    for (i, size) in small.iter().take(res).enumerate() {
        out.push((
            format!("res/group-{:03}/item-{i:05}.dat", i % groups),
            *size,
        ));
    }
    for (name, size) in TEMPLATES.iter().zip(&small[res..]) {
        out.push(((*name).to_owned(), *size));
    }
    Ok(out)
}

fn write_file(dir: &Path, rel: &str, bytes: &[u8]) -> Result<()> {
    let p = dir.join(rel);
    fs::create_dir_all(p.parent().context("a file has a folder")?)?;
    fs::write(&p, bytes).with_context(|| p.display().to_string())
}

/// Writes a first release into `dir` (which must not exist or be empty).
/// Returns its total bytes.
pub fn generate(dir: &Path, shape: &Shape) -> Result<u64> {
    let mut total = 0;
    for (i, (path, size)) in plan(shape)?.iter().enumerate() {
        let mut rng = Rng::new(shape.seed.wrapping_mul(1_000_003) ^ i as u64);
        write_file(dir, path, &content(&mut rng, *size as usize))?;
        total += size;
    }
    Ok(total)
}

/// How a next release differs from its predecessor.
#[derive(Clone, Debug, Default)]
pub struct ChangeSummary {
    pub changed_files: usize,
    /// Bytes of the changed files (their new sizes).
    pub changed_bytes: u64,
    pub added_files: usize,
    pub added_bytes: u64,
    pub removed_files: usize,
    /// The new release's files and bytes.
    pub files: usize,
    pub bytes: u64,
}

impl ChangeSummary {
    /// New and changed bytes over the release's bytes.
    pub fn share(&self) -> f64 {
        (self.changed_bytes + self.added_bytes) as f64 / self.bytes.max(1) as f64
    }
}

/// A rebuilt file: a quarter of its 4 KiB blocks rewritten, and maybe a
/// few hundred bytes inserted somewhere (which shifts what follows).
fn mutate(rng: &mut Rng, old: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 4096;
    let mut new = old.to_vec();
    let blocks = old.len().div_ceil(BLOCK).max(1);
    let mut touched = false;
    for b in 0..blocks {
        if rng.unit() < 0.25 {
            let start = b * BLOCK;
            let end = (start + BLOCK).min(new.len());
            let fresh = content(rng, end - start);
            new[start..end].copy_from_slice(&fresh);
            touched = true;
        }
    }
    if !touched || rng.unit() < 0.5 {
        let at = rng.below(new.len() as u64 + 1) as usize;
        let len = 16 + rng.below(496) as usize;
        let tail = new.split_off(at);
        new.extend(content(rng, len));
        new.extend(tail);
    }
    new
}

/// The release files under `dir` (relative paths with `/`), sorted.
fn list(dir: &Path) -> Result<Vec<(String, u64)>> {
    paths(dir)?
        .into_iter()
        .map(|p| {
            let size = fs::metadata(dir.join(&p))?.len();
            Ok((p, size))
        })
        .collect()
}

/// Copies `from` into `to` (which must not exist yet), then changes files
/// holding about `changed_share` of the bytes, adds and removes files (16
/// and 20 at the default 2630 files, proportionally otherwise). Files under
/// `bin/` are left as they are; the caller rewrites `VERSION`.
pub fn next_release(
    from: &Path,
    to: &Path,
    changed_share: f64,
    seed: u64,
) -> Result<ChangeSummary> {
    ensure!(!to.exists(), "{} exists already", to.display());
    ensure!(
        (0.0..0.5).contains(&changed_share),
        "the changed share must be in [0, 0.5)"
    );
    crate::copy_dir(from, to)?;
    let files = list(from)?;
    let total: u64 = files.iter().map(|(_, s)| s).sum();
    let n = files.len() as f64;
    let mut rng = Rng::new(seed);
    let want_changed = (n * CHANGED_FILES_PER_FILE).round().max(1.0) as usize;
    let want_added = (n * ADDED_PER_FILE).round().max(1.0) as usize;
    let want_removed = (n * REMOVED_PER_FILE).round().max(1.0) as usize;

    let mut dlls: Vec<&(String, u64)> = files
        .iter()
        .filter(|(p, _)| p.starts_with("lib/") && p.ends_with(".dll"))
        .collect();
    let mut small: Vec<&(String, u64)> = files
        .iter()
        .filter(|(p, _)| p.starts_with("res/") || p.starts_with("reports/"))
        .collect();
    rng.shuffle(&mut dlls);
    rng.shuffle(&mut small);

    // Removed: resources (never a template, whose names matter).
    let mut removed = BTreeSet::new();
    let mut kept_small = Vec::new();
    for f in small {
        if removed.len() < want_removed && f.0.starts_with("res/") {
            removed.insert(f.0.clone());
        } else {
            kept_small.push(f);
        }
    }

    // Added: resources sized like the others, one new DLL per 16.
    let res_sizes: Vec<u64> = kept_small.iter().map(|(_, s)| *s).collect();
    let dll_sizes: Vec<u64> = dlls.iter().map(|(_, s)| *s).collect();
    let mut added: Vec<(String, u64)> = Vec::new();
    let groups = files
        .iter()
        .filter_map(|(p, _)| p.strip_prefix("res/")?.split('/').next())
        .collect::<BTreeSet<_>>()
        .len()
        .max(1);
    for i in 0..want_added {
        let (path, sizes) = if i % 16 == 15 {
            (format!("lib/feature-{seed:x}-{i:02}.dll"), &dll_sizes)
        } else {
            (
                format!(
                    "res/group-{:03}/new-{seed:x}-{i:03}.dat",
                    rng.below(groups as u64)
                ),
                &res_sizes,
            )
        };
        let size = if sizes.is_empty() {
            4096
        } else {
            sizes[rng.below(sizes.len() as u64) as usize]
        };
        added.push((path, size));
    }
    let added_bytes: u64 = added.iter().map(|(_, s)| s).sum();

    // Changed: `want_changed` files whose bytes make up the rest of the
    // share: enough DLLs, then resources.
    let target = (changed_share * total as f64) as u64;
    let budget = target.saturating_sub(added_bytes);
    let mut chosen: Vec<&(String, u64)> = kept_small.iter().take(want_changed).copied().collect();
    let mut bytes: u64 = chosen.iter().map(|(_, s)| s).sum();
    for d in &dlls {
        let Some(last) = chosen.last() else { break };
        let with = bytes + d.1 - last.1;
        // Take the DLL (in place of the last resource) while it brings the
        // sum closer to the budget.
        if with.abs_diff(budget) < bytes.abs_diff(budget) {
            bytes = with;
            chosen.pop();
            chosen.insert(0, d);
        } else if bytes >= budget {
            break;
        }
    }

    let mut summary = ChangeSummary::default();
    for (path, _) in &chosen {
        let old = fs::read(from.join(path))?;
        let new = mutate(&mut rng, &old);
        summary.changed_files += 1;
        summary.changed_bytes += new.len() as u64;
        write_file(to, path, &new)?;
    }
    for (path, size) in &added {
        write_file(to, path, &content(&mut rng, *size as usize))?;
        summary.added_files += 1;
        summary.added_bytes += size;
    }
    for path in &removed {
        fs::remove_file(to.join(path))?;
        summary.removed_files += 1;
    }
    let after = list(to)?;
    summary.files = after.len();
    summary.bytes = after.iter().map(|(_, s)| s).sum();
    Ok(summary)
}

/// Where a terminal's own files go, and their share of `bytes`.
pub const TERMINAL_FILES: &[(&str, f64)] = &[
    ("config/local/terminal.ini", 0.02),
    ("data/sales.db", 0.80),
    ("logs/pos.log", 0.18),
];

/// Writes terminal `number`'s own (incompressible) files into its folder:
/// `bytes` in all, under the preserve patterns.
pub fn terminal_files(folder: &Path, number: u32, bytes: u64, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed ^ (u64::from(number) << 32));
    for (path, share) in TERMINAL_FILES {
        let mut b = vec![0u8; (bytes as f64 * share) as usize];
        rng.fill(&mut b);
        write_file(folder, path, &b)?;
    }
    Ok(())
}

/// A day of sales on a terminal: its database and its log grow.
pub fn terminal_day(folder: &Path, number: u32, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed ^ (u64::from(number) << 40) ^ 0xda7);
    for (path, grow) in [("data/sales.db", 16 * 1024), ("logs/pos.log", 8 * 1024)] {
        let mut b = fs::read(folder.join(path)).unwrap_or_default();
        let start = b.len();
        b.resize(start + grow, 0);
        rng.fill(&mut b[start..]);
        write_file(folder, path, &b)?;
    }
    Ok(())
}

/// One file as the oracle sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest32 {
    pub size: u64,
    pub sha256: [u8; 32],
    pub exec: bool,
}

/// Every file under `dir` by relative path (with `/`): size, SHA-256, exec
/// bit. A plain walk; symbolic links are refused.
pub fn walk(dir: &Path) -> Result<BTreeMap<String, Digest32>> {
    walk_where(dir, |_| true)
}

/// [`walk`] of the files whose relative path `keep` accepts (the others
/// are not read).
pub fn walk_where(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<BTreeMap<String, Digest32>> {
    let mut out = BTreeMap::new();
    for rel in paths(dir)? {
        if !keep(&rel) {
            continue;
        }
        let p = dir.join(&rel);
        let bytes = fs::read(&p).with_context(|| p.display().to_string())?;
        let exec = is_exec(&fs::metadata(&p)?);
        out.insert(
            rel,
            Digest32 {
                size: bytes.len() as u64,
                sha256: Sha256::digest(&bytes).into(),
                exec,
            },
        );
    }
    Ok(out)
}

/// The relative paths (with `/`) of the files under `dir`, sorted; symbolic
/// links are refused.
pub fn paths(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    paths_into(dir, "", &mut out)?;
    out.sort();
    Ok(out)
}

fn paths_into(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let e = e?;
        let name = e
            .file_name()
            .into_string()
            .map_err(|n| anyhow::anyhow!("a file name that is not UTF-8: {n:?}"))?;
        let rel = format!("{prefix}{name}");
        let ft = e.file_type()?;
        if ft.is_symlink() {
            bail!("{} is a symbolic link", e.path().display());
        } else if ft.is_dir() {
            paths_into(&e.path(), &format!("{rel}/"), out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

#[cfg(unix)]
fn is_exec(m: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_exec(_: &fs::Metadata) -> bool {
    false
}

/// Whether a path falls under the release's preserve patterns
/// (`config/local/**`, `data/**`, `logs/**`), decided here without the
/// code under test.
pub fn preserved(path: &str) -> bool {
    ["config/local/", "data/", "logs/"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// The size of `bytes` compressed once with zstd at level 3.
pub fn zstd3(bytes: &[u8]) -> Result<u64> {
    Ok(zstd::bulk::compress(bytes, 3)?.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zstd_ratio(dir: &Path) -> f64 {
        let (mut raw, mut packed) = (0u64, 0u64);
        for p in walk(dir).unwrap().keys() {
            let b = fs::read(dir.join(p)).unwrap();
            raw += b.len() as u64;
            packed += zstd3(&b).unwrap();
        }
        raw as f64 / packed as f64
    }

    #[test]
    fn a_tiny_store_has_the_shape_the_ratio_and_the_changes_asked_for() {
        let tmp = tempfile::tempdir().unwrap();
        let shape = Shape {
            folder_bytes: 4 << 20,
            files: 200,
            seed: 7,
        };
        let a = tmp.path().join("a");
        let total = generate(&a, &shape).unwrap();
        let files = walk(&a).unwrap();
        assert_eq!(files.len(), 200);
        let on_disk: u64 = files.values().map(|d| d.size).sum();
        assert_eq!(on_disk, total);
        assert!(
            on_disk.abs_diff(4 << 20) < (4 << 20) / 50,
            "{on_disk} bytes"
        );
        for t in TEMPLATES {
            assert!(files.contains_key(*t), "{t}");
        }
        let large: u64 = LARGE.iter().map(|p| files[*p].size).sum();
        assert!((0.38..0.42).contains(&(large as f64 / on_disk as f64)));
        assert!(files.keys().all(|p| !preserved(p)));
        let ratio = zstd_ratio(&a);
        assert!((1.8..2.25).contains(&ratio), "zstd -3 ratio {ratio:.2}");

        // Deterministic.
        let again = tmp.path().join("again");
        generate(&again, &shape).unwrap();
        assert_eq!(walk(&again).unwrap(), files);

        let b = tmp.path().join("b");
        let s = next_release(&a, &b, 0.055, 11).unwrap();
        let after = walk(&b).unwrap();
        assert_eq!(s.files, after.len());
        assert_eq!(s.added_files, 1);
        assert_eq!(s.removed_files, 2);
        assert_eq!(after.len(), 200 + 1 - 2);
        assert!(s.changed_files >= 20 && s.changed_files <= 30, "{s:?}");
        assert!((0.035..0.08).contains(&s.share()), "{s:?}");
        // What the summary says is what differs on disk.
        let differing: Vec<_> = after
            .iter()
            .filter(|(p, d)| files.get(*p) != Some(d))
            .collect();
        assert_eq!(differing.len(), s.changed_files + s.added_files);
        let differing_bytes: u64 = differing.iter().map(|(_, d)| d.size).sum();
        assert_eq!(differing_bytes, s.changed_bytes + s.added_bytes);
        for p in LARGE {
            assert_eq!(after[*p], files[*p], "{p} unchanged");
        }
        assert!((1.8..2.25).contains(&zstd_ratio(&b)));

        let t = tmp.path().join("t");
        terminal_files(&t, 3, 300 * 1024, 1).unwrap();
        let own = walk(&t).unwrap();
        assert!(own.keys().all(|p| preserved(p)));
        let own_bytes: u64 = own.values().map(|d| d.size).sum();
        assert!(own_bytes.abs_diff(300 * 1024) < 16);
    }
}
