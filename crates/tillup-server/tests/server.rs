//! tillup-server's tests: handlers through `oneshot`, then the real binary
//! over HTTP. Each test has its own temp directory; no fixed ports.

use std::path::Path;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use tillup_core::RelPath;
use tillup_core::Sha256Hex;
use tillup_core::api::{
    self, Backup, BackupChanges, Delivery, DeliveryDigests, ErrorBody, HashList, ProcessAnswer,
    ProcessRequest, TerminalBackup, TerminalChanges, TerminalTarget,
};
use tillup_core::log::{Notes, VersionLog};
use tillup_core::manifest::{FileEntry, Manifest, Preserve, merge_for_terminal};
use tillup_core::sign::PublicKey;
use tillup_server::ops::{self, PublishRequest};
use tillup_server::{AppState, BlobsLocation, DataDir, KeySource, Limits, Location};
use tower::ServiceExt;

struct Env {
    dir: tempfile::TempDir,
    state: AppState,
    key: KeySource,
    public: PublicKey,
    token_a: String,
    token_b: String,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path().join("data"));
    let keys = ops::keygen(&data, false).unwrap();
    let key = KeySource {
        path: data.secret_key(),
        password: None,
    };
    let state = AppState::open(
        &data,
        &Location::Sqlite(data.db()),
        &BlobsLocation::Local,
        Limits::default(),
    )
    .unwrap();
    let now = jiff::Timestamp::now();
    let token_a = ops::add_store(state.db(), "store-a", now).unwrap();
    let token_b = ops::add_store(state.db(), "store-b", now).unwrap();
    Env {
        public: PublicKey::parse(&keys.public_line).unwrap(),
        dir,
        state,
        key,
        token_a,
        token_b,
    }
}

/// Writes `files` into a new folder under the env's temp dir.
fn folder(env: &Env, name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let root = env.dir.path().join(name);
    for (p, c) in files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, c).unwrap();
    }
    root
}

fn publish(
    env: &Env,
    name: &str,
    version: &str,
    files: &[(&str, &str)],
    preserve: &[&str],
) -> ops::Published {
    let root = folder(env, name, files);
    let req = PublishRequest {
        folder: root,
        version: version.parse().unwrap(),
        channel: "stable".into(),
        date: "2026-11-01T00:00:00Z".parse().unwrap(),
        notes: Notes {
            en: format!("release {version}"),
            zh_cn: String::new(),
        },
        critical: false,
        min_from: None,
        models: vec![],
        preserve: preserve.iter().map(|s| s.to_string()).collect(),
        replace: false,
        stores: None,
    };
    ops::publish(env.state.db(), env.state.storage(), &env.key, req).unwrap()
}

fn entry(path: &str, content: &str) -> FileEntry {
    FileEntry {
        path: RelPath::new(path).unwrap(),
        size: content.len() as u64,
        sha256: Sha256Hex::of(content.as_bytes()),
        exec: false,
    }
}

fn manifest(files: &[(&str, &str)]) -> Manifest {
    Manifest::new(files.iter().map(|(p, c)| entry(p, c)).collect()).unwrap()
}

async fn call(
    env: &Env,
    method: Method,
    uri: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Response {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    tillup_server::app(env.state.clone())
        .oneshot(b.body(Body::from(body)).unwrap())
        .await
        .unwrap()
}

async fn json_call(
    env: &Env,
    method: Method,
    uri: &str,
    token: &str,
    body: &impl serde::Serialize,
) -> Response {
    let bytes = serde_json::to_vec(body).unwrap();
    call(
        env,
        method,
        uri,
        Some(token),
        &[("content-type", "application/json")],
        bytes,
    )
    .await
}

async fn bytes(resp: Response) -> Vec<u8> {
    resp.into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec()
}

async fn error_of(resp: Response) -> String {
    let b = bytes(resp).await;
    serde_json::from_slice::<ErrorBody>(&b)
        .unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {}", String::from_utf8_lossy(&b)))
        .error
}

fn blob_uri(h: &Sha256Hex) -> String {
    api::route(api::server::BLOB, &[("sha256", &h.to_string())])
}

fn store_uri(template: &str, store: &str, upgrade: &str) -> String {
    api::route(template, &[("store", store), ("upgrade", upgrade)])
}

fn log_uri() -> String {
    api::route(api::server::LOG, &[("channel", "stable")])
}

// ---- tokens ----------------------------------------------------------------

#[tokio::test]
async fn every_route_refuses_a_missing_or_wrong_token_and_changes_nothing() {
    let env = env();
    let p = publish(&env, "r1", "1.0.0", &[("bin/pos", "pos")], &[]);
    let local = b"local file".to_vec();
    let local_hash = Sha256Hex::of(&local);
    let backup = Backup {
        terminals: vec![TerminalBackup {
            number: 1,
            model: "A".into(),
            version: "0.9.0".parse().unwrap(),
            manifest: manifest(&[("bin/pos", "pos")]),
        }],
    };
    let process = ProcessRequest {
        channel: "stable".into(),
        terminals: vec![TerminalTarget {
            number: 1,
            target: "1.0.0".parse().unwrap(),
        }],
        answer: ProcessAnswer::Folders,
        ahead: false,
    };
    let routes: Vec<(Method, String, Vec<u8>)> = vec![
        (Method::GET, log_uri(), vec![]),
        (
            Method::GET,
            api::route(api::server::LOG_SIGNATURE, &[("channel", "stable")]),
            vec![],
        ),
        (Method::GET, blob_uri(&p.release.sha256), vec![]),
        (
            Method::PUT,
            api::server::PACK.to_owned(),
            tillup_transfer::pack::in_memory(&[(&local, 0)], 3),
        ),
        (
            Method::POST,
            api::server::PACK.to_owned(),
            serde_json::to_vec(&api::PackRequest {
                blobs: vec![api::PackEntry {
                    sha256: p.release.sha256,
                    from: 0,
                }],
            })
            .unwrap(),
        ),
        (
            Method::POST,
            api::server::BLOBS_MISSING.to_owned(),
            serde_json::to_vec(&HashList::new(vec![local_hash])).unwrap(),
        ),
        (
            Method::PUT,
            store_uri(api::server::BACKUP, "store-a", "u1"),
            serde_json::to_vec(&backup).unwrap(),
        ),
        (
            Method::POST,
            store_uri(api::server::PROCESS, "store-a", "u1"),
            serde_json::to_vec(&process).unwrap(),
        ),
        (
            Method::POST,
            api::route(api::server::REPORT, &[("store", "store-a")]),
            br#"{"ok":true}"#.to_vec(),
        ),
    ];
    let wrong = "0".repeat(64);
    for (method, uri, body) in &routes {
        for token in [None, Some(wrong.as_str()), Some("")] {
            let resp = call(&env, method.clone(), uri, token, &[], body.clone()).await;
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {token:?}"
            );
            assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
            let msg = error_of(resp).await;
            assert!(msg.contains("token"), "{msg}");
        }
    }
    // A non-Bearer scheme is refused too.
    let resp = call(
        &env,
        Method::GET,
        &log_uri(),
        None,
        &[("authorization", &format!("Basic {}", env.token_a))],
        vec![],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    assert!(
        !env.state.blobs().has(&local_hash),
        "a refused upload was kept"
    );
    assert!(!env.state.blobs().path(&local_hash).exists());
    assert!(env.state.db().reports("store-a").unwrap().is_empty());
    assert!(
        !env.dir.path().join("data/stores").exists(),
        "a refused backup wrote files"
    );
    assert!(
        env.state
            .db()
            .stores()
            .unwrap()
            .iter()
            .all(|s| s.last_check.is_none())
    );

    let health = call(&env, Method::GET, "/healthz", None, &[], vec![]).await;
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn another_stores_token_is_forbidden_on_store_paths() {
    let env = env();
    publish(&env, "r1", "1.0.0", &[("bin/pos", "pos")], &[]);
    let backup = Backup { terminals: vec![] };
    let process = ProcessRequest {
        channel: "stable".into(),
        terminals: vec![TerminalTarget {
            number: 1,
            target: "1.0.0".parse().unwrap(),
        }],
        answer: ProcessAnswer::Folders,
        ahead: false,
    };
    let cases = [
        json_call(
            &env,
            Method::PUT,
            &store_uri(api::server::BACKUP, "store-a", "u1"),
            &env.token_b,
            &backup,
        )
        .await,
        json_call(
            &env,
            Method::POST,
            &store_uri(api::server::PROCESS, "store-a", "u1"),
            &env.token_b,
            &process,
        )
        .await,
        json_call(
            &env,
            Method::POST,
            &api::route(api::server::REPORT, &[("store", "store-a")]),
            &env.token_b,
            &serde_json::json!({"x": 1}),
        )
        .await,
    ];
    for resp in cases {
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let msg = error_of(resp).await;
        assert!(msg.contains("store-b") && msg.contains("store-a"), "{msg}");
    }
    assert!(env.state.db().reports("store-a").unwrap().is_empty());
    assert!(env.state.db().reports("store-b").unwrap().is_empty());
    assert!(!env.dir.path().join("data/stores").exists());
}

// ---- log -------------------------------------------------------------------

#[tokio::test]
async fn served_log_verifies_and_etag_gives_304_and_sequence_grows() {
    let env = env();
    let resp = call(
        &env,
        Method::GET,
        &log_uri(),
        Some(&env.token_a),
        &[],
        vec![],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(error_of(resp).await.contains("nothing is published"));

    publish(&env, "r1", "1.0.0", &[("bin/pos", "one")], &[]);
    publish(&env, "r2", "1.1.0", &[("bin/pos", "two")], &["config/**"]);
    let resp = call(
        &env,
        Method::GET,
        &log_uri(),
        Some(&env.token_a),
        &[],
        vec![],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let etag = resp.headers()[header::ETAG].to_str().unwrap().to_owned();
    assert!(etag.starts_with("\"2-") && etag.ends_with('"'), "{etag}");
    // A cache in front of the server must ask again every time.
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-cache");
    let sig_b64 = resp.headers()[api::SIGNATURE_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    let body = bytes(resp).await;
    let sig = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, sig_b64).unwrap(),
    )
    .unwrap();
    env.public.verify(&body, &sig).unwrap();
    let log = VersionLog::parse(&body).unwrap();
    assert_eq!(log.sequence, 2);
    assert_eq!(log.channel, "stable");
    let versions: Vec<String> = log.releases.iter().map(|r| r.version.to_string()).collect();
    assert_eq!(versions, ["1.0.0", "1.1.0"]);
    assert_eq!(log.releases[1].preserve, ["config/**"]);
    assert!(log.expires > log.generated);
    assert!(sig.contains("sequence=2"), "{sig}");

    // The detached signature is the same text.
    let resp = call(
        &env,
        Method::GET,
        &api::route(api::server::LOG_SIGNATURE, &[("channel", "stable")]),
        Some(&env.token_a),
        &[],
        vec![],
    )
    .await;
    assert_eq!(String::from_utf8(bytes(resp).await).unwrap(), sig);

    // Conditional GET.
    let resp = call(
        &env,
        Method::GET,
        &log_uri(),
        Some(&env.token_a),
        &[("if-none-match", &etag)],
        vec![],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(resp.headers()[header::ETAG].to_str().unwrap(), etag);
    assert!(bytes(resp).await.is_empty());
    // Last-check times are written in batches; the server's flush job
    // writes them every few seconds.
    env.state.flush_checks().await.unwrap();
    assert!(
        env.state
            .db()
            .stores()
            .unwrap()
            .iter()
            .any(|s| s.id == "store-a" && s.last_check.is_some())
    );

    // A new publish changes the sequence and the ETag.
    publish(&env, "r3", "1.2.0", &[("bin/pos", "three")], &[]);
    let resp = call(
        &env,
        Method::GET,
        &log_uri(),
        Some(&env.token_a),
        &[("if-none-match", &etag)],
        vec![],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(VersionLog::parse(&bytes(resp).await).unwrap().sequence, 3);
}

// ---- blobs -----------------------------------------------------------------

#[tokio::test]
async fn range_request_answers_206_with_the_slice() {
    let env = env();
    let content = "0123456789abcdefghij";
    publish(&env, "r1", "1.0.0", &[("bin/pos", content)], &[]);
    let h = Sha256Hex::of(content.as_bytes());
    let resp = call(
        &env,
        Method::GET,
        &blob_uri(&h),
        Some(&env.token_a),
        &[("range", "bytes=12-")],
        vec![],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.headers()[header::CONTENT_RANGE], "bytes 12-19/20");
    assert_eq!(bytes(resp).await, &content.as_bytes()[12..]);
    let resp = call(
        &env,
        Method::GET,
        &blob_uri(&h),
        Some(&env.token_a),
        &[],
        vec![],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Content-addressed, so cacheable for good, but only privately: each
    // store's token decides what it may read.
    assert_eq!(
        resp.headers()[header::CACHE_CONTROL],
        "private, max-age=31536000, immutable"
    );
    assert_eq!(bytes(resp).await, content.as_bytes());
}

/// `blobs/missing` for `token`: the hashes missing and what is held of each.
async fn missing(env: &Env, token: &str, hashes: Vec<Sha256Hex>) -> HashList {
    let resp = call(
        env,
        Method::POST,
        api::server::BLOBS_MISSING,
        Some(token),
        &[],
        serde_json::to_vec(&HashList::new(hashes)).unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    serde_json::from_slice(&bytes(resp).await).unwrap()
}

/// `PUT /v1/pack` with `body` as `token`.
async fn put_pack(env: &Env, token: &str, body: Body) -> Response {
    let req = Request::put(api::server::PACK)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, api::PACK_MEDIA_TYPE)
        .body(body)
        .unwrap();
    tillup_server::app(env.state.clone())
        .oneshot(req)
        .await
        .unwrap()
}

/// `POST /v1/pack` for `hashes` as `token`.
async fn get_pack(env: &Env, token: &str, hashes: &[Sha256Hex]) -> Response {
    let req = api::PackRequest {
        blobs: hashes
            .iter()
            .map(|h| api::PackEntry {
                sha256: *h,
                from: 0,
            })
            .collect(),
    };
    call(
        env,
        Method::POST,
        api::server::PACK,
        Some(token),
        &[],
        serde_json::to_vec(&req).unwrap(),
    )
    .await
}

/// The blobs of a pack answer, read into a fresh store.
async fn unpack(resp: Response, sizes: &[(Sha256Hex, u64)]) -> Vec<Vec<u8>> {
    assert_eq!(resp.status(), StatusCode::OK);
    let raw = bytes(resp).await;
    let dir = tempfile::tempdir().unwrap();
    let store = tillup_fs::BlobStore::open(dir.path()).unwrap();
    let mut batch = store.batch("").unwrap();
    let mut out = tillup_transfer::Unpacked::default();
    let sizes: std::collections::BTreeMap<_, _> = sizes.iter().copied().collect();
    tillup_transfer::pack::read_pack(
        &raw[..],
        &mut batch,
        &mut |h, total| {
            (sizes.get(h) == Some(&total))
                .then_some(())
                .ok_or_else(|| "not asked".into())
        },
        &mut |_| {},
        &mut out,
    )
    .unwrap();
    batch.finish().unwrap();
    out.blobs.iter().map(|h| store.read(h).unwrap()).collect()
}

/// A pack as a sender writes it (blocks ended between files).
fn write_pack_of(blobs: &[&[u8]]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let store = tillup_fs::BlobStore::open(dir.path()).unwrap();
    let entries: Vec<api::PackEntry> = blobs
        .iter()
        .map(|b| api::PackEntry {
            sha256: store.put_bytes(b).unwrap(),
            from: 0,
        })
        .collect();
    let mut out = Vec::new();
    tillup_transfer::pack::write_pack(&entries, &|h| Some(store.path(h)), 1, &|_| {}, &mut out)
        .unwrap();
    out
}

fn pack(blobs: &[(&[u8], u64)]) -> Body {
    Body::from(tillup_transfer::pack::in_memory(blobs, 3))
}

#[tokio::test]
async fn a_pack_upload_checks_each_hash_and_blobs_missing_follows_it() {
    let env = env();
    publish(&env, "r1", "1.0.0", &[("bin/pos", "pos")], &[]);
    let pos = Sha256Hex::of(b"pos");
    let local = Sha256Hex::of(b"local");
    let unknown = Sha256Hex::of(b"never sent");
    assert_eq!(
        missing(&env, &env.token_a, vec![pos, local, unknown, local])
            .await
            .hashes,
        vec![local, unknown]
    );

    // A hand-made pack whose bytes are not what it names: refused, nothing kept.
    let forged = tillup_transfer::pack::forged(&[(local, 5, 0, b"locaL")], 1);
    let resp = put_pack(&env, &env.token_a, Body::from(forged)).await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let msg = error_of(resp).await;
    assert!(
        msg.contains("not kept") && msg.contains(&local.to_string()),
        "{msg}"
    );
    assert!(!env.state.blobs().has(&local));
    assert_eq!(
        std::fs::read_dir(env.state.blobs().root().join("tmp"))
            .unwrap()
            .count(),
        0
    );
    // Not a pack at all.
    let resp = put_pack(&env, &env.token_a, Body::from("local")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(error_of(resp).await.contains("not a tillup pack"));

    let resp = put_pack(&env, &env.token_a, pack(&[(b"local", 0)])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let receipt: api::PackReceipt = serde_json::from_slice(&bytes(resp).await).unwrap();
    assert_eq!((receipt.received, receipt.bytes), (vec![local], 5));
    assert_eq!(
        missing(&env, &env.token_a, vec![pos, local, unknown])
            .await
            .hashes,
        vec![unknown]
    );
    // Store B did not upload it: for B it is missing and unreadable.
    assert_eq!(
        missing(&env, &env.token_b, vec![pos, local]).await.hashes,
        vec![local]
    );
    let resp = get_pack(&env, &env.token_b, &[local]).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = call(
        &env,
        Method::GET,
        &blob_uri(&local),
        Some(&env.token_b),
        &[],
        vec![],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Store A reads it back, with a release file, in one pack.
    let got = unpack(
        get_pack(&env, &env.token_a, &[local, pos]).await,
        &[(local, 5), (pos, 3)],
    )
    .await;
    assert_eq!(got, vec![b"local".to_vec(), b"pos".to_vec()]);

    // Malformed JSON is a 400 that says what was expected.
    let resp = call(
        &env,
        Method::POST,
        api::server::BLOBS_MISSING,
        Some(&env.token_a),
        &[],
        b"{\"hashes\": [\"nope\"]}".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(error_of(resp).await.contains("hash list"));
}

#[tokio::test]
async fn an_oversize_blob_in_a_pack_is_413_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path());
    let state = AppState::open(
        &data,
        &Location::Sqlite(data.db()),
        &BlobsLocation::Local,
        Limits {
            max_blob: 4,
            ..Limits::default()
        },
    )
    .unwrap();
    let token = ops::add_store(state.db(), "s", jiff::Timestamp::now()).unwrap();
    let h = Sha256Hex::of(b"too long");
    let req = Request::put(api::server::PACK)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(pack(&[(b"too long", 0)]))
        .unwrap();
    let resp = tillup_server::app(state.clone())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!state.blobs().has(&h));
}

/// A body that sends `bytes` and then breaks, like a cut connection.
fn cut_body(bytes: &[u8]) -> Body {
    let chunks: Vec<Result<axum::body::Bytes, std::io::Error>> = vec![
        Ok(axum::body::Bytes::copy_from_slice(bytes)),
        Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
    ];
    Body::from_stream(futures_util::stream::iter(chunks))
}

#[tokio::test]
async fn a_cut_pack_keeps_whole_files_and_resumes_inside_the_cut_one() {
    let env = env();
    // Incompressible: the cut lands inside the second file.
    let noise = |seed: u64, len: usize| -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    };
    let first = noise(1, 80_000);
    let body = noise(2, 100_000);
    let (hf, h) = (Sha256Hex::of(&first), Sha256Hex::of(&body));
    let whole = write_pack_of(&[&first, &body]);
    let resp = put_pack(&env, &env.token_a, cut_body(&whole[..whole.len() / 2])).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(error_of(resp).await.contains("arrived whole are kept"));
    assert!(env.state.blobs().has(&hf), "the whole file is kept");
    let m = missing(&env, &env.token_a, vec![hf, h]).await;
    assert_eq!(m.hashes, vec![h]);
    let held = m.held[&h];
    assert!(held > 0 && held < 100_000, "{held}");
    // Another store's partial upload is its own.
    assert!(missing(&env, &env.token_b, vec![h]).await.held.is_empty());

    // A resume at another byte: 409 with what is held, nothing written.
    let resp = put_pack(&env, &env.token_a, pack(&[(&body, held - 1)])).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(
        resp.headers()[api::PARTIAL_HEADER],
        held.to_string().as_str()
    );
    // Store B cannot finish store A's upload.
    let resp = put_pack(&env, &env.token_b, pack(&[(&body, held)])).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(!env.state.blobs().has(&h));

    let resp = put_pack(&env, &env.token_a, pack(&[(&body, held)])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let receipt: api::PackReceipt = serde_json::from_slice(&bytes(resp).await).unwrap();
    assert_eq!(receipt.bytes, 100_000 - held, "only the rest crossed");
    assert!(missing(&env, &env.token_a, vec![h]).await.hashes.is_empty());
    assert_eq!(missing(&env, &env.token_b, vec![h]).await.hashes, vec![h]);
    let got = unpack(get_pack(&env, &env.token_a, &[h]).await, &[(h, 100_000)]).await;
    assert_eq!(got, vec![body]);
}

#[tokio::test]
async fn a_resumed_pack_with_wrong_bytes_is_422_and_its_partial_deleted() {
    let env = env();
    let body = b"0123456789abcdefghij".to_vec();
    let h = Sha256Hex::of(&body);
    let whole = tillup_transfer::pack::in_memory(&[(&body, 0)], 1);
    // Stored, so the cut leaves part of the file held.
    let resp = put_pack(&env, &env.token_a, cut_body(&whole[..whole.len() - 40])).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let held = missing(&env, &env.token_a, vec![h])
        .await
        .held
        .get(&h)
        .copied();
    let held = held.unwrap_or(0);
    let mut wrong = body.clone();
    wrong[19] = b'X';
    let forged = tillup_transfer::pack::forged(&[(h, 20, held, &wrong[held as usize..])], 1);
    let resp = put_pack(&env, &env.token_a, Body::from(forged)).await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let msg = error_of(resp).await;
    assert!(
        msg.contains("send it again") && msg.contains(&h.to_string()),
        "{msg}"
    );
    assert!(!env.state.blobs().has(&h));
    assert!(missing(&env, &env.token_a, vec![h]).await.held.is_empty());
}

// ---- backup, process, report -----------------------------------------------

async fn upload_missing(env: &Env, files: &[(&str, &str)]) {
    let blobs: Vec<(&[u8], u64)> = files.iter().map(|(_, c)| (c.as_bytes(), 0)).collect();
    let resp = put_pack(env, &env.token_a, pack(&blobs)).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn backup_and_process_build_each_terminal_in_number_order_idempotently() {
    let env = env();
    let old_files = [
        ("bin/pos", "pos 1"),
        ("config/default.ini", "default 1"),
        ("lib/gone.so", "gone"),
    ];
    publish(&env, "r1", "1.0.0", &old_files, &["config/**", "data/*.db"]);
    let new_files = [
        ("bin/pos", "pos 2"),
        ("config/default.ini", "default 2"),
        ("lib/new.so", "new"),
    ];
    let p2 = publish(&env, "r2", "2.0.0", &new_files, &["config/**", "data/*.db"]);

    let t2_files = [
        ("bin/pos", "pos 1"),
        ("config/default.ini", "mine 2"),
        ("lib/gone.so", "gone"),
        ("data/sales.db", "sales 2"),
    ];
    let t1_files = [
        ("bin/pos", "pos 1"),
        ("config/default.ini", "default 1"),
        ("config/local.ini", "local 1"),
        ("lib/gone.so", "gone"),
        ("data/sales.db", "sales 1"),
        ("data/tmp/x.db", "not kept"),
    ];
    let terminal = |n: u32, files: &[(&str, &str)]| TerminalBackup {
        number: n,
        model: "A".into(),
        version: "1.0.0".parse().unwrap(),
        manifest: manifest(files),
    };
    let backup = Backup {
        terminals: vec![terminal(2, &t2_files), terminal(1, &t1_files)],
    };
    let backup_uri = store_uri(api::server::BACKUP, "store-a", "u-1");
    let process_uri = store_uri(api::server::PROCESS, "store-a", "u-1");

    // Processing before any backup: a clear 404.
    let req = ProcessRequest {
        channel: "stable".into(),
        terminals: vec![
            TerminalTarget {
                number: 2,
                target: "2.0.0".parse().unwrap(),
            },
            TerminalTarget {
                number: 1,
                target: "2.0.0".parse().unwrap(),
            },
        ],
        answer: ProcessAnswer::Folders,
        ahead: false,
    };
    let resp = json_call(&env, Method::POST, &process_uri, &env.token_a, &req).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(error_of(resp).await.contains("PUT the backup first"));

    // Terminal-local files not uploaded yet: 409 naming them.
    let resp = json_call(&env, Method::PUT, &backup_uri, &env.token_a, &backup).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let msg = error_of(resp).await;
    assert!(
        msg.contains(&Sha256Hex::of(b"sales 1").to_string())
            && !msg.contains(&Sha256Hex::of(b"pos 1").to_string()),
        "{msg}"
    );

    // Only terminal-local files are missing; upload them.
    let all: Vec<Sha256Hex> = backup
        .terminals
        .iter()
        .flat_map(|t| t.manifest.hashes())
        .collect();
    let resp = json_call(
        &env,
        Method::POST,
        api::server::BLOBS_MISSING,
        &env.token_a,
        &HashList::new(all),
    )
    .await;
    let want_missing: std::collections::BTreeSet<Sha256Hex> =
        ["mine 2", "sales 2", "local 1", "sales 1", "not kept"]
            .iter()
            .map(|c| Sha256Hex::of(c.as_bytes()))
            .collect();
    let got: std::collections::BTreeSet<Sha256Hex> =
        serde_json::from_slice::<HashList>(&bytes(resp).await)
            .unwrap()
            .hashes
            .into_iter()
            .collect();
    assert_eq!(got, want_missing);
    upload_missing(&env, &t2_files).await;
    upload_missing(&env, &t1_files).await;

    let resp = json_call(&env, Method::PUT, &backup_uri, &env.token_a, &backup).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let resp = json_call(&env, Method::POST, &process_uri, &env.token_a, &req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let delivery: Delivery = serde_json::from_slice(&bytes(resp).await).unwrap();
    let numbers: Vec<u32> = delivery.terminals.iter().map(|t| t.number).collect();
    assert_eq!(numbers, [1, 2], "terminal-number order");

    // The same folders, named by digest.
    let by_digest = ProcessRequest {
        answer: ProcessAnswer::Digests,
        ..req.clone()
    };
    let resp = json_call(&env, Method::POST, &process_uri, &env.token_a, &by_digest).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let digests: DeliveryDigests = serde_json::from_slice(&bytes(resp).await).unwrap();
    let want: Vec<(u32, Sha256Hex)> = delivery
        .terminals
        .iter()
        .map(|t| (t.number, t.manifest.digest()))
        .collect();
    let got: Vec<(u32, Sha256Hex)> = digests
        .terminals
        .iter()
        .map(|t| (t.number, t.manifest))
        .collect();
    assert_eq!(got, want);

    let release_manifest = manifest(&new_files);
    assert_eq!(release_manifest.digest(), p2.release.sha256);
    let preserve = Preserve::new(&["config/**", "data/*.db"]).unwrap();
    for (t, files) in [
        (&delivery.terminals[0], &t1_files[..]),
        (&delivery.terminals[1], &t2_files[..]),
    ] {
        assert_eq!(t.version.to_string(), "2.0.0");
        assert_eq!(
            t.manifest,
            merge_for_terminal(&release_manifest, &manifest(files), &preserve).unwrap()
        );
        assert!(
            t.manifest
                .get(&RelPath::new("lib/gone.so").unwrap())
                .is_none(),
            "a removed file stayed"
        );
        assert!(
            t.manifest
                .get(&RelPath::new("data/tmp/x.db").unwrap())
                .is_none()
        );
        assert_eq!(
            t.manifest
                .get(&RelPath::new("bin/pos").unwrap())
                .unwrap()
                .sha256,
            Sha256Hex::of(b"pos 2")
        );
        // Kept as changes to the release: its own files, not its folder.
        let written: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                env.dir
                    .path()
                    .join("data/stores/store-a/upgrades/u-1/results.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let written = written
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["number"] == t.number)
            .unwrap();
        assert_eq!(written["version"], "2.0.0");
        assert_eq!(written["release"], p2.release.sha256.to_string());
        assert_eq!(written["folder"], t.manifest.digest().to_string());
        let changes: tillup_core::manifest::ManifestChanges =
            serde_json::from_value(written["changes"].clone()).unwrap();
        assert!(changes.upsert.len() < t.manifest.len());
        assert_eq!(release_manifest.with_changes(&changes).unwrap(), t.manifest);
    }
    let t1 = &delivery.terminals[0].manifest;
    assert_eq!(
        t1.get(&RelPath::new("config/local.ini").unwrap())
            .unwrap()
            .sha256,
        Sha256Hex::of(b"local 1")
    );
    assert_eq!(
        t1.get(&RelPath::new("data/sales.db").unwrap())
            .unwrap()
            .sha256,
        Sha256Hex::of(b"sales 1")
    );
    let t2 = &delivery.terminals[1].manifest;
    assert_eq!(
        t2.get(&RelPath::new("config/default.ini").unwrap())
            .unwrap()
            .sha256,
        Sha256Hex::of(b"mine 2")
    );
    assert!(
        Path::new(
            &env.dir
                .path()
                .join("data/stores/store-a/upgrades/u-1/backup.json")
        )
        .is_file()
    );

    // Idempotent.
    let again = json_call(&env, Method::POST, &process_uri, &env.token_a, &req).await;
    assert_eq!(
        serde_json::from_slice::<Delivery>(&bytes(again).await).unwrap(),
        delivery
    );

    // Every file of the delivery is readable by the store.
    let hashes: Vec<Sha256Hex> = delivery
        .terminals
        .iter()
        .flat_map(|t| t.manifest.hashes())
        .collect();
    let resp = json_call(
        &env,
        Method::POST,
        api::server::BLOBS_MISSING,
        &env.token_a,
        &HashList::new(hashes),
    )
    .await;
    assert!(
        serde_json::from_slice::<HashList>(&bytes(resp).await)
            .unwrap()
            .hashes
            .is_empty()
    );

    // Unknown release, unknown terminal, bad upgrade id.
    let bad = ProcessRequest {
        channel: "stable".into(),
        terminals: vec![TerminalTarget {
            number: 1,
            target: "9.9.9".parse().unwrap(),
        }],
        answer: ProcessAnswer::Folders,
        ahead: false,
    };
    let resp = json_call(&env, Method::POST, &process_uri, &env.token_a, &bad).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(
        error_of(resp)
            .await
            .contains("release 9.9.9 is not published")
    );
    let bad = ProcessRequest {
        channel: "stable".into(),
        terminals: vec![TerminalTarget {
            number: 7,
            target: "2.0.0".parse().unwrap(),
        }],
        answer: ProcessAnswer::Folders,
        ahead: false,
    };
    let resp = json_call(&env, Method::POST, &process_uri, &env.token_a, &bad).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(
        error_of(resp)
            .await
            .contains("terminal 7 is not in the backup")
    );
    let resp = json_call(
        &env,
        Method::PUT,
        &store_uri(api::server::BACKUP, "store-a", "bad%20id"),
        &env.token_a,
        &backup,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(error_of(resp).await.contains("upgrade"));

    // The backup after the stop, as changes to the one the server holds.
    let t1_after = [
        ("bin/pos", "pos 1"),
        ("config/default.ini", "default 1"),
        ("config/local.ini", "local 1"),
        ("config/fresh.ini", "fresh"),
        ("lib/gone.so", "gone"),
        ("data/sales.db", "sales 1 and more"),
    ];
    let patch = |base: Sha256Hex, number: u32| BackupChanges {
        base,
        terminals: vec![
            TerminalChanges {
                number,
                changes: manifest(&t1_files).changes_to(&manifest(&t1_after)),
            },
            TerminalChanges {
                number: 2,
                changes: Default::default(),
            },
        ],
    };
    let call = |body: BackupChanges, uri: String| {
        let env = &env;
        async move { json_call(env, Method::PATCH, &uri, &env.token_a, &body).await }
    };
    // Changes to another backup than the one held: 409, upload it whole.
    let resp = call(patch(Sha256Hex::of(b"other"), 1), backup_uri.clone()).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(error_of(resp).await.contains("PUT the whole backup"));
    // No backup to change at all: 404.
    let resp = call(
        patch(backup.digest(), 1),
        store_uri(api::server::BACKUP, "store-a", "u-2"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // A terminal the base does not have: 409.
    let resp = call(patch(backup.digest(), 7), backup_uri.clone()).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(error_of(resp).await.contains("terminal 7"));
    // Files the server does not hold yet: 409 naming them.
    let resp = call(patch(backup.digest(), 1), backup_uri.clone()).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let msg = error_of(resp).await;
    assert!(
        msg.contains(&Sha256Hex::of(b"fresh").to_string())
            && !msg.contains(&Sha256Hex::of(b"local 1").to_string()),
        "{msg}"
    );
    upload_missing(&env, &t1_after).await;
    let resp = call(patch(backup.digest(), 1), backup_uri.clone()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // Built from the changed backup: terminal 1 keeps its new local file.
    let resp = json_call(&env, Method::POST, &process_uri, &env.token_a, &req).await;
    let delivery: Delivery = serde_json::from_slice(&bytes(resp).await).unwrap();
    assert_eq!(
        delivery.terminals[0].manifest,
        merge_for_terminal(&release_manifest, &manifest(&t1_after), &preserve).unwrap()
    );
    // The same changes again: the base is gone, 409.
    let resp = call(patch(backup.digest(), 1), backup_uri.clone()).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    // A whole backup again: the changes to the one before no longer count.
    let resp = json_call(&env, Method::PUT, &backup_uri, &env.token_a, &backup).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = json_call(&env, Method::POST, &process_uri, &env.token_a, &req).await;
    let delivery: Delivery = serde_json::from_slice(&bytes(resp).await).unwrap();
    assert_eq!(
        delivery.terminals[0].manifest,
        merge_for_terminal(&release_manifest, &manifest(&t1_files), &preserve).unwrap()
    );

    // Built ahead of the stop: the same folders, and nothing kept or
    // recorded for the upgrade.
    let uri = |route| store_uri(route, "store-a", "u-3");
    let resp = json_call(
        &env,
        Method::PUT,
        &uri(api::server::BACKUP),
        &env.token_a,
        &backup,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let ahead = ProcessRequest {
        answer: ProcessAnswer::Digests,
        ahead: true,
        ..req.clone()
    };
    let resp = json_call(
        &env,
        Method::POST,
        &uri(api::server::PROCESS),
        &env.token_a,
        &ahead,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let got: DeliveryDigests = serde_json::from_slice(&bytes(resp).await).unwrap();
    let got: Vec<(u32, Sha256Hex)> = got
        .terminals
        .iter()
        .map(|t| (t.number, t.manifest))
        .collect();
    assert_eq!(got, want);
    assert!(
        !env.dir
            .path()
            .join("data/stores/store-a/upgrades/u-3/results.json")
            .exists()
    );

    // The backup kept parsed is found again by a look at the stored
    // document; one replaced behind the server's back (another writer)
    // is read again, not taken for the one kept.
    let replaced = Backup {
        terminals: vec![terminal(2, &t2_files), terminal(1, &t1_after)],
    };
    std::fs::write(
        env.dir
            .path()
            .join("data/stores/store-a/upgrades/u-3/backup.json"),
        serde_json::to_vec(&replaced).unwrap(),
    )
    .unwrap();
    let resp = json_call(
        &env,
        Method::POST,
        &uri(api::server::PROCESS),
        &env.token_a,
        &req,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let delivery: Delivery = serde_json::from_slice(&bytes(resp).await).unwrap();
    assert_eq!(delivery.terminals[0].number, 1);
    assert_eq!(
        delivery.terminals[0].manifest,
        merge_for_terminal(&release_manifest, &manifest(&t1_after), &preserve).unwrap()
    );
}

#[tokio::test]
async fn backup_with_an_escaping_path_is_refused() {
    let env = env();
    let body = br#"{"terminals":[{"number":1,"model":"A","version":"1.0.0","manifest":{"files":[{"path":"../x","size":1,"sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]}}]}"#;
    let resp = call(
        &env,
        Method::PUT,
        &store_uri(api::server::BACKUP, "store-a", "u1"),
        Some(&env.token_a),
        &[],
        body.to_vec(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(error_of(resp).await.contains("`..`"));
}

#[tokio::test]
async fn reports_are_stored_and_must_be_objects() {
    let env = env();
    let uri = api::route(api::server::REPORT, &[("store", "store-a")]);
    let resp = call(
        &env,
        Method::POST,
        &uri,
        Some(&env.token_a),
        &[],
        b"[1,2]".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = call(
        &env,
        Method::POST,
        &uri,
        Some(&env.token_a),
        &[],
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(2 << 20));
    let resp = call(
        &env,
        Method::POST,
        &uri,
        Some(&env.token_a),
        &[],
        big.into_bytes(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let resp = json_call(
        &env,
        Method::POST,
        &uri,
        &env.token_a,
        &serde_json::json!({"upgrade": "u1", "ok": true}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let reports = env.state.db().reports("store-a").unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        reports[0].report,
        serde_json::json!({"upgrade": "u1", "ok": true})
    );
}

/// Regression: a report sent again by a retrying listener was stored twice.
#[tokio::test]
async fn a_report_sent_again_is_kept_once() {
    let env = env();
    let uri = api::route(api::server::REPORT, &[("store", "store-a")]);
    let post = |body: serde_json::Value| {
        let (env, uri) = (&env, &uri);
        async move {
            let resp = json_call(env, Method::POST, uri, &env.token_a, &body).await;
            assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        }
    };
    let first = serde_json::json!({"store": "store-a", "upgrade": {"id": "u-7", "to": "2.0.0"}, "failure": null});
    post(first.clone()).await;
    post(first.clone()).await;
    let reports = env.state.db().reports("store-a").unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    // A later report of the same upgrade replaces it.
    let later = serde_json::json!({"store": "store-a", "upgrade": {"id": "u-7", "to": "2.0.0"}, "failure": "canary unhealthy"});
    post(later.clone()).await;
    let reports = env.state.db().reports("store-a").unwrap();
    assert_eq!(
        reports.iter().map(|r| &r.report).collect::<Vec<_>>(),
        [&later]
    );
    // Another upgrade, the same id in another store, and reports without an
    // upgrade id are added.
    post(serde_json::json!({"upgrade": {"id": "u-8"}})).await;
    post(serde_json::json!({"upgrade": "u-7"})).await;
    post(serde_json::json!({"upgrade": "u-7"})).await;
    post(serde_json::json!({"upgrade": {"id": 7}})).await;
    assert_eq!(env.state.db().reports("store-a").unwrap().len(), 5);
    let resp = json_call(
        &env,
        Method::POST,
        &api::route(api::server::REPORT, &[("store", "store-b")]),
        &env.token_b,
        &first,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(env.state.db().reports("store-b").unwrap().len(), 1);
    assert_eq!(env.state.db().reports("store-a").unwrap().len(), 5);
}

// ---- the real binary ---------------------------------------------------------

mod binary {
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};

    use tillup_core::api;
    use tillup_core::log::VersionLog;
    use tillup_core::sign::PublicKey;

    const BIN: &str = env!("CARGO_BIN_EXE_tillup-server");

    fn server(data: &Path, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--data")
            .arg(data)
            .args(args)
            .env_remove("TILLUP_KEY_PASSWORD")
            .output()
            .unwrap()
    }

    fn ok(data: &Path, args: &[&str]) -> String {
        let out = server(data, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn first_line(s: &str) -> String {
        s.lines().next().unwrap_or_default().trim().to_owned()
    }

    /// The minisign CLI, or a failure saying how to install it.
    fn minisign() -> &'static str {
        match Command::new("minisign").arg("-v").output() {
            Ok(_) => "minisign",
            Err(e) => panic!(
                "the `minisign` CLI is needed by this test and is not on PATH ({e}): apt-get install minisign"
            ),
        }
    }

    fn release(dir: &Path, name: &str, content: &str) -> PathBuf {
        let root = dir.join(name);
        std::fs::create_dir_all(root.join("config")).unwrap();
        std::fs::write(root.join("pos"), content).unwrap();
        std::fs::write(root.join("config/app.ini"), "default").unwrap();
        root
    }

    struct Running(Child);

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn serve(data: &Path) -> (Running, String) {
        let mut child = Command::new(BIN)
            .arg("--data")
            .arg(data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let running = Running(child);
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {line:?}"))
            .to_owned();
        (running, base)
    }

    #[tokio::test]
    async fn real_binary_serves_a_log_that_minisign_and_the_public_key_verify() {
        let minisign = minisign();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let public_line = first_line(&ok(&data, &["keygen"]));
        assert!(public_line.starts_with("RW"), "{public_line}");
        let token = first_line(&ok(&data, &["store", "add", "store-1"]));
        assert!(token.len() >= 64, "{token}");
        let r1 = release(dir.path(), "r1", "pos one");
        let r2 = release(dir.path(), "r2", "pos two");
        ok(
            &data,
            &[
                "publish",
                r1.to_str().unwrap(),
                "--version",
                "1.0.0",
                "--notes-en",
                "first",
                "--preserve",
                "config/**",
            ],
        );
        ok(
            &data,
            &[
                "publish",
                r2.to_str().unwrap(),
                "--version",
                "1.1.0",
                "--notes-zh",
                "第二",
                "--critical",
                "--min-from",
                "1.0.0",
                "--model",
                "A",
                "--date",
                "2026-11-02T03:04:05Z",
            ],
        );

        let (_server, base) = serve(&data);
        let client = reqwest::Client::new();
        let log_url = format!(
            "{base}{}",
            api::route(api::server::LOG, &[("channel", "stable")])
        );
        let resp = client
            .get(&log_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
        let body = resp.bytes().await.unwrap();
        let sig_url = format!(
            "{base}{}",
            api::route(api::server::LOG_SIGNATURE, &[("channel", "stable")])
        );
        let sig = client
            .get(&sig_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        PublicKey::parse(&public_line)
            .unwrap()
            .verify(&body, &sig)
            .unwrap();
        let log = VersionLog::parse(&body).unwrap();
        assert_eq!(log.sequence, 2);
        let r = &log.releases[1];
        assert!(
            r.critical && r.min_from.as_ref().unwrap().to_string() == "1.0.0" && r.models == ["A"]
        );
        assert_eq!(r.notes.zh_cn, "第二");
        assert_eq!(r.date.to_string(), "2026-11-02T03:04:05Z");

        // minisign -Vm FILE -P KEY on the downloaded log.
        let file = dir.path().join("log.json");
        std::fs::write(&file, &body).unwrap();
        std::fs::write(dir.path().join("log.json.minisig"), &sig).unwrap();
        let out = Command::new(minisign)
            .arg("-Vm")
            .arg(&file)
            .args(["-P", &public_line])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "minisign: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // …and it refuses a tampered one.
        let mut tampered = body.to_vec();
        tampered[10] ^= 1;
        std::fs::write(&file, &tampered).unwrap();
        let out = Command::new(minisign)
            .arg("-Vm")
            .arg(&file)
            .args(["-P", &public_line])
            .output()
            .unwrap();
        assert!(!out.status.success());

        // 304 with the ETag; 401 without a token.
        let resp = client
            .get(&log_url)
            .bearer_auth(&token)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 304);
        let resp = client.get(&log_url).send().await.unwrap();
        assert_eq!(resp.status(), 401);

        // Range over the real socket.
        let manifest_url = format!(
            "{base}{}",
            api::route(api::server::BLOB, &[("sha256", &r.sha256.to_string())])
        );
        let full = client
            .get(&manifest_url)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let resp = client
            .get(&manifest_url)
            .bearer_auth(&token)
            .header("range", "bytes=5-")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 206);
        assert_eq!(
            resp.headers()["content-range"].to_str().unwrap(),
            format!("bytes 5-{}/{}", full.len() - 1, full.len())
        );
        assert_eq!(resp.bytes().await.unwrap(), full[5..]);

        // A report lands in `reports`.
        let report_url = format!(
            "{base}{}",
            api::route(api::server::REPORT, &[("store", "store-1")])
        );
        let resp = client
            .post(&report_url)
            .bearer_auth(&token)
            .json(&serde_json::json!({"result": "ok"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        let reports: serde_json::Value =
            serde_json::from_str(&ok(&data, &["reports", "store-1"])).unwrap();
        assert_eq!(reports[0]["report"]["result"], "ok");
        assert!(ok(&data, &["store", "list"]).contains("store-1"));
    }

    /// Regression: a report sent twice showed twice in `tillup-server reports`.
    #[tokio::test]
    async fn the_reports_command_shows_a_retried_report_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let token = first_line(&ok(&data, &["store", "add", "store-1"]));
        let (_server, base) = serve(&data);
        let url = format!(
            "{base}{}",
            api::route(api::server::REPORT, &[("store", "store-1")])
        );
        let report = serde_json::json!({"upgrade": {"id": "u-1", "to": "1.1.0"}, "result": "ok"});
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap();
        for _ in 0..2 {
            let resp = client
                .post(&url)
                .bearer_auth(&token)
                .json(&report)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 204);
        }
        let reports: Vec<serde_json::Value> =
            serde_json::from_str(&ok(&data, &["reports", "store-1"])).unwrap();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0]["report"], report);
    }

    #[test]
    fn a_key_made_by_minisign_signs_through_key() {
        let minisign = minisign();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (pub_file, sec_file) = (dir.path().join("k.pub"), dir.path().join("k.sec"));
        let out = Command::new(minisign)
            .args(["-G", "-W", "-p"])
            .arg(&pub_file)
            .arg("-s")
            .arg(&sec_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = sec_file.to_str().unwrap();
        let r1 = release(dir.path(), "r1", "pos");
        ok(
            &data,
            &[
                "--key",
                key,
                "publish",
                r1.to_str().unwrap(),
                "--version",
                "1.0.0",
            ],
        );
        let said = ok(&data, &["--key", key, "sign-log", "--expires-in-days", "3"]);
        assert!(said.contains("sequence 2"), "{said}");

        let db: Box<dyn tillup_server::Db> =
            Box::new(tillup_server::db::SqliteDb::open(&data.join("tillup.db")).unwrap());
        let log = db.latest_log("stable").unwrap().unwrap();
        assert_eq!(log.sequence, 2);
        assert_eq!(
            log.expires.duration_since(log.generated),
            tillup_server::ops::days(3)
        );
        let public = PublicKey::parse(&std::fs::read_to_string(&pub_file).unwrap()).unwrap();
        public.verify(&log.bytes, &log.signature).unwrap();
        let file = dir.path().join("log.json");
        std::fs::write(&file, &log.bytes).unwrap();
        std::fs::write(dir.path().join("log.json.minisig"), &log.signature).unwrap();
        let out = Command::new(minisign)
            .arg("-Vm")
            .arg(&file)
            .arg("-p")
            .arg(&pub_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn publishing_an_existing_version_needs_replace() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        ok(&data, &["keygen"]);
        let r1 = release(dir.path(), "r1", "pos");
        ok(
            &data,
            &["publish", r1.to_str().unwrap(), "--version", "1.0.0"],
        );
        let out = server(
            &data,
            &["publish", r1.to_str().unwrap(), "--version", "1.0.0"],
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("release 1.0.0 is already published") && err.contains("--replace"),
            "{err}"
        );
        let out = server(
            &data,
            &[
                "publish",
                r1.to_str().unwrap(),
                "--version",
                "1.0.0",
                "--replace",
            ],
        );
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("republished"));
        let out = server(
            &data,
            &[
                "publish",
                r1.to_str().unwrap(),
                "--version",
                "1.0.1",
                "--preserve",
                "a/[",
            ],
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("a/["));
        let out = server(&data, &["keygen"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
        let out = Command::new(BIN)
            .arg("keygen")
            .env_remove("TILLUP_SERVER_DATA")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stderr).contains("--data"));
    }

    // ---- publishing from a zip, and what publish refuses ----------------

    use std::io::Write;
    use zip::write::SimpleFileOptions;

    /// One zip entry: name, content, unix mode.
    type Entry<'a> = (&'a str, &'a [u8], u32);

    /// A zip of `entries`, deflated.
    fn zip_file(dir: &Path, name: &str, entries: &[Entry]) -> PathBuf {
        let path = dir.join(name);
        let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        for (entry, bytes, mode) in entries {
            let opts = SimpleFileOptions::default().unix_permissions(*mode);
            w.start_file(*entry, opts).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap();
        path
    }

    /// What `publish` printed as the manifest's digest.
    fn manifest_of(stdout: &str) -> String {
        let (_, rest) = stdout.split_once("manifest ").unwrap();
        rest.split(';').next().unwrap().to_owned()
    }

    /// The data folder after a refused publish: no release recorded, no
    /// blob stored, no temporary folder left.
    fn assert_nothing_recorded(data: &Path) {
        let db: Box<dyn tillup_server::Db> =
            Box::new(tillup_server::db::SqliteDb::open(&data.join("tillup.db")).unwrap());
        assert!(db.releases("stable").unwrap().is_empty());
        let blobs = tillup_fs::BlobStore::open(data.join("blobs")).unwrap();
        assert!(blobs.hashes().unwrap().is_empty());
        let mut left: Vec<String> = std::fs::read_dir(data)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // The database may keep its WAL files; nothing else appears.
        left.retain(|n| !n.starts_with("tillup.db"));
        assert_eq!(left, ["blobs", "keys"]);
        let tmp = std::fs::read_dir(data.join("blobs/tmp")).unwrap().count();
        assert_eq!(tmp, 0);
    }

    #[test]
    fn a_zip_publishes_the_same_release_as_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        ok(&data, &["keygen"]);
        let folder = release(dir.path(), "rel", "program");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let exe = std::fs::Permissions::from_mode(0o755);
            std::fs::set_permissions(folder.join("pos"), exe).unwrap();
        }
        let zip = zip_file(
            dir.path(),
            "rel.zip",
            &[
                ("pos", b"program", 0o755),
                ("config/", b"", 0o755),
                ("config/app.ini", b"default", 0o644),
            ],
        );
        let from_folder = ok(
            &data,
            &["publish", folder.to_str().unwrap(), "--version", "1.0.0"],
        );
        let from_zip = ok(
            &data,
            &["publish", zip.to_str().unwrap(), "--version", "1.0.1"],
        );
        assert!(from_zip.contains("2 files, 14 bytes"), "{from_zip}");
        if cfg!(unix) {
            assert_eq!(manifest_of(&from_zip), manifest_of(&from_folder));
        }
        // The extraction is gone once published.
        let leftovers: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tillup")
            })
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_bad_zip_is_refused_with_a_clear_message_and_nothing_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = vec![0u8; 8 * 1024 * 1024];
        let cases: Vec<(&str, Vec<Entry>, &[&str])> = vec![
            (
                "traversal",
                vec![("pos", b"x", 0o644), ("../evil", b"x", 0o644)],
                &["../evil", "`..`"],
            ),
            (
                "absolute",
                vec![("/etc/cron.d/evil", b"x", 0o644)],
                &["/etc/cron.d/evil", "is absolute"],
            ),
            (
                "drive",
                vec![("C:/Windows/evil.dll", b"x", 0o644)],
                &["C:/Windows/evil.dll", "starts with a drive letter"],
            ),
            (
                "backslash",
                vec![("..\\evil", b"x", 0o644)],
                &["..\\evil", "a backslash"],
            ),
            (
                "case",
                vec![("POS.exe", b"a", 0o644), ("pos.exe", b"b", 0o644)],
                &["POS.exe", "pos.exe", "differ only in case"],
            ),
            (
                "bomb",
                vec![("pos", b"x", 0o644), ("data/big.db", &zeros, 0o644)],
                &["data/big.db", "zip bomb"],
            ),
        ];
        for (name, entries, want) in cases {
            let data = dir.path().join(name);
            ok(&data, &["keygen"]);
            let zip = zip_file(dir.path(), &format!("{name}.zip"), &entries);
            let out = server(
                &data,
                &["publish", zip.to_str().unwrap(), "--version", "1.0.0"],
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name}: {err}");
            assert!(
                err.contains("release archive") && err.contains(&format!("{name}.zip")),
                "{name}: {err}"
            );
            for w in want {
                assert!(err.contains(w), "{name}: `{w}` not in {err}");
            }
            assert_eq!(err.lines().count(), 1, "{name}: said once: {err}");
            // The rule is said once: no error is printed twice in the chain.
            let rule = want.last().unwrap();
            assert_eq!(err.matches(rule).count(), 1, "{name}: said once: {err}");
            assert_nothing_recorded(&data);
        }
        // A symbolic link entry.
        let data = dir.path().join("link");
        ok(&data, &["keygen"]);
        let path = dir.path().join("link.zip");
        let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        w.add_symlink("lib/libpos.so", "/etc/passwd", SimpleFileOptions::default())
            .unwrap();
        w.finish().unwrap();
        let out = server(
            &data,
            &["publish", path.to_str().unwrap(), "--version", "1.0.0"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("lib/libpos.so") && err.contains("symbolic link"),
            "{err}"
        );
        assert_nothing_recorded(&data);
        // Not a zip at all.
        let data = dir.path().join("notzip");
        ok(&data, &["keygen"]);
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "release notes").unwrap();
        let out = server(
            &data,
            &["publish", path.to_str().unwrap(), "--version", "1.0.0"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("not a readable zip"), "{err}");
        assert_nothing_recorded(&data);
    }

    #[cfg(unix)]
    #[test]
    fn a_folder_with_case_twins_or_a_link_out_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        ok(&data, &["keygen"]);
        let folder = release(dir.path(), "twins", "program");
        std::fs::write(folder.join("config/App.ini"), "other").unwrap();
        let out = server(
            &data,
            &["publish", folder.to_str().unwrap(), "--version", "1.0.0"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("config/App.ini")
                && err.contains("config/app.ini")
                && err.contains("Windows"),
            "{err}"
        );
        assert_eq!(
            err.matches("differ only in case").count(),
            1,
            "said once: {err}"
        );
        assert_nothing_recorded(&data);

        let folder = release(dir.path(), "linked", "program");
        std::os::unix::fs::symlink("../../outside", folder.join("config/local")).unwrap();
        let out = server(
            &data,
            &["publish", folder.to_str().unwrap(), "--version", "1.0.0"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("config/local")
                && err.contains("symbolic link")
                && err.contains("../../outside"),
            "{err}"
        );
        assert_nothing_recorded(&data);
    }
}
