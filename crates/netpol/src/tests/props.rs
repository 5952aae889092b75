//! Property tests: random policies on the x/y/z model, checked against a naive reading of the
//! upstream semantics written straight from the API documentation (the oracle), plus
//! algebraic properties (union order, allow-all, except).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use model::{IntOrString, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Value, json};

use super::*;
use crate::input::NAMESPACE_NAME_LABEL;
use crate::ipblock::{self, IpBlockSet};

fn arb_pod_selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        select(vec!["a", "b", "c"]).prop_map(|p| json!({"matchLabels": {"pod": p}})),
        (
            select(vec!["pod", "tier"]),
            select(vec!["In", "NotIn", "Exists", "DoesNotExist"]),
            select(vec!["a", "b", "web", "db"]),
        )
            .prop_map(|(key, op, v)| {
                let mut req = json!({"key": key, "operator": op});
                if op == "In" || op == "NotIn" {
                    req["values"] = json!([v]);
                }
                json!({"matchExpressions": [req]})
            }),
        (select(vec!["a", "b", "c"]), select(vec!["web", "db"])).prop_map(|(p, t)| json!({
            "matchLabels": {"pod": p},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": [t]}]})),
    ]
}

fn arb_ns_selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        select(vec!["x", "y", "z"]).prop_map(|n| json!({"matchLabels": {"ns": n}})),
        select(vec!["x", "y", "z"]).prop_map(|n| json!({"matchExpressions": [
            {"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": [n]}]})),
        Just(json!({"matchLabels": {"team": "red"}})),
    ]
}

fn arb_peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        arb_pod_selector().prop_map(|p| json!({"podSelector": p})),
        arb_ns_selector().prop_map(|n| json!({"namespaceSelector": n})),
        (arb_pod_selector(), arb_ns_selector())
            .prop_map(|(p, n)| json!({"podSelector": p, "namespaceSelector": n})),
        select(vec![
            json!({"cidr": "10.244.0.0/16"}),
            json!({"cidr": "10.244.2.0/24", "except": ["10.244.2.11/32"]}),
            json!({"cidr": "10.244.1.10/32"}),
            json!({"cidr": "10.244.1.10/4", "except": ["10.244.3.0/24", "10.244.1.11/32"]}),
            json!({"cidr": "192.0.2.0/24"}),
            json!({"cidr": "2001:db8::/64"}),
        ])
        .prop_map(|b| json!({"ipBlock": b})),
    ]
}

fn arb_port() -> impl Strategy<Value = Value> {
    let protocol = prop_oneof![
        Just(None),
        Just(Some("TCP")),
        Just(Some("UDP")),
        Just(Some("SCTP"))
    ];
    let port = select(vec![
        json!(null),
        json!(80),
        json!(81),
        json!("serve-80-tcp"),
        json!("serve-81-udp"),
        json!("serve-80-udp"),
        json!("http"),
        json!([80, 81]),
    ]);
    (protocol, port).prop_map(|(proto, port)| {
        let mut p = json!({});
        if let Some(proto) = proto {
            p["protocol"] = json!(proto);
        }
        match port {
            Value::Null => {}
            Value::Array(r) => {
                p["port"] = r[0].clone();
                p["endPort"] = r[1].clone();
            }
            v => p["port"] = v,
        }
        p
    })
}

fn arb_list<S: Strategy<Value = Value>>(item: S) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(json!([]))),
        prop::collection::vec(item, 1..3).prop_map(|v| Some(Value::from(v))),
    ]
}

fn arb_rule(peers: &'static str) -> impl Strategy<Value = Value> {
    (arb_list(arb_peer()), arb_list(arb_port())).prop_map(move |(p, ports)| {
        let mut r = json!({});
        if let Some(p) = p {
            r[peers] = p;
        }
        if let Some(ports) = ports {
            r["ports"] = ports;
        }
        r
    })
}

fn arb_policy() -> impl Strategy<Value = Value> {
    let types = select(vec![
        json!(null),
        json!(["Ingress"]),
        json!(["Egress"]),
        json!(["Ingress", "Egress"]),
    ]);
    (
        select(vec!["x", "y", "z"]),
        arb_pod_selector(),
        types,
        arb_list(arb_rule("from")),
        arb_list(arb_rule("to")),
    )
        .prop_map(|(ns, sel, types, ingress, egress)| {
            let mut spec = json!({"podSelector": sel});
            if !types.is_null() {
                spec["policyTypes"] = types;
            }
            if let Some(i) = ingress {
                spec["ingress"] = i;
            }
            if let Some(e) = egress {
                spec["egress"] = e;
            }
            json!({"metadata": {"namespace": ns}, "spec": spec})
        })
}

/// Random policies (named p0, p1, ... so that names are unique) and pod tweaks: a `tier`
/// label per pod (or none) and which named ports each pod keeps.
fn arb_state() -> impl Strategy<Value = (Vec<NetworkPolicy>, Vec<PodInfo>)> {
    (
        prop::collection::vec(arb_policy(), 0..6),
        prop::collection::vec(select(vec![None, Some("web"), Some("db")]), 9),
        prop::collection::vec(any::<u8>(), 9),
    )
        .prop_map(|(pols, tiers, keep)| {
            let pols = pols
                .into_iter()
                .enumerate()
                .map(|(i, mut v)| {
                    v["metadata"]["name"] = json!(format!("p{i}"));
                    policy(v)
                })
                .collect();
            let (_, mut pods) = xyz();
            for ((p, tier), keep) in pods.iter_mut().zip(tiers).zip(keep) {
                if let Some(t) = tier {
                    p.labels.insert("tier".into(), t.into());
                }
                let mut bit = 0;
                p.ports.retain(|_| {
                    bit += 1;
                    keep & (1 << (bit % 8)) != 0
                });
            }
            (pols, pods)
        })
}

// ---- the oracle: upstream semantics, read naively ----

fn ns_labels(ns: &[NamespaceInfo], name: &str) -> BTreeMap<String, String> {
    let mut l = ns
        .iter()
        .find(|n| n.name == name)
        .map(|n| n.labels.clone())
        .unwrap_or_default();
    l.insert(NAMESPACE_NAME_LABEL.into(), name.into());
    l
}

fn peer_matches(
    peer: &NetworkPolicyPeer,
    policy_ns: &str,
    namespaces: &[NamespaceInfo],
    remote: &PodInfo,
) -> bool {
    if let Some(block) = &peer.ip_block {
        let Some(ip) = remote.ip else { return false };
        let inside = |s: &str| match s.parse::<IpNet>() {
            Ok(IpNet::V4(n)) => n.trunc().contains(&ip),
            _ => false,
        };
        return inside(&block.cidr) && !block.except.iter().any(|e| inside(e));
    }
    let ns_ok = match &peer.namespace_selector {
        None => remote.namespace == policy_ns,
        Some(sel) => sel.matches(&ns_labels(namespaces, &remote.namespace)),
    };
    let pod_ok = peer
        .pod_selector
        .clone()
        .unwrap_or_default()
        .matches(&remote.labels);
    ns_ok && pod_ok
}

fn port_matches(p: &NetworkPolicyPort, dst: &PodInfo, port: u16, proto: Protocol) -> bool {
    if p.protocol() != proto.as_str() {
        return false;
    }
    match &p.port {
        None => true,
        Some(IntOrString::Int(n)) => {
            let end = p.end_port.unwrap_or(*n);
            i32::from(port) >= *n && i32::from(port) <= end
        }
        Some(IntOrString::String(name)) => dst.named_port(name, proto) == Some(port),
    }
}

/// A rule's peers and ports, whichever direction it is.
type RuleView<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

#[allow(clippy::too_many_arguments)]
fn oracle_direction(
    pols: &[NetworkPolicy],
    namespaces: &[NamespaceInfo],
    target: &PodInfo,
    remote: &PodInfo,
    dst: &PodInfo,
    egress: bool,
    port: u16,
    proto: Protocol,
) -> bool {
    let mut isolated = false;
    for p in pols {
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        if ns != target.namespace || !p.spec.pod_selector.matches(&target.labels) {
            continue;
        }
        let (ing, eg) = p.spec.policy_types();
        let rules: Vec<RuleView<'_>> = if egress && eg {
            p.spec
                .egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_ref(), r.ports.as_ref()))
                .collect()
        } else if !egress && ing {
            p.spec
                .ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_ref(), r.ports.as_ref()))
                .collect()
        } else {
            continue;
        };
        isolated = true;
        for (peers, ports) in rules {
            let peer_ok = match peers {
                None => true,
                Some(v) if v.is_empty() => true,
                Some(v) => v.iter().any(|pr| peer_matches(pr, ns, namespaces, remote)),
            };
            let port_ok = match ports {
                None => true,
                Some(v) if v.is_empty() => true,
                Some(v) => v.iter().any(|pp| port_matches(pp, dst, port, proto)),
            };
            if peer_ok && port_ok {
                return true;
            }
        }
    }
    !isolated
}

fn oracle(
    pols: &[NetworkPolicy],
    ns: &[NamespaceInfo],
    pods: &[PodInfo],
    (s, d): (usize, usize),
    port: u16,
    proto: Protocol,
) -> bool {
    s == d
        || (oracle_direction(pols, ns, &pods[s], &pods[d], &pods[d], true, port, proto)
            && oracle_direction(pols, ns, &pods[d], &pods[s], &pods[d], false, port, proto))
}

fn refs(pods: &[PodInfo]) -> Vec<PodRef> {
    pods.iter()
        .map(|p| PodRef::new(&p.namespace, &p.name))
        .collect()
}

const PROBES: [(u16, Protocol); 5] = [
    (80, Protocol::Tcp),
    (81, Protocol::Tcp),
    (80, Protocol::Udp),
    (81, Protocol::Udp),
    (81, Protocol::Sctp),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    /// The compiled verdicts equal the oracle, and the matrix equals the verdicts.
    #[test]
    fn compiled_answers_equal_the_naive_reading((pols, pods) in arb_state()) {
        let (ns, _) = xyz();
        let cp = Cluster::new(ns.clone(), pods.clone(), pols.clone()).expect("valid").compile();
        for (port, proto) in PROBES {
            let m = cp.matrix(&refs(&pods), port, proto).expect("matrix");
            for s in 0..pods.len() {
                for d in 0..pods.len() {
                    let want = oracle(&pols, &ns, &pods, (s, d), port, proto);
                    let v = cp.verdict(&flow(
                        Endpoint::Pod(PodRef::new(&pods[s].namespace, &pods[s].name)),
                        Endpoint::Pod(PodRef::new(&pods[d].namespace, &pods[d].name)),
                        port, proto)).expect("verdict");
                    prop_assert_eq!(v.allowed, want, "{} {}/{}\n{}", port, proto, v.explain(),
                        serde_json::to_string(&pols).unwrap_or_default());
                    prop_assert_eq!(m[s][d] == 1, want, "matrix [{}][{}]", s, d);
                }
            }
        }
    }

    /// The union does not depend on the order policies are given in.
    #[test]
    fn policy_order_does_not_matter(
        (pols, pods) in arb_state(),
        seed in any::<u64>(),
    ) {
        let (ns, _) = xyz();
        let mut shuffled = pols.clone();
        // a deterministic permutation from the seed
        let n = shuffled.len();
        for i in (1..n).rev() {
            let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
            shuffled.swap(i, j);
        }
        let a = Cluster::new(ns.clone(), pods.clone(), pols).expect("valid").compile();
        let b = Cluster::new(ns, pods.clone(), shuffled).expect("valid").compile();
        for (port, proto) in PROBES {
            prop_assert_eq!(
                a.matrix(&refs(&pods), port, proto).expect("matrix"),
                b.matrix(&refs(&pods), port, proto).expect("matrix")
            );
        }
    }

    /// An allow-all ingress policy with an empty podSelector is the same as no ingress
    /// policy at all in that namespace.
    #[test]
    fn empty_selector_allow_all_equals_no_policy_for_that_direction(
        (pols, pods) in arb_state(),
        target in select(vec!["x", "y", "z"]),
    ) {
        let (ns, _) = xyz();
        let mut with_allow = pols.clone();
        with_allow.push(policy(json!({"metadata": {"name": "allow-all", "namespace": target},
            "spec": {"podSelector": {}, "ingress": [{}]}})));
        let without_ingress: Vec<NetworkPolicy> = pols
            .into_iter()
            .filter_map(|mut p| {
                if p.metadata.namespace.as_deref() != Some(target) {
                    return Some(p);
                }
                let (_, egress) = p.spec.policy_types();
                egress.then(|| {
                    p.spec.policy_types = Some(vec!["Egress".into()]);
                    p
                })
            })
            .collect();
        let a = Cluster::new(ns.clone(), pods.clone(), with_allow).expect("valid").compile();
        let b = Cluster::new(ns, pods.clone(), without_ingress).expect("valid").compile();
        for (port, proto) in PROBES {
            prop_assert_eq!(
                a.matrix(&refs(&pods), port, proto).expect("matrix"),
                b.matrix(&refs(&pods), port, proto).expect("matrix")
            );
        }
    }

    /// `except` removes exactly its range from the CIDR, no more, no less.
    #[test]
    fn except_removes_exactly_its_range(
        base in any::<u32>(),
        len in 0u8..=30,
        sub in any::<u32>(),
        sub_extra in 1u8..=8,
        second in any::<u32>(),
        probes in prop::collection::vec(any::<u32>(), 32),
    ) {
        let cidr = Ipv4Net::new(Ipv4Addr::from(base), len).expect("len <= 32").trunc();
        let ex_len = (len + sub_extra).min(32);
        // two excepts inside the CIDR (possibly overlapping)
        let inside = |r: u32, l: u8| {
            let host_bits = 32 - u32::from(len);
            let offset = if host_bits == 32 { r } else { r & ((1u32 << host_bits) - 1) };
            Ipv4Net::new(Ipv4Addr::from(u32::from(cidr.network()) | offset), l)
                .expect("valid length")
                .trunc()
        };
        let ex1 = inside(sub, ex_len);
        let ex2 = inside(second, 32);
        let set = IpBlockSet::cidr_except(IpNet::V4(cidr), &[IpNet::V4(ex1), IpNet::V4(ex2)]);
        let mut check = probes;
        for net in [cidr, ex1, ex2] {
            let lo = u32::from(net.network());
            let hi = u32::from(net.broadcast());
            check.extend([lo, hi, lo.wrapping_sub(1), hi.wrapping_add(1)]);
        }
        for raw in check {
            let ip = Ipv4Addr::from(raw);
            let want = cidr.contains(&ip) && !ex1.contains(&ip) && !ex2.contains(&ip);
            prop_assert_eq!(ipblock::contains(set.prefixes(), ip), want, "{} in {} - {} - {}", ip, cidr, ex1, ex2);
        }
        // and the prefixes are disjoint and sorted
        for w in set.prefixes().windows(2) {
            prop_assert!(w[0].broadcast() < w[1].network());
        }
    }
}

#[test]
fn except_through_a_policy_matches_the_set() {
    // the same property once end to end: external addresses against an ingress ipBlock
    let cp = compile(vec![json!({"metadata": {"name": "p", "namespace": "x"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock":
            {"cidr": "198.51.100.0/24", "except": ["198.51.100.128/25", "198.51.100.7/32"]}}]}]}})]);
    for last in 0..=255u8 {
        let ip = Ipv4Addr::new(198, 51, 100, last);
        let v = cp
            .verdict(&flow(Endpoint::Ip(ip), pod_ref("x/a"), 80, Protocol::Tcp))
            .expect("verdict");
        assert_eq!(v.allowed, last < 128 && last != 7, "{ip}");
    }
}
