//! The serving side on loopback: the batched UDP workers, hickory's TCP server with our
//! handler, and the forwarder (against a fake upstream on loopback; for the TCP retry also
//! one inside a network namespace the test makes: needs root, prints SKIPPED without, fails
//! under `REQUIRE_NETNS=1`).
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dns::follow::load_static;
use dns::server::{Forwarder, Handler, spawn_udp_workers};
use dns::{Zone, ZoneConfig};
use hickory_server::proto::op::{Message, ResponseCode};
use hickory_server::proto::rr::RData;
use serde_json::json;

fn zone() -> dns::SharedZone {
    let mut z = Zone::new(ZoneConfig::new("cluster.local").unwrap());
    let items: Vec<_> = (0..50)
        .map(|i| {
            json!({"kind": "Service", "metadata": {"namespace": "default", "name": format!("s{i}")},
                   "spec": {"clusterIP": format!("10.96.1.{}", i + 1)}})
        })
        .collect();
    load_static(&mut z, &items).unwrap();
    Arc::new(RwLock::new(z))
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        b.push(label.len() as u8);
        b.extend_from_slice(label.as_bytes());
    }
    b.extend_from_slice(&[0, 0, 1, 0, 1]);
    b
}

fn start_udp(
    rt: &tokio::runtime::Runtime,
    zone: dns::SharedZone,
    fwd: Option<Arc<Forwarder>>,
) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    spawn_udp_workers(sock, zone, fwd, rt.handle().clone(), 2).unwrap();
    addr
}

fn client() -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c
}

#[test]
fn a_burst_of_udp_queries_gets_every_answer_to_its_sender() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = start_udp(&rt, zone(), None);
    let c = client();
    // More than one batch at once, to exercise recvmmsg/sendmmsg with many slots.
    for i in 0..100u16 {
        c.send_to(
            &query(i, &format!("s{}.default.svc.cluster.local", i % 50)),
            addr,
        )
        .unwrap();
    }
    let mut got = BTreeMap::new();
    let mut buf = [0u8; 1500];
    while got.len() < 100 {
        let (n, from) = c.recv_from(&mut buf).expect("every query answered");
        assert_eq!(from, addr);
        let m = Message::from_vec(&buf[..n]).unwrap();
        let RData::A(a) = m.answers[0].data else {
            panic!("not an A record: {m:?}")
        };
        got.insert(m.metadata.id, a.0);
    }
    for (id, ip) in got {
        assert_eq!(
            ip.octets()[3],
            (id % 50) as u8 + 1,
            "answer {id} matches its question"
        );
    }
}

#[test]
fn garbage_gets_formerr_and_outside_names_servfail_at_once_without_upstreams() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = start_udp(&rt, zone(), None);
    let c = client();
    let mut buf = [0u8; 1500];
    let mut bad = query(7, "x.cluster.local");
    bad.truncate(20); // a cut-off question
    c.send_to(&bad, addr).unwrap();
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..2], &[0, 7]);
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR: {:?}", &buf[..n]);
    let t = Instant::now();
    c.send_to(&query(8, "example.com"), addr).unwrap();
    let n = c.recv(&mut buf).unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(t.elapsed() < Duration::from_millis(500));
}

#[test]
fn outside_names_are_relayed_to_the_upstream_under_the_client_id() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A fake upstream: answers every query with its own bytes, flagged as a response with
    // rcode 5 (REFUSED), so the relay is visible.
    let up = UdpSocket::bind("127.0.0.1:0").unwrap();
    let up_addr = up.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = up.recv_from(&mut buf) {
            buf[2] |= 0x80;
            buf[3] = (buf[3] & 0xf0) | 5;
            let _ = up.send_to(&buf[..n], from);
        }
    });
    let fwd = rt
        .block_on(async { Forwarder::new(UdpSocket::bind("127.0.0.1:0").unwrap(), vec![up_addr]) })
        .unwrap();
    let addr = start_udp(&rt, zone(), Some(fwd));
    let c = client();
    c.send_to(&query(4321, "example.com"), addr).unwrap();
    let mut buf = [0u8; 1500];
    let n = c.recv(&mut buf).unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, 4321);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(m.queries[0].name().to_string(), "example.com.");
    // Cluster names are still ours.
    c.send_to(&query(5, "s3.default.svc.cluster.local"), addr)
        .unwrap();
    let n = c.recv(&mut buf).unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
}

#[test]
fn tcp_answers_through_hickory_with_our_handler() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let z = zone();
    let addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = hickory_server::Server::new(Handler {
            zone: z,
            forwarder: None,
        });
        server.register_listener(listener, Duration::from_secs(5), 16);
        tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        addr
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    for (id, name, code) in [
        (1u16, "s9.default.svc.cluster.local", ResponseCode::NoError),
        (2, "nope.default.svc.cluster.local", ResponseCode::NXDomain),
        (3, "example.com", ResponseCode::ServFail),
    ] {
        let q = query(id, name);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut body).unwrap();
        let m = Message::from_vec(&body).unwrap();
        assert_eq!(m.metadata.id, id);
        assert_eq!(m.metadata.response_code, code, "{name}");
    }
}

/// A query with the RD bit as given and an optional option-less EDNS0 OPT.
fn query_with(id: u16, name: &str, rd: bool, edns: bool) -> Vec<u8> {
    let mut q = query(id, name);
    q[2] = if rd { 0x01 } else { 0x00 };
    if edns {
        q[11] = 1;
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    q
}

fn ask(c: &UdpSocket, addr: SocketAddr, q: &[u8]) -> Vec<u8> {
    c.send_to(q, addr).unwrap();
    let mut buf = [0u8; 1500];
    let n = c.recv(&mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn stored_responses_equal_fresh_ones_with_the_clients_id_flags_and_spelling() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = start_udp(&rt, zone(), None);
    let c = client();
    for (name, edns) in [
        ("s1.default.svc.cluster.local", false),
        ("s1.default.svc.cluster.local", true),
        ("nope.default.svc.cluster.local", false),
        ("default.svc.cluster.local", true),
    ] {
        let first = ask(&c, addr, &query_with(100, name, true, edns));
        let upper = name.to_ascii_uppercase();
        // The second is answered from the store: other id, no RD, other spelling.
        let second = ask(&c, addr, &query_with(200, &upper, false, edns));
        let (a, b) = (
            Message::from_vec(&first).unwrap(),
            Message::from_vec(&second).unwrap(),
        );
        assert_eq!(b.metadata.id, 200);
        assert!(a.metadata.recursion_desired && !b.metadata.recursion_desired);
        assert_eq!(a.metadata.response_code, b.metadata.response_code, "{name}");
        assert!(b.metadata.authoritative);
        assert_eq!(a.answers, b.answers, "{name}");
        assert_eq!(a.authorities, b.authorities, "{name}");
        assert_eq!(a.edns.is_some(), edns);
        assert_eq!(b.edns.is_some(), edns);
        assert_eq!(b.queries[0].name().to_string(), format!("{upper}."));
        assert_eq!(first.len(), second.len());
    }
}

#[test]
fn a_zone_change_is_answered_at_once_despite_stored_responses() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let z = zone();
    let addr = start_udp(&rt, z.clone(), None);
    let c = client();
    let a_of = |bytes: &[u8]| {
        let m = Message::from_vec(bytes).unwrap();
        m.answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let q = query_with(1, "s1.default.svc.cluster.local", true, false);
    assert_eq!(a_of(&ask(&c, addr, &q)), vec!["10.96.1.2"]);
    assert_eq!(a_of(&ask(&c, addr, &q)), vec!["10.96.1.2"]);
    {
        let mut w = z.write().unwrap();
        let cfg = w.config().clone();
        let svc: model::Service = serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": "s1"},
            "spec": {"clusterIP": "10.96.9.9"}}))
        .unwrap();
        let rrs = dns::records::service_records(&cfg, &svc, &[]);
        w.set(dns::Owner::Service("default/s1".into()), rrs);
    }
    assert_eq!(a_of(&ask(&c, addr, &q)), vec!["10.96.9.9"]);
}

#[test]
fn negative_answers_of_the_short_path_equal_the_full_path() {
    use dns::server::{Outcome, respond};
    use hickory_server::net::xfer::Protocol;
    use hickory_server::server::Request;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let z = zone();
    let addr = start_udp(&rt, z.clone(), None);
    let c = client();
    for (i, (name, qtype, edns)) in [
        ("Nope.default.svc.cluster.local", 1u16, false),
        ("host7.example.com.default.svc.cluster.local", 1, true),
        ("s1.default.svc.cluster.local", 28, false), // AAAA: NODATA
        ("default.svc.cluster.local", 33, true),     // SRV of an empty non-terminal
        ("9.9.96.10.in-addr.arpa", 12, false),       // not in the reverse ranges: forwarded
    ]
    .into_iter()
    .enumerate()
    {
        let mut q = query_with(i as u16, name, i % 2 == 0, edns);
        let n = q.len();
        q[n - 4 - if edns { 11 } else { 0 }..n - 2 - if edns { 11 } else { 0 }]
            .copy_from_slice(&qtype.to_be_bytes());
        let got = Message::from_vec(&ask(&c, addr, &q)).unwrap();
        let req =
            Request::from_bytes(q.clone(), "127.0.0.1:9".parse().unwrap(), Protocol::Udp).unwrap();
        let mut out = Vec::new();
        let z = z.read().unwrap();
        let want = match respond(&z, &req, 512, &mut out) {
            Outcome::Answered(_) => Message::from_vec(&out).unwrap(),
            // Outside names: SERVFAIL without an upstream.
            Outcome::Forward => {
                assert_eq!(got.metadata.response_code, ResponseCode::ServFail, "{name}");
                continue;
            }
            Outcome::Drop => panic!("dropped"),
        };
        assert_eq!(got.metadata, want.metadata, "{name}");
        assert_eq!(got.queries, want.queries, "{name}");
        assert_eq!(got.answers, want.answers, "{name}");
        assert_eq!(got.authorities, want.authorities, "{name}");
        assert_eq!(got.edns.is_some(), want.edns.is_some(), "{name}");
        assert_eq!(
            got.edns.map(|e| e.max_payload()),
            want.edns.map(|e| e.max_payload())
        );
    }
}

/// A fake upstream on loopback, UDP and TCP on one port: over UDP it answers every query
/// with its question and TC set; over TCP with the question and `records` A records
/// (192.0.2.N, each name a pointer to the question). Returns its address and a counter of
/// the TCP queries it got.
fn truncating_upstream(records: u8) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let udp = UdpSocket::bind(addr).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            buf[2] |= 0x82; // QR, TC
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
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
            seen.fetch_add(1, Ordering::SeqCst);
            // Question only (drop an OPT: the answer is about size, not EDNS).
            let q_end = 12 + q[12..].iter().position(|&b| b == 0).unwrap() + 5;
            let mut r = q[..q_end].to_vec();
            r[2] |= 0x80;
            r[6..8].copy_from_slice(&u16::from(records).to_be_bytes());
            r[10..12].copy_from_slice(&[0, 0]);
            for i in 0..records {
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, i]);
            }
            let mut framed = (r.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&r);
            let _ = s.write_all(&framed);
        }
    });
    (addr, count)
}

#[test]
fn truncated_upstream_answers_are_asked_again_over_tcp() {
    use std::sync::atomic::Ordering;
    let rt = tokio::runtime::Runtime::new().unwrap();
    // 3 records: 12 + 17 (question) + 3 × 16 bytes, fits 512.
    let (up, tcp_queries) = truncating_upstream(3);
    let fwd = rt
        .block_on(async { Forwarder::new(UdpSocket::bind("127.0.0.1:0").unwrap(), vec![up]) })
        .unwrap();
    let addr = start_udp(&rt, zone(), Some(fwd));
    let c = client();
    let resp = ask(&c, addr, &query(77, "big.example"));
    let m = Message::from_vec(&resp).unwrap();
    assert_eq!(m.metadata.id, 77);
    assert!(!m.metadata.truncation, "the whole answer from TCP: {m:?}");
    let ips: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(ips, ["192.0.2.0", "192.0.2.1", "192.0.2.2"]);
    assert_eq!(m.queries[0].name().to_string(), "big.example.");
    assert_eq!(tcp_queries.load(Ordering::SeqCst), 1);
}

#[test]
fn a_tcp_answer_too_big_for_the_client_leaves_it_the_truncated_one() {
    use std::sync::atomic::Ordering;
    let rt = tokio::runtime::Runtime::new().unwrap();
    // 40 records: 12 + 17 + 640 bytes, more than the 512 a client without EDNS takes.
    let (up, tcp_queries) = truncating_upstream(40);
    let fwd = rt
        .block_on(async { Forwarder::new(UdpSocket::bind("127.0.0.1:0").unwrap(), vec![up]) })
        .unwrap();
    let z = zone();
    let addr = start_udp(&rt, z.clone(), Some(fwd.clone()));
    let c = client();
    let resp = ask(&c, addr, &query(78, "huge.example"));
    let m = Message::from_vec(&resp).unwrap();
    assert_eq!(m.metadata.id, 78);
    assert!(m.metadata.truncation, "TC: ask again over TCP");
    assert!(m.answers.is_empty());
    assert_eq!(tcp_queries.load(Ordering::SeqCst), 1);
    // Over TCP the client gets all of it.
    let tcp_addr = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = listener.local_addr().unwrap();
        let mut server = hickory_server::Server::new(Handler {
            zone: z,
            forwarder: Some(fwd),
        });
        server.register_listener(listener, Duration::from_secs(5), 16);
        tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        a
    });
    let mut s = TcpStream::connect(tcp_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let q = query(79, "huge.example");
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut body).unwrap();
    let m = Message::from_vec(&body).unwrap();
    assert_eq!(m.metadata.id, 79);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 40);
    assert_eq!(tcp_queries.load(Ordering::SeqCst), 2);
}

/// The forwarder's TCP retry is made in the namespace of its UDP socket (`TcpMaker`: a
/// thread that joined it through SIOCGSKNS), not in the one the process runs in: the upstream
/// here listens on 127.0.0.1 inside a namespace of its own, where the forwarder's UDP socket
/// is bound too, while the server, its client and every thread of this test stay outside.
#[test]
fn the_tcp_retry_goes_from_the_namespace_of_the_upstream_socket() {
    use std::sync::atomic::Ordering;
    let Some(ns) = testkit::netns!("flt-dnsfwd") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (up, tcp_queries, fwd_sock) = ns.run(|| {
        let (up, n) = truncating_upstream(3);
        (up, n, UdpSocket::bind("127.0.0.1:0").unwrap())
    });
    let fwd = rt
        .block_on(async { Forwarder::new(fwd_sock, vec![up]) })
        .unwrap();
    let addr = start_udp(&rt, zone(), Some(fwd));
    let c = client();
    let resp = ask(&c, addr, &query(91, "big.example"));
    let m = Message::from_vec(&resp).unwrap();
    assert_eq!(m.metadata.id, 91);
    assert!(
        !m.metadata.truncation,
        "the whole answer, over TCP inside the namespace: {m:?}"
    );
    assert_eq!(m.answers.len(), 3);
    assert_eq!(tcp_queries.load(Ordering::SeqCst), 1);
}
