//! The backend side: a minimal HTTP/1.1 client run inside the request's own task.
//!
//! The request head is written straight from the client's request (no header map rebuilt),
//! the request body (if any) follows as it arrives (`Content-Length` as given, else chunked),
//! then the response head is parsed with `httparse` and its body streamed to hyper's server as
//! [`ProxyBody`]: by `Content-Length`, chunked, or until the backend closes. A response that is
//! already whole in the read buffer (the common small one) goes out as one `Bytes` and its
//! connection back to the pool at once. No second task, no channel, no per-request timer.
//!
//! Reuse and retries: a connection goes back to the pool only after a complete response with
//! keep-alive and nothing left over. When a pooled connection turns out to be closed (the
//! backend's idle timeout), the request is sent again on another connection if nothing reached
//! the backend (writing the head failed) or the method is idempotent and no request body was
//! read yet; requests that may not be retried probe the pooled connection first.

use std::future::poll_fn;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode};
use tokio::io::AsyncWriteExt;

use crate::pool::{Conn, ConnectError, Pool};

/// How long a backend may take to start its response once the request is sent (nginx's
/// `proxy_read_timeout` default): an endpoint that vanished without a FIN (a deleted pod) must
/// not hold a request forever.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Response header fields accepted at most.
const MAX_HEADERS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("send request: {0}")]
    Send(io::Error),
    #[error("read request body from the client: {0}")]
    ClientBody(Box<dyn std::error::Error + Send + Sync>),
    #[error("read response head: {0}")]
    Recv(io::Error),
    #[error("connection closed before a response")]
    Closed,
    #[error("invalid response: {0}")]
    Invalid(String),
    #[error("no response head within {0:?}")]
    Timeout(Duration),
}

impl ClientError {
    /// The status the client gets: 504 for a timeout, 400 when the client's own body failed,
    /// 502 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            ClientError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ClientError::ClientBody(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// How the request body goes to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBody {
    None,
    /// As many bytes as the forwarded `Content-Length` says.
    Length,
    Chunked,
}

impl RequestBody {
    /// From the client's request: its `Content-Length` if any, else chunked when a body follows.
    pub fn of(headers: &HeaderMap, body: &Incoming) -> RequestBody {
        if body.is_end_stream() {
            RequestBody::None
        } else if headers.contains_key(header::CONTENT_LENGTH) {
            RequestBody::Length
        } else {
            RequestBody::Chunked
        }
    }
}

/// Whether a method may be sent twice (RFC 9110 §9.2.2).
pub fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) plus the legacy `Keep-Alive` and `Proxy-Connection`;
/// `name` in any case.
pub(crate) fn hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether a `Connection` field value lists `token`.
pub(crate) fn lists(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether any `Connection` value of `fields` lists a token other than `close`, `keep-alive`
/// and `upgrade`, which name no field: only then can [`named_by_connection`] be true, so the
/// usual head skips that per-field scan.
pub(crate) fn connection_names_fields<'a>(
    mut fields: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> bool {
    fields.any(|(n, v)| {
        n.eq_ignore_ascii_case("connection")
            && v.split(|b| *b == b',').any(|t| {
                let t = t.trim_ascii();
                !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"close")
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && !t.eq_ignore_ascii_case(b"upgrade")
            })
    })
}

/// Whether one of `fields`' `Connection` values names the field `name` (a hop-by-hop field
/// by the sender's choice, RFC 9110 §7.6.1).
pub(crate) fn named_by_connection<'a>(
    mut fields: impl Iterator<Item = (&'a str, &'a [u8])>,
    name: &str,
) -> bool {
    fields.any(|(n, v)| n.eq_ignore_ascii_case("connection") && lists(v, name))
}

/// What the gateway adds to a forwarded request besides the client's fields.
pub struct Forward<'a> {
    /// The `Host` to send: the client's, or made from the HTTP/2 `:authority` or an
    /// absolute-form target.
    pub host: Option<&'a [u8]>,
    /// The client's address as text (formatted once per connection).
    pub peer: &'a str,
    pub https: bool,
    pub body: RequestBody,
    /// The `Transfer-Encoding` value sent with a chunked body: `chunked` when the gateway
    /// re-chunks, the client's own when its chunks are passed through.
    pub transfer_encoding: &'a [u8],
    /// The `Upgrade` value of a request that asks for a protocol switch (HTTP/1.1 only).
    pub upgrade: Option<&'a [u8]>,
}

/// Writes the backend request head: origin-form `target`, HTTP/1.1, `Host` first, the
/// client's `fields` without hop-by-hop ones (and those its `Connection` names) and without
/// `Expect` (the gateway answers it), `X-Forwarded-For` appended to, `X-Forwarded-Proto` and
/// `X-Forwarded-Host` set, then the framing and upgrade fields of `fw`.
pub fn encode_request<'a, I>(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    fields: I,
    fw: &Forward<'_>,
) where
    I: Iterator<Item = (&'a str, &'a [u8])> + Clone,
{
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(h) = fw.host {
        field(out, b"host", h);
    }
    let named = connection_names_fields(fields.clone());
    let mut forwarded_for = false;
    for (n, value) in fields.clone() {
        if hop_by_hop(n)
            || n.eq_ignore_ascii_case("host")
            || n.eq_ignore_ascii_case("expect")
            || n.eq_ignore_ascii_case("x-forwarded-proto")
            || n.eq_ignore_ascii_case("x-forwarded-host")
            || (named && named_by_connection(fields.clone(), n))
        {
            continue;
        }
        if n.eq_ignore_ascii_case("x-forwarded-for") {
            // Earlier proxies' addresses, in order, then the client's.
            if !forwarded_for {
                forwarded_for = true;
                out.extend_from_slice(b"x-forwarded-for: ");
                for (n, v) in fields.clone() {
                    let v = v.trim_ascii();
                    if n.eq_ignore_ascii_case("x-forwarded-for") && !v.is_empty() {
                        out.extend_from_slice(v);
                        out.extend_from_slice(b", ");
                    }
                }
                out.extend_from_slice(fw.peer.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            continue;
        }
        field(out, n.as_bytes(), value);
    }
    if !forwarded_for {
        field(out, b"x-forwarded-for", fw.peer.as_bytes());
    }
    field(
        out,
        b"x-forwarded-proto",
        if fw.https { b"https" } else { b"http" },
    );
    if let Some(h) = fw.host {
        field(out, b"x-forwarded-host", h);
    }
    if fw.body == RequestBody::Chunked {
        field(out, b"transfer-encoding", fw.transfer_encoding);
    }
    if let Some(u) = fw.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        field(out, b"upgrade", u);
    }
    out.extend_from_slice(b"\r\n");
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// Until the backend closes (the connection cannot be reused).
    Close,
}

/// What the response head says about the body and the connection.
#[derive(Debug, PartialEq, Eq)]
pub struct HeadInfo {
    pub framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Adds one `Content-Length` field's value (`7`, or `7, 7`) to what earlier fields said: every
/// value must be a decimal number and all must agree.
pub(crate) fn content_length(value: &[u8], length: &mut Option<u64>) -> Result<(), String> {
    for v in value.split(|b| *b == b',') {
        let v = v.trim_ascii();
        let n = std::str::from_utf8(v)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| format!("content-length {:?}", String::from_utf8_lossy(value)))?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting content-length fields".into());
        }
        *length = Some(n);
    }
    Ok(())
}

/// Reads framing and reuse from a parsed response head. `version` is httparse's minor
/// version (0 or 1).
pub fn head_info(
    request: &Method,
    status: u16,
    version: u8,
    headers: &[httparse::Header<'_>],
) -> Result<HeadInfo, String> {
    let mut close = false;
    let mut keep_alive_token = false;
    let mut length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("connection") {
            close |= lists(h.value, "close");
            keep_alive_token |= lists(h.value, "keep-alive");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            content_length(h.value, &mut length)?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = Some(h.value);
        }
    }
    let mut keep_alive = if version >= 1 {
        !close
    } else {
        keep_alive_token && !close
    };
    let no_body =
        *request == Method::HEAD || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if no_body {
        Framing::Length(0)
    } else if let Some(te) = te {
        let last = te.rsplit(|b| *b == b',').next().unwrap_or(b"").trim_ascii();
        if version >= 1 && last.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            keep_alive = false;
            Framing::Close
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::Close
    };
    Ok(HeadInfo {
        framing,
        keep_alive,
    })
}

/// Sends the request (head already encoded) to `ep` on a pooled connection or a new one and
/// returns the response with its body streaming from the backend (the HTTP/2 side).
pub async fn send(
    pool: &Arc<Pool>,
    ep: SocketAddr,
    method: &Method,
    head: &[u8],
    body: Incoming,
    kind: RequestBody,
) -> Result<Response<ProxyBody>, ClientError> {
    let mut body = (kind != RequestBody::None).then_some(body);
    let retry_ok = idempotent(method) && body.is_none();
    loop {
        let (mut conn, reused) = connection(pool, ep, !retry_ok).await?;
        let attempt = async {
            write_head(&mut conn, head).await?;
            if let Some(b) = body.as_mut() {
                send_body(&mut conn, b, kind).await?;
            }
            read_head(&mut conn, pool.response_timeout(), retry_ok, |buf| {
                parse_head(buf, method)
            })
            .await
        };
        match attempt.await {
            Ok(head) => return Ok(respond(pool, ep, conn, head.len, head.value)),
            Err(f) => f.retry(reused, ep)?,
        }
    }
}

/// A pooled connection to `ep` (checked for a FIN first with `probe`: for requests that must
/// not be sent twice), or a new one; and whether it was pooled.
pub(crate) async fn connection(
    pool: &Pool,
    ep: SocketAddr,
    probe: bool,
) -> Result<(Conn, bool), ClientError> {
    Ok(match pool.take(ep, probe) {
        Some(c) => (c, true),
        None => (Pool::connect(ep).await?, false),
    })
}

/// Why an exchange failed, and whether it may be tried again on another connection.
pub(crate) struct Failure {
    pub(crate) error: ClientError,
    /// The backend saw nothing, or the connection ended before a single response byte to a
    /// request that may be sent twice.
    pub(crate) retryable: bool,
}

impl Failure {
    /// Ok when the request may be sent again on another connection: this one was pooled
    /// (the backend closed it while idle) and the failure is retryable.
    pub(crate) fn retry(self, reused: bool, ep: SocketAddr) -> Result<(), ClientError> {
        if reused && self.retryable {
            tracing::debug!(endpoint = %ep, error = %self.error, "pooled connection closed, sending again");
            Ok(())
        } else {
            Err(self.error)
        }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Failure {
            error,
            retryable: false,
        }
    }
}

/// Writes the request head; a failure here means the backend saw nothing.
pub(crate) async fn write_head(conn: &mut Conn, head: &[u8]) -> Result<(), Failure> {
    conn.stream.write_all(head).await.map_err(|e| Failure {
        error: ClientError::Send(e),
        retryable: true,
    })
}

/// A parsed response head: the response without body, its framing, and the body when it is
/// whole in the buffer already (copied with the head, in one piece).
struct Parsed {
    response: Response<()>,
    info: HeadInfo,
    whole_body: Option<Bytes>,
}

/// A response head found by a `parse` function of [`read_head`].
pub(crate) struct Head<T> {
    pub(crate) len: usize,
    /// 1xx other than 101: skipped, the final response follows.
    pub(crate) informational: bool,
    pub(crate) value: T,
}

/// Reads from `conn` until `parse` finds a final response head at the start of its buffer
/// (informational responses are consumed and skipped), within `timeout` (the pool's
/// [`Pool::response_timeout`]). The head itself stays in the buffer, `len` bytes long.
/// `retry_if_silent`: a connection that ends before any response byte gives a retryable
/// failure.
pub(crate) async fn read_head<T>(
    conn: &mut Conn,
    timeout: Duration,
    retry_if_silent: bool,
    mut parse: impl FnMut(&[u8]) -> Result<Option<Head<T>>, ClientError>,
) -> Result<Head<T>, Failure> {
    conn.timer
        .as_mut()
        .reset(tokio::time::Instant::now() + timeout);
    loop {
        if !conn.buffered().is_empty() {
            match parse(conn.buffered())? {
                Some(h) if h.informational => {
                    // 100 Continue, 103 Early Hints: skip to the final response.
                    conn.consume(h.len);
                    continue;
                }
                Some(h) => return Ok(h),
                None => {}
            }
        }
        let got_any = !conn.buffered().is_empty();
        let n = poll_fn(|cx| match conn.poll_fill(cx) {
            Poll::Ready(r) => Poll::Ready(r.map_err(ClientError::Recv)),
            Poll::Pending => match conn.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(ClientError::Timeout(timeout))),
                Poll::Pending => Poll::Pending,
            },
        })
        .await;
        match n {
            Ok(0) if got_any => {
                return Err(ClientError::Recv(io::ErrorKind::UnexpectedEof.into()).into());
            }
            Ok(0) => {
                return Err(Failure {
                    error: ClientError::Closed,
                    retryable: retry_if_silent,
                });
            }
            Ok(_) => {}
            Err(ClientError::Recv(e)) if !got_any && e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(Failure {
                    error: ClientError::Recv(e),
                    retryable: retry_if_silent,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Copies the client's request body to the backend, re-chunking it when its length is unknown.
async fn send_body(conn: &mut Conn, body: &mut Incoming, kind: RequestBody) -> Result<(), Failure> {
    let mut chunk = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::ClientBody(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded
        };
        if data.is_empty() {
            continue;
        }
        let w = if kind == RequestBody::Chunked {
            chunk.clear();
            let _ = write!(chunk, "{:x}\r\n", data.len());
            chunk.extend_from_slice(&data);
            chunk.extend_from_slice(b"\r\n");
            conn.stream.write_all(&chunk).await
        } else {
            conn.stream.write_all(&data).await
        };
        w.map_err(ClientError::Send)?;
    }
    if kind == RequestBody::Chunked {
        conn.stream
            .write_all(b"0\r\n\r\n")
            .await
            .map_err(ClientError::Send)?;
    }
    Ok(())
}

/// Parses a response head at the start of `buf`; None: incomplete.
fn parse_head(buf: &[u8], method: &Method) -> Result<Option<Head<Parsed>>, ClientError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut fields);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ClientError::Invalid(e.to_string())),
    };
    let code = r.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| ClientError::Invalid(format!("status code {code}")))?;
    if code == 101 {
        return Err(ClientError::Invalid(
            "101 switching protocols to a request that asked for no upgrade".into(),
        ));
    }
    let info =
        head_info(method, code, r.version.unwrap_or(1), r.headers).map_err(ClientError::Invalid)?;
    // Field values (and a body already whole here) are slices of one copy.
    let whole = match info.framing {
        Framing::Length(n) if n <= (buf.len() - head_len) as u64 => Some(n as usize),
        _ => None,
    };
    let shared = Bytes::copy_from_slice(&buf[..head_len + whole.unwrap_or(0)]);
    let base = buf.as_ptr() as usize;
    let fields = || r.headers.iter().map(|h| (h.name, h.value));
    let named = connection_names_fields(fields());
    let mut map = HeaderMap::with_capacity(r.headers.len());
    for h in r.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| ClientError::Invalid(format!("field name {:?}", h.name)))?;
        let n = name.as_str();
        if hop_by_hop(n)
            || (named && named_by_connection(fields(), n))
            || (info.framing == Framing::Chunked && name == header::CONTENT_LENGTH)
        {
            continue;
        }
        let off = h.value.as_ptr() as usize - base;
        let value = HeaderValue::from_maybe_shared(shared.slice(off..off + h.value.len()))
            .map_err(|_| ClientError::Invalid(format!("value of field {n}")))?;
        map.append(name, value);
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = map;
    Ok(Some(Head {
        len: head_len,
        informational: status.is_informational(),
        value: Parsed {
            response,
            info,
            whole_body: whole.map(|_| shared.slice(head_len..)),
        },
    }))
}

/// The response to hand to hyper: a body already whole in the buffer goes as one `Bytes` and
/// the connection back to the pool now; otherwise the body streams from the connection.
fn respond(
    pool: &Arc<Pool>,
    ep: SocketAddr,
    mut conn: Conn,
    head_len: usize,
    p: Parsed,
) -> Response<ProxyBody> {
    conn.consume(head_len);
    let home = p.info.keep_alive.then(|| (pool.clone(), ep));
    let body = match (p.whole_body, p.info.framing) {
        (Some(data), _) => {
            conn.consume(data.len());
            if let Some((pool, ep)) = home {
                pool.put(ep, conn);
            }
            ProxyBody::full(data)
        }
        (None, Framing::Length(n)) => ProxyBody::Backend(BackendBody {
            conn: Some(conn),
            home,
            state: State::Length(n),
        }),
        (None, Framing::Chunked) => ProxyBody::Backend(BackendBody {
            conn: Some(conn),
            home,
            state: State::Chunked(Chunked::Size),
        }),
        (None, Framing::Close) => ProxyBody::Backend(BackendBody {
            conn: Some(conn),
            home: None,
            state: State::Close,
        }),
    };
    p.response.map(|()| body)
}

/// A response body for the client: whole, or streaming from a backend connection.
pub enum ProxyBody {
    Full(Option<Bytes>),
    Backend(BackendBody),
}

impl ProxyBody {
    /// A body of `data` (none when empty).
    pub fn full(data: Bytes) -> ProxyBody {
        ProxyBody::Full((!data.is_empty()).then_some(data))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Backend(b) => b.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Backend(b) => b.conn.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len()) as u64)
            }
            ProxyBody::Backend(BackendBody {
                state: State::Length(n),
                conn: Some(_),
                ..
            }) => SizeHint::with_exact(*n),
            ProxyBody::Backend(b) if b.conn.is_none() => SizeHint::with_exact(0),
            ProxyBody::Backend(_) => SizeHint::default(),
        }
    }
}

/// A response body read from a backend connection; the connection goes back to the pool when
/// the body ends cleanly (and keep-alive allows), and is closed when the body is dropped early.
pub struct BackendBody {
    /// None once the body has ended.
    conn: Option<Conn>,
    /// Where the connection goes afterwards; None: close it.
    home: Option<(Arc<Pool>, SocketAddr)>,
    state: State,
}

enum State {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunked),
    Close,
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// At a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// At the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer fields until an empty line.
    Trailers,
}

/// One step of the chunked decoder over the buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Needs more bytes.
    More,
    /// Consumed this many bytes of framing.
    Skip(usize),
    /// The first this many bytes are body data.
    Data(usize),
    /// The body ended after consuming this many bytes.
    Done(usize),
}

impl Chunked {
    /// Advances over `buf` by one step.
    pub fn step(&mut self, buf: &[u8]) -> Result<Step, String> {
        match *self {
            Chunked::Size => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((used, 0))) => {
                    *self = Chunked::Trailers;
                    Ok(Step::Skip(used))
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    *self = Chunked::Data(size);
                    Ok(Step::Skip(used))
                }
                Ok(httparse::Status::Partial) => Ok(Step::More),
                Err(_) => Err("invalid chunk size line".into()),
            },
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = left.min(buf.len() as u64);
                *self = if n == left {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(left - n)
                };
                Ok(Step::Data(n as usize))
            }
            Chunked::DataEnd => match buf {
                [b'\r', b'\n', ..] => {
                    *self = Chunked::Size;
                    Ok(Step::Skip(2))
                }
                [] | [b'\r'] => Ok(Step::More),
                _ => Err("chunk data not followed by CRLF".into()),
            },
            Chunked::Trailers => match buf.windows(2).position(|w| w == b"\r\n") {
                Some(0) => Ok(Step::Done(2)),
                Some(i) => Ok(Step::Skip(i + 2)),
                None => Ok(Step::More),
            },
        }
    }
}

impl BackendBody {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buffered = conn.buffered();
            match &mut self.state {
                State::Length(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                State::Length(left) if !buffered.is_empty() => {
                    let n = (*left).min(buffered.len() as u64) as usize;
                    let data = Bytes::copy_from_slice(&buffered[..n]);
                    conn.consume(n);
                    *left -= n as u64;
                    if *left == 0 {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Close if !buffered.is_empty() => {
                    let data = Bytes::copy_from_slice(buffered);
                    let n = data.len();
                    conn.consume(n);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(c) if !buffered.is_empty() => match c.step(buffered) {
                    Ok(Step::More) => {}
                    Ok(Step::Skip(n)) => {
                        conn.consume(n);
                        continue;
                    }
                    Ok(Step::Data(n)) => {
                        let data = Bytes::copy_from_slice(&buffered[..n]);
                        conn.consume(n);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Step::Done(n)) => {
                        conn.consume(n);
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Err(e) => return Poll::Ready(Some(Err(self.fail(e)))),
                },
                _ => {}
            }
            let conn = match self.conn.as_mut() {
                Some(c) => c,
                None => return Poll::Ready(None),
            };
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if matches!(self.state, State::Close) => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Some(Err(
                        self.fail("backend closed the connection mid-body".into())
                    )));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    let msg = format!("reading the response body: {e}");
                    return Poll::Ready(Some(Err(self.fail(msg))));
                }
            }
        }
    }

    /// The body ended cleanly: the connection goes home (or is closed).
    fn finish(&mut self) {
        if let (Some(conn), Some((pool, ep))) = (self.conn.take(), self.home.take()) {
            pool.put(ep, conn);
        }
    }

    /// The body broke: the connection is closed and the client's response aborted.
    fn fail(&mut self, why: String) -> io::Error {
        self.conn = None;
        tracing::warn!(endpoint = ?self.home.as_ref().map(|h| h.1), error = %why, "backend response body failed");
        self.home = None;
        io::Error::new(io::ErrorKind::InvalidData, why)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn h<'a>(name: &'a str, value: &'a str) -> httparse::Header<'a> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        let head = Method::HEAD;
        let info = |m: &Method, s: u16, v: u8, hs: &[httparse::Header<'_>]| {
            head_info(m, s, v, hs).unwrap()
        };
        assert_eq!(
            info(&get, 200, 1, &[h("Content-Length", "7")]),
            HeadInfo {
                framing: Framing::Length(7),
                keep_alive: true
            }
        );
        assert_eq!(
            info(&get, 200, 1, &[h("content-length", "7, 7")]).framing,
            Framing::Length(7)
        );
        assert!(head_info(&get, 200, 1, &[h("content-length", "7, 8")]).is_err());
        assert!(head_info(&get, 200, 1, &[h("content-length", "-1")]).is_err());
        assert!(head_info(&get, 200, 1, &[h("content-length", "")]).is_err());
        // Transfer-Encoding beats Content-Length.
        assert_eq!(
            info(
                &get,
                200,
                1,
                &[
                    h("content-length", "3"),
                    h("Transfer-Encoding", "gzip, chunked")
                ]
            ),
            HeadInfo {
                framing: Framing::Chunked,
                keep_alive: true
            }
        );
        assert_eq!(
            info(&get, 200, 1, &[h("transfer-encoding", "gzip")]),
            HeadInfo {
                framing: Framing::Close,
                keep_alive: false
            }
        );
        // Neither: until close.
        assert_eq!(
            info(&get, 200, 1, &[]),
            HeadInfo {
                framing: Framing::Close,
                keep_alive: false
            }
        );
        // No body whatever the fields say.
        for (m, s) in [(&head, 200), (&get, 204), (&get, 304), (&get, 103)] {
            assert_eq!(
                info(m, s, 1, &[h("content-length", "42")]).framing,
                Framing::Length(0),
                "{m} {s}"
            );
        }
        // Reuse.
        assert!(
            !info(
                &get,
                200,
                1,
                &[h("Connection", "Close"), h("content-length", "1")]
            )
            .keep_alive
        );
        assert!(!info(&get, 200, 0, &[h("content-length", "1")]).keep_alive);
        assert!(
            info(
                &get,
                200,
                0,
                &[h("connection", "Keep-Alive"), h("content-length", "1")]
            )
            .keep_alive
        );
    }

    /// Decodes `wire` fed in pieces of `step` bytes; returns the body and what was left.
    fn dechunk(wire: &[u8], piece: usize) -> Result<(Vec<u8>, usize), String> {
        let mut c = Chunked::Size;
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut body = Vec::new();
        loop {
            match c.step(&buf)? {
                Step::More => {
                    if fed == wire.len() {
                        return Err("incomplete".into());
                    }
                    let n = piece.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
                Step::Skip(n) => {
                    buf.drain(..n);
                }
                Step::Data(n) => {
                    body.extend(buf.drain(..n));
                }
                Step::Done(n) => {
                    buf.drain(..n);
                    return Ok((body, buf.len() + wire.len() - fed));
                }
            }
        }
    }

    #[test]
    fn chunked_decoding_in_any_pieces() {
        let wire = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\n";
        for piece in [1, 2, 3, 7, wire.len()] {
            let (body, left) = dechunk(wire, piece).unwrap();
            assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.", "piece {piece}");
            assert_eq!(left, 0);
        }
        assert!(dechunk(b"4\r\nWikiXX0\r\n\r\n", 64).is_err());
        assert!(dechunk(b"zz\r\n", 64).is_err());
        assert!(dechunk(b"4\r\nWi", 64).is_err());
    }

    #[test]
    fn request_head_drops_hop_by_hop_and_sets_forwarded_fields() {
        let req = hyper::Request::builder()
            .method("POST")
            .uri("http://a.test/p?q=1")
            .header("host", "a.test")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .header("te", "trailers")
            .header("expect", "100-continue")
            .header("x-forwarded-for", "192.0.2.1")
            .header("x-forwarded-for", "192.0.2.2")
            .header("x-forwarded-proto", "ftp")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let fields: Vec<(&str, &[u8])> = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        let mut out = Vec::new();
        let fw = Forward {
            host: Some(b"a.test"),
            peer: "10.0.0.9",
            https: true,
            body: RequestBody::Chunked,
            transfer_encoding: b"chunked",
            upgrade: None,
        };
        encode_request(&mut out, "POST", "/p?q=1", fields.iter().copied(), &fw);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: a.test\r\n\
             x-forwarded-for: 192.0.2.1, 192.0.2.2, 10.0.0.9\r\naccept: */*\r\n\
             x-forwarded-proto: https\r\nx-forwarded-host: a.test\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
    }
}
