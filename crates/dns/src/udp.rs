//! The UDP worker loop: up to [`BATCH`] queries per `recvmmsg(2)` (blocking for the first,
//! taking what else is queued), answered under one read lock of the zone, sent back with one
//! `sendmmsg(2)` — the batching nsd and knot do. Under load that divides the system-call cost
//! per query by the batch size; an idle server still answers each query at once.
//!
//! Each worker also keeps the responses it encoded, keyed by the lowercased question and
//! whether the query carried EDNS: a plain query (one question, no records but at most an
//! option-less EDNS0 OPT) whose key is known gets the stored bytes with the client's id, its
//! RD and CD bits and its own spelling of the question copied in, without parsing or encoding.
//! A plain query whose answer is negative (most misses: the random names `ndots:5` search
//! paths produce) is answered from the lookup without parsing or encoding the message: header,
//! the question as sent, the zone's SOA encoded by hickory, a fixed OPT.
//! Only authoritative NOERROR/NXDOMAIN responses of at most 512 bytes are kept (valid for any
//! transport size); the store is emptied whenever the zone's serial changes, and when it holds
//! [`CACHE_MAX`] entries.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{LowerName, RecordType};
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder,
};
use hickory_server::server::Request;

use crate::server::{
    EDNS_PAYLOAD, Forwarder, Outcome, SharedZone, respond, servfail, udp_max_size,
};
use crate::zone::FxHasher;
use crate::zone::{Lookup, Zone};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// Queries taken per system call.
pub const BATCH: usize = 32;
/// Largest query read (EDNS queries are small; anything longer is cut and gets FORMERR).
const BUF: usize = 4096;

/// Most responses a worker keeps.
pub const CACHE_MAX: usize = 50_000;

/// (lowercased question section, whether the query had EDNS)
type CacheKey = (Box<[u8]>, bool);

/// The stored responses of one worker.
struct Cache {
    serial: u32,
    map: HashMap<CacheKey, Box<[u8]>, BuildHasherDefault<FxHasher>>,
}

/// Where the question ends and whether an OPT record follows, for a query the cache may
/// answer; `None` for anything else (the full path handles it).
fn plain_query(raw: &[u8]) -> Option<(usize, bool)> {
    if raw.len() < 17 || raw[2] & 0xf8 != 0 {
        return None; // a response, or an opcode other than QUERY
    }
    let count = |i: usize| u16::from_be_bytes([raw[i], raw[i + 1]]);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
        return None;
    }
    let mut i = 12;
    loop {
        let len = usize::from(*raw.get(i)?);
        if len == 0 {
            break;
        }
        if len > 63 || i > 12 + 255 {
            return None;
        }
        i += 1 + len;
    }
    let q_end = i + 5;
    if count(10) == 0 {
        return (raw.len() == q_end).then_some((q_end, false));
    }
    // An EDNS0 OPT: root owner, type 41, version 0, no options.
    let opt = raw.get(q_end..)?;
    (opt.len() == 11 && opt[0] == 0 && opt[1..3] == [0, 41] && opt[6] == 0 && opt[9..11] == [0, 0])
        .then_some((q_end, true))
}

/// Buffers for one batch. The kernel structures point into the buffers; the pointers are
/// set right before each call, so the struct may move between calls.
struct Batch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Responses, one per received slot (empty: nothing to send).
    outs: Vec<Vec<u8>>,
}

impl Batch {
    fn new() -> Self {
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero
        // bytes are a valid value (null pointers, zero lengths).
        let (addr, iov, hdr) = unsafe {
            (
                zeroed::<libc::sockaddr_storage>(),
                zeroed::<libc::iovec>(),
                zeroed::<libc::mmsghdr>(),
            )
        };
        Self {
            bufs: vec![0; BATCH * BUF],
            addrs: vec![addr; BATCH],
            iovs: vec![iov; BATCH],
            hdrs: vec![hdr; BATCH],
            outs: (0..BATCH).map(|_| Vec::with_capacity(512)).collect(),
        }
    }

    /// Receives 1..=BATCH datagrams, blocking until the first.
    fn recv(&mut self, fd: i32) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * BUF..].as_mut_ptr().cast(),
                iov_len: BUF,
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&raw mut self.addrs[i]).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &raw mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: `hdrs` holds BATCH initialised headers whose pointers refer to `iovs`,
        // `addrs` and `bufs`, all alive and not otherwise borrowed for the call's duration.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn datagram(&self, i: usize) -> &[u8] {
        let len = (self.hdrs[i].msg_len as usize).min(BUF);
        &self.bufs[i * BUF..i * BUF + len]
    }

    fn source(&self, i: usize) -> Option<SocketAddr> {
        sockaddr(&self.addrs[i])
    }

    /// Sends every non-empty response of the first `n` slots to its slot's source.
    fn send(&mut self, fd: i32, n: usize) {
        let mut m = 0;
        for i in 0..n {
            if self.outs[i].is_empty() {
                continue;
            }
            self.iovs[m] = libc::iovec {
                iov_base: self.outs[i].as_mut_ptr().cast(),
                iov_len: self.outs[i].len(),
            };
            // The source address slot i was received from is the destination; the receive
            // left its length in slot i's header.
            let namelen = self.hdrs[i].msg_hdr.msg_namelen;
            let name = (&raw mut self.addrs[i]).cast();
            let h = &mut self.hdrs[m];
            h.msg_hdr.msg_name = name;
            h.msg_hdr.msg_namelen = namelen;
            h.msg_hdr.msg_iov = &raw mut self.iovs[m];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            m += 1;
        }
        let mut done = 0;
        while done < m {
            // SAFETY: headers done..m are initialised above and point into `iovs`, `addrs`
            // and `outs`, alive and unchanged during the call.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[done..].as_mut_ptr(),
                    (m - done) as libc::c_uint,
                    0,
                )
            };
            if r <= 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::debug!(error = %e, "udp send failed; dropping one response");
                done += 1;
            } else {
                done += r as usize;
            }
        }
    }
}

fn sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and
            // aligned enough for.
            let sin = unsafe { &*(std::ptr::from_ref(ss).cast::<libc::sockaddr_in>()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(std::ptr::from_ref(ss).cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// FORMERR for a message we cannot parse, when it has at least a header.
fn formerr(raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    if raw.len() < 12 || raw[2] & 0x80 != 0 {
        return;
    }
    out.extend_from_slice(&raw[..2]);
    out.push(0x80 | (raw[2] & 0x79)); // QR, keep opcode and RD
    out.push(1); // FORMERR
    out.extend_from_slice(&[0; 8]);
}

/// Serves UDP on `sock` until the process ends. Forwarded queries run on `rt`.
pub(crate) fn udp_loop(
    sock: &Arc<UdpSocket>,
    zone: &SharedZone,
    fwd: Option<&Arc<Forwarder>>,
    rt: &tokio::runtime::Handle,
) {
    let fd = sock.as_raw_fd();
    let mut b = Batch::new();
    let mut cache = Cache {
        serial: 0,
        map: HashMap::default(),
    };
    loop {
        let n = match b.recv(fd) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "udp receive failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let z = zone.read().unwrap_or_else(|p| p.into_inner());
        if cache.serial != z.serial() || cache.map.len() >= CACHE_MAX {
            cache.map.clear();
            cache.serial = z.serial();
        }
        for i in 0..n {
            let mut out = std::mem::take(&mut b.outs[i]);
            out.clear();
            if let Some(src) = b.source(i).filter(|s| s.port() != 0) {
                let raw = b.datagram(i);
                let plain = plain_query(raw);
                let key = plain.map(|(q_end, edns)| {
                    (raw[12..q_end].to_ascii_lowercase().into_boxed_slice(), edns)
                });
                if let (Some((q_end, _)), Some(stored)) =
                    (plain, key.as_ref().and_then(|k| cache.map.get(k)))
                {
                    out.extend_from_slice(stored);
                    out[..2].copy_from_slice(&raw[..2]);
                    out[2] = (out[2] & !0x01) | (raw[2] & 0x01); // RD
                    out[3] = (out[3] & !0x10) | (raw[3] & 0x10); // CD
                    out[12..q_end].copy_from_slice(&raw[12..q_end]);
                    b.outs[i] = out;
                    continue;
                }
                // Not stored: most negative names are one-offs (search-path expansions), and
                // this path costs little more than a stored answer.
                if let Some((q_end, edns)) = plain
                    && negative(&z, raw, q_end, edns, &mut out)
                {
                    b.outs[i] = out;
                    continue;
                }
                match Request::from_bytes(raw.to_vec(), src, Protocol::Udp) {
                    Err(_) => formerr(raw, &mut out),
                    Ok(request) => {
                        let max = udp_max_size(&request);
                        match respond(&z, &request, max, &mut out) {
                            Outcome::Answered(code) => {
                                let aa = out.get(2).is_some_and(|f| f & 0x04 != 0);
                                if let Some(k) = key
                                    && aa
                                    && out.len() <= 512
                                    && matches!(
                                        code,
                                        ResponseCode::NoError | ResponseCode::NXDomain
                                    )
                                {
                                    cache.map.insert(k, out.clone().into_boxed_slice());
                                }
                            }
                            Outcome::Drop => out.clear(),
                            Outcome::Forward => match fwd.filter(|f| f.has_upstreams()) {
                                None => {
                                    if !servfail(&request, max, &mut out) {
                                        out.clear();
                                    }
                                }
                                Some(f) => {
                                    out.clear();
                                    forward(f.clone(), sock.clone(), request, src, max, rt);
                                }
                            },
                        }
                    }
                }
            }
            b.outs[i] = out;
        }
        drop(z);
        b.send(fd, n);
    }
}

/// Answers a plain query whose answer is negative (NXDOMAIN or NODATA) without parsing the
/// whole message: the question is copied as sent, hickory encodes the SOA, the OPT is fixed.
/// Returns false (with `out` empty) for anything else.
fn negative(z: &Zone, raw: &[u8], q_end: usize, edns: bool, out: &mut Vec<u8>) -> bool {
    out.clear();
    let qtype = RecordType::from(u16::from_be_bytes([raw[q_end - 4], raw[q_end - 3]]));
    let qclass = u16::from_be_bytes([raw[q_end - 2], raw[q_end - 1]]);
    if qclass != 1 || matches!(qtype, RecordType::AXFR | RecordType::IXFR | RecordType::OPT) {
        return false;
    }
    let Ok(name) = LowerName::read(&mut BinDecoder::new(&raw[12..q_end - 4])) else {
        return false;
    };
    let Lookup::Answer(a) = z.lookup(&name, qtype) else {
        return false;
    };
    let rcode = match a.rcode {
        ResponseCode::NXDomain => 3,
        ResponseCode::NoError => 0,
        _ => return false,
    };
    let [soa] = a.authority[..] else {
        return false;
    };
    if !a.answers.is_empty() || !a.authoritative {
        return false;
    }
    let mut enc = BinEncoder::new(out);
    let header = [
        raw[0],
        raw[1],
        0x84 | (raw[2] & 0x01),  // QR, AA, the client's RD
        (raw[3] & 0x10) | rcode, // the client's CD
        0,
        1,
        0,
        0,
        0,
        1,
        0,
        u8::from(edns),
    ];
    let ok = enc.emit_vec(&header).is_ok()
        && enc.emit_vec(&raw[12..q_end]).is_ok()
        && soa.emit(&mut enc).is_ok()
        && (!edns || {
            let [hi, lo] = EDNS_PAYLOAD.to_be_bytes();
            enc.emit_vec(&[0, 0, 41, hi, lo, 0, 0, 0, 0, 0, 0]).is_ok()
        });
    if !ok || out.len() > 512 {
        out.clear();
        return false;
    }
    true
}

fn forward(
    f: Arc<Forwarder>,
    sock: Arc<UdpSocket>,
    request: Request,
    src: SocketAddr,
    max: u16,
    rt: &tokio::runtime::Handle,
) {
    rt.spawn(async move {
        let mut out = Vec::new();
        match f.forward(request.as_slice()).await {
            Some(resp) if resp.len() <= usize::from(max) => {
                let _ = sock.send_to(&resp, src);
            }
            _ => {
                if servfail(&request, max, &mut out) {
                    let _ = sock.send_to(&out, src);
                }
            }
        }
    });
}
