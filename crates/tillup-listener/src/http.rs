//! HTTP clients for the server and the agents, over one `reqwest::Client`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tillup_core::Sha256Hex;
use tillup_core::api::{self, ErrorBody, HashList, PackEntry, PackReceipt, PackRequest};
use tillup_fs::BlobStore;
use tillup_transfer::Size;

use crate::Error;
use crate::pace::{Pace, Stalled};
use crate::progress::{Moving, Transfers};

/// How many times a request is tried before its failure is reported, when
/// it fails for a reason that may pass: the peer refused or reset the
/// connection, it timed out, a body was cut mid-stream, or a proxy answered
/// 502/503/504. Every request the listener makes is idempotent (transfers
/// are content-addressed and resume, swaps go by target version, reports
/// replace by id), so every one is retried. A refusal (other 4xx/5xx) or a
/// wrong hash is not.
pub const RETRY_ATTEMPTS: u32 = 8;
/// The wait before the second try; it doubles at each further try.
pub const RETRY_FIRST_DELAY: Duration = Duration::from_millis(200);
/// The longest wait between two tries. With the two above, a peer gets
/// about 16 seconds to come back (restarted, its network back).
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// Whether a failure may pass if the request is tried again.
pub fn is_transient(e: &Error) -> bool {
    matches!(
        e,
        Error::Unreachable { .. }
            | Error::Refused {
                status: 502..=504,
                ..
            }
    )
}

/// The wait after failed try number `attempt` (1-based): exponential from
/// [`RETRY_FIRST_DELAY`], capped at [`RETRY_MAX_DELAY`], then jittered
/// down by up to half so that many hosts do not come back in step.
pub fn retry_delay(attempt: u32) -> Duration {
    let full = RETRY_FIRST_DELAY
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(RETRY_MAX_DELAY);
    full.mul_f64(rand::random_range(0.5..=1.0))
}

/// The largest JSON answer read: a delivery holds one manifest per terminal.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;

/// JSON answers from this size on are parsed on the blocking pool.
const PARSE_ASIDE_FROM: usize = 64 * 1024;

/// The most of an error answer's body that is read.
pub const MAX_ERROR_BODY_BYTES: usize = 8 * 1024;

/// How many times in a row a pack upload may be told that a resume point
/// moved (409) before that counts as a failure.
const RESUME_CONFLICTS: usize = 3;

/// JSON requests from this size on are sent zstd-compressed (the server
/// and the agents take `Content-Encoding: zstd`): a store's backup is
/// eight near-identical manifests.
pub const COMPRESS_FROM: usize = 16 * 1024;

/// The most blobs asked for in one pack: within the server's and the
/// agent's bounds on a request, and enough that a store's upgrade is a
/// handful of packs whatever the number of files.
pub const PACK_MAX_BLOBS: usize = 20_000;

/// How long an idle connection is kept for reuse: below the 15 s after
/// which the server and the agents close an idle connection
/// (`tillup_serve::Limits::header_read`), so that a request is never sent
/// on a connection its server is closing at that moment.
pub const POOL_IDLE: Duration = Duration::from_secs(10);

/// Builds the shared client: connect and read timeouts, rustls. The
/// deadline of a whole exchange, which grows with its bytes, is each
/// [`Peer`]'s [`Pace`].
pub fn client() -> reqwest::Client {
    client_with(reqwest::Client::builder())
}

/// [`client`]'s settings on `builder` (a terminal's, with its own TLS).
pub(crate) fn client_with(builder: reqwest::ClientBuilder) -> reqwest::Client {
    builder
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120))
        .pool_idle_timeout(POOL_IDLE)
        .user_agent(concat!("tillup/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a TLS backend is compiled in")
}

/// One peer (the server or an agent) with its bearer token.
///
/// The server may have mirrors: the same service at other addresses. A
/// request that fails for a reason that may pass moves the peer on to the
/// next address, in order, and the peer stays where it was last answered,
/// so that one upgrade talks to one server while that server works. What a
/// mirror sends is trusted no more than what the primary sends: the log by
/// its signature, every file by its signed hash, every built folder by the
/// host's own computation.
#[derive(Clone, Debug)]
pub struct Peer {
    pub name: String,
    /// Its addresses: the primary, then its mirrors.
    bases: Arc<[String]>,
    /// The index in `bases` of the address requests go to now; shared by
    /// the peer's clones.
    current: Arc<AtomicUsize>,
    token: String,
    /// Sent with every request (an agent's protocol).
    headers: header::HeaderMap,
    http: reqwest::Client,
    pace: Pace,
}

impl Peer {
    pub fn new(name: impl Into<String>, base: &str, token: &str, http: reqwest::Client) -> Self {
        Self {
            name: name.into(),
            bases: Arc::from([base.trim_end_matches('/').to_owned()]),
            current: Arc::default(),
            token: token.to_owned(),
            headers: header::HeaderMap::new(),
            http,
            pace: Pace::DEFAULT,
        }
    }

    /// The same peer, sending `name: value` with every request.
    pub fn with_header(mut self, name: &'static str, value: header::HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// The same peer, also answering at `mirrors`, tried in this order
    /// after the address it has.
    pub fn with_mirrors(mut self, mirrors: &[String]) -> Self {
        let all: Vec<String> = self
            .bases
            .iter()
            .cloned()
            .chain(mirrors.iter().map(|m| m.trim_end_matches('/').to_owned()))
            .collect();
        self.bases = all.into();
        self.current = Arc::default();
        self
    }

    /// The address requests go to now.
    pub fn base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// How many addresses it has (1, or the server and its mirrors).
    pub fn addresses(&self) -> usize {
        self.bases.len()
    }

    /// Leaves the address in use for the next one, because of `why` (an
    /// answer that was refused: a stale or tampered mirror).
    pub fn move_on(&self, why: &Error) {
        self.fall_back(self.current.load(Ordering::Relaxed) % self.bases.len(), why);
    }

    /// After a failure that may pass at `failed` (an index in `bases`),
    /// moves on to the next address, unless a concurrent request moved on
    /// already.
    fn fall_back(&self, failed: usize, e: &Error) {
        let n = self.bases.len();
        if n < 2 {
            return;
        }
        let next = (failed + 1) % n;
        if self
            .current
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                peer = %self.name,
                failed = %self.bases[failed],
                next = %self.bases[next],
                "moving to the next address: {e}"
            );
        }
    }

    /// The same peer held to `pace`.
    pub fn with_pace(mut self, pace: Pace) -> Self {
        self.pace = pace;
        self
    }

    /// The error for an exchange that fell behind its pace: like a
    /// timeout, it may pass on another try.
    fn stalled(&self, what: &str, e: Stalled) -> Error {
        Error::Unreachable {
            peer: self.name.clone(),
            what: what.to_owned(),
            message: e.to_string(),
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base(), path))
            .headers(self.headers.clone())
            .bearer_auth(&self.token)
    }

    /// Runs `op` until it succeeds, fails for good, or has been tried
    /// [`RETRY_ATTEMPTS`] times; each retry is logged, and goes to the
    /// next address if the peer has several (`op` builds its requests with
    /// [`Peer::request`] at each try).
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut attempt = 1;
        loop {
            let at = self.current.load(Ordering::Relaxed);
            match op().await {
                Err(e) if is_transient(&e) && attempt < RETRY_ATTEMPTS => {
                    self.fall_back(at, &e);
                    self.wait_before_retry(what, attempt, &e).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn wait_before_retry(&self, what: &str, attempt: u32, e: &Error) {
        let wait = retry_delay(attempt);
        tracing::warn!(
            peer = %self.name,
            attempt,
            of = RETRY_ATTEMPTS,
            wait_ms = wait.as_millis() as u64,
            "could not {what}, trying again: {e}"
        );
        tokio::time::sleep(wait).await;
    }

    fn unreachable(&self, what: &str, e: &reqwest::Error) -> Error {
        let message = error_chain(e);
        // A certificate other than the one paired will not change on a
        // retry.
        if message.contains(crate::pairing::NOT_PAIRED)
            || message.contains(crate::pairing::NOT_THE_TERMINAL)
        {
            return Error::Untrusted(format!("{} refused for {what}: {message}", self.name));
        }
        Error::Unreachable {
            peer: self.name.clone(),
            what: what.to_owned(),
            message,
        }
    }

    /// One request whose answer does not matter (to see the peer's TLS
    /// certificate).
    pub async fn probe(&self) {
        let _ = self
            .request(Method::GET, tillup_core::api::agent::STATUS)
            .send()
            .await;
    }

    /// The error for an answer that is not a success.
    async fn refusal(&self, what: &str, resp: Response) -> Error {
        let status = resp.status();
        // An error body is a sentence: read no more than that, whatever
        // the peer (or a proxy in front of it) sends.
        let mut body = Vec::new();
        let moved = AtomicU64::new(0);
        let read = async {
            let mut stream = resp.bytes_stream();
            while let Some(Ok(chunk)) = stream.next().await {
                moved.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                let room = MAX_ERROR_BODY_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() == MAX_ERROR_BODY_BYTES {
                    break;
                }
            }
        };
        // A stalled error body still leaves the status to report.
        let _ = self.pace.run(self.pace.grace, &moved, read).await;
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned());
        Error::Refused {
            peer: self.name.clone(),
            what: what.to_owned(),
            status: status.as_u16(),
            message,
        }
    }

    /// Sends once; a success or 304 is `Ok`.
    async fn send_once(&self, what: &str, req: RequestBuilder) -> Result<Response, Error> {
        self.send_counted(what, req, &AtomicU64::new(0)).await
    }

    /// [`Peer::send_once`] for a request whose body counts the bytes it
    /// sent in `sent`: the answer may come later the more it sent.
    async fn send_counted(
        &self,
        what: &str,
        req: RequestBuilder,
        sent: &AtomicU64,
    ) -> Result<Response, Error> {
        let resp = self
            .pace
            .run(self.pace.answer_within, sent, req.send())
            .await
            .map_err(|e| self.stalled(what, e))?
            .map_err(|e| self.unreachable(what, &e))?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        Err(self.refusal(what, resp).await)
    }

    pub async fn get_json<T: DeserializeOwned + Send + 'static>(
        &self,
        what: &str,
        path: &str,
    ) -> Result<T, Error> {
        self.get_json_query(what, path, &[]).await
    }

    /// `GET path?query` as JSON; the query is encoded by the client (a `+`
    /// in a version stays a `+`).
    pub async fn get_json_query<T: DeserializeOwned + Send + 'static>(
        &self,
        what: &str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, Error> {
        self.retrying(what, || async {
            let resp = self
                .send_once(what, self.request(Method::GET, path).query(query))
                .await?;
            self.json(what, resp).await
        })
        .await
    }

    pub async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned + Send + 'static>(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        let json = serde_json::to_vec(body).map_err(|e| Error::Other(e.to_string()))?;
        let (bytes, encoding) = if json.len() >= COMPRESS_FROM {
            let z = zstd::bulk::compress(&json, tillup_transfer::pack::WAN_LEVEL)
                .map_err(|e| Error::Other(format!("cannot compress a request: {e}")))?;
            (z, Some("zstd"))
        } else {
            (json, None)
        };
        let bytes = bytes::Bytes::from(bytes);
        self.retrying(what, || async {
            let mut req = self
                .request(method.clone(), path)
                .header(header::CONTENT_TYPE, "application/json")
                .body(bytes.clone());
            if let Some(encoding) = encoding {
                req = req.header(header::CONTENT_ENCODING, encoding);
            }
            let resp = self.send_once(what, req).await?;
            self.json(what, resp).await
        })
        .await
    }

    /// Reads a whole answer, refusing one over `limit` bytes before it is
    /// held in memory.
    pub async fn read_limited(
        &self,
        what: &str,
        resp: Response,
        limit: usize,
    ) -> Result<Vec<u8>, Error> {
        let too_large = |n: u64| Error::BadAnswer {
            peer: self.name.clone(),
            what: what.to_owned(),
            message: format!("the answer is {n} bytes or more, over the {limit} allowed"),
        };
        if let Some(len) = resp.content_length().filter(|l| *l > limit as u64) {
            return Err(too_large(len));
        }
        let moved = AtomicU64::new(0);
        let read = async {
            let mut out = Vec::new();
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.unreachable(what, &e))?;
                if out.len() + chunk.len() > limit {
                    return Err(too_large((out.len() + chunk.len()) as u64));
                }
                moved.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                out.extend_from_slice(&chunk);
            }
            Ok(out)
        };
        self.pace
            .run(self.pace.grace, &moved, read)
            .await
            .map_err(|e| self.stalled(what, e))?
    }

    async fn json<T: DeserializeOwned + Send + 'static>(
        &self,
        what: &str,
        resp: Response,
    ) -> Result<T, Error> {
        let bytes = self.read_limited(what, resp, MAX_ANSWER_BYTES).await?;
        let bytes_len = bytes.len();
        let (peer, what) = (self.name.clone(), what.to_owned());
        let parse = move || {
            // An empty body (201, 204) reads as `null`.
            let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            serde_json::from_slice(body).map_err(|e| Error::BadAnswer {
                peer,
                what,
                message: e.to_string(),
            })
        };
        // A whole folder's manifest takes milliseconds to parse: off the
        // runtime, so the answers of several terminals parse side by side.
        if bytes_len < PARSE_ASIDE_FROM {
            parse()
        } else {
            crate::blocking(parse).await
        }
    }

    /// Asks which of `hashes` the peer lacks.
    pub async fn missing(
        &self,
        route_template: &str,
        hashes: Vec<Sha256Hex>,
    ) -> Result<(Vec<Sha256Hex>, BTreeMap<Sha256Hex, u64>), Error> {
        let mut missing = Vec::new();
        let mut held = BTreeMap::new();
        // Bounded requests, whatever the folder size.
        for chunk in hashes.chunks(50_000) {
            let out: HashList = self
                .send_json(
                    "ask which files it lacks",
                    Method::POST,
                    route_template,
                    &HashList::new(chunk.to_vec()),
                )
                .await?;
            missing.extend(out.hashes);
            held.extend(out.held);
        }
        Ok((missing, held))
    }

    /// Fetches `wanted` (hash → size) from the peer's pack route into
    /// `store`, in as few packs as the peer's bounds allow. A blob held in
    /// part from a cut transfer resumes where it stopped, so no completed
    /// byte crosses twice; blobs the store holds are not asked for. The
    /// peer may send only what was asked, each at its signed size, and every
    /// blob is hashed before it counts as there. `progress` counts the bytes
    /// of files as they arrive.
    pub async fn fetch_pack(
        &self,
        route: &str,
        wanted: &BTreeMap<Sha256Hex, Size>,
        store: &BlobStore,
        progress: &Arc<AtomicU64>,
    ) -> Result<u64, Error> {
        let what = format!("send {} files", wanted.len());
        let fetched = AtomicU64::new(0);
        // Each try asks for what is still missing, from where it stopped.
        self.retrying(&what, || async {
            let remaining: Vec<Sha256Hex> =
                wanted.keys().filter(|h| !store.has(h)).copied().collect();
            for chunk in remaining.chunks(PACK_MAX_BLOBS) {
                let n = self
                    .fetch_one_pack(&what, route, chunk, wanted, store, progress)
                    .await?;
                fetched.fetch_add(n, Ordering::Relaxed);
            }
            Ok(())
        })
        .await?;
        Ok(fetched.into_inner())
    }

    async fn fetch_one_pack(
        &self,
        what: &str,
        route: &str,
        hashes: &[Sha256Hex],
        sizes: &BTreeMap<Sha256Hex, Size>,
        store: &BlobStore,
        progress: &Arc<AtomicU64>,
    ) -> Result<u64, Error> {
        // Where each blob resumes: what is held of it (one blocking task
        // for the whole pack).
        let (held_in, wanted) = (store.clone(), hashes.to_vec());
        let blobs = tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .map(|h| {
                    let from = held_in.partial_len(&h, "")?;
                    Ok(PackEntry { sha256: h, from })
                })
                .collect::<Result<Vec<_>, tillup_fs::Error>>()
        })
        .await
        .expect("no panic")?;
        let req = self
            .request(Method::POST, route)
            .json(&PackRequest { blobs });
        let resp = self.send_once(what, req).await?;
        // Only what was asked, each once, at its size.
        let mut asked: BTreeMap<Sha256Hex, Size> = hashes.iter().map(|h| (*h, sizes[h])).collect();
        let admit: tillup_transfer::Admit = Box::new(move |h, total| match asked.remove(h) {
            Some(size) if size.admits(total) => Ok(()),
            Some(size) => Err(format!("it should have {size:?} bytes")),
            None => Err("it was not asked for, or came twice".into()),
        });
        let (counter, moved) = (progress.clone(), Arc::new(AtomicU64::new(0)));
        let arrived = moved.clone();
        let receiving = tillup_transfer::receive_pack(
            resp.bytes_stream(),
            store.clone(),
            String::new(),
            admit,
            Box::new(move |n| {
                counter.fetch_add(n, Ordering::Relaxed);
                arrived.fetch_add(n, Ordering::Relaxed);
            }),
        );
        // A stall drops the body: the receiver sees a cut and keeps what
        // arrived whole.
        let received = self
            .pace
            .run(self.pace.grace, &moved, receiving)
            .await
            .map_err(|e| self.stalled(what, e))?;
        let bytes = received.unpacked.bytes;
        received
            .result
            .map(|()| bytes)
            .map_err(|e| self.pack_failure(what, e))
    }

    /// Sends the blobs of `hashes` the peer lacks (asked on its `missing`
    /// route, which also says how much it holds of a cut upload) from
    /// `store`, in packs on its `pack` route compressed at `level`, until it
    /// holds them all.
    pub async fn send_pack(
        &self,
        missing_route: &str,
        pack_route: &str,
        hashes: Vec<Sha256Hex>,
        store: &BlobStore,
        level: i32,
        progress: Option<&Transfers>,
    ) -> Result<u64, Error> {
        let what = format!("take {} files", hashes.len());
        let counted = std::sync::atomic::AtomicBool::new(false);
        let sent = AtomicU64::new(0);
        // Each try asks where every blob stands, and sends the rest.
        self.retrying(&what, || async {
            // A 409 says a resume point moved (another sender's bytes):
            // ask again at once.
            for _ in 0..RESUME_CONFLICTS {
                let (missing, held) = self.missing(missing_route, hashes.clone()).await?;
                if missing.is_empty() {
                    return Ok(());
                }
                if let Some(p) = progress.filter(|_| !counted.swap(true, Ordering::Relaxed)) {
                    let (sizes_of, paths) = (store.clone(), missing.clone());
                    let total = tokio::task::spawn_blocking(move || {
                        paths
                            .iter()
                            .filter_map(|h| std::fs::metadata(sizes_of.path(h)).ok())
                            .map(|m| m.len())
                            .sum::<u64>()
                    })
                    .await
                    .expect("no panic");
                    p.begin(
                        Moving::ToTerminals,
                        total.saturating_sub(held.values().sum()),
                    );
                }
                match self
                    .send_packs(&what, pack_route, &missing, &held, store, level, progress)
                    .await
                {
                    Ok(n) => {
                        sent.fetch_add(n, Ordering::Relaxed);
                        return Ok(());
                    }
                    Err(Error::Refused { status: 409, .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(Error::BadAnswer {
                peer: self.name.clone(),
                what: what.clone(),
                message: "it keeps moving where the files resume; is another host sending to it?"
                    .into(),
            })
        })
        .await?;
        Ok(sent.into_inner())
    }

    /// One round of [`Peer::send_pack`]: `missing` in packs, each blob from
    /// the byte the peer holds.
    #[allow(clippy::too_many_arguments)]
    async fn send_packs(
        &self,
        what: &str,
        pack_route: &str,
        missing: &[Sha256Hex],
        held: &BTreeMap<Sha256Hex, u64>,
        store: &BlobStore,
        level: i32,
        progress: Option<&Transfers>,
    ) -> Result<u64, Error> {
        let mut sent = 0;
        for chunk in missing.chunks(PACK_MAX_BLOBS) {
            let blobs: Vec<PackEntry> = chunk
                .iter()
                .map(|h| PackEntry {
                    sha256: *h,
                    from: held.get(h).copied().unwrap_or(0),
                })
                .collect();
            let source = store.clone();
            let (moved, shown) = (
                Arc::new(AtomicU64::new(0)),
                progress.map(|p| p.counter(Moving::ToTerminals).clone()),
            );
            let packed = moved.clone();
            let body = tillup_transfer::pack_body(
                blobs,
                Box::new(move |h| source.has(h).then(|| source.path(h))),
                level,
                Box::new(move |n| {
                    packed.fetch_add(n, Ordering::Relaxed);
                    if let Some(c) = &shown {
                        c.fetch_add(n, Ordering::Relaxed);
                    }
                }),
            );
            let req = self
                .request(Method::PUT, pack_route)
                .header(header::CONTENT_TYPE, api::PACK_MEDIA_TYPE)
                .body(reqwest::Body::wrap_stream(body));
            let resp = self.send_counted(what, req, &moved).await?;
            let receipt: PackReceipt = self.json(what, resp).await?;
            sent += receipt.bytes;
        }
        Ok(sent)
    }

    /// The error for a pack that did not arrive whole: a cut may pass, the
    /// rest will not.
    fn pack_failure(&self, what: &str, e: tillup_transfer::PackError) -> Error {
        if e.is_cut() {
            return Error::Unreachable {
                peer: self.name.clone(),
                what: what.to_owned(),
                message: e.to_string(),
            };
        }
        match e {
            tillup_transfer::PackError::Blob(
                e @ (tillup_fs::Error::HashMismatch { .. } | tillup_fs::Error::SizeMismatch { .. }),
            ) => Error::Untrusted(format!(
                "{} sent a file that is not what it is named: {e}",
                self.name
            )),
            tillup_transfer::PackError::Blob(e) => Error::Fs(e),
            e => Error::BadAnswer {
                peer: self.name.clone(),
                what: what.to_owned(),
                message: e.to_string(),
            },
        }
    }

    pub async fn get_conditional(
        &self,
        what: &str,
        path: &str,
        etag: Option<&str>,
    ) -> Result<Response, Error> {
        self.retrying(what, || {
            let mut req = self.request(Method::GET, path);
            if let Some(tag) = etag {
                req = req.header(header::IF_NONE_MATCH, tag);
            }
            self.send_once(what, req)
        })
        .await
    }
}

/// How a `PUT` of a blob ended.
pub use tillup_core::error_chain;

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// What the scripted server saw of one request.
    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
    }

    /// One scripted answer: status, headers, body, and how many body bytes
    /// to send before cutting the connection (all if `None`).
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        cut_after: Option<usize>,
    }

    type Script = Arc<dyn Fn(usize, &Seen) -> Answer + Send + Sync>;

    /// An HTTP/1.1 server on 127.0.0.1:0 answering request `i` (0-based)
    /// with `script(i, request)`, one request per connection, for at most
    /// 20 requests. Returns its URL, what it saw, and the body bytes sent.
    async fn scripted(script: Script) -> (String, Arc<Mutex<Vec<Seen>>>, Arc<Mutex<u64>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (seen, sent) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(0u64)));
        let (seen2, sent2) = (seen.clone(), sent.clone());
        tokio::spawn(async move {
            for i in 0..20 {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let mut stream = tokio::io::BufReader::new(stream);
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_owned());
                }
                let req = Seen {
                    method: head
                        .first()
                        .and_then(|l| l.split(' ').next())
                        .unwrap_or("")
                        .to_owned(),
                };
                seen2.lock().unwrap().push(req.clone());
                let a = script(i, &req);
                let mut out = format!(
                    "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                    a.status,
                    a.body.len()
                );
                for (k, v) in &a.headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let body = &a.body[..a.cut_after.unwrap_or(a.body.len()).min(a.body.len())];
                let mut stream = stream.into_inner();
                let _ = stream.write_all(out.as_bytes()).await;
                let _ = stream.write_all(body).await;
                let _ = stream.flush().await;
                *sent2.lock().unwrap() += body.len() as u64;
            }
        });
        (url, seen, sent)
    }

    /// Answers a GET like a file server would, with Range.
    fn peer(url: &str) -> Peer {
        Peer::new("server", url, "t", client())
    }

    #[tokio::test]
    async fn transient_answers_are_retried_and_refusals_are_not() {
        let (url, seen, _) = scripted(Arc::new(|i, _| Answer {
            status: if i < 2 { 503 } else { 200 },
            headers: vec![],
            body: b"{\"ok\": true}".to_vec(),
            cut_after: None,
        }))
        .await;
        let v: serde_json::Value = peer(&url).get_json("say ok", "/x").await.unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(seen.lock().unwrap().len(), 3);
        assert!(seen.lock().unwrap().iter().all(|s| s.method == "GET"));

        // A JSON answer cut mid-body is tried again too.
        let (url, seen, _) = scripted(Arc::new(|i, _| Answer {
            status: 200,
            headers: vec![],
            body: b"{\"ok\": true}".to_vec(),
            cut_after: (i == 0).then_some(4),
        }))
        .await;
        let v: serde_json::Value = peer(&url).get_json("say ok", "/x").await.unwrap();
        assert_eq!(
            (v["ok"].as_bool(), seen.lock().unwrap().len()),
            (Some(true), 2)
        );

        let (url, seen, _) = scripted(Arc::new(|_, _| Answer {
            status: 404,
            headers: vec![],
            body: b"{\"error\": \"no such thing\"}".to_vec(),
            cut_after: None,
        }))
        .await;
        let err = peer(&url)
            .get_json::<serde_json::Value>("say ok", "/x")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Refused { status: 404, message, .. } if message == "no such thing"),
            "{err}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_endless_error_body_is_read_only_to_its_bound() {
        // A 500 whose body is 64 MiB: only the bound of it is read.
        let pulled = Arc::new(AtomicU64::new(0));
        let counter = pulled.clone();
        let chunks = (0..1024).map(move |_| {
            counter.fetch_add(64 * 1024, Ordering::Relaxed);
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(&[b'x'; 64 * 1024]))
        });
        let resp: Response = http::Response::builder()
            .status(500)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .unwrap()
            .into();
        let err = peer("http://127.0.0.1:9").refusal("say ok", resp).await;
        let Error::Refused {
            status, message, ..
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!(*status, 500);
        assert!(
            message.starts_with("xxx") && message.len() <= 500,
            "{}",
            message.len()
        );
        let read = pulled.load(Ordering::Relaxed);
        assert!(
            read <= (MAX_ERROR_BODY_BYTES + 64 * 1024) as u64,
            "{read} bytes of an error body were read"
        );
    }

    /// A server that sends an answer's head at once, then one byte of its
    /// body every `every`, for ever.
    async fn trickling(every: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            for _ in 0..4 {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut stream = tokio::io::BufReader::new(stream);
                    let mut line = String::new();
                    while stream.read_line(&mut line).await.unwrap_or(0) > 2 {
                        line.clear();
                    }
                    let mut stream = stream.into_inner();
                    let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n";
                    if stream.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    loop {
                        tokio::time::sleep(every).await;
                        if stream.write_all(b" ").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn a_trickling_answer_fails_at_its_pace_rather_than_holding_the_host() {
        let url = trickling(Duration::from_millis(100)).await;
        // 10 B/s against a minimum of 1000 B/s after a 1 s grace.
        let pace = Pace {
            answer_within: Duration::from_secs(5),
            grace: Duration::from_secs(1),
            min_rate: 1000,
        };
        let p = peer(&url).with_pace(pace);
        let resp = p
            .send_once(
                "fetch the version log",
                p.request(Method::GET, "/v1/log/stable"),
            )
            .await
            .unwrap();
        let err = p
            .read_limited("fetch the version log", resp, 4 << 20)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Unreachable { message, .. } if message.contains("slower than tillup accepts")),
            "{err}"
        );
    }

    /// An address where nothing listens.
    fn dead() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }

    fn ok_json(status: u16) -> Answer {
        Answer {
            status,
            headers: vec![],
            body: b"{\"ok\": true}".to_vec(),
            cut_after: None,
        }
    }

    #[tokio::test]
    async fn a_server_that_cannot_be_reached_hands_over_to_its_mirrors_in_order() {
        let (busy, busy_seen, _) = scripted(Arc::new(|_, _| ok_json(503))).await;
        let (mirror, mirror_seen, _) = scripted(Arc::new(|_, _| ok_json(200))).await;
        let server = peer(&dead()).with_mirrors(&[busy.clone(), format!("{mirror}/")]);
        let v: serde_json::Value = server.get_json("say ok", "/x").await.unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(busy_seen.lock().unwrap().len(), 1, "each address in order");
        assert_eq!(
            server.base(),
            mirror,
            "it stays on the mirror that answered"
        );
        // Its clones too, so one upgrade keeps to one server.
        let again: serde_json::Value = server.clone().get_json("say ok", "/x").await.unwrap();
        assert_eq!(again["ok"], true);
        assert_eq!(
            (
                busy_seen.lock().unwrap().len(),
                mirror_seen.lock().unwrap().len()
            ),
            (1, 2)
        );

        // A refusal is an answer: it is not asked of a mirror.
        let (refusing, _, _) = scripted(Arc::new(|_, _| ok_json(404))).await;
        let (unasked, unasked_seen, _) = scripted(Arc::new(|_, _| ok_json(200))).await;
        let err = peer(&refusing)
            .with_mirrors(&[unasked])
            .get_json::<serde_json::Value>("say ok", "/x")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Refused { status: 404, .. }), "{err}");
        assert!(unasked_seen.lock().unwrap().is_empty());
    }

    #[test]
    fn retry_delays_grow_to_the_cap_with_jitter() {
        for attempt in 1..=RETRY_ATTEMPTS {
            let full = (RETRY_FIRST_DELAY * 2u32.pow(attempt - 1)).min(RETRY_MAX_DELAY);
            let d = retry_delay(attempt);
            assert!(d <= full && d >= full / 2, "attempt {attempt}: {d:?}");
        }
        assert!(retry_delay(40) <= RETRY_MAX_DELAY);
    }
}
