//! Serving: hickory parses every request and encodes every response (truncation included);
//! the answer comes from the indexed [`Zone`].
//!
//! - UDP: `udp_workers` threads each loop on `recvmmsg` → [`respond`] → `sendmmsg` over the
//!   shared socket (`crate::udp`), holding the zone's read lock while answering a batch. (hickory's own UDP
//!   server spawns a task and passes every response through a channel; measured in
//!   BENCHMARKS.md, that costs more than the lookup itself. It stays selectable with
//!   [`UdpMode::Hickory`].)
//! - TCP: hickory's `Server` with [`Handler`], our `RequestHandler`.
//! - Names outside the zone go to the upstreams through [`Forwarder`]; with none configured
//!   they get SERVFAIL at once (what CoreDNS' `kubernetes` plugin answers when no `forward`
//!   follows it).

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::sync::oneshot;

use crate::zone::{Lookup, Zone};

/// The EDNS payload size we advertise (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
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
/// response the transport takes (UDP: the client's EDNS size or 512; TCP: 65535); a larger
/// answer is truncated and flagged TC, so the client retries over TCP.
pub fn respond(zone: &Zone, request: &Request, max_size: u16, out: &mut Vec<u8>) -> Outcome {
    out.clear();
    let meta = &request.metadata;
    if meta.message_type == MessageType::Response {
        return Outcome::Drop;
    }
    let edns = request.edns.as_ref().map(|_| our_edns());
    let base = Metadata::response_from_request(meta);
    let fail = |code: ResponseCode, out: &mut Vec<u8>| {
        let mut m = base;
        m.response_code = code;
        encode(request, m, edns.as_ref(), &[], &[], &[], max_size, out)
            .map_or(Outcome::Drop, |()| Outcome::Answered(code))
    };
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
        Lookup::Forward => Outcome::Forward,
        Lookup::Answer(a) => {
            let mut rmeta = base;
            rmeta.authoritative = a.authoritative;
            rmeta.response_code = a.rcode;
            match encode(
                request,
                rmeta,
                edns.as_ref(),
                &a.answers,
                &a.authority,
                &a.additional,
                max_size,
                out,
            ) {
                Ok(()) => Outcome::Answered(a.rcode),
                Err(()) => fail(ResponseCode::ServFail, out),
            }
        }
    }
}

/// SERVFAIL for `request` (no upstream, or the upstreams did not answer in time).
pub fn servfail(request: &Request, max_size: u16, out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut m = Metadata::response_from_request(&request.metadata);
    m.response_code = ResponseCode::ServFail;
    let edns = request.edns.as_ref().map(|_| our_edns());
    encode(request, m, edns.as_ref(), &[], &[], &[], max_size, out).is_ok()
}

fn our_edns() -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(EDNS_PAYLOAD);
    e
}

#[allow(clippy::too_many_arguments)] // the sections of one message
fn encode(
    request: &Request,
    meta: Metadata,
    edns: Option<&Edns>,
    answers: &[&Record],
    authority: &[&Record],
    additional: &[&Record],
    max_size: u16,
    out: &mut Vec<u8>,
) -> Result<(), ()> {
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if let Some(e) = edns {
        builder.edns(e);
    }
    let resp = builder.build(
        meta,
        answers.iter().copied(),
        std::iter::empty(),
        authority.iter().copied(),
        additional.iter().copied(),
    );
    let mut enc = BinEncoder::new(out);
    enc.set_max_size(max_size);
    match resp.destructive_emit(&mut enc) {
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode a response");
            out.clear();
            let mut m = Metadata::new(meta.id, MessageType::Response, meta.op_code);
            m.response_code = ResponseCode::ServFail;
            let header = Header {
                metadata: m,
                counts: HeaderCounts::default(),
            };
            let mut enc = BinEncoder::new(out);
            header.emit(&mut enc).map_err(|_| ())
        }
    }
}

/// The largest UDP response `request` accepts.
pub fn udp_max_size(request: &Request) -> u16 {
    request.max_payload().min(EDNS_PAYLOAD.max(512))
}

/// Sends queries for names outside the zone to the upstream servers over UDP and hands back
/// their responses, under the client's query id. A truncated (TC) response is asked again
/// over TCP, as a resolver does; the TCP sockets are made in the network namespace of the UDP
/// socket (see [`TcpMaker`]), so they reach the same upstreams after the process moved.
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
    pub zone: SharedZone,
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
                    Some(f) if f.has_upstreams() => {
                        f.forward(request.as_slice(), usize::from(max)).await
                    }
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
        let mut builder = MessageResponseBuilder::from_message_request(request);
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
