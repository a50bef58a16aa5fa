//! A round-robin HTTP load balancer on loopback: the head office's
//! balancer in front of several `tillup-server serve` processes.
//!
//! Unlike a TCP proxy, which would send every request of a kept-alive
//! connection to one server, it picks the next server for each request, so
//! one upgrade's log check, uploads, processing, downloads and report land
//! on different servers in turn. Bodies stream through untouched (no
//! decompression, no redirects followed). It counts the requests each
//! server answered. It runs on its own small tokio runtime, so synchronous
//! tests drive it with plain method calls.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Headers of one hop, not forwarded.
const HOP_BY_HOP: [HeaderName; 4] = [
    header::CONNECTION,
    header::HOST,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

struct Shared {
    backends: Vec<String>,
    next: AtomicUsize,
    answered: Vec<AtomicU64>,
    client: reqwest::Client,
}

/// A running balancer; it stops when dropped.
pub struct Balancer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl Balancer {
    /// Starts a balancer on 127.0.0.1:0 over `backends` (`http://IP:PORT`).
    pub fn start(backends: &[&str]) -> Result<Self> {
        anyhow::ensure!(!backends.is_empty(), "a balancer needs a backend");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let client = reqwest::Client::builder()
            .no_zstd()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let shared = Arc::new(Shared {
            backends: backends
                .iter()
                .map(|b| b.trim_end_matches('/').to_owned())
                .collect(),
            next: AtomicUsize::new(0),
            answered: backends.iter().map(|_| AtomicU64::new(0)).collect(),
            client,
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding the balancer")?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        runtime.spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            addr,
            shared,
            _runtime: runtime,
        })
    }

    /// The balancer's address, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests each backend answered, in the order given.
    pub fn answered(&self) -> Vec<u64> {
        self.shared
            .answered
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }
}

async fn forward(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let i = shared.next.fetch_add(1, Ordering::Relaxed) % shared.backends.len();
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut out = shared
        .client
        .request(parts.method, format!("{}{path}", shared.backends[i]))
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(name) {
            out = out.header(name, value);
        }
    }
    match out.send().await {
        Ok(resp) => {
            shared.answered[i].fetch_add(1, Ordering::Relaxed);
            let mut answer = Response::builder().status(resp.status());
            for (name, value) in resp.headers() {
                if !HOP_BY_HOP.contains(name) {
                    answer = answer.header(name, value);
                }
            }
            answer
                .body(Body::from_stream(resp.bytes_stream()))
                .unwrap_or_else(|e| (StatusCode::BAD_GATEWAY, e.to_string()).into_response())
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("backend {i}: {e}")).into_response(),
    }
}
