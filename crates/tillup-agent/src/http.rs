//! The agent's HTTP API: routes from [`tillup_core::api::agent`], every one
//! behind `Authorization: Bearer <token>`. Handlers are one-liners over
//! [`Agent`]; errors go through the one [`AgentError`].

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tillup_core::Sha256Hex;
use tillup_core::api::{
    AgentStatus, ErrorBody, HashList, HealthQuery, HealthReport, PARTIAL_HEADER, PROTOCOL_HEADER,
    PackReceipt, PackRequest, Protocols, SelfUpdateReport, SelfUpdateRequest, Snapshot,
    SnapshotChanges, SnapshotSince, StageChanges, StageReport, StageRequest, StartReport,
    StopReport, StopRequest, SwapReport, SwapRequest, agent as routes,
};

use tillup_core::openapi::{Binary, SemVer};

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
    /// The main program could not be started, signalled or stopped. Its
    /// cause is the store's business (a missing program, a process that
    /// will not die), so it is sent: the host puts it in its report.
    #[error("{0}")]
    MainProgram(String),
    /// What the host asked to install is not what the chain signed.
    #[error(transparent)]
    Refused(Box<tillup_core::install::InstallRefusal>),
    /// The request speaks a host–agent protocol this agent does not.
    #[error(
        "this agent (tillup-agent {agent}) speaks the host–agent protocol {speaks}, the request speaks {asked}: the host and this terminal's agent must be upgraded to tillup versions that share one (the agent's status says what it speaks)",
        agent = env!("CARGO_PKG_VERSION"),
        speaks = Protocols::THIS
    )]
    Protocol {
        /// The protocol the request named.
        asked: String,
    },
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
            Self::Refused(_) => StatusCode::FORBIDDEN,
            Self::Protocol { .. } => StatusCode::UPGRADE_REQUIRED,
            Self::MainProgram(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<tillup_core::install::InstallRefusal> for AgentError {
    fn from(e: tillup_core::install::InstallRefusal) -> Self {
        Self::Refused(Box::new(e))
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
            Self::Refused(why) => tracing::warn!("refused to install: {why}"),
            _ => {}
        }
        let mut res = (
            self.status(),
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if let Self::WrongOffset { held, .. } = self {
            res.headers_mut()
                .insert(PARTIAL_HEADER, HeaderValue::from(held));
        }
        res
    }
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, AgentError> {
    body.map(|Json(t)| t)
        .map_err(|e| AgentError::BadRequest(e.body_text()))
}

/// The router; `agent` is shared by every request.
pub fn app(agent: Arc<Agent>) -> Router {
    Router::new()
        .route(routes::STATUS, get(status))
        .route(routes::STOP, post(stop))
        .route(routes::START, post(start))
        .route(routes::SNAPSHOT, get(snapshot))
        .route(routes::SNAPSHOT_CHANGES, get(snapshot_changes))
        .route(routes::BLOBS_MISSING, post(missing))
        .route(routes::PACK, post(get_pack).put(put_pack))
        .route(routes::STAGE, post(stage))
        .route(routes::STAGE_CHANGES, post(stage_changes))
        .route(routes::COMMIT, post(commit))
        .route(routes::ROLLBACK, post(rollback))
        .route(routes::HEALTH, get(health))
        .route(routes::SELF_UPDATE, post(self_update))
        .route(routes::SELF_CONFIRM, post(self_confirm))
        .route(routes::SELF_ROLLBACK, post(self_rollback))
        .layer(DefaultBodyLimit::max(
            tillup_core::manifest::MAX_MANIFEST_BYTES + 64 * 1024,
        ))
        .layer(middleware::from_fn_with_state(Arc::clone(&agent), auth))
        // The host may send large JSON (a staging manifest) zstd-compressed.
        .layer(tower_http::decompression::RequestDecompressionLayer::new())
        // Each request's route, status and time at `tower_http=debug`: where
        // a stop's time goes on the terminal.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(agent)
}

async fn auth(State(agent): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    if agent.config().accepts(given) {
        // The status says what the agent speaks: it is answered to any
        // host, so that a newer one can learn it.
        if req.uri().path() != routes::STATUS
            && let Err(e) = speaks(req.headers())
        {
            return e.into_response();
        }
        // Only what moves an upgrade on holds the watchdog back: a token
        // holder polling the status cannot keep a stopped till down.
        let moves = moves_the_upgrade(req.uri().path());
        if moves {
            agent.touch();
        }
        let response = next.run(req).await;
        // A long request (a stop waiting for a sale) is contact throughout.
        if moves {
            agent.touch();
        }
        response
    } else {
        AgentError::Unauthorized.into_response()
    }
}

/// Whether the agent speaks the protocol of a request with `headers`
/// (none: protocol 1, from a host older than the header).
fn speaks(headers: &HeaderMap) -> Result<(), AgentError> {
    let Some(value) = headers.get(PROTOCOL_HEADER) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
    match text.trim().parse::<u32>() {
        Ok(p) if Protocols::THIS.speaks(p) => Ok(()),
        Ok(_) => Err(AgentError::Protocol { asked: text }),
        Err(_) => Err(AgentError::BadRequest(format!(
            "{PROTOCOL_HEADER} `{text}` is not a protocol number"
        ))),
    }
}

/// Whether a request on `path` moves an upgrade on (and so tells the
/// watchdog the host is still there): everything but the questions that
/// change nothing (status, health, which files are missing).
fn moves_the_upgrade(path: &str) -> bool {
    ![routes::STATUS, routes::HEALTH, routes::BLOBS_MISSING].contains(&path)
}

#[utoipa::path(get, path = "/v1/status", tag = "program",
    description = "The terminal, its folder and its main program.",
    responses(
        (status = 200, description = "The status.", body = AgentStatus),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn status(State(a): State<Arc<Agent>>) -> Result<Json<AgentStatus>, AgentError> {
    a.status().await.map(Json)
}

#[utoipa::path(post, path = "/v1/stop", tag = "program",
    description = "Stops the main program, waiting for a sale to finish (or the time given). Safe to repeat.",
    request_body(content = Option<StopRequest>, description = "Optional; an empty body waits as configured."),
    responses(
        (status = 200, description = "Stopped.", body = StopReport),
        (status = 400, description = "The body is not a stop request.", body = ErrorBody),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn stop(
    State(a): State<Arc<Agent>>,
    body: Bytes,
) -> Result<Json<StopReport>, AgentError> {
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

#[utoipa::path(post, path = "/v1/start", tag = "program",
    description = "Starts the main program. Safe to repeat.",
    responses(
        (status = 200, description = "Running.", body = StartReport),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn start(
    State(a): State<Arc<Agent>>,
    // Read and ignored (the host sends `{}`): an answer before the body is
    // read would close the connection.
    _body: Result<Bytes, BytesRejection>,
) -> Result<Json<StartReport>, AgentError> {
    a.start().await.map(Json)
}

#[utoipa::path(get, path = "/v1/snapshot", tag = "files",
    description = "Every file of the program folder, by hash.",
    responses(
        (status = 200, description = "The folder.", body = Snapshot),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
        (status = 409, description = "There is no program folder, or it holds what cannot be backed up (a link, a name that is not portable); the message names it.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn snapshot(State(a): State<Arc<Agent>>) -> Result<Json<Snapshot>, AgentError> {
    a.snapshot().await.map(Json)
}

#[utoipa::path(get, path = "/v1/snapshot/changes", tag = "files",
    description = "Every file of the program folder, as changes to a recent whole snapshot named by its digest.",
    params(("since" = String, Query, description = "The digest of a whole snapshot the agent served lately.")),
    responses(
        (status = 200, description = "The changes.", body = SnapshotChanges),
        (status = 400, description = "`since` is not a SHA-256 digest.", body = ErrorBody),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 409, description = "The agent no longer holds that snapshot: take a whole one. Or the folder cannot be backed up, as for a whole snapshot.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn snapshot_changes(
    State(a): State<Arc<Agent>>,
    q: Result<Query<SnapshotSince>, QueryRejection>,
) -> Result<Json<SnapshotChanges>, AgentError> {
    let q = query(
        q,
        "/v1/snapshot/changes?since=<the digest of a whole snapshot>",
    )?;
    a.snapshot_changes(q.since).await.map(Json)
}

/// A request's query, or a 400 saying how to ask (`example`).
fn query<T>(q: Result<Query<T>, QueryRejection>, example: &str) -> Result<T, AgentError> {
    q.map(|Query(q)| q)
        .map_err(|e| AgentError::BadRequest(format!("{}; ask as {example}", e.body_text())))
}

#[utoipa::path(post, path = "/v1/blobs/missing", tag = "files",
    description = "Of the files listed, those the agent holds neither in its folder nor among files received, with the bytes held of cut uploads.",
    request_body = HashList,
    responses(
        (status = 200, description = "The missing files.", body = HashList),
        (status = 400, description = "The body is not a hash list.", body = ErrorBody),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn missing(
    State(a): State<Arc<Agent>>,
    body: Result<Json<HashList>, JsonRejection>,
) -> Result<Json<HashList>, AgentError> {
    let wanted = json_body(body)?;
    let hashes = a.missing(&wanted.hashes).await?;
    let store = a.store().clone();
    let (hashes, held) = tokio::task::spawn_blocking(move || {
        let held = store.held(&hashes, "")?;
        Ok::<_, tillup_fs::Error>((hashes, held))
    })
    .await
    .map_err(AgentError::internal)??;
    Ok(Json(HashList { hashes, held }))
}

/// `POST /v1/pack`: files of the folder (or received), in one pack.
#[utoipa::path(post, path = "/v1/pack", tag = "files",
    description = "Files of the folder (or received), in one pack (`tillup_transfer::pack`).",
    request_body = PackRequest,
    responses(
        (status = 200, description = "The pack.", body = Binary, content_type = "application/x-tillup-pack"),
        (status = 400, description = "The body is not a pack request.", body = ErrorBody),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
        (status = 404, description = "A file asked for is not on the terminal.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn get_pack(
    State(a): State<Arc<Agent>>,
    body: Result<Json<PackRequest>, JsonRejection>,
) -> Result<Response, AgentError> {
    let req = json_body(body)?;
    let wanted: Vec<Sha256Hex> = req.blobs.iter().map(|e| e.sha256).collect();
    let locate = a.locator(&wanted).await?;
    let body = tillup_transfer::pack_body(
        req.blobs,
        locate,
        tillup_transfer::pack::LAN_LEVEL,
        Box::new(|_| {}),
    );
    Ok((
        [(header::CONTENT_TYPE, tillup_core::api::PACK_MEDIA_TYPE)],
        Body::from_stream(body),
    )
        .into_response())
}

/// `PUT /v1/pack`: files for the next staging, each checked on arrival;
/// those that arrived whole are kept even if the pack was cut after them.
#[utoipa::path(put, path = "/v1/pack", tag = "files",
    description = "Files for the next staging, in one pack; each is checked against its hash on arrival and kept if whole.",
    request_body(content = Binary, content_type = "application/x-tillup-pack"),
    responses(
        (status = 200, description = "The files now held whole.", body = PackReceipt),
        (status = 400, description = "Not a pack, or a pack cut short (the whole files are kept).", body = ErrorBody),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
        (status = 409, description = "A file resumes at another byte than the agent holds.", body = ErrorBody,
            headers(("x-tillup-partial" = u64, description = "The bytes the agent holds of that file."))),
        (status = 413, description = "A file is larger than the agent accepts.", body = ErrorBody),
        (status = 422, description = "A file's bytes do not hash to its name.", body = ErrorBody),
        (status = 507, description = "The terminal's disk is full.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn put_pack(
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

#[utoipa::path(post, path = "/v1/stage", tag = "upgrade",
    description = "Builds the new folder beside the current one, after checking the signed log, the release and every file.",
    request_body = StageRequest,
    responses(
        (status = 200, description = "Staged.", body = StageReport),
        (status = 400, description = "Not a stage request, or a folder that cannot be.", body = ErrorBody),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
        (status = 403, description = "Not what the chain signed, or not for this terminal.", body = ErrorBody),
        (status = 409, description = "Files are missing, or the folder is in use: the message says what to do.", body = ErrorBody),
        (status = 413, description = "The request is too large.", body = ErrorBody),
        (status = 507, description = "The terminal's disk is full.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn stage(
    State(a): State<Arc<Agent>>,
    body: Result<Json<StageRequest>, JsonRejection>,
) -> Result<Json<StageReport>, AgentError> {
    a.stage(json_body(body)?).await.map(Json)
}

#[utoipa::path(post, path = "/v1/stage/changes", tag = "upgrade",
    description = "Stages a folder given as changes to the one staged already.",
    request_body = StageChanges,
    responses(
        (status = 200, description = "Staged.", body = StageReport),
        (status = 400, description = "Not stage changes, or changes that do not apply.", body = ErrorBody),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
        (status = 403, description = "Not what the chain signed, or not for this terminal.", body = ErrorBody),
        (status = 409, description = "Nothing is staged to change, or files are missing.", body = ErrorBody),
        (status = 413, description = "The request is too large.", body = ErrorBody),
        (status = 507, description = "The terminal's disk is full.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn stage_changes(
    State(a): State<Arc<Agent>>,
    body: Result<Json<StageChanges>, JsonRejection>,
) -> Result<Json<StageReport>, AgentError> {
    a.stage_changes(json_body(body)?).await.map(Json)
}

#[utoipa::path(post, path = "/v1/commit", tag = "upgrade",
    description = "Swaps the staged folder in, with the main program stopped. Safe to repeat.",
    request_body = SwapRequest,
    responses(
        (status = 200, description = "The folder holds the version.", body = SwapReport),
        (status = 400, description = "Not a swap request.", body = ErrorBody),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
        (status = 403, description = "The staged folder is not what the chain signed.", body = ErrorBody),
        (status = 409, description = "Nothing is staged for this version, or the main program runs.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn commit(
    State(a): State<Arc<Agent>>,
    body: Result<Json<SwapRequest>, JsonRejection>,
) -> Result<Json<SwapReport>, AgentError> {
    a.commit(json_body(body)?.version).await.map(Json)
}

#[utoipa::path(post, path = "/v1/rollback", tag = "upgrade",
    description = "Puts the previous folder back. Safe to repeat.",
    request_body = SwapRequest,
    responses(
        (status = 200, description = "The folder holds the version.", body = SwapReport),
        (status = 400, description = "Not a swap request.", body = ErrorBody),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
        (status = 409, description = "No previous folder of this version is kept, or the main program runs.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn rollback(
    State(a): State<Arc<Agent>>,
    body: Result<Json<SwapRequest>, JsonRejection>,
) -> Result<Json<SwapReport>, AgentError> {
    a.rollback(json_body(body)?.version).await.map(Json)
}

#[utoipa::path(get, path = "/v1/health", tag = "program",
    description = "Whether the main program runs the version given and says it is healthy.",
    params(("version" = SemVer, Query, description = "The version it should run.")),
    responses(
        (status = 200, description = "Its health.", body = HealthReport),
        (status = 400, description = "No or no valid version asked for.", body = ErrorBody),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn health(
    State(a): State<Arc<Agent>>,
    q: Result<Query<HealthQuery>, QueryRejection>,
) -> Result<Json<HealthReport>, AgentError> {
    let q = query(q, "/v1/health?version=1.2.3")?;
    a.health(&q.version).await.map(Json)
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

    /// The host's token in the test agents' config.
    const TOKEN: &str = "s3cret-s3cret-s3cret";

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
            "terminal = 3\nmodel = \"CP-500\"\ntoken = \"{TOKEN}\"\ntrust_key = \"RWTkrcTyYrt1qYLHJb5GMRdYFzoIIVJ7cmjyUZYxORPNpjmgV8IL94QQ\"\nlisten = \"127.0.0.1:0\"\nfolder = {:?}\n{extra}\n[main]\ncommand = [\"sleep\", \"60\"]\nhealth_command = [\"true\"]\nautostart = false\n",
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
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
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
        for token in [None, Some("wrong"), Some("s3cret-s3cret-s3cret ")] {
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
        let (status, _, body) =
            call(app, "GET", routes::STATUS, Some(TOKEN), &[], Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
        let s: AgentStatus = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (s.terminal, s.version.unwrap().to_string()),
            (3, "1.0.0".to_owned())
        );
    }

    /// A pack of whole blobs.
    fn pack(blobs: &[&[u8]]) -> Body {
        let whole: Vec<(&[u8], u64)> = blobs.iter().map(|b| (*b, 0)).collect();
        Body::from(tillup_transfer::pack::in_memory(&whole, 1))
    }

    /// Regression: an upload once took a body of any size.
    #[tokio::test]
    async fn a_blob_larger_than_max_blob_bytes_is_refused_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent_with(dir.path(), "max_blob_bytes = 10");
        let app = app(Arc::clone(&agent));
        let (fits, big) = (b"0123456789".to_vec(), b"0123456789A".to_vec());
        let (status, _, _) = call(
            app.clone(),
            "PUT",
            routes::PACK,
            Some(TOKEN),
            &[],
            pack(&[&fits]),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, body) =
            call(app, "PUT", routes::PACK, Some(TOKEN), &[], pack(&[&big])).await;
        assert_eq!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let err: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert!(err.error.contains("max_blob_bytes"), "{}", err.error);
        assert!(!agent.store().has(&Sha256Hex::of(&big)));
        let blobs = dir.path().join("cupos.tillup-agent/blobs");
        assert_eq!(
            walk(&blobs),
            vec![agent.store().path(&Sha256Hex::of(&fits))]
        );
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
    async fn a_cut_push_resumes_at_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let agent = agent(dir.path());
        let app = app(Arc::clone(&agent));
        let mut x = 7u64;
        let file: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let h = Sha256Hex::of(&file);
        let whole = tillup_transfer::pack::in_memory(&[(&file, 0)], 1);
        let (status, _, _) = call(
            app.clone(),
            "PUT",
            routes::PACK,
            Some(TOKEN),
            &[],
            cut_body(&whole[..whole.len() / 2]),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (_, _, body) = call(
            app.clone(),
            "POST",
            routes::BLOBS_MISSING,
            Some(TOKEN),
            &[("content-type", "application/json")],
            Body::from(serde_json::to_vec(&HashList::new(vec![h])).unwrap()),
        )
        .await;
        let missing: HashList = serde_json::from_slice(&body).unwrap();
        let held = missing.held[&h];
        assert!(held > 0 && held < 300_000, "{held}");
        let rest = tillup_transfer::pack::in_memory(&[(&file, held)], 1);
        let (status, _, body) =
            call(app, "PUT", routes::PACK, Some(TOKEN), &[], Body::from(rest)).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let receipt: PackReceipt = serde_json::from_slice(&body).unwrap();
        assert_eq!(receipt.bytes, 300_000 - held, "only the rest crossed");
        assert_eq!(agent.store().read(&h).unwrap(), file);
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
}

#[utoipa::path(post, path = "/v1/self-update", tag = "self-update",
    description = "Replaces the agent's own executable with the one of a signed release of tillup (its manifest and file sent first, as a pack), probes it, and restarts on it, on trial; the main program keeps running. Refused while a POS upgrade is in progress.",
    request_body = SelfUpdateRequest,
    responses(
        (status = 200, description = "Restarting on the release, or running it already.", body = SelfUpdateReport),
        (status = 400, description = "Not a self-update request, or its files were not sent.", body = ErrorBody),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 403, description = "The release is not what the chain signed for this platform, or would go backwards.", body = ErrorBody),
        (status = 409, description = "A POS upgrade or another self-update is in progress.", body = ErrorBody),
        (status = 422, description = "The new executable failed its self-check; the old one was put back.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn self_update(
    State(a): State<Arc<Agent>>,
    body: Result<Json<SelfUpdateRequest>, JsonRejection>,
) -> Result<Json<SelfUpdateReport>, AgentError> {
    a.self_update(json_body(body)?).await.map(Json)
}

#[utoipa::path(post, path = "/v1/self-update/confirm", tag = "self-update",
    description = "Keeps the release of tillup-agent on trial. Safe to repeat.",
    request_body = SelfUpdateRequest,
    responses(
        (status = 200, description = "Kept.", body = SelfUpdateReport),
        (status = 400, description = "Not a self-update request.", body = ErrorBody),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 409, description = "The agent does not run that release.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn self_confirm(
    State(a): State<Arc<Agent>>,
    body: Result<Json<SelfUpdateRequest>, JsonRejection>,
) -> Result<Json<SelfUpdateReport>, AgentError> {
    a.self_confirm(json_body(body)?).await.map(Json)
}

#[utoipa::path(post, path = "/v1/self-update/rollback", tag = "self-update",
    description = "Puts back the executable the release on trial replaced and restarts on it. Safe to repeat.",
    request_body = SelfUpdateRequest,
    responses(
        (status = 200, description = "Restarting on the previous release, or not running this one.", body = SelfUpdateReport),
        (status = 400, description = "Not a self-update request.", body = ErrorBody),
        (status = 401, description = "No token, or not the agent's.", body = ErrorBody),
        (status = 409, description = "The release is confirmed already.", body = ErrorBody),
        (status = 426, description = "The request speaks a host–agent protocol (`x-tillup-protocol`) this agent does not.", body = ErrorBody),
    ),
    security(("agent_token" = [])))]
pub(crate) async fn self_rollback(
    State(a): State<Arc<Agent>>,
    body: Result<Json<SelfUpdateRequest>, JsonRejection>,
) -> Result<Json<SelfUpdateReport>, AgentError> {
    a.self_rollback(json_body(body)?).await.map(Json)
}
