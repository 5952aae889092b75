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

/// Why a request could not be forwarded to its backend; [`ClientError::status`] says what the
/// client is answered.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection to the endpoint (refused, unreachable, or timed out).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Writing the request head or body to the backend failed.
    #[error("send request: {0}")]
    Send(io::Error),
    /// The client's request body failed while it was being forwarded (answered 400).
    #[error("read request body from the client: {0}")]
    ClientBody(Box<dyn std::error::Error + Send + Sync>),
    /// Reading the response head from the backend failed.
    #[error("read response head: {0}")]
    Recv(io::Error),
    /// The backend closed the connection without sending a response head.
    #[error("connection closed before a response")]
    Closed,
    /// The backend's response head is malformed (status line or fields).
    #[error("invalid response: {0}")]
    Invalid(String),
    /// The backend's response head breaks the framing rules (`Content-Length`,
    /// `Transfer-Encoding`).
    #[error("invalid response: {0}")]
    Framing(FramingError),
    /// The backend sent no response head within the given time ([`RESPONSE_TIMEOUT`] by default).
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
    /// No body: neither `Content-Length` nor `Transfer-Encoding` is sent.
    None,
    /// This many bytes; the gateway writes the one `Content-Length` field itself.
    Length(u64),
    /// Length unknown: sent with `Transfer-Encoding` (re-chunked, or the client's chunks as
    /// they came).
    Chunked,
}

impl RequestBody {
    /// From the client's request: its `Content-Length` (all fields' values read into one with
    /// [`content_length`]) if any, else chunked when a body follows.
    pub fn of(length: Option<u64>, body: &Incoming) -> RequestBody {
        match length {
            Some(n) => RequestBody::Length(n),
            None if body.is_end_stream() => RequestBody::None,
            None => RequestBody::Chunked,
        }
    }

    /// Whether body bytes follow the head.
    pub fn has_bytes(self) -> bool {
        !matches!(self, RequestBody::None | RequestBody::Length(0))
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
    /// Whether the client came over TLS (`X-Forwarded-Proto: https`).
    pub https: bool,
    /// How the request body follows the head; decides the framing fields written.
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
/// `X-Forwarded-Host` set, then the framing and upgrade fields of `fw`. The framing fields
/// (`Content-Length`, `Transfer-Encoding`) are always the gateway's own, one each at most,
/// never the client's as sent: a backend must read the body's end where the gateway does
/// (RFC 9110 §8.6: a list of equal `Content-Length` values is forwarded as one).
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
    // HTTP/1.1 requires a Host; empty when the client (HTTP/1.0) gave none (RFC 9112 §3.2).
    field(out, b"host", fw.host.unwrap_or(b""));
    let named = connection_names_fields(fields.clone());
    let mut forwarded_for = false;
    for (n, value) in fields.clone() {
        if hop_by_hop(n)
            || n.eq_ignore_ascii_case("host")
            || n.eq_ignore_ascii_case("content-length")
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
    match fw.body {
        RequestBody::None => {}
        RequestBody::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        RequestBody::Chunked => {
            out.extend_from_slice(b"transfer-encoding: ");
            codings(out, out.len(), fw.transfer_encoding);
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(u) = fw.upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        field(out, b"upgrade", u);
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes `n` in decimal, without a formatter.
pub(crate) fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends the elements of a `Transfer-Encoding` list checked by [`transfer_coding`] to the
/// field value begun at `out[start..]`, as `a, b`: without empty elements or odd whitespace.
pub(crate) fn codings(out: &mut Vec<u8>, start: usize, list: &[u8]) {
    for c in list.split(|b| *b == b',') {
        let c = c.trim_ascii();
        if c.is_empty() {
            continue;
        }
        if out.len() > start {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(c);
    }
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
    /// Exactly this many body bytes (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`, up to and including the last chunk and trailers.
    Chunked,
    /// Until the backend closes (the connection cannot be reused).
    Close,
}

/// What the response head says about the body and the connection.
#[derive(Debug, PartialEq, Eq)]
pub struct HeadInfo {
    /// How the response body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
    /// The `Content-Length` to give the client (its fields are never copied): the body's
    /// length, or for HEAD and 304 the length the backend announced; None with
    /// `Transfer-Encoding`, for 1xx and 204, and when the backend sent none.
    pub length: Option<u64>,
}

/// A message that breaks HTTP/1.1's framing rules (RFC 9112 §6, §7.1; RFC 9110 §8.6): where
/// its body ends could be read two ways, so it is refused (a request with 400, a response with
/// 502) rather than guessed at. The messages are the ones clients and logs have always seen;
/// the fields say more, for whoever handles the error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A `Content-Length` field value that is not a list of decimal numbers.
    #[error("content-length {value:?}")]
    ContentLength {
        /// The field's whole value (lossy UTF-8).
        value: String,
    },
    /// `Content-Length` values that disagree (RFC 9110 §8.6).
    #[error("conflicting content-length fields")]
    ConflictingContentLength {
        /// The length earlier values said.
        first: u64,
        /// The value that disagrees with it.
        other: u64,
    },
    /// A `Transfer-Encoding` element that is not a bare token (a parameter, a quoted string,
    /// inner whitespace).
    #[error("transfer-encoding {value:?}")]
    TransferCoding {
        /// The field's whole value (lossy UTF-8).
        value: String,
    },
    /// `chunked` applied twice (RFC 9112 §6.1).
    #[error("transfer-encoding: chunked twice")]
    ChunkedTwice {
        /// The value of the field holding the second `chunked` (lossy UTF-8).
        value: String,
    },
    /// A chunk-size line outside RFC 9112 §7.1.1's grammar.
    #[error("invalid chunk size line: {fault}")]
    ChunkSizeLine {
        /// What is wrong with it.
        fault: ChunkLineFault,
        /// The line up to and including the offending byte (see [`EXCERPT_MAX`]).
        line: String,
    },
    /// Chunk data not followed by CRLF: the chunk size and the data disagree.
    #[error("chunk data not followed by CRLF")]
    ChunkDataEnd {
        /// The bytes found where the CRLF belongs (lossy UTF-8).
        found: String,
    },
    /// A trailer field line outside RFC 9112 §7.1.2 and §5 (no colon, a bad name, obs-fold,
    /// a bare CR or LF, a control character).
    #[error("invalid trailer field line")]
    TrailerLine {
        /// The line up to and including the offending byte (see [`EXCERPT_MAX`]).
        line: String,
    },
}

/// What is wrong with a chunk-size line ([`FramingError::ChunkSizeLine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkLineFault {
    /// More than sixteen significant hex digits: the size does not fit in 64 bits.
    #[error("size too large")]
    SizeTooLarge,
    /// The line does not start with a hex digit.
    #[error("no size")]
    NoSize,
    /// A byte not allowed in a chunk extension's quoted-string value.
    #[error("quoted string")]
    QuotedString,
    /// A CR not followed by LF.
    #[error("CR without LF")]
    CrWithoutLf,
    /// Any other byte out of place (bare LF, whitespace not around `;` or `=`, a non-token
    /// character).
    #[error("unexpected byte")]
    UnexpectedByte,
}

/// Bytes of a line kept in a [`FramingError`] at most (the rest is left out).
pub const EXCERPT_MAX: usize = 64;

/// The first [`EXCERPT_MAX`] bytes of `bytes` as text, for an error.
fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(EXCERPT_MAX)]).into_owned()
}

/// Adds one `Content-Length` field's value (`7`, or `7, 7`) to what earlier fields said: every
/// value must be a decimal number and all must agree (RFC 9110 §8.6).
pub fn content_length(value: &[u8], length: &mut Option<u64>) -> Result<(), FramingError> {
    for v in value.split(|b| *b == b',') {
        let v = v.trim_ascii();
        let n = std::str::from_utf8(v)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| FramingError::ContentLength {
                value: String::from_utf8_lossy(value).into_owned(),
            })?;
        if let Some(first) = *length
            && first != n
        {
            return Err(FramingError::ConflictingContentLength { first, other: n });
        }
        *length = Some(n);
    }
    Ok(())
}

/// What the `Transfer-Encoding` fields of a message say, read in order with
/// [`transfer_coding`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Codings {
    /// At least one field was present.
    pub present: bool,
    /// `chunked` is the last coding applied (so the body is chunked).
    pub chunked_last: bool,
    /// `chunked` was seen.
    chunked: bool,
}

/// Adds one `Transfer-Encoding` field's value to what earlier fields said (RFC 9112 §6.1,
/// RFC 9110 §5.6.1): a list of transfer codings, each a token (no parameters; empty elements
/// are skipped), `chunked` at most once. Anything else is an error: a message whose body's
/// end could be read two ways.
pub fn transfer_coding(value: &[u8], te: &mut Codings) -> Result<(), FramingError> {
    te.present = true;
    for c in value.split(|b| *b == b',') {
        let c = c.trim_ascii();
        if c.is_empty() {
            continue;
        }
        if !c.iter().all(|b| tchar(*b)) {
            return Err(FramingError::TransferCoding {
                value: String::from_utf8_lossy(value).into_owned(),
            });
        }
        let chunked = c.eq_ignore_ascii_case(b"chunked");
        if chunked && te.chunked {
            return Err(FramingError::ChunkedTwice {
                value: String::from_utf8_lossy(value).into_owned(),
            });
        }
        te.chunked |= chunked;
        te.chunked_last = chunked;
    }
    Ok(())
}

/// A token character (RFC 9110 §5.6.2).
pub(crate) fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads framing and reuse from a parsed response head. `version` is httparse's minor
/// version (0 or 1).
pub fn head_info(
    request: &Method,
    status: u16,
    version: u8,
    headers: &[httparse::Header<'_>],
) -> Result<HeadInfo, FramingError> {
    let mut close = false;
    let mut keep_alive_token = false;
    let mut length: Option<u64> = None;
    let mut te = Codings::default();
    for h in headers {
        if h.name.eq_ignore_ascii_case("connection") {
            close |= lists(h.value, "close");
            keep_alive_token |= lists(h.value, "keep-alive");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            content_length(h.value, &mut length)?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_coding(h.value, &mut te)?;
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
    } else if te.present {
        if version >= 1 && te.chunked_last {
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
    // RFC 9110 §8.6: none in 1xx and 204 responses; with Transfer-Encoding, none either.
    let length = match framing {
        _ if (100..200).contains(&status) || status == 204 => None,
        Framing::Length(_) if no_body => length.filter(|_| !te.present),
        Framing::Length(n) => Some(n),
        Framing::Chunked | Framing::Close => None,
    };
    Ok(HeadInfo {
        framing,
        keep_alive,
        length,
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
    let mut body = kind.has_bytes().then_some(body);
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
        head_info(method, code, r.version.unwrap_or(1), r.headers).map_err(ClientError::Framing)?;
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
            || name == header::CONTENT_LENGTH
            || (named && named_by_connection(fields(), n))
        {
            continue;
        }
        let off = h.value.as_ptr() as usize - base;
        let value = HeaderValue::from_maybe_shared(shared.slice(off..off + h.value.len()))
            .map_err(|_| ClientError::Invalid(format!("value of field {n}")))?;
        map.append(name, value);
    }
    if let Some(n) = info.length {
        map.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
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
    /// A body already complete in memory; None once sent (or when empty).
    Full(Option<Bytes>),
    /// A body still being read from the backend connection.
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
    /// Advances over `buf` by one step. The grammar is RFC 9112 §7.1's, strictly: chunks pass
    /// through verbatim, so a backend or client must find every chunk's end where the gateway
    /// does. No bare CR or LF, no whitespace other than around a `;` or `=` of an extension,
    /// chunk sizes of one to sixteen significant hex digits.
    pub fn step(&mut self, buf: &[u8]) -> Result<Step, FramingError> {
        match *self {
            Chunked::Size => match chunk_size_line(buf)? {
                Some((used, 0)) => {
                    *self = Chunked::Trailers;
                    Ok(Step::Skip(used))
                }
                Some((used, size)) => {
                    *self = Chunked::Data(size);
                    Ok(Step::Skip(used))
                }
                None => Ok(Step::More),
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
                _ => Err(FramingError::ChunkDataEnd {
                    found: excerpt(&buf[..buf.len().min(2)]),
                }),
            },
            Chunked::Trailers => match buf {
                [b'\r', b'\n', ..] => Ok(Step::Done(2)),
                [] | [b'\r'] => Ok(Step::More),
                _ => Ok(trailer_line(buf)?.map_or(Step::More, Step::Skip)),
            },
        }
    }
}

/// Where a chunk-size line is (see [`chunk_size_line`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Line {
    Size,
    /// Whitespace after the size or an extension, before a `;`.
    SpaceBeforeSemi,
    /// After `;`, before the extension's name.
    BeforeName,
    Name,
    /// Whitespace after a name: `=` or `;` next.
    AfterName,
    /// After `=`, before the value.
    BeforeValue,
    Token,
    Quoted,
    /// After a `\` in a quoted string.
    Escape,
    /// After a quoted string's closing quote.
    AfterQuoted,
}

/// Parses a chunk-size line at the start of `buf` (RFC 9112 §7.1.1):
/// `1*HEXDIG *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] ) CRLF`.
/// Ok(None): valid so far, incomplete; else the line's length and the chunk size.
fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, FramingError> {
    // `end`: the line's length up to and including the offending byte.
    let bad = |fault, end: usize| {
        Err(FramingError::ChunkSizeLine {
            fault,
            line: excerpt(&buf[..end]),
        })
    };
    let mut size: u64 = 0;
    let mut digits = 0;
    let mut at = Line::Size;
    for (i, &b) in buf.iter().enumerate() {
        at = match (at, b) {
            (Line::Size, _) if b.is_ascii_hexdigit() => {
                let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                size = match size.checked_mul(16).and_then(|s| s.checked_add(d)) {
                    Some(s) => s,
                    None => return bad(ChunkLineFault::SizeTooLarge, i + 1),
                };
                digits += 1;
                Line::Size
            }
            (Line::Size, _) if digits == 0 => return bad(ChunkLineFault::NoSize, i + 1),
            (Line::Quoted, b'"') => Line::AfterQuoted,
            (Line::Quoted, b'\\') => Line::Escape,
            (Line::Quoted, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff) => Line::Quoted,
            (Line::Escape, b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff) => Line::Quoted,
            (Line::Quoted | Line::Escape, _) => return bad(ChunkLineFault::QuotedString, i + 1),
            (Line::Size | Line::Name | Line::Token | Line::AfterQuoted, b'\r') => {
                return match buf.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some((i + 2, size))),
                    Some(_) => bad(ChunkLineFault::CrWithoutLf, i + 2),
                };
            }
            (
                Line::Size
                | Line::SpaceBeforeSemi
                | Line::Name
                | Line::AfterName
                | Line::Token
                | Line::AfterQuoted,
                b';',
            ) => Line::BeforeName,
            (
                Line::Size | Line::Token | Line::AfterQuoted | Line::SpaceBeforeSemi,
                b' ' | b'\t',
            ) => Line::SpaceBeforeSemi,
            (Line::BeforeName, b' ' | b'\t') => Line::BeforeName,
            (Line::BeforeName | Line::Name, _) if tchar(b) => Line::Name,
            (Line::Name | Line::AfterName, b' ' | b'\t') => Line::AfterName,
            (Line::Name | Line::AfterName, b'=') => Line::BeforeValue,
            (Line::BeforeValue, b' ' | b'\t') => Line::BeforeValue,
            (Line::BeforeValue, b'"') => Line::Quoted,
            (Line::BeforeValue | Line::Token, _) if tchar(b) => Line::Token,
            _ => return bad(ChunkLineFault::UnexpectedByte, i + 1),
        };
    }
    Ok(None)
}

/// Checks one trailer field line at the start of `buf` (RFC 9112 §7.1.2, §5: `field-name ":"
/// OWS field-value OWS CRLF`; no obs-fold, no bare CR or LF, no control characters). Ok(None):
/// valid so far, incomplete; else the line's length with its CRLF.
fn trailer_line(buf: &[u8]) -> Result<Option<usize>, FramingError> {
    // `end`: the line's length up to and including the offending byte.
    let bad = |end: usize| {
        Err(FramingError::TrailerLine {
            line: excerpt(&buf[..end]),
        })
    };
    let mut in_name = true;
    for (i, &b) in buf.iter().enumerate() {
        if in_name {
            match b {
                b':' if i > 0 => in_name = false,
                _ if tchar(b) => {}
                _ => return bad(i + 1),
            }
            continue;
        }
        match b {
            b'\r' => {
                return match buf.get(i + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some(i + 2)),
                    Some(_) => bad(i + 2),
                };
            }
            b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => {}
            _ => return bad(i + 1),
        }
    }
    Ok(None)
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
                        self.fail("backend closed the connection mid-body")
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
    fn fail(&mut self, why: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
        let why = why.into();
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
                keep_alive: true,
                length: Some(7),
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
                keep_alive: true,
                length: None,
            }
        );
        assert_eq!(
            info(&get, 200, 1, &[h("transfer-encoding", "gzip")]),
            HeadInfo {
                framing: Framing::Close,
                keep_alive: false,
                length: None,
            }
        );
        // Neither: until close.
        assert_eq!(
            info(&get, 200, 1, &[]),
            HeadInfo {
                framing: Framing::Close,
                keep_alive: false,
                length: None,
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

    /// Why [`dechunk`] found no body.
    #[derive(Debug, PartialEq, Eq, thiserror::Error)]
    enum Dechunk {
        /// The wire ended before the body did.
        #[error("incomplete")]
        Incomplete,
        /// The decoder refused the wire.
        #[error(transparent)]
        Invalid(#[from] FramingError),
    }

    /// Decodes `wire` fed in pieces of `step` bytes; returns the body and what was left.
    fn dechunk(wire: &[u8], piece: usize) -> Result<(Vec<u8>, usize), Dechunk> {
        let mut c = Chunked::Size;
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut body = Vec::new();
        loop {
            match c.step(&buf)? {
                Step::More => {
                    if fed == wire.len() {
                        return Err(Dechunk::Incomplete);
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
    fn chunk_framing_follows_rfc_9112_strictly() {
        // Accepted: the body, in any pieces.
        for (wire, body) in [
            (&b"5\r\nhello\r\n0\r\n\r\n"[..], &b"hello"[..]),
            (b"5;a\r\nhello\r\n0\r\n\r\n", b"hello"),
            (
                b"5 ;a=b\t; c = \"x\\\"y;\"\r\nhello\r\n000;z\r\n\r\n",
                b"hello",
            ),
            (
                b"00005\r\nhello\r\n0\r\nA: 1\r\nB:\r\nC: x\ty \x80\r\n\r\n",
                b"hello",
            ),
            (b"fFfFfFfFfFfFfFfF\r\n", b""),
        ] {
            for piece in [1, 2, wire.len()] {
                match dechunk(wire, piece) {
                    Ok((got, _)) => assert_eq!(got, body, "{:?}", String::from_utf8_lossy(wire)),
                    // Only the huge chunk is cut short.
                    Err(e) => assert_eq!(
                        e,
                        Dechunk::Incomplete,
                        "{:?}",
                        String::from_utf8_lossy(wire)
                    ),
                }
            }
        }
        // Refused, whatever the pieces.
        for wire in [
            &b"\r\n\r\n"[..],
            b";a\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5\n",
            b"5\r5",
            b"5;a\nb\r\n",
            b"5;a b\r\n",
            b"5;a=\r\n",
            b"5;=b\r\n",
            b"5;a =b c\r\n",
            b"5;a=\"b\r\n",
            b"5;a=\"b\x7f\"\r\n",
            b"5;a=b\"c\"\r\n",
            b"5;a\x00\r\n",
            b"0x5\r\n",
            b"+5\r\n",
            b"-0\r\n",
            b"5g\r\n",
            b"10000000000000000\r\n",
            b"5\r\nhelloX\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\nA: 1\nB: 2\r\n\r\n",
            b"0\r\nA: 1\r\n folded\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"0\r\n: v\r\n\r\n",
            b"0\r\nA : v\r\n\r\n",
            b"0\r\nA: \x00\r\n\r\n",
            b"0\r\nA: 1\rB\r\n\r\n",
            b"0\r\n\rX",
        ] {
            for piece in [1, 3, wire.len()] {
                let r = dechunk(wire, piece);
                assert!(
                    r.as_ref().is_err_and(|e| *e != Dechunk::Incomplete),
                    "{:?} in pieces of {piece}: {r:?}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
    }

    #[test]
    fn framing_errors_name_what_broke_and_keep_their_text() {
        let mut length = None;
        let e = content_length(b"7, x", &mut length).unwrap_err();
        assert_eq!(
            e,
            FramingError::ContentLength {
                value: "7, x".into()
            }
        );
        assert_eq!(e.to_string(), "content-length \"7, x\"");
        let mut length = Some(7);
        let e = content_length(b"7, 8", &mut length).unwrap_err();
        assert_eq!(
            e,
            FramingError::ConflictingContentLength { first: 7, other: 8 }
        );
        assert_eq!(e.to_string(), "conflicting content-length fields");
        let e = transfer_coding(b"chunked;q=1", &mut Codings::default()).unwrap_err();
        assert_eq!(e.to_string(), "transfer-encoding \"chunked;q=1\"");
        let e = transfer_coding(b"chunked, chunked", &mut Codings::default()).unwrap_err();
        assert_eq!(
            e,
            FramingError::ChunkedTwice {
                value: "chunked, chunked".into()
            }
        );
        assert_eq!(e.to_string(), "transfer-encoding: chunked twice");
        let size_line = |wire: &[u8]| Chunked::Size.step(wire).unwrap_err();
        for (wire, fault, line, text) in [
            (&b"zz\r\n"[..], ChunkLineFault::NoSize, "z", "no size"),
            (
                b"5;a b\r\n",
                ChunkLineFault::UnexpectedByte,
                "5;a b",
                "unexpected byte",
            ),
            (
                b"5\r5",
                ChunkLineFault::CrWithoutLf,
                "5\r5",
                "CR without LF",
            ),
            (
                b"5;a=\"\x7f\"",
                ChunkLineFault::QuotedString,
                "5;a=\"\x7f",
                "quoted string",
            ),
            (
                b"10000000000000000\r\n",
                ChunkLineFault::SizeTooLarge,
                "10000000000000000",
                "size too large",
            ),
        ] {
            let e = size_line(wire);
            assert_eq!(
                e,
                FramingError::ChunkSizeLine {
                    fault,
                    line: line.into()
                }
            );
            assert_eq!(e.to_string(), format!("invalid chunk size line: {text}"));
        }
        // A long line is kept in part.
        let mut long = b"5;".to_vec();
        long.extend([b'a'; 100]);
        long.extend(b" x\r\n");
        let FramingError::ChunkSizeLine { line, .. } = size_line(&long) else {
            panic!("not a chunk size line error");
        };
        assert_eq!(line.as_bytes(), &long[..EXCERPT_MAX]);
        let e = Chunked::DataEnd.step(b"X\r\n").unwrap_err();
        assert_eq!(
            e,
            FramingError::ChunkDataEnd {
                found: "X\r".into()
            }
        );
        assert_eq!(e.to_string(), "chunk data not followed by CRLF");
        let e = Chunked::Trailers.step(b"A : v\r\n").unwrap_err();
        assert_eq!(e, FramingError::TrailerLine { line: "A ".into() });
        assert_eq!(e.to_string(), "invalid trailer field line");
    }

    #[test]
    fn transfer_codings_are_tokens_with_chunked_once() {
        let read = |fields: &[&str]| {
            let mut te = Codings::default();
            for f in fields {
                transfer_coding(f.as_bytes(), &mut te)?;
            }
            Ok::<_, FramingError>(te.chunked_last)
        };
        assert_eq!(read(&["chunked"]), Ok(true));
        assert_eq!(read(&["gzip, Chunked"]), Ok(true));
        assert_eq!(read(&["gzip", "chunked"]), Ok(true));
        assert_eq!(read(&[", chunked ,"]), Ok(true));
        assert_eq!(read(&["chunked, gzip"]), Ok(false));
        assert_eq!(read(&["gzip"]), Ok(false));
        for bad in [
            &["chunked, chunked"][..],
            &["chunked", "chunked"],
            &["chunked;q=1"],
            &["\"chunked\""],
            &["chun ked"],
        ] {
            assert!(read(bad).is_err(), "{bad:?}");
        }
        let mut out = b"x".to_vec();
        codings(&mut out, 1, b" ,gzip ,\tchunked, ");
        assert_eq!(out, b"xgzip, chunked");
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
