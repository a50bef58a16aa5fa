//! The pack format: many blobs in one zstd stream.
//!
//! ```text
//! zstd( MAGIC
//!       { sha256: 32 bytes | total: u64 BE | from: u64 BE | bytes from..total }*
//!       32 zero bytes )
//! ```
//!
//! `from` lets a cut transfer resume inside a blob: the receiver holds the
//! first `from` bytes already. The closing zero hash tells a whole pack from
//! a cut one. Nothing in a pack is trusted: the receiver admits each blob
//! (is it one it asked for or accepts, of the size it expects?) before it
//! reads its bytes, and every blob is hashed before it enters the store.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use tillup_core::Sha256Hex;
use tillup_core::api::PackEntry;
use tillup_fs::Batch;

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The first bytes of every pack (after decompression).
pub const MAGIC: &[u8] = b"tillup-pack 1\n";

/// The zstd level for packs sent over a WAN: zstd's default, about
/// 300 MB/s per core, which outruns any store's line.
pub const WAN_LEVEL: i32 = 3;
/// The zstd level for packs on the shop LAN, where the line is fast and the
/// terminals' CPUs are small.
pub const LAN_LEVEL: i32 = 1;
/// Bytes of files after which the sender ends a zstd block at the next
/// blob boundary: what a cut can cost on top of the blob it cut.
pub const FLUSH_AFTER: u64 = 64 * 1024;
/// The largest zstd window a receiver accepts (2^24 = 16 MiB): the levels
/// above use far less, and a pack asking for more is refused rather than
/// allowed to claim the memory.
pub const MAX_WINDOW_LOG: u32 = 24;

/// What went wrong with a pack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// The bytes are not a pack (or a pack of another version).
    #[error(
        "the answer is not a tillup pack (no `tillup-pack 1` header); is the peer a tillup of this version?"
    )]
    NotAPack,
    /// The receiver does not accept a blob the pack holds.
    #[error("the pack holds file {sha256} ({total} bytes), which was refused: {reason}")]
    Refused {
        sha256: Sha256Hex,
        total: u64,
        reason: String,
    },
    /// The sender cannot read a blob it was asked for.
    #[error("file {sha256} cannot be sent: {reason}")]
    Unavailable { sha256: Sha256Hex, reason: String },
    /// Storing a blob failed: a wrong hash, a wrong offset, a full disk, a cut.
    #[error(transparent)]
    Blob(#[from] tillup_fs::Error),
    /// The stream broke between two blobs or inside a header.
    #[error(
        "the pack was cut after {received} bytes of files: {source}; what arrived whole is kept"
    )]
    Cut { received: u64, source: io::Error },
}

impl PackError {
    /// Whether trying again may help: the stream was cut, or a blob's bytes
    /// stopped short. A refusal or a wrong hash will not pass.
    pub fn is_cut(&self) -> bool {
        matches!(
            self,
            PackError::Cut { .. } | PackError::Blob(tillup_fs::Error::TransferCut { .. })
        )
    }
}

/// What [`write_pack`] sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub blobs: u64,
    /// Bytes of files, before compression.
    pub bytes: u64,
}

/// Writes a pack of `entries` to `out`, compressed at `level`; `locate`
/// says where each blob's bytes are. A blob it cannot find, or shorter
/// than its `from`, stops the pack with [`PackError::Unavailable`] (the
/// receiver sees a pack without its end and keeps what arrived whole).
pub fn write_pack(
    entries: &[PackEntry],
    locate: &dyn Fn(&Sha256Hex) -> Option<PathBuf>,
    level: i32,
    progress: &dyn Fn(u64),
    mut out: impl Write,
) -> Result<Sent, PackError> {
    let mut source = PackSource::new(entries.to_vec(), level)?;
    let cut = |source| PackError::Cut {
        received: 0,
        source,
    };
    while let Some(chunk) = source.next_chunk(locate, &mut |n| progress(n))? {
        out.write_all(&chunk).map_err(cut)?;
    }
    out.flush().map_err(cut)?;
    Ok(source.sent)
}

/// A pack produced a chunk at a time, on demand: the sending end of a pack
/// for an async body, so that no thread waits on a slow reader.
pub struct PackSource {
    entries: std::vec::IntoIter<PackEntry>,
    z: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
    /// The blob being sent: its file, the bytes left, its hash.
    current: Option<(std::fs::File, u64, Sha256Hex)>,
    since_flush: u64,
    /// What went into the pack so far.
    pub sent: Sent,
}

/// The compressed bytes a chunk of a [`PackSource`] holds, about.
pub const SOURCE_CHUNK: usize = 256 * 1024;

impl PackSource {
    pub fn new(entries: Vec<PackEntry>, level: i32) -> Result<Self, PackError> {
        let cut = |source| PackError::Cut {
            received: 0,
            source,
        };
        let mut z = zstd::stream::write::Encoder::new(Vec::with_capacity(SOURCE_CHUNK), level)
            .map_err(cut)?;
        z.write_all(MAGIC).map_err(cut)?;
        Ok(Self {
            entries: entries.into_iter(),
            z: Some(z),
            current: None,
            since_flush: 0,
            sent: Sent::default(),
        })
    }

    /// The next compressed bytes, or `None` once the pack ended. `locate`
    /// says where each blob's bytes are; `progress` hears the bytes of
    /// files as they are packed.
    pub fn next_chunk(
        &mut self,
        locate: &dyn Fn(&Sha256Hex) -> Option<PathBuf>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Option<Vec<u8>>, PackError> {
        let cut = |source| PackError::Cut {
            received: 0,
            source,
        };
        let Some(z) = self.z.as_mut() else {
            return Ok(None);
        };
        let mut buf = vec![0u8; 64 * 1024];
        while z.get_ref().len() < SOURCE_CHUNK {
            if let Some((file, left, sha256)) = &mut self.current {
                let unavailable = |reason: String| PackError::Unavailable {
                    sha256: *sha256,
                    reason,
                };
                if *left == 0 {
                    self.sent.blobs += 1;
                    // End the zstd block after a blob once enough went into
                    // it: a receiver decodes a block only whole, so what
                    // arrived before a cut is usable, while small files
                    // still share blocks.
                    if self.since_flush >= FLUSH_AFTER {
                        z.flush().map_err(cut)?;
                        self.since_flush = 0;
                    }
                    self.current = None;
                    continue;
                }
                let want = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                let n = match file.read(&mut buf[..want]) {
                    Ok(0) => {
                        return Err(unavailable(format!(
                            "it shrank while being sent ({left} bytes short)"
                        )));
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(unavailable(e.to_string())),
                };
                z.write_all(&buf[..n]).map_err(cut)?;
                progress(n as u64);
                *left -= n as u64;
                self.sent.bytes += n as u64;
                self.since_flush += n as u64;
            } else if let Some(e) = self.entries.next() {
                let unavailable = |reason: String| PackError::Unavailable {
                    sha256: e.sha256,
                    reason,
                };
                let path = locate(&e.sha256).ok_or_else(|| unavailable("not held here".into()))?;
                let mut file =
                    std::fs::File::open(&path).map_err(|err| unavailable(err.to_string()))?;
                let total = file
                    .metadata()
                    .map_err(|err| unavailable(err.to_string()))?
                    .len();
                if e.from > total {
                    return Err(unavailable(format!(
                        "asked from byte {}, it has {total}",
                        e.from
                    )));
                }
                io::Seek::seek(&mut file, io::SeekFrom::Start(e.from))
                    .map_err(|err| unavailable(err.to_string()))?;
                z.write_all(e.sha256.as_bytes()).map_err(cut)?;
                z.write_all(&total.to_be_bytes()).map_err(cut)?;
                z.write_all(&e.from.to_be_bytes()).map_err(cut)?;
                self.current = Some((file, total - e.from, e.sha256));
            } else {
                z.write_all(&[0u8; 32]).map_err(cut)?;
                let z = self.z.take().expect("checked above");
                let rest = z.finish().map_err(cut)?;
                return Ok(Some(rest));
            }
        }
        Ok(Some(std::mem::take(z.get_mut())))
    }
}

/// A pack of blobs held in memory, each sent from byte `from` on (for
/// tests and tools; a peer sends with [`write_pack`]).
pub fn in_memory(blobs: &[(&[u8], u64)], level: i32) -> Vec<u8> {
    let entries: Vec<_> = blobs
        .iter()
        .map(|(bytes, from)| {
            let rest = &bytes[usize::try_from(*from)
                .unwrap_or(usize::MAX)
                .min(bytes.len())..];
            (Sha256Hex::of(bytes), bytes.len() as u64, *from, rest)
        })
        .collect();
    forged(&entries, level)
}

/// A pack of entries as given, `(sha256, total, from, bytes)`, whether or
/// not the bytes are what they claim: for tests of what a receiver refuses.
pub fn forged(entries: &[(Sha256Hex, u64, u64, &[u8])], level: i32) -> Vec<u8> {
    let mut raw = MAGIC.to_vec();
    for (sha256, total, from, bytes) in entries {
        raw.extend(sha256.as_bytes());
        raw.extend(total.to_be_bytes());
        raw.extend(from.to_be_bytes());
        raw.extend(*bytes);
    }
    raw.extend([0u8; 32]);
    zstd::encode_all(&raw[..], level).expect("compressing into memory does not fail")
}

/// What [`read_pack`] took in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Blobs received whole and checked, in the order they came.
    pub blobs: Vec<Sha256Hex>,
    /// Bytes of files received (what was held before a resume excluded).
    pub bytes: u64,
}

/// Reads a pack from `input` (compressed) into `batch`: a [`PackSink`]
/// fed from a reader, for callers that have one.
pub fn read_pack(
    mut input: impl Read,
    batch: &mut Batch,
    admit: &mut dyn FnMut(&Sha256Hex, u64) -> Result<(), String>,
    progress: &mut dyn FnMut(u64),
    out: &mut Unpacked,
) -> Result<(), PackError> {
    let mut sink = PackSink::new()?;
    let mut buf = vec![0u8; 64 * 1024];
    let result = loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break sink.end(),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break sink.cut(e),
        };
        if let Err(e) = sink.feed(&buf[..n], batch, admit, progress) {
            break Err(e);
        }
        if sink.is_done() {
            break Ok(());
        }
    };
    *out = std::mem::take(&mut sink.unpacked);
    result
}

/// Reads a pack pushed to it piece by piece: the receiving end of a pack
/// whose bytes come from an async body, so that no thread waits on the
/// network for them. Each blob is first put to `admit(sha256, total)`,
/// which refuses what the receiver did not ask for or does not accept; its
/// bytes are then appended to what the receiver holds of it (`from` must
/// match) and hashed. Blobs received whole stay in the batch whatever
/// happens after them: the caller finishes the batch.
pub struct PackSink {
    z: zstd::stream::raw::Decoder<'static>,
    /// The first compressed bytes, until they show a zstd frame.
    first: Vec<u8>,
    /// A header being read (the magic, then each blob's 48 bytes).
    head: Vec<u8>,
    state: SinkState,
    /// The decompressed bytes of one step.
    out_buf: Vec<u8>,
    /// What entered so far.
    pub unpacked: Unpacked,
}

enum SinkState {
    Magic,
    Head,
    Blob(Box<tillup_fs::Incoming>),
    Done,
}

impl PackSink {
    pub fn new() -> Result<Self, PackError> {
        let cut = |source| PackError::Cut {
            received: 0,
            source,
        };
        let mut z = zstd::stream::raw::Decoder::new().map_err(cut)?;
        z.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(MAX_WINDOW_LOG))
            .map_err(cut)?;
        Ok(Self {
            z,
            first: Vec::with_capacity(ZSTD_MAGIC.len()),
            head: Vec::with_capacity(48),
            state: SinkState::Magic,
            out_buf: vec![0u8; 256 * 1024],
            unpacked: Unpacked::default(),
        })
    }

    /// Whether the pack's end arrived (anything after it is ignored).
    pub fn is_done(&self) -> bool {
        matches!(self.state, SinkState::Done)
    }

    /// Takes the next compressed bytes.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        batch: &mut Batch,
        admit: &mut dyn FnMut(&Sha256Hex, u64) -> Result<(), String>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), PackError> {
        // A zstd frame starts with its magic number: anything else (an
        // error page, a proxy's answer) is not a pack, which a cut could
        // not make.
        if self.first.len() < ZSTD_MAGIC.len() {
            let n = (ZSTD_MAGIC.len() - self.first.len()).min(input.len());
            self.first.extend_from_slice(&input[..n]);
            input = &input[n..];
            if self.first.len() < ZSTD_MAGIC.len() {
                return Ok(());
            }
            if self.first != ZSTD_MAGIC {
                return Err(PackError::NotAPack);
            }
            let first = std::mem::take(&mut self.first);
            self.decompress(&first, batch, admit, progress)?;
            self.first = first;
        }
        self.decompress(input, batch, admit, progress)
    }

    fn decompress(
        &mut self,
        input: &[u8],
        batch: &mut Batch,
        admit: &mut dyn FnMut(&Sha256Hex, u64) -> Result<(), String>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), PackError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let mut inb = InBuffer::around(input);
        let mut out_buf = std::mem::take(&mut self.out_buf);
        let result = loop {
            if self.is_done() {
                break Ok(());
            }
            let mut outb = OutBuffer::around(&mut out_buf[..]);
            if let Err(e) = self.z.run(&mut inb, &mut outb) {
                break Err(match self.state {
                    SinkState::Magic if e.kind() == io::ErrorKind::InvalidData => {
                        PackError::NotAPack
                    }
                    _ => PackError::Cut {
                        received: self.unpacked.bytes,
                        source: e,
                    },
                });
            }
            let n = outb.pos();
            if let Err(e) = self.consume(&out_buf[..n], batch, admit, progress) {
                break Err(e);
            }
            // All input taken and the decoder had no more to give.
            if inb.pos() == input.len() && n < out_buf.len() {
                break Ok(());
            }
        };
        self.out_buf = out_buf;
        result
    }

    fn consume(
        &mut self,
        mut data: &[u8],
        batch: &mut Batch,
        admit: &mut dyn FnMut(&Sha256Hex, u64) -> Result<(), String>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), PackError> {
        while !data.is_empty() {
            match &mut self.state {
                SinkState::Magic => {
                    let n = (MAGIC.len() - self.head.len()).min(data.len());
                    self.head.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.head.len() == MAGIC.len() {
                        if self.head != MAGIC {
                            return Err(PackError::NotAPack);
                        }
                        self.head.clear();
                        self.state = SinkState::Head;
                    }
                }
                SinkState::Head => {
                    let want = if self.head.len() < 32 { 32 } else { 48 };
                    let n = (want - self.head.len()).min(data.len());
                    self.head.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.head.len() == 32 && self.head == [0u8; 32] {
                        self.state = SinkState::Done;
                        return Ok(());
                    }
                    if self.head.len() == 48 {
                        let head = std::mem::take(&mut self.head);
                        let sha256 =
                            Sha256Hex::from_bytes(head[..32].try_into().expect("32 bytes"));
                        let total = u64::from_be_bytes(head[32..40].try_into().expect("8 bytes"));
                        let from = u64::from_be_bytes(head[40..48].try_into().expect("8 bytes"));
                        self.head = head;
                        self.head.clear();
                        admit(&sha256, total).map_err(|reason| PackError::Refused {
                            sha256,
                            total,
                            reason,
                        })?;
                        let incoming = batch.begin(&sha256, from, total)?;
                        self.state = SinkState::Blob(Box::new(incoming));
                        self.complete_if_whole(batch)?;
                    }
                }
                SinkState::Blob(incoming) => {
                    let n = usize::try_from(incoming.remaining())
                        .unwrap_or(usize::MAX)
                        .min(data.len());
                    incoming.write(&data[..n])?;
                    progress(n as u64);
                    data = &data[n..];
                    self.complete_if_whole(batch)?;
                }
                SinkState::Done => return Ok(()),
            }
        }
        Ok(())
    }

    /// Ends the blob in progress once all its bytes arrived.
    fn complete_if_whole(&mut self, batch: &mut Batch) -> Result<(), PackError> {
        if let SinkState::Blob(incoming) = &self.state
            && incoming.remaining() == 0
        {
            let SinkState::Blob(incoming) = std::mem::replace(&mut self.state, SinkState::Head)
            else {
                unreachable!("matched above")
            };
            let h = incoming.sha256();
            let bytes = batch.complete(*incoming)?;
            self.unpacked.blobs.push(h);
            self.unpacked.bytes += bytes;
        }
        Ok(())
    }

    /// The input ended: whole, or cut before the pack's end.
    pub fn end(&mut self) -> Result<(), PackError> {
        self.cut(io::ErrorKind::UnexpectedEof.into())
    }

    /// The input broke with `source`: a cut unless the pack's end arrived.
    /// What arrived of the blob in progress stays for a resume.
    pub fn cut(&mut self, source: io::Error) -> Result<(), PackError> {
        match std::mem::replace(&mut self.state, SinkState::Done) {
            SinkState::Done => Ok(()),
            SinkState::Blob(incoming) => Err(PackError::Blob(incoming.cut(source))),
            SinkState::Magic | SinkState::Head => Err(PackError::Cut {
                received: self.unpacked.bytes,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tillup_fs::BlobStore;

    use super::*;

    fn blob(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|i| {
                if i % 3 == 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                }
                (x >> 24) as u8
            })
            .collect()
    }

    struct Side {
        _dir: tempfile::TempDir,
        store: BlobStore,
    }

    fn side() -> Side {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        Side { _dir: dir, store }
    }

    fn sender(blobs: &[Vec<u8>]) -> (Side, Vec<PackEntry>) {
        let s = side();
        let entries = blobs
            .iter()
            .map(|b| PackEntry {
                sha256: s.store.put_bytes(b).unwrap(),
                from: 0,
            })
            .collect();
        (s, entries)
    }

    fn pack(s: &Side, entries: &[PackEntry]) -> Vec<u8> {
        let mut out = Vec::new();
        let store = s.store.clone();
        write_pack(
            entries,
            &move |h| store.has(h).then(|| store.path(h)),
            WAN_LEVEL,
            &|_| {},
            &mut out,
        )
        .unwrap();
        out
    }

    fn receive(
        to: &BlobStore,
        bytes: &[u8],
        sizes: &BTreeMap<Sha256Hex, u64>,
    ) -> (Result<(), PackError>, Unpacked) {
        let mut batch = to.batch("").unwrap();
        let mut out = Unpacked::default();
        let r = read_pack(
            bytes,
            &mut batch,
            &mut |h, total| match sizes.get(h) {
                Some(s) if *s == total => Ok(()),
                Some(s) => Err(format!("expected {s} bytes")),
                None => Err("not asked for".into()),
            },
            &mut |_| {},
            &mut out,
        );
        batch.finish().unwrap();
        (r, out)
    }

    #[test]
    fn a_pack_round_trips_and_compresses() {
        let blobs: Vec<Vec<u8>> = (0..20)
            .map(|i| {
                let mut b = blob(i, 5000 + i as usize * 100);
                b.extend(std::iter::repeat_n(b'a', 5000));
                b
            })
            .collect();
        let (s, entries) = sender(&blobs);
        let bytes = pack(&s, &entries);
        let raw: usize = blobs.iter().map(Vec::len).sum();
        assert!(bytes.len() < raw * 3 / 4, "{} of {raw}", bytes.len());
        let r = side();
        let sizes = blobs
            .iter()
            .map(|b| (Sha256Hex::of(b), b.len() as u64))
            .collect();
        let (result, out) = receive(&r.store, &bytes, &sizes);
        result.unwrap();
        assert_eq!(out.blobs.len(), 20);
        for b in &blobs {
            assert_eq!(&r.store.read(&Sha256Hex::of(b)).unwrap(), b);
        }
    }

    #[test]
    fn a_cut_pack_keeps_whole_blobs_and_resumes_inside_the_cut_one() {
        let blobs = vec![blob(1, 100_000), blob(2, 200_000), blob(3, 50_000)];
        let (s, entries) = sender(&blobs);
        // Stored (level 1 makes noise incompressible enough): cut in the
        // middle of the second blob.
        let mut bytes = Vec::new();
        let store = s.store.clone();
        write_pack(
            &entries,
            &move |h| Some(store.path(h)),
            LAN_LEVEL,
            &|_| {},
            &mut bytes,
        )
        .unwrap();
        let r = side();
        let sizes: BTreeMap<_, _> = blobs
            .iter()
            .map(|b| (Sha256Hex::of(b), b.len() as u64))
            .collect();
        let (result, out) = receive(&r.store, &bytes[..bytes.len() / 2], &sizes);
        assert!(result.unwrap_err().is_cut());
        assert_eq!(out.blobs, vec![entries[0].sha256]);
        assert!(r.store.has(&entries[0].sha256), "the whole one is kept");
        let held = r.store.partial_len(&entries[1].sha256, "").unwrap();
        assert!(held > 0 && held < 200_000, "{held}");
        // The resume asks for the rest only: nothing whole crosses again.
        let rest = vec![
            PackEntry {
                sha256: entries[1].sha256,
                from: held,
            },
            entries[2].clone(),
        ];
        let bytes = pack(&s, &rest);
        let (result, out) = receive(&r.store, &bytes, &sizes);
        result.unwrap();
        assert_eq!(out.bytes, 200_000 - held + 50_000);
        for b in &blobs {
            assert_eq!(&r.store.read(&Sha256Hex::of(b)).unwrap(), b);
        }
    }

    #[test]
    fn a_blob_not_asked_for_or_of_another_size_is_refused_before_its_bytes() {
        let blobs = vec![blob(4, 1000), blob(5, 1000)];
        let (s, entries) = sender(&blobs);
        let bytes = pack(&s, &entries);
        let r = side();
        let only_first = BTreeMap::from([(entries[0].sha256, 1000)]);
        let (result, out) = receive(&r.store, &bytes, &only_first);
        assert!(
            matches!(result, Err(PackError::Refused { sha256, .. }) if sha256 == entries[1].sha256)
        );
        assert_eq!(out.blobs.len(), 1);
        assert!(!r.store.has(&entries[1].sha256));
        let wrong_size = BTreeMap::from([(entries[0].sha256, 999)]);
        let (result, _) = receive(&side().store, &bytes, &wrong_size);
        assert!(matches!(result, Err(PackError::Refused { .. })));
    }

    #[test]
    fn bytes_that_lie_about_their_hash_never_enter_the_store() {
        let good = blob(6, 4000);
        let h = Sha256Hex::of(&good);
        // A hand-made pack: the right name, other bytes.
        let bytes = forged(&[(h, 4000, 0, &blob(7, 4000))], 1);
        let r = side();
        let (result, out) = receive(&r.store, &bytes, &BTreeMap::from([(h, 4000)]));
        assert!(matches!(
            result,
            Err(PackError::Blob(tillup_fs::Error::HashMismatch { .. }))
        ));
        assert!(out.blobs.is_empty() && !r.store.has(&h));
    }

    #[test]
    fn garbage_is_not_a_pack() {
        let r = side();
        for junk in [
            &b"hello"[..],
            &zstd::encode_all(&b"not a pack at all"[..], 1).unwrap(),
        ] {
            let (result, _) = receive(&r.store, junk, &BTreeMap::new());
            assert!(matches!(result, Err(PackError::NotAPack)), "{result:?}");
        }
    }
}
