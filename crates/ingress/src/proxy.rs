//! The HTTP side: listeners (HTTP/1.1 with keep-alive and HTTP/2, cleartext and TLS with ALPN),
//! routing through the current [`RouteTable`], and forwarding over pooled keep-alive HTTP/1.1
//! connections to the chosen endpoint ([`crate::client`], in the request's own task).
//!
//! Every socket this module opens (backend connections included) is created by the thread
//! that runs the proxy runtime, so it lives in that thread's network namespace: the pod's.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::client::{self, ProxyBody, RequestBody};
use crate::pool::Pool;
use crate::routes::{Compiled, RouteTable};
use crate::tls::CertTable;

/// What the store side publishes and the proxy reads, swapped whole.
pub struct Shared {
    pub routes: ArcSwap<RouteTable>,
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
    pub fn new(shared: Arc<Shared>) -> Proxy {
        Proxy {
            shared,
            pool: Arc::new(Pool::default()),
        }
    }

    /// The backend connection pool (idle connections per endpoint).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Handles one request from the client at `peer_ip` (as text, for `X-Forwarded-For`);
    /// `https` tells the listener it came in on.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer_ip: &str,
        https: bool,
    ) -> Result<Response<ProxyBody>, Infallible> {
        if !self.shared.loaded.load(Ordering::Acquire) {
            return Ok(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "ingress gateway: routes not loaded yet\n",
            ));
        }
        if req.method() == Method::CONNECT {
            return Ok(plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "405 method not allowed: CONNECT\n",
            ));
        }
        let (parts, body) = req.into_parts();
        // HTTP/1.1 sends Host; HTTP/2 sends :authority (in the URI).
        let host: Option<&[u8]> = match parts.headers.get(header::HOST) {
            Some(h) => Some(h.as_bytes()),
            None => parts.uri.authority().map(|a| a.as_str().as_bytes()),
        };
        let host_str = host.and_then(|h| std::str::from_utf8(h).ok()).unwrap_or("");
        let ep = {
            let table = self.shared.routes.load();
            let Some(route) = table.route(host_str, parts.uri.path()) else {
                return Ok(plain(StatusCode::NOT_FOUND, "404 page not found\n"));
            };
            let Some(ep) = route.backend.pick() else {
                let why = route
                    .backend
                    .problem
                    .as_deref()
                    .unwrap_or("no ready endpoints");
                return Ok(plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("503 service unavailable: {}: {why}\n", route.backend.name),
                ));
            };
            ep
        };
        let kind = RequestBody::of(&parts.headers, &body);
        let mut head = Vec::with_capacity(512);
        client::encode_request(&mut head, &parts, host, peer_ip, https, kind);
        match client::send(&self.pool, ep, &parts.method, &head, body, kind).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                let status = e.status();
                tracing::warn!(
                    endpoint = %ep,
                    host = host_str,
                    path = parts.uri.path(),
                    error = %e,
                    "backend request failed: {}",
                    status.as_u16()
                );
                let what = status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_ascii_lowercase();
                Ok(plain(
                    status,
                    &format!("{} {what}: {ep}: {e}\n", status.as_u16()),
                ))
            }
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

/// Accepts connections on `listener` forever (cleartext, or TLS when `tls` is given), each
/// served by HTTP/1.1 or HTTP/2 as the client speaks (prior knowledge or ALPN).
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, proxy: Arc<Proxy>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
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
        let (proxy, tls, builder) = (proxy.clone(), tls.clone(), builder.clone());
        tokio::spawn(async move {
            let https = tls.is_some();
            let ip: Arc<str> = peer.ip().to_canonical().to_string().into();
            let svc = hyper::service::service_fn(move |req| {
                let (proxy, ip) = (proxy.clone(), ip.clone());
                async move { proxy.handle(req, &ip, https).await }
            });
            let result = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => builder.serve_connection(TokioIo::new(s), svc).await,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "tls handshake failed");
                        return;
                    }
                },
                None => builder.serve_connection(TokioIo::new(stream), svc).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
