//! `tillup import FILE`: a store's upgrade from a bundle
//! (`tillup_transfer::bundle`) instead of the server, for a store without
//! a network.
//!
//! The bundle is trusted exactly as a download would be: its log by the
//! pinned key (and the key lists it carries) and its freshness against the
//! last log accepted, its manifest by the hash that log signs, each file by
//! the manifest as it is read. Only then is an upgrade planned, and it is
//! the usual one (backup by terminal number, canary, health checks, the
//! local log), with the server left out: see [`Context::offline`].

use std::collections::BTreeMap;
use std::path::Path;

use jiff::Timestamp;
use tillup_core::Sha256Hex;
use tillup_core::manifest::Manifest;
use tillup_core::upgrade::Trigger;
use tillup_fs::BlobStore;
use tillup_transfer::bundle::{BundleError, BundleHeader, read_header};
use tillup_transfer::pack::{Unpacked, read_pack};

use super::{Observer, UpdateOutcome};
use crate::check::LogSource;
use crate::{Error, Listener};

impl Listener {
    /// Finishes an interrupted upgrade, then upgrades the store to the
    /// release in the bundle `path`.
    pub async fn import(
        &self,
        path: &Path,
        trigger: Trigger,
        now: Timestamp,
        observer: &mut Observer<'_>,
    ) -> Result<UpdateOutcome, Error> {
        let _lock = self.exclusive()?;
        let mut out = UpdateOutcome {
            upgrades: Vec::new(),
            note: None,
        };
        out.upgrades.extend(self.resume_locked(observer).await?);
        let bad = |message: String| Error::Bundle {
            path: path.to_owned(),
            message,
        };
        let mut file = std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| bad(format!("cannot open it: {e}")))?,
        );
        let header = read_header(&mut file).map_err(|e| bad(e.to_string()))?;
        if header.channel != self.config.channel {
            return Err(bad(format!(
                "it holds channel `{}`, this store reads `{}`; nothing was changed",
                header.channel, self.config.channel
            )));
        }
        let (verified, report) = self.check_from(now, LogSource::Bundle(&header)).await?;
        let release = verified.log.release(&header.version).ok_or_else(|| {
            bad(format!(
                "its signed log does not list release {}",
                header.version
            ))
        })?;
        if Sha256Hex::of(header.manifest.as_bytes()) != release.sha256 {
            return Err(bad(format!(
                "the manifest of {} is not the one its signed log names; nothing was changed",
                header.version
            )));
        }
        let blobs = self.blobs()?;
        let files = take_files(file, &header, &blobs)
            .await
            .map_err(|e| bad(format!("{e}; nothing was changed")))?;
        tracing::info!(
            version = %header.version,
            files,
            "the bundle's release is on the host, verified"
        );
        let Some(u) = self.plan(&verified, &report, trigger, now, Some(&header.version))? else {
            out.note = Some(match report.target {
                None => "every reachable terminal is up to date".to_owned(),
                Some(v) => format!("an update to {v} exists but no terminal could take it now"),
            });
            return Ok(out);
        };
        out.upgrades.push(self.drive(u, observer).await?);
        Ok(out)
    }
}

/// Reads the bundle's manifest and files (the rest of `input`) into
/// `blobs`, each file admitted only if the manifest names it, at its size,
/// and hashed as it is written. Returns how many files the release has.
async fn take_files(
    input: impl std::io::Read + Send + 'static,
    header: &BundleHeader,
    blobs: &BlobStore,
) -> Result<usize, BundleError> {
    let manifest = Manifest::parse(header.manifest.as_bytes())
        .map_err(|e| BundleError::Header(format!("its manifest: {e}")))?;
    blobs.put_bytes(header.manifest.as_bytes())?;
    let sizes: BTreeMap<Sha256Hex, u64> = manifest
        .files()
        .iter()
        .map(|f| (f.sha256, f.size))
        .collect();
    let store = blobs.clone();
    let wanted = sizes.clone();
    tokio::task::spawn_blocking(move || {
        let mut asked = wanted;
        let mut batch = store.batch("")?;
        let mut unpacked = Unpacked::default();
        let read = read_pack(
            input,
            &mut batch,
            &mut |h, total| match asked.remove(h) {
                Some(size) if size == total => Ok(()),
                Some(size) => Err(format!("it should have {size} bytes")),
                None => Err("the release's manifest does not name it, or it came twice".into()),
            },
            &mut |_| {},
            &mut unpacked,
        );
        // What arrived whole and checked is kept either way.
        batch.finish()?;
        read.map_err(BundleError::Pack)
    })
    .await
    .expect("no panic")?;
    let lacking = sizes.keys().filter(|h| !blobs.has(h)).count();
    if lacking > 0 {
        return Err(BundleError::Header(format!(
            "it lacks {lacking} of the release's {} files",
            sizes.len()
        )));
    }
    Ok(manifest.files().len())
}
