//! tillup's one blob-transfer protocol, used by the server, the agent and
//! the listener alike.
//!
//! Everything that moves is a content-addressed blob, and blobs move in
//! **packs** ([`pack`]): one request names many blobs (each with the byte it
//! resumes from) and one zstd-compressed body carries them, so a store's
//! upgrade costs a handful of round trips whatever the number of files, and
//! the WAN carries compressed bytes. A receiver admits each blob before
//! reading it, hashes it while it arrives, and makes a pack's blobs durable
//! together ([`tillup_fs::Batch`]). A cut pack keeps every blob that arrived
//! whole and the part of the one it was in; the next pack asks for the rest
//! from there, so no completed byte crosses twice.
//!
//! This crate holds the format and the glue between it and async HTTP
//! bodies ([`pack_body`], [`receive_pack`]); the routes are in
//! `tillup_core::api`.

use std::io;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};
use tillup_core::Sha256Hex;
use tillup_core::api::PackEntry;
use tillup_fs::BlobStore;

pub mod pack;

pub use pack::{PackError, Sent, Unpacked};

/// What a receiver expects of a blob's size before it reads its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// The signed size, from a manifest.
    Exactly(u64),
    /// Unknown but bounded (a release's manifest, named by the log by its
    /// hash only).
    AtMost(u64),
}

impl Size {
    /// The most bytes it may have.
    pub fn bound(self) -> u64 {
        match self {
            Size::Exactly(n) | Size::AtMost(n) => n,
        }
    }

    /// Whether a blob of `total` bytes may be this.
    pub fn admits(self, total: u64) -> bool {
        match self {
            Size::Exactly(n) => total == n,
            Size::AtMost(n) => total <= n,
        }
    }
}

/// Says where the bytes of a blob are on the sending side, if there.
pub type Locate = Box<dyn Fn(&Sha256Hex) -> Option<PathBuf> + Send + Sync>;
/// Admits or refuses a blob of a pack before its bytes are read (see [`pack::read_pack`]).
pub type Admit = Box<dyn FnMut(&Sha256Hex, u64) -> Result<(), String> + Send>;
/// Hears the bytes of files as they arrive.
pub type Progress = Box<dyn FnMut(u64) + Send>;

/// The size of the chunks a pack body is made of.
const CHUNK: usize = 256 * 1024;
/// Chunks written ahead of a slow reader: memory stays bounded at about
/// `CHUNKS_AHEAD × CHUNK` per pack in flight.
const CHUNKS_AHEAD: usize = 8;

/// A pack of `entries` as a stream of bytes, for an HTTP body. It is
/// written on a blocking thread a few chunks ahead of the reader. If a
/// blob cannot be sent, the stream ends with an error: the receiver sees a
/// cut pack and keeps what arrived whole.
///
/// `sent` hears the bytes of files as they are packed.
pub fn pack_body(
    entries: Vec<PackEntry>,
    locate: Locate,
    level: i32,
    sent: Progress,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut out = std::io::BufWriter::with_capacity(CHUNK, ChannelWriter { tx: tx.clone() });
        let sent = std::sync::Mutex::new(sent);
        let count = |n: u64| (sent.lock().unwrap_or_else(|p| p.into_inner()))(n);
        match pack::write_pack(&entries, &*locate, level, &count, &mut out) {
            Ok(sent) => {
                tracing::debug!(blobs = sent.blobs, bytes = sent.bytes, "pack sent");
            }
            // The reader went away: nothing to tell.
            Err(PackError::Cut { .. }) => {}
            Err(e) => {
                tracing::warn!("a pack stopped: {e}");
                let _ = out
                    .into_inner()
                    .map(|w| w.tx.blocking_send(Err(io::Error::other(e.to_string()))));
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

/// Writes into the channel of [`pack_body`].
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
}

impl io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reader went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What [`receive_pack`] did: the blobs that entered the store, and how
/// the pack ended.
#[derive(Debug)]
pub struct Received {
    pub unpacked: Unpacked,
    pub result: Result<(), PackError>,
}

/// Reads a pack from an HTTP body into `store` as `owner`'s transfer (see
/// [`BlobStore::upload_path`]), on a blocking thread. Every blob received
/// whole is in the store when this returns, even if the pack was cut or
/// refused after it.
pub async fn receive_pack<S, E>(
    body: S,
    store: BlobStore,
    owner: String,
    mut admit: Admit,
    mut progress: Progress,
) -> Received
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(
        body.map_err(io::Error::other),
    ));
    let job = tokio::task::spawn_blocking(move || {
        let mut unpacked = Unpacked::default();
        let mut batch = match store.batch(&owner) {
            Ok(b) => b,
            Err(e) => {
                return Received {
                    unpacked,
                    result: Err(e.into()),
                };
            }
        };
        let result = pack::read_pack(reader, &mut batch, &mut admit, &mut progress, &mut unpacked);
        // Whole blobs are kept whatever came after them.
        match batch.finish() {
            Ok(_) => Received { unpacked, result },
            Err(e) => Received {
                unpacked: Unpacked::default(),
                result: Err(e.into()),
            },
        }
    });
    match job.await {
        Ok(r) => r,
        Err(e) => Received {
            unpacked: Unpacked::default(),
            result: Err(PackError::Cut {
                received: 0,
                source: io::Error::other(format!("the receiving task failed: {e}")),
            }),
        },
    }
}
