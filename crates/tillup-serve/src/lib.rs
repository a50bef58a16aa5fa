//! How tillup's two HTTP servers (the head office's `tillup-server` and
//! each till's `tillup-agent`) accept connections, so that no client, with
//! or without a token, can hold them: a client that opens connections and
//! sends nothing, trickles a header or a body, or stops reading an answer
//! loses its connection after a bounded time, and the number of
//! connections held at once is bounded below what the process may open.
//!
//! Only HTTP/1.1 is spoken: the listener and the agents use nothing else,
//! and hyper bounds its header read only there. With a [`TlsConfig`] the
//! connection is TLS first (the agent's own certificate, which the host
//! pins at pairing); the handshake has the header-read bound too.
//!
//! An answer given before its request's body was read says
//! `Connection: close` (the `unread_body` module), so that no client reuses a
//! connection the server is about to close.

pub use rustls;

mod unread_body;

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What a server gives one client, and how many it serves at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once; one more is closed as soon as it is
    /// accepted (a client sees a reset and tries again later).
    pub max_connections: usize,
    /// From a connection's start, or the end of its previous answer, to the
    /// end of the next request's header. Also how long an idle keep-alive
    /// connection is kept: the listener's client keeps one for less
    /// (`tillup_listener::http::POOL_IDLE`).
    pub header_read: Duration,
    /// The longest wait for the next piece of a request body.
    pub body_idle: Duration,
    /// The longest wait for a client to take the next piece of an answer.
    pub write_idle: Duration,
    /// How long a shutdown waits for requests in flight.
    pub drain: Duration,
}

impl Limits {
    /// The head office's server: hundreds of stores at once, each with a
    /// few connections.
    pub const SERVER: Limits = Limits {
        max_connections: 8192,
        header_read: Duration::from_secs(15),
        body_idle: Duration::from_secs(60),
        write_idle: Duration::from_secs(60),
        drain: Duration::from_secs(10),
    };

    /// A till's agent: one host talks to it, with a few connections; the
    /// bound leaves room for that host among anyone else on the shop LAN
    /// who opens connections.
    pub const AGENT: Limits = Limits {
        max_connections: 1024,
        header_read: Duration::from_secs(15),
        body_idle: Duration::from_secs(60),
        write_idle: Duration::from_secs(60),
        drain: Duration::from_secs(10),
    };
}

/// A server's TLS identity.
pub type TlsConfig = Arc<rustls::ServerConfig>;

/// The TLS configuration of a server with one certificate (DER) and its
/// private key (PKCS#8 DER), no client certificates.
pub fn tls_config(cert_der: Vec<u8>, key_der: Vec<u8>) -> Result<TlsConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(cert_der)],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
        )?;
    Ok(Arc::new(config))
}

/// Serves `router` on `listener` within `limits` (over TLS with `tls`)
/// until `shutdown` ends, then waits up to `limits.drain` for the requests
/// in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<TlsConfig>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    raise_open_files_limit(limits.max_connections);
    let router = router
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            limits.body_idle,
        ))
        .layer(axum::middleware::from_fn(unread_body::close_unless_read));
    let service = hyper_util::service::TowerToHyperService::new(router);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(true);
    let mut shutdown = pin!(shutdown);
    let mut refused: u64 = 0;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors or a connection reset while
                    // queued: nothing to do for it but wait a little.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    %peer,
                    refused,
                    "{} connections are open, the most this server holds: closing new ones",
                    limits.max_connections
                );
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let mut io = tokio_io_timeout::TimeoutStream::new(tcp);
        io.set_write_timeout(Some(limits.write_idle));
        let io = Box::pin(io);
        let (http, service) = (http.clone(), service.clone());
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let ended = match acceptor {
                None => {
                    watcher
                        .watch(http.serve_connection(TokioIo::new(io), service))
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => {
                            watcher
                                .watch(http.serve_connection(TokioIo::new(tls), service))
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "a TLS handshake failed: {e}");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "a TLS handshake took too long");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, "a connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain) => {
            tracing::warn!("requests were still running {} s after the shutdown began", limits.drain.as_secs());
        }
    }
    Ok(())
}

/// Lets the process open enough files for `connections` plus its own work:
/// raises the soft limit up to the hard one where the platform has them.
fn raise_open_files_limit(connections: usize) {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let want = connections as u64 + 1024;
        let limit = getrlimit(Resource::Nofile);
        let current = limit.current.unwrap_or(u64::MAX);
        if current >= want {
            return;
        }
        let target = limit.maximum.map_or(want, |max| max.min(want));
        if target > current {
            let raised = rustix::process::Rlimit {
                current: Some(target),
                maximum: limit.maximum,
            };
            if let Err(e) = setrlimit(Resource::Nofile, raised) {
                tracing::warn!("cannot raise the open files limit to {target}: {e}");
            }
        }
        if target < want {
            tracing::warn!(
                "this process may open {target} files; {want} are needed for {connections} connections: raise its hard limit (LimitNOFILE=)"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = connections;
}
