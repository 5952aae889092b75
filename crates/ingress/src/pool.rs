//! Keep-alive HTTP/1.1 connections to backend endpoints.
//!
//! A connection is taken from the endpoint's idle list (or opened), carries one request, and
//! goes back to the list when its response body has been read to the end; a body dropped
//! early (the client went away) takes the connection with it. Unlike hyper-util's legacy
//! client, a connection has no task of its own: hyper's connection future is polled by the
//! task serving the client's request (while sending, and from the response body), so a
//! proxied request costs no task switch and no per-request spawn. Idle connections are not
//! polled; one the backend closed meanwhile is noticed and dropped at its next use.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle connections kept per endpoint at most; more are closed when their response ends.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect: timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("connection closed before the request could be sent")]
    Closed,
}

/// One backend connection: the request handle and the connection future that does its IO.
pub struct Conn {
    send: SendRequest<Incoming>,
    io: Connection<TokioIo<TcpStream>, Incoming>,
    /// The connection future has finished (closed): never reuse.
    done: bool,
}

impl Conn {
    /// Drives the connection's IO; notes when it has ended.
    fn poll_io(&mut self, cx: &mut Context<'_>) {
        if !self.done && Pin::new(&mut self.io).poll(cx).is_ready() {
            self.done = true;
        }
    }

    fn reusable(&self) -> bool {
        !self.done && !self.send.is_closed()
    }

    /// Waits until the connection takes a request; false when it is closed.
    async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            self.poll_io(cx);
            match self.send.poll_ready(cx) {
                Poll::Ready(r) => Poll::Ready(r.is_ok() && !self.done),
                Poll::Pending if self.done => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Sends `req`, driving the IO until the response head is in. On an error, the request
    /// comes back if it was not sent.
    async fn send(
        &mut self,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, (hyper::Error, Option<Request<Incoming>>)> {
        let Conn { send, io, done } = self;
        let mut fut = std::pin::pin!(send.try_send_request(req));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            if !*done && Pin::new(&mut *io).poll(cx).is_ready() {
                *done = true;
                // The dispatcher is gone: the request future resolves now.
                return fut.as_mut().poll(cx);
            }
            Poll::Pending
        })
        .await
        .map_err(|mut e| {
            let req = e.take_message();
            (e.into_error(), req)
        })
    }
}

/// Idle connections by endpoint.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
}

impl Pool {
    fn take(&self, ep: SocketAddr) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&ep)?;
        while let Some(c) = list.pop() {
            if c.reusable() {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, ep: SocketAddr, c: Conn) {
        if !c.reusable() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(ep).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(c);
        }
    }

    async fn connect(ep: SocketAddr) -> Result<Conn, PoolError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ep))
            .await
            .map_err(|_| PoolError::ConnectTimeout(CONNECT_TIMEOUT))?
            .map_err(PoolError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (send, io) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        Ok(Conn {
            send,
            io,
            done: false,
        })
    }

    /// Sends `req` (origin-form URI, Host set) to `ep` on an idle connection or a new one. A
    /// request that an idle connection closed under it without sending goes on a fresh one.
    pub async fn send(
        self: &Arc<Self>,
        ep: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Result<Response<PooledBody>, PoolError> {
        // Idle connections first; each may have been closed by the backend meanwhile.
        while let Some(mut c) = self.take(ep) {
            if !c.ready().await {
                continue;
            }
            match c.send(req).await {
                Ok(resp) => return Ok(self.wrap(ep, c, resp)),
                Err((_, Some(r))) => req = r,
                Err((e, None)) => return Err(PoolError::Http(e)),
            }
        }
        let mut c = Self::connect(ep).await?;
        if !c.ready().await {
            return Err(PoolError::Closed);
        }
        match c.send(req).await {
            Ok(resp) => Ok(self.wrap(ep, c, resp)),
            Err((e, _)) => Err(PoolError::Http(e)),
        }
    }

    fn wrap(
        self: &Arc<Self>,
        ep: SocketAddr,
        c: Conn,
        resp: Response<Incoming>,
    ) -> Response<PooledBody> {
        resp.map(|inner| {
            let mut body = PooledBody {
                inner,
                conn: Some(c),
                pool: self.clone(),
                ep,
            };
            if body.inner.is_end_stream() {
                body.release();
            }
            body
        })
    }
}

/// A response body that drives its connection and returns it to the pool once read to the end.
pub struct PooledBody {
    inner: Incoming,
    conn: Option<Conn>,
    pool: Arc<Pool>,
    ep: SocketAddr,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.put(self.ep, c);
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
        if let Some(c) = self.conn.as_mut() {
            c.poll_io(cx);
        }
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.conn = None,
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
