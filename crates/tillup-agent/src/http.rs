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
    AgentStatus, ErrorBody, HashList, HealthQuery, HealthReport, Snapshot, StageReport,
    StageRequest, StartReport, StopReport, StopRequest, SwapReport, SwapRequest, agent as routes,
};
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
        if let Self::RangeNotSatisfiable(len) = self {
            res.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
            );
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
        .route(routes::BLOB, get(get_blob).put(put_blob))
        .route(routes::BLOBS_MISSING, post(missing))
        .route(routes::STAGE, post(stage))
        .route(routes::COMMIT, post(commit))
        .route(routes::ROLLBACK, post(rollback))
        .route(routes::HEALTH, get(health))
        .layer(DefaultBodyLimit::max(
            tillup_core::manifest::MAX_MANIFEST_BYTES + 64 * 1024,
        ))
        .layer(middleware::from_fn_with_state(Arc::clone(&agent), auth))
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
    Ok(Json(HashList {
        hashes: a.missing(&wanted.hashes).await?,
    }))
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
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    // Counted while streaming too: a body may come without a length.
    let over = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut received = 0u64;
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
    // The store writes into a temporary file, removed unless the hash checks.
    let put = tokio::task::spawn_blocking(move || store.put_reader(&mut reader, &h, None))
        .await
        .map_err(AgentError::internal)?;
    match put {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(_) if over.load(std::sync::atomic::Ordering::Relaxed) => Err(too_large()),
        Err(
            e @ (tillup_fs::Error::HashMismatch { .. } | tillup_fs::Error::SizeMismatch { .. }),
        ) => Err(AgentError::BadRequest(format!(
            "the bytes sent do not hash to {h}; nothing was kept ({})",
            short(&e)
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
            StatusCode::BAD_REQUEST,
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
