//! Head office's people over HTTP (through `oneshot`): signing in and out,
//! the session cookie, CSRF on unsafe requests, and store tokens that do
//! not count as a person.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use tillup_core::api::admin::{self as r, CSRF_HEADER, SESSION_COOKIE};
use tillup_core::roles::Role;
use tillup_server::{AppState, BlobsLocation, DataDir, KeySource, Limits, Location, ops, people};
use tower::ServiceExt;

const PASSWORD: &str = "a long enough passphrase";

struct Env {
    _dir: tempfile::TempDir,
    state: AppState,
    store_token: String,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path().join("data"));
    ops::keygen(&data, false).unwrap();
    let state = AppState::open(
        &data,
        &Location::Sqlite(data.db()),
        &BlobsLocation::Local,
        Limits::default(),
    )
    .unwrap();
    let now = jiff::Timestamp::now();
    people::add(state.db(), "ana", Role::Viewer, PASSWORD, now).unwrap();
    people::add(state.db(), "rui", Role::Releaser, PASSWORD, now).unwrap();
    state.set_signing_key(KeySource {
        path: data.secret_key(),
        password: None,
    });
    let store_token = ops::add_store(state.db(), "store-a", now).unwrap();
    Env {
        _dir: dir,
        state,
        store_token,
    }
}

async fn call(
    env: &Env,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Response {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    tillup_server::app(env.state.clone())
        .oneshot(b.body::<Body>(body.into()).unwrap())
        .await
        .unwrap()
}

async fn json(resp: Response) -> serde_json::Value {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&b)))
}

async fn sign_in(env: &Env, name: &str, password: &str) -> Response {
    let body = serde_json::json!({"name": name, "password": password}).to_string();
    call(
        env,
        Method::POST,
        r::SESSION,
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// The session cookie's `name=value` from a sign-in's answer.
fn cookie_of(resp: &Response) -> String {
    let set = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for part in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(set.contains(part), "{set}");
    }
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_person_signs_in_sees_who_they_are_and_signs_out_with_the_csrf_token() {
    let env = env();
    for (name, password) in [("ana", "the wrong passphrase"), ("nobody", PASSWORD)] {
        let resp = sign_in(&env, name, password).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(resp.headers().get(header::SET_COOKIE).is_none());
        let said = json(resp).await["error"].as_str().unwrap().to_owned();
        assert_eq!(
            said,
            "the name or the password is wrong, or this person is disabled"
        );
    }

    let resp = sign_in(&env, "ana", PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = cookie_of(&resp);
    assert!(cookie.starts_with(&format!("{SESSION_COOKIE}=")));
    let me = json(resp).await;
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("ana"), Some("viewer"))
    );
    let csrf = me["csrf"].as_str().unwrap().to_owned();

    let resp = get_as(&env, &cookie, r::ME).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json(resp).await["name"], "ana");

    // Signing out is unsafe: without the session's token, or with another,
    // it is refused and the session stays.
    for headers in [
        vec![("cookie", cookie.as_str())],
        vec![("cookie", cookie.as_str()), (CSRF_HEADER, "forged")],
    ] {
        let resp = call(&env, Method::DELETE, r::SESSION, &headers, "").await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(
            json(resp).await["error"]
                .as_str()
                .unwrap()
                .contains("reload the page")
        );
    }
    let resp = get_as(&env, &cookie, r::ME).await;
    assert_eq!(resp.status(), StatusCode::OK);

    let resp = call(
        &env,
        Method::DELETE,
        r::SESSION,
        &[("cookie", &cookie), (CSRF_HEADER, &csrf)],
        "",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let cleared = resp.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let resp = get_as(&env, &cookie, r::ME).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_store_token_or_no_cookie_is_not_a_person() {
    let env = env();
    let bearer = format!("Bearer {}", env.store_token);
    for headers in [
        vec![],
        vec![("authorization", bearer.as_str())],
        vec![("cookie", "tillup_session=made-up")],
    ] {
        for uri in [r::ME, r::AUDIT] {
            let resp = call(&env, Method::GET, uri, &headers, "").await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{uri} {headers:?}");
        }
    }
}

#[tokio::test]
async fn the_audit_trail_shows_what_people_did() {
    let env = env();
    let now = jiff::Timestamp::now();
    people::audit(env.state.db(), "cli:root", "store.revoke", "store-a", now).unwrap();
    let cookie = cookie_of(&sign_in(&env, "ana", PASSWORD).await);
    let resp = call(
        &env,
        Method::GET,
        &format!("{}?limit=5", r::AUDIT),
        &[("cookie", &cookie)],
        "",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let trail = json(resp).await;
    assert_eq!(trail[0]["who"], "cli:root");
    assert_eq!(trail[0]["action"], "store.revoke");
    assert_eq!(trail[0]["subject"], "store-a");
}

/// A release folder's `.zip`: `pos.exe` and a template with a Chinese name.
fn release_zip(exe: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    w.start_file("pos.exe", opts).unwrap();
    w.write_all(exe.as_bytes()).unwrap();
    w.start_file("templates/收据.txt", opts).unwrap();
    w.write_all("收据".as_bytes()).unwrap();
    w.finish().unwrap().into_inner()
}

/// A `GET` in the session whose cookie is `cookie`.
async fn get_as(env: &Env, cookie: &str, uri: &str) -> Response {
    call(env, Method::GET, uri, &[("cookie", cookie)], Body::empty()).await
}

/// A `POST` in the session `(cookie, csrf)`.
async fn post_as(
    env: &Env,
    (cookie, csrf): (&str, &str),
    uri: &str,
    body: impl Into<Body>,
) -> Response {
    call(
        env,
        Method::POST,
        uri,
        &[("cookie", cookie), (CSRF_HEADER, csrf)],
        body,
    )
    .await
}

/// Signs `name` in: their cookie and CSRF token.
async fn session(env: &Env, name: &str) -> (String, String) {
    let resp = sign_in(env, name, PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = cookie_of(&resp);
    let csrf = json(resp).await["csrf"].as_str().unwrap().to_owned();
    (cookie, csrf)
}

const PUBLISH: &str = "/v1/admin/releases?channel=stable&version=1.1.0&notes_en=Faster%20receipts&notes_zh=%E6%9B%B4%E5%BF%AB&preserve=config%2F**";

#[tokio::test]
async fn a_releaser_publishes_a_zip_and_a_viewer_is_refused() {
    let env = env();
    // A viewer, with a good session and token: refused by role, nothing published.
    let (cookie, csrf) = session(&env, "ana").await;
    let resp = post_as(&env, (&cookie, &csrf), PUBLISH, release_zip("v1.1")).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let said = json(resp).await["error"].as_str().unwrap().to_owned();
    assert!(
        said.contains("ana is a viewer, who may not publish releases"),
        "{said}"
    );
    assert!(env.state.db().releases("stable").unwrap().is_empty());

    // A releaser without the page's token: refused.
    let (cookie, csrf) = session(&env, "rui").await;
    let resp = call(
        &env,
        Method::POST,
        PUBLISH,
        &[("cookie", &cookie)],
        release_zip("v1.1"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(env.state.db().releases("stable").unwrap().is_empty());

    // With it: published and signed, as the command line would.
    let resp = post_as(&env, (&cookie, &csrf), PUBLISH, release_zip("v1.1")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let published = json(resp).await;
    assert_eq!(published["release"]["version"], "1.1.0");
    assert_eq!(published["files"], 2);
    let releases = env.state.db().releases("stable").unwrap();
    assert_eq!(releases.len(), 1);
    assert_eq!(releases[0].notes.zh_cn, "更快");
    assert!(
        env.state.db().latest_log("stable").unwrap().is_some(),
        "the log is signed"
    );

    // The same version again: a conflict that says what to do.
    let resp = post_as(&env, (&cookie, &csrf), PUBLISH, release_zip("other")).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(
        json(resp).await["error"]
            .as_str()
            .unwrap()
            .contains("--replace")
    );

    // Not a zip: refused without the server's paths in the answer.
    let bad = PUBLISH.replace("1.1.0", "1.2.0");
    let resp = post_as(&env, (&cookie, &csrf), &bad, "not a zip").await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let said = json(resp).await["error"].as_str().unwrap().to_owned();
    assert!(
        said.starts_with("the release archive:") && !said.contains('/'),
        "{said}"
    );

    // Everyone may list releases; the audit trail says who published.
    let resp = call(
        &env,
        Method::GET,
        "/v1/admin/releases",
        &[("cookie", &session(&env, "ana").await.0)],
        "",
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let listed = json(resp).await;
    assert_eq!(listed[0]["channel"], "stable");
    assert_eq!(listed[0]["releases"][0]["version"], "1.1.0");
    let trail = env.state.db().audit(10).unwrap();
    assert_eq!(
        (
            trail[0].who.as_str(),
            trail[0].action.as_str(),
            trail[0].subject.as_str()
        ),
        ("rui", "publish", "stable/1.1.0")
    );
}

#[tokio::test]
async fn a_rollout_needing_approval_starts_only_when_a_second_releaser_approves() {
    let env = env();
    let now = jiff::Timestamp::now();
    people::add(env.state.db(), "mei", Role::Releaser, PASSWORD, now).unwrap();
    let (rui, rui_csrf) = session(&env, "rui").await;
    let resp = post_as(&env, (&rui, &rui_csrf), PUBLISH, release_zip("v1.1")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let plan = serde_json::json!({
        "channel": "stable",
        "version": "1.1.0",
        "plan": {
            "requires_approval": true,
            "waves": [
                {"name": "pilot", "stores": {"named": ["store-a"]}, "success_percent": 100, "error_percent": 0, "soak_secs": 0},
                {"name": "rest", "stores": {"share": 100}, "success_percent": 90, "error_percent": 10, "soak_secs": 3600}
            ]
        }
    })
    .to_string();
    let json_headers = |cookie: &str, csrf: &str| {
        vec![
            ("cookie".to_owned(), cookie.to_owned()),
            (CSRF_HEADER.to_owned(), csrf.to_owned()),
            ("content-type".to_owned(), "application/json".to_owned()),
        ]
    };
    async fn post(env: &Env, uri: &str, headers: Vec<(String, String)>, body: String) -> Response {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        call(env, Method::POST, uri, &h, body).await
    }

    // A viewer may look but not start one.
    let (ana, ana_csrf) = session(&env, "ana").await;
    let resp = post(
        &env,
        "/v1/admin/rollouts",
        json_headers(&ana, &ana_csrf),
        plan.clone(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let resp = post(
        &env,
        "/v1/admin/rollouts",
        json_headers(&rui, &rui_csrf),
        plan,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let row = json(resp).await;
    let id = row["id"].as_str().unwrap().to_owned();
    assert_eq!(row["state"]["phase"]["phase"], "awaiting_approval");
    // Awaiting approval: no store is admitted.
    let stores = env
        .state
        .db()
        .release("stable", &"1.1.0".parse().unwrap())
        .unwrap()
        .unwrap()
        .stores;
    assert_eq!(stores, Some(vec![]));

    // Its creator cannot approve it; another releaser can, and the pilot is admitted.
    let approve = format!("/v1/admin/rollouts/{id}/approve");
    let resp = post(&env, &approve, json_headers(&rui, &rui_csrf), String::new()).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(
        json(resp).await["error"]
            .as_str()
            .unwrap()
            .contains("another person")
    );
    let (mei, mei_csrf) = session(&env, "mei").await;
    let resp = post(&env, &approve, json_headers(&mei, &mei_csrf), String::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json(resp).await["phase"]["phase"], "running");
    let stores = env
        .state
        .db()
        .release("stable", &"1.1.0".parse().unwrap())
        .unwrap()
        .unwrap()
        .stores;
    assert_eq!(stores, Some(vec!["store-a".to_owned()]));

    // Anyone signed in may look; an unknown rollout is 404.
    let resp = get_as(&env, &ana, &format!("/v1/admin/rollouts/{id}")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json(resp).await["rollout"]["waves"][0][0], "store-a");
    let resp = get_as(&env, &ana, "/v1/admin/rollouts/r-nope").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let trail = env.state.db().audit(10).unwrap();
    assert_eq!(
        (trail[0].who.as_str(), trail[0].action.as_str()),
        ("mei", "rollout.approve")
    );
}

/// A store's upgrade report, as a host sends it: each terminal `(number,
/// to, result, failure)`, from 1.0.0.
fn report(terminals: &[(u32, &str, &str, Option<&str>)]) -> serde_json::Value {
    let terminals: Vec<serde_json::Value> = terminals
        .iter()
        .map(|(n, to, result, failure)| {
            serde_json::json!({"number": n, "from": "1.0.0", "to": to, "result": result,
                "stopped_ms": 120, "failure": failure})
        })
        .collect();
    serde_json::json!({"id": "u", "kind": "upgrade", "upgrade": {
        "id": "u", "started": "2026-12-02T03:00:00Z", "finished": null,
        "trigger": {"by": "schedule"}, "terminals": terminals, "left_out": [], "reported": false}})
}

#[tokio::test]
async fn the_fleet_overview_counts_versions_failures_upgrades_running_and_silent_stores() {
    let env = env();
    let now = jiff::Timestamp::now();
    ops::add_store(env.state.db(), "store-b", now).unwrap();
    ops::add_store(env.state.db(), "store-c", now).unwrap();
    let db = env.state.db();
    db.add_report(
        "store-a",
        now,
        &report(&[
            (1, "1.1.0", "upgraded", None),
            (2, "1.1.0", "upgraded", None),
        ]),
    )
    .unwrap();
    db.add_report(
        "store-b",
        now,
        &report(&[
            (
                1,
                "1.1.0",
                "restored",
                Some("health: the tax table is missing"),
            ),
            (2, "1.1.0", "in_progress", None),
        ]),
    )
    .unwrap();
    db.record_checks(&[("store-a".into(), now), ("store-b".into(), now)])
        .unwrap();
    // store-c sent its backup and no report yet: it is upgrading now; an
    // upgrade cut off hours ago is not.
    db.record_backup("store-c", "u-now", now).unwrap();
    db.record_backup(
        "store-c",
        "u-cut",
        now - jiff::SignedDuration::from_hours(5),
    )
    .unwrap();

    let (cookie, _) = session(&env, "ana").await;
    let resp = get_as(&env, &cookie, "/v1/admin/fleet").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let fleet = json(resp).await;
    assert_eq!(
        fleet["versions"]["1.1.0"],
        serde_json::json!({"stores": 1, "tills": 2})
    );
    assert_eq!(
        fleet["versions"]["1.0.0"],
        serde_json::json!({"stores": 1, "tills": 2})
    );
    assert_eq!(
        (
            fleet["failures_day"].as_u64(),
            fleet["failures_week"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let stores = fleet["stores"].as_array().unwrap();
    let by_id = |id: &str| stores.iter().find(|s| s["id"] == id).unwrap().clone();
    assert_eq!(
        by_id("store-a")["terminals"],
        serde_json::json!({"1": "1.1.0", "2": "1.1.0"})
    );
    assert!(
        by_id("store-b")["last_failure"]
            .as_str()
            .unwrap()
            .contains("terminal 1: health: the tax table is missing")
    );
    assert_eq!(
        (
            by_id("store-a")["silent"].as_bool(),
            by_id("store-c")["silent"].as_bool()
        ),
        (Some(false), Some(true))
    );
    let upgrading = fleet["upgrading"].as_array().unwrap();
    assert_eq!(upgrading.len(), 1, "{upgrading:?}");
    assert_eq!(
        (&upgrading[0]["store"], &upgrading[0]["upgrade"]),
        (&serde_json::json!("store-c"), &serde_json::json!("u-now"))
    );
    // Without a session, nothing.
    let resp = call(&env, Method::GET, "/v1/admin/fleet", &[], Body::empty()).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_admin_token_acts_as_its_person_without_csrf_until_the_person_is_disabled() {
    let env = env();
    let now = jiff::Timestamp::now();
    let viewer = format!(
        "Bearer {}",
        people::issue_token(env.state.db(), "ana", 30, now).unwrap()
    );
    let releaser = format!(
        "Bearer {}",
        people::issue_token(env.state.db(), "rui", 30, now).unwrap()
    );

    let me = call(&env, Method::GET, r::ME, &[("authorization", &viewer)], "").await;
    assert_eq!(me.status(), StatusCode::OK);
    let me = json(me).await;
    assert_eq!(me["name"], "ana");
    assert!(
        !me["may"].as_array().unwrap().iter().any(|a| a == "publish"),
        "{me}"
    );

    // No CSRF token: a bearer token is never sent by a browser on its own.
    let as_viewer = call(
        &env,
        Method::POST,
        PUBLISH,
        &[("authorization", &viewer)],
        release_zip("v1"),
    )
    .await;
    assert_eq!(as_viewer.status(), StatusCode::FORBIDDEN);
    let as_releaser = call(
        &env,
        Method::POST,
        PUBLISH,
        &[("authorization", &releaser)],
        release_zip("v1"),
    )
    .await;
    assert_eq!(as_releaser.status(), StatusCode::OK);

    // Disabled: the token is refused like a lost session; no token for them.
    env.state.db().disable_person("rui", now).unwrap();
    let after = call(
        &env,
        Method::GET,
        r::ME,
        &[("authorization", &releaser)],
        "",
    )
    .await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    assert!(people::issue_token(env.state.db(), "rui", 30, now).is_err());
}

#[tokio::test]
async fn only_an_admin_labels_a_store_and_a_bad_label_is_refused_with_the_rule() {
    let env = env();
    let now = jiff::Timestamp::now();
    people::add(env.state.db(), "ada", Role::Admin, PASSWORD, now).unwrap();
    let uri = r::STORE_LABELS.replace("{id}", "store-a");
    let put = |name: &'static str, labels: serde_json::Value| {
        let env = &env;
        let uri = uri.clone();
        async move {
            let (cookie, csrf) = session(env, name).await;
            let body = serde_json::json!({ "labels": labels }).to_string();
            call(
                env,
                Method::PUT,
                &uri,
                &[
                    ("cookie", &cookie),
                    (CSRF_HEADER, &csrf),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .await
        }
    };
    let labels = serde_json::json!(["region=north", "mall"]);
    assert_eq!(
        put("rui", labels.clone()).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(put("ada", labels).await.status(), StatusCode::OK);
    let held = env.state.db().store_labels().unwrap();
    assert_eq!(
        held["store-a"].iter().collect::<Vec<_>>(),
        ["mall", "region=north"]
    );

    let bad = put("ada", serde_json::json!(["region north"])).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(json(bad).await.to_string().contains("A-Z a-z 0-9"));
    let many: Vec<String> = (0..40).map(|i| format!("l{i}")).collect();
    let bad = put("ada", serde_json::json!(many)).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    // Nothing of a refused change is kept.
    assert_eq!(env.state.db().store_labels().unwrap()["store-a"].len(), 2);
    let trail = env.state.db().audit(10).unwrap();
    assert!(
        format!("{trail:?}").contains("store-a: region=north mall"),
        "{trail:?}"
    );
}
