//! Where the server's files live: blobs (content-addressed) and each
//! store's upgrade documents (its backup, the processed folders).
//!
//! By default both are in the data folder. With `--blobs s3://BUCKET/PREFIX`
//! an S3-compatible object store is the shared truth, so several servers
//! can serve one chain: a blob is uploaded there before the database
//! records it as readable, and a server serving a blob it lacks fetches it
//! first into its own folder, verified against its hash (blobs never
//! change, so that folder is a cache that is never stale). Upgrade
//! documents are read and written there directly.
//!
//! Methods are synchronous, like [`crate::db::Db`]'s: they are called on
//! blocking threads (or the command line) and drive the object store on
//! the runtime they were opened in.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path as Key;
use tillup_core::Sha256Hex;
use tillup_fs::BlobStore;
use tokio::io::AsyncWriteExt;

use crate::data::DataDir;
use crate::error::Error;

/// How many objects move at once.
const PARALLEL: usize = 16;

/// The `--blobs` option: the data folder (the default), or an S3 URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobsLocation {
    /// `DATA/blobs` and `DATA/stores`.
    Local,
    /// `s3://BUCKET[/PREFIX]`; the endpoint, region and credentials come
    /// from the usual `AWS_*` environment variables (`AWS_ENDPOINT_URL`,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint).
    S3 {
        /// The URL.
        url: String,
        /// Settings named like those variables, over the environment's.
        settings: Vec<(String, String)>,
    },
}

/// Tells one stored upgrade document from any other written at its key:
/// equal versions are equal bytes. In the data folder, the file's identity,
/// size and times (a document is never changed in place, only replaced by
/// a new file); in an object store, the object's ETag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentVersion(String);

/// An upgrade document as read, with its version when the storage tells
/// one.
#[derive(Debug)]
pub struct StoredDocument {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The version those bytes are, read from the same file or object.
    pub version: Option<DocumentVersion>,
}

#[cfg(test)]
impl DocumentVersion {
    /// A version named `v`.
    pub(crate) fn for_test(v: &str) -> Self {
        Self(v.to_owned())
    }
}

/// The version of a document file, from its metadata; `None` where the
/// platform tells no file identity.
fn file_version(m: &std::fs::Metadata) -> Option<DocumentVersion> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(DocumentVersion(format!(
            "{}:{}:{}:{}.{:09}:{}.{:09}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        )))
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        None
    }
}

impl BlobsLocation {
    /// Reads `--blobs`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.starts_with("s3://") {
            Ok(Self::S3 {
                url: s.to_owned(),
                settings: Vec::new(),
            })
        } else {
            Err(Error::BlobsUrl {
                url: s.to_owned(),
                reason: "only s3:// URLs are understood (the data folder is the default)".into(),
            })
        }
    }
}

struct Shared {
    objects: Arc<dyn ObjectStore>,
    prefix: Key,
    url: String,
    runtime: tokio::runtime::Handle,
}

/// The server's files.
#[derive(Clone)]
pub struct Storage {
    local: BlobStore,
    data: DataDir,
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("local", &self.local.root())
            .field("shared", &self.shared.as_ref().map(|s| &s.url))
            .finish()
    }
}

impl Storage {
    /// Opens the data folder's blob store and, for S3, the bucket. S3
    /// needs a Tokio runtime entered on this thread: later calls use it.
    pub fn open(data: &DataDir, location: &BlobsLocation) -> Result<Self, Error> {
        let local = BlobStore::open(data.blobs())?;
        let shared = match location {
            BlobsLocation::Local => None,
            BlobsLocation::S3 { url, settings } => Some(Arc::new(connect(url, settings)?)),
        };
        Ok(Self {
            local,
            data: data.clone(),
            shared,
        })
    }

    /// This server's blob store: where uploads arrive and what it serves
    /// from (a cache of the shared store, if there is one).
    pub fn local(&self) -> &BlobStore {
        &self.local
    }

    /// Whether the database's word that a blob is readable is enough: with
    /// a shared store it is (a blob is shared before it is recorded); with
    /// the data folder alone, the folder must also hold it.
    pub fn holds(&self, h: &Sha256Hex) -> bool {
        self.shared.is_some() || self.local.has(h)
    }

    /// Makes blobs this server holds available to every server: uploads
    /// those the shared store lacks. Call before recording them.
    pub fn share(&self, hashes: &[Sha256Hex]) -> Result<(), Error> {
        let Some(s) = &self.shared else {
            return Ok(());
        };
        let local = self.local.clone();
        s.runtime.block_on(
            futures_util::stream::iter(hashes.iter().copied())
                .map(|h| {
                    let (s, local) = (s.clone(), local.clone());
                    async move {
                        let key = s.blob_key(&h);
                        if s.objects.head(&key).await.is_ok() {
                            return Ok(());
                        }
                        let path = local.path(&h);
                        let mut file =
                            tokio::fs::File::open(&path)
                                .await
                                .map_err(|source| Error::Io {
                                    path: path.clone(),
                                    source,
                                })?;
                        let mut up = object_store::buffered::BufWriter::new(s.objects.clone(), key);
                        tokio::io::copy(&mut file, &mut up)
                            .await
                            .map_err(|e| s.failed("upload", &h.to_string(), e))?;
                        up.shutdown()
                            .await
                            .map_err(|e| s.failed("upload", &h.to_string(), e))
                    }
                })
                .buffer_unordered(PARALLEL)
                .try_collect::<()>(),
        )
    }

    /// Makes sure this server holds `hashes` before serving them: fetches
    /// those it lacks from the shared store, each verified against its
    /// hash before it is kept.
    pub fn fetch(&self, hashes: &[Sha256Hex]) -> Result<(), Error> {
        let Some(s) = &self.shared else {
            return Ok(());
        };
        let lacking: Vec<Sha256Hex> = self.local.missing(hashes);
        if lacking.is_empty() {
            return Ok(());
        }
        let local = self.local.clone();
        s.runtime.block_on(
            futures_util::stream::iter(lacking)
                .map(|h| {
                    let (s, local) = (s.clone(), local.clone());
                    async move {
                        let got = s
                            .objects
                            .get(&s.blob_key(&h))
                            .await
                            .map_err(|e| s.failed("download", &h.to_string(), e))?;
                        let mut stream = got.into_stream();
                        let tmp = tempfile::NamedTempFile::new_in(local.root().join("tmp"))
                            .map_err(|source| Error::Io {
                                path: local.root().join("tmp"),
                                source,
                            })?;
                        let mut out =
                            tokio::fs::File::from_std(tmp.reopen().map_err(|source| {
                                Error::Io {
                                    path: tmp.path().to_owned(),
                                    source,
                                }
                            })?);
                        while let Some(chunk) = stream.next().await {
                            let chunk =
                                chunk.map_err(|e| s.failed("download", &h.to_string(), e))?;
                            out.write_all(&chunk).await.map_err(|source| Error::Io {
                                path: tmp.path().to_owned(),
                                source,
                            })?;
                        }
                        out.flush().await.map_err(|source| Error::Io {
                            path: tmp.path().to_owned(),
                            source,
                        })?;
                        drop(out);
                        // put_file hashes what it copies and refuses a mismatch.
                        tokio::task::spawn_blocking(move || local.put_file(tmp.path(), &h))
                            .await
                            .map_err(|e| Error::Corrupt(format!("keeping blob {h}: {e}")))??;
                        Ok::<(), Error>(())
                    }
                })
                .buffer_unordered(PARALLEL)
                .try_collect::<()>(),
        )
    }

    /// Reads a whole blob (a manifest), fetching it first if needed.
    pub fn read(&self, h: &Sha256Hex) -> Result<Vec<u8>, Error> {
        self.fetch(&[*h])?;
        Ok(self.local.read(h)?)
    }

    /// Writes an upgrade document (`stores/{store}/upgrades/{upgrade}/…`).
    pub fn put_document(&self, doc: &Document, bytes: Vec<u8>) -> Result<(), Error> {
        match &self.shared {
            None => {
                let path = doc.path(&self.data);
                if let Some(dir) = path.parent() {
                    tillup_fs::private_dir(dir)?;
                }
                Ok(tillup_fs::write_atomic(&path, &bytes)?)
            }
            Some(s) => s.runtime.block_on(async {
                s.objects
                    .put(&s.document_key(doc), bytes.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| s.failed("write", &doc.key(), e))
            }),
        }
    }

    /// Reads an upgrade document; `None` if there is none.
    pub fn get_document(&self, doc: &Document) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.get_document_versioned(doc)?.map(|d| d.bytes))
    }

    /// Reads an upgrade document with the version of what was read (when
    /// the storage tells one); `None` if there is none.
    pub fn get_document_versioned(&self, doc: &Document) -> Result<Option<StoredDocument>, Error> {
        match &self.shared {
            None => {
                let path = doc.path(&self.data);
                match std::fs::File::open(&path) {
                    Ok(mut f) => {
                        // The version of the file opened, read from it:
                        // the bytes are that file's, whatever replaces it.
                        let version = f.metadata().ok().and_then(|m| file_version(&m));
                        let mut out = Vec::new();
                        f.read_to_end(&mut out)
                            .map_err(|source| Error::Io { path, source })?;
                        Ok(Some(StoredDocument {
                            bytes: out,
                            version,
                        }))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(Error::Io { path, source }),
                }
            }
            Some(s) => s.runtime.block_on(async {
                match s.objects.get(&s.document_key(doc)).await {
                    Ok(got) => {
                        let version = got.meta.e_tag.clone().map(DocumentVersion);
                        let bytes = got
                            .bytes()
                            .await
                            .map_err(|e| s.failed("read", &doc.key(), e))?;
                        Ok(Some(StoredDocument {
                            bytes: bytes.to_vec(),
                            version,
                        }))
                    }
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(s.failed("read", &doc.key(), e)),
                }
            }),
        }
    }

    /// The version of the upgrade document stored now, without reading
    /// it (a `stat`, or a `HEAD`); `None` if there is none, or the storage
    /// tells no version.
    pub fn document_version(&self, doc: &Document) -> Result<Option<DocumentVersion>, Error> {
        match &self.shared {
            None => {
                let path = doc.path(&self.data);
                match std::fs::metadata(&path) {
                    Ok(m) => Ok(file_version(&m)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(Error::Io { path, source }),
                }
            }
            Some(s) => s.runtime.block_on(async {
                match s.objects.head(&s.document_key(doc)).await {
                    Ok(meta) => Ok(meta.e_tag.map(DocumentVersion)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(s.failed("look up", &doc.key(), e)),
                }
            }),
        }
    }

    /// Removes an upgrade document, if there is one.
    pub fn remove_document(&self, doc: &Document) -> Result<(), Error> {
        match &self.shared {
            None => {
                let path = doc.path(&self.data);
                tillup_fs::remove_file_if_exists(&path)?;
                if let Some(dir) = path.parent().filter(|d| d.exists()) {
                    tillup_fs::fsync_dir(dir)?;
                }
                Ok(())
            }
            Some(s) => s.runtime.block_on(async {
                match s.objects.delete(&s.document_key(doc)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(s.failed("remove", &doc.key(), e)),
                }
            }),
        }
    }

    /// Removes every document of a forgotten upgrade.
    pub fn remove_upgrade(&self, store: &str, upgrade: &str) -> Result<(), Error> {
        match &self.shared {
            None => {
                let dir = self.data.upgrade(store, upgrade);
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(source) => Err(Error::Io { path: dir, source }),
                }
            }
            Some(s) => s.runtime.block_on(async {
                let prefix = s.upgrade_prefix(store, upgrade);
                let keys = s.objects.list(Some(&prefix)).map_ok(|m| m.location).boxed();
                s.objects
                    .delete_stream(keys)
                    .try_collect::<Vec<_>>()
                    .await
                    .map(|_| ())
                    .map_err(|e| s.failed("remove", prefix.as_ref(), e))
            }),
        }
    }
}

/// One upgrade document.
#[derive(Clone, Debug)]
pub enum Document {
    /// The backup uploaded for an upgrade.
    Backup {
        /// The store.
        store: String,
        /// The upgrade.
        upgrade: String,
    },
    /// The backup after the stop, as changes to the one uploaded whole
    /// (an [`tillup_core::api::BackupChanges`]).
    BackupChanges {
        /// The store.
        store: String,
        /// The upgrade.
        upgrade: String,
    },
    /// The terminals' processed folders.
    Results {
        /// The store.
        store: String,
        /// The upgrade.
        upgrade: String,
    },
}

impl Document {
    fn path(&self, data: &DataDir) -> PathBuf {
        match self {
            Self::Backup { store, upgrade } => data.backup(store, upgrade),
            Self::BackupChanges { store, upgrade } => data.backup_changes(store, upgrade),
            Self::Results { store, upgrade } => data.results(store, upgrade),
        }
    }

    /// Its key under the bucket's prefix (the data folder's layout).
    pub fn key(&self) -> String {
        match self {
            Self::Backup { store, upgrade } => {
                format!("stores/{store}/upgrades/{upgrade}/backup.json")
            }
            Self::BackupChanges { store, upgrade } => {
                format!("stores/{store}/upgrades/{upgrade}/backup-changes.json")
            }
            Self::Results { store, upgrade } => {
                format!("stores/{store}/upgrades/{upgrade}/results.json")
            }
        }
    }
}

impl Shared {
    fn blob_key(&self, h: &Sha256Hex) -> Key {
        let hex = h.to_string();
        self.prefix
            .child("blobs")
            .child(&hex[..2])
            .child(hex.as_str())
    }

    fn document_key(&self, doc: &Document) -> Key {
        doc.key()
            .split('/')
            .fold(self.prefix.clone(), |k, part| k.child(part))
    }

    fn upgrade_prefix(&self, store: &str, upgrade: &str) -> Key {
        self.prefix
            .child("stores")
            .child(store)
            .child("upgrades")
            .child(upgrade)
    }

    fn failed(&self, what: &str, name: &str, e: impl std::fmt::Display) -> Error {
        Error::ObjectStore {
            url: self.url.clone(),
            what: format!("{what} {name}"),
            reason: e.to_string(),
        }
    }
}

/// Opens an `s3://BUCKET[/PREFIX]` URL with the environment's settings
/// and `settings` over them.
fn connect(url: &str, settings: &[(String, String)]) -> Result<Shared, Error> {
    let bad = |reason: String| Error::BlobsUrl {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("not s3://".into()))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("no bucket".into()));
    }
    let mut builder = object_store::aws::AmazonS3Builder::from_env();
    for (name, value) in settings {
        let key = name
            .to_ascii_lowercase()
            .parse()
            .map_err(|e| bad(format!("setting {name}: {e}")))?;
        builder = builder.with_config(key, value);
    }
    let objects = builder
        .with_bucket_name(bucket)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| bad("opened outside the server's runtime".into()))?;
    Ok(Shared {
        objects: Arc::new(objects),
        prefix: Key::from(prefix.trim_matches('/')),
        url: url.to_owned(),
        runtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_document_replaced_by_one_of_the_same_size_has_another_version() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&DataDir::new(dir.path()), &BlobsLocation::Local).unwrap();
        let doc = Document::Backup {
            store: "s1".into(),
            upgrade: "u1".into(),
        };
        assert_eq!(storage.document_version(&doc).unwrap(), None);
        assert!(storage.get_document_versioned(&doc).unwrap().is_none());

        storage.put_document(&doc, b"{\"a\":1}".to_vec()).unwrap();
        let first = storage.document_version(&doc).unwrap().expect("a version");
        let read = storage.get_document_versioned(&doc).unwrap().unwrap();
        assert_eq!(read.bytes, b"{\"a\":1}");
        assert_eq!(
            read.version.as_ref(),
            Some(&first),
            "reading changes nothing"
        );
        assert_eq!(storage.document_version(&doc).unwrap(), Some(first.clone()));

        // Same size, at once: still told apart.
        storage.put_document(&doc, b"{\"a\":2}".to_vec()).unwrap();
        let second = storage.document_version(&doc).unwrap().expect("a version");
        assert_ne!(second, first);
        let read = storage.get_document_versioned(&doc).unwrap().unwrap();
        assert_eq!(read.bytes, b"{\"a\":2}");
        assert_eq!(read.version, Some(second));

        storage.remove_document(&doc).unwrap();
        assert_eq!(storage.document_version(&doc).unwrap(), None);
    }
}
