//! A WAN simulator on loopback: the link between a store and head office.
//!
//! [`Wan::start`] listens on 127.0.0.1:0 and forwards every connection to a
//! target. Each direction may be limited to a bandwidth (a token bucket in
//! Mbit/s shared by every connection in that direction) and every chunk is
//! delivered a one-way delay (RTT/2) after it was read, so a request and
//! its answer pay one RTT while a stream keeps flowing. It counts the bytes
//! delivered each way and the HTTP/1.1 requests that go up (by following
//! the request framing of each connection, keep-alive and chunked bodies
//! included). It runs on its own small tokio runtime and stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

pub use crate::proxy::Direction;

/// The link's shape.
#[derive(Clone, Copy, Debug, Default)]
pub struct WanConfig {
    /// Bandwidth per direction in Mbit/s (10^6 bits); 0 for no limit.
    pub mbit: f64,
    /// Round-trip time; each direction adds half of it.
    pub rtt: Duration,
}

/// What crossed the link, as counted at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes delivered to the target (requests, uploads).
    pub up: u64,
    /// Bytes delivered to the client (answers, downloads).
    pub down: u64,
    /// HTTP requests whose head went up.
    pub requests: u64,
    pub connections: u64,
    /// Connections whose upward bytes were not HTTP/1.1 request framing.
    pub unparsed: u64,
}

impl Counters {
    /// What crossed since `earlier`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            up: self.up - earlier.up,
            down: self.down - earlier.down,
            requests: self.requests - earlier.requests,
            connections: self.connections - earlier.connections,
            unparsed: self.unparsed - earlier.unparsed,
        }
    }
}

/// A token bucket that goes into debt: a taker of `n` bytes waits until
/// the link would have carried them after everything taken before.
#[derive(Debug)]
struct Bucket {
    /// Bytes per second.
    rate: f64,
    burst: f64,
    /// Tokens held (negative: owed), as of `at`.
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(mbit: f64) -> Option<Self> {
        (mbit > 0.0).then(|| {
            let rate = mbit * 125_000.0;
            Self {
                rate,
                burst: (rate * 0.005).max(16.0 * 1024.0),
                state: Mutex::new((0.0, Instant::now())),
            }
        })
    }

    async fn take(&self, n: usize) {
        let wait = {
            let mut s = self.state.lock().expect("not poisoned");
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.burst) - n as f64;
            s.1 = now;
            (s.0 < 0.0).then(|| Duration::from_secs_f64(-s.0 / self.rate))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    delay: Duration,
    up_bucket: Option<Bucket>,
    down_bucket: Option<Bucket>,
    up: AtomicU64,
    down: AtomicU64,
    requests: AtomicU64,
    connections: AtomicU64,
    unparsed: AtomicU64,
}

/// A running WAN simulator; it stops when dropped.
pub struct Wan {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

/// `http://127.0.0.1:1234/…` or `127.0.0.1:1234` → the socket address.
fn parse_addr(target: &str) -> Result<SocketAddr> {
    crate::socket_addr_of(target)
}

impl Wan {
    /// Starts a simulator on 127.0.0.1:0 forwarding to `target`
    /// (`http://IP:PORT` or `IP:PORT`).
    pub fn start(target: &str, config: WanConfig) -> Result<Self> {
        let target = parse_addr(target)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            delay: config.rtt / 2,
            up_bucket: Bucket::new(config.mbit),
            down_bucket: Bucket::new(config.mbit),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            unparsed: AtomicU64::new(0),
        });
        let sh = Arc::clone(&shared);
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, Arc::clone(&sh)));
            }
        });
        Ok(Self {
            addr,
            shared,
            _runtime: runtime,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// What crossed so far.
    pub fn counters(&self) -> Counters {
        let s = &self.shared;
        Counters {
            up: s.up.load(Ordering::SeqCst),
            down: s.down.load(Ordering::SeqCst),
            requests: s.requests.load(Ordering::SeqCst),
            connections: s.connections.load(Ordering::SeqCst),
            unparsed: s.unparsed.load(Ordering::SeqCst),
        }
    }
}

async fn forward(client: TcpStream, shared: Arc<Shared>) {
    shared.connections.fetch_add(1, Ordering::SeqCst);
    let Ok(upstream) = TcpStream::connect(shared.target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_r, mut client_w) = client.into_split();
    let (mut up_r, mut up_w) = upstream.into_split();
    // Each direction runs until its reader ends, then half-closes its
    // writer: an HTTP client that closes still gets its answer.
    tokio::join!(
        pump(&mut client_r, &mut up_w, Direction::Up, &shared),
        pump(&mut up_r, &mut client_w, Direction::Down, &shared),
    );
}

/// Copies `from` to `to` through the link: bandwidth taken as it is read,
/// each chunk delivered `delay` after. Up, it counts requests.
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    d: Direction,
    shared: &Shared,
) {
    let (bucket, bytes) = match d {
        Direction::Up => (shared.up_bucket.as_ref(), &shared.up),
        Direction::Down => (shared.down_bucket.as_ref(), &shared.down),
    };
    // At most 64 chunks of 16 KiB in flight per connection and direction.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(64);
    let reader = async move {
        let mut counter = (d == Direction::Up).then(RequestCounter::default);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(b) = bucket {
                b.take(n).await;
            }
            if let Some(c) = counter.as_mut() {
                let was_broken = c.broken();
                shared
                    .requests
                    .fetch_add(c.feed(&buf[..n]), Ordering::SeqCst);
                if c.broken() && !was_broken {
                    shared.unparsed.fetch_add(1, Ordering::SeqCst);
                }
            }
            if tx
                .send((Instant::now() + shared.delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let writer = async {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
            bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Where a [`RequestCounter`] is in the request stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// Reading a request head, up to the empty line.
    #[default]
    Head,
    /// Skipping a body of known length.
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data and then its CRLF.
    ChunkData(u64),
    /// Reading the trailer section after the last chunk.
    Trailer,
    /// Not HTTP/1.1 framing: stop counting on this connection.
    Broken,
}

/// Counts HTTP/1.1 requests in the bytes a client sends on one connection:
/// request heads up to `\r\n\r\n`, then a body of `Content-Length` bytes
/// or a chunked body, then the next head (keep-alive).
#[derive(Debug, Default)]
pub struct RequestCounter {
    state: State,
    /// The head, chunk-size line or trailer read so far.
    line: Vec<u8>,
    requests: u64,
}

/// The longest head, chunk-size line or trailer accepted.
const MAX_HEAD: usize = 64 * 1024;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl RequestCounter {
    /// Requests whose head was seen so far.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Whether the stream stopped looking like HTTP/1.1 requests.
    pub fn broken(&self) -> bool {
        self.state == State::Broken
    }

    /// Feeds the next bytes; returns how many request heads they completed.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let before = self.requests;
        while !data.is_empty() {
            match self.state {
                State::Broken => break,
                State::Body(n) | State::ChunkData(n) => {
                    let take = (n as usize).min(data.len());
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), l) => State::Body(l),
                        // The data's own CRLF is counted in ChunkData's length.
                        (_, 0) => State::ChunkSize,
                        (_, l) => State::ChunkData(l),
                    };
                }
                State::Head | State::ChunkSize | State::Trailer => {
                    // Blank lines between requests are allowed (RFC 9112 §2.2).
                    if self.state == State::Head
                        && self.line.is_empty()
                        && (data[0] == b'\r' || data[0] == b'\n')
                    {
                        data = &data[1..];
                        continue;
                    }
                    let end: &[u8] = match self.state {
                        State::ChunkSize => b"\r\n",
                        _ => b"\r\n\r\n",
                    };
                    // Search only where the end may now be.
                    let from = self.line.len().saturating_sub(end.len() - 1);
                    // Never grow past the bound (by more than a byte).
                    let take = data
                        .len()
                        .min((MAX_HEAD + 1).saturating_sub(self.line.len()).max(1));
                    self.line.extend_from_slice(&data[..take]);
                    let found = if self.state == State::Trailer && self.line.starts_with(b"\r\n") {
                        Some(0)
                    } else {
                        find(&self.line[from..], end).map(|i| i + from)
                    };
                    match found {
                        None => {
                            data = &data[take..];
                            if self.line.len() > MAX_HEAD {
                                self.state = State::Broken;
                            }
                        }
                        Some(i) => {
                            let used = if self.state == State::Trailer && i == 0 {
                                2
                            } else {
                                i + end.len()
                            };
                            // Hand back what belongs to what follows.
                            let extra = self.line.len() - used;
                            data = &data[take - extra..];
                            let line = std::mem::take(&mut self.line);
                            self.state = self.next_state(&line[..used]);
                        }
                    }
                }
            }
        }
        self.requests - before
    }

    /// The state after a complete head, chunk-size line or trailer.
    fn next_state(&mut self, text: &[u8]) -> State {
        match self.state {
            State::Head => {
                self.requests += 1;
                let Ok(head) = std::str::from_utf8(text) else {
                    return State::Broken;
                };
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap_or("");
                if !request_line.ends_with("HTTP/1.1") && !request_line.ends_with("HTTP/1.0") {
                    return State::Broken;
                }
                let mut length = 0u64;
                for l in lines {
                    let Some((name, value)) = l.split_once(':') else {
                        continue;
                    };
                    let (name, value) = (name.trim(), value.trim());
                    if name.eq_ignore_ascii_case("transfer-encoding")
                        && value.to_ascii_lowercase().contains("chunked")
                    {
                        return State::ChunkSize;
                    }
                    if name.eq_ignore_ascii_case("content-length") {
                        match value.parse() {
                            Ok(n) => length = n,
                            Err(_) => return State::Broken,
                        }
                    }
                }
                if length == 0 {
                    State::Head
                } else {
                    State::Body(length)
                }
            }
            State::ChunkSize => {
                let line = String::from_utf8_lossy(text);
                let size = line.trim_end().split(';').next().unwrap_or("").trim();
                match u64::from_str_radix(size, 16) {
                    Ok(0) => State::Trailer,
                    Ok(n) => State::ChunkData(n + 2),
                    Err(_) => State::Broken,
                }
            }
            State::Trailer => State::Head,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    const TWO: &[u8] =
        b"PUT /v1/blobs/ab HTTP/1.1\r\nhost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n10;name=v\r\n0123456789abcdef\r\n0\r\nx-trailer: 1\r\n\r\n\
        GET /v1/log HTTP/1.1\r\nHost: x\r\ncontent-length: 12\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n";

    #[test]
    fn counts_keep_alive_requests_with_a_chunked_body_however_the_bytes_arrive() {
        let mut c = RequestCounter::default();
        assert_eq!(c.feed(TWO), 2);
        assert!(!c.broken());
        assert_eq!(c.state, State::Head);

        // Byte by byte, and cut at every place.
        let mut c = RequestCounter::default();
        let n: u64 = TWO.iter().map(|b| c.feed(std::slice::from_ref(b))).sum();
        assert_eq!((n, c.requests()), (2, 2));
        for cut in 0..TWO.len() {
            let mut c = RequestCounter::default();
            c.feed(&TWO[..cut]);
            c.feed(&TWO[cut..]);
            assert_eq!(c.requests(), 2, "cut at {cut}");
            assert_eq!(c.state, State::Head, "cut at {cut}");
        }

        // The body's bytes never count as a request; the third does.
        let mut c = RequestCounter::default();
        let mut three = TWO.to_vec();
        three.extend_from_slice(b"HEAD /v1/x HTTP/1.1\r\n\r\n");
        assert_eq!(c.feed(&three), 3);

        // Not HTTP: broken, and counts nothing more.
        let mut c = RequestCounter::default();
        c.feed(b"@RSYNCD: 31.0\n");
        c.feed(&vec![b'x'; MAX_HEAD + 10]);
        assert!(c.broken());
        assert_eq!(c.feed(TWO), 0);
    }

    /// An HTTP-ish echo server: answers every request head with 4 bytes.
    fn answering() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for s in l.incoming().take(4) {
                let mut s = s.unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(i) = find(&seen, b"\r\n\r\n") {
                        seen.drain(..i + 4);
                        let _ = s.write_all(b"pong");
                    }
                }
            }
        });
        url
    }

    #[test]
    fn delays_limits_and_counts_what_crosses() {
        let wan = Wan::start(
            &answering(),
            WanConfig {
                mbit: 1.0,
                rtt: Duration::from_millis(200),
            },
        )
        .unwrap();
        let mut s = std::net::TcpStream::connect(wan.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let t = std::time::Instant::now();
        let req = b"GET / HTTP/1.1\r\n\r\n";
        s.write_all(req).unwrap();
        let mut pong = [0u8; 4];
        s.read_exact(&mut pong).unwrap();
        // One round trip at least (a lower bound only).
        assert!(
            t.elapsed() >= Duration::from_millis(195),
            "{:?}",
            t.elapsed()
        );

        // 100 KB up at 1 Mbit/s (125 KB/s, 16 KiB burst): at least 0.6 s
        // until the answer to the request that follows it.
        let body = vec![b'a'; 100_000];
        let t = std::time::Instant::now();
        let head = format!("PUT /b HTTP/1.1\r\ncontent-length: {}\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        s.write_all(req).unwrap();
        let mut pongs = [0u8; 8];
        s.read_exact(&mut pongs).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
        drop(s);

        let want = Counters {
            up: (2 * req.len() + head.len() + body.len()) as u64,
            down: 12,
            requests: 3,
            connections: 1,
            unparsed: 0,
        };
        // A chunk is counted just after it was written: wait for the last.
        for _ in 0..500 {
            if wan.counters() == want {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(wan.counters(), want);
    }
}
