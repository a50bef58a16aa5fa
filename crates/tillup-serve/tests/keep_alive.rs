//! A connection is reused only when the server will keep it: an answer
//! given before the request's body was read says `Connection: close`, and
//! the server does close it; an answer to a request whose body was read
//! keeps the connection for the next request.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Reads one answer's head and its body (by its `content-length`), or
/// `None` when the server closed the connection first.
async fn answer(conn: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse().unwrap());
            if got.len() >= end + 4 + len {
                return Some(head);
            }
        }
        let n = timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("the server answers or closes in time")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

async fn server() -> std::net::SocketAddr {
    let router = Router::new()
        .route("/refuse", post(|| async { StatusCode::UNAUTHORIZED }))
        .route("/read", post(|body: String| async move { body }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tillup_serve::serve(
        listener,
        router,
        tillup_serve::Limits::AGENT,
        None,
        std::future::pending(),
    ));
    addr
}

const HEAD: &str = "Host: t\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\n";

#[tokio::test]
async fn an_answer_before_the_body_is_read_closes_the_connection_and_says_so() {
    let addr = server().await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    // The head alone: the body is still on its way when the answer comes.
    conn.write_all(format!("POST /refuse HTTP/1.1\r\n{HEAD}").as_bytes())
        .await
        .unwrap();
    let head = answer(&mut conn).await.expect("an answer");
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let _ = conn.write_all(b"0123456789").await;
    let _ = conn
        .write_all(b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert_eq!(answer(&mut conn).await, None, "the server closed it");
}

#[tokio::test]
async fn an_answer_after_the_body_is_read_keeps_the_connection() {
    let addr = server().await;
    let mut conn = TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        conn.write_all(format!("POST /read HTTP/1.1\r\n{HEAD}").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        conn.write_all(b"0123456789").await.unwrap();
        let head = answer(&mut conn).await.expect("an answer");
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }
}
