//! The agent's HTTP API: routes from [`tillup_core::api::agent`], every one
//! behind `Authorization: Bearer <token>`. Handlers are one-liners over
//! [`Agent`]; errors go through the one [`AgentError`].

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::TryStreamExt;
use subtle::ConstantTimeEq;
use tillup_core::Sha256Hex;
use tillup_core::api::{
    AgentStatus, ErrorBody, HashList, HealthQuery, HealthReport, PARTIAL_HEADER, PackReceipt,
    PackRequest, Snapshot, StageReport, StageRequest, StartReport, StopReport, StopRequest,
    SwapReport, SwapRequest, agent as routes,
};
use tillup_fs::Received;
use tokio::io::AsyncSeekExt;

use crate::Agent;
use crate::folder::FolderError;

/// Every error the API answers with; the body is an [`ErrorBody`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// No or wrong Bearer token.
    #[error(
        "missing or wrong token: send `Authorization: Bearer <token>` with the token from the agent's config"
    )]
    Unauthorized,
    /// The request is malformed or its bytes are wrong.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing with that name here.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be done in the current state; the message says what to do first.
    #[error("{0}")]
    Conflict(String),
    /// Not enough disk space.
    #[error("{0}")]
    NoSpace(String),
    /// The body is larger than the agent accepts.
    #[error("{0}")]
    TooLarge(String),
    /// The bytes arrived but are not what the request named.
    #[error("{0}")]
    Unprocessable(String),
    /// An upload resumed at another byte than the `held` ones.
    #[error(
        "this upload resumes at byte {offset}, but the agent holds {held} bytes of it: resume at byte {held}"
    )]
    WrongOffset {
        /// The bytes the agent holds.
        held: u64,
        /// Where the request resumed.
        offset: u64,
    },
    /// A `Range` past the end of the file.
    #[error("the range starts past the end of the {0}-byte file")]
    RangeNotSatisfiable(u64),
    /// The main program could not be started, signalled or stopped. Its
    /// cause is the store's business (a missing program, a process that
    /// will not die), so it is sent: the host puts it in its report.
    #[error("{0}")]
    MainProgram(String),
    /// Anything else; the details are logged, not sent.
    #[error("internal error in the agent; see the agent's log on the terminal")]
    Internal(String),
}

impl AgentError {
    /// Wraps an unexpected failure, keeping its text for the log.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::NoSpace(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::WrongOffset { .. } => StatusCode::CONFLICT,
            Self::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::MainProgram(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::supervisor::SupervisorError> for AgentError {
    fn from(e: crate::supervisor::SupervisorError) -> Self {
        Self::MainProgram(e.to_string())
    }
}

impl From<FolderError> for AgentError {
    fn from(e: FolderError) -> Self {
        match e {
            FolderError::Missing(_)
            | FolderError::NotStaged { .. }
            | FolderError::NoPrevious { .. } => Self::Conflict(e.to_string()),
            FolderError::NoSpace { .. } => Self::NoSpace(e.to_string()),
            FolderError::WrongVersion { .. } | FolderError::CaseCollision(_) => {
                Self::BadRequest(e.to_string())
            }
            FolderError::Fs(
                tillup_fs::Error::HashMismatch { .. } | tillup_fs::Error::SizeMismatch { .. },
            ) => Self::Conflict(format!(
                "a file changed while it was copied; stage again: {e}"
            )),
            FolderError::Fs(e) => e.into(),
        }
    }
}

impl From<tillup_fs::Error> for AgentError {
    /// A full disk is the terminal's business, said plainly; any other
    /// disk failure is logged, not sent.
    fn from(e: tillup_fs::Error) -> Self {
        match &e {
            tillup_fs::Error::Io { source, .. }
                if source.kind() == std::io::ErrorKind::StorageFull =>
            {
                Self::NoSpace(format!(
                    "the terminal's disk is full ({source}); nothing was changed: free some space on it and upgrade again"
                ))
            }
            _ => Self::internal(e),
        }
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(detail) => tracing::error!("internal error: {detail}"),
            Self::MainProgram(why) => tracing::error!("{why}"),
            _ => {}
        }
        let mut res = (
            self.status(),
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        match self {
            Self::RangeNotSatisfiable(len) => {
                res.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
                );
            }
            Self::WrongOffset { held, .. } => {
                res.headers_mut()
                    .insert(PARTIAL_HEADER, HeaderValue::from(held));
            }
            _ => {}
        }
        res
    }
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, AgentError> {
    body.map(|Json(t)| t)
        .map_err(|e| AgentError::BadRequest(e.body_text()))
}

fn hash_param(s: &str) -> Result<Sha256Hex, AgentError> {
    s.parse()
        .map_err(|e: tillup_core::hash::BadDigest| AgentError::BadRequest(e.to_string()))
}

/// The router; `agent` is shared by every request.
pub fn app(agent: Arc<Agent>) -> Router {
    Router::new()
        .route(routes::STATUS, get(status))
        .route(routes::STOP, post(stop))
        .route(routes::START, post(start))
        .route(routes::SNAPSHOT, get(snapshot))
        .route(routes::BLOB, get(get_blob).head(head_blob).put(put_blob))
        .route(routes::BLOBS_MISSING, post(missing))
        .route(routes::PACK, post(get_pack).put(put_pack))
        .route(routes::STAGE, post(stage))
        .route(routes::COMMIT, post(commit))
        .route(routes::ROLLBACK, post(rollback))
        .route(routes::HEALTH, get(health))
        .layer(DefaultBodyLimit::max(
            tillup_core::manifest::MAX_MANIFEST_BYTES + 64 * 1024,
        ))
        .layer(middleware::from_fn_with_state(Arc::clone(&agent), auth))
        // The host may send large JSON (a staging manifest) zstd-compressed.
        .layer(tower_http::decompression::RequestDecompressionLayer::new())
        .with_state(agent)
}

async fn auth(State(agent): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    if bool::from(given.ct_eq(agent.config().token.as_bytes())) {
        agent.touch();
        let response = next.run(req).await;
        // A long request (a stop waiting for a sale) is contact throughout.
        agent.touch();
        response
    } else {
        AgentError::Unauthorized.into_response()
    }
}

async fn status(State(a): State<Arc<Agent>>) -> Result<Json<AgentStatus>, AgentError> {
    a.status().await.map(Json)
}

async fn stop(State(a): State<Arc<Agent>>, body: Bytes) -> Result<Json<StopReport>, AgentError> {
    let req: StopRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StopRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AgentError::BadRequest(format!("the stop request is not valid: {e}")))?
    };
    a.stop(req.busy_timeout_secs.map(Duration::from_secs))
        .await
        .map(Json)
}

async fn start(State(a): State<Arc<Agent>>) -> Result<Json<StartReport>, AgentError> {
    a.start().await.map(Json)
}

async fn snapshot(State(a): State<Arc<Agent>>) -> Result<Json<Snapshot>, AgentError> {
    a.snapshot().await.map(Json)
}

async fn missing(
    State(a): State<Arc<Agent>>,
    body: Result<Json<HashList>, JsonRejection>,
) -> Result<Json<HashList>, AgentError> {
    let wanted = json_body(body)?;
    let hashes = a.missing(&wanted.hashes).await?;
    let store = a.store().clone();
    let held = tokio::task::spawn_blocking(move || {
        let mut held = std::collections::BTreeMap::new();
        for h in &hashes {
            let n = store.partial_len(h, "")?;
            if n > 0 {
                held.insert(*h, n);
            }
        }
        Ok::<_, tillup_fs::Error>((hashes, held))
    })
    .await
    .map_err(AgentError::internal)??;
    Ok(Json(HashList {
        hashes: held.0,
        held: held.1,
    }))
}

/// `POST /v1/pack`: files of the folder (or received), in one pack.
async fn get_pack(
    State(a): State<Arc<Agent>>,
    body: Result<Json<PackRequest>, JsonRejection>,
) -> Result<Response, AgentError> {
    let req = json_body(body)?;
    let wanted: Vec<Sha256Hex> = req.blobs.iter().map(|e| e.sha256).collect();
    let locate = a.locator(&wanted).await?;
    let body =
        tillup_transfer::pack_body(req.blobs, locate, tillup_transfer::pack::LAN_LEVEL, None);
    Ok((
        [(header::CONTENT_TYPE, tillup_core::api::PACK_MEDIA_TYPE)],
        Body::from_stream(body),
    )
        .into_response())
}

/// `PUT /v1/pack`: files for the next staging, each checked on arrival;
/// those that arrived whole are kept even if the pack was cut after them.
async fn put_pack(
    State(a): State<Arc<Agent>>,
    body: Body,
) -> Result<Json<PackReceipt>, AgentError> {
    let max = a.config().max_blob_bytes;
    let admit: tillup_transfer::Admit = Box::new(move |_, total| {
        if total > max {
            return Err(format!(
                "larger than this agent accepts ({max} bytes, `max_blob_bytes` in its config)"
            ));
        }
        Ok(())
    });
    let received = tillup_transfer::receive_pack(
        body.into_data_stream(),
        a.store().clone(),
        String::new(),
        admit,
        Box::new(|_| {}),
    )
    .await;
    use tillup_transfer::PackError as P;
    match received.result {
        Ok(()) => Ok(Json(PackReceipt {
            received: received.unpacked.blobs,
            bytes: received.unpacked.bytes,
        })),
        Err(e @ P::NotAPack) => Err(AgentError::BadRequest(e.to_string())),
        Err(e @ P::Refused { .. }) => Err(AgentError::TooLarge(e.to_string())),
        Err(P::Blob(tillup_fs::Error::WrongOffset { held, offset, .. })) => {
            Err(AgentError::WrongOffset { held, offset })
        }
        Err(P::Blob(e @ (tillup_fs::Error::HashMismatch { .. } | tillup_fs::Error::SizeMismatch { .. }))) => {
            Err(AgentError::Unprocessable(format!(
                "a file of the pack is not what it is named; it was not kept, send it again ({})",
                short(&e)
            )))
        }
        Err(P::Cut { .. } | P::Blob(tillup_fs::Error::TransferCut { .. })) => Err(AgentError::BadRequest(
            "the pack was cut; the files that arrived whole are kept: ask blobs/missing for the rest".into(),
        )),
        Err(P::Blob(e)) => Err(e.into()),
        Err(e) => Err(AgentError::internal(e)),
    }
}

async fn stage(
    State(a): State<Arc<Agent>>,
    body: Result<Json<StageRequest>, JsonRejection>,
) -> Result<Json<StageReport>, AgentError> {
    a.stage(json_body(body)?).await.map(Json)
}

async fn commit(
    State(a): State<Arc<Agent>>,
    body: Result<Json<SwapRequest>, JsonRejection>,
) -> Result<Json<SwapReport>, AgentError> {
    a.commit(json_body(body)?.version).await.map(Json)
}

async fn rollback(
    State(a): State<Arc<Agent>>,
    body: Result<Json<SwapRequest>, JsonRejection>,
) -> Result<Json<SwapReport>, AgentError> {
    a.rollback(json_body(body)?.version).await.map(Json)
}

async fn health(
    State(a): State<Arc<Agent>>,
    q: Result<Query<HealthQuery>, QueryRejection>,
) -> Result<Json<HealthReport>, AgentError> {
    let Query(q) = q.map_err(|e| {
        AgentError::BadRequest(format!(
            "{}; ask as /v1/health?version=1.2.3",
            e.body_text()
        ))
    })?;
    a.health(&q.version).await.map(Json)
}

/// The start offset of a `Range: bytes=N-` header; other forms are refused.
pub fn parse_range(headers: &HeaderMap) -> Result<Option<u64>, AgentError> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let bad = || AgentError::BadRequest("only `Range: bytes=N-` is supported".into());
    let s = v.to_str().map_err(|_| bad())?.trim();
    let n = s
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .ok_or_else(bad)?;
    n.parse().map(Some).map_err(|_| bad())
}

async fn get_blob(
    State(a): State<Arc<Agent>>,
    Path(h): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AgentError> {
    let h = hash_param(&h)?;
    let start = parse_range(&headers)?;
    let path = a.blob_path(&h).await?.ok_or_else(|| {
        AgentError::NotFound(format!(
            "no file with SHA-256 {h} in the folder or the incoming store"
        ))
    })?;
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(AgentError::internal)?;
    let len = file.metadata().await.map_err(AgentError::internal)?.len();
    let mut res_headers = HeaderMap::new();
    res_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    res_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let status = match start {
        Some(s) if s > len || (s == len && len > 0) => {
            return Err(AgentError::RangeNotSatisfiable(len));
        }
        Some(s) => {
            file.seek(SeekFrom::Start(s))
                .await
                .map_err(AgentError::internal)?;
            let range = format!("bytes {s}-{}/{len}", len.saturating_sub(1));
            res_headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&range).expect("ascii"),
            );
            res_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len - s));
            StatusCode::PARTIAL_CONTENT
        }
        None => {
            res_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            StatusCode::OK
        }
    };
    Ok((
        status,
        res_headers,
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}

/// `HEAD`: `200` if the agent holds the blob, else `404` with the bytes
/// held of its unfinished upload (see [`PARTIAL_HEADER`]).
async fn head_blob(
    State(a): State<Arc<Agent>>,
    Path(h): Path<String>,
) -> Result<Response, AgentError> {
    let h = hash_param(&h)?;
    if a.missing(&[h]).await?.is_empty() {
        return Ok(StatusCode::OK.into_response());
    }
    let held = a
        .store()
        .partial_len(&h, "")
        .map_err(AgentError::internal)?;
    Ok((
        StatusCode::NOT_FOUND,
        [(PARTIAL_HEADER, HeaderValue::from(held))],
    )
        .into_response())
}

/// `PUT`: a whole blob, or the rest of a cut upload (see [`PARTIAL_HEADER`]).
async fn put_blob(
    State(a): State<Arc<Agent>>,
    Path(h): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, AgentError> {
    let h = hash_param(&h)?;
    let max = a.config().max_blob_bytes;
    let too_large = || {
        AgentError::TooLarge(format!(
            "the blob is larger than this agent accepts ({max} bytes, `max_blob_bytes` in its config); nothing was kept"
        ))
    };
    let (offset, total) = match headers.get(header::CONTENT_RANGE) {
        None => (0, None),
        Some(v) => {
            let (from, total) = v
                .to_str()
                .ok()
                .and_then(tillup_core::api::parse_content_range)
                .ok_or_else(|| {
                    AgentError::BadRequest(
                        "a blob's Content-Range must be `bytes N-LAST/TOTAL`, LAST being TOTAL-1"
                            .into(),
                    )
                })?;
            (from, Some(total))
        }
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| offset + n > max) || total.is_some_and(|t| t > max) {
        return Err(too_large());
    }
    // Counted while streaming too: a body may come without a length.
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut received = offset;
    let flag = Arc::clone(&over);
    let stream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .and_then(move |chunk| {
            received += chunk.len() as u64;
            let res = if received > max {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(std::io::Error::other(
                    "the blob is larger than max_blob_bytes",
                ))
            } else {
                Ok(chunk)
            };
            std::future::ready(res)
        });
    let mut reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let store = a.store().clone();
    // What arrives grows a partial file, moved into the store only once
    // whole and hash-checked.
    let put =
        tokio::task::spawn_blocking(move || store.receive(&h, "", offset, total, &mut reader))
            .await
            .map_err(AgentError::internal)?;
    match put {
        Ok(Received::Whole { .. }) => Ok(StatusCode::NO_CONTENT),
        Ok(Received::Partial { held }) => Err(AgentError::BadRequest(format!(
            "the body ended after byte {held} of {}; what arrived is kept: resume at byte {held}",
            total.unwrap_or(held)
        ))),
        Err(_) if over.load(std::sync::atomic::Ordering::Relaxed) => {
            let store = a.store().clone();
            tokio::task::spawn_blocking(move || store.discard_partial(&h, ""))
                .await
                .map_err(AgentError::internal)?
                .map_err(AgentError::internal)?;
            Err(too_large())
        }
        Err(tillup_fs::Error::WrongOffset { held, offset, .. }) => {
            Err(AgentError::WrongOffset { held, offset })
        }
        Err(
            e @ (tillup_fs::Error::HashMismatch { .. } | tillup_fs::Error::SizeMismatch { .. }),
        ) => Err(AgentError::Unprocessable(format!(
            "the bytes sent do not make the file {h}; nothing was kept, send the whole file again ({})",
            short(&e)
        ))),
        Err(tillup_fs::Error::TransferCut { held, .. }) => Err(AgentError::BadRequest(format!(
            "the upload was cut after byte {held}; what arrived is kept: resume at byte {held}"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The error text without the store's path (which is internal).
fn short(e: &tillup_fs::Error) -> String {
    match e {
        tillup_fs::Error::HashMismatch { actual, .. } => format!("they hash to {actual}"),
        tillup_fs::Error::SizeMismatch {
            expected, actual, ..
        } => format!("expected {expected} bytes, got {actual}"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_main_program_failure_reaches_the_host_with_its_cause() {
        let e: AgentError = crate::supervisor::SupervisorError::Spawn {
            program: "/opt/cupos/bin/pos".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
        .into();
        let res = e.into_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let err: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert!(err.error.contains("/opt/cupos/bin/pos"), "{}", err.error);
    }

    fn agent(dir: &std::path::Path) -> Arc<Agent> {
        agent_with(dir, "")
    }

    /// An agent whose config has `extra` as its last top-level lines.
    fn agent_with(dir: &std::path::Path, extra: &str) -> Arc<Agent> {
        let folder = dir.join("cupos");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("VERSION"), "1.0.0\n").unwrap();
        std::fs::write(folder.join("a.txt"), "hello world").unwrap();
        let toml = format!(
            "terminal = 3\nmodel = \"CP-500\"\ntoken = \"s3cret\"\nlisten = \"127.0.0.1:0\"\nfolder = {:?}\n{extra}\n[main]\ncommand = [\"sleep\", \"60\"]\nhealth_command = [\"true\"]\nautostart = false\n",
            folder.to_str().unwrap()
        );
        Agent::new(crate::Config::parse(&toml).unwrap()).unwrap()
    }

    async fn call(
        app: Router,
        method: &str,
        uri: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Body,
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = app.oneshot(req.body(body).unwrap()).await.unwrap();
        let (parts, body) = res.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes().to_vec(),
        )
    }

    #[tokio::test]
    async fn every_route_needs_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(agent(dir.path()));
        for token in [None, Some("wrong"), Some("s3cret ")] {
            let (status, _, body) = call(
                app.clone(),
                "GET",
                routes::STATUS,
                token,
                &[],
                Body::empty(),
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            let err: ErrorBody = serde_json::from_slice(&body).unwrap();
            assert!(err.error.contains("Bearer"), "{}", err.error);
        }
        let (status, _, body) = call(
            app,
            "GET",
            routes::STATUS,
            Some("s3cret"),
            &[],
            Body::empty(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let s: AgentStatus = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (s.terminal, s.version.unwrap().to_string()),
            (3, "1.0.0".to_owned())
        );
    }

    #[tokio::test]
    async fn blob_get_supports_resume_and_put_checks_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(agent(dir.path()));
        let h = Sha256Hex::of(b"hello world");
        let uri = tillup_core::api::route(routes::BLOB, &[("sha256", &h.to_string())]);
        let (status, _, body) =
            call(app.clone(), "GET", &uri, Some("s3cret"), &[], Body::empty()).await;
        assert_eq!(
            (status, body.as_slice()),
            (StatusCode::OK, &b"hello world"[..])
        );
        let (status, headers, body) = call(
            app.clone(),
            "GET",
            &uri,
            Some("s3cret"),
            &[("range", "bytes=6-")],
            Body::empty(),
        )
        .await;
        assert_eq!(
            (status, body.as_slice()),
            (StatusCode::PARTIAL_CONTENT, &b"world"[..])
        );
        assert_eq!(headers[header::CONTENT_RANGE], "bytes 6-10/11");
        let (status, ..) = call(
            app.clone(),
            "GET",
            &uri,
            Some("s3cret"),
            &[("range", "bytes=11-")],
            Body::empty(),
        )
        .await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        let other = Sha256Hex::of(b"new");
        let put_uri = tillup_core::api::route(routes::BLOB, &[("sha256", &other.to_string())]);
        let (status, _, body) = call(
            app.clone(),
            "PUT",
            &put_uri,
            Some("s3cret"),
            &[],
            Body::from("NEW"),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let (status, ..) = call(
            app.clone(),
            "GET",
            &put_uri,
            Some("s3cret"),
            &[],
            Body::empty(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, ..) = call(
            app.clone(),
            "PUT",
            &put_uri,
            Some("s3cret"),
            &[],
            Body::from("new"),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (_, _, body) = call(app, "GET", &put_uri, Some("s3cret"), &[], Body::empty()).await;
        assert_eq!(body, b"new");
    }

    /// Regression: `PUT /v1/blobs/{sha256}` took a body of any size.
    #[tokio::test]
    async fn a_blob_larger_than_max_blob_bytes_is_refused_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent_with(dir.path(), "max_blob_bytes = 10");
        let app = app(Arc::clone(&agent));
        let (fits, big) = (b"0123456789".to_vec(), b"0123456789A".to_vec());
        for bytes in [&fits, &big] {
            let h = Sha256Hex::of(bytes);
            let uri = tillup_core::api::route(routes::BLOB, &[("sha256", &h.to_string())]);
            let chunks: Vec<Result<Bytes, std::io::Error>> = bytes
                .chunks(4)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            // With a Content-Length, and streamed without one.
            for body in [
                Body::from(bytes.clone()),
                Body::from_stream(futures_util::stream::iter(chunks)),
            ] {
                let (status, _, body) =
                    call(app.clone(), "PUT", &uri, Some("s3cret"), &[], body).await;
                if bytes.len() <= 10 {
                    assert_eq!(status, StatusCode::NO_CONTENT);
                    continue;
                }
                assert_eq!(
                    status,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "{}",
                    String::from_utf8_lossy(&body)
                );
                let err: ErrorBody = serde_json::from_slice(&body).unwrap();
                assert!(
                    err.error.contains("max_blob_bytes") && err.error.contains("nothing was kept"),
                    "{}",
                    err.error
                );
                assert!(!agent.store().has(&h));
                let blobs = dir.path().join("cupos.tillup-agent/blobs");
                let kept = walk(&blobs);
                assert_eq!(kept, vec![agent.store().path(&Sha256Hex::of(&fits))]);
            }
        }
    }

    /// A body that sends `bytes` and then breaks, like a cut connection.
    fn cut_body(bytes: &[u8]) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::copy_from_slice(bytes)),
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ];
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_cut_push_resumes_at_what_is_held_and_wrong_bytes_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path());
        let app = app(Arc::clone(&agent));
        let file: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        let h = Sha256Hex::of(&file);
        let uri = tillup_core::api::route(routes::BLOB, &[("sha256", &h.to_string())]);
        let put = |from: usize, body: Body| {
            let (app, uri) = (app.clone(), uri.clone());
            let range = tillup_core::api::content_range(from as u64, 50_000);
            async move {
                call(
                    app,
                    "PUT",
                    &uri,
                    Some("s3cret"),
                    &[("content-range", &range)],
                    body,
                )
                .await
            }
        };
        let head = || {
            call(
                app.clone(),
                "HEAD",
                &uri,
                Some("s3cret"),
                &[],
                Body::empty(),
            )
        };

        let (status, headers, _) = head().await;
        assert_eq!(
            (status, &headers[PARTIAL_HEADER]),
            (StatusCode::NOT_FOUND, &HeaderValue::from(0))
        );
        let (status, ..) = put(0, cut_body(&file[..12_345])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, headers, _) = head().await;
        assert_eq!(
            (status, &headers[PARTIAL_HEADER]),
            (StatusCode::NOT_FOUND, &HeaderValue::from(12_345))
        );
        // Resuming at another byte: 409 with what is held, nothing written.
        let (status, headers, body) = put(12_000, Body::from(file[12_000..].to_vec())).await;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(headers[PARTIAL_HEADER], "12345");
        assert_eq!(agent.store().partial_len(&h, "").unwrap(), 12_345);
        let (status, ..) = put(12_345, Body::from(file[12_345..].to_vec())).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(head().await.0, StatusCode::OK);
        assert_eq!(agent.store().read(&h).unwrap(), file);

        // Wrong bytes in the rest: 422, and the partial file is gone.
        let other: Vec<u8> = file.iter().rev().copied().collect();
        let h2 = Sha256Hex::of(&other);
        let uri2 = tillup_core::api::route(routes::BLOB, &[("sha256", &h2.to_string())]);
        let range = |from: u64| tillup_core::api::content_range(from, 50_000);
        let (status, ..) = call(
            app.clone(),
            "PUT",
            &uri2,
            Some("s3cret"),
            &[("content-range", &range(0))],
            cut_body(&other[..100]),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, body) = call(
            app.clone(),
            "PUT",
            &uri2,
            Some("s3cret"),
            &[("content-range", &range(100))],
            Body::from(file[100..].to_vec()),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let err: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert!(
            err.error.contains("send the whole file again"),
            "{}",
            err.error
        );
        assert!(!agent.store().has(&h2));
        assert_eq!(agent.store().partial_len(&h2, "").unwrap(), 0);
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p))
            } else {
                out.push(p)
            }
        }
        out
    }

    #[test]
    fn range_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_range(&h).unwrap(), None);
        h.insert(header::RANGE, HeaderValue::from_static("bytes=5-"));
        assert_eq!(parse_range(&h).unwrap(), Some(5));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=5-9"));
        assert!(parse_range(&h).is_err());
    }
}
