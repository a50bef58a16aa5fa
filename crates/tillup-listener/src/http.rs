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
use tokio::io::AsyncWriteExt;

use crate::Error;

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

    async fn send(&self, what: &str, req: RequestBuilder) -> Result<Response, Error> {
        let resp = req.send().await.map_err(|e| Error::Unreachable {
            peer: self.name.clone(),
            what: what.to_owned(),
            message: error_chain(&e),
        })?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned());
        Err(Error::Refused {
            peer: self.name.clone(),
            what: what.to_owned(),
            status: status.as_u16(),
            message,
        })
    }

    pub async fn get_json<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<T, Error> {
        let resp = self.send(what, self.request(Method::GET, path)).await?;
        self.json(what, resp).await
    }

    pub async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        let resp = self
            .send(what, self.request(method, path).json(body))
            .await?;
        self.json(what, resp).await
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
            let chunk = chunk.map_err(|e| Error::Unreachable {
                peer: self.name.clone(),
                what: what.to_owned(),
                message: error_chain(&e),
            })?;
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
    /// HTTP Range, and checks its hash before it counts as there.
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
        let partial = store.partial_path(h);
        let mut attempt = 0u32;
        loop {
            let have = tokio::fs::metadata(&partial)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            let mut req = self.request(
                Method::GET,
                &route(route_template, &[("sha256", &h.to_string())]),
            );
            if have > 0 {
                req = req.header(header::RANGE, format!("bytes={have}-"));
            }
            let result = async {
                let resp = self.send(&what, req).await?;
                // A 200 to a Range request is the whole file again: start over.
                let append = have > 0 && resp.status() == StatusCode::PARTIAL_CONTENT;
                let mut file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(append)
                    .truncate(!append)
                    .open(&partial)
                    .await
                    .map_err(|e| tillup_fs::Error::Io {
                        path: partial.clone(),
                        source: e,
                    })?;
                let mut stream = resp.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| Error::Unreachable {
                        peer: self.name.clone(),
                        what: what.clone(),
                        message: error_chain(&e),
                    })?;
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| tillup_fs::Error::Io {
                            path: partial.clone(),
                            source: e,
                        })?;
                }
                file.flush().await.map_err(|e| tillup_fs::Error::Io {
                    path: partial.clone(),
                    source: e,
                })?;
                Ok::<(), Error>(())
            }
            .await;
            match result {
                Ok(()) => {
                    let (store2, h2) = (store.clone(), *h);
                    tokio::task::spawn_blocking(move || store2.adopt_partial(&h2, size))
                        .await
                        .expect("adopt does not panic")?;
                    return Ok(size.unwrap_or(0));
                }
                // Everything was already here: a crash came between the last
                // byte and the hash check. Check it now; a partial file that
                // fails the check is deleted and the next try starts over.
                Err(Error::Refused { status: 416, .. }) if have > 0 && attempt < 4 => {
                    attempt += 1;
                    let (store2, h2) = (store.clone(), *h);
                    let adopted =
                        tokio::task::spawn_blocking(move || store2.adopt_partial(&h2, size))
                            .await
                            .expect("adopt does not panic");
                    if adopted.is_ok() {
                        return Ok(size.unwrap_or(0));
                    }
                }
                Err(Error::Unreachable { .. }) if attempt < 4 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Uploads blob `h` from `store`.
    pub async fn upload_blob(
        &self,
        route_template: &str,
        h: &Sha256Hex,
        store: &BlobStore,
    ) -> Result<(), Error> {
        let path = store.path(h);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| tillup_fs::Error::Io {
                path: path.clone(),
                source: e,
            })?;
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            256 * 1024,
        ));
        let req = self
            .request(
                Method::PUT,
                &route(route_template, &[("sha256", &h.to_string())]),
            )
            .header(header::CONTENT_LENGTH, len)
            .body(body);
        self.send(&format!("upload file {h}"), req).await?;
        Ok(())
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

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

/// The server's routes, with the store filled in.
pub fn store_route(template: &str, store: &str, upgrade: &str) -> String {
    route(template, &[("store", store), ("upgrade", upgrade)])
}

pub use api::agent as agent_routes;
pub use api::server as server_routes;
