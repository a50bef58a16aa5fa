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
use futures_util::Stream;
use tillup_core::Sha256Hex;
use tillup_core::api::PackEntry;
use tillup_fs::BlobStore;

pub mod bundle;
pub mod pack;

pub use pack::{PackError, PackSink, Sent, Unpacked};

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

/// Chunks produced ahead of a slow reader: memory stays bounded at about
/// `CHUNKS_AHEAD × SOURCE_CHUNK` per pack in flight.
const CHUNKS_AHEAD: usize = 8;

/// A pack of `entries` as a stream of bytes, for an HTTP body. Each chunk
/// is read and compressed on a blocking thread a few chunks ahead of the
/// reader; waiting for the reader takes no thread, however slow it is. If
/// a blob cannot be sent, the stream ends with an error: the receiver sees
/// a cut pack and keeps what arrived whole.
///
/// `sent` hears the bytes of files as they are packed.
pub fn pack_body(
    entries: Vec<PackEntry>,
    locate: Locate,
    level: i32,
    sent: Progress,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(CHUNKS_AHEAD);
    tokio::spawn(async move {
        let source = match pack::PackSource::new(entries, level) {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                return;
            }
        };
        let mut state = Some((source, locate, sent));
        loop {
            let (mut source, locate, mut sent) = state.take().expect("put back after each chunk");
            let hop = tokio::task::spawn_blocking(move || {
                let chunk = source.next_chunk(&*locate, &mut *sent);
                (source, locate, sent, chunk)
            })
            .await;
            let failed = match hop {
                Ok((source, locate, sent, Ok(Some(bytes)))) => {
                    // The reader went away: nothing to tell.
                    if tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                        return;
                    }
                    state = Some((source, locate, sent));
                    continue;
                }
                Ok((source, _, _, Ok(None))) => {
                    tracing::debug!(
                        blobs = source.sent.blobs,
                        bytes = source.sent.bytes,
                        "pack sent"
                    );
                    return;
                }
                Ok((_, _, _, Err(e))) => e.to_string(),
                Err(e) => format!("the packing task failed: {e}"),
            };
            tracing::warn!("a pack stopped: {failed}");
            let _ = tx.send(Err(io::Error::other(failed))).await;
            return;
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

/// What [`receive_pack`] did: the blobs that entered the store, and how
/// the pack ended.
#[derive(Debug)]
pub struct Received {
    pub unpacked: Unpacked,
    pub result: Result<(), PackError>,
}

/// Bytes of a body gathered before they go to a blocking thread together:
/// one hop per this many, or per whatever arrived when the body waits.
const FEED: usize = 1 << 20;

/// Reads a pack from an HTTP body into `store` as `owner`'s transfer (see
/// [`BlobStore::upload_path`]). The body is awaited here; only the bytes
/// that arrived go to a blocking thread, to be decompressed, hashed and
/// written ([`PackSink`]), so a slow sender holds no thread, whatever the
/// number of uploads. Every blob received whole is in the store when this
/// returns, even if the pack was cut or refused after it.
pub async fn receive_pack<S, E>(
    body: S,
    store: BlobStore,
    owner: String,
    admit: Admit,
    progress: Progress,
) -> Received
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    use futures_util::{FutureExt, StreamExt};
    let failed = |e: PackError| Received {
        unpacked: Unpacked::default(),
        result: Err(e),
    };
    let batch = match store.batch(&owner) {
        Ok(b) => b,
        Err(e) => return failed(e.into()),
    };
    let sink = match PackSink::new() {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let mut body = body;
    let mut state = Some(Receiving {
        sink,
        batch,
        admit,
        progress,
    });
    let outcome = loop {
        // Wait for the next piece, then take what else is there already.
        let mut pieces = Vec::new();
        let mut end: Option<Option<io::Error>> = None;
        match body.next().await {
            Some(Ok(b)) => pieces.push(b),
            Some(Err(e)) => end = Some(Some(io::Error::other(e))),
            None => end = Some(None),
        }
        let mut size: usize = pieces.iter().map(Bytes::len).sum();
        while end.is_none() && size < FEED {
            match body.next().now_or_never() {
                Some(Some(Ok(b))) => {
                    size += b.len();
                    pieces.push(b);
                }
                Some(Some(Err(e))) => end = Some(Some(io::Error::other(e))),
                Some(None) => end = Some(None),
                None => break,
            }
        }
        let mut r = state.take().expect("put back after each hop");
        let hop = tokio::task::spawn_blocking(move || {
            let outcome = r.take(&pieces, end);
            (r, outcome)
        });
        match hop.await {
            Ok((r, outcome)) => {
                state = Some(r);
                if let Some(outcome) = outcome {
                    break outcome;
                }
            }
            Err(e) => {
                return failed(PackError::Cut {
                    received: 0,
                    source: io::Error::other(format!("the receiving task failed: {e}")),
                });
            }
        }
    };
    let Receiving {
        mut sink, batch, ..
    } = state.expect("put back after the last hop");
    let unpacked = std::mem::take(&mut sink.unpacked);
    // Whole blobs are kept whatever came after them.
    match tokio::task::spawn_blocking(move || batch.finish()).await {
        Ok(Ok(_)) => Received {
            unpacked,
            result: outcome,
        },
        Ok(Err(e)) => failed(e.into()),
        Err(e) => failed(PackError::Cut {
            received: 0,
            source: io::Error::other(format!("the receiving task failed: {e}")),
        }),
    }
}

/// A pack being received, moved to a blocking thread for each hop.
struct Receiving {
    sink: PackSink,
    batch: tillup_fs::Batch,
    admit: Admit,
    progress: Progress,
}

impl Receiving {
    /// Takes `pieces`, then the body's `end` if it came (`Some(None)`: it
    /// ended; `Some(Some(e))`: it broke). Returns how the pack ended, once
    /// it did.
    fn take(
        &mut self,
        pieces: &[Bytes],
        end: Option<Option<io::Error>>,
    ) -> Option<Result<(), PackError>> {
        for piece in pieces {
            let fed = self.sink.feed(
                piece,
                &mut self.batch,
                &mut *self.admit,
                &mut *self.progress,
            );
            if fed.is_err() || self.sink.is_done() {
                return Some(fed);
            }
        }
        match end? {
            None => Some(self.sink.end()),
            Some(e) => Some(self.sink.cut(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that do not compress (xorshift).
    fn bytes(seed: u8, len: usize) -> Vec<u8> {
        let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// `pack` as a body of `piece`-byte chunks, cut after `cut` bytes.
    fn body(
        pack: &[u8],
        piece: usize,
        cut: Option<usize>,
    ) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + Unpin + 'static {
        let end = cut.unwrap_or(pack.len());
        let mut items: Vec<Result<Bytes, io::Error>> = pack[..end]
            .chunks(piece)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        if cut.is_some() {
            items.push(Err(io::Error::other("connection reset")));
        }
        futures_util::stream::iter(items)
    }

    fn any() -> Admit {
        Box::new(|_, _| Ok(()))
    }

    /// `body` received into `store` as store `s`'s, every blob admitted.
    async fn receive(
        store: &BlobStore,
        body: impl Stream<Item = Result<Bytes, io::Error>> + Send + Unpin + 'static,
    ) -> Received {
        receive_pack(body, store.clone(), "s".into(), any(), Box::new(|_| {})).await
    }

    #[tokio::test]
    async fn a_pack_in_pieces_of_any_size_arrives_whole_and_a_cut_one_resumes() {
        let (a, b) = (bytes(3, 300_000), bytes(7, 1_000));
        let pack = pack::in_memory(&[(&a[..], 0), (&b[..], 0)], 3);
        for piece in [1, 7, 4096, 1 << 20] {
            let dir = tempfile::tempdir().unwrap();
            let store = BlobStore::open(dir.path()).unwrap();
            let r = receive(&store, body(&pack, piece, None)).await;
            r.result.unwrap();
            assert_eq!(
                r.unpacked.blobs,
                [Sha256Hex::of(&a), Sha256Hex::of(&b)],
                "pieces of {piece}"
            );
            assert_eq!(store.read(&Sha256Hex::of(&a)).unwrap(), a);
        }

        // Cut inside the large blob: it stays in part, and the next pack
        // sends the rest from there.
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let r = receive(&store, body(&pack, 4096, Some(pack.len() / 2))).await;
        assert!(
            r.result.as_ref().is_err_and(PackError::is_cut),
            "{:?}",
            r.result
        );
        let held = store.partial_len(&Sha256Hex::of(&a), "s").unwrap();
        assert!(held > 0 && held < a.len() as u64, "{held}");
        let rest = pack::in_memory(&[(&a[..], held), (&b[..], 0)], 3);
        let r = receive(&store, body(&rest, 999, None)).await;
        r.result.unwrap();
        assert_eq!(r.unpacked.bytes, a.len() as u64 - held + b.len() as u64);
        assert_eq!(store.read(&Sha256Hex::of(&a)).unwrap(), a);
    }

    #[tokio::test]
    async fn what_is_not_a_pack_or_refused_stops_it_and_keeps_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let page = b"<html>502 Bad Gateway</html>".to_vec();
        let r = receive(&store, body(&page, 5, None)).await;
        assert!(
            matches!(r.result, Err(PackError::NotAPack)),
            "{:?}",
            r.result
        );

        let (a, b) = (bytes(5, 10_000), bytes(9, 20_000));
        let pack = pack::in_memory(&[(&a[..], 0), (&b[..], 0)], 3);
        let only_a = Sha256Hex::of(&a);
        let admit: Admit = Box::new(move |h, _| {
            if *h == only_a {
                Ok(())
            } else {
                Err("not asked for".into())
            }
        });
        let r = receive_pack(
            body(&pack, 3000, None),
            store.clone(),
            "s".into(),
            admit,
            Box::new(|_| {}),
        )
        .await;
        assert!(
            matches!(r.result, Err(PackError::Refused { .. })),
            "{:?}",
            r.result
        );
        assert!(store.has(&Sha256Hex::of(&a)) && !store.has(&Sha256Hex::of(&b)));
    }
}
