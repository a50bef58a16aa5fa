//! HTTP clients for the server and the agents, over one `reqwest::Client`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tillup_core::Sha256Hex;
use tillup_core::api::{self, ErrorBody, HashList, route};
use tillup_fs::BlobStore;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::Error;

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

/// Builds the shared client: connect timeout, no global timeout (large
/// files), rustls.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(120))
        .user_agent(concat!("tillup/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a TLS backend is compiled in")
}

/// One peer (the server or an agent) with its bearer token.
#[derive(Clone, Debug)]
pub struct Peer {
    pub name: String,
    pub base: String,
    token: String,
    http: reqwest::Client,
    downloads: Downloads,
}

/// One download per blob at a time, across every peer: terminals hold
/// mostly the same files, and a file fetched once is not fetched again.
#[derive(Clone, Debug, Default)]
pub struct Downloads(Arc<std::sync::Mutex<HashMap<Sha256Hex, Arc<tokio::sync::Mutex<()>>>>>);

impl Downloads {
    async fn lock(&self, h: &Sha256Hex) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .0
            .lock()
            .expect("not poisoned")
            .entry(*h)
            .or_default()
            .clone();
        m.lock_owned().await
    }
}

impl Peer {
    pub fn new(
        name: impl Into<String>,
        base: &str,
        token: &str,
        http: reqwest::Client,
        downloads: Downloads,
    ) -> Self {
        Self {
            name: name.into(),
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http,
            downloads,
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
    }

    /// Runs `op` until it succeeds, fails for good, or has been tried
    /// [`RETRY_ATTEMPTS`] times; each retry is logged.
    async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if is_transient(&e) && attempt < RETRY_ATTEMPTS => {
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
        Error::Unreachable {
            peer: self.name.clone(),
            what: what.to_owned(),
            message: error_chain(e),
        }
    }

    /// The error for an answer that is not a success.
    async fn refusal(&self, what: &str, resp: Response) -> Error {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
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
        let resp = req.send().await.map_err(|e| self.unreachable(what, &e))?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        Err(self.refusal(what, resp).await)
    }

    /// Sends, retrying transient failures (a streamed body is sent once).
    async fn send(&self, what: &str, req: RequestBuilder) -> Result<Response, Error> {
        if req.try_clone().is_none() {
            return self.send_once(what, req).await;
        }
        self.retrying(what, || {
            self.send_once(what, req.try_clone().expect("cloneable: checked above"))
        })
        .await
    }

    pub async fn get_json<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<T, Error> {
        self.retrying(what, || async {
            let resp = self
                .send_once(what, self.request(Method::GET, path))
                .await?;
            self.json(what, resp).await
        })
        .await
    }

    pub async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        self.retrying(what, || async {
            let resp = self
                .send_once(what, self.request(method.clone(), path).json(body))
                .await?;
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
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(what, &e))?;
            if out.len() + chunk.len() > limit {
                return Err(too_large((out.len() + chunk.len()) as u64));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    async fn json<T: DeserializeOwned>(&self, what: &str, resp: Response) -> Result<T, Error> {
        let bytes = self.read_limited(what, resp, MAX_ANSWER_BYTES).await?;
        // An empty body (201, 204) reads as `null`.
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes).map_err(|e| Error::BadAnswer {
            peer: self.name.clone(),
            what: what.to_owned(),
            message: e.to_string(),
        })
    }

    /// Asks which of `hashes` the peer lacks.
    pub async fn missing(
        &self,
        route_template: &str,
        hashes: Vec<Sha256Hex>,
    ) -> Result<Vec<Sha256Hex>, Error> {
        let mut missing = Vec::new();
        // Bounded requests, whatever the folder size.
        for chunk in hashes.chunks(50_000) {
            let out: HashList = self
                .send_json(
                    "ask which files it lacks",
                    Method::POST,
                    route_template,
                    &HashList {
                        hashes: chunk.to_vec(),
                    },
                )
                .await?;
            missing.extend(out.hashes);
        }
        Ok(missing)
    }

    /// Downloads blob `h` into `store`, resuming a partial download with
    /// HTTP Range, and checks its hash before it counts as there. A cut
    /// download resumes where it stopped; bytes already held are not
    /// fetched again, and a `200` answer to a Range request starts the
    /// file over rather than being appended.
    pub async fn download_blob(
        &self,
        route_template: &str,
        h: &Sha256Hex,
        size: Option<u64>,
        store: &BlobStore,
    ) -> Result<u64, Error> {
        let _one_at_a_time = self.downloads.lock(h).await;
        if store.has(h) {
            return Ok(0);
        }
        let what = format!("download file {h}");
        let path = route(route_template, &[("sha256", &h.to_string())]);
        let partial = store.partial_path(h);
        let adopt = || {
            let (store, h) = (store.clone(), *h);
            async move {
                tokio::task::spawn_blocking(move || store.adopt_partial(&h, size))
                    .await
                    .expect("adopt does not panic")
            }
        };
        let mut attempt = 1u32;
        loop {
            let have = tokio::fs::metadata(&partial)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            let result = self.download_once(&what, &path, have, &partial).await;
            match result {
                Ok(()) => {
                    adopt().await?;
                    return Ok(size.unwrap_or(0));
                }
                // Everything was already here: a crash came between the last
                // byte and the hash check. Check it now; a partial file that
                // fails the check is deleted and the next try starts over.
                Err(Error::Refused { status: 416, .. }) if have > 0 && attempt < RETRY_ATTEMPTS => {
                    if adopt().await.is_ok() {
                        return Ok(size.unwrap_or(0));
                    }
                    attempt += 1;
                }
                Err(e) if is_transient(&e) && attempt < RETRY_ATTEMPTS => {
                    self.wait_before_retry(&what, attempt, &e).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One try of a download: bytes `have..` into `partial`.
    async fn download_once(
        &self,
        what: &str,
        path: &str,
        have: u64,
        partial: &std::path::Path,
    ) -> Result<(), Error> {
        let io = |e| tillup_fs::Error::Io {
            path: partial.to_owned(),
            source: e,
        };
        let mut req = self.request(Method::GET, path);
        if have > 0 {
            req = req.header(header::RANGE, format!("bytes={have}-"));
        }
        let resp = self.send_once(what, req).await?;
        // A 200 to a Range request is the whole file again: start over.
        let append = have > 0 && resp.status() == StatusCode::PARTIAL_CONTENT;
        if append {
            let starts = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes ")?.split_once('-'))
                .and_then(|(first, _)| first.parse::<u64>().ok());
            if starts != Some(have) {
                return Err(Error::BadAnswer {
                    peer: self.name.clone(),
                    what: what.to_owned(),
                    message: format!(
                        "asked for the bytes from {have} on, it sent a range starting at {starts:?}"
                    ),
                });
            }
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(partial)
            .await
            .map_err(io)?;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(what, &e))?;
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        Ok(())
    }

    /// Uploads blob `h` from `store`. A cut upload resumes: the peer keeps
    /// what arrived, tells how much on `HEAD`, and only the rest is sent
    /// (the protocol of [`api::PARTIAL_HEADER`]).
    pub async fn upload_blob(
        &self,
        route_template: &str,
        h: &Sha256Hex,
        store: &BlobStore,
    ) -> Result<(), Error> {
        let what = format!("upload file {h}");
        let path = route(route_template, &[("sha256", &h.to_string())]);
        let file = store.path(h);
        let len = tokio::fs::metadata(&file)
            .await
            .map_err(|e| tillup_fs::Error::Io {
                path: file.clone(),
                source: e,
            })?
            .len();
        // The first try sends everything; a peer holding part of it from
        // an earlier run answers 409 with what it holds.
        let mut from = Some(0);
        let mut attempt = 1u32;
        loop {
            let result = async {
                let start = match from {
                    Some(n) => n,
                    None => match self.held(&what, &path).await? {
                        Some(n) => n,
                        None => return Ok(Upload::Done),
                    },
                };
                // All held but not checked (the peer stopped between its
                // last byte and its check) or more than the file: a range
                // cannot say "nothing more", so send it all again.
                let start = if start >= len { 0 } else { start };
                self.upload_from(&what, &path, &file, start, len).await
            }
            .await;
            match result {
                Ok(Upload::Done) => return Ok(()),
                Ok(Upload::Held(n)) if attempt < RETRY_ATTEMPTS => {
                    tracing::info!(peer = %self.name, "{what}: it holds {n} bytes, sending the rest");
                    from = Some(n);
                    attempt += 1;
                }
                Ok(Upload::Held(n)) => {
                    return Err(Error::BadAnswer {
                        peer: self.name.clone(),
                        what,
                        message: format!(
                            "it keeps asking to resume at another byte (now {n}) than the one sent"
                        ),
                    });
                }
                Err(e) if is_transient(&e) && attempt < RETRY_ATTEMPTS => {
                    self.wait_before_retry(&what, attempt, &e).await;
                    from = None;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `HEAD` on a blob route: `None` when the peer holds the whole blob,
    /// else the bytes it holds of an unfinished upload.
    async fn held(&self, what: &str, path: &str) -> Result<Option<u64>, Error> {
        let resp = self
            .request(Method::HEAD, path)
            .send()
            .await
            .map_err(|e| self.unreachable(what, &e))?;
        match resp.status() {
            s if s.is_success() => Ok(None),
            StatusCode::NOT_FOUND => Ok(Some(partial_header(&resp).unwrap_or(0))),
            _ => Err(self.refusal(what, resp).await),
        }
    }

    /// One `PUT` of bytes `from..len` of `file`.
    async fn upload_from(
        &self,
        what: &str,
        path: &str,
        file: &std::path::Path,
        from: u64,
        len: u64,
    ) -> Result<Upload, Error> {
        let io = |e| tillup_fs::Error::Io {
            path: file.to_owned(),
            source: e,
        };
        let mut f = tokio::fs::File::open(file).await.map_err(io)?;
        f.seek(std::io::SeekFrom::Start(from)).await.map_err(io)?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            f.take(len - from),
            256 * 1024,
        ));
        let mut req = self
            .request(Method::PUT, path)
            .header(header::CONTENT_LENGTH, len - from)
            .body(body);
        if len > 0 {
            req = req.header(header::CONTENT_RANGE, api::content_range(from, len));
        }
        let resp = req.send().await.map_err(|e| self.unreachable(what, &e))?;
        match resp.status() {
            s if s.is_success() => Ok(Upload::Done),
            StatusCode::CONFLICT if partial_header(&resp).is_some() => {
                Ok(Upload::Held(partial_header(&resp).unwrap_or(0)))
            }
            _ => Err(self.refusal(what, resp).await),
        }
    }

    /// A GET that may answer 304.
    pub async fn get_conditional(
        &self,
        what: &str,
        path: &str,
        etag: Option<&str>,
    ) -> Result<Response, Error> {
        let mut req = self.request(Method::GET, path);
        if let Some(tag) = etag {
            req = req.header(header::IF_NONE_MATCH, tag);
        }
        self.send(what, req).await
    }
}

/// How a `PUT` of a blob ended.
enum Upload {
    Done,
    /// The peer holds this many bytes and wants the rest from there.
    Held(u64),
}

/// The [`api::PARTIAL_HEADER`] of an answer.
fn partial_header(resp: &Response) -> Option<u64> {
    resp.headers()
        .get(api::PARTIAL_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub use tillup_core::error_chain;

/// The server's routes, with the store filled in.
pub fn store_route(template: &str, store: &str, upgrade: &str) -> String {
    route(template, &[("store", store), ("upgrade", upgrade)])
}

pub use api::agent as agent_routes;
pub use api::server as server_routes;

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::AsyncBufReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// What the scripted server saw of one request.
    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        range: Option<String>,
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
                let header = |name: &str| {
                    head.iter().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                    })
                };
                let req = Seen {
                    method: head
                        .first()
                        .and_then(|l| l.split(' ').next())
                        .unwrap_or("")
                        .to_owned(),
                    range: header("range"),
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
    fn file_answer(file: &[u8], req: &Seen, cut_after: Option<usize>) -> Answer {
        let from = req.range.as_deref().and_then(|r| {
            r.strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse::<usize>()
                .ok()
        });
        match from {
            Some(n) => Answer {
                status: 206,
                headers: vec![(
                    "content-range".into(),
                    format!("bytes {n}-{}/{}", file.len() - 1, file.len()),
                )],
                body: file[n..].to_vec(),
                cut_after,
            },
            None => Answer {
                status: 200,
                headers: vec![],
                body: file.to_vec(),
                cut_after,
            },
        }
    }

    fn peer(url: &str) -> Peer {
        Peer::new("server", url, "t", client(), Downloads::default())
    }

    fn file() -> Vec<u8> {
        (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_cut_download_resumes_and_no_held_byte_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let f = file();
        let h = Sha256Hex::of(&f);
        // Already held from an earlier run: the first 50 000 bytes.
        std::fs::write(store.partial_path(&h), &f[..50_000]).unwrap();
        let file2 = f.clone();
        let (url, seen, sent) = scripted(Arc::new(move |i, req| {
            // Cut twice, then let it finish.
            let cut = (i < 2).then_some(40_000);
            file_answer(&file2, req, cut)
        }))
        .await;
        peer(&url)
            .download_blob(api::server::BLOB, &h, Some(f.len() as u64), &store)
            .await
            .unwrap();
        assert_eq!(store.read(&h).unwrap(), f);
        assert!(seen.lock().unwrap().iter().all(|s| s.method == "GET"));
        let ranges: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.range.clone())
            .collect();
        assert_eq!(
            ranges,
            [
                Some("bytes=50000-"),
                Some("bytes=90000-"),
                Some("bytes=130000-")
            ]
            .map(|r| r.map(str::to_owned))
        );
        // Exactly the bytes not held crossed, each once.
        assert_eq!(*sent.lock().unwrap(), 150_000);
    }

    #[tokio::test]
    async fn a_200_to_a_range_request_starts_the_file_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let f = file();
        let h = Sha256Hex::of(&f);
        std::fs::write(store.partial_path(&h), &f[..50_000]).unwrap();
        let file2 = f.clone();
        // A server (or proxy) that ignores Range: the whole file, 200.
        let (url, seen, _) = scripted(Arc::new(move |_, _| Answer {
            status: 200,
            headers: vec![],
            body: file2.clone(),
            cut_after: None,
        }))
        .await;
        peer(&url)
            .download_blob(api::server::BLOB, &h, Some(f.len() as u64), &store)
            .await
            .unwrap();
        // Appended, it would be 250 000 bytes that fail the hash check.
        assert_eq!(store.read(&h).unwrap(), f);
        assert_eq!(
            seen.lock().unwrap()[0].range.as_deref(),
            Some("bytes=50000-")
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_206_at_another_offset_is_refused_not_appended() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let f = file();
        let h = Sha256Hex::of(&f);
        std::fs::write(store.partial_path(&h), &f[..50_000]).unwrap();
        let file2 = f.clone();
        let (url, _, _) = scripted(Arc::new(move |_, _| Answer {
            status: 206,
            headers: vec![("content-range".into(), "bytes 0-199999/200000".into())],
            body: file2.clone(),
            cut_after: None,
        }))
        .await;
        let err = peer(&url)
            .download_blob(api::server::BLOB, &h, Some(f.len() as u64), &store)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BadAnswer { .. }), "{err}");
        assert!(!store.has(&h));
        assert_eq!(std::fs::read(store.partial_path(&h)).unwrap(), &f[..50_000]);
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
