//! Tier 0: the Kubernetes DNS specification's record forms (schema 1.1.0, table in
//! shared/reference/services-dns-ingress.md §2.1) against the index, then the wire format.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use dns::follow::{Objects, load_static};
use dns::records::{DEFAULT_TTL, VERSION_TTL};
use dns::server::{Outcome, respond};
use dns::{Lookup, Owner, Zone, ZoneConfig};
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::Request;
use serde_json::{Value, json};
use store::KeyValue;

fn cfg() -> ZoneConfig {
    let mut c = ZoneConfig::new("cluster.local").unwrap();
    c.dns_ip = Some("10.96.0.10".parse().unwrap());
    c.reverse_cidrs = vec![
        "10.96.0.0/12".parse().unwrap(),
        "10.244.0.0/16".parse().unwrap(),
    ];
    c
}

fn svc(ns: &str, name: &str, spec: Value) -> Value {
    json!({"kind": "Service", "apiVersion": "v1",
           "metadata": {"namespace": ns, "name": name}, "spec": spec})
}

fn slice(ns: &str, name: &str, service: &str, endpoints: Value, ports: Value) -> Value {
    json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
           "metadata": {"namespace": ns, "name": name,
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "endpoints": endpoints, "ports": ports})
}

fn ns(name: &str) -> Value {
    json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name}})
}

fn pod(ns: &str, name: &str, ip: &str) -> Value {
    json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"namespace": ns, "name": name},
           "spec": {"containers": [{"name": "c"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// The cluster most cases use.
fn cluster() -> Vec<Value> {
    vec![
        ns("default"),
        ns("prod"),
        svc(
            "default",
            "web",
            json!({"type": "ClusterIP", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                   "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                             {"port": 8080, "protocol": "TCP"},
                             {"name": "dns", "port": 53, "protocol": "UDP"}]}),
        ),
        svc(
            "default",
            "db",
            json!({"clusterIP": "None", "selector": {"app": "db"},
                   "ports": [{"name": "pg", "port": 5432}, {"name": "metrics", "port": 9187}]}),
        ),
        slice(
            "default",
            "db-abcde",
            "db",
            json!([
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "hostname": "db-0"},
                {"addresses": ["10.244.2.7"], "conditions": {"ready": true}},
                {"addresses": ["10.244.2.9"], "conditions": {"ready": false}, "hostname": "db-2"}
            ]),
            json!([{"name": "pg", "port": 5432, "protocol": "TCP"},
                   {"name": "metrics", "port": 9187, "protocol": "TCP"}]),
        ),
        svc(
            "default",
            "empty",
            json!({"clusterIP": "None", "selector": {"app": "none"}}),
        ),
        slice("default", "empty-xyzab", "empty", json!([]), json!([])),
        svc(
            "prod",
            "search",
            json!({"type": "ExternalName", "externalName": "search.example.com"}),
        ),
        svc(
            "prod",
            "alias",
            json!({"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}),
        ),
        pod("default", "client", "10.244.1.9"),
    ]
}

fn zone_of(items: &[Value]) -> Zone {
    let mut z = Zone::new(cfg());
    load_static(&mut z, items).unwrap();
    z
}

fn lname(s: &str) -> LowerName {
    LowerName::new(&Name::from_str(s).unwrap())
}

/// (rcode, answers as "TYPE data" strings, authority types)
fn ask(z: &Zone, name: &str, t: RecordType) -> (ResponseCode, Vec<String>, Vec<RecordType>) {
    match z.lookup(&lname(name), t) {
        Lookup::Forward => (ResponseCode::Refused, vec!["FORWARD".into()], vec![]),
        Lookup::Answer(a) => {
            let mut answers: Vec<String> = a.answers.iter().map(|r| show(r)).collect();
            answers.sort();
            (
                a.rcode,
                answers,
                a.authority.iter().map(|r| r.record_type()).collect(),
            )
        }
    }
}

fn show(r: &Record) -> String {
    match &r.data {
        RData::A(a) => format!("A {}", a.0),
        RData::AAAA(a) => format!("AAAA {}", a.0),
        RData::SRV(s) => format!("SRV {} {} {} {}", s.priority, s.weight, s.port, s.target),
        RData::PTR(p) => format!("PTR {}", p.0),
        RData::CNAME(c) => format!("CNAME {}", c.0),
        RData::TXT(t) => format!(
            "TXT {}",
            t.txt_data
                .iter()
                .map(|d| String::from_utf8_lossy(d).into_owned())
                .collect::<Vec<_>>()
                .join(",")
        ),
        RData::NS(n) => format!("NS {}", n.0),
        RData::SOA(s) => format!("SOA {} {}", s.mname, s.minimum),
        other => format!("{other:?}"),
    }
}

fn answers(z: &Zone, name: &str, t: RecordType) -> Vec<String> {
    let (rcode, a, _) = ask(z, name, t);
    assert_eq!(rcode, ResponseCode::NoError, "{name} {t}: {a:?}");
    a
}

fn assert_nxdomain(z: &Zone, name: &str, t: RecordType) {
    let (rcode, a, auth) = ask(z, name, t);
    assert_eq!(rcode, ResponseCode::NXDomain, "{name} {t}: {a:?}");
    assert!(a.is_empty());
    assert_eq!(
        auth,
        vec![RecordType::SOA],
        "negative answers carry the SOA"
    );
}

fn assert_nodata(z: &Zone, name: &str, t: RecordType) {
    let (rcode, a, auth) = ask(z, name, t);
    assert_eq!(rcode, ResponseCode::NoError, "{name} {t}");
    assert!(a.is_empty(), "{name} {t}: {a:?}");
    assert_eq!(
        auth,
        vec![RecordType::SOA],
        "negative answers carry the SOA"
    );
}

#[test]
fn dns_version_txt_is_the_schema_version_with_the_spec_ttl() {
    let z = zone_of(&cluster());
    assert_eq!(
        answers(&z, "dns-version.cluster.local.", RecordType::TXT),
        vec!["TXT 1.1.0"]
    );
    let Lookup::Answer(a) = z.lookup(&lname("dns-version.cluster.local."), RecordType::TXT) else {
        panic!("forwarded")
    };
    assert_eq!(a.answers[0].ttl, VERSION_TTL);
    assert!(a.authoritative);
}

#[test]
fn cluster_ip_service_has_an_a_record_with_the_default_ttl() {
    let z = zone_of(&cluster());
    assert_eq!(
        answers(&z, "web.default.svc.cluster.local.", RecordType::A),
        vec!["A 10.96.0.20"]
    );
    let Lookup::Answer(a) = z.lookup(&lname("web.default.svc.cluster.local."), RecordType::A)
    else {
        panic!("forwarded")
    };
    assert_eq!(a.answers[0].ttl, DEFAULT_TTL);
    assert_eq!(DEFAULT_TTL, 5, "CoreDNS' default");
}

#[test]
fn names_match_case_insensitively() {
    let z = zone_of(&cluster());
    assert_eq!(
        answers(&z, "WEB.Default.SVC.cluster.LOCAL.", RecordType::A),
        vec!["A 10.96.0.20"]
    );
}

#[test]
fn aaaa_of_an_ipv4_only_service_is_nodata_not_nxdomain() {
    let z = zone_of(&cluster());
    assert_nodata(&z, "web.default.svc.cluster.local.", RecordType::AAAA);
    assert_nodata(&z, "web.default.svc.cluster.local.", RecordType::MX);
}

#[test]
fn unknown_names_are_nxdomain_with_the_soa() {
    let z = zone_of(&cluster());
    assert_nxdomain(&z, "nope.default.svc.cluster.local.", RecordType::A);
    assert_nxdomain(&z, "web.nons.svc.cluster.local.", RecordType::A);
    // What ndots:5 search paths produce for an outside name.
    assert_nxdomain(&z, "example.com.default.svc.cluster.local.", RecordType::A);
    assert_nxdomain(&z, "example.com.cluster.local.", RecordType::AAAA);
    let Lookup::Answer(a) = z.lookup(&lname("nope.cluster.local."), RecordType::A) else {
        panic!("forwarded")
    };
    let RData::SOA(soa) = &a.authority[0].data else {
        panic!("not a SOA")
    };
    assert_eq!(soa.minimum, DEFAULT_TTL, "negative TTL follows the TTL");
    assert_eq!(a.authority[0].name.to_string(), "cluster.local.");
}

#[test]
fn empty_non_terminals_are_nodata() {
    let z = zone_of(&cluster());
    for name in [
        "cluster.local.",
        "svc.cluster.local.",
        "pod.cluster.local.",
        "default.svc.cluster.local.",
        "prod.svc.cluster.local.",
        "default.pod.cluster.local.",
        "_tcp.web.default.svc.cluster.local.",
    ] {
        assert_nodata(&z, name, RecordType::A);
    }
}

#[test]
fn apex_answers_soa_and_ns_with_the_server_address_as_additional() {
    let z = zone_of(&cluster());
    assert_eq!(
        answers(&z, "cluster.local.", RecordType::SOA),
        vec!["SOA ns.dns.cluster.local. 5"]
    );
    let Lookup::Answer(a) = z.lookup(&lname("cluster.local."), RecordType::NS) else {
        panic!("forwarded")
    };
    assert_eq!(a.answers.len(), 1);
    assert_eq!(show(a.answers[0]), "NS ns.dns.cluster.local.");
    assert_eq!(
        a.additional.iter().map(|r| show(r)).collect::<Vec<_>>(),
        vec!["A 10.96.0.10"]
    );
}

#[test]
fn srv_exists_for_named_ports_only() {
    let z = zone_of(&cluster());
    assert_eq!(
        answers(
            &z,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV
        ),
        vec!["SRV 0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        answers(
            &z,
            "_dns._udp.web.default.svc.cluster.local.",
            RecordType::SRV
        ),
        vec!["SRV 0 100 53 web.default.svc.cluster.local."]
    );
    // The protocol is part of the name.
    assert_nxdomain(
        &z,
        "_dns._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    // The unnamed port 8080 has no SRV.
    assert_nxdomain(
        &z,
        "_8080._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    // The SRV target's address rides along.
    let Lookup::Answer(a) = z.lookup(
        &lname("_http._tcp.web.default.svc.cluster.local."),
        RecordType::SRV,
    ) else {
        panic!("forwarded")
    };
    assert_eq!(
        a.additional.iter().map(|r| show(r)).collect::<Vec<_>>(),
        vec!["A 10.96.0.20"]
    );
}

#[test]
fn ptr_of_a_cluster_ip_names_the_service() {
    let z = zone_of(&cluster());
    assert_eq!(
        answers(&z, "20.0.96.10.in-addr.arpa.", RecordType::PTR),
        vec!["PTR web.default.svc.cluster.local."]
    );
    // Unknown addresses inside our ranges are ours to deny.
    assert_nxdomain(&z, "21.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_nxdomain(&z, "200.3.244.10.in-addr.arpa.", RecordType::PTR);
    let Lookup::Answer(a) = z.lookup(&lname("21.0.96.10.in-addr.arpa."), RecordType::PTR) else {
        panic!("forwarded")
    };
    assert_eq!(a.authority[0].name.to_string(), "in-addr.arpa.");
}

#[test]
fn names_outside_the_cluster_are_forwarded() {
    let z = zone_of(&cluster());
    for name in [
        "example.com.",
        "local.",
        "cluster.localx.",
        "8.8.8.8.in-addr.arpa.",
        "1.0.0.127.in-addr.arpa.",
    ] {
        assert_eq!(
            z.lookup(&lname(name), RecordType::A),
            Lookup::Forward,
            "{name}"
        );
    }
}

#[test]
fn headless_service_answers_with_ready_endpoints_only() {
    let z = zone_of(&cluster());
    assert_eq!(
        answers(&z, "db.default.svc.cluster.local.", RecordType::A),
        vec!["A 10.244.1.5", "A 10.244.2.7"]
    );
    // Endpoint names: the hostname, else the dashed address.
    assert_eq!(
        answers(&z, "db-0.db.default.svc.cluster.local.", RecordType::A),
        vec!["A 10.244.1.5"]
    );
    assert_eq!(
        answers(
            &z,
            "10-244-2-7.db.default.svc.cluster.local.",
            RecordType::A
        ),
        vec!["A 10.244.2.7"]
    );
    // Not ready: no record at all.
    assert_nxdomain(&z, "db-2.db.default.svc.cluster.local.", RecordType::A);
}

#[test]
fn headless_srv_is_endpoints_times_named_ports() {
    let z = zone_of(&cluster());
    assert_eq!(
        answers(
            &z,
            "_pg._tcp.db.default.svc.cluster.local.",
            RecordType::SRV
        ),
        vec![
            "SRV 0 50 5432 10-244-2-7.db.default.svc.cluster.local.",
            "SRV 0 50 5432 db-0.db.default.svc.cluster.local."
        ]
    );
    assert_eq!(
        answers(
            &z,
            "_metrics._tcp.db.default.svc.cluster.local.",
            RecordType::SRV
        )
        .len(),
        2
    );
}

#[test]
fn ptr_of_a_headless_endpoint_names_the_endpoint() {
    let z = zone_of(&cluster());
    assert_eq!(
        answers(&z, "5.1.244.10.in-addr.arpa.", RecordType::PTR),
        vec!["PTR db-0.db.default.svc.cluster.local."]
    );
}

#[test]
fn headless_service_without_ready_endpoints_is_nxdomain() {
    let z = zone_of(&cluster());
    assert_nxdomain(&z, "empty.default.svc.cluster.local.", RecordType::A);
}

#[test]
fn publish_not_ready_addresses_includes_unready_endpoints() {
    let mut items = cluster();
    items[3]["spec"]["publishNotReadyAddresses"] = json!(true);
    let z = zone_of(&items);
    assert_eq!(
        answers(&z, "db.default.svc.cluster.local.", RecordType::A).len(),
        3
    );
    assert_eq!(
        answers(&z, "db-2.db.default.svc.cluster.local.", RecordType::A),
        vec!["A 10.244.2.9"]
    );
}

#[test]
fn external_name_is_a_cname_for_any_type() {
    let z = zone_of(&cluster());
    for t in [RecordType::CNAME, RecordType::A, RecordType::AAAA] {
        assert_eq!(
            answers(&z, "search.prod.svc.cluster.local.", t),
            vec!["CNAME search.example.com."],
            "{t}"
        );
    }
}

#[test]
fn cname_into_the_cluster_is_followed() {
    let z = zone_of(&cluster());
    assert_eq!(
        answers(&z, "alias.prod.svc.cluster.local.", RecordType::A),
        vec!["A 10.96.0.20", "CNAME web.default.svc.cluster.local."]
    );
}

#[test]
fn pod_records_exist_only_for_pods_that_exist() {
    let z = zone_of(&cluster());
    assert_eq!(
        answers(&z, "10-244-1-9.default.pod.cluster.local.", RecordType::A),
        vec!["A 10.244.1.9"]
    );
    assert_nxdomain(&z, "10-244-1-8.default.pod.cluster.local.", RecordType::A);
    // Same IP, other namespace: not that pod.
    assert_nxdomain(&z, "10-244-1-9.prod.pod.cluster.local.", RecordType::A);
}

#[test]
fn unsynced_zone_answers_servfail_for_its_names_but_still_forwards() {
    let z = Zone::new(cfg());
    assert_eq!(
        ask(&z, "web.default.svc.cluster.local.", RecordType::A).0,
        ResponseCode::ServFail
    );
    assert_eq!(
        z.lookup(&lname("example.com."), RecordType::A),
        Lookup::Forward
    );
}

fn kv(key: &str, v: &Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: serde_json::to_vec(v).unwrap(),
        mod_revision: 2,
        create_revision: 2,
        lease: 0,
    }
}

#[test]
fn incremental_updates_add_change_and_remove_exactly_one_owner() {
    let mut z = Zone::new(cfg());
    let mut objects = Objects::default();
    z.set_synced();
    let empty = z.name_count();
    let serial = z.serial();
    let key = "objects/services/default/web";
    let web = svc(
        "default",
        "web",
        json!({"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}),
    );
    let owners = objects.apply(key, Some(&kv(key, &web)));
    assert_eq!(owners, vec![Owner::Service("default/web".into())]);
    objects.update(&mut z, &owners);
    assert!(z.serial() > serial, "changes bump the SOA serial");
    assert_eq!(
        answers(&z, "web.default.svc.cluster.local.", RecordType::A),
        vec!["A 10.96.0.20"]
    );
    // A change replaces the old records.
    let web2 = svc("default", "web", json!({"clusterIP": "10.96.0.21"}));
    let owners = objects.apply(key, Some(&kv(key, &web2)));
    objects.update(&mut z, &owners);
    assert_eq!(
        answers(&z, "web.default.svc.cluster.local.", RecordType::A),
        vec!["A 10.96.0.21"]
    );
    assert_nxdomain(
        &z,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_nxdomain(&z, "20.0.96.10.in-addr.arpa.", RecordType::PTR);
    // Deletion removes the name and its empty non-terminals (no namespace object here).
    let owners = objects.apply(key, None);
    objects.update(&mut z, &owners);
    assert_nxdomain(&z, "web.default.svc.cluster.local.", RecordType::A);
    assert_nxdomain(&z, "default.svc.cluster.local.", RecordType::A);
    assert_eq!(z.name_count(), empty, "nothing left behind");
}

#[test]
fn a_slice_follows_its_service_label() {
    let mut z = Zone::new(cfg());
    z.set_synced();
    let mut objects = Objects::default();
    for (k, v) in [
        (
            "objects/services/default/a",
            svc("default", "a", json!({"clusterIP": "None"})),
        ),
        (
            "objects/services/default/b",
            svc("default", "b", json!({"clusterIP": "None"})),
        ),
    ] {
        let o = objects.apply(k, Some(&kv(k, &v)));
        objects.update(&mut z, &o);
    }
    let key = "objects/endpointslices/default/s";
    let eps = json!([{"addresses": ["10.244.1.5"]}]);
    let o = objects.apply(
        key,
        Some(&kv(
            key,
            &slice("default", "s", "a", eps.clone(), json!([])),
        )),
    );
    objects.update(&mut z, &o);
    assert_eq!(
        answers(&z, "a.default.svc.cluster.local.", RecordType::A),
        vec!["A 10.244.1.5"]
    );
    let o = objects.apply(
        key,
        Some(&kv(key, &slice("default", "s", "b", eps, json!([])))),
    );
    assert_eq!(o.len(), 2, "both services re-indexed: {o:?}");
    objects.update(&mut z, &o);
    assert_nxdomain(&z, "a.default.svc.cluster.local.", RecordType::A);
    assert_eq!(
        answers(&z, "b.default.svc.cluster.local.", RecordType::A),
        vec!["A 10.244.1.5"]
    );
}

#[test]
fn a_pod_selected_by_two_headless_services_has_two_ptrs() {
    let eps = json!([{"addresses": ["10.244.1.5"]}]);
    let z = zone_of(&[
        svc("default", "a", json!({"clusterIP": "None"})),
        svc("default", "b", json!({"clusterIP": "None"})),
        slice("default", "sa", "a", eps.clone(), json!([])),
        slice("default", "sb", "b", eps, json!([])),
    ]);
    assert_eq!(
        answers(&z, "5.1.244.10.in-addr.arpa.", RecordType::PTR),
        vec![
            "PTR 10-244-1-5.a.default.svc.cluster.local.",
            "PTR 10-244-1-5.b.default.svc.cluster.local."
        ]
    );
}

#[test]
fn static_objects_refuse_kinds_dns_does_not_serve() {
    let mut z = Zone::new(cfg());
    let err = load_static(
        &mut z,
        &[json!({"kind": "NetworkPolicy", "metadata": {"name": "x"}})],
    )
    .unwrap_err();
    assert!(err.to_string().contains("NetworkPolicy"), "{err}");
}

// ---- wire format ----

fn request(name: &str, t: RecordType, edns: Option<u16>) -> Request {
    let mut m = Message::new(4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), t));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    let bytes = m.to_vec().unwrap();
    Request::from_bytes(bytes, "10.244.1.9:5353".parse().unwrap(), Protocol::Udp).unwrap()
}

fn wire(z: &Zone, req: &Request, max: u16) -> Message {
    let mut out = Vec::new();
    let outcome = respond(z, req, max, &mut out);
    assert!(matches!(outcome, Outcome::Answered(_)), "{outcome:?}");
    assert!(out.len() <= usize::from(max));
    Message::from_vec(&out).unwrap()
}

/// A query written byte by byte (hickory's own encoder lowercases names).
fn raw_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        b.push(label.len() as u8);
        b.extend_from_slice(label.as_bytes());
    }
    b.push(0);
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b
}

#[test]
fn wire_answer_echoes_the_question_as_asked_and_sets_aa() {
    let z = zone_of(&cluster());
    let req = Request::from_bytes(
        raw_query(4242, "Web.default.SVC.cluster.local.", 1),
        "10.244.1.9:5353".parse().unwrap(),
        Protocol::Udp,
    )
    .unwrap();
    let mut out = Vec::new();
    assert_eq!(
        respond(&z, &req, 512, &mut out),
        Outcome::Answered(ResponseCode::NoError)
    );
    // The question section comes back byte for byte (DNS 0x20 clients check it).
    let q = &req.as_slice()[12..];
    assert_eq!(&out[12..12 + q.len()], q);
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(m.metadata.id, 4242);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_desired);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        m.answers[0].data,
        RData::A(Ipv4Addr::new(10, 96, 0, 20).into())
    );
}

#[test]
fn wire_nxdomain_and_nodata_carry_the_soa() {
    let z = zone_of(&cluster());
    let m = wire(
        &z,
        &request("nope.default.svc.cluster.local.", RecordType::A, None),
        512,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    let m = wire(
        &z,
        &request(
            "web.default.svc.cluster.local.",
            RecordType::AAAA,
            Some(1232),
        ),
        1232,
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    assert!(m.edns.is_some(), "EDNS answered with EDNS");
}

#[test]
fn big_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let eps: Vec<Value> = (0..100)
        .map(|i| json!({"addresses": [format!("10.244.{}.{}", i / 250, i % 250 + 1)]}))
        .collect();
    let z = zone_of(&[
        svc("default", "big", json!({"clusterIP": "None"})),
        slice("default", "big-1", "big", json!(eps), json!([])),
    ]);
    let req = request("big.default.svc.cluster.local.", RecordType::A, None);
    let m = wire(&z, &req, 512);
    assert!(m.metadata.truncation, "TC set");
    assert!(m.answers.len() < 100);
    let m = wire(&z, &req, u16::MAX);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
    let ips: std::collections::BTreeSet<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    assert_eq!(ips.len(), 100);
}

#[test]
fn zone_transfers_and_other_opcodes_are_refused() {
    let z = zone_of(&cluster());
    let m = wire(&z, &request("cluster.local.", RecordType::AXFR, None), 512);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let mut msg = Message::new(7, MessageType::Query, OpCode::Status);
    msg.add_query(Query::query(
        Name::from_str("cluster.local.").unwrap(),
        RecordType::A,
    ));
    let req = Request::from_bytes(
        msg.to_vec().unwrap(),
        "10.0.0.1:1000".parse().unwrap(),
        Protocol::Udp,
    )
    .unwrap();
    assert_eq!(
        wire(&z, &req, 512).metadata.response_code,
        ResponseCode::NotImp
    );
}

#[test]
fn outside_names_are_handed_to_the_forwarder_and_responses_are_dropped() {
    let z = zone_of(&cluster());
    let mut out = Vec::new();
    assert_eq!(
        respond(
            &z,
            &request("example.com.", RecordType::A, None),
            512,
            &mut out
        ),
        Outcome::Forward
    );
    let mut msg = Message::new(7, MessageType::Response, OpCode::Query);
    msg.add_query(Query::query(
        Name::from_str("cluster.local.").unwrap(),
        RecordType::A,
    ));
    let req = Request::from_bytes(
        msg.to_vec().unwrap(),
        "10.0.0.1:1000".parse().unwrap(),
        Protocol::Udp,
    )
    .unwrap();
    assert_eq!(respond(&z, &req, 512, &mut out), Outcome::Drop);
}

// ---- the short negative path (dns::wire) against the full path ----

/// `name` with each letter's case flipped by a fixed pseudo-random sequence (0x20 bits).
fn mixed_case(name: &str, seed: u64) -> String {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    name.chars()
        .map(|c| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            if x >> 63 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// A raw query with RD as given, `qtype` and an optional option-less EDNS0 OPT (DO as given).
fn raw_query_with(id: u16, name: &str, qtype: u16, rd: bool, edns: Option<bool>) -> Vec<u8> {
    let mut q = raw_query(id, name, qtype);
    q[2] = u8::from(rd);
    q[3] = if id.is_multiple_of(3) { 0x10 } else { 0 }; // CD on some
    if let Some(dnssec_ok) = edns {
        q[11] = 1;
        let flags = if dnssec_ok { 0x80 } else { 0 };
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, flags, 0, 0, 0]);
    }
    q
}

/// Every name × type × case × EDNS: whenever the short path answers, its bytes equal the full
/// path's; and it answers every negative question inside the cluster domain.
#[test]
fn short_negative_answers_equal_the_full_path_byte_for_byte() {
    use dns::server::udp_max_size;
    use dns::wire::negative_response;
    let z = zone_of(&cluster());
    let names = [
        // NXDOMAIN inside the zone, at every depth, and search-path expansions
        "nope.cluster.local",
        "nope.svc.cluster.local",
        "nope.default.svc.cluster.local",
        "host7.example.com.default.svc.cluster.local",
        "www.google.com.prod.svc.cluster.local",
        "a.b.c.d.e.f.g.h.web.default.svc.cluster.local",
        "_x._tcp.web.default.svc.cluster.local",
        "nope.default.pod.cluster.local",
        "10-244-1-99.default.pod.cluster.local",
        "db-9.db.default.svc.cluster.local",
        "empty.default.svc.cluster.local", // headless without ready endpoints
        "nope.ns.dns.cluster.local",
        "a-very-long-label-of-exactly-sixty-three-characters-for-the-tst.x.y.z.default.svc.cluster.local",
        // existing names and empty non-terminals: NODATA for most types, answers for some
        "cluster.local",
        "svc.cluster.local",
        "pod.cluster.local",
        "default.svc.cluster.local",
        "prod.pod.cluster.local",
        "web.default.svc.cluster.local",
        "_tcp.web.default.svc.cluster.local",
        "_http._tcp.web.default.svc.cluster.local",
        "_pg._tcp.db.default.svc.cluster.local",
        "db-0.db.default.svc.cluster.local",
        "10-244-1-9.default.pod.cluster.local",
        "search.prod.svc.cluster.local", // CNAME out of the zone
        "alias.prod.svc.cluster.local",  // CNAME into the zone
        "dns-version.cluster.local",
        "ns.dns.cluster.local",
        "dns.cluster.local",
        // not the cluster domain: the full path (reverse names, forwarded names)
        "20.0.96.10.in-addr.arpa",
        "99.0.96.10.in-addr.arpa",
        "9.9.9.9.in-addr.arpa",
        "example.com",
        "local",
        "xcluster.local",
        "cluster.local.example.com",
    ];
    // A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, CAA, ANY; and types the full path keeps
    // (0, OPT, IXFR, AXFR, MAILA).
    let types = [
        1u16, 2, 5, 6, 12, 15, 16, 28, 33, 257, 255, 0, 41, 251, 252, 254,
    ];
    let (mut short, mut compared) = (0, 0);
    for (n, name) in names.iter().enumerate() {
        for &qtype in &types {
            for (v, edns) in [None, Some(false), Some(true)].into_iter().enumerate() {
                for spelling in [name.to_string(), mixed_case(name, (n * 7 + v) as u64)] {
                    let id = (n * 100 + usize::from(qtype) + v) as u16;
                    let q = raw_query_with(id, &spelling, qtype, n % 2 == 0, edns);
                    let mut fast = Vec::new();
                    let answered = negative_response(&z, &q, &mut fast);
                    let req = Request::from_bytes(
                        q.clone(),
                        "10.244.1.9:5353".parse().unwrap(),
                        Protocol::Udp,
                    )
                    .unwrap();
                    let mut full = Vec::new();
                    let outcome = respond(&z, &req, udp_max_size(&req), &mut full);
                    let what = format!("{spelling} type {qtype} edns {edns:?}");
                    compared += 1;
                    if answered {
                        short += 1;
                        assert_eq!(
                            outcome,
                            Outcome::Answered(
                                Message::from_vec(&fast).unwrap().metadata.response_code
                            ),
                            "{what}"
                        );
                        assert_eq!(fast, full, "{what}");
                        continue;
                    }
                    assert!(fast.is_empty(), "{what}");
                    // Not answered: then the full path's answer is not a negative one of the
                    // cluster domain for a data type of class IN.
                    let Outcome::Answered(code) = outcome else {
                        continue;
                    };
                    let m = Message::from_vec(&full).unwrap();
                    let negative = matches!(code, ResponseCode::NXDomain | ResponseCode::NoError)
                        && m.answers.is_empty();
                    let in_cluster = Name::from_str(name)
                        .unwrap()
                        .zone_of(&Name::from_str("cluster.local.").unwrap());
                    let data_type = !matches!(qtype, 0 | 41 | 251 | 252 | 254);
                    assert!(
                        !(negative && in_cluster && data_type),
                        "the short path left a negative answer to the full path: {what}"
                    );
                }
            }
        }
    }
    assert!(short > 500, "short path answered {short} of {compared}");
}

#[test]
fn short_negative_path_follows_the_serial_and_stays_off_until_synced() {
    use dns::wire::negative_response;
    let q = raw_query(1, "nope.default.svc.cluster.local", 1);
    let mut out = Vec::new();
    let unsynced = Zone::new(cfg());
    assert!(
        !negative_response(&unsynced, &q, &mut out),
        "SERVFAIL comes from the full path"
    );
    assert!(out.is_empty());
    let mut z = zone_of(&cluster());
    let serial_of = |out: &[u8]| {
        let m = Message::from_vec(out).unwrap();
        match &m.authorities[0].data {
            RData::SOA(soa) => soa.serial,
            other => panic!("not an SOA: {other:?}"),
        }
    };
    assert!(negative_response(&z, &q, &mut out));
    assert_eq!(serial_of(&out), z.serial());
    let before = z.serial();
    z.remove(&Owner::Pod("default/client".into()));
    assert_ne!(z.serial(), before);
    assert!(negative_response(&z, &q, &mut out));
    assert_eq!(serial_of(&out), z.serial());
    // The pod's name is gone: NXDOMAIN from the short path too.
    let pod_q = raw_query(2, "10-244-1-9.default.pod.cluster.local", 1);
    assert!(negative_response(&z, &pod_q, &mut out));
    assert_eq!(out[3] & 0x0f, 3);
}
