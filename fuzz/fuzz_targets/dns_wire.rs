//! The cluster DNS's wire path (`dns::server::respond`, `dns::wire::negative_response`): any
//! bytes in as a query, over UDP (the query's own size) and TCP (65535), and the answer
//! checked against RFC 1035 §4.1, RFC 6891 §6.1.3 and §7, and RFC 2181 §9:
//! - at most the transport's size; the header's counts describe the whole message; the id and
//!   the question come back as sent (or, with TC, no question when it does not fit);
//! - an OPT exactly when the query had one: the last record, version 0, payload 1232,
//!   extended RCODE 1 (BADVERS) exactly when the query asked for a version above 0;
//! - TC only over UDP and only with fewer answer records than over TCP, and then no partial
//!   RRset; without TC the whole answer section;
//! - the short negative path answers byte for byte what the full path does.
//!
//! The zone holds a service with 32 A records, 6 and 40 SRV records with additionals, and
//! names of every kind the zone serves.
#![no_main]

use std::sync::OnceLock;

use dns::follow::load_static;
use dns::server::{Outcome, respond, udp_max_size};
use dns::wire::negative_response;
use dns::{Zone, ZoneConfig};
use dns::hickory_server::net::xfer::Protocol;
use dns::hickory_server::server::Request;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fn headless(name: &str, n: usize, port: Option<&str>) -> Vec<Value> {
    let eps: Vec<Value> = (0..n)
        .map(|i| json!({"addresses": [format!("10.244.{}.{}", i / 250, i % 250 + 1)]}))
        .collect();
    let ports = port.map_or(json!([]), |p| json!([{"name": p, "port": 80, "protocol": "TCP"}]));
    vec![
        json!({"kind": "Service", "metadata": {"namespace": "default", "name": name},
               "spec": {"clusterIP": "None"}}),
        json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
               "metadata": {"namespace": "default", "name": format!("{name}-1"),
                            "labels": {"kubernetes.io/service-name": name}},
               "addressType": "IPv4", "endpoints": eps, "ports": ports}),
    ]
}

fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let mut cfg = ZoneConfig::new("cluster.local").unwrap();
        cfg.dns_ip = Some("10.96.0.10".parse().unwrap());
        cfg.reverse_cidrs = vec!["10.96.0.0/12".parse().unwrap(), "10.244.0.0/16".parse().unwrap()];
        let mut z = Zone::new(cfg);
        let mut items = vec![
            json!({"kind": "Namespace", "metadata": {"name": "default"}}),
            json!({"kind": "Service", "metadata": {"namespace": "default", "name": "web"},
                   "spec": {"clusterIP": "10.96.0.20",
                            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
            json!({"kind": "Service", "metadata": {"namespace": "default", "name": "ext"},
                   "spec": {"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}}),
        ];
        items.extend(headless("big", 32, None));
        items.extend(headless("mid", 6, Some("pg")));
        items.extend(headless("db", 40, Some("pg")));
        load_static(&mut z, &items).unwrap();
        z
    })
}

/// A response read by its header's counts: (answer records as (owner, type) in order, whether
/// TC is set, the OPT's (class, TTL) when there is one, and whether it was the last record).
struct Read {
    answers: Vec<(Vec<u8>, u16)>,
    authority: u16,
    tc: bool,
    opt: Option<(u16, u32, bool)>,
}

/// The name at `i` with pointers followed, lowercased, and where it ends in place.
fn name(r: &[u8], mut i: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let l = r[i];
        if l >= 0xc0 {
            end.get_or_insert(i + 2);
            i = usize::from(u16::from_be_bytes([l, r[i + 1]]) & 0x3fff);
            continue;
        }
        out.push(l);
        if l == 0 {
            return (out, *end.get_or_insert(i + 1));
        }
        out.extend(r[i + 1..i + 1 + usize::from(l)].iter().map(u8::to_ascii_lowercase));
        i += 1 + usize::from(l);
    }
    panic!("a pointer loop in our own response");
}

fn read(r: &[u8], query: &[u8], q_end: usize) -> Read {
    let u16_at = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
    assert!(r.len() >= 12);
    assert_eq!(r[..2], query[..2], "the id");
    assert!(r[2] & 0x80 != 0, "QR");
    // The question section as sent, or none with TC when it does not fit.
    let mut i = 12;
    if u16_at(4) == 0 && q_end > 12 {
        assert!(r[2] & 0x02 != 0, "the question left out only with TC");
    } else {
        assert_eq!(r[12..q_end], query[12..q_end], "the question section as sent");
        i = q_end;
    }
    let (an, ns, ar) = (u16_at(6), u16_at(8), u16_at(10));
    let total = usize::from(an) + usize::from(ns) + usize::from(ar);
    let mut answers = Vec::new();
    let mut opt = None;
    for k in 0..total {
        let (owner, end) = name(r, i);
        let t = u16_at(end);
        let rdlen = usize::from(u16_at(end + 8));
        if t == 41 {
            assert!(opt.is_none(), "one OPT");
            assert!(k >= usize::from(an) + usize::from(ns), "OPT in additional");
            let ttl = u32::from_be_bytes([r[end + 4], r[end + 5], r[end + 6], r[end + 7]]);
            opt = Some((u16_at(end + 2), ttl, k + 1 == total));
        }
        if k < usize::from(an) {
            answers.push((owner, t));
        }
        i = end + 10 + rdlen;
    }
    assert_eq!(i, r.len(), "the counts describe the whole message");
    Read {
        answers,
        authority: ns,
        tc: r[2] & 0x02 != 0,
        opt,
    }
}

fuzz_target!(|data: &[u8]| {
    let z = zone();
    let Ok(req) = Request::from_bytes(data.to_vec(), "10.244.1.9:5353".parse().unwrap(), Protocol::Udp)
    else {
        let mut out = Vec::new();
        assert!(!negative_response(z, data, &mut out), "the short path answers only queries");
        return;
    };
    let raw = req.as_slice();
    let q_end = 12 + req.queries.as_bytes().len();
    let edns = req.edns.as_ref().map(|e| e.version());
    let udp = udp_max_size(&req);
    let mut whole = Vec::new();
    let tcp = respond(z, &req, u16::MAX, &mut whole);
    let mut cut = Vec::new();
    let over_udp = respond(z, &req, udp, &mut cut);
    assert_eq!(tcp, over_udp, "the same outcome at any size");
    let mut short = Vec::new();
    if negative_response(z, data, &mut short) {
        assert_eq!(short, cut, "the short negative path equals the full one");
    }
    if !matches!(tcp, Outcome::Answered(_)) {
        return;
    }
    assert!(cut.len() <= usize::from(udp));
    let (w, c) = (read(&whole, raw, q_end), read(&cut, raw, q_end));
    for r in [&w, &c] {
        match (edns, r.opt) {
            (None, None) => {}
            (Some(v), Some((payload, ttl, last))) => {
                assert!(last, "the OPT last");
                assert_eq!(payload, 1232);
                assert_eq!((ttl >> 16) & 0xff, 0, "our version");
                assert_eq!(ttl >> 24 == 1, v > 0, "BADVERS exactly for versions above 0");
                if v > 0 {
                    assert!(r.answers.is_empty());
                }
            }
            (q, o) => panic!("OPT {o:?} for a query with {q:?}"),
        }
    }
    assert!(!w.tc, "no TC over TCP");
    if c.tc && c.answers.is_empty() && w.answers.is_empty() && c.authority == w.authority {
        // Only the question did not fit (a query of many questions).
    } else if c.tc {
        assert!(
            c.answers.len() < w.answers.len() || c.authority < w.authority,
            "TC only when an answer or authority RRset is left out"
        );
    } else {
        assert_eq!(c.answers, w.answers, "without TC the whole answer section");
    }
    // No partial RRset: every RRset in the cut answer has as many records as in the whole one.
    for rrset in &c.answers {
        let n = |a: &Vec<(Vec<u8>, u16)>| a.iter().filter(|x| *x == rrset).count();
        assert_eq!(n(&c.answers), n(&w.answers), "a partial RRset");
    }
});
