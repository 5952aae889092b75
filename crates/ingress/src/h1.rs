//! The HTTP/1.x server side, written for the proxy's one job instead of hyper's general server:
//! bytes in, bytes out, no header map.
//!
//! Per request: the head is parsed in place with `httparse`, routed, and the backend's request
//! head encoded straight from the parsed fields ([`client::encode_request`]), its framing
//! fields (`Content-Length`, `Transfer-Encoding`) always the gateway's own. The request body
//! follows as it is: `Content-Length` bytes, or chunks passed through verbatim (the chunked
//! decoder finds where the body ends and refuses all but RFC 9112's grammar, so a backend
//! cannot read the chunks another way). The backend's response head is parsed the same way and
//! the client's head written from it (hop-by-hop fields dropped, framing fields the gateway's);
//! a response already whole in the backend buffer goes to the client in one write, a larger
//! one streams. Chunked responses pass through verbatim too (de-chunked for an HTTP/1.0
//! client, which cannot read them). `Expect: 100-continue` is answered by the gateway;
//! `Upgrade` requests (WebSocket) are forwarded, and after a `101` the two connections are
//! joined byte for byte.
//!
//! Everything runs in the connection's task; the backend connection comes from the shared
//! [`crate::pool`] and goes back after a complete keep-alive response.
//!
//! Errors: a malformed head gets 400 (431 when too large or with too many fields) and the
//! connection closes; a request the gateway answers itself (no route, no endpoint, backend
//! failed, see [`Reject`]) gets its status, and the connection stays open unless the request
//! had a body the gateway did not read. A failure after the response head went out can only
//! close the connection.

use std::borrow::Cow;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use hyper::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Sleep;

use crate::client::{
    self, ClientError, Failure, Forward, Framing, Head, HeadInfo, RequestBody,
    connection_names_fields, head_info, hop_by_hop, lists, named_by_connection,
};
use crate::pool::{BUF_SIZE, Buffer, Conn, within};
use crate::proxy::{Proxy, Reject};

/// How long a client may take to send a request head, idle keep-alive time included.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client may leave a body or a response write without progress (nginx's
/// `client_body_timeout` and `send_timeout`). Backend reads use the pool's response timeout,
/// between any two reads (nginx's `proxy_read_timeout`), and so do writes to a backend.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a backend that stopped reading a request body has to show its early answer.
const EARLY_ANSWER_WAIT: Duration = Duration::from_secs(1);
/// Request header fields accepted at most (more: 431).
const MAX_FIELDS: usize = 100;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// The start of the HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    /// No body (no `Content-Length`, or `Content-Length: 0`).
    None,
    /// A body of exactly this many bytes (`Content-Length`).
    Length(u64),
    /// Chunked, passed through as sent.
    Chunked,
}

/// What is kept of a request once its head is consumed.
#[derive(Debug, Clone)]
pub struct Req {
    /// The request method, as the backend gets it.
    pub method: Method,
    /// HTTP/1.`minor`.
    pub minor: u8,
    /// Whether the client lets the connection carry another request.
    pub keep_alive: bool,
    /// How the request body is framed.
    pub body: BodyLen,
    /// Whether the client sent `Expect: 100-continue` (it waits for `100 Continue` before
    /// sending its body).
    pub expect_continue: bool,
    /// The request asks for a protocol switch (`Connection: upgrade` and `Upgrade`).
    pub upgrade: bool,
}

/// The outcome of reading a request head from the start of a buffer.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes needed.
    Partial,
    /// Unreadable: answer this and close (the stream cannot be followed any further).
    Bad(StatusCode, Cow<'static, str>),
    /// A head of `len` bytes; `to` is the endpoint (the backend head was written to `out`) or
    /// what to answer instead.
    Request {
        /// Length in bytes of the request head in the buffer (request line through the empty line).
        len: usize,
        /// What the rest of the connection needs of the request.
        req: Req,
        /// The chosen endpoint, or the answer the gateway gives itself.
        to: Result<SocketAddr, Reject>,
    },
}

fn bad(status: StatusCode, text: impl Into<Cow<'static, str>>) -> Parsed {
    Parsed::Bad(status, text.into())
}

/// Parses the request head at the start of `buf`, routes it with `proxy`, and on success
/// writes the backend request head to `out`. Pure apart from reading the route table.
pub fn prepare(proxy: &Proxy, buf: &[u8], peer: &str, https: bool, out: &mut Vec<u8>) -> Parsed {
    prepare_with(buf, peer, https, out, |m, host, path| {
        proxy.pick(m, host, path)
    })
}

/// [`prepare`] with every request routed to one endpoint: the head parser and the backend
/// head encoder alone, for fuzzing and tests. `out` gets the head the backend would see.
pub fn parse_request(buf: &[u8], out: &mut Vec<u8>) -> Parsed {
    let ep = SocketAddr::from(([127, 0, 0, 1], 80));
    prepare_with(buf, "192.0.2.1", false, out, |_, _, _| Ok(ep))
}

/// [`prepare`] with the routing decision `pick(method, host, path)`.
fn prepare_with(
    buf: &[u8],
    peer: &str,
    https: bool,
    out: &mut Vec<u8>,
    pick: impl FnOnce(&Method, &str, &str) -> Result<SocketAddr, Reject>,
) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut r = httparse::Request::new(&mut fields);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return bad(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("431 request header fields too large: more than {MAX_FIELDS} fields\n"),
            );
        }
        Err(e) => return bad(StatusCode::BAD_REQUEST, format!("400 bad request: {e}\n")),
    };
    let (Some(m), Some(target), Some(minor)) = (r.method, r.path, r.version) else {
        return bad(StatusCode::BAD_REQUEST, "400 bad request\n");
    };
    let Ok(method) = Method::from_bytes(m.as_bytes()) else {
        return bad(StatusCode::BAD_REQUEST, "400 bad request: method\n");
    };
    let mut host: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    let mut codings = client::Codings::default();
    let (mut close, mut keep_alive_token, mut conn_upgrade) = (false, false, false);
    let mut expect_continue = false;
    let mut upgrade: Option<&[u8]> = None;
    for h in r.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return bad(
                    StatusCode::BAD_REQUEST,
                    "400 bad request: two Host fields\n",
                );
            }
            if !valid_host(h.value) {
                return bad(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "400 bad request: host {:?}\n",
                        String::from_utf8_lossy(h.value)
                    ),
                );
            }
            host = Some(h.value);
        } else if n.eq_ignore_ascii_case("content-length") {
            if let Err(e) = client::content_length(h.value, &mut length) {
                return bad(StatusCode::BAD_REQUEST, format!("400 bad request: {e}\n"));
            }
        } else if n.eq_ignore_ascii_case("transfer-encoding") {
            if te.is_some() {
                return bad(
                    StatusCode::BAD_REQUEST,
                    "400 bad request: two Transfer-Encoding fields\n",
                );
            }
            if let Err(e) = client::transfer_coding(h.value, &mut codings) {
                return bad(StatusCode::BAD_REQUEST, format!("400 bad request: {e}\n"));
            }
            te = Some(h.value);
        } else if n.eq_ignore_ascii_case("connection") {
            close |= lists(h.value, "close");
            keep_alive_token |= lists(h.value, "keep-alive");
            conn_upgrade |= lists(h.value, "upgrade");
        } else if n.eq_ignore_ascii_case("expect") {
            expect_continue |= h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if n.eq_ignore_ascii_case("upgrade") {
            upgrade = Some(h.value);
        }
    }
    let body = match (te, length) {
        (Some(_), Some(_)) => {
            // RFC 9112 §6.1: a request smuggling vector; refuse rather than guess.
            return bad(
                StatusCode::BAD_REQUEST,
                "400 bad request: both Transfer-Encoding and Content-Length\n",
            );
        }
        (Some(te), None) => {
            if minor == 0 || !codings.chunked_last {
                return bad(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "400 bad request: transfer-encoding {:?} (the last coding must be chunked, in HTTP/1.1)\n",
                        String::from_utf8_lossy(te)
                    ),
                );
            }
            BodyLen::Chunked
        }
        (None, Some(0) | None) => BodyLen::None,
        (None, Some(n)) => BodyLen::Length(n),
    };
    // Absolute-form (`GET http://a.test/p`): its authority is the host (RFC 9112 §3.2.2).
    let mut origin: Cow<'_, str> = Cow::Borrowed(target);
    if let Some(rest) = strip_scheme(target) {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest.as_bytes()[..end];
        // RFC 9110 §4.2.4: userinfo (`user@host`) is an error; so is any other bad authority.
        if authority.is_empty() || !valid_host(authority) {
            return bad(
                StatusCode::BAD_REQUEST,
                format!("400 bad request: authority {:?}\n", &rest[..end]),
            );
        }
        host = Some(authority);
        origin = match &rest[end..] {
            "" => Cow::Borrowed("/"),
            p if p.starts_with('?') => Cow::Owned(format!("/{p}")),
            p => Cow::Borrowed(p),
        };
    }
    if minor >= 1 && host.is_none() {
        return bad(StatusCode::BAD_REQUEST, "400 bad request: no Host field\n");
    }
    let req = Req {
        keep_alive: if minor >= 1 {
            !close
        } else {
            keep_alive_token && !close
        },
        body,
        expect_continue,
        upgrade: minor >= 1 && conn_upgrade && upgrade.is_some(),
        minor,
        method,
    };
    let host_str = host.and_then(|h| std::str::from_utf8(h).ok()).unwrap_or("");
    let path = origin.split('?').next().unwrap_or("");
    let to = pick(&req.method, host_str, path);
    if to.is_ok() {
        let fw = Forward {
            host,
            peer,
            https,
            // The framing fields are the gateway's: one Content-Length (also a 0 the client
            // sent), or Transfer-Encoding.
            body: match (body, length) {
                (BodyLen::Chunked, _) => RequestBody::Chunked,
                (_, Some(n)) => RequestBody::Length(n),
                (_, None) => RequestBody::None,
            },
            transfer_encoding: te.unwrap_or(b"chunked"),
            upgrade: if req.upgrade { upgrade } else { None },
        };
        let fields = r.headers.iter().map(|h| (h.name, h.value));
        client::encode_request(out, req.method.as_str(), &origin, fields, &fw);
    }
    Parsed::Request { len, req, to }
}

/// Whether `v` is a valid `Host` value (RFC 9112 §3.2, RFC 3986 §3.2.2): `uri-host [ ":"
/// port ]`, the host an IP literal in brackets or a reg-name (unreserved, sub-delims and
/// percent-encoded octets), the port digits. Empty is valid (a target without authority).
pub(crate) fn valid_host(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|b| *b == b']') {
            Some(end) => {
                let inside = &v[1..end];
                let ok = !inside.is_empty()
                    && inside
                        .iter()
                        .all(|b| unreserved(*b) || sub_delim(*b) || *b == b':');
                if !ok {
                    return false;
                }
                (&b""[..], &v[end + 1..])
            }
            None => return false,
        },
        _ => match v.iter().position(|b| *b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &b""[..]),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' => {
                let hex = host.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            b if unreserved(b) || sub_delim(b) => i += 1,
            _ => return false,
        }
    }
    port_ok
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn sub_delim(b: u8) -> bool {
    b"!$&'()*+,;=".contains(&b)
}

fn strip_scheme(target: &str) -> Option<&str> {
    ["http://", "https://"].iter().find_map(|s| {
        target
            .get(..s.len())
            .filter(|p| p.eq_ignore_ascii_case(s))
            .map(|_| &target[s.len()..])
    })
}

/// Serves HTTP/1.x requests on `io` until the client or an error ends the connection.
/// `buf` may hold bytes already read. With `allow_h2`, a connection that opens with the
/// HTTP/2 preface is handed back (with what was read) instead of being served.
pub async fn serve<S>(
    mut io: S,
    mut buf: Buffer,
    proxy: &Proxy,
    peer: &str,
    https: bool,
    allow_h2: bool,
) -> Option<(S, Buffer)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = Vec::with_capacity(1024);
    let mut resp = Vec::with_capacity(1024);
    let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(HEAD_TIMEOUT));
    let mut first = allow_h2;
    loop {
        head.clear();
        let parsed = loop {
            let got = buf.buffered();
            if first && !got.is_empty() {
                let n = got.len().min(H2_PREFACE.len());
                if got[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        return Some((io, buf));
                    }
                } else {
                    first = false;
                }
            }
            if !got.is_empty() && !first {
                match prepare(proxy, got, peer, https, &mut head) {
                    Parsed::Partial if buf.is_full() => {
                        break bad(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            format!(
                                "431 request header fields too large: head over {BUF_SIZE} bytes\n"
                            ),
                        );
                    }
                    Parsed::Partial => {}
                    p => break p,
                }
            }
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + HEAD_TIMEOUT);
            let n = poll_fn(|cx| match buf.poll_fill(&mut io, cx) {
                Poll::Ready(r) => Poll::Ready(Some(r)),
                Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
            })
            .await;
            match n {
                Some(Ok(n)) if n > 0 => {}
                // EOF, an error, or no head in time: nothing to answer.
                _ => return None,
            }
        };
        let next = match parsed {
            Parsed::Partial => return None,
            Parsed::Bad(status, text) => {
                plain(&mut resp, status, &text, false, 1, true);
                let _ = write(&mut io, &mut timer, &resp).await;
                return None;
            }
            Parsed::Request {
                len,
                req,
                to: Err(r),
            } => {
                buf.consume(len);
                let mut client = Side {
                    io: &mut io,
                    buf: &mut buf,
                    timer: &mut timer,
                };
                answer(&mut client, &req, &r, &mut resp).await
            }
            Parsed::Request {
                len,
                req,
                to: Ok(ep),
            } => {
                buf.consume(len);
                let client = Side {
                    io: &mut io,
                    buf: &mut buf,
                    timer: &mut timer,
                };
                forward(proxy, ep, client, &head, &req, &mut resp).await
            }
        };
        if next == Next::Close {
            let _ = io.shutdown().await;
            return None;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// Writes `data` to the client and flushes it, giving up after [`IO_TIMEOUT`] without
/// progress (a client that stopped reading).
async fn write<S: AsyncWrite + Unpin>(
    io: &mut S,
    timer: &mut Pin<Box<Sleep>>,
    data: &[u8],
) -> io::Result<()> {
    within(timer, IO_TIMEOUT, async {
        io.write_all(data).await?;
        io.flush().await
    })
    .await
}

/// Answers `req` with the gateway's own response `r`. The connection stays open unless the
/// client asked to close or sent a body: a body not read to its end would be taken for the
/// next request.
async fn answer<S>(client: &mut Side<'_, S>, req: &Req, r: &Reject, out: &mut Vec<u8>) -> Next
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let close = !req.keep_alive || req.body != BodyLen::None;
    let head = req.method == Method::HEAD;
    plain(out, r.status, &r.text, head, req.minor, close);
    match client.write(out).await {
        Ok(()) if !close => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// A response the gateway makes itself: `text` as text/plain (no body for HEAD).
fn plain(out: &mut Vec<u8>, status: StatusCode, text: &str, head: bool, minor: u8, close: bool) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
    out.extend_from_slice(text.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    connection_field(out, minor, close);
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(text.as_bytes());
    }
}

/// `Connection: close`, or `keep-alive` for an HTTP/1.0 client that keeps the connection.
fn connection_field(out: &mut Vec<u8>, minor: u8, close: bool) {
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

/// The backend's response head as parsed for the client.
struct Resp {
    status: u16,
    info: HeadInfo,
    /// The client connection closes after this response.
    close: bool,
    /// Relay a chunked body as data only (the client speaks HTTP/1.0).
    dechunk: bool,
    /// Relay a body delimited by the backend's close as chunks (to an HTTP/1.1 client, whose
    /// connection then stays open).
    rechunk: bool,
}

/// The client's end of the connection, as forwarding uses it.
struct Side<'a, S> {
    io: &'a mut S,
    buf: &'a mut Buffer,
    timer: &'a mut Pin<Box<Sleep>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Side<'_, S> {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        write(self.io, self.timer, data).await
    }

    /// Reads more of a body; its end is an error, and so is [`IO_TIMEOUT`] without a byte.
    async fn fill(&mut self) -> io::Result<()> {
        within(self.timer, IO_TIMEOUT, fill(self.buf, self.io)).await
    }
}

/// Writes to a backend, giving up after `limit` without progress.
async fn backend_write(conn: &mut Conn, limit: Duration, data: &[u8]) -> io::Result<()> {
    within(&mut conn.timer, limit, conn.stream.write_all(data)).await
}

/// Reads more from a backend (Ok(0): it closed), giving up after `limit` without a byte.
async fn backend_fill(conn: &mut Conn, limit: Duration) -> io::Result<usize> {
    within(&mut conn.timer, limit, conn.buf.fill(&mut conn.stream)).await
}

/// Forwards one routed request to `ep` and relays the response.
async fn forward<S>(
    proxy: &Proxy,
    ep: SocketAddr,
    mut client: Side<'_, S>,
    head: &[u8],
    req: &Req,
    resp: &mut Vec<u8>,
) -> Next
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if req.expect_continue
        && req.minor >= 1
        && req.body != BodyLen::None
        && client.buf.buffered().is_empty()
        && client.write(CONTINUE).await.is_err()
    {
        return Next::Close;
    }
    let limit = proxy.pool().response_timeout();
    let retry_ok = client::idempotent(&req.method) && req.body == BodyLen::None;
    let exchanged = loop {
        let (mut conn, reused) = match client::connection(proxy.pool(), ep, !retry_ok).await {
            Ok(c) => c,
            Err(e) => break Err(e),
        };
        let attempt = async {
            client::write_head(&mut conn, head).await?;
            if let Err(f) = send_body(&mut conn, limit, &mut client, req.body).await {
                return match f.error {
                    ClientError::Send(_) => early_answer(&mut conn, req, resp).await.ok_or(f),
                    _ => Err(f),
                };
            }
            client::read_head(&mut conn, limit, retry_ok, |b| response_head(b, req, resp)).await
        };
        match attempt.await {
            Ok(r) => break Ok((conn, r)),
            Err(f) => {
                if let Err(e) = f.retry(reused, ep) {
                    break Err(e);
                }
            }
        }
    };
    let (mut conn, Head { len, value: r, .. }) = match exchanged {
        Ok(x) => x,
        Err(e) => {
            let line = head.split(|b| *b == b'\r').next().unwrap_or(b"");
            let line = String::from_utf8_lossy(line);
            let r = Reject::failed(ep, "", &line, &e);
            return answer(&mut client, req, &r, resp).await;
        }
    };
    conn.consume(len);
    if r.status == 101 {
        return tunnel(client, conn, resp).await;
    }
    match relay(&mut client, &mut conn, limit, &r, resp).await {
        Ok(()) => {
            if r.info.keep_alive {
                proxy.pool().put(ep, conn);
            }
            if r.close {
                Next::Close
            } else {
                Next::KeepAlive
            }
        }
        Err(e) => {
            tracing::debug!(endpoint = %ep, error = %e, "response relay ended early");
            Next::Close
        }
    }
}

/// A backend may answer before it has read the whole request body (413, 401, ...) and close:
/// when writing the body failed, that answer, if it came within [`EARLY_ANSWER_WAIT`], is
/// what the client gets; its connection then closes (the rest of its body is unread) and the
/// backend connection is not reused.
async fn early_answer(conn: &mut Conn, req: &Req, resp: &mut Vec<u8>) -> Option<Head<Resp>> {
    let closing = Req {
        keep_alive: false,
        ..req.clone()
    };
    let mut r = client::read_head(conn, EARLY_ANSWER_WAIT, false, |b| {
        response_head(b, &closing, resp)
    })
    .await
    .ok()?;
    r.value.info.keep_alive = false;
    Some(r)
}

/// Copies the client's request body to the backend: `Content-Length` bytes, or chunks as sent
/// up to and including the last chunk and trailers.
async fn send_body<S>(
    conn: &mut Conn,
    limit: Duration,
    client: &mut Side<'_, S>,
    body: BodyLen,
) -> Result<(), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let client_err = |e: io::Error| Failure::from(ClientError::ClientBody(e.into()));
    let mut left = match body {
        BodyLen::None => return Ok(()),
        BodyLen::Length(n) => n,
        BodyLen::Chunked => u64::MAX,
    };
    let mut state = client::Chunked::Size;
    loop {
        let got = client.buf.buffered();
        let (k, done) = if body == BodyLen::Chunked {
            chunk_span(&mut state, got).map_err(|e| client_err(invalid(e)))?
        } else {
            let k = left.min(got.len() as u64);
            left -= k;
            (k as usize, left == 0)
        };
        if k > 0 {
            backend_write(conn, limit, &got[..k])
                .await
                .map_err(ClientError::Send)?;
            client.buf.consume(k);
        }
        if done {
            return Ok(());
        }
        client.fill().await.map_err(client_err)?;
    }
}

/// How many leading bytes of `got` the chunked decoder in `state` gets through (framing and
/// data alike), and whether the body ends there.
fn chunk_span(
    state: &mut client::Chunked,
    got: &[u8],
) -> Result<(usize, bool), client::FramingError> {
    let mut k = 0;
    loop {
        match state.step(&got[k..])? {
            client::Step::More => return Ok((k, false)),
            client::Step::Skip(n) | client::Step::Data(n) => k += n,
            client::Step::Done(n) => return Ok((k + n, true)),
        }
    }
}

/// A body whose chunks break the framing rules, as the IO error that ends its relay.
fn invalid(why: client::FramingError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Reads more into `buf`; the end of the stream is an error (a body was cut short).
async fn fill<R: AsyncRead + Unpin>(buf: &mut Buffer, r: &mut R) -> io::Result<()> {
    match buf.fill(r).await? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

/// Parses the backend's response head at the start of `buf` and writes the client's head to
/// `out`: the status line, the backend's fields without hop-by-hop ones, then the framing and
/// connection fields the gateway decides.
fn response_head(
    buf: &[u8],
    req: &Req,
    out: &mut Vec<u8>,
) -> Result<Option<Head<Resp>>, ClientError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut r = httparse::Response::new(&mut fields);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ClientError::Invalid(e.to_string())),
    };
    let code = r.code.unwrap_or(0);
    if !(100..=999).contains(&code) {
        return Err(ClientError::Invalid(format!("status code {code}")));
    }
    if (100..200).contains(&code) && code != 101 {
        return Ok(Some(Head {
            len,
            informational: true,
            value: Resp {
                status: code,
                info: HeadInfo {
                    framing: Framing::Length(0),
                    keep_alive: true,
                    length: None,
                },
                close: false,
                dechunk: false,
                rechunk: false,
            },
        }));
    }
    if code == 101 && !req.upgrade {
        return Err(ClientError::Invalid(
            "101 switching protocols to a request that asked for no upgrade".into(),
        ));
    }
    let version = r.version.unwrap_or(1);
    let info = head_info(&req.method, code, version, r.headers).map_err(ClientError::Framing)?;
    let chunked = info.framing == Framing::Chunked;
    let dechunk = chunked && req.minor == 0;
    let rechunk = info.framing == Framing::Close && req.minor >= 1;
    let close = !req.keep_alive || (info.framing == Framing::Close && !rechunk) || dechunk;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    // Three digits (checked above), without a formatter.
    out.extend_from_slice(&[
        b'0' + (code / 100) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(r.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let fields = || r.headers.iter().map(|h| (h.name, h.value));
    let named = connection_names_fields(fields());
    let mut upgrade: Option<&[u8]> = None;
    for h in r.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("upgrade") {
            upgrade = Some(h.value);
        }
        // The framing fields are the gateway's own (below), never copied.
        if hop_by_hop(n)
            || n.eq_ignore_ascii_case("content-length")
            || (named && named_by_connection(fields(), n))
        {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if code == 101 {
        out.extend_from_slice(b"connection: upgrade\r\n");
        if let Some(u) = upgrade {
            out.extend_from_slice(b"upgrade: ");
            out.extend_from_slice(u);
            out.extend_from_slice(b"\r\n");
        }
    } else {
        if chunked && !dechunk {
            // The backend's codings (checked by head_info), from all its fields.
            out.extend_from_slice(b"transfer-encoding: ");
            let start = out.len();
            for h in r.headers.iter() {
                if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    client::codings(out, start, h.value);
                }
            }
            out.extend_from_slice(b"\r\n");
        } else if rechunk {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if let Some(n) = info.length {
            out.extend_from_slice(b"content-length: ");
            client::decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        connection_field(out, req.minor, close);
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Head {
        len,
        informational: false,
        value: Resp {
            status: code,
            info,
            close,
            dechunk,
            rechunk,
        },
    }))
}

/// Relays the response body after the head in `out` (already built): a body whole in the
/// buffer goes with the head in one write; otherwise the head (with what is buffered) first,
/// then the rest as it arrives. `limit`: the longest wait for the backend's next bytes.
async fn relay<S>(
    client: &mut Side<'_, S>,
    conn: &mut Conn,
    limit: Duration,
    r: &Resp,
    out: &mut Vec<u8>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match r.info.framing {
        Framing::Length(n) => {
            let mut left = n;
            let got = conn.buffered();
            let k = left.min(got.len() as u64) as usize;
            out.extend_from_slice(&got[..k]);
            conn.consume(k);
            left -= k as u64;
            client.write(out).await?;
            while left > 0 {
                if backend_fill(conn, limit).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let got = conn.buffered();
                let k = left.min(got.len() as u64) as usize;
                client.write(&got[..k]).await?;
                conn.consume(k);
                left -= k as u64;
            }
        }
        Framing::Chunked => {
            let mut state = client::Chunked::Size;
            client.write(out).await?;
            loop {
                let done = if r.dechunk {
                    dechunk(&mut state, client, conn).await?
                } else {
                    let got = conn.buffered();
                    let (k, done) = chunk_span(&mut state, got).map_err(invalid)?;
                    if k > 0 {
                        client.write(&got[..k]).await?;
                        conn.consume(k);
                    }
                    done
                };
                if done {
                    break;
                }
                if backend_fill(conn, limit).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        Framing::Close => {
            client.write(out).await?;
            let mut frame = Vec::new();
            loop {
                let got = conn.buffered();
                if !got.is_empty() {
                    if r.rechunk {
                        frame.clear();
                        frame.extend_from_slice(format!("{:x}\r\n", got.len()).as_bytes());
                        frame.extend_from_slice(got);
                        frame.extend_from_slice(b"\r\n");
                        client.write(&frame).await?;
                    } else {
                        client.write(got).await?;
                    }
                    let k = got.len();
                    conn.consume(k);
                }
                if backend_fill(conn, limit).await? == 0 {
                    break;
                }
            }
            if r.rechunk {
                client.write(b"0\r\n\r\n").await?;
            }
        }
    }
    Ok(())
}

/// Writes the data of the buffered chunks to the client (no framing); whether the body ended.
async fn dechunk<S>(
    state: &mut client::Chunked,
    client: &mut Side<'_, S>,
    conn: &mut Conn,
) -> io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let got = conn.buffered();
        match state.step(got).map_err(invalid)? {
            client::Step::More => return Ok(false),
            client::Step::Skip(n) => conn.consume(n),
            client::Step::Data(n) => {
                client.write(&got[..n]).await?;
                conn.consume(n);
            }
            client::Step::Done(n) => {
                conn.consume(n);
                return Ok(true);
            }
        }
    }
}

/// After a `101`: the head (in `out`) and whatever the backend sent after it go to the client,
/// what the client sent after its request goes to the backend, then bytes flow both ways until
/// either side closes (no timeout: an idle WebSocket is normal). The backend connection is not
/// reused.
async fn tunnel<S>(client: Side<'_, S>, mut conn: Conn, out: &mut Vec<u8>) -> Next
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    out.extend_from_slice(conn.buffered());
    let early = client.buf.buffered().to_vec();
    let io = client.io;
    let joined = async {
        io.write_all(out).await?;
        io.flush().await?;
        conn.stream.write_all(&early).await?;
        tokio::io::copy_bidirectional(io, &mut conn.stream).await
    };
    if let Err(e) = joined.await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
    Next::Close
}
