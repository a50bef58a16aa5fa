//! A TCP proxy on loopback that cuts connections on request: the cut
//! network of the fault tests.
//!
//! It listens on 127.0.0.1:0 and forwards every connection to a target that
//! can change while it runs ([`Proxy::set_target`], for a server restarted
//! on another port). It counts the bytes it forwards each way, so a test can
//! assert how many crossed, and it can cut ([`Proxy::cut_next`]) or hold
//! ([`Proxy::hold_next`]) the next connections that reach a given number of
//! bytes in one direction. It runs on its own small tokio runtime, so the
//! (synchronous) tests drive it with plain method calls.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A direction of the traffic through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the target: requests, uploads.
    Up,
    /// From the target to the client: answers, downloads.
    Down,
}

/// What happens to a connection that reaches the rule's byte count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Cut,
    Hold,
}

#[derive(Clone, Copy, Debug)]
struct Rule {
    /// How many more connections it applies to.
    remaining: u32,
    after_bytes: u64,
    direction: Direction,
    action: Action,
}

#[derive(Debug)]
struct Shared {
    target: Mutex<SocketAddr>,
    up: AtomicU64,
    down: AtomicU64,
    cuts: AtomicU64,
    holds: AtomicU64,
    connections: AtomicU64,
    rule: Mutex<Option<Rule>>,
    release: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn counter(&self, d: Direction) -> &AtomicU64 {
        match d {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    /// Whether a connection that has moved `done` bytes in `d` and is
    /// about to move `n` more must stop, and where: takes one use of the
    /// rule when it applies.
    fn stop_point(&self, d: Direction, done: u64, n: u64) -> Option<(u64, Action)> {
        let mut rule = self.rule.lock().expect("not poisoned");
        let r = rule.as_mut()?;
        if r.direction != d || r.remaining == 0 || done + n <= r.after_bytes {
            return None;
        }
        r.remaining -= 1;
        let stop = (r.after_bytes.saturating_sub(done), r.action);
        if r.remaining == 0 {
            *rule = None;
        }
        Some(stop)
    }
}

/// A running proxy; it stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

/// `http://127.0.0.1:1234/…` or `127.0.0.1:1234` → the socket address.
fn parse_addr(target: &str) -> Result<SocketAddr> {
    crate::socket_addr_of(target)
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1:0 forwarding to `target`
    /// (`http://IP:PORT` or `IP:PORT`).
    pub fn start(target: &str) -> Result<Self> {
        let target = parse_addr(target)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            holds: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            rule: Mutex::new(None),
            release: tokio::sync::watch::channel(0).0,
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

    /// The proxy's address, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends new connections to `target` from now on.
    pub fn set_target(&self, target: &str) -> Result<()> {
        *self.shared.target.lock().expect("not poisoned") = parse_addr(target)?;
        Ok(())
    }

    /// Cuts the next `connections` connections that move more than
    /// `after_bytes` bytes in `direction` (counted from each connection's
    /// start), right after their first `after_bytes`. Replaces any rule set
    /// before.
    pub fn cut_next(&self, connections: u32, after_bytes: u64, direction: Direction) {
        self.set_rule(connections, after_bytes, direction, Action::Cut);
    }

    /// Like [`Proxy::cut_next`] for one connection, which is held open
    /// after its first `after_bytes` (nothing more moves that way) until
    /// [`Proxy::release`] cuts it.
    pub fn hold_next(&self, after_bytes: u64, direction: Direction) {
        self.set_rule(1, after_bytes, direction, Action::Hold);
    }

    fn set_rule(&self, connections: u32, after_bytes: u64, direction: Direction, action: Action) {
        *self.shared.rule.lock().expect("not poisoned") = (connections > 0).then_some(Rule {
            remaining: connections,
            after_bytes,
            direction,
            action,
        });
    }

    /// Cuts the connections held by [`Proxy::hold_next`].
    pub fn release(&self) {
        self.shared.release.send_modify(|g| *g += 1);
    }

    /// The bytes forwarded in `direction` so far, over every connection.
    pub fn bytes(&self, direction: Direction) -> u64 {
        self.shared.counter(direction).load(Ordering::SeqCst)
    }

    /// How many connections were cut so far (held ones count once released).
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// How many connections were held so far.
    pub fn holds(&self) -> u64 {
        self.shared.holds.load(Ordering::SeqCst)
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

/// Forwards one client connection until either side closes or a rule
/// stops it; then both sides are closed.
async fn forward(client: TcpStream, shared: Arc<Shared>) {
    shared.connections.fetch_add(1, Ordering::SeqCst);
    let target = *shared.target.lock().expect("not poisoned");
    // Nothing listens there (a server being restarted): the client sees
    // its connection closed, as with a real cut.
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client_r, mut client_w) = client.into_split();
    let (mut up_r, mut up_w) = upstream.into_split();
    let cut = tokio::select! {
        c = pump(&mut client_r, &mut up_w, Direction::Up, &shared) => c,
        c = pump(&mut up_r, &mut client_w, Direction::Down, &shared) => c,
    };
    if cut {
        shared.cuts.fetch_add(1, Ordering::SeqCst);
    }
    // A FIN after what was forwarded, then both sockets close.
    let _ = client_w.shutdown().await;
    let _ = up_w.shutdown().await;
}

/// Copies `from` to `to`, counting. Returns true when a rule cut it.
async fn pump(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    d: Direction,
    shared: &Shared,
) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let (n, stop) = match shared.stop_point(d, done, n as u64) {
            Some((at, action)) => (at as usize, Some(action)),
            None => (n, None),
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
        let _ = to.flush().await;
        done += n as u64;
        shared.counter(d).fetch_add(n as u64, Ordering::SeqCst);
        match stop {
            None => {}
            Some(Action::Cut) => return true,
            Some(Action::Hold) => {
                let mut released = shared.release.subscribe();
                shared.holds.fetch_add(1, Ordering::SeqCst);
                let _ = released.changed().await;
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// A server that sends `len` bytes to every connection, then closes.
    fn source(len: usize) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for s in l.incoming().take(10) {
                let _ = s.unwrap().write_all(&vec![7u8; len]);
            }
        });
        url
    }

    fn read_all(url: &str) -> Vec<u8> {
        let mut s = std::net::TcpStream::connect(parse_addr(url).unwrap()).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }

    #[test]
    fn cuts_the_next_connections_after_n_bytes_and_counts_what_crossed() {
        let proxy = Proxy::start(&source(100_000)).unwrap();
        proxy.cut_next(2, 30_000, Direction::Down);
        assert_eq!(read_all(&proxy.url()).len(), 30_000);
        assert_eq!(read_all(&proxy.url()).len(), 30_000);
        assert_eq!(read_all(&proxy.url()).len(), 100_000);
        assert_eq!(proxy.cuts(), 2);
        assert_eq!(proxy.bytes(Direction::Down), 160_000);
        assert_eq!(proxy.bytes(Direction::Up), 0);

        // A new target for new connections.
        proxy.set_target(&source(5)).unwrap();
        assert_eq!(read_all(&proxy.url()).len(), 5);

        proxy.hold_next(3, Direction::Down);
        let url = proxy.url();
        let reader = std::thread::spawn(move || read_all(&url));
        for _ in 0..3000 {
            if proxy.holds() > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(proxy.holds(), 1);
        proxy.release();
        assert_eq!(reader.join().unwrap().len(), 3);
        assert_eq!(proxy.cuts(), 3);
    }
}
