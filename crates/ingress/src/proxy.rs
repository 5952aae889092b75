//! The HTTP side: listeners (HTTP/1.1 with keep-alive and HTTP/2, cleartext and TLS with ALPN),
//! routing through the current [`RouteTable`], and forwarding over pooled keep-alive HTTP/1.1
//! connections to the chosen endpoint.
//!
//! Every socket this module opens (backend connections included) is created by the thread
//! that runs the proxy runtime, so it lives in that thread's network namespace: the pod's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::pool::{Pool, PooledBody};
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

type Body = Either<PooledBody, Full<Bytes>>;

/// Routes and forwards requests.
pub struct Proxy {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
}

/// How long a backend may take to start its response (nginx's `proxy_read_timeout` default):
/// an endpoint that vanished without a FIN (a deleted pod) must not hold a request forever.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Headers that describe one hop and are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

impl Proxy {
    pub fn new(shared: Arc<Shared>) -> Proxy {
        Proxy {
            shared,
            pool: Arc::new(Pool::default()),
        }
    }

    /// Handles one request from `peer`; `https` tells the listener it came in on.
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        https: bool,
    ) -> Result<Response<Body>, Infallible> {
        if !self.shared.loaded.load(Ordering::Acquire) {
            return Ok(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "ingress gateway: routes not loaded yet\n",
            ));
        }
        // HTTP/1.1 sends Host; HTTP/2 sends :authority (in the URI).
        let host: Option<HeaderValue> = match req.headers().get(header::HOST) {
            Some(h) => Some(h.clone()),
            None => req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        let host_str = host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("");
        let table = self.shared.routes.load();
        let Some(route) = table.route(host_str, req.uri().path()) else {
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
        drop(table);
        // The backend gets origin-form (`/path?query`) over HTTP/1.1.
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let pq = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            match Uri::try_from(pq) {
                Ok(u) => *req.uri_mut() = u,
                Err(_) => return Ok(plain(StatusCode::BAD_REQUEST, "400 bad request path\n")),
            }
        }
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        if let Some(v) = host {
            if !headers.contains_key(header::HOST) {
                headers.insert(header::HOST, v.clone());
            }
            headers.insert(X_FORWARDED_HOST.clone(), v);
        }
        append_forwarded_for(headers, peer);
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if https { "https" } else { "http" }),
        );
        let sent = match tokio::time::timeout(RESPONSE_TIMEOUT, self.pool.send(ep, req)).await {
            Ok(r) => r,
            Err(_) => {
                return Ok(plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "504 gateway timeout: {ep}: no response head within {RESPONSE_TIMEOUT:?}\n"
                    ),
                ));
            }
        };
        match sent {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, Either::Left(body)))
            }
            Err(e) => {
                tracing::debug!(endpoint = %ep, error = %e, "backend request failed");
                Ok(plain(
                    StatusCode::BAD_GATEWAY,
                    &format!("502 bad gateway: {ep}: {e}\n"),
                ))
            }
        }
    }
}

fn plain(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::copy_from_slice(
        body.as_bytes(),
    ))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    if let Some(conn) = h.get(header::CONNECTION) {
        let named: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
}

/// Appends the client address to `X-Forwarded-For`, keeping what earlier proxies wrote.
fn append_forwarded_for(h: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_canonical().to_string();
    let value = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
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
            let svc = hyper::service::service_fn(move |req| {
                let proxy = proxy.clone();
                async move { proxy.handle(req, peer, https).await }
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
