//! `tillup-server export`: one release of a channel in one bundle file
//! (`tillup_transfer::bundle`), for a store without a network.

use std::path::Path;

use semver::Version;
use tillup_core::Sha256Hex;
use tillup_core::log::VersionLog;
use tillup_core::manifest::Manifest;
use tillup_transfer::bundle::{BundleError, BundleHeader, write_bundle};
use tillup_transfer::pack::WAN_LEVEL;

use crate::db::Db;
use crate::error::{Error, check_id};
use crate::storage::Storage;

/// What [`export`] wrote.
#[derive(Debug)]
pub struct Exported {
    /// The sequence of the log the bundle carries.
    pub sequence: u64,
    /// When that log expires: the bundle must be imported before.
    pub expires: jiff::Timestamp,
    /// Files in the bundle (each distinct file once).
    pub files: u64,
    /// Bytes of files, before compression.
    pub bytes: u64,
}

/// Writes `version` of `channel`, with the channel's newest signed log and
/// the key lists, into the bundle file `out` (replaced whole, or left as
/// it was).
pub fn export(
    db: &dyn Db,
    storage: &Storage,
    channel: &str,
    version: &Version,
    out: &Path,
) -> Result<Exported, Error> {
    check_id("channel", channel)?;
    let signed = db
        .latest_log(channel)?
        .ok_or_else(|| Error::NothingPublished(channel.to_owned()))?;
    let log = VersionLog::parse(&signed.bytes)
        .map_err(|e| Error::Corrupt(format!("the log of channel `{channel}`: {e}")))?;
    let release = log.release(version).ok_or_else(|| Error::NotInLog {
        channel: channel.to_owned(),
        version: version.clone(),
    })?;
    storage.fetch(&[release.sha256])?;
    let manifest_path = storage.local().path(&release.sha256);
    let manifest_bytes = std::fs::read(&manifest_path).map_err(|source| Error::Io {
        path: manifest_path,
        source,
    })?;
    let manifest = Manifest::parse(&manifest_bytes)
        .map_err(|e| Error::Corrupt(format!("the manifest of release {version}: {e}")))?;
    let files: Vec<Sha256Hex> = manifest.hashes().into_iter().collect();
    storage.fetch(&files)?;
    let header = BundleHeader {
        channel: channel.to_owned(),
        version: version.clone(),
        log: String::from_utf8(signed.bytes)
            .map_err(|e| Error::Corrupt(format!("the log of channel `{channel}`: {e}")))?,
        signature: signed.signature,
        keys: db.key_chain()?,
        manifest: String::from_utf8(manifest_bytes)
            .map_err(|e| Error::Corrupt(format!("the manifest of release {version}: {e}")))?,
    };
    let io = |source| Error::Io {
        path: out.to_owned(),
        source,
    };
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty());
    let mut tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new("."))).map_err(io)?;
    let local = storage.local().clone();
    let sent = write_bundle(
        &header,
        &files,
        &move |h| local.has(h).then(|| local.path(h)),
        WAN_LEVEL,
        std::io::BufWriter::new(tmp.as_file_mut()),
    )
    .map_err(|e| match e {
        BundleError::Pack(source) => Error::Pack { source },
        BundleError::Io(source) => io(source),
        BundleError::Blob(e) => Error::Fs(e),
        BundleError::NotABundle
        | BundleError::HeaderTooLarge(_)
        | BundleError::Header(_)
        | BundleError::Truncated => Error::Corrupt(e.to_string()),
    })?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(out).map_err(|e| io(e.error))?;
    Ok(Exported {
        sequence: signed.sequence,
        expires: signed.expires,
        files: sent.blobs,
        bytes: sent.bytes,
    })
}
