//! Tier 0: the backend client through the whole gateway, against scripted raw-TCP backends —
//! chunked and long Content-Length responses, HEAD, 204/304, `Connection: close`, a pooled
//! connection the backend closed (retried for idempotent requests, probed for the others),
//! request bodies by length and chunked, and malformed responses (502).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::scripted::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

async fn client<B>(gw: SocketAddr) -> SendRequest<B>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(gw).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn req(method: &str, path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "b.test")
        .body(Empty::new())
        .unwrap()
}

async fn text(r: Response<Incoming>) -> (u16, String) {
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn chunked_response_in_pieces_then_the_connection_is_reused() {
    let b = backend(Arc::new(|_, _, _| {
        answer(
            &[
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n4\r\nWi",
                b"ki\r\n5;x=y\r\npedia\r\n",
                b"0\r\nX-Trailer: 1\r\n\r\n",
            ],
            false,
        )
    }))
    .await;
    let (gw, proxy) = gateway(b.addr).await;
    let mut c = client(gw).await;
    for _ in 0..3 {
        let r = c.send_request(req("GET", "/")).await.unwrap();
        assert!(r.headers().get("content-length").is_none(), "{r:?}");
        assert_eq!(text(r).await, (200, "Wikipedia".to_string()));
    }
    assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(proxy.pool().idle(b.addr), 1);
}

#[tokio::test]
async fn long_content_length_body_streams_and_is_reused() {
    let body: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let resp = [
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes(),
        body.clone(),
    ]
    .concat();
    let b = backend(Arc::new(move |_, _, _| Answer {
        pieces: vec![resp[..1000].to_vec(), resp[1000..].to_vec()],
        close: false,
    }))
    .await;
    let (gw, _) = gateway(b.addr).await;
    let mut c = client(gw).await;
    for _ in 0..2 {
        let r = c.send_request(req("GET", "/big")).await.unwrap();
        assert_eq!(
            r.headers().get("content-length").unwrap(),
            &body.len().to_string()
        );
        let got = r.into_body().collect().await.unwrap().to_bytes();
        assert!(got == body, "body differs ({} bytes)", got.len());
    }
    assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn head_204_and_304_have_no_body_and_keep_the_connection() {
    let b = backend(Arc::new(|_, _, raw: &str| {
        if raw.starts_with("HEAD ") {
            answer(&[b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"], false)
        } else if raw.starts_with("GET /204 ") {
            answer(&[b"HTTP/1.1 204 No Content\r\n\r\n"], false)
        } else if raw.starts_with("GET /304 ") {
            answer(
                &[b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 5\r\n\r\n"],
                false,
            )
        } else {
            answer(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], false)
        }
    }))
    .await;
    let (gw, _) = gateway(b.addr).await;
    let mut c = client(gw).await;
    let r = c.send_request(req("HEAD", "/")).await.unwrap();
    assert_eq!(r.headers().get("content-length").unwrap(), "1000");
    assert_eq!(text(r).await, (200, String::new()));
    assert_eq!(
        text(c.send_request(req("GET", "/204")).await.unwrap()).await,
        (204, String::new())
    );
    let r = c.send_request(req("GET", "/304")).await.unwrap();
    assert_eq!(r.headers().get("etag").unwrap(), "\"x\"");
    assert_eq!(text(r).await, (304, String::new()));
    assert_eq!(
        text(c.send_request(req("GET", "/")).await.unwrap()).await,
        (200, "ok".to_string())
    );
    // All four on one backend connection: nothing waited for a body that never came.
    assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn connection_close_and_close_delimited_bodies_use_a_new_connection_each() {
    let b = backend(Arc::new(|_, _, raw: &str| {
        if raw.starts_with("GET /eof ") {
            // No length at all: the body ends when the backend closes.
            answer(&[b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"close"], true)
        } else {
            answer(
                &[b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 6\r\n\r\ncloser"],
                true,
            )
        }
    }))
    .await;
    let (gw, proxy) = gateway(b.addr).await;
    let mut c = client(gw).await;
    for _ in 0..2 {
        let r = c.send_request(req("GET", "/")).await.unwrap();
        assert!(r.headers().get("connection").is_none());
        assert_eq!(text(r).await, (200, "closer".to_string()));
        let r = c.send_request(req("GET", "/eof")).await.unwrap();
        assert_eq!(text(r).await, (200, "until close".to_string()));
    }
    assert_eq!(b.accepted.load(Ordering::SeqCst), 4);
    assert_eq!(proxy.pool().idle(b.addr), 0);
}

#[tokio::test]
async fn pooled_connection_closed_by_the_backend_is_replaced() {
    // Every connection answers one request with keep-alive, then the backend closes it (an
    // idle timeout shorter than the gap between requests).
    let b = backend(Arc::new(|_, _, _| {
        answer(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], true)
    }))
    .await;
    let (gw, _) = gateway(b.addr).await;
    let mut c = client(gw).await;
    for method in ["GET", "POST", "GET", "DELETE", "POST"] {
        tokio::time::sleep(Duration::from_millis(20)).await; // the FIN arrives meanwhile
        let r = c.send_request(req(method, "/")).await.unwrap();
        assert_eq!(text(r).await, (200, "ok".to_string()), "{method}");
    }
    assert_eq!(b.accepted.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn request_that_meets_a_closing_connection_is_retried_only_if_idempotent() {
    // The first connection answers one request, then closes on the next one without an
    // answer (the backend's idle timeout racing the request); later connections answer all.
    let b = backend(Arc::new(|conn, nth, _| {
        if conn == 0 && nth == 1 {
            answer(&[], true)
        } else {
            answer(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], false)
        }
    }))
    .await;
    let (gw, _) = gateway(b.addr).await;
    let mut c = client(gw).await;
    assert_eq!(
        text(c.send_request(req("GET", "/")).await.unwrap()).await,
        (200, "ok".to_string())
    );
    // GET meets the closing connection and goes again on a new one.
    assert_eq!(
        text(c.send_request(req("GET", "/again")).await.unwrap()).await,
        (200, "ok".to_string())
    );
    assert_eq!(b.accepted.load(Ordering::SeqCst), 2);
    let seen: Vec<String> = b.requests.lock().unwrap().clone();
    assert_eq!(
        seen.iter().filter(|r| r.starts_with("GET /again ")).count(),
        2
    );

    // Same race for a POST: it reached the backend, so it is not sent twice -> 502.
    let b = backend(Arc::new(|conn, nth, _| {
        if conn == 0 && nth == 1 {
            answer(&[], true)
        } else {
            answer(&[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], false)
        }
    }))
    .await;
    let (gw, _) = gateway(b.addr).await;
    let mut c = client(gw).await;
    assert_eq!(
        text(c.send_request(req("GET", "/")).await.unwrap()).await.0,
        200
    );
    let (code, body) = text(c.send_request(req("POST", "/once")).await.unwrap()).await;
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains("connection closed before a response"),
        "{body}"
    );
    assert_eq!(b.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn request_bodies_by_length_and_chunked() {
    let b = backend(Arc::new(|_, _, _| {
        answer(&[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], false)
    }))
    .await;
    let (gw, _) = gateway(b.addr).await;
    let mut c = client(gw).await;
    let post = Request::builder()
        .method("POST")
        .uri("/len")
        .header("host", "b.test")
        .body(Full::new(Bytes::from_static(b"a=1&b=2")))
        .unwrap();
    assert_eq!(text(c.send_request(post).await.unwrap()).await.0, 200);
    // A body of unknown length: the client sends it chunked, and so does the gateway.
    let put = Request::builder()
        .method("PUT")
        .uri("/chunked")
        .header("host", "b.test")
        .body(Frames(vec![
            Bytes::from_static(b"hello "),
            Bytes::from_static(b"world"),
        ]))
        .unwrap();
    let mut c2 = client(gw).await;
    assert_eq!(text(c2.send_request(put).await.unwrap()).await.0, 200);
    let seen = b.requests.lock().unwrap().clone();
    let len = seen.iter().find(|r| r.starts_with("POST /len ")).unwrap();
    assert!(len.contains("content-length: 7\r\n"), "{len}");
    assert!(len.ends_with("\r\n\r\na=1&b=2"), "{len}");
    let ch = seen
        .iter()
        .find(|r| r.starts_with("PUT /chunked "))
        .unwrap();
    assert!(ch.contains("transfer-encoding: chunked\r\n"), "{ch}");
    let body = &ch[ch.find("\r\n\r\n").unwrap() + 4..];
    let decoded: String = body
        .split("\r\n")
        .collect::<Vec<_>>()
        .chunks(2)
        .filter(|p| p.len() == 2)
        .map(|p| p[1])
        .collect();
    assert_eq!(decoded, "hello world", "{body:?}");
}

/// A request body of these frames, length not announced (so it goes chunked).
struct Frames(Vec<Bytes>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = (!self.0.is_empty()).then(|| Ok(Frame::data(self.0.remove(0))));
        std::task::Poll::Ready(next)
    }
}

#[tokio::test]
async fn malformed_responses_are_502() {
    let b = backend(Arc::new(|_, _, raw: &str| {
        if raw.starts_with("GET /garbage ") {
            answer(&[b"SMTP READY\r\n\r\n"], true)
        } else {
            answer(
                &[b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"],
                true,
            )
        }
    }))
    .await;
    let (gw, _) = gateway(b.addr).await;
    let mut c = client(gw).await;
    for (path, why) in [
        ("/garbage", "invalid response"),
        ("/lengths", "conflicting content-length"),
    ] {
        let (code, body) = text(c.send_request(req("GET", path)).await.unwrap()).await;
        assert_eq!(code, 502, "{path}: {body}");
        assert!(body.contains(why), "{path}: {body}");
    }
}
