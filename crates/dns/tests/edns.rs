//! EDNS version and response size over the wire (issue 20, items 4–6), written from the RFC
//! text and checked against nsd 4.6 and knot 3.2 answering the same names:
//!
//! - RFC 6891 §6.1.3: a query whose OPT asks for an EDNS version we do not implement (> 0) gets
//!   BADVERS (extended RCODE 16: 0 in the header, 1 in the OPT's extended RCODE) with our own
//!   version (0) and no answer. Before anything else: names we would forward get it too (as
//!   CoreDNS, nsd and knot).
//! - RFC 6891 §6.2.5 and §7: the UDP size is the requestor's payload size (less than 512 taken as
//!   512; without EDNS 512, RFC 1035 §4.2.1), capped at ours (1232); a truncated response still
//!   carries the header, the question and the OPT.
//! - RFC 2181 §9: TC is set when an RRset of the answer (or authority) section could not be
//!   included; then it is left out whole (nsd and knot send no answer records at all when the
//!   first answer RRset does not fit). Additional records that do not fit are left out without
//!   TC. Each query is truncated for its own size: a small-buffer asker does not decide what
//!   the next one gets (the UDP workers' stored responses).
//! - RFC 3225 §3: the DO bit of the query is copied into the response's OPT.
//!
//! Every case runs on the UDP workers (stored responses, short negative path, full path), on
//! hickory's UDP server with our handler (`--udp-server hickory`), and over TCP, on loopback.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dns::follow::load_static;
use dns::server::{Forwarder, Handler, spawn_udp_workers};
use dns::{Zone, ZoneConfig};
use serde_json::{Value, json};

const BADVERS: u16 = 16;
const A: u16 = 1;
const AAAA: u16 = 28;
const SRV: u16 = 33;
const ANY: u16 = 255;
const OPT: u16 = 41;

/// A headless Service `default/<name>` with `n` ready endpoints (`v6`: IPv6 addresses) and,
/// with `port`, one named port (so SRV records, one per endpoint, targets in additional).
fn headless(name: &str, n: usize, v6: bool, port: Option<&str>) -> Vec<Value> {
    let eps: Vec<Value> = (0..n)
        .map(|i| {
            let ip = if v6 {
                format!("fd00::{:x}", i + 1)
            } else {
                format!("10.244.{}.{}", i / 250, i % 250 + 1)
            };
            json!({"addresses": [ip], "conditions": {"ready": true}})
        })
        .collect();
    let ports = match port {
        Some(p) => json!([{"name": p, "port": 5432, "protocol": "TCP"}]),
        None => json!([]),
    };
    vec![
        json!({"kind": "Service", "metadata": {"namespace": "default", "name": name},
               "spec": {"clusterIP": "None"}}),
        json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
               "metadata": {"namespace": "default", "name": format!("{name}-1"),
                            "labels": {"kubernetes.io/service-name": name}},
               "addressType": if v6 { "IPv6" } else { "IPv4" },
               "endpoints": eps, "ports": ports}),
    ]
}

/// `big` (32 A), `big6` (32 AAAA), `db` (40 SRV for `_pg._tcp`, more than 1232 bytes),
/// `mid` (6 SRV: the answer fits 512 bytes, its additional A records do not), `web` (one A).
fn zone() -> dns::SharedZone {
    let mut z = Zone::new(ZoneConfig::new("cluster.local").unwrap());
    let mut items = vec![json!({"kind": "Service",
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {"clusterIP": "10.96.0.20"}})];
    items.extend(headless("big", 32, false, None));
    items.extend(headless("big6", 32, true, None));
    items.extend(headless("db", 40, false, Some("pg")));
    items.extend(headless("mid", 6, false, Some("pg")));
    load_static(&mut z, &items).unwrap();
    Arc::new(RwLock::new(z))
}

/// A query for `name`/`qtype` (class IN, RD), with an OPT of `version` and payload `size`
/// when `edns` is given.
fn query(id: u16, name: &str, qtype: u16, edns: Option<(u8, u16)>) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for label in name.trim_end_matches('.').split('.') {
        b.push(label.len() as u8);
        b.extend_from_slice(label.as_bytes());
    }
    b.push(0);
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&[0, 1]);
    if let Some((version, size)) = edns {
        let [hi, lo] = size.to_be_bytes();
        b.extend_from_slice(&[0, 0, 41, hi, lo, 0, version, 0, 0, 0, 0]);
    }
    b
}

/// A response read field by field, as the RFCs describe the wire.
#[derive(Debug)]
struct Resp {
    len: usize,
    id: u16,
    tc: bool,
    aa: bool,
    /// The full RCODE: the header's 4 bits and, with an OPT, its 8 high bits.
    rcode: u16,
    qd: u16,
    /// Record types of the answer, authority and additional sections (OPT included).
    an: Vec<u16>,
    ns: Vec<u16>,
    ar: Vec<u16>,
    /// (payload size, extended RCODE, version) of the OPT.
    opt: Option<(u16, u8, u8)>,
    /// The OPT's DO bit.
    dnssec_ok: bool,
    question: Vec<u8>,
    /// Bytes after the records the counts announce.
    trailing: usize,
}

fn parse(r: &[u8]) -> Resp {
    let u16_at = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
    let skip_name = |mut i: usize| loop {
        let l = r[i];
        if l == 0 {
            break i + 1;
        }
        if l >= 0xc0 {
            break i + 2;
        }
        i += 1 + usize::from(l);
    };
    assert!(r.len() >= 12, "short response {r:?}");
    assert!(r[2] & 0x80 != 0, "QR set");
    let (qd, counts) = (u16_at(4), [u16_at(6), u16_at(8), u16_at(10)]);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(i) + 4;
    }
    let question = r[12..i].to_vec();
    let mut sections: [Vec<u16>; 3] = Default::default();
    let mut opt = None;
    let mut dnssec_ok = false;
    for (s, &count) in counts.iter().enumerate() {
        for _ in 0..count {
            i = skip_name(i);
            let (t, class, ttl) = (
                u16_at(i),
                u16_at(i + 2),
                u32::from_be_bytes([r[i + 4], r[i + 5], r[i + 6], r[i + 7]]),
            );
            if t == OPT {
                assert_eq!(s, 2, "OPT only in the additional section");
                assert!(opt.is_none(), "one OPT");
                opt = Some((class, (ttl >> 24) as u8, (ttl >> 16) as u8));
                dnssec_ok = ttl & 0x8000 != 0;
            }
            sections[s].push(t);
            i += 10 + usize::from(u16_at(i + 8));
        }
    }
    let [an, ns, ar] = sections;
    Resp {
        len: r.len(),
        id: u16_at(0),
        tc: r[2] & 0x02 != 0,
        aa: r[2] & 0x04 != 0,
        rcode: u16::from(r[3] & 0x0f) | opt.map_or(0, |o| u16::from(o.1) << 4),
        qd,
        an,
        ns,
        ar,
        opt,
        dnssec_ok,
        question,
        trailing: r.len() - i,
    }
}

/// Where queries go: the UDP workers, hickory's UDP server, or TCP.
#[derive(Debug, Clone, Copy)]
enum Via {
    Workers(SocketAddr),
    HickoryUdp(SocketAddr),
    Tcp(SocketAddr),
}

impl Via {
    fn ask(self, q: &[u8]) -> Vec<u8> {
        match self {
            Via::Workers(a) | Via::HickoryUdp(a) => {
                let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                c.send_to(q, a).unwrap();
                let mut buf = [0u8; 65_535];
                let n = c.recv(&mut buf).expect("an answer");
                buf[..n].to_vec()
            }
            Via::Tcp(a) => {
                let mut s = TcpStream::connect(a).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut framed = (q.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(q);
                s.write_all(&framed).unwrap();
                let mut len = [0u8; 2];
                s.read_exact(&mut len).unwrap();
                let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut body).unwrap();
                body
            }
        }
    }

    fn udp(self) -> bool {
        !matches!(self, Via::Tcp(_))
    }
}

/// The three servers over one zone (and forwarder): the UDP workers, hickory's UDP server and
/// hickory's TCP server, both with our handler.
fn servers(
    rt: &tokio::runtime::Runtime,
    z: &dns::SharedZone,
    fwd: Option<&Arc<Forwarder>>,
) -> [Via; 3] {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let workers = sock.local_addr().unwrap();
    spawn_udp_workers(sock, z.clone(), fwd.cloned(), rt.handle().clone(), 1).unwrap();
    let (udp, tcp) = rt.block_on(async {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let mut server = hickory_server::Server::new(Handler {
            zone: z.clone(),
            forwarder: fwd.cloned(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 16);
        tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        addrs
    });
    [Via::Workers(workers), Via::HickoryUdp(udp), Via::Tcp(tcp)]
}

/// The UDP size a query gets (RFC 6891 §6.2.3, §6.2.5; RFC 1035 §4.2.1).
fn udp_limit(edns: Option<(u8, u16)>) -> usize {
    edns.map_or(512, |(_, size)| usize::from(size.clamp(512, 1232)))
}

/// RFC 6891 §6.1.3: "If a responder does not implement the VERSION level of the request, then
/// it MUST respond with RCODE=BADVERS. [...] the responder SHOULD use the highest version it
/// implements." Answered with nothing else: no records but the OPT (nsd and knot: the
/// question, no AA, no records, OPT version 0 with their payload size).
#[test]
fn an_unknown_edns_version_gets_badvers_with_version_0_and_no_answer() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let z = zone();
    for via in servers(&rt, &z, None) {
        for (i, (name, qtype)) in [
            ("web.default.svc.cluster.local", A),    // an answer
            ("WEB.default.svc.cluster.local", A),    // again (the stored responses)
            ("nope.default.svc.cluster.local", A),   // NXDOMAIN (the short negative path)
            ("web.default.svc.cluster.local", AAAA), // NODATA
            ("big.default.svc.cluster.local", A),    // big
            ("example.com", A),                      // not ours (no upstream: SERVFAIL otherwise)
        ]
        .into_iter()
        .enumerate()
        {
            for version in [1u8, 2, 255] {
                let id = 0x4000 + i as u16 * 8 + u16::from(version);
                // A version 0 query first: the workers store its answer.
                via.ask(&query(id, name, qtype, Some((0, 1232))));
                let q = query(id, name, qtype, Some((version, 1232)));
                let r = parse(&via.ask(&q));
                let what = format!("{via:?} {name} {qtype} version {version}: {r:?}");
                assert_eq!(r.id, id, "{what}");
                assert_eq!(r.rcode, BADVERS, "{what}");
                let (payload, ext, v) = r.opt.expect(&what);
                assert_eq!((ext, v), (1, 0), "extended RCODE 1, our version 0: {what}");
                assert_eq!(payload, 1232, "{what}");
                assert!(r.an.is_empty() && r.ns.is_empty(), "{what}");
                assert_eq!(r.ar, [OPT], "{what}");
                assert!(!r.aa && !r.tc, "{what}");
                assert_eq!(r.qd, 1, "{what}");
                assert_eq!(r.question, q[12..q.len() - 11], "{what}");
            }
        }
    }
}

/// A fake upstream that answers every query with REFUSED and counts what it got.
fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let up = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = up.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = up.recv_from(&mut buf) {
            count.fetch_add(1, Ordering::SeqCst);
            buf[2] |= 0x80;
            buf[3] = (buf[3] & 0xf0) | 5;
            let _ = up.send_to(&buf[..n], from);
        }
    });
    (addr, seen)
}

/// The forwarder does not relay a version it cannot vouch for: BADVERS comes from us before
/// the name is looked at (CoreDNS, nsd and knot answer `example.com` so too).
#[test]
fn an_unknown_edns_version_is_not_forwarded() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (up, seen) = counting_upstream();
    let fwd = rt
        .block_on(async { Forwarder::new(UdpSocket::bind("127.0.0.1:0").unwrap(), vec![up]) })
        .unwrap();
    for via in servers(&rt, &zone(), Some(&fwd)) {
        let r = parse(&via.ask(&query(9, "example.com", A, Some((1, 1232)))));
        assert_eq!(r.rcode, BADVERS, "{via:?}: {r:?}");
        assert_eq!(r.opt.map(|o| o.2), Some(0), "{via:?}: {r:?}");
        // Version 0 is relayed (the upstream's REFUSED comes back).
        let r = parse(&via.ask(&query(10, "example.com", A, Some((0, 1232)))));
        assert_eq!(r.rcode, 5, "{via:?}: {r:?}");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 3, "only the version 0 queries");
}

/// Checks one response against RFC 6891 §7 and RFC 2181 §9 for the query's size: within the
/// limit; an OPT when the query had one, last; TC only with an answer RRset left out, and
/// then none of it; the whole answer when not truncated. `full`: the number of answer
/// records of the whole answer.
fn check_size(via: Via, name: &str, qtype: u16, edns: Option<(u8, u16)>, full: usize) -> Resp {
    let raw = via.ask(&query(77, name, qtype, edns));
    let r = parse(&raw);
    let what = format!("{via:?} {name} type {qtype} edns {edns:?}: {r:?}");
    assert_eq!(r.rcode, 0, "{what}");
    assert_eq!(r.qd, 1, "the question, truncated or not: {what}");
    if via.udp() {
        assert!(r.len <= udp_limit(edns), "{what}");
    }
    match edns {
        Some(_) => {
            assert_eq!(
                r.opt,
                Some((1232, 0, 0)),
                "the OPT, truncated or not: {what}"
            );
            assert_eq!(r.ar.last(), Some(&OPT), "{what}");
        }
        None => assert_eq!(r.opt, None, "{what}"),
    }
    if r.tc {
        assert!(via.udp(), "no TC over TCP: {what}");
        assert!(r.an.is_empty(), "no partial RRset: {what}");
    } else {
        assert_eq!(
            r.an.len(),
            full,
            "the whole answer when not truncated: {what}"
        );
    }
    assert_eq!(
        r.trailing, 0,
        "the counts describe the whole message: {what}"
    );
    r
}

/// RFC 2181 §9 and RFC 6891 §6.2.5: each query is truncated for its own size, whoever asked
/// before. The answer of `big` (32 A) is 599 bytes with the OPT: it fits 1232 and 4096
/// (capped at our 1232), not 512 or none.
#[test]
fn truncation_follows_each_querys_size_not_the_first_askers() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let z = zone();
    for via in servers(&rt, &z, None) {
        for (name, qtype, full, whole_from) in [
            ("big.default.svc.cluster.local", A, 32, 1232u16),
            ("big6.default.svc.cluster.local", AAAA, 32, 1232),
            ("big.default.svc.cluster.local", ANY, 32, 1232),
            ("_pg._tcp.mid.default.svc.cluster.local", SRV, 6, 512),
        ] {
            // Small first, then large, then small again.
            for edns in [
                Some((0, 512)),
                None,
                Some((0, 100)), // less than 512: 512
                Some((0, 1232)),
                Some((0, 4096)),
                Some((0, 512)),
                Some((0, 1232)),
                None,
            ] {
                let r = check_size(via, name, qtype, edns, full);
                let fits = edns.is_some_and(|(_, s)| s >= whole_from);
                assert_eq!(
                    r.tc,
                    via.udp() && !fits && whole_from > 512,
                    "{via:?} {name} {edns:?}: {r:?}"
                );
            }
        }
    }
}

/// Issue 20 item 5 as reported: after a 512-byte asker, clients with room got the same
/// truncated answer for seconds (the UDP workers' stored responses were keyed without the
/// size). `big`'s 32 A records need 599 bytes with the OPT.
#[test]
fn a_small_buffer_asker_does_not_decide_what_the_next_one_gets() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let z = zone();
    let [workers, ..] = servers(&rt, &z, None);
    let name = "big.default.svc.cluster.local";
    for small in [Some((0, 512)), None] {
        let r = parse(&workers.ask(&query(1, name, A, small)));
        assert!(r.tc, "{small:?}: {r:?}");
        for size in [1232, 4096, 1232] {
            let r = parse(&workers.ask(&query(2, name, A, Some((0, size)))));
            assert!(!r.tc, "{size} after {small:?}: {r:?}");
            assert_eq!(r.an.len(), 32, "{size} after {small:?}: {r:?}");
        }
    }
}

/// RFC 2181 §9: "the TC bit should not be set merely because some extra information could
/// have been included if there were room". `mid`'s 6 SRV records fit 512 bytes (454 with
/// header and question: SRV targets are not compressed), their 6 A records in additional (16
/// bytes each) do not: no TC then, and a later query with room gets all of them.
#[test]
fn additional_records_left_out_for_room_set_no_tc_and_are_not_kept_for_others() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let z = zone();
    for via in servers(&rt, &z, None) {
        let name = "_pg._tcp.mid.default.svc.cluster.local";
        for edns in [None, Some((0, 512)), Some((0, 1232)), Some((0, 512)), None] {
            let r = check_size(via, name, SRV, edns, 6);
            assert!(!r.tc, "{via:?} {edns:?}: {r:?}");
            let a = r.ar.iter().filter(|&&t| t == A).count();
            if !via.udp() || edns.is_some_and(|(_, s)| s >= 1232) {
                assert_eq!(a, 6, "every target's address: {via:?} {edns:?}: {r:?}");
            } else {
                assert!(a < 6, "not all fit 512 bytes: {via:?} {edns:?}: {r:?}");
            }
        }
    }
}

/// RFC 6891 §7: "The minimal response MUST be the DNS header, question section, and an OPT
/// record." `db`'s 40 SRV records (with additionals over 3 kB) fit no UDP size: every UDP
/// answer is TC with the OPT, and TCP gets the whole answer.
#[test]
fn truncated_answers_keep_the_opt_record() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let z = zone();
    for via in servers(&rt, &z, None) {
        for (name, qtype, full) in [
            ("_pg._tcp.db.default.svc.cluster.local", SRV, 40),
            ("big.default.svc.cluster.local", A, 32),
            ("big6.default.svc.cluster.local", AAAA, 32),
        ] {
            for size in [512u16, 600, 1000, 1232, 1400, 4096] {
                let r = check_size(via, name, qtype, Some((0, size)), full);
                if qtype == SRV {
                    assert_eq!(r.tc, via.udp(), "{via:?} {size}: {r:?}");
                }
            }
            check_size(via, name, qtype, None, full);
        }
    }
}

/// A fake upstream whose UDP answers are `n` A records whatever size the query allows (and
/// the same over TCP), with an OPT (payload 1232) when the query had one.
fn oversize_upstream(n: u8) -> SocketAddr {
    use std::net::TcpListener;
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let udp = UdpSocket::bind(addr).unwrap();
    let answer = move |q: &[u8]| {
        let q_end = 12 + q[12..].iter().position(|&b| b == 0).unwrap() + 5;
        let mut r = q[..q_end].to_vec();
        r[2] |= 0x84;
        r[6..8].copy_from_slice(&u16::from(n).to_be_bytes());
        r[10..12].copy_from_slice(&[0, 0]);
        for i in 0..n {
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, i]);
        }
        if q[11] == 1 {
            r[11] = 1;
            r.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        r
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&answer(&buf[..n]), from);
        }
    });
    std::thread::spawn(move || {
        for mut s in tcp.incoming().flatten() {
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).is_err() {
                continue;
            }
            let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if s.read_exact(&mut q).is_err() {
                continue;
            }
            let r = answer(&q);
            let mut framed = (r.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&r);
            let _ = s.write_all(&framed);
        }
    });
    addr
}

/// The forwarder path: an upstream answer larger than the client's UDP size (here 100 A
/// records, 1,629 bytes, sent whole over UDP) is not the client's answer, nor a SERVFAIL: the
/// client gets TC with its question and the OPT (RFC 6891 §7), and the whole answer over TCP.
#[test]
fn an_upstream_answer_too_big_for_the_client_is_sent_truncated_with_the_opt() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = oversize_upstream(100);
    let fwd = rt
        .block_on(async { Forwarder::new(UdpSocket::bind("127.0.0.1:0").unwrap(), vec![up]) })
        .unwrap();
    for via in servers(&rt, &zone(), Some(&fwd)) {
        for edns in [None, Some((0, 512)), Some((0, 1232)), Some((0, 4096))] {
            let r = check_size(via, "many.example", A, edns, 100);
            assert_eq!(r.tc, via.udp(), "{via:?} {edns:?}: {r:?}");
            assert_eq!(r.question, query(0, "many.example", A, None)[12..]);
        }
    }
}

/// RFC 3225 §3: "The DO bit of the query MUST be copied in the response." (nsd and knot do.)
/// Whether a query had it does not decide what the next one gets: stored responses, the short
/// negative path, the full path, and the other servers.
#[test]
fn the_do_bit_is_copied_from_each_query() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let z = zone();
    for via in servers(&rt, &z, None) {
        for name in [
            "web.default.svc.cluster.local",  // stored after the first answer
            "nope.default.svc.cluster.local", // the short negative path
            "big.default.svc.cluster.local",  // truncated at 512
        ] {
            for dnssec_ok in [false, true, true, false, true] {
                let mut q = query(5, name, A, Some((0, 512)));
                let n = q.len();
                q[n - 4] = if dnssec_ok { 0x80 } else { 0 };
                let r = parse(&via.ask(&q));
                assert!(r.opt.is_some(), "{via:?} {name}: {r:?}");
                assert_eq!(r.dnssec_ok, dnssec_ok, "{via:?} {name}: {r:?}");
            }
        }
    }
}

/// Found by the `dns_wire` fuzz target: a query announcing one additional record whose OPT is
/// cut short (here 2 bytes after the question) made the short path read past it and the UDP
/// worker panic. It gets FORMERR, and the worker keeps answering.
#[test]
fn a_cut_short_opt_gets_formerr_and_the_worker_keeps_answering() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let z = zone();
    for via in servers(&rt, &z, None) {
        for cut in [1, 2, 7, 10] {
            let mut q = query(3, "big.default.svc.cluster.local", A, Some((0, 512)));
            let n = q.len();
            q.truncate(n - 11 + cut);
            let r = via.ask(&q);
            assert_eq!(r[..2], [0, 3], "{via:?} {cut}");
            assert_eq!(r[3] & 0x0f, 1, "FORMERR: {via:?} {cut}: {r:?}");
            let r = parse(&via.ask(&query(4, "web.default.svc.cluster.local", A, None)));
            assert_eq!((r.id, r.an.len()), (4, 1), "{via:?} {cut}: {r:?}");
        }
    }
}

/// Found by the `dns_wire` fuzz target: a query with more questions than fit the UDP size
/// (7 copies of a long name, 560 bytes) got no answer at all over UDP, and FORMERR over TCP.
/// RFC 1035 §4.1.1: FORMERR; when the question section cannot be echoed, the header alone
/// (with TC, and the OPT when the query had one), as before issue 20's encoder (then SERVFAIL).
#[test]
fn a_question_section_larger_than_the_udp_size_gets_a_header_only_formerr() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let z = zone();
    let long = format!(
        "{}.default.svc.cluster.local",
        ["a".repeat(63); 1].join(".")
    );
    for via in servers(&rt, &z, None) {
        for edns in [None, Some((0u8, 512u16))] {
            let one = query(6, &long, A, None);
            let mut q = one.clone();
            for _ in 1..7 {
                q.extend_from_slice(&one[12..]);
            }
            q[5] = 7;
            if let Some((v, size)) = edns {
                let [hi, lo] = size.to_be_bytes();
                q[11] = 1;
                q.extend_from_slice(&[0, 0, 41, hi, lo, 0, v, 0, 0, 0, 0]);
            }
            let raw = via.ask(&q);
            let r = parse(&raw);
            assert_eq!((r.id, r.rcode), (6, 1), "FORMERR: {via:?} {edns:?}: {r:?}");
            assert_eq!(r.opt.is_some(), edns.is_some(), "{via:?} {edns:?}: {r:?}");
            assert_eq!(r.trailing, 0, "{via:?} {edns:?}: {r:?}");
            if via.udp() {
                assert!(
                    r.tc && r.qd == 0,
                    "the header alone: {via:?} {edns:?}: {r:?}"
                );
            }
        }
    }
}
