//! Head office's people over HTTP (through `oneshot`): signing in and out,
//! the session cookie, CSRF on unsafe requests, and store tokens that do
//! not count as a person.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use tillup_core::api::admin::{self as r, CSRF_HEADER, SESSION_COOKIE};
use tillup_core::roles::Role;
use tillup_server::{AppState, BlobsLocation, DataDir, Limits, Location, ops, people};
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
    let state = AppState::open(
        &data,
        &Location::Sqlite(data.db()),
        &BlobsLocation::Local,
        Limits::default(),
    )
    .unwrap();
    let now = jiff::Timestamp::now();
    people::add(state.db(), "ana", Role::Viewer, PASSWORD, now).unwrap();
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
    body: &str,
) -> Response {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    tillup_server::app(env.state.clone())
        .oneshot(b.body(Body::from(body.to_owned())).unwrap())
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
        &body,
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

    let resp = call(&env, Method::GET, r::ME, &[("cookie", &cookie)], "").await;
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
    let resp = call(&env, Method::GET, r::ME, &[("cookie", &cookie)], "").await;
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
    let resp = call(&env, Method::GET, r::ME, &[("cookie", &cookie)], "").await;
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
