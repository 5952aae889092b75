//! Serving: hickory parses every request and encodes each record; [`respond`] puts the
//! response together from the indexed [`Zone`]: the header, the question as asked, the
//! sections RRset by RRset within the transport's size, and the OPT.
//!
//! - EDNS (RFC 6891): version 0 only. A query asking for a higher version gets BADVERS with our
//!   version and no answer (§6.1.3), before anything else, so also for names we would forward
//!   (as CoreDNS, nsd and knot). A query with an OPT gets ours (payload [`EDNS_PAYLOAD`]).
//! - Size: UDP takes the client's EDNS payload size (less than 512 counts as 512; 512 without
//!   EDNS), capped at ours; TCP 65535. The OPT's room is kept before any record goes in, so a
//!   truncated response still carries it (§7). An answer or authority RRset that does not fit
//!   whole is left out with everything after it and TC is set; additional records that do not
//!   fit are left out without TC (RFC 2181 §9). nsd 4.6 and knot 3.2 do the same: a big RRset
//!   gets TC and no answer records at all.
//! - UDP: `udp_workers` threads each loop on `recvmmsg` → [`respond`] → `sendmmsg` over the
//!   shared socket (`crate::udp`), holding the zone's read lock while answering a batch. (hickory's own UDP
//!   server spawns a task and passes every response through a channel; measured in
//!   BENCHMARKS.md, that costs more than the lookup itself. It stays selectable with
//!   [`UdpMode::Hickory`].)
//! - TCP: hickory's `Server` with [`Handler`], our `RequestHandler`.
//! - Names outside the zone go to the upstreams through [`Forwarder`]; with none configured
//!   they get SERVFAIL at once (what CoreDNS' `kubernetes` plugin answers when no `forward`
//!   follows it). An upstream answer larger than the client's size is sent as a truncated
//!   response of ours ([`relayed`]).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::ProtoError;
use hickory_server::proto::op::{
    Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinDecoder, BinEncodable, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use tokio::sync::oneshot;

use crate::wire::{OPT_LEN, QueryOpt, opt_record};
use crate::zone::{Lookup, Zone};

/// The EDNS payload size we advertise (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// The highest EDNS version we implement.
pub const EDNS_VERSION: u8 = 0;
/// How long a forwarded query may take in all before the client gets SERVFAIL.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// The zone as the serving side shares it.
pub type SharedZone = Arc<RwLock<Zone>>;

/// What [`respond`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response is in the buffer.
    Answered(ResponseCode),
    /// Not ours: forward the raw request.
    Forward,
    /// Nothing to send (a response, or a message without a header).
    Drop,
}

/// Answers `request` from `zone` into `out` (cleared first). `max_size`: the largest
/// response the transport takes (UDP: [`udp_max_size`]; TCP: 65535); what does not fit is
/// left out as the module doc says, with TC when the client should ask again over TCP.
pub fn respond(zone: &Zone, request: &Request, max_size: u16, out: &mut Vec<u8>) -> Outcome {
    answer(zone, request, max_size, out).0
}

/// [`respond`], and whether the response holds every record of the answer. Only such a
/// response is the same for every client whatever its size (at least 512), so only it may be
/// given to others (the UDP workers' stored responses).
pub(crate) fn answer(
    zone: &Zone,
    request: &Request,
    max_size: u16,
    out: &mut Vec<u8>,
) -> (Outcome, bool) {
    out.clear();
    let meta = &request.metadata;
    if meta.message_type == MessageType::Response {
        return (Outcome::Drop, false);
    }
    let edns = query_opt(request);
    let base = Metadata::response_from_request(meta);
    let fail = |code: ResponseCode, out: &mut Vec<u8>| {
        let mut m = base;
        m.response_code = code;
        match encode(request, m, edns, [&[], &[], &[]], max_size, out) {
            Ok(whole) => (Outcome::Answered(code), whole),
            Err(()) => (Outcome::Drop, false),
        }
    };
    if request
        .edns
        .as_ref()
        .is_some_and(|e| e.version() > EDNS_VERSION)
    {
        return fail(ResponseCode::BADVERS, out);
    }
    if meta.op_code != OpCode::Query {
        return fail(ResponseCode::NotImp, out);
    }
    let [query] = request.queries.queries() else {
        return fail(ResponseCode::FormErr, out);
    };
    if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
        return fail(ResponseCode::Refused, out);
    }
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
        return fail(ResponseCode::Refused, out);
    }
    match zone.lookup(query.name(), query.query_type()) {
        Lookup::Forward => (Outcome::Forward, false),
        Lookup::Answer(a) => {
            let mut rmeta = base;
            rmeta.authoritative = a.authoritative;
            rmeta.response_code = a.rcode;
            let sections = [&a.answers[..], &a.authority[..], &a.additional[..]];
            match encode(request, rmeta, edns, sections, max_size, out) {
                Ok(whole) => (Outcome::Answered(a.rcode), whole),
                Err(()) => fail(ResponseCode::ServFail, out),
            }
        }
    }
}

/// SERVFAIL for `request` (no upstream, or the upstreams did not answer in time).
pub fn servfail(request: &Request, max_size: u16, out: &mut Vec<u8>) -> bool {
    let mut m = Metadata::response_from_request(&request.metadata);
    m.response_code = ResponseCode::ServFail;
    encode(
        request,
        m,
        query_opt(request),
        [&[], &[], &[]],
        max_size,
        out,
    )
    .is_ok()
}

/// What the client gets of the upstream response `resp` to `request`: `resp` when it fits
/// `max_size`, else a truncated response of ours (TC, the question, our OPT when the query had
/// one, the upstream's RCODE, AA and RA), so the client asks again over TCP. `None` when even
/// that cannot be encoded.
pub fn relayed(request: &Request, resp: Vec<u8>, max_size: u16) -> Option<Vec<u8>> {
    if resp.len() <= usize::from(max_size) {
        return Some(resp);
    }
    let mut m = Metadata::response_from_request(&request.metadata);
    m.truncation = true;
    if let [_, _, flags, codes, ..] = resp[..] {
        m.authoritative = flags & 0x04 != 0;
        m.recursion_available = codes & 0x80 != 0;
        m.response_code = ResponseCode::from_low(codes & 0x0f);
    }
    let mut out = Vec::new();
    let edns = query_opt(request);
    encode(request, m, edns, [&[], &[], &[]], max_size, &mut out)
        .ok()
        .map(|_| out)
}

/// The query's OPT as our responses answer it: none, or one with the query's DO bit.
fn query_opt(request: &Request) -> QueryOpt {
    request.edns.as_ref().map(|e| e.flags().dnssec_ok)
}

/// Encodes a response into `out` (cleared first), at most `max_size` bytes: the header, the
/// question as the client sent it, the answer, authority and additional sections (`sections`)
/// RRset by RRset as far as they fit, then our OPT when `edns` (the query had one; with its DO
/// bit), whose room
/// is kept from the start (RFC 6891 §7). Returns whether every record went in. When not even
/// the question fits, the header alone with TC (and the OPT). On an encoding error (not a full
/// buffer) `out` is left empty.
fn encode(
    request: &Request,
    meta: Metadata,
    edns: QueryOpt,
    sections: [&[&Record]; 3],
    max_size: u16,
    out: &mut Vec<u8>,
) -> Result<bool, ()> {
    out.clear();
    let room = if edns.is_some() {
        max_size.saturating_sub(OPT_LEN as u16)
    } else {
        max_size
    };
    let opt = |out: &mut Vec<u8>| {
        if let Some(dnssec_ok) = edns {
            out.extend_from_slice(&opt_record(meta.response_code.high(), dnssec_ok));
        }
    };
    match encode_sections(request, meta, edns.is_some(), sections, room, out) {
        Ok(whole) => {
            opt(out);
            Ok(whole)
        }
        Err(ProtoError::MaxBufferSizeExceeded(_)) => {
            // Records are fitted RRset by RRset, so only the question can overflow: a query
            // with more questions than the size takes (FORMERR). The header alone, with TC.
            out.clear();
            let mut metadata = meta;
            metadata.truncation = true;
            let counts = HeaderCounts {
                additionals: u16::from(edns.is_some()),
                ..HeaderCounts::default()
            };
            let header = Header { metadata, counts };
            header
                .emit(&mut BinEncoder::new(out))
                .map_err(|e| tracing::warn!(error = %e, "cannot encode a header"))?;
            opt(out);
            Ok(false)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a response");
            out.clear();
            Err(())
        }
    }
}

/// The header, the question and the sections of [`encode`], within `room` bytes; the
/// header's additional count includes the OPT that follows when `edns`.
fn encode_sections(
    request: &Request,
    meta: Metadata,
    edns: bool,
    sections: [&[&Record]; 3],
    room: u16,
    out: &mut Vec<u8>,
) -> Result<bool, ProtoError> {
    let mut enc = BinEncoder::new(out);
    enc.set_max_size(room);
    let place = enc.place::<Header>()?;
    // The question byte for byte (DNS 0x20 clients compare it), remembered for compression as
    // hickory does: as a whole, type and class included, so no later name points into it
    // (`zone::EncodedSoa` and `wire::negative` rely on that).
    let question = request.queries.as_bytes();
    let start = enc.offset();
    enc.emit_vec(question)?;
    if !request.queries.is_empty() {
        enc.store_label_pointer(start, start + question.len());
    }
    let mut counts = [0u16; 3];
    let mut truncated = meta.truncation;
    let mut whole = true;
    for (i, records) in sections.into_iter().enumerate() {
        let (n, all) = emit_rrsets(&mut enc, records)?;
        counts[i] = n;
        if !all {
            whole = false;
            // RFC 2181 §9: TC when the answer or authority section lost an RRset, not for
            // additional information.
            truncated |= i < 2;
            break;
        }
    }
    let queries = u16::try_from(request.queries.len())
        .map_err(|_| ProtoError::Message("too many queries to fit in header count"))?;
    let mut metadata = meta;
    metadata.truncation = truncated;
    let header = Header {
        metadata,
        counts: HeaderCounts {
            queries,
            answers: counts[0],
            authorities: counts[1],
            additionals: counts[2] + u16::from(edns),
        },
    };
    place.replace(&mut enc, header)?;
    Ok(whole)
}

/// Emits `records` RRset by RRset: the records of one name, type and class together, in the
/// order of each RRset's first record. An RRset that does not fit whole is taken out again
/// and ends the section. Returns how many records went in and whether all did.
fn emit_rrsets(enc: &mut BinEncoder<'_>, records: &[&Record]) -> Result<(u16, bool), ProtoError> {
    let same_rrset = |a: &Record, b: &Record| {
        a.record_type() == b.record_type() && a.dns_class == b.dns_class && a.name == b.name
    };
    let mut taken = vec![false; records.len()];
    let mut count = 0u16;
    for i in 0..records.len() {
        if taken[i] {
            continue;
        }
        let mark = enc.offset();
        let mut n = 0u16;
        for j in i..records.len() {
            if taken[j] || !same_rrset(records[i], records[j]) {
                continue;
            }
            taken[j] = true;
            match records[j].emit(enc) {
                Ok(()) => n += 1,
                Err(ProtoError::MaxBufferSizeExceeded(_)) => {
                    // Back to before the RRset: its bytes and the names it left for
                    // compression.
                    enc.set_offset(mark);
                    enc.trim();
                    return Ok((count, false));
                }
                Err(e) => return Err(e),
            }
        }
        count += n;
    }
    Ok((count, true))
}

/// The largest UDP response `request` accepts: its EDNS payload size (512 when less, or
/// without EDNS; RFC 6891 §6.2.5, RFC 1035 §4.2.1), at most ours.
pub fn udp_max_size(request: &Request) -> u16 {
    request.max_payload().min(EDNS_PAYLOAD.max(512))
}

/// Sends queries for names outside the zone to the upstream servers over UDP and hands back
/// their responses, under the client's query id. A truncated (TC) response is asked again
/// over TCP, as a resolver does; the TCP sockets are made in the network namespace of the UDP
/// socket (see `TcpMaker`), so they reach the same upstreams after the process moved.
pub struct Forwarder {
    socket: Arc<tokio::net::UdpSocket>,
    upstreams: Vec<SocketAddr>,
    pending: Arc<Mutex<HashMap<u16, oneshot::Sender<Vec<u8>>>>>,
    next_id: AtomicU16,
    tcp: TcpMaker,
}

/// `ioctl(2)` on a socket: a file descriptor for the socket's network namespace (linux
/// `SIOCGSKNS`, not in the libc crate).
const SIOCGSKNS: libc::c_ulong = 0x894c;

/// Where TCP sockets to the upstreams are made.
enum TcpMaker {
    /// A thread that joined the UDP socket's network namespace makes them.
    Thread(Mutex<std::sync::mpsc::Sender<TcpOrder>>),
    /// The calling thread makes them (the namespace could not be found or joined).
    Here,
}

/// (IPv6?, where the new socket goes)
type TcpOrder = (bool, oneshot::Sender<std::io::Result<std::os::fd::OwnedFd>>);

/// A non-blocking TCP socket of the calling thread's network namespace.
fn tcp_socket(v6: bool) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: socket(2) with constant arguments; a non-negative result is a new descriptor
    // that nothing else owns.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

impl TcpMaker {
    /// A thread in the network namespace of the socket `udp`, or [`TcpMaker::Here`] when
    /// that namespace cannot be had (then TCP goes from wherever the caller is).
    fn for_socket(udp: &UdpSocket) -> Self {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor or -1.
        let ns = unsafe { libc::ioctl(udp.as_raw_fd(), SIOCGSKNS as _) };
        if ns < 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "no namespace of the upstream socket; TCP retries go from the current one");
            return Self::Here;
        }
        // SAFETY: a new descriptor that nobody else owns.
        let ns = unsafe { OwnedFd::from_raw_fd(ns) };
        let (tx, rx) = std::sync::mpsc::channel::<TcpOrder>();
        let spawned = std::thread::Builder::new()
            .name("dns-fwd-tcp".into())
            .spawn(move || {
                // SAFETY: setns(2) on a namespace descriptor, for this thread only.
                let joined = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0;
                if !joined {
                    tracing::warn!(error = %std::io::Error::last_os_error(), "cannot join the upstream socket's namespace; TCP retries go from the current one");
                }
                drop(ns);
                while let Ok((v6, reply)) = rx.recv() {
                    let _ = reply.send(tcp_socket(v6));
                }
            });
        match spawned {
            Ok(_) => Self::Thread(Mutex::new(tx)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the TCP socket thread");
                Self::Here
            }
        }
    }

    async fn socket(&self, v6: bool) -> std::io::Result<std::os::fd::OwnedFd> {
        let gone = || std::io::Error::other("the TCP socket thread is gone");
        match self {
            Self::Here => tcp_socket(v6),
            Self::Thread(tx) => {
                let (reply, rx) = oneshot::channel();
                tx.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .send((v6, reply))
                    .map_err(|_| gone())?;
                rx.await.map_err(|_| gone())?
            }
        }
    }
}

impl Forwarder {
    /// `socket`: bound where the upstreams are reachable (in the lab: the pod's namespace, so
    /// bind it before the process moves to the store's). Call inside a tokio runtime.
    pub fn new(socket: UdpSocket, upstreams: Vec<SocketAddr>) -> std::io::Result<Arc<Self>> {
        socket.set_nonblocking(true)?;
        let tcp = TcpMaker::for_socket(&socket);
        let socket = Arc::new(tokio::net::UdpSocket::from_std(socket)?);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u16)
            .unwrap_or(1);
        let fwd = Arc::new(Self {
            socket: socket.clone(),
            upstreams,
            pending: Arc::default(),
            next_id: AtomicU16::new(seed),
            tcp,
        });
        let pending = fwd.pending.clone();
        let ups = fwd.upstreams.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                if n < 12 || !ups.contains(&from) {
                    continue;
                }
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                let waiter = pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if let Some(tx) = waiter {
                    let _ = tx.send(buf[..n].to_vec());
                }
            }
        });
        Ok(fwd)
    }

    /// Whether any upstream is configured (without one, names outside the zone fail at once).
    pub fn has_upstreams(&self) -> bool {
        !self.upstreams.is_empty()
    }

    /// The upstream's response to the raw query `raw`, with `raw`'s id; `None` when no
    /// upstream answered within [`FORWARD_TIMEOUT`]. A truncated response is asked again over
    /// TCP; the whole answer is returned when it is at most `max_size` bytes, else the
    /// truncated one (the client then asks again over TCP).
    pub async fn forward(&self, raw: &[u8], max_size: usize) -> Option<Vec<u8>> {
        if raw.len() < 12 || self.upstreams.is_empty() {
            return None;
        }
        let client_id = [raw[0], raw[1]];
        let per_try = FORWARD_TIMEOUT / u32::try_from(self.upstreams.len()).unwrap_or(1);
        for up in &self.upstreams {
            let started = tokio::time::Instant::now();
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, tx);
            let mut q = raw.to_vec();
            q[..2].copy_from_slice(&id.to_be_bytes());
            let sent = self.socket.send_to(&q, up).await;
            let got = match sent {
                Ok(_) => tokio::time::timeout(per_try, rx)
                    .await
                    .ok()
                    .and_then(Result::ok),
                Err(e) => {
                    tracing::debug!(upstream = %up, error = %e, "cannot send to upstream");
                    None
                }
            };
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            if let Some(mut resp) = got {
                if resp[2] & 0x02 != 0 {
                    let left = per_try.saturating_sub(started.elapsed());
                    match tokio::time::timeout(left, self.over_tcp(*up, &q)).await {
                        Ok(Ok(whole)) if whole.len() <= max_size => resp = whole,
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(upstream = %up, error = %e, "TCP retry of a truncated answer failed");
                        }
                        Err(_) => {
                            tracing::debug!(upstream = %up, "TCP retry of a truncated answer timed out")
                        }
                    }
                }
                resp[..2].copy_from_slice(&client_id);
                return Some(resp);
            }
        }
        None
    }

    /// One query over a new TCP connection to `up`: the response, with the query's id.
    async fn over_tcp(&self, up: SocketAddr, q: &[u8]) -> std::io::Result<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let fd = self.tcp.socket(up.is_ipv6()).await?;
        let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
        let mut s = sock.connect(up).await?;
        let len = u16::try_from(q.len()).map_err(|_| bad("query longer than 65535 bytes"))?;
        let mut framed = Vec::with_capacity(q.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(q);
        s.write_all(&framed).await?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut body).await?;
        if body.len() < 12 || body[..2] != q[..2] || body[2] & 0x80 == 0 {
            return Err(bad("not a response to the query"));
        }
        Ok(body)
    }
}

/// Serves UDP on `socket` with `workers` threads (see the module doc). Forwarded queries
/// run on `rt`. The threads run until the process ends.
pub fn spawn_udp_workers(
    socket: UdpSocket,
    zone: SharedZone,
    forwarder: Option<Arc<Forwarder>>,
    rt: tokio::runtime::Handle,
    workers: usize,
) -> std::io::Result<()> {
    socket.set_nonblocking(false)?;
    let socket = Arc::new(socket);
    for i in 0..workers.max(1) {
        let sock = socket.clone();
        let zone = zone.clone();
        let fwd = forwarder.clone();
        let rt = rt.clone();
        std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || crate::udp::udp_loop(&sock, &zone, fwd.as_ref(), &rt))?;
    }
    Ok(())
}

/// hickory's `RequestHandler` over the zone (TCP, and UDP with [`UdpMode::Hickory`]).
pub struct Handler {
    /// The zone the answers come from.
    pub zone: SharedZone,
    /// Where questions outside the zone go; `None` (or no upstream) answers them SERVFAIL.
    pub forwarder: Option<Arc<Forwarder>>,
}

/// Who serves UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpMode {
    /// Our worker threads ([`spawn_udp_workers`]).
    Workers,
    /// hickory's `Server` with [`Handler`].
    Hickory,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let max = match request.protocol() {
            Protocol::Udp => udp_max_size(request),
            _ => u16::MAX,
        };
        let mut out = Vec::new();
        let outcome = {
            let z = self.zone.read().unwrap_or_else(|p| p.into_inner());
            respond(&z, request, max, &mut out)
        };
        let bytes = match outcome {
            Outcome::Answered(_) => Some(out),
            Outcome::Drop => None,
            Outcome::Forward => {
                let fwd = match &self.forwarder {
                    Some(f) if f.has_upstreams() => f
                        .forward(request.as_slice(), usize::from(max))
                        .await
                        .and_then(|r| relayed(request, r, max)),
                    _ => None,
                };
                match fwd {
                    Some(r) => Some(r),
                    None => servfail(request, max, &mut out).then_some(out),
                }
            }
        };
        let failed = || {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata: m,
                counts: HeaderCounts::default(),
            })
        };
        let Some(bytes) = bytes else {
            return failed();
        };
        // The handle wants a message to encode: decode ours (already encoded once, so it
        // holds exactly what the client gets, truncation included).
        let Ok(msg) = Message::from_vec(&bytes) else {
            return failed();
        };
        // The question as the request had it, unless ours left it out (it did not fit).
        let none = Queries::read(&mut BinDecoder::new(&[]), 0);
        let mut builder = match &none {
            Ok(none) if msg.queries.is_empty() => MessageResponseBuilder::new(none, None),
            _ => MessageResponseBuilder::from_message_request(request),
        };
        if let Some(e) = &msg.edns {
            builder.edns(e);
        }
        let resp = builder.build(
            msg.metadata,
            msg.answers.iter(),
            msg.authorities.iter(),
            std::iter::empty(),
            msg.additionals.iter(),
        );
        match response_handle.send_response(resp).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "cannot send a response");
                failed()
            }
        }
    }
}
