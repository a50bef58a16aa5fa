//! A release in one file, for a store without a network (a USB stick):
//! `tillup-server export` writes it, `tillup import` reads it.
//!
//! ```text
//! tillup-bundle 1\n
//! <header length: u64, little-endian><header: JSON, BundleHeader>
//! <a pack (the `pack` format) of the release's files>
//! ```
//!
//! Nothing in a bundle is trusted for being there: the header carries the
//! channel's signed log exactly as the server serves it, with its key
//! lists, and the release's manifest; the reader verifies the log as a
//! download would be, the manifest against the hash the log signs, and each
//! file of the pack against the manifest as it arrives.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use semver::Version;
use serde::{Deserialize, Serialize};
use tillup_core::Sha256Hex;
use tillup_core::api::PackEntry;
use tillup_core::keys::KeyChain;

use crate::pack::{PackError, Sent, write_pack};

/// The first bytes of every bundle.
pub const MAGIC: &[u8] = b"tillup-bundle 1\n";

/// The largest header read: a log and one manifest (a folder of 10,000
/// files is about 2 MB of manifest).
pub const MAX_HEADER_BYTES: u64 = 64 * 1024 * 1024;

/// What a bundle says before its files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHeader {
    /// The channel the log is of.
    pub channel: String,
    /// The release the bundle carries.
    pub version: Version,
    /// The channel's log, its bytes exactly as signed.
    pub log: String,
    /// The log's minisign signature (`.minisig` text).
    pub signature: String,
    /// The server's key lists, for a log signed by a key the root lists.
    #[serde(default)]
    pub keys: KeyChain,
    /// The release's manifest, its bytes exactly as the log names them.
    pub manifest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a tillup bundle (it does not begin with `tillup-bundle 1`)")]
    NotABundle,
    #[error("its header is {0} bytes, over the {MAX_HEADER_BYTES} a bundle may have")]
    HeaderTooLarge(u64),
    #[error("its header is unreadable: {0}")]
    Header(String),
    #[error("it ends before its header does")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Blob(#[from] tillup_fs::Error),
}

/// Writes a bundle of `header` and the files `files` to `out` (each
/// located by `locate`), compressed at `level`.
pub fn write_bundle(
    header: &BundleHeader,
    files: &[Sha256Hex],
    locate: &dyn Fn(&Sha256Hex) -> Option<PathBuf>,
    level: i32,
    mut out: impl Write,
) -> Result<Sent, BundleError> {
    let json = serde_json::to_vec(header).map_err(|e| BundleError::Header(e.to_string()))?;
    out.write_all(MAGIC)?;
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)?;
    let entries: Vec<PackEntry> = files
        .iter()
        .map(|h| PackEntry {
            sha256: *h,
            from: 0,
        })
        .collect();
    Ok(write_pack(&entries, locate, level, &|_| {}, out)?)
}

/// Reads a bundle's header from `input`, leaving it at the pack (read it
/// with [`crate::pack::read_pack`]).
pub fn read_header(input: &mut impl Read) -> Result<BundleHeader, BundleError> {
    let mut magic = vec![0u8; MAGIC.len()];
    read_exact(input, &mut magic).map_err(|_| BundleError::NotABundle)?;
    if magic != MAGIC {
        return Err(BundleError::NotABundle);
    }
    let mut len = [0u8; 8];
    read_exact(input, &mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(BundleError::HeaderTooLarge(len));
    }
    let mut json = vec![0u8; len as usize];
    read_exact(input, &mut json)?;
    serde_json::from_slice(&json).map_err(|e| BundleError::Header(e.to_string()))
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), BundleError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => BundleError::Truncated,
        _ => BundleError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{Unpacked, read_pack};
    use tillup_fs::BlobStore;

    fn header() -> BundleHeader {
        BundleHeader {
            channel: "stable".into(),
            version: Version::new(1, 1, 0),
            log: "{\"channel\":\"stable\"}".into(),
            signature: "untrusted comment: x\nRW…".into(),
            keys: KeyChain::default(),
            manifest: "{\"files\":[]}".into(),
        }
    }

    #[test]
    fn a_bundle_reads_back_its_header_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let from = BlobStore::open(dir.path().join("from")).unwrap();
        let files: Vec<Sha256Hex> = [&b"one"[..], &[7u8; 300_000][..]]
            .iter()
            .map(|b| from.put_bytes(b).unwrap())
            .collect();
        let mut bytes = Vec::new();
        let source = from.clone();
        let sent = write_bundle(
            &header(),
            &files,
            &move |h| source.has(h).then(|| source.path(h)),
            3,
            &mut bytes,
        )
        .unwrap();
        assert_eq!(sent.blobs, 2);

        let to = BlobStore::open(dir.path().join("to")).unwrap();
        // Read twice: a bundle imported again over what it left is taken whole.
        for _ in 0..2 {
            let mut input = &bytes[..];
            assert_eq!(read_header(&mut input).unwrap(), header());
            let mut batch = to.batch("").unwrap();
            let mut unpacked = Unpacked::default();
            read_pack(
                input,
                &mut batch,
                &mut |_, _| Ok(()),
                &mut |_| {},
                &mut unpacked,
            )
            .unwrap();
            batch.finish().unwrap();
            assert_eq!(unpacked.blobs, files);
            assert!(files.iter().all(|h| to.has(h)));
        }
    }

    #[test]
    fn anything_else_is_refused_before_it_is_read() {
        let mut other = &b"PK\x03\x04 a zip file"[..];
        assert!(matches!(
            read_header(&mut other),
            Err(BundleError::NotABundle)
        ));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            read_header(&mut &huge[..]),
            Err(BundleError::HeaderTooLarge(u64::MAX))
        ));
        let mut short = MAGIC.to_vec();
        short.extend_from_slice(&100u64.to_le_bytes());
        short.extend_from_slice(b"{\"chan");
        assert!(matches!(
            read_header(&mut &short[..]),
            Err(BundleError::Truncated)
        ));
    }
}
