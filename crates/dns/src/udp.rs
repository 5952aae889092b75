//! The UDP worker loop: up to [`BATCH`] queries per `recvmmsg(2)` (blocking for the first,
//! taking what else is queued), answered under one read lock of the zone, sent back with one
//! `sendmmsg(2)` — the batching nsd and knot do. Under load that divides the system-call cost
//! per query by the batch size; an idle server still answers each query at once.
//!
//! Each worker also keeps the responses it encoded, keyed by the lowercased question and
//! the query's OPT (none, EDNS0, EDNS0 with DO): a plain query (one question, no records but at most an
//! option-less EDNS0 OPT) whose key is known gets the stored bytes with the client's id, its
//! RD and CD bits and its own spelling of the question copied in, without parsing or encoding.
//! A plain query whose answer is negative (most misses: the random names `ndots:5` search
//! paths produce) is answered by [`crate::wire::negative`] without parsing or encoding the
//! message: one lookup of the question's lowercase wire form in the zone's index, then the
//! header, the question as sent, the SOA encoded once per zone serial, our OPT.
//! Only authoritative NOERROR/NXDOMAIN responses of at most 512 bytes that hold every record
//! of their answer are kept: those are what any client gets, whatever its size (at least 512),
//! so the key needs no size. A response that left something out for the asker's size (an
//! RRset with TC, or additional records) is that asker's only. The store is emptied whenever
//! the zone's serial changes, and when it holds [`CACHE_MAX`] entries.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::ResponseCode;
use hickory_server::server::Request;

use crate::server::{Forwarder, Outcome, SharedZone, answer, relayed, servfail, udp_max_size};
use crate::wire::{QUESTION_MAX, lower_question, negative, opt_key, plain_query};
use crate::zone::FxHasher;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// Queries taken per system call.
pub const BATCH: usize = 32;
/// Largest query read (EDNS queries are small; anything longer is cut and gets FORMERR).
const BUF: usize = 4096;

/// Most responses a worker keeps.
pub const CACHE_MAX: usize = 50_000;

/// The stored responses of one worker, keyed by the lowercased question section followed by
/// one byte: the query's OPT ([`crate::wire::opt_key`]; so a lookup borrows the key from a
/// stack buffer).
struct Cache {
    serial: u32,
    map: HashMap<Box<[u8]>, Box<[u8]>, BuildHasherDefault<FxHasher>>,
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
    let mut key = [0u8; QUESTION_MAX];
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
                // (end of the question, its OPT, length of the lowercased question in `key`)
                let plain = plain_query(raw).and_then(|(q_end, opt)| {
                    let len = lower_question(raw, q_end, &mut key)?;
                    key[len] = opt_key(opt);
                    Some((q_end, opt, len))
                });
                if let Some((q_end, _, len)) = plain
                    && let Some(stored) = cache.map.get(&key[..=len])
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
                if let Some((q_end, opt, len)) = plain
                    && negative(&z, raw, q_end, opt, &key[..len], &mut out)
                {
                    b.outs[i] = out;
                    continue;
                }
                match Request::from_bytes(raw.to_vec(), src, Protocol::Udp) {
                    Err(_) => formerr(raw, &mut out),
                    Ok(request) => {
                        let max = udp_max_size(&request);
                        match answer(&z, &request, max, &mut out) {
                            (Outcome::Answered(code), whole) => {
                                let aa = out.get(2).is_some_and(|f| f & 0x04 != 0);
                                if let Some((_, _, len)) = plain
                                    && aa
                                    && whole
                                    && out.len() <= 512
                                    && matches!(
                                        code,
                                        ResponseCode::NoError | ResponseCode::NXDomain
                                    )
                                {
                                    cache.map.insert(
                                        Box::from(&key[..=len]),
                                        out.clone().into_boxed_slice(),
                                    );
                                }
                            }
                            (Outcome::Drop, _) => out.clear(),
                            (Outcome::Forward, _) => match fwd.filter(|f| f.has_upstreams()) {
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
        let resp = f.forward(request.as_slice(), usize::from(max)).await;
        match resp.and_then(|r| relayed(&request, r, max)) {
            Some(resp) => {
                let _ = sock.send_to(&resp, src);
            }
            None => {
                if servfail(&request, max, &mut out) {
                    let _ = sock.send_to(&out, src);
                }
            }
        }
    });
}
