//! The HTTP side: listeners (cleartext and TLS with ALPN), routing through the current
//! [`RouteTable`], and the HTTP/2 server (hyper) forwarding over pooled keep-alive HTTP/1.1
//! connections to the chosen endpoint ([`crate::client`], in the request's own task).
//! HTTP/1.x connections are served by [`crate::h1`].
//!
//! Every socket this module opens (backend connections included) is created by the thread
//! that runs the proxy runtime, so it lives in that thread's network namespace: the pod's.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http2;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::client::{self, ClientError, ProxyBody, RequestBody};
use crate::h1;
use crate::pool::{BUF_SIZE, Buffer, Pool};
use crate::routes::{Compiled, RouteTable};
use crate::tls::CertTable;

/// What the store side publishes and the proxy reads, swapped whole.
pub struct Shared {
    /// The compiled route table.
    pub routes: ArcSwap<RouteTable>,
    /// The certificates by SNI name; shared with the TLS acceptor's resolver
    /// ([`crate::tls::server_config`]).
    pub certs: Arc<ArcSwap<CertTable>>,
    /// False until the first table from the store is in place (requests get 503 until then).
    pub loaded: AtomicBool,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            routes: ArcSwap::from_pointee(RouteTable::default()),
            certs: Arc::new(ArcSwap::from_pointee(CertTable::default())),
            loaded: AtomicBool::new(false),
        }
    }
}

impl Shared {
    /// Puts a freshly compiled table in place; requests already routed keep the old one.
    pub fn publish(&self, c: Compiled) {
        self.routes.store(Arc::new(c.routes));
        self.certs.store(Arc::new(c.certs));
        self.loaded.store(true, Ordering::Release);
    }
}

/// Routes and forwards requests.
pub struct Proxy {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
}

impl Proxy {
    /// A proxy over `shared` with a default pool (backend response timeout
    /// [`client::RESPONSE_TIMEOUT`]).
    pub fn new(shared: Arc<Shared>) -> Proxy {
        Proxy::with_pool(shared, Pool::default())
    }

    /// A proxy forwarding through `pool` (for a response timeout other than the default).
    pub fn with_pool(shared: Arc<Shared>, pool: Pool) -> Proxy {
        Proxy {
            shared,
            pool: Arc::new(pool),
        }
    }

    /// The backend connection pool (idle connections per endpoint).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Where a request goes: the chosen endpoint, or the status and text to answer with.
    pub fn pick(&self, method: &Method, host: &str, path: &str) -> Result<SocketAddr, Reject> {
        if !self.shared.loaded.load(Ordering::Acquire) {
            return Err(Reject::of(
                StatusCode::SERVICE_UNAVAILABLE,
                "ingress gateway: routes not loaded yet\n",
            ));
        }
        if *method == Method::CONNECT {
            return Err(Reject::of(
                StatusCode::METHOD_NOT_ALLOWED,
                "405 method not allowed: CONNECT\n",
            ));
        }
        let table = self.shared.routes.load();
        let Some(route) = table.route(host, path) else {
            return Err(Reject::of(StatusCode::NOT_FOUND, "404 page not found\n"));
        };
        route.backend.pick().ok_or_else(|| {
            let why = route
                .backend
                .problem
                .as_deref()
                .unwrap_or("no ready endpoints");
            Reject {
                status: StatusCode::SERVICE_UNAVAILABLE,
                text: format!("503 service unavailable: {}: {why}\n", route.backend.name).into(),
            }
        })
    }

    /// Handles one HTTP/2 request from the client at `peer_ip` (as text, for
    /// `X-Forwarded-For`); `https` tells the listener it came in on.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer_ip: &str,
        https: bool,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let (parts, body) = req.into_parts();
        // HTTP/2 sends :authority (in the URI); Host only from HTTP/1 translations.
        let host: Option<&[u8]> = match parts.headers.get(header::HOST) {
            Some(h) => Some(h.as_bytes()),
            None => parts.uri.authority().map(|a| a.as_str().as_bytes()),
        };
        if host.is_some_and(|h| !h1::valid_host(h)) {
            return Ok(plain(StatusCode::BAD_REQUEST, "400 bad request: host\n"));
        }
        let host_str = host.and_then(|h| std::str::from_utf8(h).ok()).unwrap_or("");
        let ep = match self.pick(&parts.method, host_str, parts.uri.path()) {
            Ok(ep) => ep,
            Err(r) => return Ok(plain(r.status, &r.text)),
        };
        // The forwarded head carries the gateway's one Content-Length, never the client's
        // fields (whose values must all agree, RFC 9110 §8.6).
        let mut length = None;
        for v in parts.headers.get_all(header::CONTENT_LENGTH) {
            if let Err(e) = client::content_length(v.as_bytes(), &mut length) {
                return Ok(plain(
                    StatusCode::BAD_REQUEST,
                    &format!("400 bad request: {e}\n"),
                ));
            }
        }
        let kind = RequestBody::of(length, &body);
        let mut head = Vec::with_capacity(512);
        let fields: Vec<(&str, &[u8])> = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let fw = client::Forward {
            host,
            peer: peer_ip,
            https,
            body: kind,
            transfer_encoding: b"chunked",
            upgrade: None,
        };
        client::encode_request(
            &mut head,
            parts.method.as_str(),
            target,
            fields.iter().copied(),
            &fw,
        );
        match client::send(&self.pool, ep, &parts.method, &head, body, kind).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                let r = Reject::failed(ep, host_str, parts.uri.path(), &e);
                Ok(plain(r.status, &r.text))
            }
        }
    }
}

/// A request the gateway answers itself: no route, no endpoint, a backend that failed.
#[derive(Debug)]
pub struct Reject {
    /// The status to answer with: 404 without a route, 503 without a ready endpoint, 502 or 504
    /// when the backend failed.
    pub status: StatusCode,
    /// The plain-text body, one line ending in `\n`, saying why.
    pub text: Cow<'static, str>,
}

impl Reject {
    fn of(status: StatusCode, text: &'static str) -> Reject {
        Reject {
            status,
            text: text.into(),
        }
    }

    /// The answer to a request whose exchange with backend `ep` failed (logged here).
    pub fn failed(ep: SocketAddr, host: &str, path: &str, e: &ClientError) -> Reject {
        let status = e.status();
        tracing::warn!(
            endpoint = %ep,
            host,
            path,
            error = %e,
            "backend request failed: {}",
            status.as_u16()
        );
        let what = status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase();
        Reject {
            status,
            text: format!("{} {what}: {ep}: {e}\n", status.as_u16()).into(),
        }
    }
}

fn plain(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Accepts connections on `listener` forever (cleartext, or TLS when `tls` is given). A
/// connection speaks HTTP/2 when TLS negotiated `h2` or a cleartext client opens with the
/// HTTP/2 preface (prior knowledge; served by hyper); everything else is HTTP/1.x, served by
/// [`crate::h1`].
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, proxy: Arc<Proxy>) {
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new());
    let h2 = Arc::new(h2);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: keep serving what is open.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (proxy, tls, h2) = (proxy.clone(), tls.clone(), h2.clone());
        tokio::spawn(async move {
            let ip: Arc<str> = peer.ip().to_canonical().to_string().into();
            let Some(acceptor) = tls else {
                let buf = Buffer::new(BUF_SIZE);
                if let Some((stream, pre)) = h1::serve(stream, buf, &proxy, &ip, false, true).await
                {
                    serve_h2(&h2, Rewind { pre, stream }, proxy, ip, false).await;
                }
                return;
            };
            let stream = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "tls handshake failed");
                    return;
                }
            };
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve_h2(&h2, stream, proxy, ip, true).await;
            } else {
                h1::serve(stream, Buffer::new(BUF_SIZE), &proxy, &ip, true, false).await;
            }
        });
    }
}

/// Serves one HTTP/2 connection with hyper, each request through [`Proxy::handle`].
async fn serve_h2<I>(
    builder: &http2::Builder<TokioExecutor>,
    io: I,
    proxy: Arc<Proxy>,
    ip: Arc<str>,
    https: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let (proxy, ip) = (proxy.clone(), ip.clone());
        async move { proxy.handle(req, &ip, https).await }
    });
    if let Err(e) = builder.serve_connection(TokioIo::new(io), svc).await {
        tracing::debug!(error = %e, "http/2 connection ended with an error");
    }
}

/// A stream whose first bytes were already read (into `pre`) and are read again first.
struct Rewind<S> {
    pre: Buffer,
    stream: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let pre = this.pre.buffered();
        if pre.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, out);
        }
        let n = pre.len().min(out.remaining());
        out.put_slice(&pre[..n]);
        this.pre.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
