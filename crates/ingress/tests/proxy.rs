//! Tier 0: the proxy on loopback, in process — forwarding with the Host and forwarded-for
//! headers, several requests on one kept-alive connection, 404 and 503, HTTP/2 with prior
//! knowledge, and TLS with the certificate chosen by SNI and ALPN h2.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ingress::routes::{ClassFilter, Snapshot, compile};
use ingress::{Proxy, Shared};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

/// A backend that answers every request with `closer` and `Connection: close`, then closes.
async fn closing_backend() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\ncloser",
                    )
                    .await;
            });
        }
    });
    addr
}

/// A backend answering `name` plus the request line and headers it got; counts the
/// connections it accepted.
async fn backend(name: &'static str, accepted: Arc<AtomicUsize>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let mut body = format!(
                        "{name}\n{} {} {:?}\n",
                        req.method(),
                        req.uri(),
                        req.version()
                    );
                    for (k, v) in req.headers() {
                        body += &format!("{k}: {}\n", v.to_str().unwrap_or("?"));
                    }
                    let got = req.into_body().collect().await.unwrap().to_bytes();
                    body += &format!("body: {}\n", String::from_utf8_lossy(&got));
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

struct Setup {
    http: SocketAddr,
    https: SocketAddr,
    /// Connections the `alpha` backend accepted.
    alpha_conns: Arc<AtomicUsize>,
}

async fn setup() -> Setup {
    let alpha_conns = Arc::new(AtomicUsize::new(0));
    let a = backend("alpha", alpha_conns.clone()).await;
    let b = backend("beta", Arc::new(AtomicUsize::new(0))).await;
    let c = closing_backend().await;
    let mut snap = Snapshot {
        ingresses: vec![ingress(
            "default",
            "gw",
            json!({
                "tls": [{"hosts": ["foo.bar.com"], "secretName": "foo"},
                        {"hosts": ["*.foo.com"], "secretName": "wild"}],
                "rules": [
                    rule(Some("foo.bar.com"), vec![path("Prefix", "/", be("alpha", 80))]),
                    rule(Some("*.foo.com"), vec![path("Prefix", "/", be("beta", 80))]),
                    rule(Some("idle.test"), vec![path("Prefix", "/", be("idle", 80))]),
                    rule(Some("close.test"), vec![path("Prefix", "/", be("closer", 80))]),
                ]
            }),
        )],
        ..Default::default()
    };
    for (name, addr) in [("alpha", a), ("beta", b), ("closer", c)] {
        snap.services.push(service("default", name, 80, None));
        snap.slices.push(slice(
            "default",
            name,
            None,
            addr.port(),
            &[("127.0.0.1", true)],
        ));
    }
    snap.services.push(service("default", "idle", 80, None));
    snap.secrets.push(tls_secret(
        "default",
        "foo",
        &fixture("foo.bar.com.crt"),
        &fixture("foo.bar.com.key"),
    ));
    snap.secrets.push(tls_secret(
        "default",
        "wild",
        &fixture("wildcard.foo.com.crt"),
        &fixture("wildcard.foo.com.key"),
    ));
    let compiled = compile(&snap, &ClassFilter::default());
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
    let shared = Arc::new(Shared::default());
    shared.publish(compiled);
    let proxy = Arc::new(Proxy::new(shared.clone()));
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = Setup {
        http: http.local_addr().unwrap(),
        https: https.local_addr().unwrap(),
        alpha_conns,
    };
    tokio::spawn(ingress::proxy::serve(http, None, proxy.clone()));
    let tls = ingress::tls::server_config(shared.certs.clone()).unwrap();
    tokio::spawn(ingress::proxy::serve(
        https,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))),
        proxy,
    ));
    s
}

fn get(host: &str, path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .header("x-forwarded-for", "192.0.2.7")
        .body(Empty::new())
        .unwrap()
}

async fn text(r: Response<Incoming>) -> (u16, String) {
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http1_keep_alive_forwards_with_host_and_forwarded_headers() {
    let s = setup().await;
    let stream = TcpStream::connect(s.http).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    // Several requests on this one connection.
    let (code, body) = text(
        send.send_request(get("foo.bar.com", "/a?x=1"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 200);
    assert!(body.starts_with("alpha\nGET /a?x=1 HTTP/1.1\n"), "{body}");
    assert!(body.contains("host: foo.bar.com\n"), "{body}");
    assert!(
        body.contains("x-forwarded-for: 192.0.2.7, 127.0.0.1\n"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    let (code, body) = text(send.send_request(get("x.foo.com:80", "/")).await.unwrap()).await;
    assert_eq!(code, 200);
    assert!(body.starts_with("beta\n"), "{body}");
    assert!(body.contains("host: x.foo.com:80\n"), "{body}");
    let (code, _) = text(send.send_request(get("nobody.test", "/")).await.unwrap()).await;
    assert_eq!(code, 404);
    let (code, body) = text(send.send_request(get("idle.test", "/")).await.unwrap()).await;
    assert_eq!(code, 503);
    assert!(
        body.contains("default/idle:80: no ready endpoints"),
        "{body}"
    );
    // Still the same connection.
    let (code, _) = text(send.send_request(get("foo.bar.com", "/")).await.unwrap()).await;
    assert_eq!(code, 200);
    // The backend side is kept alive too: 20 more requests, still one backend connection.
    for _ in 0..20 {
        let (code, _) = text(send.send_request(get("foo.bar.com", "/")).await.unwrap()).await;
        assert_eq!(code, 200);
    }
    assert_eq!(s.alpha_conns.load(Ordering::SeqCst), 1);
    // A request body is forwarded.
    let post = Request::builder()
        .method("POST")
        .uri("/form")
        .header("host", "foo.bar.com")
        .body(Full::new(Bytes::from_static(b"a=1&b=2")))
        .unwrap();
    let stream = TcpStream::connect(s.http).await.unwrap();
    let (mut send2, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (code, body) = text(send2.send_request(post).await.unwrap()).await;
    assert_eq!(code, 200);
    assert!(body.starts_with("alpha\nPOST /form HTTP/1.1\n"), "{body}");
    assert!(body.contains("body: a=1&b=2\n"), "{body}");
    // A backend that closes after each response: every request still gets through.
    for _ in 0..3 {
        let (code, body) = text(send.send_request(get("close.test", "/")).await.unwrap()).await;
        assert_eq!((code, body.as_str()), (200, "closer"));
    }
}

#[tokio::test]
async fn http2_prior_knowledge_on_the_cleartext_port() {
    let s = setup().await;
    let stream = TcpStream::connect(s.http).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("http://bar.foo.com/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let (code, body) = text(resp).await;
    assert_eq!(code, 200);
    // The backend gets HTTP/1.1 with a Host header made from :authority.
    assert!(body.starts_with("beta\nGET /h2 HTTP/1.1\n"), "{body}");
    assert!(body.contains("host: bar.foo.com\n"), "{body}");
}

/// Accepts any certificate and remembers the one the server showed.
#[derive(Debug)]
struct Record(Mutex<Vec<Vec<u8>>>);

impl rustls::client::danger::ServerCertVerifier for Record {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.0.lock().unwrap().push(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn der_of(pem_file: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(&fixture(pem_file))
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn tls_picks_the_certificate_by_sni_and_negotiates_h2() {
    let s = setup().await;
    let record = Arc::new(Record(Mutex::new(Vec::new())));
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(record.clone())
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    for (sni, pem, app) in [
        ("foo.bar.com", "foo.bar.com.crt", "alpha"),
        ("www.foo.com", "wildcard.foo.com.crt", "beta"),
    ] {
        let tcp = TcpStream::connect(s.https).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(
            record.0.lock().unwrap().pop().unwrap(),
            der_of(pem),
            "certificate for {sni}"
        );
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(format!("https://{sni}/"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (code, body) = text(send.send_request(req).await.unwrap()).await;
        assert_eq!(code, 200);
        assert!(body.starts_with(&format!("{app}\n")), "{body}");
        assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    }
    // A name no certificate covers (and no default certificate): the handshake fails.
    let tcp = TcpStream::connect(s.https).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("other.test".to_string()).unwrap();
    assert!(connector.connect(name, tcp).await.is_err());
}
