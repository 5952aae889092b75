//! Tier 0: the gateway's own HTTP/1.x server, driven by a raw TCP client — pipelined requests,
//! `Expect: 100-continue`, an Upgrade tunnelled after 101, an HTTP/1.0 client of a chunked
//! response, absolute-form targets, malformed and oversized heads (400/431, then close),
//! requests the gateway answers itself (keep-alive unless a body was left unread, no body for
//! HEAD) and a backend that does not answer in time (504).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::scripted::*;
use ingress::pool::Pool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw client connection and what it read and did not consume yet.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

/// One response as the client read it.
#[derive(Debug)]
struct Got {
    status: u16,
    /// The head, lowercased.
    head: String,
    body: Vec<u8>,
}

impl Raw {
    async fn connect(gw: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(gw).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    /// Reads one response: by Content-Length, chunked (decoded), none (HEAD, 1xx, 101, 204,
    /// 304), or
    /// until the gateway closes.
    async fn response(&mut self, head_request: bool) -> Got {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            fill(&mut self.s, &mut self.buf)
                .await
                .expect("connection ended before a response head");
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        self.buf.drain(..end);
        let status: u16 = head[9..12].parse().unwrap();
        let field = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
        };
        let mut body = Vec::new();
        if head_request || status < 200 || status == 204 || status == 304 {
        } else if let Some(n) = field("content-length") {
            let n: usize = n.trim().parse().unwrap();
            while self.buf.len() < n {
                fill(&mut self.s, &mut self.buf)
                    .await
                    .expect("body cut short");
            }
            body = self.buf.drain(..n).collect();
        } else if field("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    fill(&mut self.s, &mut self.buf)
                        .await
                        .expect("chunk cut short");
                };
                let size = std::str::from_utf8(&self.buf[..line_end]).unwrap();
                let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    fill(&mut self.s, &mut self.buf)
                        .await
                        .expect("chunk cut short");
                }
                body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            while fill(&mut self.s, &mut self.buf).await.is_some() {}
            body = std::mem::take(&mut self.buf);
        }
        Got { status, head, body }
    }

    /// Whether the gateway closed the connection (nothing more to read within 2 s).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), self.s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

/// A backend answering every request with its request line as the body.
async fn echo_line() -> Backend {
    backend(Arc::new(|_, _, raw: &str| {
        let line = raw.lines().next().unwrap().to_string();
        Answer {
            pieces: vec![
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{line}",
                    line.len()
                )
                .into_bytes(),
            ],
            close: false,
        }
    }))
    .await
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let b = echo_line().await;
    let (gw, _) = gateway(b.addr).await;
    let mut c = Raw::connect(gw).await;
    c.send(b"GET /a HTTP/1.1\r\nHost: b.test\r\n\r\nGET /b HTTP/1.1\r\nHost: b.test\r\n\r\nHEAD /c HTTP/1.1\r\nHost: b.test\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.body, b"GET /a HTTP/1.1");
    assert_eq!(c.response(false).await.body, b"GET /b HTTP/1.1");
    let head = c.response(true).await;
    assert_eq!(head.status, 200);
    assert!(head.head.contains("content-length: 16"), "{}", head.head);
    c.send(b"GET /d HTTP/1.1\r\nHost: b.test\r\n\r\n").await;
    assert_eq!(c.response(false).await.body, b"GET /d HTTP/1.1");
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let b = echo_line().await;
    let (gw, _) = gateway(b.addr).await;
    let mut c = Raw::connect(gw).await;
    c.send(
        b"POST /up HTTP/1.1\r\nHost: b.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await;
    let cont = c.response(false).await;
    assert_eq!(cont.status, 100);
    c.send(b"hello").await;
    let r = c.response(false).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"POST /up HTTP/1.1"[..])
    );
    let seen = b.requests.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].ends_with("\r\n\r\nhello"), "{:?}", seen[0]);
    assert!(
        !seen[0].to_ascii_lowercase().contains("expect:"),
        "{:?}",
        seen[0]
    );
}

#[tokio::test]
async fn an_upgrade_is_tunnelled_after_101() {
    // A backend that switches protocols when asked, then echoes every byte upper-cased.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let asked = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = asked.clone();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        let raw = read_request(&mut s, &mut buf).await.unwrap();
        *seen.lock().unwrap() = raw.to_ascii_lowercase();
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhi ")
            .await
            .unwrap();
        s.write_all(&buf.to_ascii_uppercase()).await.unwrap();
        let mut b = [0u8; 256];
        loop {
            let n = s.read(&mut b).await.unwrap();
            if n == 0 {
                return;
            }
            s.write_all(&b[..n].to_ascii_uppercase()).await.unwrap();
        }
    });
    let (gw, _) = gateway(addr).await;
    let mut c = Raw::connect(gw).await;
    // Bytes right after the head belong to the new protocol.
    c.send(b"GET /ws HTTP/1.1\r\nHost: b.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly ")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 101);
    assert!(r.head.contains("upgrade: websocket"), "{}", r.head);
    assert!(r.head.contains("connection: upgrade"), "{}", r.head);
    let asked = asked.lock().unwrap().clone();
    assert!(asked.contains("connection: upgrade\r\n"), "{asked}");
    assert!(asked.contains("upgrade: websocket\r\n"), "{asked}");
    c.send(b"ping").await;
    let want = b"hi EARLY PING";
    while c.buf.len() < want.len() {
        fill(&mut c.s, &mut c.buf).await.unwrap();
    }
    assert_eq!(&c.buf[..], &want[..]);
}

#[tokio::test]
async fn an_http10_client_gets_a_chunked_response_as_data_then_close() {
    let b = backend(Arc::new(|_, _, _: &str| {
        answer(
            &[
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki",
                b"\r\n5\r\npedia\r\n0\r\n\r\n",
            ],
            false,
        )
    }))
    .await;
    let (gw, _) = gateway(b.addr).await;
    let mut c = Raw::connect(gw).await;
    c.send(b"GET / HTTP/1.0\r\nHost: b.test\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200);
    assert!(!r.head.contains("transfer-encoding"), "{}", r.head);
    assert!(r.head.contains("connection: close"), "{}", r.head);
    assert_eq!(r.body, b"Wikipedia");
}

#[tokio::test]
async fn an_absolute_form_target_is_routed_by_its_authority() {
    let b = echo_line().await;
    let (gw, _) = gateway(b.addr).await;
    let mut c = Raw::connect(gw).await;
    c.send(b"GET http://B.test/x?y=1 HTTP/1.1\r\nHost: elsewhere.test\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"GET /x?y=1 HTTP/1.1"[..])
    );
    let seen = b.requests.lock().unwrap()[0].clone();
    assert!(seen.contains("\r\nhost: B.test\r\n"), "{seen}");
}

#[tokio::test]
async fn malformed_or_oversized_heads_get_400_or_431_and_close() {
    let b = echo_line().await;
    let (gw, _) = gateway(b.addr).await;
    let many: String = (0..101).map(|i| format!("x-f{i}: v\r\n")).collect();
    let long = "x".repeat(17 * 1024);
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            b"POST / HTTP/1.1\r\nHost: b.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: b.test\r\nContent-Length: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: b.test\r\nHost: c.test\r\n\r\n".to_vec(),
            400,
        ),
        (b"G\x01T / HTTP/1.1\r\nHost: b.test\r\n\r\n".to_vec(), 400),
        // Framing siblings httparse already refuses: whitespace before the colon, obs-fold,
        // NUL or a bare CR in a value (RFC 9112 §5.1, §5.2, RFC 9110 §5.5).
        (
            b"POST / HTTP/1.1\r\nHost: b.test\r\nContent-Length : 3\r\n\r\nabc".to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: b.test\r\nX-A: 1\r\n Content-Length: 3\r\n\r\nabc".to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: b.test\r\nContent-Length: 3\x00\r\n\r\nabc".to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: b.test\r\nX-A: 1\rContent-Length: 3\r\n\r\nabc".to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.0\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: b.test\r\n{many}\r\n").into_bytes(),
            431,
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: b.test\r\nx-long: {long}\r\n\r\n").into_bytes(),
            431,
        ),
    ];
    for (req, want) in cases {
        let mut c = Raw::connect(gw).await;
        c.send(&req).await;
        let r = c.response(false).await;
        assert_eq!(r.status, want, "{}", String::from_utf8_lossy(&req[..40]));
        assert!(r.head.contains("connection: close"), "{}", r.head);
        assert!(c.closed().await, "{}", String::from_utf8_lossy(&req[..40]));
    }
    assert!(b.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn answers_of_the_gateway_keep_the_connection_unless_a_body_is_unread() {
    let b = echo_line().await;
    let (gw, _) = gateway(b.addr).await;
    let mut c = Raw::connect(gw).await;
    c.send(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, b"404 page not found\n");
    // HEAD: the same head, no body (the next response parses right after it).
    c.send(
        b"HEAD / HTTP/1.1\r\nHost: nowhere.test\r\n\r\nGET /next HTTP/1.1\r\nHost: b.test\r\n\r\n",
    )
    .await;
    let r = c.response(true).await;
    assert_eq!(r.status, 404);
    assert!(r.head.contains("content-length: 19"), "{}", r.head);
    assert_eq!(c.response(false).await.body, b"GET /next HTTP/1.1");
    // A body the gateway did not read: answer, then close.
    c.send(b"POST / HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: 4\r\n\r\nbody")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 404);
    assert!(r.head.contains("connection: close"), "{}", r.head);
    assert!(c.closed().await);
}

#[tokio::test]
async fn a_backend_that_does_not_answer_in_time_gives_504() {
    let b = backend(Arc::new(|_, _, _: &str| answer(&[], false))).await;
    let (gw, proxy) = gateway_with(b.addr, Pool::new(Duration::from_millis(300))).await;
    let mut c = Raw::connect(gw).await;
    c.send(b"GET /slow HTTP/1.1\r\nHost: b.test\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!(r.status, 504);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(text.starts_with("504 gateway timeout: "), "{text}");
    // The silent connection is not pooled; the client's connection stays usable.
    assert_eq!(proxy.pool().idle(b.addr), 0);
    c.send(b"GET /again HTTP/1.1\r\nHost: b.test\r\n\r\n").await;
    assert_eq!(c.response(false).await.status, 504);
}

#[tokio::test]
async fn an_early_answer_during_an_upload_reaches_the_client() {
    // A backend that refuses the upload after the head, without reading the body, and closes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            fill(&mut s, &mut buf).await.unwrap();
        }
        s.write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
            .await
            .unwrap();
    });
    let (gw, proxy) = gateway(addr).await;
    let c = Raw::connect(gw).await;
    let (mut rd, mut wr) = c.s.into_split();
    let size = 32 << 20;
    let upload = tokio::spawn(async move {
        wr.write_all(
            format!("PUT /up HTTP/1.1\r\nHost: b.test\r\nContent-Length: {size}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(
        got.starts_with("http/1.1 413 content too large\r\n"),
        "{got}"
    );
    assert!(got.contains("connection: close\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\ntoo large"), "{got}");
    upload.abort();
    assert_eq!(proxy.pool().idle(addr), 0);
}

#[tokio::test]
async fn a_backend_that_stalls_mid_body_is_given_up_after_the_timeout() {
    // 10 of 100 promised bytes, then silence with the connection open.
    let b = backend(Arc::new(|_, _, _: &str| {
        answer(
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"],
            false,
        )
    }))
    .await;
    let (gw, proxy) = gateway_with(b.addr, Pool::new(Duration::from_millis(300))).await;
    let mut c = Raw::connect(gw).await;
    c.send(b"GET / HTTP/1.1\r\nHost: b.test\r\n\r\n").await;
    // The head and the 10 bytes arrive, then the gateway closes instead of waiting forever.
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        while fill(&mut c.s, &mut c.buf).await.is_some() {}
        String::from_utf8_lossy(&c.buf).into_owned()
    })
    .await
    .expect("the gateway kept the stalled response open");
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\n0123456789"), "{got}");
    assert_eq!(proxy.pool().idle(b.addr), 0);
}

/// A backend that answers a POST 400 with `Connection: close` (as a strict server answers a
/// body it cannot parse; the connection is left open so no reset races the answer) and
/// anything else 200 with its request line as the body. It records every request it reads.
async fn strict_backend() -> Backend {
    backend(Arc::new(|_, _, raw: &str| {
        let line = raw.lines().next().unwrap().to_string();
        let a = if line.starts_with("POST ") {
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        } else {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{line}",
                line.len()
            )
        };
        Answer {
            pieces: vec![a.into_bytes()],
            close: false,
        }
    }))
    .await
}

const HIDDEN: &[u8] = b"GET /hidden HTTP/1.1\r\nHost: b.test\r\n\r\n";

/// Sends `req` (a smuggling attempt) and checks that the gateway answers 400 and closes, and
/// that the backend never sees `/hidden`.
async fn refused_and_nothing_smuggled(gw: SocketAddr, b: &Backend, req: &[u8]) {
    let what = String::from_utf8_lossy(req).into_owned();
    let mut c = Raw::connect(gw).await;
    c.send(req).await;
    let r = c.response(false).await;
    let closed = c.closed().await;
    let seen = b.requests.lock().unwrap().clone();
    assert!(
        seen.iter().all(|r| !r.contains("/hidden")),
        "{what:?}: a backend got the hidden request: {seen:?}"
    );
    assert_eq!(r.status, 400, "{what:?}: {}", r.head);
    assert!(r.head.contains("connection: close"), "{what:?}: {}", r.head);
    assert!(closed, "{what:?}: the connection stayed open");
}

#[tokio::test]
async fn an_empty_chunk_size_line_is_refused_and_the_hidden_request_never_reaches_a_backend() {
    // Issue 20, item 1: `\r\n` where `1*HEXDIG` is required, then an empty trailer section,
    // then a second request that a lenient gateway would take for the next one.
    let b = strict_backend().await;
    let (gw, _) = gateway(b.addr).await;
    let head = b"POST / HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    for body in [&b"\r\n\r\n"[..], b"5\r\nhello\r\n\r\n\r\n", b";x\r\n\r\n"] {
        let req = [&head[..], body, HIDDEN].concat();
        refused_and_nothing_smuggled(gw, &b, &req).await;
    }
}

#[tokio::test]
async fn malformed_chunk_framing_is_refused_with_400_and_close() {
    // RFC 9112 §7.1: the chunks go through verbatim, so anything a backend could read another
    // way is refused: bare LF or CR, whitespace other than around an extension's `;` or `=`,
    // extensions that are no `token [= token / quoted-string]`, trailers that are no field
    // lines (obs-fold, no colon, bare LF, control characters).
    let b = strict_backend().await;
    let (gw, _) = gateway(b.addr).await;
    let head = b"PUT / HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    let bodies: &[&[u8]] = &[
        b"5;a\nb\r\nhello\r\n0\r\n\r\n",
        b"5\n\r\nhello\r\n0\r\n\r\n",
        b"5;a\rb\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5;\r\nhello\r\n0\r\n\r\n",
        b"5;a=\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"b\r\nhello\r\n0\r\n\r\n",
        b"5;a=b c\r\nhello\r\n0\r\n\r\n",
        b"5;a@b\r\nhello\r\n0\r\n\r\n",
        b"5;a=\x01\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"\x00\"\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5g\r\nhello\r\n0\r\n\r\n",
        b"10000000000000005\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"0\r\nX-T: 1\nY: 2\r\n\r\n",
        b"0\r\nX-T: 1\r\n folded\r\n\r\n",
        b"0\r\nno colon\r\n\r\n",
        b"0\r\n: no name\r\n\r\n",
        b"0\r\nX-T : 1\r\n\r\n",
        b"0\r\nX-T: a\x00b\r\n\r\n",
        b"0\r\nX-T: a\rb\r\n\r\n",
    ];
    for body in bodies {
        let req = [&head[..], body, HIDDEN].concat();
        refused_and_nothing_smuggled(gw, &b, &req).await;
    }
    // Only `/hidden` matters above; PUT requests may have reached the backend in part.
}

#[tokio::test]
async fn valid_chunk_extensions_and_trailers_pass_through() {
    let b = strict_backend().await;
    let (gw, _) = gateway(b.addr).await;
    let body = b"5 ; a = \"b\\\"; c\" ;d\r\nhello\r\n000\r\nX-T: 1\r\nX-U:\r\n\r\n";
    let mut c = Raw::connect(gw).await;
    c.send(
        &[
            &b"PUT /x HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            body,
        ]
        .concat(),
    )
    .await;
    let r = c.response(false).await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"PUT /x HTTP/1.1"[..])
    );
    let seen = b.requests.lock().unwrap()[0].clone();
    assert!(
        seen.ends_with(std::str::from_utf8(body).unwrap()),
        "{seen:?}"
    );
}

#[tokio::test]
async fn equal_content_length_values_are_forwarded_as_one_field() {
    // Issue 20, item 2 (RFC 9110 §8.6): a list of equal values becomes one value; differing
    // values are refused.
    let b = echo_line().await;
    let (gw, _) = gateway(b.addr).await;
    for fields in [
        "Content-Length: 5\r\nContent-Length: 5\r\n",
        "Content-Length: 5, 5\r\n",
        "Content-Length: 5,5 ,\t5\r\nContent-Length: 005\r\n",
    ] {
        let before = b.requests.lock().unwrap().len();
        let mut c = Raw::connect(gw).await;
        c.send(format!("PUT /x HTTP/1.1\r\nHost: b.test\r\n{fields}\r\nhello").as_bytes())
            .await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200, "{fields:?}");
        let seen = b.requests.lock().unwrap()[before].to_ascii_lowercase();
        let lengths: Vec<&str> = seen
            .lines()
            .filter(|l| l.starts_with("content-length"))
            .collect();
        assert_eq!(lengths, ["content-length: 5"], "{fields:?}: {seen:?}");
        assert!(seen.ends_with("\r\n\r\nhello"), "{seen:?}");
    }
    for fields in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: 5,\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: 5 5\r\n",
        "Content-Length: 99999999999999999999\r\n",
    ] {
        let mut c = Raw::connect(gw).await;
        c.send(format!("PUT /y HTTP/1.1\r\nHost: b.test\r\n{fields}\r\nhello").as_bytes())
            .await;
        let r = c.response(false).await;
        assert_eq!(r.status, 400, "{fields:?}");
        assert!(c.closed().await, "{fields:?}");
    }
    let seen = b.requests.lock().unwrap().clone();
    assert!(seen.iter().all(|r| !r.starts_with("PUT /y")), "{seen:?}");
}

#[tokio::test]
async fn a_connection_field_cannot_take_the_framing_fields_away() {
    // `Connection: content-length` names Content-Length hop-by-hop; were it dropped, the
    // backend would read the body as the next request.
    let b = echo_line().await;
    let (gw, _) = gateway(b.addr).await;
    let hidden = std::str::from_utf8(HIDDEN).unwrap();
    let reqs = [
        format!(
            "POST /a HTTP/1.1\r\nHost: b.test\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{hidden}",
            HIDDEN.len()
        ),
        format!(
            "POST /b HTTP/1.1\r\nHost: b.test\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
            HIDDEN.len()
        ),
    ];
    for req in reqs {
        let mut c = Raw::connect(gw).await;
        c.send(req.as_bytes()).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200, "{req:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = b.requests.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|r| r.starts_with("POST ")), "{seen:?}");
}

#[tokio::test]
async fn an_invalid_host_value_gets_400_and_close() {
    // Issue 20, item 3 (RFC 9112 §3.2): a Host that is not `uri-host [":" port]` is a 400, as
    // is an absolute-form target with a bad authority (userinfo included, RFC 9110 §4.2.4).
    let b = echo_line().await;
    let (gw, _) = gateway(b.addr).await;
    for req in [
        "GET / HTTP/1.1\r\nHost: b.test x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: b.test/x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: u@b.test\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: b.test:80x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: b.test:80:80\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: b.te%zzst\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: b.test\"\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: b.test x\r\n\r\n",
        "GET http://u@b.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n",
        "GET http://b.test\\x/ HTTP/1.1\r\nHost: b.test\r\n\r\n",
        "GET http:///x HTTP/1.1\r\nHost: b.test\r\n\r\n",
        "GET http://b.test/ HTTP/1.1\r\nHost: b.test x\r\n\r\n",
    ] {
        let mut c = Raw::connect(gw).await;
        c.send(req.as_bytes()).await;
        let r = c.response(false).await;
        assert_eq!(r.status, 400, "{req:?}");
        assert!(r.head.contains("connection: close"), "{req:?}: {}", r.head);
        assert!(c.closed().await, "{req:?}");
    }
    assert!(b.requests.lock().unwrap().is_empty());
    // Valid forms still route.
    let mut c = Raw::connect(gw).await;
    c.send(b"GET /p HTTP/1.1\r\nHost: b.test:80\r\n\r\nGET http://b.test:80?q HTTP/1.1\r\nHost: [::1]:8\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.status, 200);
    assert_eq!(c.response(false).await.body, b"GET /?q HTTP/1.1");
}

#[tokio::test]
async fn transfer_encoding_lists_are_checked_and_forwarded_as_the_gateways_own() {
    let b = echo_line().await;
    let (gw, _) = gateway(b.addr).await;
    for te in [
        "chunked, chunked",
        "chunked;q=1",
        "\"chunked\"",
        ", ",
        "chunked, gzip",
        "chun ked",
    ] {
        let mut c = Raw::connect(gw).await;
        c.send(
            format!("POST / HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let r = c.response(false).await;
        assert_eq!(r.status, 400, "{te:?}");
        assert!(c.closed().await, "{te:?}");
    }
    assert!(b.requests.lock().unwrap().is_empty());
    let mut c = Raw::connect(gw).await;
    c.send(
        b"POST / HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: ,gzip ,\tCHUNKED\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(c.response(false).await.status, 200);
    let seen = b.requests.lock().unwrap()[0].to_ascii_lowercase();
    assert!(
        seen.contains("\r\ntransfer-encoding: gzip, chunked\r\n"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_backends_framing_fields_reach_the_client_as_the_gateways_own() {
    // The response side of items 2 and 3: the client gets one Content-Length (none with
    // Transfer-Encoding, none for 204), whatever the backend sent or named in Connection.
    let b = backend(Arc::new(|_, _, raw: &str| {
        let path = raw.split(' ').nth(1).unwrap().to_string();
        let (resp, close): (&[u8], bool) = match path.as_str() {
            "/twice" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", false),
            "/list" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", false),
            "/named" => (b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello", false),
            "/204" => (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", false),
            "/gzip" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc", true),
            "/te-list" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false),
            "/te-twice" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false),
            _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal", false),
        };
        answer(&[resp], close)
    }))
    .await;
    let (gw, _) = gateway(b.addr).await;
    let framing = |head: &str| -> Vec<String> {
        head.lines()
            .filter(|l| l.starts_with("content-length") || l.starts_with("transfer-encoding"))
            .map(str::to_string)
            .collect()
    };
    for (path, want, body) in [
        ("/twice", vec!["content-length: 5"], &b"hello"[..]),
        ("/list", vec!["content-length: 5"], b"hello"),
        ("/named", vec!["content-length: 5"], b"hello"),
        ("/204", vec![], b""),
        ("/gzip", vec!["transfer-encoding: chunked"], b"abc"),
        ("/te-list", vec!["transfer-encoding: gzip, chunked"], b"abc"),
    ] {
        let mut c = Raw::connect(gw).await;
        c.send(format!("GET {path} HTTP/1.1\r\nHost: b.test\r\n\r\n").as_bytes())
            .await;
        let r = c.response(false).await;
        assert_eq!(r.status, if path == "/204" { 204 } else { 200 }, "{path}");
        assert_eq!(framing(&r.head), want, "{path}: {}", r.head);
        assert_eq!(r.body, body, "{path}");
        // The connection is still in step: the next response is read where it starts.
        c.send(b"GET /next HTTP/1.1\r\nHost: b.test\r\n\r\n").await;
        assert_eq!(c.response(false).await.body, b"final", "{path}");
    }
    // Chunked applied twice: the body's end could be read two ways; 502.
    let mut c = Raw::connect(gw).await;
    c.send(b"GET /te-twice HTTP/1.1\r\nHost: b.test\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.status, 502);
}

#[tokio::test]
async fn a_head_with_bare_lf_lines_reaches_the_backend_as_the_gateway_read_it() {
    // httparse accepts a bare LF as a line end (RFC 9112 §2.2 allows it); the forwarded head is
    // written anew with CRLF, so the backend reads the same fields, framing included.
    let b = echo_line().await;
    let (gw, _) = gateway(b.addr).await;
    let mut c = Raw::connect(gw).await;
    c.send(b"PUT /lf HTTP/1.1\nHost: b.test\nX-A: 1\nContent-Length: 5\n\nhelloGET /next HTTP/1.1\r\nHost: b.test\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.body, b"PUT /lf HTTP/1.1");
    assert_eq!(c.response(false).await.body, b"GET /next HTTP/1.1");
    let seen = b.requests.lock().unwrap()[0].clone();
    assert!(!seen.replace("\r\n", "").contains('\n'), "{seen:?}");
    assert!(
        seen.contains("\r\nx-a: 1\r\n") || seen.contains("\r\nX-A: 1\r\n"),
        "{seen:?}"
    );
    assert!(
        seen.ends_with("\r\ncontent-length: 5\r\n\r\nhello"),
        "{seen:?}"
    );
}

#[test]
fn a_head_at_the_field_limit_is_forwarded_with_the_gateways_fields_added() {
    // Found by fuzz/request_head: 100 fields are accepted, and the forwarded head has the
    // gateway's Host and X-Forwarded-* on top (the gateway itself would answer such a head
    // 431; a backend with the same limit does too, refusing it whole).
    let fields: String = (0..99).map(|i| format!("x-f{i}: v\r\n")).collect();
    let req = format!("GET / HTTP/1.1\r\nHost: b.test\r\n{fields}\r\n");
    let mut out = Vec::new();
    let parsed = ingress::h1::parse_request(req.as_bytes(), &mut out);
    assert!(
        matches!(parsed, ingress::h1::Parsed::Request { to: Ok(_), .. }),
        "{parsed:?}"
    );
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Request::new(&mut fields);
    assert_eq!(
        r.parse(&out).unwrap(),
        httparse::Status::Complete(out.len())
    );
    assert_eq!(r.headers.len(), 103);
    let mut again = Vec::new();
    assert!(matches!(
        ingress::h1::parse_request(&out, &mut again),
        ingress::h1::Parsed::Bad(s, _) if s.as_u16() == 431
    ));
}
