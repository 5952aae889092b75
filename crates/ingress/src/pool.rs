//! Keep-alive HTTP/1.1 connections to backend endpoints.
//!
//! A connection is taken from the endpoint's idle list (or opened), carries one request, and
//! goes back to the list when its response body has been read to the end; a body dropped
//! early (the client went away) takes the connection with it. This is what hyper-util's
//! legacy client does too, minus its per-request task spawn and URI-keyed lookups: the
//! gateway's hot path is one lock, one `Vec::pop`, one request on an open connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle connections kept per endpoint at most; more are closed when their response ends.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// An idle connection unused this long is closed (also how connections to endpoints that went
/// away without a FIN, such as a deleted pod, are let go).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often `put` looks for expired idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect: timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// Idle connections by endpoint, most recently used last.
pub struct Pool {
    idle: Mutex<Idle>,
}

struct Idle {
    by_endpoint: HashMap<SocketAddr, Vec<(SendRequest<Incoming>, Instant)>>,
    last_sweep: Instant,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            idle: Mutex::new(Idle {
                by_endpoint: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }
}

impl Pool {
    fn take(&self, ep: SocketAddr) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.by_endpoint.get_mut(&ep)?;
        while let Some((s, _)) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, ep: SocketAddr, s: SendRequest<Incoming>) {
        if s.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(idle.last_sweep) >= SWEEP_EVERY {
            idle.last_sweep = now;
            idle.by_endpoint.retain(|_, list| {
                list.retain(|(s, since)| {
                    !s.is_closed() && now.duration_since(*since) < IDLE_TIMEOUT
                });
                !list.is_empty()
            });
        }
        let list = idle.by_endpoint.entry(ep).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push((s, now));
        }
    }

    async fn connect(ep: SocketAddr) -> Result<SendRequest<Incoming>, PoolError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ep))
            .await
            .map_err(|_| PoolError::ConnectTimeout(CONNECT_TIMEOUT))?
            .map_err(PoolError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %ep, error = %e, "backend connection ended");
            }
        });
        Ok(send)
    }

    /// Sends `req` (origin-form URI, Host set) to `ep` on an idle connection or a new one. A
    /// request that an idle connection closed under it without sending goes on a fresh one.
    pub async fn send(
        self: &Arc<Self>,
        ep: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<Response<PooledBody>, PoolError> {
        // Idle connections first; each may have been closed by the backend meanwhile.
        while let Some(mut s) = self.take(ep) {
            if s.ready().await.is_err() {
                continue;
            }
            match s.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(ep, s, resp)),
                Err(mut e) => match e.take_message() {
                    // Not sent: try the next connection.
                    Some(r) => req = r,
                    None => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
        let mut s = Self::connect(ep).await?;
        s.ready().await?;
        let resp = s.send_request(req).await?;
        Ok(self.wrap(ep, s, resp))
    }

    fn wrap(
        self: &Arc<Self>,
        ep: SocketAddr,
        s: SendRequest<Incoming>,
        resp: Response<Incoming>,
    ) -> Response<PooledBody> {
        resp.map(|inner| {
            let mut body = PooledBody {
                inner,
                back: Some((self.clone(), ep, s)),
            };
            if body.inner.is_end_stream() {
                body.release();
            }
            body
        })
    }
}

/// A response body that returns its connection to the pool once read to the end.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(Arc<Pool>, SocketAddr, SendRequest<Incoming>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((pool, ep, s)) = self.back.take() {
            pool.put(ep, s);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
