//! One test (or a few) per NetworkPolicy semantic, on the upstream x/y/z model.

use std::net::Ipv4Addr;

use serde_json::json;

use super::*;

fn ingress_policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn allowed(cp: &CompiledPolicy, src: &str, dst: &str, port: u16) -> bool {
    tcp(cp, src, dst, port).allowed
}

#[test]
fn without_policies_everything_is_allowed_and_not_isolated() {
    let cp = compile(vec![]);
    let v = tcp(&cp, "x/a", "y/b", 80);
    assert!(v.allowed);
    assert_eq!(v.egress, DirectionVerdict::NotIsolated);
    assert_eq!(v.ingress, DirectionVerdict::NotIsolated);
    let m = cp.matrix(&all_refs(), 80, Protocol::Tcp).expect("matrix");
    assert!(m.iter().flatten().all(|&c| c == 1));
}

#[test]
fn missing_policy_types_mean_ingress_plus_egress_only_with_egress_rules() {
    // ingress rules only: ingress isolated, egress untouched
    let cp = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": []}),
    )]);
    assert!(!allowed(&cp, "y/a", "x/a", 80));
    assert!(allowed(&cp, "x/a", "y/a", 80));
    // `egress: []` without policyTypes does not isolate egress (API server default)
    let cp = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{}], "egress": []}),
    )]);
    assert!(allowed(&cp, "x/a", "y/a", 80));
    assert!(!cp.egress(0).isolated);
    // a non-empty egress list adds Egress
    let cp = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {}, "egress": [{"ports": [{"port": 81}]}]}),
    )]);
    assert!(!allowed(&cp, "x/a", "y/a", 80));
    assert!(allowed(&cp, "x/a", "y/a", 81));
    assert!(!allowed(&cp, "y/a", "x/a", 81), "Ingress is always implied");
}

#[test]
fn explicit_policy_types_ignore_rules_of_other_types() {
    let cp = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [], "egress": [{}]}),
    )]);
    assert!(
        allowed(&cp, "y/a", "x/a", 80),
        "ingress rules without the type"
    );
    assert!(cp.egress(0).isolated);
    assert!(allowed(&cp, "x/a", "y/a", 80));
}

#[test]
fn empty_or_missing_rule_list_with_the_type_denies_everything() {
    for spec in [
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []}),
    ] {
        let cp = compile(vec![ingress_policy("x", "deny", spec)]);
        for src in ["x/b", "y/a", "z/c"] {
            let v = tcp(&cp, src, "x/a", 80);
            assert!(!v.allowed);
            assert_eq!(
                v.ingress,
                DirectionVerdict::Denied {
                    selecting: vec!["x/deny".into()]
                }
            );
        }
        assert!(allowed(&cp, "y/a", "y/b", 80), "other namespaces untouched");
    }
}

#[test]
fn empty_rule_and_empty_peer_or_port_lists_allow_everything() {
    for rule in [
        json!({}),
        json!({"from": []}),
        json!({"ports": []}),
        json!({"from": [], "ports": []}),
    ] {
        let cp = compile(vec![ingress_policy(
            "x",
            "p",
            json!({"podSelector": {}, "ingress": [rule]}),
        )]);
        let v = tcp(&cp, "z/c", "x/a", 4242);
        assert!(v.allowed, "{rule}");
        assert_eq!(
            v.ingress,
            DirectionVerdict::Allowed {
                policy: "x/p".into(),
                rule: 0,
                peer: None,
                port: None
            }
        );
    }
}

#[test]
fn pod_selector_peer_selects_in_the_policy_namespace_only() {
    let cp = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )]);
    assert!(allowed(&cp, "x/b", "x/a", 80));
    assert!(!allowed(&cp, "y/b", "x/a", 80));
    assert!(!allowed(&cp, "x/c", "x/a", 80));
    assert!(allowed(&cp, "y/c", "x/b", 80), "x/b is not selected");
}

#[test]
fn namespace_selector_alone_selects_every_pod_of_matching_namespaces() {
    let cp = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    )]);
    for src in ["y/a", "y/b", "y/c"] {
        assert!(allowed(&cp, src, "x/a", 80));
    }
    for src in ["x/b", "z/a"] {
        assert!(!allowed(&cp, src, "x/a", 80));
    }
}

#[test]
fn empty_namespace_selector_is_every_namespace_but_missing_is_own() {
    let every = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
    )]);
    let own = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
    )]);
    assert!(allowed(&every, "z/c", "x/a", 80));
    assert!(!allowed(&own, "z/c", "x/a", 80));
    assert!(allowed(&own, "x/c", "x/a", 80));
}

#[test]
fn both_selectors_in_one_peer_are_and_separate_peers_are_or() {
    let and = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}},
                                      "podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )]);
    assert!(allowed(&and, "y/b", "x/a", 80));
    assert!(!allowed(&and, "y/a", "x/a", 80));
    assert!(!allowed(&and, "x/b", "x/a", 80));
    let or = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}},
                                     {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )]);
    assert!(allowed(&or, "y/a", "x/a", 80));
    assert!(allowed(&or, "x/b", "x/a", 80));
    assert!(!allowed(&or, "z/b", "x/a", 80));
    match tcp(&or, "x/b", "x/a", 80).ingress {
        DirectionVerdict::Allowed { peer, .. } => assert_eq!(peer, Some(1)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn match_expressions_operators_and_absent_keys() {
    let (ns, mut pods) = xyz();
    pods[1].labels.insert("tier".into(), "web".into()); // x/b
    pods[2].labels.insert("tier".into(), "db".into()); // x/c; x/a has no tier
    let rule = |op: &str, values: Vec<&str>| {
        let mut req = json!({"key": "tier", "operator": op});
        if !values.is_empty() {
            req["values"] = json!(values);
        }
        policy(ingress_policy(
            "y",
            "p",
            json!({"podSelector": {}, "ingress": [{"from": [{
                "namespaceSelector": {"matchLabels": {"ns": "x"}},
                "podSelector": {"matchExpressions": [req]}}]}]}),
        ))
    };
    let cases = [
        ("In", vec!["web"], [false, true, false]),
        ("NotIn", vec!["web"], [true, false, true]),
        ("Exists", vec![], [false, true, true]),
        ("DoesNotExist", vec![], [true, false, false]),
    ];
    for (op, values, expect) in cases {
        let cp = Cluster::new(ns.clone(), pods.clone(), vec![rule(op, values)])
            .expect("valid")
            .compile();
        for (src, want) in ["x/a", "x/b", "x/c"].into_iter().zip(expect) {
            assert_eq!(allowed(&cp, src, "y/a", 80), want, "{op} from {src}");
        }
    }
}

#[test]
fn match_labels_and_expressions_are_anded() {
    let cp = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"namespaceSelector": {},
                   "podSelector": {"matchLabels": {"pod": "b"},
                       "matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "c"]}]}}]}]}),
    )]);
    for src in ["x/b", "y/b", "y/c", "x/c"] {
        assert!(!allowed(&cp, src, "x/a", 80), "{src}");
    }
}

#[test]
fn ip_block_matches_external_addresses_and_pod_addresses_minus_except() {
    let cp = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.2.0/24", "except": ["10.244.2.11/32"]}},
                                     {"ipBlock": {"cidr": "192.0.2.0/24"}}]}]}),
    )]);
    assert!(allowed(&cp, "y/a", "x/a", 80), "y/a is 10.244.2.10");
    assert!(!allowed(&cp, "y/b", "x/a", 80), "y/b is excepted");
    assert!(allowed(&cp, "y/c", "x/a", 80));
    assert!(!allowed(&cp, "z/a", "x/a", 80));
    let ext = |ip: [u8; 4]| {
        cp.verdict(&flow(
            Endpoint::Ip(Ipv4Addr::from(ip)),
            pod_ref("x/a"),
            80,
            Protocol::Tcp,
        ))
        .expect("verdict")
    };
    let v = ext([192, 0, 2, 7]);
    assert!(v.allowed);
    assert_eq!(v.egress, DirectionVerdict::NotApplicable);
    assert_eq!(
        v.ingress,
        DirectionVerdict::Allowed {
            policy: "x/p".into(),
            rule: 0,
            peer: Some(1),
            port: None
        }
    );
    assert!(!ext([198, 51, 100, 1]).allowed);
    // An address that is a pod's resolves to that pod.
    let v = ext([10, 244, 2, 11]);
    assert_eq!(v.src, "10.244.2.11 (y/b)");
    assert!(!v.allowed);
}

#[test]
fn ports_default_to_tcp_and_protocols_are_distinct() {
    let cp = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}, {"protocol": "SCTP", "port": 81}]}]}),
    )]);
    let v = |port, proto| {
        cp.verdict(&flow(pod_ref("y/a"), pod_ref("x/a"), port, proto))
            .expect("verdict")
            .allowed
    };
    assert!(v(80, Protocol::Tcp));
    assert!(!v(80, Protocol::Udp));
    assert!(!v(80, Protocol::Sctp));
    assert!(v(81, Protocol::Sctp));
    assert!(!v(81, Protocol::Tcp));
}

#[test]
fn protocol_only_port_allows_every_port_of_that_protocol() {
    let cp = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}),
    )]);
    let v = |port, proto| {
        cp.verdict(&flow(pod_ref("y/a"), pod_ref("x/a"), port, proto))
            .expect("verdict")
            .allowed
    };
    assert!(v(1, Protocol::Udp) && v(65535, Protocol::Udp));
    assert!(!v(53, Protocol::Tcp));
}

#[test]
fn end_port_is_an_inclusive_range() {
    let cp = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 8000, "endPort": 8010}]}]}),
    )]);
    assert!(!allowed(&cp, "y/a", "x/a", 7999));
    assert!(allowed(&cp, "y/a", "x/a", 8000));
    assert!(allowed(&cp, "y/a", "x/a", 8010));
    assert!(!allowed(&cp, "y/a", "x/a", 8011));
}

#[test]
fn ingress_named_ports_resolve_per_destination_pod_by_name_and_protocol() {
    let (ns, mut pods) = xyz();
    // x/b serves "web" on 8080/TCP, x/c serves "web" on 9090/TCP, x/a has "web" only on UDP
    pods[0].ports.push(NamedPort {
        name: "web".into(),
        protocol: Protocol::Udp,
        port: 7070,
    });
    pods[1].ports.push(NamedPort {
        name: "web".into(),
        protocol: Protocol::Tcp,
        port: 8080,
    });
    pods[2].ports.push(NamedPort {
        name: "web".into(),
        protocol: Protocol::Tcp,
        port: 9090,
    });
    let p = policy(ingress_policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"ports": [{"port": "web"}]}]}),
    ));
    let cp = Cluster::new(ns, pods, vec![p]).expect("valid").compile();
    assert!(allowed(&cp, "y/a", "x/b", 8080));
    assert!(!allowed(&cp, "y/a", "x/b", 9090));
    assert!(allowed(&cp, "y/a", "x/c", 9090));
    assert!(!allowed(&cp, "y/a", "x/c", 8080));
    assert!(!allowed(&cp, "y/a", "x/a", 7070), "x/a has web on UDP only");
    assert!(
        cp.verdict(&flow(pod_ref("y/a"), pod_ref("x/a"), 7070, Protocol::Tcp))
            .expect("verdict")
            .ingress
            != DirectionVerdict::NotIsolated
    );
    // x/b and x/c need different port sets: different rule classes, resolved ports
    assert_ne!(cp.ingress(1).allow, cp.ingress(2).allow);
}

#[test]
fn egress_named_ports_resolve_against_the_destination_and_never_match_outside() {
    let (ns, mut pods) = xyz();
    pods[4].ports.push(NamedPort {
        name: "dns".into(),
        protocol: Protocol::Udp,
        port: 5353,
    }); // y/b
    let p = policy(ingress_policy(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"namespaceSelector": {}}, {"ipBlock": {"cidr": "0.0.0.0/0"}}],
                           "ports": [{"protocol": "UDP", "port": "dns"}, {"port": 443}]}]}),
    ));
    let cp = Cluster::new(ns, pods, vec![p]).expect("valid").compile();
    let v = |dst: Endpoint, port, proto| {
        cp.verdict(&flow(pod_ref("x/a"), dst, port, proto))
            .expect("verdict")
    };
    let ok = v(pod_ref("y/b"), 5353, Protocol::Udp);
    assert!(ok.allowed);
    assert_eq!(
        ok.egress,
        DirectionVerdict::Allowed {
            policy: "x/p".into(),
            rule: 0,
            peer: Some(0),
            port: Some(0)
        }
    );
    assert!(
        !v(pod_ref("y/a"), 5353, Protocol::Udp).allowed,
        "y/a has no dns port"
    );
    let ext = Endpoint::Ip(Ipv4Addr::new(192, 0, 2, 1));
    assert!(
        !v(ext.clone(), 5353, Protocol::Udp).allowed,
        "named port to the outside"
    );
    let out = v(ext, 443, Protocol::Tcp);
    assert!(out.allowed);
    assert_eq!(out.ingress, DirectionVerdict::NotApplicable);
    // the enforcement form carries the resolved destination
    let eg = cp.egress(0);
    assert_eq!(eg.named.len(), 1);
    assert_eq!(
        cp.named_set(eg.named[0]),
        &[DestPort {
            pod: 4,
            protocol: Protocol::Udp,
            port: 5353
        }]
    );
}

#[test]
fn a_flow_needs_both_the_source_egress_and_the_destination_ingress() {
    let cp = compile(vec![
        ingress_policy(
            "x",
            "deny-egress",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}),
        ),
        ingress_policy(
            "y",
            "allow-x",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}),
        ),
    ]);
    let v = tcp(&cp, "x/a", "y/a", 80);
    assert!(!v.allowed);
    assert_eq!(
        v.egress,
        DirectionVerdict::Denied {
            selecting: vec!["x/deny-egress".into()]
        }
    );
    assert!(matches!(v.ingress, DirectionVerdict::Allowed { .. }));
    assert!(allowed(&cp, "x/b", "y/a", 80));
    assert!(!allowed(&cp, "z/a", "y/a", 80));
    // to an external address only egress counts
    let ext = cp
        .verdict(&flow(
            pod_ref("x/b"),
            Endpoint::Ip(Ipv4Addr::new(198, 51, 100, 7)),
            80,
            Protocol::Tcp,
        ))
        .expect("verdict");
    assert!(ext.allowed);
    assert_eq!(ext.ingress, DirectionVerdict::NotApplicable);
}

#[test]
fn policies_are_a_union_and_any_allowing_rule_wins() {
    let cp = compile(vec![
        ingress_policy(
            "x",
            "only-80",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
        ),
        ingress_policy(
            "x",
            "from-y",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        ),
    ]);
    assert!(allowed(&cp, "z/a", "x/a", 80));
    assert!(!allowed(&cp, "z/a", "x/a", 81));
    assert!(allowed(&cp, "y/a", "x/a", 81));
    assert!(!allowed(&cp, "y/a", "x/b", 81));
    match tcp(&cp, "y/a", "x/a", 81).ingress {
        DirectionVerdict::Allowed { policy, .. } => assert_eq!(policy, "x/from-y"),
        other => panic!("{other:?}"),
    }
    match tcp(&cp, "z/a", "x/a", 81).ingress {
        DirectionVerdict::Denied { selecting } => {
            assert_eq!(
                selecting,
                vec!["x/from-y".to_string(), "x/only-80".to_string()]
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pod_reaching_itself_is_always_allowed() {
    let cp = compile(vec![ingress_policy(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    )]);
    let v = tcp(&cp, "x/a", "x/a", 80);
    assert!(v.allowed);
    assert_eq!(v.ingress, DirectionVerdict::Loopback);
    let by_ip = cp
        .verdict(&flow(
            pod_ref("x/a"),
            Endpoint::Ip(Ipv4Addr::new(10, 244, 1, 10)),
            80,
            Protocol::Tcp,
        ))
        .expect("verdict");
    assert_eq!(by_ip.egress, DirectionVerdict::Loopback);
    let m = cp.matrix(&all_refs(), 80, Protocol::Tcp).expect("matrix");
    assert_eq!(m[0], vec![1, 0, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn recompiling_after_each_change_gives_the_current_answer() {
    let (ns, mut pods) = xyz();
    let deny_isolated = policy(ingress_policy(
        "x",
        "deny",
        json!({"podSelector": {"matchLabels": {"target": "isolated"}}, "policyTypes": ["Ingress"]}),
    ));
    let allow_ns2 = policy(ingress_policy(
        "x",
        "from-ns2",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}]}),
    ));
    let state = |ns: &Vec<NamespaceInfo>, pods: &Vec<PodInfo>, pols: Vec<model::NetworkPolicy>| {
        Cluster::new(ns.clone(), pods.clone(), pols)
            .expect("valid")
            .compile()
    };
    // policy created before any pod matches it
    let cp = state(&ns, &pods, vec![deny_isolated.clone()]);
    assert!(allowed(&cp, "y/a", "x/a", 80));
    // pod label change makes it match
    pods[0].labels.insert("target".into(), "isolated".into());
    let cp = state(&ns, &pods, vec![deny_isolated.clone()]);
    assert!(!allowed(&cp, "y/a", "x/a", 80));
    // a pod created after the policy is selected too
    let mut late = PodInfo::new("x", "d", labels(&[("target", "isolated")]));
    late.ip = Some(Ipv4Addr::new(10, 244, 1, 99));
    pods.push(late);
    let cp = state(&ns, &pods, vec![deny_isolated.clone()]);
    assert!(!allowed(&cp, "y/a", "x/d", 80));
    // a second policy plus a namespace label change opens it for y
    let mut ns2 = ns.clone();
    let cp = state(&ns2, &pods, vec![deny_isolated.clone(), allow_ns2.clone()]);
    assert!(!allowed(&cp, "y/a", "x/a", 80));
    ns2[1].labels.insert("ns2".into(), "updated".into());
    let cp = state(&ns2, &pods, vec![deny_isolated.clone(), allow_ns2]);
    assert!(allowed(&cp, "y/a", "x/a", 80));
    assert!(!allowed(&cp, "z/a", "x/a", 80));
    // deleting the policies restores everything
    let cp = state(&ns2, &pods, vec![]);
    assert!(allowed(&cp, "z/a", "x/a", 80));
    // deleting the pod makes it unknown
    pods.retain(|p| p.name != "d");
    let cp = state(&ns2, &pods, vec![deny_isolated]);
    assert_eq!(
        cp.verdict(&flow(pod_ref("y/a"), pod_ref("x/d"), 80, Protocol::Tcp)),
        Err(PolicyError::UnknownPod("x/d".into()))
    );
}

#[test]
fn identical_peers_share_one_set_and_entries_do_not_grow_with_policies() {
    // 40 policies on x/a, each allowing port 80 from a different pod of y or z, plus 40
    // copies of one rule: one peer set per distinct selector, one allow entry for port 80.
    let mut pols = Vec::new();
    for i in 0..40 {
        let src = ["a", "b", "c"][i % 3];
        let ns = ["y", "z"][i % 2];
        pols.push(ingress_policy(
            "x",
            &format!("p{i:02}"),
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": ns}},
                                          "podSelector": {"matchLabels": {"pod": src}}}],
                                "ports": [{"port": 80}]}]}),
        ));
        pols.push(ingress_policy(
            "x",
            &format!("q{i:02}"),
            json!({"podSelector": {"matchLabels": {"pod": "a"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}],
                                "ports": [{"port": 80}]}]}),
        ));
    }
    let cp = compile(pols);
    let rules = cp.ingress(0);
    assert_eq!(rules.rules.len(), 80);
    assert_eq!(rules.allow.len(), 1, "{:?}", rules.allow);
    let per_peer: std::collections::BTreeSet<_> = rules
        .rules
        .iter()
        .flat_map(|r| r.peers.iter().flatten().map(|p| p.set))
        .collect();
    assert_eq!(per_peer.len(), 7, "6 (ns, pod) pairs + x/b");
    let merged = rules.allow[0].peers.expect("a peer set");
    assert_eq!(cp.peer_set(merged).pods, vec![1, 3, 4, 5, 6, 7, 8]);
    assert_eq!(
        cp.peer_set_addresses(merged)
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        [
            "10.244.1.11/32",
            "10.244.2.10/31",
            "10.244.2.12/32",
            "10.244.3.10/31",
            "10.244.3.12/32"
        ]
    );
    // pods selected by the same policies share their rules
    let cp2 = compile(vec![ingress_policy(
        "x",
        "d",
        json!({"podSelector": {}, "ingress": []}),
    )]);
    assert!(std::ptr::eq(cp2.ingress(0), cp2.ingress(2)));
}

#[test]
fn host_network_pods_are_not_policy_subjects() {
    let (ns, mut pods) = xyz();
    let mut h = PodInfo::new("x", "host", labels(&[("pod", "a")]));
    h.host_network = true;
    h.ip = Some(Ipv4Addr::new(172, 20, 0, 11));
    pods.push(h);
    let p = policy(ingress_policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
    ));
    let cp = Cluster::new(ns, pods, vec![p]).expect("valid").compile();
    let v = tcp(&cp, "x/host", "x/b", 80);
    assert!(!v.allowed, "not selected by pod: a");
    assert_eq!(v.egress, DirectionVerdict::NotApplicable);
    assert_eq!(v.src, "x/host (host network)");
    let v = tcp(&cp, "y/a", "x/host", 80);
    assert!(v.allowed);
    assert_eq!(v.ingress, DirectionVerdict::NotApplicable);
}

#[test]
fn explain_names_the_rule_or_the_isolating_policies() {
    let cp = compile(vec![ingress_policy(
        "x",
        "allow-b",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}], "ports": [{"port": 80}]}]}),
    )]);
    let text = tcp(&cp, "x/b", "x/a", 80).explain();
    assert_eq!(
        text,
        "x/b -> x/a TCP/80: allowed\n  \
         egress from x/b: allowed: no NetworkPolicy selects x/b for egress\n  \
         ingress to x/a: allowed by NetworkPolicy x/allow-b, ingress rule 0 (peer 0 of its `from`, entry 0 of its `ports`)\n"
    );
    let text = tcp(&cp, "y/b", "x/a", 80).explain();
    assert!(text.starts_with("y/b -> x/a TCP/80: denied\n"), "{text}");
    assert!(
        text.contains(
            "ingress to x/a: denied: isolated by NetworkPolicy x/allow-b and no rule of it allows"
        ),
        "{text}"
    );
}

#[test]
fn verdict_serializes_for_json_output() {
    let cp = compile(vec![ingress_policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )]);
    let v = serde_json::to_value(tcp(&cp, "y/a", "x/a", 80)).expect("json");
    assert_eq!(
        v,
        json!({"allowed": false, "src": "y/a", "dst": "x/a", "port": 80, "protocol": "TCP",
               "egress": {"result": "notIsolated"},
               "ingress": {"result": "denied", "selecting": ["x/deny"]}})
    );
    let cp = compile(vec![]);
    let _ = cp;
    let allowed = DirectionVerdict::Allowed {
        policy: "x/p".into(),
        rule: 1,
        peer: None,
        port: Some(0),
    };
    assert_eq!(
        serde_json::to_value(allowed).expect("json"),
        json!({"result": "allowed", "policy": "x/p", "rule": 1, "peer": null, "port": 0})
    );
}

#[test]
fn invalid_policies_are_errors_naming_the_field_and_value() {
    let (ns, pods) = xyz();
    let check = |spec: Value| {
        Cluster::new(
            ns.clone(),
            pods.clone(),
            vec![policy(ingress_policy("x", "bad", spec))],
        )
        .expect_err("invalid")
        .to_string()
    };
    assert_eq!(
        check(json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]})),
        "NetworkPolicy x/bad: spec.ingress[0].from[0].ipBlock.cidr: invalid value \"10.0.0.0/33\": \
         must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
    );
    assert!(
        check(json!({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]}))
            .contains("spec.ingress[0].from[0].ipBlock.except[0]: invalid value \"11.0.0.0/16\": must be a strict subset")
    );
    assert!(
        check(json!({"egress": [{"ports": [{"port": "http", "endPort": 90}]}]}))
            .contains("spec.egress[0].ports[0].endPort: invalid value \"http\"")
    );
    assert!(
        check(json!({"egress": [{"ports": [{"port": 90, "endPort": 80}]}]}))
            .contains("spec.egress[0].ports[0].endPort: invalid value \"80\": must be greater than or equal to `port`")
    );
    assert!(
        check(json!({"ingress": [{"ports": [{"protocol": "ICMP"}]}]}))
            .contains("spec.ingress[0].ports[0].protocol: invalid value \"ICMP\"")
    );
    assert!(
        check(json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}}))
            .contains("spec.podSelector.matchExpressions[0].operator: invalid value \"Has\"")
    );
    assert!(
        check(json!({"ingress": [{"from": [{}]}]}))
            .contains("spec.ingress[0].from[0]: invalid value \"{}\": must specify a peer")
    );
    assert!(
        check(
            json!({"ingress": [{"from": [{"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}]}]})
        )
        .contains("may not specify both ipBlock and another peer")
    );
    assert!(check(json!({"policyTypes": ["Sideways"]})).contains("spec.policyTypes[0]"));
    assert!(
        check(json!({"ingress": [{"ports": [{"port": 0}]}]}))
            .contains("spec.ingress[0].ports[0].port: invalid value \"0\"")
    );
}

#[test]
fn unknown_pods_and_bad_references_are_errors() {
    let cp = compile(vec![]);
    assert_eq!(
        cp.verdict(&flow(pod_ref("x/a"), pod_ref("q/a"), 80, Protocol::Tcp)),
        Err(PolicyError::UnknownPod("q/a".into()))
    );
    assert_eq!(
        cp.matrix(&[PodRef::new("x", "nope")], 80, Protocol::Tcp),
        Err(PolicyError::UnknownPod("x/nope".into()))
    );
    assert!("x".parse::<PodRef>().is_err());
    assert!("x/a/b".parse::<PodRef>().is_err());
    assert_eq!("sctp".parse::<Protocol>(), Ok(Protocol::Sctp));
    assert!("icmp".parse::<Protocol>().is_err());
    let (ns, mut pods) = xyz();
    pods.push(pods[0].clone());
    assert_eq!(
        Cluster::new(ns, pods, vec![])
            .expect_err("duplicate")
            .to_string(),
        "pod x/a is given twice"
    );
}

#[test]
fn namespaces_get_the_name_label_and_unlisted_namespaces_exist() {
    let (_, mut pods) = xyz();
    pods.push(PodInfo::new("w", "solo", labels(&[])));
    let p = policy(ingress_policy(
        "x",
        "p",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector":
            {"matchLabels": {"kubernetes.io/metadata.name": "w"}}}]}]}),
    ));
    // no NamespaceInfo at all: every namespace still has its name label
    let cp = Cluster::new(vec![], pods, vec![p])
        .expect("valid")
        .compile();
    assert!(allowed(&cp, "w/solo", "x/a", 80));
    assert!(!allowed(&cp, "y/a", "x/a", 80));
}

#[test]
fn pods_and_clusters_read_from_stored_objects() {
    let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: blue}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec:
  nodeName: node-1
  containers:
  - name: c
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 53, protocol: UDP}
    - {containerPort: 9000}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-http, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {ports: [{port: 80}]}
"#;
    let mut objects = model::parse_manifests(text, "test").expect("valid manifests");
    // the kubelet role fills the status
    objects[1].value["status"] = json!({"podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]});
    let cp = Cluster::from_objects(&objects).expect("compiles").compile();
    let pod = &cp.pods()[0];
    assert_eq!(pod.key(), "x/web");
    assert_eq!(pod.ip, Some(Ipv4Addr::new(10, 244, 1, 5)));
    assert_eq!(pod.node.as_deref(), Some("node-1"));
    assert_eq!(
        pod.ports,
        vec![
            NamedPort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080
            },
            NamedPort {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53
            }
        ]
    );
    let ext = |port| {
        cp.verdict(&flow(
            Endpoint::Ip(Ipv4Addr::new(192, 0, 2, 1)),
            pod_ref("x/web"),
            port,
            Protocol::Tcp,
        ))
        .expect("verdict")
        .allowed
    };
    assert!(ext(8080));
    assert!(!ext(80));
    // a bad pod address is an error naming the field
    objects[1].value["status"] = json!({"podIP": "ten"});
    assert_eq!(
        Cluster::from_objects(&objects)
            .expect_err("bad address")
            .to_string(),
        "pod x/web: status.podIP: invalid value \"ten\": must be an IP address"
    );
    // an object that does not read as its kind is an error naming it
    let broken = model::Object::from_json(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "x"}, "spec": "oops"}))
    .expect("a Pod object");
    let err = Cluster::from_objects(&[broken]).expect_err("unreadable");
    assert!(
        err.to_string().starts_with("Pod x/p: cannot read Pod x/p"),
        "{err}"
    );
}

#[test]
fn matrix_rows_are_sources_and_columns_destinations() {
    let cp = compile(vec![ingress_policy(
        "x",
        "p",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    )]);
    let refs: Vec<PodRef> = ["x/a", "x/b", "y/a"]
        .iter()
        .map(|s| s.parse().expect("ref"))
        .collect();
    let m = cp.matrix(&refs, 80, Protocol::Tcp).expect("matrix");
    assert_eq!(m, vec![vec![1, 1, 1], vec![1, 1, 1], vec![0, 1, 1]]);
}
