//! Keep-alive HTTP/1.1 connections to backend endpoints: plain TCP streams with their read
//! buffer, driven by [`crate::client`] from the request's own task.
//!
//! A connection is taken from the endpoint's idle list (or opened), carries one request, and
//! goes back to the list when its response has been read to the end with nothing left over; a
//! body dropped early (the client went away) or a response the backend delimits by closing
//! takes the connection with it. The hot path is one lock, one `Vec::pop`, one `Vec::push`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Idle connections kept per endpoint at most; more are closed when their response ends.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// An idle connection unused this long is closed (also how connections to endpoints that went
/// away without a FIN, such as a deleted pod, are let go).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often `put` looks for expired idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer per connection; also the largest response head (and chunk-size or trailer
/// line) accepted.
pub const BUF_SIZE: usize = 16 * 1024;

/// A read buffer: bytes read from a stream and not yet consumed. Used for backend
/// connections and for clients' HTTP/1.1 connections alike.
pub struct Buffer {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buffer {
    /// An empty buffer of `size` bytes (normally [`BUF_SIZE`]).
    pub fn new(size: usize) -> Buffer {
        Buffer {
            buf: vec![0u8; size].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Bytes read and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks the first `n` buffered bytes consumed.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Whether no more bytes fit without consuming some.
    pub fn is_full(&self) -> bool {
        self.start == 0 && self.end == self.buf.len()
    }

    /// Reads more from `stream`; Ok(0) is end of stream. Fails when the buffer is full of
    /// unconsumed bytes (a head or line longer than the buffer).
    pub fn poll_fill<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.end == self.buf.len() {
            if self.start == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("head or line longer than {} bytes", self.buf.len()),
                )));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let mut rb = ReadBuf::new(&mut self.buf[self.end..]);
        match Pin::new(stream).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                self.end += n;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// [`Buffer::poll_fill`] as a future.
    pub async fn fill<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(stream, cx)).await
    }
}

/// Runs the I/O future `f`; when it has to wait, for at most `limit` from its first wait
/// (then `TimedOut`). `timer` is the connection's own, re-armed only when `f` blocks, so an
/// operation that completes at once costs no timer work.
pub async fn within<T>(
    timer: &mut Pin<Box<Sleep>>,
    limit: Duration,
    f: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let mut f = std::pin::pin!(f);
    let mut armed = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = f.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if !armed {
            armed = true;
            timer.as_mut().reset(tokio::time::Instant::now() + limit);
        }
        timer.as_mut().poll(cx).map(|()| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no progress in {limit:?}"),
            ))
        })
    })
    .await
}

/// One backend connection: the stream, what was read from it and not yet consumed, and the
/// timer for the response head (one per connection, moved forward per request: moving a
/// registered tokio timer later is an atomic store, not a timer-wheel operation).
pub struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) buf: Buffer,
    pub(crate) timer: Pin<Box<Sleep>>,
}

impl Conn {
    /// Wraps a connected stream (no delay set by the caller).
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Buffer::new(BUF_SIZE),
            timer: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
        }
    }

    /// Bytes read and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        self.buf.buffered()
    }

    /// Marks the first `n` buffered bytes consumed.
    pub fn consume(&mut self, n: usize) {
        self.buf.consume(n);
    }

    /// Reads more into the buffer; Ok(0) is end of stream. Fails when the buffer is full of
    /// unconsumed bytes (a head or line longer than [`BUF_SIZE`]).
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.poll_fill(&mut self.stream, cx)
    }

    /// Whether an idle connection still looks usable: nothing to read (no FIN, no stray
    /// bytes). One non-blocking `recv`.
    fn looks_alive(&mut self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Idle connections by endpoint, most recently used last.
pub struct Pool {
    idle: Mutex<Idle>,
    response_timeout: Duration,
}

struct Idle {
    by_endpoint: HashMap<SocketAddr, Vec<(Conn, Instant)>>,
    last_sweep: Instant,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new(crate::client::RESPONSE_TIMEOUT)
    }
}

/// Why a connection to a backend endpoint could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect failed (refused, unreachable, reset).
    #[error("connect: {0}")]
    Io(io::Error),
    /// The connect did not finish within this time.
    #[error("connect: timed out after {0:?}")]
    Timeout(Duration),
}

impl Pool {
    /// An empty pool whose backends get `response_timeout` to start each response.
    pub fn new(response_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(Idle {
                by_endpoint: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            response_timeout,
        }
    }

    /// How long a backend may take to start its response once the request is sent.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// An idle connection to `ep`, most recently used first. With `probe`, each is checked
    /// for a FIN from the backend first (for requests that must not be retried once sent).
    pub fn take(&self, ep: SocketAddr, probe: bool) -> Option<Conn> {
        loop {
            let mut c = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.by_endpoint.get_mut(&ep)?.pop()?.0
            };
            if !probe || c.looks_alive() {
                return Some(c);
            }
        }
    }

    /// Returns a connection whose response ended cleanly (nothing left in its buffer).
    pub fn put(&self, ep: SocketAddr, c: Conn) {
        if !c.buffered().is_empty() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(idle.last_sweep) >= SWEEP_EVERY {
            idle.last_sweep = now;
            idle.by_endpoint.retain(|_, list| {
                list.retain(|(_, since)| now.duration_since(*since) < IDLE_TIMEOUT);
                !list.is_empty()
            });
        }
        let list = idle.by_endpoint.entry(ep).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push((c, now));
        }
    }

    /// Number of idle connections to `ep`.
    pub fn idle(&self, ep: SocketAddr) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.by_endpoint.get(&ep).map_or(0, Vec::len)
    }

    /// Opens a new connection to `ep` (`TCP_NODELAY` on).
    pub async fn connect(ep: SocketAddr) -> Result<Conn, ConnectError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ep))
            .await
            .map_err(|_| ConnectError::Timeout(CONNECT_TIMEOUT))?
            .map_err(ConnectError::Io)?;
        let _ = stream.set_nodelay(true);
        Ok(Conn::new(stream))
    }
}
