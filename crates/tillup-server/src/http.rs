//! The HTTP API (DESIGN §5): the signed log, blobs, backups, processing and
//! reports, each behind a store token.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;
use tillup_core::keys::KeyChain;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use jiff::Timestamp;
use semver::Version;
use tillup_core::Sha256Hex;
use tillup_core::api::{
    self, Backup, BackupChanges, Delivery, DeliveryDigests, ErrorBody, HashList, PackReceipt,
    PackRequest, ProcessAnswer, ProcessRequest, TerminalBackup, TerminalDigest, TerminalResult,
};
use tillup_core::log::{Release, VersionLog};
use tillup_core::manifest::{Manifest, ManifestChanges};
use tillup_core::openapi::{Binary, Id};
use tillup_fs::BlobStore;
use tower::ServiceExt;
use tower_http::compression::Predicate as _;
use tower_http::services::ServeFile;

use crate::access::{Access, ReadyLog, StoreEntry};
use crate::backups::{FolderKey, Parsed};
use crate::data::DataDir;
use crate::db::{Db, Location};
use crate::error::{Error, check_id};
use crate::ops::token_digest;
use crate::packs::PackCache;
use crate::storage::{BlobsLocation, Document, Storage, StoredDocument};

/// Bounds on what a request may carry.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest blob a `PUT` accepts, in bytes.
    pub max_blob: u64,
    /// The largest backup JSON, in bytes.
    pub max_backup: usize,
    /// The most hashes a `blobs/missing` request may list.
    pub max_hashes: usize,
    /// The largest report, in bytes.
    pub max_report: usize,
    /// The bytes of files one store may upload in all (its terminals' own
    /// files and what they hold that no release has).
    pub store_quota: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_blob: 8 << 30,
            max_backup: 64 << 20,
            max_hashes: 200_000,
            max_report: 1 << 20,
            store_quota: 4 << 30,
        }
    }
}

/// Bytes of a request body that lists at most `max_hashes` hashes.
fn hash_list_bytes(max_hashes: usize) -> usize {
    max_hashes * 80 + 4096
}

struct Inner {
    db: Arc<dyn Db>,
    storage: Storage,
    packs: PackCache,
    limits: Limits,
    access: Access,
    manifests: crate::catalog::Manifests,
    backups: crate::backups::Backups,
    /// The key that signs logs, when the server holds one (`serve --key`):
    /// publishing from the dashboard or the admin API needs it.
    key: std::sync::OnceLock<crate::data::KeySource>,
    /// Wakes the rollout job (a store reported).
    rollouts: tokio::sync::Notify,
}

/// What every handler shares: the data folder, the database, the blobs.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// Wraps opened parts.
    pub fn new(db: Box<dyn Db>, storage: Storage, packs: PackCache, limits: Limits) -> Self {
        Self(Arc::new(Inner {
            db: Arc::from(db),
            storage,
            packs,
            limits,
            access: Access::default(),
            manifests: Default::default(),
            backups: Default::default(),
            key: std::sync::OnceLock::new(),
            rollouts: tokio::sync::Notify::new(),
        }))
    }

    /// Gives the server the key that signs logs (once; later calls are ignored).
    pub fn set_signing_key(&self, key: crate::data::KeySource) {
        let _ = self.0.key.set(key);
    }

    /// The key that signs logs, if the server holds one.
    pub fn signing_key(&self) -> Option<&crate::data::KeySource> {
        self.0.key.get()
    }

    /// Asks the rollout job to look at the running rollouts now.
    pub fn nudge_rollouts(&self) {
        self.0.rollouts.notify_one();
    }

    /// Waits for [`AppState::nudge_rollouts`].
    pub async fn rollouts_nudged(&self) {
        self.0.rollouts.notified().await;
    }

    /// The bounds on what a request may carry.
    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }

    /// Opens the database at `db` and the files at `blobs` (S3 needs the
    /// runtime the server will run on to be entered).
    pub fn open(
        data: &DataDir,
        db: &Location,
        blobs: &BlobsLocation,
        limits: Limits,
    ) -> Result<Self, Error> {
        let db = db.open()?;
        let storage = Storage::open(data, blobs)?;
        storage.local().clean_tmp()?;
        let packs = PackCache::open(
            data.packs(),
            crate::packs::MIN_CACHED_BYTES,
            crate::packs::MAX_CACHED_BYTES,
        )?;
        Ok(Self::new(db, storage, packs, limits))
    }

    /// The database.
    pub fn db(&self) -> &dyn Db {
        &*self.0.db
    }

    /// What requests need in memory.
    pub fn access(&self) -> &Access {
        &self.0.access
    }

    /// Writes the stores' last-check times noted since the last flush.
    pub async fn flush_checks(&self) -> Result<usize, AppError> {
        self.blocking(|st| st.access().flush(st.db())).await
    }

    /// This server's blob store (see [`Storage::local`]).
    pub fn blobs(&self) -> &BlobStore {
        self.0.storage.local()
    }

    /// The server's files.
    pub fn storage(&self) -> &Storage {
        &self.0.storage
    }

    /// Runs blocking work (SQLite, disk) off the async threads.
    pub async fn blocking<T, E>(
        &self,
        f: impl FnOnce(&AppState) -> Result<T, E> + Send + 'static,
    ) -> Result<T, AppError>
    where
        T: Send + 'static,
        E: Into<AppError> + Send + 'static,
    {
        let st = self.clone();
        match tokio::task::spawn_blocking(move || f(&st)).await {
            Ok(r) => r.map_err(Into::into),
            Err(e) => Err(AppError::Internal(format!("blocking task failed: {e}"))),
        }
    }

    /// Of `hashes`, those the store cannot read: not referenced by a
    /// release or by the store, or absent from the blob store.
    fn missing_for(&self, store: &str, hashes: &[Sha256Hex]) -> Result<Vec<Sha256Hex>, Error> {
        let unreadable: BTreeSet<Sha256Hex> =
            self.0.db.unreadable(store, hashes)?.into_iter().collect();
        let mut seen = BTreeSet::new();
        Ok(hashes
            .iter()
            .filter(|h| seen.insert(**h) && (unreadable.contains(h) || !self.0.storage.holds(h)))
            .copied()
            .collect())
    }
}

/// An HTTP error: a status and an [`ErrorBody`]. Internal errors are
/// logged and answered with a generic message.
#[derive(Debug)]
pub enum AppError {
    /// 400.
    BadRequest(String),
    /// 401.
    Unauthorized(String),
    /// 403.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 409.
    Conflict(String),
    /// 413.
    TooLarge(String),
    /// 422: the bytes arrived but are not what the request named.
    Unprocessable(String),
    /// 409 with [`api::PARTIAL_HEADER`]: an upload resumed at another
    /// byte than the `held` ones.
    WrongOffset {
        /// The bytes the server holds.
        held: u64,
        /// What to send.
        message: String,
    },
    /// 500; the text is logged, not sent.
    Internal(String),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        match e {
            Error::BadId { .. } | Error::TooManyLabels { .. } => {
                AppError::BadRequest(e.to_string())
            }
            Error::NothingPublished(_) | Error::UnknownStore(_) | Error::NotInLog { .. } => {
                AppError::NotFound(e.to_string())
            }
            Error::Fs(e) => AppError::from(e),
            Error::UnknownPerson(_) | Error::UnknownRelease { .. } | Error::UnknownRollout(_) => {
                AppError::NotFound(e.to_string())
            }
            Error::PersonExists(_) => AppError::Conflict(e.to_string()),
            Error::WeakPassword(_) => AppError::BadRequest(e.to_string()),
            // A release sent to the admin API that cannot be published: its
            // own faults, said without the server's paths.
            Error::VersionExists { .. } | Error::Rollout(_) => AppError::Conflict(e.to_string()),
            Error::BadPreserve(_) | Error::MinFromNotOlder { .. } => {
                AppError::Unprocessable(e.to_string())
            }
            Error::Archive { reason, .. } => {
                AppError::Unprocessable(format!("the release archive: {reason}"))
            }
            Error::CaseCollision { collision, .. } => AppError::Unprocessable(format!(
                "the release: {collision}; terminals may run Windows, so rename one of them"
            )),
            Error::EmptyFolder(_) => {
                AppError::Unprocessable("the release archive holds no file".into())
            }
            Error::NotTillup {
                file,
                expected,
                channel,
                ..
            } => AppError::Unprocessable(format!(
                "`{file}` is not one of tillup's programs ({expected}); the channel `{channel}` is for tillup's own releases"
            )),
            Error::SignInRefused => AppError::Unauthorized(e.to_string()),
            // What the command line reports to IT, or the server's own
            // failure: on a request, nothing the client can act on.
            Error::Db(_)
            | Error::Postgres(_)
            | Error::DatabaseUrl { .. }
            | Error::DatabaseUnavailable { .. }
            | Error::BlobsUrl { .. }
            | Error::ObjectStore { .. }
            | Error::Io { .. }
            | Error::Pack { .. }
            | Error::Key { .. }
            | Error::KeyFile { .. }
            | Error::KeysExist(_)
            | Error::NotAFolderOrZip(_)
            | Error::StoreExists(_)
            | Error::KeyListNotNewer { .. }
            | Error::BadKeyList { .. }
            | Error::NoChannel(_)
            | Error::Corrupt(_) => AppError::Internal(e.to_string()),
        }
    }
}

impl From<tillup_fs::Error> for AppError {
    fn from(e: tillup_fs::Error) -> Self {
        AppError::Internal(e.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, error) = match self {
            AppError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            AppError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            AppError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            AppError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            AppError::Conflict(m) => (StatusCode::CONFLICT, m),
            AppError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            AppError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            AppError::WrongOffset { held, message } => {
                let mut resp =
                    (StatusCode::CONFLICT, Json(ErrorBody { error: message })).into_response();
                resp.headers_mut()
                    .insert(api::PARTIAL_HEADER, HeaderValue::from(held));
                return resp;
            }
            AppError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal server error; the details are in the server's log".to_owned(),
                )
            }
        };
        let mut resp = (status, Json(ErrorBody { error })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The store a request's token belongs to, with the channels it reads
/// and the access snapshot the token was checked against.
#[derive(Clone, Debug)]
pub struct StoreId {
    entry: Arc<StoreEntry>,
    snapshot: Arc<crate::access::Snapshot>,
}

impl StoreId {
    fn id(&self) -> &str {
        &self.entry.store
    }
}

/// The router. Every route but `/healthz` and the API's description needs
/// a store token.
pub fn app(state: AppState) -> Router {
    use tillup_core::api::server as r;
    let authed = Router::new()
        .route(r::LOG, get(get_log))
        .route(r::LOG_SIGNATURE, get(get_log_signature))
        .route(r::KEYS, get(get_keys))
        .route(r::BLOB, get(get_blob))
        .route(r::BLOBS_MISSING, post(blobs_missing))
        .route(r::PACK, post(get_pack).put(put_pack))
        .route(r::BACKUP, put(put_backup).patch(patch_backup))
        .route(r::PROCESS, post(process))
        .route(r::REPORT, post(report))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            crate::openapi::ROUTE,
            get(|| async { Json(crate::openapi::description()) }),
        )
        .merge(authed)
        .merge(crate::admin::routes())
        .merge(crate::dashboard::routes())
        // JSON both ways may be zstd-compressed (a store's backup and its
        // delivery are eight near-identical manifests); packs are
        // compressed already, and single blobs are sent as they are.
        .layer(
            tower_http::compression::CompressionLayer::new().compress_when(
                tower_http::compression::DefaultPredicate::new()
                    .and(
                        tower_http::compression::predicate::NotForContentType::const_new(
                            api::PACK_MEDIA_TYPE,
                        ),
                    )
                    // Single blobs are served as they are (Range, a CDN).
                    .and(
                        tower_http::compression::predicate::NotForContentType::const_new(
                            "application/octet-stream",
                        ),
                    ),
            ),
        )
        .layer(tower_http::decompression::RequestDecompressionLayer::new())
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn auth(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, AppError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(AppError::Unauthorized(
            "missing `Authorization: Bearer <store token>` header".into(),
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            AppError::Unauthorized("the Authorization header must be `Bearer <store token>`".into())
        })?;
    let snapshot = st.access().current(&st.0.db).await?;
    let entry = snapshot.store(&token_digest(token)).ok_or_else(|| {
        AppError::Unauthorized("the store token is not valid: check the token in the listener's config (it may have been replaced)".into())
    })?;
    req.extensions_mut().insert(StoreId { entry, snapshot });
    Ok(next.run(req).await)
}

fn own_store(auth: &StoreId, path_store: &str) -> Result<(), AppError> {
    if auth.id() == path_store {
        Ok(())
    } else {
        Err(AppError::Forbidden(format!(
            "this token belongs to store `{}`, not to store `{path_store}`",
            auth.id()
        )))
    }
}

fn bad_id(what: &'static str, value: &str) -> Result<(), AppError> {
    check_id(what, value).map_err(|e| AppError::BadRequest(e.to_string()))
}

fn parse_hash(s: &str) -> Result<Sha256Hex, AppError> {
    s.parse()
        .map_err(|e: tillup_core::hash::BadDigest| AppError::BadRequest(e.to_string()))
}

async fn read_body(body: Body, limit: usize, what: &str) -> Result<Bytes, AppError> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(AppError::TooLarge(
            format!("the {what} is larger than the {limit} bytes allowed"),
        )),
        Err(e) => Err(AppError::BadRequest(format!(
            "the {what} could not be read: {e}"
        ))),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, AppError> {
    serde_json::from_slice(bytes)
        .map_err(|e| AppError::BadRequest(format!("the body is not a valid {what}: {e}")))
}

fn etag_matches(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let etag = etag.as_bytes();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == etag
        })
}

/// The newest log of `channel`, if `store` may read it.
async fn latest_log(
    st: &AppState,
    store: &StoreId,
    channel: String,
) -> Result<Arc<ReadyLog>, AppError> {
    bad_id("channel", &channel)?;
    // tillup's own releases are for every store.
    if channel != tillup_core::selfupdate::SELF_CHANNEL
        && store.entry.channels.binary_search(&channel).is_err()
    {
        return Err(AppError::Forbidden(format!(
            "store `{}` is not assigned channel `{channel}`; the chain's IT assigns it with `tillup-server store channels {} …`",
            store.id(),
            store.id()
        )));
    }
    let log = st.access().log(&st.0.db, &store.snapshot, &channel).await?;
    log.ok_or_else(|| {
        AppError::NotFound(format!("nothing is published on channel `{channel}` yet; ask the chain's IT to publish a release"))
    })
}

#[utoipa::path(get, path = "/v1/log/{channel}", tag = "log",
    description = "The channel's signed version log. Answers 304 to an `If-None-Match` naming its ETag.",
    params(
        ("channel" = Id, Path, description = "The channel, such as `stable`."),
        ("If-None-Match" = Option<String>, Header, description = "The ETag of the log the store holds."),
    ),
    responses(
        (status = 200, description = "The log (the signed bytes) and its signature.", body = VersionLog,
            headers(
                ("etag" = String, description = "The log's ETag."),
                ("x-tillup-signature" = String, description = "The base64 of the log's `.minisig` text."),
            )),
        (status = 304, description = "The store holds this log already.",
            headers(("etag" = String, description = "The log's ETag."))),
        (status = 400, description = "The channel is not a valid id.", body = ErrorBody),
        (status = 401, description = "No store token, or one the server does not know (revoked or rotated).", body = ErrorBody),
        (status = 403, description = "The store is not assigned this channel.", body = ErrorBody),
        (status = 404, description = "Nothing is published on this channel yet.", body = ErrorBody),
    ),
    security(("store_token" = [])))]
pub(crate) async fn get_log(
    State(st): State<AppState>,
    Extension(store): Extension<StoreId>,
    Path(channel): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let ready = latest_log(&st, &store, channel).await?;
    st.access().note_check(store.id(), Timestamp::now());
    if etag_matches(&headers, &ready.etag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, ready.etag.clone())],
        )
            .into_response());
    }
    let mut resp = Response::new(Body::from(ready.body.clone()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::ETAG, ready.etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(api::SIGNATURE_HEADER, ready.signature_header.clone());
    Ok(resp)
}

#[utoipa::path(get, path = "/v1/keys", tag = "log",
    description = "The key lists, signed by the root, that say which keys sign logs.",
    responses(
        (status = 200, description = "The key chain, oldest list first.", body = KeyChain),
        (status = 401, description = "No store token, or one the server does not know (revoked or rotated).", body = ErrorBody),
    ),
    security(("store_token" = [])))]
pub(crate) async fn get_keys(State(st): State<AppState>) -> Result<Json<KeyChain>, AppError> {
    Ok(Json(st.blocking(|st| st.db().key_chain()).await?))
}

#[utoipa::path(get, path = "/v1/log/{channel}/minisig", tag = "log",
    description = "The log's detached signature, for `minisign -V`.",
    params(("channel" = Id, Path, description = "The channel, such as `stable`.")),
    responses(
        (status = 200, description = "The `.minisig` text.", body = String, content_type = "text/plain"),
        (status = 400, description = "The channel is not a valid id.", body = ErrorBody),
        (status = 401, description = "No store token, or one the server does not know (revoked or rotated).", body = ErrorBody),
        (status = 403, description = "The store is not assigned this channel.", body = ErrorBody),
        (status = 404, description = "Nothing is published on this channel yet.", body = ErrorBody),
    ),
    security(("store_token" = [])))]
pub(crate) async fn get_log_signature(
    State(st): State<AppState>,
    Extension(store): Extension<StoreId>,
    Path(channel): Path<String>,
) -> Result<Response, AppError> {
    let ready = latest_log(&st, &store, channel).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        ready.log.signature.clone(),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/blobs/{sha256}", tag = "files",
    description = "One file as it is, named by its content: a release's or the store's own.",
    params(
        ("sha256" = Sha256Hex, Path, description = "The file's SHA-256."),
        ("Range" = Option<String>, Header, description = "Bytes to resume from (`bytes=N-`)."),
    ),
    responses(
        (status = 200, description = "The file.", body = Binary, content_type = "application/octet-stream"),
        (status = 206, description = "The range asked for.", body = Binary, content_type = "application/octet-stream"),
        (status = 416, description = "The range is outside the file."),
        (status = 400, description = "Not a SHA-256 digest.", body = ErrorBody),
        (status = 401, description = "No store token, or one the server does not know (revoked or rotated).", body = ErrorBody),
        (status = 404, description = "No such file readable by this store.", body = ErrorBody),
    ),
    security(("store_token" = [])))]
pub(crate) async fn get_blob(
    State(st): State<AppState>,
    Extension(store): Extension<StoreId>,
    Path(hash): Path<String>,
    req: Request,
) -> Result<Response, AppError> {
    let h = parse_hash(&hash)?;
    tillup_fs::fault::crash_point("server.deliver");
    let missing = st
        .blocking(move |st| {
            let missing = st.missing_for(store.id(), &[h])?;
            if missing.is_empty() {
                st.storage().fetch(&[h])?;
            }
            Ok::<_, Error>(missing)
        })
        .await?;
    if !missing.is_empty() {
        return Err(AppError::NotFound(format!(
            "blob {h} is not available to this store"
        )));
    }
    let path = st.blobs().path(&h);
    let mut resp = match ServeFile::new(path).oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(never) => match never {},
    };
    if resp.status().is_success() {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static(BLOB_CACHE));
    }
    Ok(resp)
}

/// A blob is named by its content, so it never changes: a client or a
/// private cache may keep it for good. Not `public`: each store's token
/// decides which blobs it may read.
const BLOB_CACHE: &str = "private, max-age=31536000, immutable";

#[utoipa::path(post, path = "/v1/blobs/missing", tag = "files",
    description = "Of the files listed, those the store cannot read yet, with the bytes held of cut uploads.",
    request_body = HashList,
    responses(
        (status = 200, description = "The missing files.", body = HashList),
        (status = 400, description = "The body is not a hash list.", body = ErrorBody),
        (status = 401, description = "No store token, or one the server does not know (revoked or rotated).", body = ErrorBody),
        (status = 413, description = "Too many hashes in one request.", body = ErrorBody),
    ),
    security(("store_token" = [])))]
pub(crate) async fn blobs_missing(
    State(st): State<AppState>,
    Extension(store): Extension<StoreId>,
    body: Body,
) -> Result<Json<HashList>, AppError> {
    let max = st.0.limits.max_hashes;
    let bytes = read_body(body, hash_list_bytes(max), "hash list").await?;
    let list: HashList = parse_json(&bytes, "hash list (`{\"hashes\": [\"<sha256>\", …]}`)")?;
    if list.hashes.len() > max {
        return Err(AppError::TooLarge(format!(
            "{} hashes listed, at most {max} per request: split the list",
            list.hashes.len()
        )));
    }
    let (hashes, held) = st
        .blocking(move |st| -> Result<_, AppError> {
            let hashes = st.missing_for(store.id(), &list.hashes)?;
            let held = st.blobs().held(&hashes, store.id())?;
            Ok((hashes, held))
        })
        .await?;
    Ok(Json(HashList { hashes, held }))
}

/// `POST /v1/pack`: the blobs asked for, in one compressed pack. Every one
/// must be readable by the store (a release's file or its own upload).
#[utoipa::path(post, path = "/v1/pack", tag = "files",
    description = "The files asked for, in one compressed pack (`tillup_transfer::pack`).",
    request_body = PackRequest,
    responses(
        (status = 200, description = "The pack.", body = Binary, content_type = "application/x-tillup-pack"),
        (status = 400, description = "The body is not a pack request.", body = ErrorBody),
        (status = 401, description = "No store token, or one the server does not know (revoked or rotated).", body = ErrorBody),
        (status = 404, description = "A file asked for is not readable by this store.", body = ErrorBody),
        (status = 413, description = "Too many files in one request.", body = ErrorBody),
    ),
    security(("store_token" = [])))]
pub(crate) async fn get_pack(
    State(st): State<AppState>,
    Extension(store): Extension<StoreId>,
    body: Body,
) -> Result<Response, AppError> {
    let max = st.0.limits.max_hashes;
    let bytes = read_body(body, hash_list_bytes(max), "pack request").await?;
    let req: api::PackRequest = parse_json(
        &bytes,
        "pack request (`{\"blobs\": [{\"sha256\": …, \"from\": 0}, …]}`)",
    )?;
    if req.blobs.len() > max {
        return Err(AppError::TooLarge(format!(
            "{} blobs asked for, at most {max} per pack: split the request",
            req.blobs.len()
        )));
    }
    tillup_fs::fault::crash_point("server.deliver");
    let entries = req.blobs.clone();
    let cached = st
        .blocking(move |st| {
            let hashes: Vec<Sha256Hex> = entries.iter().map(|e| e.sha256).collect();
            let missing = st.missing_for(store.id(), &hashes)?;
            if !missing.is_empty() {
                return Err(AppError::NotFound(format!(
                    "not available to this store: {}",
                    list_some(&missing)
                )));
            }
            st.storage().fetch(&hashes)?;
            // Most stores ask for the same files: send the pack made for
            // another if there is one.
            let blobs = st.blobs();
            Ok(st
                .0
                .packs
                .get_or_make(&entries, tillup_transfer::pack::WAN_LEVEL, &|h| {
                    Some(blobs.path(h))
                })?)
        })
        .await?;
    let body = match cached {
        Some(file) => Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            tokio::fs::File::from_std(file),
            tillup_transfer::pack::SOURCE_CHUNK,
        )),
        None => {
            let blobs = st.blobs().clone();
            Body::from_stream(tillup_transfer::pack_body(
                req.blobs,
                Box::new(move |h| Some(blobs.path(h))),
                tillup_transfer::pack::WAN_LEVEL,
                Box::new(|_| {}),
            ))
        }
    };
    Ok(([(header::CONTENT_TYPE, api::PACK_MEDIA_TYPE)], body).into_response())
}

/// `PUT /v1/pack`: a pack of the store's own files (its terminals'
/// backups). Each blob is checked on arrival; those that arrived whole are
/// the store's to read, even if the pack was cut after them.
#[utoipa::path(put, path = "/v1/pack", tag = "files",
    description = "The store's own files, in one pack; each is checked against its hash on arrival and kept if whole.",
    request_body(content = Binary, content_type = "application/x-tillup-pack"),
    responses(
        (status = 200, description = "The files now held whole.", body = PackReceipt),
        (status = 400, description = "Not a pack, or a pack cut short (the whole files are kept).", body = ErrorBody),
        (status = 401, description = "No store token, or one the server does not know (revoked or rotated).", body = ErrorBody),
        (status = 409, description = "A file resumes at another byte than the server holds.", body = ErrorBody,
            headers(("x-tillup-partial" = u64, description = "The bytes the server holds of that file."))),
        (status = 413, description = "A file is too large, or the store's quota is used up.", body = ErrorBody),
        (status = 422, description = "A file's bytes do not hash to its name.", body = ErrorBody),
    ),
    security(("store_token" = [])))]
pub(crate) async fn put_pack(
    State(st): State<AppState>,
    Extension(store): Extension<StoreId>,
    body: Body,
) -> Result<Json<api::PackReceipt>, AppError> {
    let (max_blob, max_blobs) = (st.0.limits.max_blob, st.0.limits.max_hashes);
    let quota = st.0.limits.store_quota;
    let id = store.id().to_owned();
    let mut used = st.blocking(move |st| st.db().uploaded_bytes(&id)).await?;
    let mut count = 0usize;
    let who = store.id().to_owned();
    let admit: tillup_transfer::Admit = Box::new(move |_, total| {
        count += 1;
        if count > max_blobs {
            return Err(format!("a pack holds at most {max_blobs} files"));
        }
        if total > max_blob {
            return Err(format!("larger than the {max_blob} bytes allowed"));
        }
        if used.saturating_add(total) > quota {
            return Err(format!(
                "store `{who}` has uploaded {used} bytes and may upload {quota} in all; ask the chain's IT (tillup-server serve --store-quota-bytes)"
            ));
        }
        used += total;
        Ok(())
    });
    let received = tillup_transfer::receive_pack(
        body.into_data_stream(),
        st.blobs().clone(),
        store.id().to_owned(),
        admit,
        Box::new(|_| {}),
    )
    .await;
    let (whole, bytes) = (received.unpacked.blobs.clone(), received.unpacked.bytes);
    let owner = store.id().to_owned();
    st.blocking(move |st| {
        // Shared before recorded: a recorded blob is readable from every server.
        st.storage().share(&whole)?;
        st.db().add_store_blobs(&owner, &whole)?;
        st.db().add_uploaded_bytes(&owner, bytes)
    })
    .await?;
    match received.result {
        Ok(()) => Ok(Json(api::PackReceipt {
            received: received.unpacked.blobs,
            bytes: received.unpacked.bytes,
        })),
        Err(e) => Err(pack_refusal(e)),
    }
}

/// The answer to a pack that did not arrive whole.
fn pack_refusal(e: tillup_transfer::PackError) -> AppError {
    use tillup_transfer::PackError as P;
    match e {
        P::NotAPack => AppError::BadRequest(e.to_string()),
        P::Refused { .. } => AppError::TooLarge(e.to_string()),
        P::Blob(tillup_fs::Error::HashMismatch { expected, actual, .. }) => {
            AppError::Unprocessable(format!(
                "file {expected}: the bytes received hash to {actual}; it was not kept, send it again"
            ))
        }
        P::Blob(tillup_fs::Error::WrongOffset { held, offset, .. }) => AppError::WrongOffset {
            held,
            message: format!(
                "a file of the pack resumes at byte {offset}, but the server holds {held} bytes of it: ask blobs/missing where to resume"
            ),
        },
        P::Blob(tillup_fs::Error::SizeMismatch { .. }) => AppError::Unprocessable(
            "a file of the pack resumes past its own end; ask blobs/missing where to resume".into(),
        ),
        P::Cut { .. } | P::Blob(tillup_fs::Error::TransferCut { .. }) => AppError::BadRequest(
            "the pack was cut; the files that arrived whole are kept: ask blobs/missing for the rest"
                .into(),
        ),
        other => AppError::Internal(other.to_string()),
    }
}

fn list_some(hashes: &[Sha256Hex]) -> String {
    let shown: Vec<String> = hashes.iter().take(20).map(Sha256Hex::to_string).collect();
    let more = if hashes.len() > 20 {
        format!(" and {} more", hashes.len() - 20)
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

#[utoipa::path(put, path = "/v1/stores/{store}/upgrades/{upgrade}/backup", tag = "upgrades",
    description = "The store's backup for an upgrade: every terminal's folder. Its files must have been sent first.",
    params(
        ("store" = Id, Path, description = "The store (the token's)."),
        ("upgrade" = Id, Path, description = "The upgrade, named by the store."),
    ),
    request_body = Backup,
    responses(
        (status = 204, description = "Kept."),
        (status = 400, description = "Not a backup, or an invalid id.", body = ErrorBody),
        (status = 401, description = "No store token, or one the server does not know (revoked or rotated).", body = ErrorBody),
        (status = 403, description = "The token belongs to another store.", body = ErrorBody),
        (status = 409, description = "Files of the backup are not on the server yet.", body = ErrorBody),
        (status = 413, description = "The backup is too large.", body = ErrorBody),
    ),
    security(("store_token" = [])))]
pub(crate) async fn put_backup(
    State(st): State<AppState>,
    Extension(auth): Extension<StoreId>,
    Path((store, upgrade)): Path<(String, String)>,
    body: Body,
) -> Result<StatusCode, AppError> {
    own_store(&auth, &store)?;
    bad_id("upgrade", &upgrade)?;
    let bytes = read_body(body, st.0.limits.max_backup, "backup").await?;
    let backup: Backup = parse_json(&bytes, "backup")?;
    let mut numbers = BTreeSet::new();
    for t in &backup.terminals {
        if !numbers.insert(t.number) {
            return Err(AppError::BadRequest(format!(
                "the backup lists terminal {} twice",
                t.number
            )));
        }
    }
    st.blocking(move |st| {
        // The terminals of a store hold mostly the same files: ask once each.
        let hashes: Vec<Sha256Hex> = backup
            .terminals
            .iter()
            .flat_map(|t| t.manifest.hashes())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        none_missing(st, &store, &hashes)?;
        // The bytes as they came: they parsed as this backup, and writing
        // them again would cost as much as reading them. Its digest, which
        // the changes after the stop name, is worked out now, before it.
        let key = Sha256Hex::of(&bytes);
        // Changes to the backup this one replaces no longer count: gone
        // before it is, so they never apply to it.
        st.storage().remove_document(&Document::BackupChanges {
            store: store.clone(),
            upgrade: upgrade.clone(),
        })?;
        keep_backup(st, &store, &upgrade, bytes.to_vec())?;
        st.0.backups.keep(key, Arc::new(Parsed::new(backup)));
        Ok::<_, AppError>(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The backup of an upgrade: the one uploaded whole, with its changes
/// after the stop if they came; a 404 saying `what_to_do` when there is
/// none. A changed backup kept parsed is found by its changes alone (a
/// few files), without reading the whole one again: changes are removed
/// before a whole backup replaces theirs, so they name the one they
/// apply to.
fn stored_backup(
    st: &AppState,
    store: &str,
    upgrade: &str,
    what_to_do: &str,
) -> Result<Arc<Parsed>, AppError> {
    let changes_doc = Document::BackupChanges {
        store: store.to_owned(),
        upgrade: upgrade.to_owned(),
    };
    let changes = st.storage().get_document(&changes_doc)?;
    let doc = Document::Backup {
        store: store.to_owned(),
        upgrade: upgrade.to_owned(),
    };
    let whole = || {
        // A backup kept as read from the document stored now is not read
        // again: with the tills stopped, a look replaces reading and
        // hashing every manifest.
        if let Some(version) = st.storage().document_version(&doc)?
            && let Some(kept) = st.0.backups.stored(&doc.key(), &version)
        {
            tracing::debug!(%store, %upgrade, "the backup kept parsed is the one stored");
            return Ok(kept);
        }
        tracing::debug!(%store, %upgrade, "reading the whole backup");
        let Some(StoredDocument { bytes, version }) = st.storage().get_document_versioned(&doc)?
        else {
            return Err(AppError::NotFound(format!(
                "no backup was uploaded for upgrade `{upgrade}` {what_to_do}"
            )));
        };
        let stored = version.map(|v| (doc.key(), v));
        st.0.backups.get(&bytes, stored, |b| {
            serde_json::from_slice(b).map_err(|e| AppError::Internal(format!("{}: {e}", doc.key())))
        })
    };
    let Some(changes) = changes else {
        return whole();
    };
    // The changes' bytes name the backup and the changes at once.
    st.0.backups.get_or_build(Sha256Hex::of(&changes), || {
        let req: BackupChanges = serde_json::from_slice(&changes)
            .map_err(|e| AppError::Internal(format!("{}: {e}", changes_doc.key())))?;
        let base = whole()?;
        if base.digest != req.base {
            return Err(AppError::Internal(format!(
                "{} applies to another backup than {}",
                changes_doc.key(),
                doc.key()
            )));
        }
        let changed = apply_changes(&base, &req)
            .map_err(|e| AppError::Internal(format!("{}: {e:?}", changes_doc.key())))?;
        Ok(changed_backup(&base, changed, Sha256Hex::of(&changes), req))
    })
}

/// `base` with `req`'s changes, the changed terminals only; a 400 or 409
/// saying why not.
fn apply_changes(base: &Parsed, req: &BackupChanges) -> Result<Backup, AppError> {
    let mut terminals = Vec::with_capacity(req.terminals.len());
    for t in &req.terminals {
        let Some(old) = base.backup.terminals.iter().find(|b| b.number == t.number) else {
            return Err(AppError::Conflict(format!(
                "terminal {} is not in the backup these changes apply to; PUT the whole backup",
                t.number
            )));
        };
        if terminals
            .iter()
            .any(|b: &TerminalBackup| b.number == t.number)
        {
            return Err(AppError::BadRequest(format!(
                "the backup changes list terminal {} twice",
                t.number
            )));
        }
        let manifest = old
            .manifest
            .with_changes(&t.changes)
            .map_err(|e| AppError::BadRequest(format!("terminal {}'s changes: {e}", t.number)))?;
        terminals.push(TerminalBackup {
            manifest,
            ..old.clone()
        });
    }
    Ok(Backup { terminals })
}

/// The parsed backup `changed`, which is `base` with `req`, named `digest`.
fn changed_backup(base: &Parsed, changed: Backup, digest: Sha256Hex, req: BackupChanges) -> Parsed {
    let changes = req.terminals.into_iter().map(|t| (t.number, t.changes));
    Parsed::changed(base, changed, digest, changes.collect())
}

/// A 409 naming the files of a backup the server does not hold for the store.
fn none_missing(st: &AppState, store: &str, hashes: &[Sha256Hex]) -> Result<(), AppError> {
    let missing = st.missing_for(store, hashes)?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(AppError::Conflict(format!(
        "{} file(s) of the backup are not on the server for this store: {}; send them in a pack (PUT /v1/pack) first",
        missing.len(),
        list_some(&missing)
    )))
}

fn json_bytes(value: &impl serde::Serialize) -> Result<Vec<u8>, AppError> {
    serde_json::to_vec(value).map_err(|e| AppError::Internal(format!("serialising: {e}")))
}

/// Keeps a backup's `json` as the upgrade's, and removes the folders of
/// the store's upgrades the database no longer keeps.
fn keep_backup(st: &AppState, store: &str, upgrade: &str, json: Vec<u8>) -> Result<(), AppError> {
    let doc = Document::Backup {
        store: store.to_owned(),
        upgrade: upgrade.to_owned(),
    };
    st.storage().put_document(&doc, json)?;
    record_backup(st, store, upgrade)
}

/// Records that a backup of `upgrade` arrived, and removes the folders of
/// the store's upgrades the database no longer keeps.
fn record_backup(st: &AppState, store: &str, upgrade: &str) -> Result<(), AppError> {
    for old in st.db().record_backup(store, upgrade, Timestamp::now())? {
        if let Err(e) = st.storage().remove_upgrade(store, &old) {
            tracing::warn!("could not remove the files of upgrade {old} of store {store}: {e}");
        }
    }
    Ok(())
}

/// `PATCH` of a backup: see [`BackupChanges`].
#[utoipa::path(patch, path = "/v1/stores/{store}/upgrades/{upgrade}/backup", tag = "upgrades",
    description = "The backup after the stop, as changes to the one uploaded before it.",
    params(
        ("store" = Id, Path, description = "The store (the token's)."),
        ("upgrade" = Id, Path, description = "The upgrade, named by the store."),
    ),
    request_body = BackupChanges,
    responses(
        (status = 204, description = "Kept."),
        (status = 400, description = "Not backup changes, changes that do not apply, or an invalid id.", body = ErrorBody),
        (status = 401, description = "No store token, or one the server does not know (revoked or rotated).", body = ErrorBody),
        (status = 403, description = "The token belongs to another store.", body = ErrorBody),
        (status = 404, description = "No backup was uploaded for this upgrade.", body = ErrorBody),
        (status = 409, description = "The changes apply to another backup, or name files not on the server.", body = ErrorBody),
        (status = 413, description = "The changes are too large.", body = ErrorBody),
    ),
    security(("store_token" = [])))]
pub(crate) async fn patch_backup(
    State(st): State<AppState>,
    Extension(auth): Extension<StoreId>,
    Path((store, upgrade)): Path<(String, String)>,
    body: Body,
) -> Result<StatusCode, AppError> {
    own_store(&auth, &store)?;
    bad_id("upgrade", &upgrade)?;
    let bytes = read_body(body, st.0.limits.max_backup, "backup changes").await?;
    let req: BackupChanges = parse_json(&bytes, "backup changes")?;
    st.blocking(move |st| {
        let stored = stored_backup(st, &store, &upgrade, "to change: PUT the whole backup")?;
        // Changes apply to a backup uploaded whole, not to changed ones.
        if stored.digest != req.base || stored.is_changed() {
            return Err(AppError::Conflict(format!(
                "the backup of upgrade `{upgrade}` on the server is not the one these changes apply to; PUT the whole backup"
            )));
        }
        let changed = apply_changes(&stored, &req)?;
        // The base's files were checked when it came; the new ones now.
        let added: Vec<Sha256Hex> = req
            .terminals
            .iter()
            .flat_map(|t| t.changes.upsert.iter().map(|f| f.sha256))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        none_missing(st, &store, &added)?;
        // Kept as the changes: what is written while the tills are
        // stopped is the size of what changed, not of their folders.
        let json = json_bytes(&req)?;
        let digest = Sha256Hex::of(&json);
        let doc = Document::BackupChanges {
            store: store.clone(),
            upgrade: upgrade.clone(),
        };
        st.storage().put_document(&doc, json)?;
        record_backup(st, &store, &upgrade)?;
        let parsed = changed_backup(&stored, changed, digest, req);
        st.0.backups.forget(&stored);
        st.0.backups.keep(digest, Arc::new(parsed));
        Ok::<_, AppError>(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/stores/{store}/upgrades/{upgrade}/process", tag = "upgrades",
    description = "Builds each terminal's new folder from the backup and the release.",
    params(
        ("store" = Id, Path, description = "The store (the token's)."),
        ("upgrade" = Id, Path, description = "The upgrade, named by the store."),
    ),
    request_body = ProcessRequest,
    responses(
        (status = 200, description = "Each terminal's new folder, or its digest when asked.", body = ProcessResult),
        (status = 400, description = "Not a process request, or an invalid id.", body = ErrorBody),
        (status = 401, description = "No store token, or one the server does not know (revoked or rotated).", body = ErrorBody),
        (status = 403, description = "The token belongs to another store.", body = ErrorBody),
        (status = 404, description = "No backup was uploaded, or the release is not published on the channel.", body = ErrorBody),
        (status = 409, description = "A terminal is not in the backup, or its files cannot be combined with the release.", body = ErrorBody),
        (status = 413, description = "The request is too large.", body = ErrorBody),
    ),
    security(("store_token" = [])))]
pub(crate) async fn process(
    State(st): State<AppState>,
    Extension(auth): Extension<StoreId>,
    Path((store, upgrade)): Path<(String, String)>,
    body: Body,
) -> Result<Json<ProcessResult>, AppError> {
    own_store(&auth, &store)?;
    bad_id("upgrade", &upgrade)?;
    let bytes = read_body(body, 1 << 20, "process request").await?;
    let req: ProcessRequest = parse_json(&bytes, "process request")?;
    bad_id("channel", &req.channel)?;
    if req.terminals.is_empty() {
        return Err(AppError::BadRequest(
            "the process request lists no terminal".into(),
        ));
    }
    let mut targets = req.terminals.clone();
    targets.sort_by_key(|t| t.number);
    if let Some(w) = targets.windows(2).find(|w| w[0].number == w[1].number) {
        return Err(AppError::BadRequest(format!(
            "the process request lists terminal {} twice",
            w[0].number
        )));
    }
    let ahead = req.ahead;
    let built = st
        .blocking(move |st| {
            let b = Build {
                store: &store,
                upgrade: &upgrade,
                channel: &req.channel,
                ahead,
            };
            build_delivery(st, &b, &targets)
        })
        .await?;
    Ok(Json(match req.answer {
        ProcessAnswer::Folders => ProcessResult::Folders(Delivery {
            terminals: built.into_iter().map(|(t, _)| t).collect(),
        }),
        ProcessAnswer::Digests => ProcessResult::Digests(DeliveryDigests {
            terminals: built
                .into_iter()
                .map(|(t, digest)| TerminalDigest {
                    manifest: digest,
                    number: t.number,
                    version: t.version,
                })
                .collect(),
        }),
    }))
}

/// The answer to a process request, as its [`ProcessAnswer`] asks.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum ProcessResult {
    Folders(Delivery),
    Digests(DeliveryDigests),
}

/// What a process request builds.
struct Build<'a> {
    store: &'a str,
    upgrade: &'a str,
    channel: &'a str,
    /// See [`api::ProcessRequest::ahead`].
    ahead: bool,
}

/// DESIGN §3.5: each terminal's new folder, in terminal-number order,
/// with its manifest's digest.
fn build_delivery(
    st: &AppState,
    b: &Build<'_>,
    targets: &[api::TerminalTarget],
) -> Result<Vec<(TerminalResult, Sha256Hex)>, AppError> {
    let (store, upgrade, channel) = (b.store, b.upgrade, b.channel);
    let stored = stored_backup(st, store, upgrade, "yet: PUT the backup first")?;
    let backup = &stored.backup;
    let mut releases: BTreeMap<Version, (Release, Arc<Manifest>)> = BTreeMap::new();
    let mut jobs = Vec::with_capacity(targets.len());
    for t in targets {
        let Some(old) = backup.terminals.iter().find(|b| b.number == t.number) else {
            let have: Vec<String> = backup
                .terminals
                .iter()
                .map(|b| b.number.to_string())
                .collect();
            return Err(AppError::Conflict(format!(
                "terminal {} is not in the backup of upgrade `{upgrade}` (it holds terminal(s) {}); upload a backup that includes it",
                t.number,
                have.join(", ")
            )));
        };
        if !releases.contains_key(&t.target) {
            let release = st.db().release(channel, &t.target)?.ok_or_else(|| {
                AppError::NotFound(format!(
                    "release {} is not published on channel `{channel}`",
                    t.target
                ))
            })?;
            let manifest = st.0.manifests.get(st.storage(), &release)?;
            releases.insert(t.target.clone(), (release, manifest));
        }
        jobs.push((t, old));
    }
    // Each terminal's folder on its own core: they are independent, and
    // the store's tills wait for the last one.
    let build = |(t, old): &(&api::TerminalTarget, &TerminalBackup)| {
        let (release, manifest) = &releases[&t.target];
        let preserve = release
            .preserve_set()
            .map_err(|e| AppError::Internal(e.to_string()))?;
        let key = FolderKey {
            terminal: t.number,
            release: release.sha256,
            preserve: release.preserve.clone(),
        };
        let built = stored.folder(&key, old, manifest, &preserve).map_err(|e| {
            AppError::Conflict(format!(
                "terminal {}: its files cannot be combined with release {}: {e}",
                t.number, t.target
            ))
        })?;
        // What it holds beyond the release: the terminal's own files.
        let kept = KeptResult {
            number: t.number,
            version: t.target.clone(),
            release: release.sha256,
            folder: built.digest,
            changes: manifest.changes_to(&built.folder),
        };
        let result = TerminalResult {
            number: t.number,
            version: t.target.clone(),
            manifest: Arc::unwrap_or_clone(built.folder),
        };
        Ok::<_, AppError>((result, built.digest, kept))
    };
    let out = crate::parallel::each_on_a_core(&jobs, build)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    if b.ahead {
        return Ok(out.into_iter().map(|(r, d, _)| (r, d)).collect());
    }
    // One document for the store's terminals: one write while they wait.
    let doc = Document::Results {
        store: store.to_owned(),
        upgrade: upgrade.to_owned(),
    };
    let kept: Vec<&KeptResult> = out.iter().map(|(_, _, k)| k).collect();
    st.storage().put_document(&doc, json_bytes(&kept)?)?;
    tillup_fs::fault::crash_point("server.process");
    // The release's files are every store's to read already: recording
    // them for each store would grow the table by a release per store.
    let released: BTreeSet<Sha256Hex> = releases.values().flat_map(|(_, m)| m.hashes()).collect();
    let hashes: Vec<Sha256Hex> = out
        .iter()
        .flat_map(|(_, _, k)| k.changes.upsert.iter().map(|f| f.sha256))
        .filter(|h| !released.contains(h))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    st.db().add_store_blobs(store, &hashes)?;
    st.db().record_processed(store, upgrade, Timestamp::now())?;
    Ok(out.into_iter().map(|(r, d, _)| (r, d)).collect())
}

/// How the server keeps a terminal's processed folder: as changes to the
/// release's manifest, so that what it writes while the store's tills are
/// stopped is the size of the terminal's own files, not of its folder.
#[derive(serde::Serialize)]
struct KeptResult {
    number: u32,
    version: Version,
    /// The release manifest's SHA-256.
    release: Sha256Hex,
    /// The whole folder's manifest digest.
    folder: Sha256Hex,
    changes: ManifestChanges,
}

#[utoipa::path(post, path = "/v1/stores/{store}/reports", tag = "upgrades",
    description = "A report of the store's upgrade, for head office.",
    params(("store" = Id, Path, description = "The store (the token's).")),
    request_body(content = Object, description = "A JSON object."),
    responses(
        (status = 204, description = "Kept."),
        (status = 400, description = "Not a JSON object.", body = ErrorBody),
        (status = 401, description = "No store token, or one the server does not know (revoked or rotated).", body = ErrorBody),
        (status = 403, description = "The token belongs to another store.", body = ErrorBody),
        (status = 413, description = "The report is too large.", body = ErrorBody),
    ),
    security(("store_token" = [])))]
pub(crate) async fn report(
    State(st): State<AppState>,
    Extension(auth): Extension<StoreId>,
    Path(store): Path<String>,
    body: Body,
) -> Result<StatusCode, AppError> {
    own_store(&auth, &store)?;
    let bytes = read_body(body, st.0.limits.max_report, "report").await?;
    let value: serde_json::Value = parse_json(&bytes, "report (a JSON object)")?;
    if !value.is_object() {
        return Err(AppError::BadRequest(
            "a report must be a JSON object".into(),
        ));
    }
    st.blocking(move |st| st.db().add_report(&store, Timestamp::now(), &value))
        .await?;
    // A report may decide a rollout's wave.
    st.nudge_rollouts();
    Ok(StatusCode::NO_CONTENT)
}

/// Serves `app(state)` on `listener` until Ctrl-C, with the background
/// jobs of [`crate::jobs`]; writes the last-check times noted before
/// returning.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    key: Option<crate::data::KeySource>,
) -> io::Result<()> {
    if let Some(key) = &key {
        state.set_signing_key(key.clone());
    }
    let jobs = crate::jobs::spawn(state.clone(), key);
    let served = tillup_serve::serve(
        listener,
        app(state.clone()),
        tillup_serve::Limits::SERVER,
        None,
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await;
    jobs.abort();
    crate::jobs::flush_checks(&state).await;
    served
}
