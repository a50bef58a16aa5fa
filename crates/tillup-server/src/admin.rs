//! The HTTP side of head office's people ([`crate::people`]): signing in
//! and out, who is signed in, and the audit trail. Every handler that acts
//! for a person takes a [`Person`], which finds the session from its
//! cookie and, on an unsafe method, checks its CSRF token; what the person
//! may do is then checked with [`Person::may`] against the role, here on
//! the server, whatever a page shows.

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jiff::Timestamp;
use tillup_core::api::admin::{self as r, CSRF_HEADER, SESSION_COOKIE, SignIn};
use tillup_core::roles::{Action, Role};
use tokio::sync::Semaphore;

use crate::db::AuditRow;
use crate::http::{AppError, AppState};
use crate::ops::PublishRequest;
use crate::people::{self, SESSION_LENGTH, SignedIn};

/// Sign-ins hashing a password at once: Argon2 is made to be costly, and
/// a flood of sign-ins must not take every core from the stores.
static SIGN_INS: Semaphore = Semaphore::const_new(2);

/// The most audit entries one request returns.
pub const MAX_AUDIT: usize = 1000;

/// The routes (merged into [`crate::http::app`]'s router).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(r::SESSION, axum::routing::post(sign_in).delete(sign_out))
        .route(r::ME, get(me))
        .route(r::AUDIT, get(audit))
        .route(r::FLEET, get(fleet))
        .route(r::RELEASES, get(releases).post(publish))
        .route(r::RELEASE, get(release))
        .route(r::STORE, get(store))
        .route(r::STORE_ACTION, axum::routing::post(store_action))
        .route(r::STORE_LABELS, axum::routing::put(store_labels))
        .route(r::ROLLOUTS, get(rollouts).post(start_rollout))
        .route(r::ROLLOUT, get(rollout))
        .route(r::ROLLOUT_ACTION, axum::routing::post(rollout_action))
}

/// The signed-in person a request comes from.
#[derive(Clone, Debug)]
pub struct Person {
    /// Who, and the session.
    pub signed_in: SignedIn,
    /// The session cookie's token.
    token: String,
}

impl Person {
    /// `Ok` if this person's role allows `action`, else a 403 that says so.
    pub fn may(&self, action: Action) -> Result<(), AppError> {
        if self.signed_in.role.may(action) {
            return Ok(());
        }
        Err(AppError::Forbidden(format!(
            "{} is a {}, who may not {}; ask an admin",
            self.signed_in.name,
            self.signed_in.role,
            match action {
                Action::View => "view this",
                Action::Publish => "publish releases",
                Action::Rollout => "run rollouts",
                Action::Approve => "approve rollouts",
                Action::ManageStores => "manage stores",
                Action::ManagePeople => "manage people",
            }
        )))
    }

    /// Records in the audit trail that this person did `action` to `subject`.
    pub async fn audited(
        &self,
        st: &AppState,
        action: &str,
        subject: &str,
    ) -> Result<(), AppError> {
        let entry = AuditRow {
            at: Timestamp::now(),
            who: self.signed_in.name.clone(),
            action: action.to_owned(),
            subject: subject.to_owned(),
        };
        st.blocking(move |st| st.db().record_audit(&entry)).await
    }
}

impl FromRequestParts<AppState> for Person {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, AppError> {
        // A script's admin token, or a browser's session cookie; only the
        // cookie, which a browser attaches by itself, needs a CSRF token.
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
        let token = bearer
            .clone()
            .or_else(|| cookie(&parts.headers, SESSION_COOKIE))
            .ok_or_else(|| AppError::Unauthorized("sign in first".into()))?;
        let lookup = token.clone();
        let signed_in = st
            .blocking(move |st| people::session(st.db(), &lookup, Timestamp::now()))
            .await?
            .ok_or_else(|| {
                AppError::Unauthorized("your session has ended: sign in again".into())
            })?;
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe && bearer.is_none() {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !people::csrf_matches(&signed_in, sent) {
                return Err(AppError::Forbidden(
                    "this request does not carry the page's security token: reload the page and try again".into(),
                ));
            }
        }
        Ok(Person { signed_in, token })
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// The session cookie: for the whole server, never readable by scripts,
/// only over HTTPS (browsers count loopback as secure), never sent by
/// another site's page.
fn session_cookie(token: &str, max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}"
    ))
    .expect("a hex token makes a valid header")
}

async fn sign_in(
    State(st): State<AppState>,
    Json(body): Json<SignIn>,
) -> Result<Response, AppError> {
    let _turn = SIGN_INS
        .acquire()
        .await
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let (token, signed_in) = st
        .blocking(move |st| people::sign_in(st.db(), &body.name, &body.password, Timestamp::now()))
        .await?;
    tracing::info!(person = %signed_in.name, role = %signed_in.role, "signed in");
    let mut resp = (StatusCode::OK, Json(&signed_in)).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&token, SESSION_LENGTH.as_secs()),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

async fn sign_out(State(st): State<AppState>, person: Person) -> Result<Response, AppError> {
    let token = person.token.clone();
    st.blocking(move |st| people::sign_out(st.db(), &token))
        .await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie("", 0));
    Ok(resp)
}

/// Who is signed in, and what their role lets the pages offer them.
#[derive(serde::Serialize)]
struct Me<'a> {
    #[serde(flatten)]
    signed_in: &'a SignedIn,
    may: Vec<Action>,
}

async fn me(person: Person) -> Result<Response, AppError> {
    person.may(Action::View)?;
    let mut resp = Json(Me {
        may: person.signed_in.role.allowed(),
        signed_in: &person.signed_in,
    })
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[derive(serde::Deserialize)]
struct FleetQuery {
    silent_hours: Option<u32>,
}

async fn fleet(
    State(st): State<AppState>,
    person: Person,
    Query(q): Query<FleetQuery>,
) -> Result<Json<crate::fleet::Fleet>, AppError> {
    person.may(Action::View)?;
    let silent = jiff::SignedDuration::from_hours(i64::from(q.silent_hours.unwrap_or(24)));
    Ok(Json(
        st.blocking(move |st| crate::fleet::overview(st.db(), Timestamp::now(), silent))
            .await?,
    ))
}

#[derive(serde::Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(st): State<AppState>,
    person: Person,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditRow>>, AppError> {
    person.may(Action::View)?;
    let limit = q.limit.unwrap_or(100).min(MAX_AUDIT);
    Ok(Json(st.blocking(move |st| st.db().audit(limit)).await?))
}

/// A channel's releases, as `GET` [`r::RELEASES`] lists them.
#[derive(serde::Serialize)]
struct ChannelReleases {
    channel: String,
    releases: Vec<tillup_core::log::Release>,
}

async fn releases(
    State(st): State<AppState>,
    person: Person,
) -> Result<Json<Vec<ChannelReleases>>, AppError> {
    person.may(Action::View)?;
    let all = st
        .blocking(|st| {
            st.db()
                .log_channels()?
                .into_iter()
                .map(|channel| {
                    let releases = st.db().releases(&channel)?;
                    Ok(ChannelReleases { channel, releases })
                })
                .collect::<Result<Vec<_>, crate::Error>>()
        })
        .await?;
    Ok(Json(all))
}

async fn release(
    State(st): State<AppState>,
    person: Person,
    Path((channel, version)): Path<(String, String)>,
) -> Result<Json<crate::catalog::ReleasePage>, AppError> {
    person.may(Action::View)?;
    let version: semver::Version = version
        .parse()
        .map_err(|e| AppError::BadRequest(format!("version `{version}`: {e}")))?;
    crate::error::check_id("channel", &channel)?;
    st.blocking(move |st| {
        crate::catalog::release_page(st.db(), st.storage(), &channel, &version)?.ok_or_else(|| {
            AppError::NotFound(format!(
                "release {version} is not published on channel `{channel}`"
            ))
        })
    })
    .await
    .map(Json)
}

async fn store(
    State(st): State<AppState>,
    person: Person,
    Path(id): Path<String>,
) -> Result<Json<crate::fleet::StorePage>, AppError> {
    person.may(Action::View)?;
    crate::error::check_id("store", &id)?;
    st.blocking(move |st| {
        crate::fleet::store_page(st.db(), &id)?
            .ok_or_else(|| AppError::from(crate::Error::UnknownStore(id.clone())))
    })
    .await
    .map(Json)
}

/// What `POST` [`r::STORE_ACTION`] did: a rotated token is shown once.
#[derive(serde::Serialize)]
struct StoreActed {
    store: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

async fn store_action(
    State(st): State<AppState>,
    person: Person,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, AppError> {
    person.may(Action::ManageStores)?;
    crate::error::check_id("store", &id)?;
    let store = id.clone();
    let token = match action.as_str() {
        "rotate" => Some(
            st.blocking(move |st| crate::ops::rotate_store_token(st.db(), &store))
                .await?,
        ),
        "revoke" => {
            st.blocking(move |st| crate::ops::revoke_store(st.db(), &store, Timestamp::now()))
                .await?;
            None
        }
        _ => return Err(AppError::NotFound("say rotate or revoke".into())),
    };
    // Named as the command line names them.
    let audited = if token.is_some() {
        "store.rotate-token"
    } else {
        "store.revoke"
    };
    person.audited(&st, audited, &id).await?;
    let mut resp = Json(StoreActed { store: id, token }).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `PUT` [`r::STORE_LABELS`]: the store's labels become `body`'s.
async fn store_labels(
    State(st): State<AppState>,
    person: Person,
    Path(id): Path<String>,
    Json(body): Json<tillup_core::api::admin::StoreLabels>,
) -> Result<Json<tillup_core::api::admin::StoreLabels>, AppError> {
    person.may(Action::ManageStores)?;
    let (store, labels) = (id.clone(), body.labels.clone());
    st.blocking(move |st| crate::ops::set_store_labels(st.db(), &store, &labels))
        .await?;
    // Named as the command line names it.
    let subject = format!("{id}: {}", body.labels.join(" "));
    person.audited(&st, "store.label", &subject).await?;
    Ok(Json(body))
}

/// What `POST` [`r::RELEASES`] published.
#[derive(serde::Serialize)]
struct PublishedView {
    channel: String,
    release: tillup_core::log::Release,
    files: usize,
    sequence: u64,
    replaced: bool,
}

/// The publish form's fields (the query string; the body is the `.zip`).
fn release_form(query: &str, folder: std::path::PathBuf) -> Result<PublishRequest, AppError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| AppError::BadRequest(format!("{what}: {e}"));
    let (mut channel, mut version, mut date) = (None, None, None);
    let mut req = PublishRequest {
        folder,
        version: semver::Version::new(0, 0, 0),
        channel: String::new(),
        date: Timestamp::now(),
        notes: tillup_core::log::Notes::default(),
        critical: false,
        min_from: None,
        models: Vec::new(),
        preserve: Vec::new(),
        replace: false,
        stores: None,
    };
    let flag = |v: &str, what: &str| match v {
        "true" | "on" | "1" => Ok(true),
        "false" | "off" | "0" => Ok(false),
        _ => Err(AppError::BadRequest(format!(
            "{what}: say true or false, not `{v}`"
        ))),
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "channel" => channel = Some(v.into_owned()),
            "version" => version = Some(v.parse().map_err(|e| bad("version", &e))?),
            "date" if !v.is_empty() => date = Some(v.parse().map_err(|e| bad("date", &e))?),
            "notes_en" => req.notes.en = v.into_owned(),
            "notes_zh" => req.notes.zh_cn = v.into_owned(),
            "critical" => req.critical = flag(&v, "critical")?,
            "replace" => req.replace = flag(&v, "replace")?,
            // Held back: published with no store admitted, for a rollout to admit.
            "held" => {
                if flag(&v, "held")? {
                    req.stores.get_or_insert_default();
                }
            }
            "min_from" if !v.is_empty() => {
                req.min_from = Some(v.parse().map_err(|e| bad("min_from", &e))?)
            }
            "model" if !v.is_empty() => req.models.push(v.into_owned()),
            "preserve" if !v.is_empty() => req.preserve.push(v.into_owned()),
            "store" if !v.is_empty() => req.stores.get_or_insert_default().push(v.into_owned()),
            "date" | "min_from" | "model" | "preserve" | "store" => {}
            other => {
                return Err(AppError::BadRequest(format!(
                    "`{}` is not a field of a release",
                    other.chars().take(40).collect::<String>()
                )));
            }
        }
    }
    req.channel = channel.ok_or_else(|| AppError::BadRequest("channel is missing".into()))?;
    crate::error::check_id("channel", &req.channel)?;
    req.version = version.ok_or_else(|| AppError::BadRequest("version is missing".into()))?;
    if let Some(date) = date {
        req.date = date;
    }
    Ok(req)
}

async fn publish(
    State(st): State<AppState>,
    person: Person,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Json<PublishedView>, AppError> {
    person.may(Action::Publish)?;
    let key = signing_key(&st)?;
    let tmp = tempfile::Builder::new()
        .prefix("release-")
        .suffix(".zip")
        .tempfile_in(st.blobs().root().join("tmp"))
        .map_err(|e| AppError::Internal(format!("a temporary file for a release: {e}")))?;
    let req = release_form(query.as_deref().unwrap_or(""), tmp.path().to_owned())?;
    receive(body, tmp.path(), st.limits().max_blob).await?;
    let channel = req.channel.clone();
    let subject = format!("{channel}/{}", req.version);
    let published = st
        .blocking(move |st| {
            let p = crate::ops::publish(st.db(), st.storage(), &key, req);
            drop(tmp);
            p
        })
        .await?;
    person.audited(&st, "publish", &subject).await?;
    Ok(Json(PublishedView {
        channel,
        release: published.release,
        files: published.files,
        sequence: published.sequence,
        replaced: published.replaced,
    }))
}

/// Writes a request's body to `path`, refusing more than `limit` bytes.
async fn receive(body: Body, path: &std::path::Path, limit: u64) -> Result<(), AppError> {
    use futures_util::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;
    let internal = |e: std::io::Error| AppError::Internal(format!("{}: {e}", path.display()));
    let mut file = tokio::fs::File::create(path).await.map_err(internal)?;
    let mut stream = body.into_data_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| AppError::BadRequest(format!("the release could not be read: {e}")))?;
        written += chunk.len() as u64;
        if written > limit {
            return Err(AppError::TooLarge(format!(
                "the release is larger than the {limit} bytes allowed"
            )));
        }
        file.write_all(&chunk).await.map_err(internal)?;
    }
    file.sync_all().await.map_err(internal)?;
    Ok(())
}

fn signing_key(st: &AppState) -> Result<crate::data::KeySource, AppError> {
    st.signing_key().cloned().ok_or_else(|| {
        AppError::Conflict(
            "this server holds no signing key, so it cannot sign a new log: serve with the key, or use the command line".into(),
        )
    })
}

async fn rollouts(
    State(st): State<AppState>,
    person: Person,
) -> Result<Json<Vec<crate::db::RolloutRow>>, AppError> {
    person.may(Action::View)?;
    Ok(Json(st.blocking(|st| st.db().rollouts()).await?))
}

async fn rollout(
    State(st): State<AppState>,
    person: Person,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    person.may(Action::View)?;
    st.blocking(move |st| {
        let row = st
            .db()
            .rollout(&id)?
            .ok_or_else(|| crate::Error::UnknownRollout(id.clone()))?;
        let results = crate::rollouts::results(st.db(), &row)?;
        Ok::<_, AppError>(Json(
            serde_json::json!({"rollout": row, "results": results}),
        ))
    })
    .await
}

async fn start_rollout(
    State(st): State<AppState>,
    person: Person,
    Json(body): Json<tillup_core::api::admin::StartRollout>,
) -> Result<Json<crate::db::RolloutRow>, AppError> {
    person.may(Action::Rollout)?;
    let key = signing_key(&st)?;
    let by = person.signed_in.name.clone();
    let row = st
        .blocking(move |st| {
            crate::rollouts::start(
                st.db(),
                &key,
                &body.channel,
                &body.version,
                body.plan,
                &by,
                Timestamp::now(),
            )
        })
        .await?;
    person
        .audited(
            &st,
            "rollout.start",
            &format!("{} ({} {})", row.id, row.channel, row.version),
        )
        .await?;
    Ok(Json(row))
}

async fn rollout_action(
    State(st): State<AppState>,
    person: Person,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<tillup_core::rollout::Rollout>, AppError> {
    use tillup_core::rollout::Event;
    let by = person.signed_in.name.clone();
    let (event, needs) = match action.as_str() {
        "approve" => (Event::Approve { by }, Action::Approve),
        "pause" => (Event::Pause { by }, Action::Rollout),
        "resume" => (Event::Resume { by }, Action::Rollout),
        "advance" => (Event::Advance { by }, Action::Rollout),
        "abort" => (Event::Abort { by }, Action::Rollout),
        _ => {
            return Err(AppError::NotFound(
                "say approve, pause, resume, advance or abort".into(),
            ));
        }
    };
    person.may(needs)?;
    let key = signing_key(&st)?;
    let rollout_id = id.clone();
    let row = st
        .blocking(move |st| {
            crate::rollouts::act(st.db(), &key, &rollout_id, &event, Timestamp::now())
        })
        .await?;
    person
        .audited(&st, &format!("rollout.{action}"), &id)
        .await?;
    Ok(Json(row.state))
}

/// A role as a person names it on the command line or in a form.
pub fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
        .map_err(|e: tillup_core::roles::BadRole| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; tillup_session=abc"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("tillup_session="));
        assert_eq!(cookie(&h, SESSION_COOKIE), None);
    }

    #[test]
    fn the_cookie_is_http_only_secure_and_same_site() {
        let c = session_cookie("abc", 60);
        let c = c.to_str().unwrap();
        for part in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Path=/",
            "Max-Age=60",
        ] {
            assert!(c.contains(part), "{c}");
        }
    }
}
