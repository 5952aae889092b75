use super::*;
use proptest::prelude::*;
use serde_json::json;

fn node(name: &str) -> NodeView {
    NodeView {
        name: name.to_string(),
        addresses: vec!["172.20.0.11".parse().unwrap()],
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: Some("10.96.0.0/12".parse().unwrap()),
        nodes: vec!["n1".into(), "n2".into(), "n3".into()],
    }
}

fn svc(v: serde_json::Value) -> Service {
    serde_json::from_value(v).unwrap()
}

fn basic(name: &str, ip: &str) -> Service {
    svc(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": ip, "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
}

/// A slice for `service` with `eps` = (ip, node, ready, serving, terminating).
fn slice(service: &str, port: u16, eps: &[(&str, &str, bool, bool, bool)]) -> EndpointSlice {
    slice_named(service, "http", "TCP", port, eps)
}

fn slice_named(
    service: &str,
    port_name: &str,
    proto: &str,
    port: u16,
    eps: &[(&str, &str, bool, bool, bool)],
) -> EndpointSlice {
    let endpoints: Vec<serde_json::Value> = eps
        .iter()
        .map(|(ip, node, ready, serving, term)| {
            json!({"addresses": [ip], "nodeName": node,
                   "conditions": {"ready": ready, "serving": serving, "terminating": term}})
        })
        .collect();
    serde_json::from_value(json!({
        // Slice names are unique in a namespace, as in the store.
        "metadata": {"name": format!("{service}-{}-{}", port_name.to_lowercase(), proto.to_lowercase()),
                     "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": port_name, "protocol": proto, "port": port}]
    }))
    .unwrap()
}

fn fe(ip: &str, proto: Proto, port: u16) -> Frontend {
    Frontend {
        ip: ip.parse().unwrap(),
        proto,
        port,
    }
}

fn backends_of(plan: &ServicePlan, f: Frontend) -> Vec<String> {
    plan.backends
        .range((f, 0)..=(f, u32::MAX))
        .map(|(_, b)| b.to_string())
        .collect()
}

const R: bool = true;

#[test]
fn cluster_ip_balances_over_ready_endpoints_only() {
    let p = compile(
        &node("n1"),
        &[basic("web", "10.96.0.20")],
        &[slice(
            "web",
            8080,
            &[
                ("10.244.1.5", "n2", R, R, false),
                ("10.244.0.7", "n1", R, R, false),
                ("10.244.2.9", "n3", false, false, false),
            ],
        )],
    );
    let f = fe("10.96.0.20", Proto::Tcp, 80);
    assert_eq!(
        p.services.get(&f),
        Some(&Target::Lb {
            n: 2,
            affinity: false
        })
    );
    // The local endpoint takes slot 0.
    assert_eq!(
        backends_of(&p, f),
        vec!["10.244.0.7:8080", "10.244.1.5:8080"]
    );
    assert!(p.cluster_ips.contains(&f.ip));
    assert_eq!(
        p.hairpin.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        vec!["10.244.0.7"]
    );
    assert!(p.no_endpoints.is_empty());
}

#[test]
fn service_without_endpoints_is_rejected_not_blackholed() {
    let p = compile(&node("n1"), &[basic("web", "10.96.0.20")], &[]);
    let f = fe("10.96.0.20", Proto::Tcp, 80);
    assert_eq!(p.no_endpoints.get(&f), Some(&Refusal::Reject));
    assert!(p.services.is_empty() && p.backends.is_empty());
    assert!(
        p.cluster_ips.contains(&f.ip),
        "other ports of the IP are refused too"
    );
}

#[test]
fn terminating_serving_endpoints_are_used_only_when_none_is_ready() {
    let eps = [
        ("10.244.1.5", "n2", false, true, true),
        ("10.244.1.6", "n2", false, false, true),
    ];
    let p = compile(
        &node("n1"),
        &[basic("web", "10.96.0.20")],
        &[slice("web", 8080, &eps)],
    );
    let f = fe("10.96.0.20", Proto::Tcp, 80);
    assert_eq!(backends_of(&p, f), vec!["10.244.1.5:8080"]);
    let mut with_ready = eps.to_vec();
    with_ready.push(("10.244.1.7", "n2", true, true, false));
    let p = compile(
        &node("n1"),
        &[basic("web", "10.96.0.20")],
        &[slice("web", 8080, &with_ready)],
    );
    assert_eq!(backends_of(&p, f), vec!["10.244.1.7:8080"]);
}

#[test]
fn publish_not_ready_addresses_makes_every_endpoint_usable() {
    let mut s = basic("web", "10.96.0.20");
    s.spec.publish_not_ready_addresses = Some(true);
    let p = compile(
        &node("n1"),
        &[s],
        &[slice(
            "web",
            8080,
            &[("10.244.1.5", "n2", false, false, false)],
        )],
    );
    assert_eq!(
        backends_of(&p, fe("10.96.0.20", Proto::Tcp, 80)),
        vec!["10.244.1.5:8080"]
    );
}

#[test]
fn headless_external_name_and_labelled_services_get_nothing() {
    let headless = svc(json!({"metadata": {"name": "h", "namespace": "default"},
        "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
    let ext = svc(json!({"metadata": {"name": "e", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "example.org"}}));
    let mut labelled = basic("l", "10.96.0.30");
    labelled
        .metadata
        .labels
        .insert(LABEL_HEADLESS.to_string(), String::new());
    let mut other = basic("o", "10.96.0.31");
    other
        .metadata
        .labels
        .insert(LABEL_PROXY_NAME.to_string(), "foo".to_string());
    let p = compile(&node("n1"), &[headless, ext, labelled, other], &[]);
    assert!(p.services.is_empty() && p.no_endpoints.is_empty() && p.cluster_ips.is_empty());
    assert_eq!(p.skipped.len(), 4, "{:?}", p.skipped);
}

#[test]
fn node_port_answers_on_node_addresses_and_masquerades() {
    let s = svc(json!({"metadata": {"name": "np", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.40", "selector": {"a": "b"},
                 "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}));
    let p = compile(
        &node("n1"),
        &[s],
        &[slice("np", 8080, &[("10.244.1.5", "n2", R, R, false)])],
    );
    let f = fe("172.20.0.11", Proto::Tcp, 30080);
    assert_eq!(
        p.services.get(&f),
        Some(&Target::Ext {
            n: 1,
            affinity: false
        })
    );
    assert_eq!(backends_of(&p, f), vec!["10.244.1.5:8080"]);
    assert_eq!(
        Target::Ext {
            n: 1,
            affinity: false
        }
        .chain(),
        "ext-1"
    );
    assert_eq!(
        p.services.get(&fe("10.96.0.40", Proto::Tcp, 80)),
        Some(&Target::Lb {
            n: 1,
            affinity: false
        })
    );
}

#[test]
fn external_traffic_policy_local_uses_local_endpoints_or_drops() {
    let s = svc(json!({"metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.41", "selector": {"a": "b"},
                 "externalTrafficPolicy": "Local", "loadBalancerSourceRanges": ["172.20.0.0/28"],
                 "ports": [{"name": "http", "port": 80, "nodePort": 30081}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "172.20.0.240"}]}}}));
    let eps = [
        ("10.244.1.5", "n2", R, R, false),
        ("10.244.0.5", "n1", R, R, false),
    ];
    let p = compile(
        &node("n1"),
        std::slice::from_ref(&s),
        &[slice("lb", 8080, &eps)],
    );
    let lb = fe("172.20.0.240", Proto::Tcp, 80);
    assert_eq!(
        p.services.get(&lb),
        Some(&Target::ExtLocal {
            n: 2,
            local: 1,
            affinity: false
        })
    );
    assert_eq!(
        backends_of(&p, lb)[0],
        "10.244.0.5:8080",
        "local endpoint first"
    );
    assert_eq!(
        p.firewall.get(&lb),
        Some(&vec!["172.20.0.0/28".parse().unwrap()])
    );
    // On a node without a local endpoint, external clients are dropped.
    let p2 = compile(&node("n3"), &[s], &[slice("lb", 8080, &eps)]);
    let t = p2.services[&lb];
    assert_eq!(
        t,
        Target::ExtLocal {
            n: 2,
            local: 0,
            affinity: false
        }
    );
    assert_eq!(
        DynChain::ExtLocal {
            n: 2,
            local: 0,
            affinity: false
        }
        .rules()
        .last()
        .map(String::as_str),
        Some("drop")
    );
}

#[test]
fn internal_traffic_policy_local_drops_without_local_endpoint() {
    let mut s = basic("web", "10.96.0.20");
    s.spec.internal_traffic_policy = Some("Local".to_string());
    let eps = [("10.244.1.5", "n2", R, R, false)];
    let p = compile(
        &node("n1"),
        std::slice::from_ref(&s),
        &[slice("web", 8080, &eps)],
    );
    assert_eq!(
        p.no_endpoints.get(&fe("10.96.0.20", Proto::Tcp, 80)),
        Some(&Refusal::Drop)
    );
    let p = compile(&node("n2"), &[s], &[slice("web", 8080, &eps)]);
    assert_eq!(
        p.services.get(&fe("10.96.0.20", Proto::Tcp, 80)),
        Some(&Target::Lb {
            n: 1,
            affinity: false
        })
    );
}

#[test]
fn affinity_shares_one_id_across_a_ports_frontends() {
    let s = svc(json!({"metadata": {"name": "np", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.40", "selector": {"a": "b"},
                 "sessionAffinity": "ClientIP",
                 "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                 "externalIPs": ["192.0.2.10"],
                 "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                           {"name": "dns", "protocol": "UDP", "port": 53, "nodePort": 30053}]}}));
    let slices = [
        slice("np", 8080, &[("10.244.1.5", "n2", R, R, false)]),
        slice_named(
            "np",
            "dns",
            "UDP",
            5353,
            &[("10.244.1.5", "n2", R, R, false)],
        ),
    ];
    let p = compile(&node("n1"), &[s], &slices);
    let http: BTreeSet<u32> = [
        fe("10.96.0.40", Proto::Tcp, 80),
        fe("192.0.2.10", Proto::Tcp, 80),
        fe("172.20.0.11", Proto::Tcp, 30080),
    ]
    .iter()
    .map(|f| p.affinity_ids[f])
    .collect();
    assert_eq!(http.len(), 1, "one id for the port's frontends");
    let dns = p.affinity_ids[&fe("10.96.0.40", Proto::Udp, 53)];
    assert!(!http.contains(&dns), "each service port has its own id");
    assert_eq!(p.affinity_timeouts.get(&dns), Some(&60));
    assert!(p.dyn_chains().contains(&DynChain::Record { timeout: 60 }));
    assert!(p.dyn_chains().contains(&DynChain::Aff { n: 1 }));
}

#[test]
fn multiple_ports_and_protocols_are_independent() {
    let s = svc(json!({"metadata": {"name": "m", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.50", "selector": {"a": "b"},
                 "ports": [{"name": "tcp", "port": 53}, {"name": "udp", "protocol": "UDP", "port": 53}]}}));
    let slices = [slice_named(
        "m",
        "udp",
        "UDP",
        5353,
        &[("10.244.1.5", "n2", R, R, false)],
    )];
    let p = compile(&node("n1"), &[s], &slices);
    assert_eq!(
        p.no_endpoints.get(&fe("10.96.0.50", Proto::Tcp, 53)),
        Some(&Refusal::Reject)
    );
    assert_eq!(
        backends_of(&p, fe("10.96.0.50", Proto::Udp, 53)),
        vec!["10.244.1.5:5353"]
    );
}

#[test]
fn a_frontend_claimed_twice_goes_to_the_first_service() {
    let a = basic("a", "10.96.0.60");
    let mut b = basic("b", "10.96.0.61");
    b.spec.external_ips = vec!["10.96.0.60".to_string()];
    let p = compile(&node("n1"), &[b, a], &[]);
    assert_eq!(p.skipped.len(), 1);
    assert!(p.skipped[0].0.starts_with("default/b"));
}

/// A cluster of `n` services with 3 endpoints each; endpoint IPs depend on `salt`.
fn many(n: u32, salt: u32) -> (Vec<Service>, Vec<EndpointSlice>) {
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    for i in 0..n {
        let name = format!("s{i}");
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 2);
        svcs.push(basic(&name, &ip));
        let eps: Vec<(String, String)> = (0..3)
            .map(|j| {
                let k = i * 3 + j + salt;
                (
                    format!("10.244.{}.{}", k / 250, k % 250 + 2),
                    format!("n{}", k % 3),
                )
            })
            .collect();
        let refs: Vec<(&str, &str, bool, bool, bool)> = eps
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str(), R, R, false))
            .collect();
        slices.push(slice(&name, 8080, &refs));
    }
    (svcs, slices)
}

#[test]
fn one_endpoint_change_touches_only_that_services_elements() {
    let (svcs, mut slices) = many(1000, 0);
    let before = compile(&node("n1"), &svcs, &slices);
    slices[500].endpoints[1].addresses = vec!["10.250.0.1".to_string()];
    let after = compile(&node("n1"), &svcs, &slices);
    let d = diff(&before, &after);
    assert!(!d.ops.is_empty());
    assert!(
        d.ops.len() <= 8,
        "{} ops: {}",
        d.ops.len(),
        render_ops(&d.ops)
    );
    assert!(d.add_chains.is_empty() && d.delete_chains.is_empty());
    for op in &d.ops {
        let key = match op {
            ElemOp::Add { key, .. } | ElemOp::Delete { key, .. } => key,
        };
        match key {
            Key::Slot(f, _) => assert_eq!(f.ip.to_string(), "10.96.2.2"),
            Key::IpPair(..) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn identical_plans_have_an_empty_diff_and_input_order_does_not_matter() {
    let (mut svcs, mut slices) = many(50, 7);
    let a = compile(&node("n1"), &svcs, &slices);
    svcs.reverse();
    slices.reverse();
    let b = compile(&node("n1"), &svcs, &slices);
    assert_eq!(a, b);
    assert!(diff(&a, &b).is_empty());
}

#[test]
fn removed_udp_endpoints_are_reported_for_conntrack_cleanup() {
    let s = svc(json!({"metadata": {"name": "u", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.70", "selector": {"a": "b"},
                 "ports": [{"name": "dns", "protocol": "UDP", "port": 53}]}}));
    let one = [slice_named(
        "u",
        "dns",
        "UDP",
        53,
        &[("10.244.1.5", "n2", R, R, false)],
    )];
    let other = [slice_named(
        "u",
        "dns",
        "UDP",
        53,
        &[("10.244.1.6", "n2", R, R, false)],
    )];
    let empty = compile(&node("n1"), std::slice::from_ref(&s), &[]);
    let a = compile(&node("n1"), std::slice::from_ref(&s), &one);
    let b = compile(&node("n1"), std::slice::from_ref(&s), &other);
    let f = fe("10.96.0.70", Proto::Udp, 53);
    assert_eq!(
        diff(&a, &b).stale_udp,
        vec![(f, "10.244.1.5".parse().unwrap())]
    );
    assert_eq!(diff(&empty, &a).revived_udp, vec![f]);
}

/// Applies element operations to a model of the maps, as the kernel would.
fn apply(state: &mut BTreeMap<(&'static str, Key), Value>, ops: &[ElemOp]) {
    for op in ops {
        match op {
            ElemOp::Add { map, key, value } => {
                let old = state.insert((map, key.clone()), value.clone());
                assert!(old.is_none(), "add of an existing element {map} {key:?}");
            }
            ElemOp::Delete { map, key } => {
                assert!(
                    state.remove(&(*map, key.clone())).is_some(),
                    "delete of a missing element {map} {key:?}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// Applying diff(old, new) to old's elements gives exactly new's elements, with no add of
    /// an existing key and no delete of a missing one (the kernel would refuse either).
    #[test]
    fn diff_turns_old_into_new(
        a in proptest::collection::vec((0u32..6, 0u32..4, any::<bool>(), 0u8..3), 0..12),
        b in proptest::collection::vec((0u32..6, 0u32..4, any::<bool>(), 0u8..3), 0..12),
    ) {
        let build = |spec: &[(u32, u32, bool, u8)]| {
            let mut svcs = Vec::new();
            let mut slices = Vec::new();
            for (i, (s, eps, ready, flavour)) in spec.iter().enumerate() {
                let name = format!("s{s}");
                if svcs.iter().any(|x: &Service| x.metadata.name == name) { continue; }
                let mut v = basic(&name, &format!("10.96.0.{}", s + 2));
                match flavour {
                    1 => v.spec.session_affinity = Some("ClientIP".to_string()),
                    2 => { v.spec.type_ = Some("NodePort".to_string());
                           v.spec.ports[0].node_port = Some(30000 + *s as u16);
                           v.spec.external_traffic_policy = Some("Local".to_string()); }
                    _ => {}
                }
                svcs.push(v);
                let ips: Vec<String> = (0..*eps).map(|j| format!("10.244.{}.{}", i, j + 2)).collect();
                let refs: Vec<(&str, &str, bool, bool, bool)> = ips.iter().enumerate()
                    .map(|(j, ip)| (ip.as_str(), if j % 2 == 0 { "n1" } else { "n2" }, *ready, true, false)).collect();
                slices.push(slice(&name, 8080, &refs));
            }
            compile(&node("n1"), &svcs, &slices)
        };
        let (old, new) = (build(&a), build(&b));
        let mut state = BTreeMap::new();
        apply(&mut state, &old.all_ops());
        apply(&mut state, &diff(&old, &new).ops);
        let mut expect = BTreeMap::new();
        apply(&mut expect, &new.all_ops());
        prop_assert_eq!(state, expect);
        // Every chain an element points at exists in the new plan.
        let chains: BTreeSet<String> = new.dyn_chains().iter().map(DynChain::name).collect();
        for t in new.services.values() {
            prop_assert!(chains.contains(&t.chain()));
        }
    }
}

#[test]
fn rendered_structure_matches_golden_file() {
    let s = svc(json!({"metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.41", "selector": {"a": "b"},
                 "externalTrafficPolicy": "Local", "loadBalancerSourceRanges": ["172.20.0.0/28"],
                 "sessionAffinity": "ClientIP",
                 "ports": [{"name": "http", "port": 80, "nodePort": 30081}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "172.20.0.240"}]}}}));
    let eps = [
        ("10.244.1.5", "n2", R, R, false),
        ("10.244.0.5", "n1", R, R, false),
    ];
    let p = compile(
        &node("n1"),
        &[s, basic("web", "10.96.0.20")],
        &[slice("lb", 8080, &eps)],
    );
    let text = format!(
        "# structure\n{}# elements\n{}",
        render_structure(&p, &p.dyn_chains()),
        render_ops(&p.all_ops())
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/services.nft");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(
        text, golden,
        "run with UPDATE_GOLDEN=1 to refresh after a deliberate change"
    );
}

#[test]
fn every_dynamic_chain_name_is_recognised_and_fixed_ones_are_not() {
    let all = [
        DynChain::Lb { n: 3 },
        DynChain::Aff { n: 2 },
        DynChain::Ext {
            n: 4,
            affinity: false,
        },
        DynChain::Ext {
            n: 4,
            affinity: true,
        },
        DynChain::ExtLocal {
            n: 4,
            local: 0,
            affinity: false,
        },
        DynChain::ExtLocal {
            n: 4,
            local: 2,
            affinity: true,
        },
        DynChain::Record { timeout: 60 },
    ];
    for c in all {
        assert!(is_dyn_chain_name(&c.name()), "{}", c.name());
    }
    for fixed in [
        "refuse",
        "nat-prerouting",
        "filter-output-post-dnat",
        "affinity-output",
        "lb-",
        "lb-x",
    ] {
        assert!(!is_dyn_chain_name(fixed), "{fixed}");
    }
}

#[test]
fn chains_are_deleted_before_the_chains_they_jump_to() {
    let text = render_delete_chains(&[
        "lb-2",
        "aff-2",
        "ext-aff-2",
        "extl-aff-2-1",
        "laff-1",
        "lb-1",
    ]);
    let order: Vec<&str> = text
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "extl-aff-2-1",
            "ext-aff-2",
            "aff-2",
            "laff-1",
            "lb-1",
            "lb-2"
        ]
    );
}

#[test]
fn exactly_one_node_announces_each_load_balancer_ip() {
    let s = svc(json!({"metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.41", "selector": {"a": "b"},
                 "ports": [{"name": "http", "port": 80, "nodePort": 30081}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "172.20.0.240"}, {"ip": "172.20.0.241"}]}}}));
    let eps = [("10.244.1.5", "n2", R, R, false)];
    for ip in ["172.20.0.240", "172.20.0.241"] {
        let ip: Ipv4Addr = ip.parse().unwrap();
        let holders: Vec<&str> = ["n1", "n2", "n3"]
            .into_iter()
            .filter(|n| {
                compile(
                    &node(n),
                    std::slice::from_ref(&s),
                    &[slice("lb", 8080, &eps)],
                )
                .announce
                .contains(&ip)
            })
            .collect();
        assert_eq!(holders.len(), 1, "{ip}: {holders:?}");
    }
    // Local policy: only the node with the endpoint announces.
    let mut local = s.clone();
    local.spec.external_traffic_policy = Some("Local".into());
    for n in ["n1", "n3"] {
        assert!(
            compile(
                &node(n),
                std::slice::from_ref(&local),
                &[slice("lb", 8080, &eps)]
            )
            .announce
            .is_empty()
        );
    }
    assert_eq!(
        compile(&node("n2"), &[local], &[slice("lb", 8080, &eps)])
            .announce
            .len(),
        2
    );
}

#[test]
fn a_departing_node_moves_only_its_own_addresses() {
    let nodes: Vec<String> = (0..5).map(|i| format!("node{i}")).collect();
    let ips: Vec<Ipv4Addr> = (0..64).map(|i| Ipv4Addr::new(172, 20, 1, i)).collect();
    let before: Vec<&str> = ips.iter().map(|ip| elect(*ip, &nodes).unwrap()).collect();
    let fewer: Vec<String> = nodes.iter().filter(|n| *n != "node3").cloned().collect();
    for (ip, was) in ips.iter().zip(&before) {
        let now = elect(*ip, &fewer).unwrap();
        if *was != "node3" {
            assert_eq!(now, *was, "{ip} moved although its node stayed");
        }
    }
    assert!(before.iter().filter(|n| **n == "node3").count() > 0);
}

#[test]
fn trace_names_the_service_the_chain_and_the_endpoints() {
    let s = svc(json!({"metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.41", "selector": {"a": "b"},
                 "externalTrafficPolicy": "Local",
                 "ports": [{"name": "http", "port": 80, "nodePort": 30081}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "172.20.0.240"}]}}}));
    let eps = [
        ("10.244.1.5", "n2", R, R, false),
        ("10.244.0.5", "n1", R, R, false),
    ];
    let p = compile(
        &node("n1"),
        &[s, basic("empty", "10.96.0.50")],
        &[slice("lb", 8080, &eps)],
    );
    let pod: Ipv4Addr = "10.244.0.9".parse().unwrap();
    let ext: Ipv4Addr = "172.20.0.2".parse().unwrap();
    let t = p.trace(pod, false, "10.96.0.41".parse().unwrap(), Proto::Tcp, 80);
    assert_eq!(t.service.as_deref(), Some("default/lb:http"));
    assert!(
        matches!(&t.outcome, TraceOutcome::Dnat { endpoints, masquerade: false, .. } if endpoints.len() == 2)
    );
    let t = p.trace(ext, false, "172.20.0.240".parse().unwrap(), Proto::Tcp, 80);
    assert!(
        matches!(&t.outcome, TraceOutcome::Dnat { endpoints, masquerade: false, .. } if endpoints.len() == 1 && endpoints[0].ip.to_string() == "10.244.0.5"),
        "{t:?}"
    );
    let t = p.trace(pod, false, "172.20.0.240".parse().unwrap(), Proto::Tcp, 80);
    assert!(
        matches!(
            &t.outcome,
            TraceOutcome::Dnat {
                masquerade: true,
                ..
            }
        ),
        "{t:?}"
    );
    let t = p.trace(pod, false, "10.96.0.50".parse().unwrap(), Proto::Tcp, 80);
    assert!(matches!(&t.outcome, TraceOutcome::Refused { .. }), "{t:?}");
    let t = p.trace(pod, false, "10.96.0.41".parse().unwrap(), Proto::Tcp, 81);
    assert!(matches!(&t.outcome, TraceOutcome::Refused { .. }), "{t:?}");
    let t = p.trace(pod, false, "10.96.9.9".parse().unwrap(), Proto::Tcp, 80);
    assert!(matches!(&t.outcome, TraceOutcome::Refused { .. }), "{t:?}");
    let t = p.trace(pod, false, "10.244.1.5".parse().unwrap(), Proto::Tcp, 8080);
    assert_eq!(t.outcome, TraceOutcome::NotAService);
    let p3 = compile(
        &node("n3"),
        &[svc(
            json!({"metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.41", "selector": {"a": "b"},
                 "externalTrafficPolicy": "Local",
                 "ports": [{"name": "http", "port": 80, "nodePort": 30081}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "172.20.0.240"}]}}}),
        )],
        &[slice("lb", 8080, &eps)],
    );
    let t = p3.trace(ext, false, "172.20.0.240".parse().unwrap(), Proto::Tcp, 80);
    assert!(matches!(&t.outcome, TraceOutcome::Dropped { .. }), "{t:?}");
}

/// A change to the cluster, for the incremental compiler's property test.
#[derive(Debug, Clone)]
enum Change {
    /// Service `s<i>` in one of six shapes.
    Service(u8, u8),
    RemoveService(u8),
    /// Slice of `s<i>`: endpoint count, conditions (two bits per endpoint, see
    /// [`endpoints_of`]), address salt.
    Slice(u8, u8, u8, u8),
    RemoveSlice(u8),
    /// Which of n1..n3 hold leases.
    Nodes(u8),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0u8..5, 0u8..7).prop_map(|(i, f)| Change::Service(i, f)),
        (0u8..5).prop_map(Change::RemoveService),
        (0u8..5, 0u8..4, any::<u8>(), 0u8..3).prop_map(|(i, n, c, s)| Change::Slice(i, n, c, s)),
        (0u8..5).prop_map(Change::RemoveSlice),
        (0u8..8).prop_map(Change::Nodes),
    ]
}

/// Service `s<i>` in shape `f`: plain, affinity, NodePort with Local policy, LoadBalancer with
/// source ranges and Local policy, UDP, one whose externalIP is s0's ClusterIP, or headless.
fn shaped(i: u8, f: u8) -> Service {
    let name = format!("s{i}");
    let mut v = basic(&name, &format!("10.96.0.{}", i + 2));
    match f {
        1 => {
            v.spec.session_affinity = Some("ClientIP".to_string());
            v.spec.ports.push(v.spec.ports[0].clone());
            v.spec.ports[1].name = Some("alt".to_string());
            v.spec.ports[1].port = 81;
        }
        2 => {
            v.spec.type_ = Some("NodePort".to_string());
            v.spec.ports[0].node_port = Some(30000 + u16::from(i));
            v.spec.external_traffic_policy = Some("Local".to_string());
        }
        3 => {
            v = svc(json!({"metadata": {"name": name, "namespace": "default"},
                "spec": {"type": "LoadBalancer", "clusterIP": format!("10.96.0.{}", i + 2),
                         "selector": {"a": "b"}, "externalTrafficPolicy": "Local",
                         "loadBalancerSourceRanges": ["172.20.0.0/28"],
                         // Two services may claim one port (the API server would not allow it).
                         "healthCheckNodePort": 32000 + u16::from(i % 2),
                         "ports": [{"name": "http", "port": 80, "nodePort": 31000 + u16::from(i)}]},
                "status": {"loadBalancer": {"ingress": [{"ip": format!("172.20.0.{}", 240 + i)}]}}}));
        }
        4 => v.spec.ports[0].protocol = Some("UDP".to_string()),
        5 => v.spec.external_ips = vec!["10.96.0.2".to_string()],
        6 => v.spec.cluster_ip = Some("None".to_string()),
        _ => {}
    }
    v
}

/// The slices of `s<i>` with `n` endpoints; endpoint `j` has the conditions
/// `(conds >> 2j) & 3`: ready; terminating and serving; terminating, not serving; not ready.
fn endpoints_of(i: u8, n: u8, conds: u8, salt: u8) -> [EndpointSlice; 2] {
    let ips: Vec<String> = (0..n)
        .map(|j| format!("10.244.{i}.{}", j + 2 + salt))
        .collect();
    let eps: Vec<(&str, &str, bool, bool, bool)> = ips
        .iter()
        .enumerate()
        .map(|(j, ip)| {
            let (ready, serving, terminating) = match (conds >> (2 * j)) & 3 {
                0 => (true, true, false),
                1 => (false, true, true),
                2 => (false, false, true),
                _ => (false, false, false),
            };
            (
                ip.as_str(),
                ["n1", "n2"][j % 2],
                ready,
                serving,
                terminating,
            )
        })
        .collect();
    let name = format!("s{i}");
    [
        slice(&name, 8080, &eps),
        slice_named(&name, "http", "UDP", 5353, &eps),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    /// Fed any sequence of changes in batches, the incremental compiler holds exactly the plan
    /// that compiling everything from scratch gives, and its diff of each batch is exactly the
    /// diff of the two whole plans; applied to a model of the kernel's maps it never adds an
    /// element that exists or deletes one that does not.
    #[test]
    fn incremental_compile_equals_compiling_from_scratch(
        batches in proptest::collection::vec(proptest::collection::vec(change(), 1..5), 1..8),
    ) {
        let base = node("n1");
        let mut c = Compiler::new(base.clone());
        let mut services: BTreeMap<u8, Service> = BTreeMap::new();
        let mut slices: BTreeMap<u8, [EndpointSlice; 2]> = BTreeMap::new();
        let mut nodes = base.nodes.clone();
        let mut prev = compile(&base, &[], &[]);
        let mut kernel = BTreeMap::new();
        for batch in batches {
            for ch in batch {
                match ch {
                    Change::Service(i, f) => {
                        let s = shaped(i, f);
                        c.upsert_service(&s);
                        services.insert(i, s);
                    }
                    Change::RemoveService(i) => {
                        c.remove_service("default", &format!("s{i}"));
                        services.remove(&i);
                    }
                    Change::Slice(i, n, conds, salt) => {
                        let s = endpoints_of(i, n, conds, salt);
                        for x in &s {
                            c.upsert_slice(x);
                        }
                        slices.insert(i, s);
                    }
                    Change::RemoveSlice(i) => {
                        if let Some(s) = slices.remove(&i) {
                            for x in &s {
                                c.remove_slice("default", &x.metadata.name);
                            }
                        }
                    }
                    Change::Nodes(mask) => {
                        nodes = (0..3).filter(|k| mask & (1 << k) != 0).map(|k| format!("n{}", k + 1)).collect();
                        c.set_nodes(nodes.clone());
                    }
                }
            }
            c.update();
            let d = c.take_diff();
            let view = NodeView { nodes: nodes.clone(), ..base.clone() };
            let mut fresh = compile(&view, services.values(), slices.values().flatten());
            fresh.ports.clear();
            fresh.skipped.clear();
            prop_assert_eq!(c.plan(), &fresh);
            prop_assert_eq!(&d, &diff(&prev, &fresh));
            apply(&mut kernel, &d.ops);
            let mut expect = BTreeMap::new();
            apply(&mut expect, &fresh.all_ops());
            prop_assert_eq!(&kernel, &expect);
            prop_assert_eq!(c.chains(), &fresh.dyn_chains());
            prev = fresh;
        }
    }
}

#[test]
fn one_endpoint_change_recompiles_one_service() {
    let (svcs, mut slices) = many(1000, 0);
    let mut c = Compiler::new(node("n1"));
    for s in &svcs {
        c.upsert_service(s);
    }
    for s in &slices {
        c.upsert_slice(s);
    }
    assert_eq!(c.update(), 1000);
    let full = c.take_diff();
    assert_eq!(full.ops.len(), c.plan().all_ops().len());
    slices[500].endpoints[1].addresses = vec!["10.250.0.1".to_string()];
    c.upsert_slice(&slices[500]);
    assert_eq!(c.update(), 1, "only the changed service is recompiled");
    let d = c.take_diff();
    // The backend slot, and the hairpin pair of the local endpoint it replaced.
    assert_eq!(d.ops.len(), 4, "{}", render_ops(&d.ops));
    assert!(d.add_chains.is_empty() && d.delete_chains.is_empty());
    // The same slice again changes nothing.
    c.upsert_slice(&slices[500]);
    assert_eq!(c.update(), 0);
    assert!(c.take_diff().is_empty());
}

/// A UDP service `u` (10.96.0.70:53) with `eps`, compiled incrementally: the compiler after
/// taking the slice, and the diff of that batch.
fn udp_batch(c: &mut Compiler, eps: &[(&str, &str, bool, bool, bool)]) -> ServiceDiff {
    c.upsert_slice(&slice_named("u", "dns", "UDP", 53, eps));
    c.update();
    c.take_diff()
}

fn udp_service() -> Service {
    svc(json!({"metadata": {"name": "u", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.70", "selector": {"a": "b"},
                 "ports": [{"name": "dns", "protocol": "UDP", "port": 53}]}}))
}

#[test]
fn a_udp_endpoint_keeps_its_flows_while_it_terminates_and_loses_them_when_removed() {
    let f = fe("10.96.0.70", Proto::Udp, 53);
    let (e1, e2): (Ipv4Addr, Ipv4Addr) =
        ("10.244.1.5".parse().unwrap(), "10.244.1.6".parse().unwrap());
    let mut c = Compiler::new(node("n1"));
    c.upsert_service(&udp_service());
    udp_batch(
        &mut c,
        &[
            ("10.244.1.5", "n2", R, R, false),
            ("10.244.1.6", "n2", R, R, false),
        ],
    );
    // e1 starts terminating but still serves: no new flows, existing ones keep going
    // (kube-proxy deletes UDP conntrack entries only of endpoints that stopped serving).
    let d = udp_batch(
        &mut c,
        &[
            ("10.244.1.5", "n2", false, R, R),
            ("10.244.1.6", "n2", R, R, false),
        ],
    );
    assert_eq!(backends_of(c.plan(), f), vec!["10.244.1.6:53"]);
    assert_eq!(d.stale_udp, vec![], "a serving endpoint keeps its flows");
    // Then it stops serving: now its flows go.
    let d = udp_batch(
        &mut c,
        &[
            ("10.244.1.5", "n2", false, false, R),
            ("10.244.1.6", "n2", R, R, false),
        ],
    );
    assert_eq!(d.stale_udp, vec![(f, e1)]);
    // An endpoint removed while it was serving (terminating, unused) loses its flows too.
    udp_batch(
        &mut c,
        &[
            ("10.244.1.5", "n2", R, R, false),
            ("10.244.1.6", "n2", false, R, R),
        ],
    );
    let d = udp_batch(&mut c, &[("10.244.1.5", "n2", R, R, false)]);
    assert_eq!(d.stale_udp, vec![(f, e2)]);
}

#[test]
fn ready_terminating_endpoints_are_ready_as_in_kube_proxy() {
    // publishNotReadyAddresses: the endpoints controller keeps `ready: true` on terminating
    // pods, and kube-proxy's IsReady() is the ready condition alone.
    let mut s = basic("web", "10.96.0.20");
    s.spec.publish_not_ready_addresses = Some(true);
    let p = compile(
        &node("n1"),
        &[s],
        &[slice(
            "web",
            8080,
            &[
                ("10.244.1.5", "n2", R, R, R),
                ("10.244.1.6", "n2", R, R, false),
            ],
        )],
    );
    assert_eq!(
        backends_of(&p, fe("10.96.0.20", Proto::Tcp, 80)),
        vec!["10.244.1.5:8080", "10.244.1.6:8080"]
    );
}

#[test]
fn local_policy_falls_back_to_local_serving_terminating_endpoints() {
    let s = svc(json!({"metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.41", "selector": {"a": "b"},
                 "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
                 "ports": [{"name": "http", "port": 80, "nodePort": 30081}]}}));
    let eps = [
        // Local, terminating and serving; local, terminating, not serving; remote, ready.
        ("10.244.0.5", "n1", false, R, R),
        ("10.244.0.6", "n1", false, false, R),
        ("10.244.1.5", "n2", R, R, false),
    ];
    let p = compile(
        &node("n1"),
        std::slice::from_ref(&s),
        &[slice("lb", 8080, &eps)],
    );
    let np = fe("172.20.0.11", Proto::Tcp, 30081);
    // Cluster-wide there is a ready endpoint, so pods and the node use only it; external
    // clients use the local serving terminating one.
    assert_eq!(
        p.services.get(&np),
        Some(&Target::ExtLocal {
            n: 1,
            local: 1,
            affinity: false
        })
    );
    assert_eq!(
        backends_of(&p, np),
        vec!["10.244.0.5:8080", "10.244.1.5:8080"]
    );
    // internalTrafficPolicy Local: the local set is the fallback one.
    let cip = fe("10.96.0.41", Proto::Tcp, 80);
    assert_eq!(
        p.services.get(&cip),
        Some(&Target::Lb {
            n: 1,
            affinity: false
        })
    );
    assert_eq!(backends_of(&p, cip)[0], "10.244.0.5:8080");
    // A ready local endpoint wins over the terminating one.
    let mut more = eps.to_vec();
    more.push(("10.244.0.7", "n1", R, R, false));
    let p = compile(&node("n1"), &[s], &[slice("lb", 8080, &more)]);
    assert_eq!(
        p.services.get(&np),
        Some(&Target::ExtLocal {
            n: 2,
            local: 1,
            affinity: false
        })
    );
    assert_eq!(backends_of(&p, np)[0], "10.244.0.7:8080");
}

#[test]
fn affinity_key_is_the_same_for_the_cluster_ip_and_external_frontends() {
    let s = svc(json!({"metadata": {"name": "np", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.40", "selector": {"a": "b"},
                 "sessionAffinity": "ClientIP",
                 "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "172.20.0.240"}]}}}));
    let p = compile(
        &node("n1"),
        &[s],
        &[slice("np", 8080, &[("10.244.1.5", "n2", R, R, false)])],
    );
    let ids: BTreeSet<u32> = [
        fe("10.96.0.40", Proto::Tcp, 80),
        fe("172.20.0.240", Proto::Tcp, 80),
        fe("172.20.0.11", Proto::Tcp, 30080),
    ]
    .iter()
    .map(|f| p.affinity_ids[f])
    .collect();
    assert_eq!(ids.len(), 1, "one id for every frontend: {ids:x?}");
    let id = *ids.first().unwrap();
    assert_eq!(
        id & MASQ_MARK,
        0,
        "the masquerade bit is not part of the key"
    );
    // The record chain keys the map on the id alone, also for flows that carry the
    // masquerade bit (external frontends, affinity miss), and puts the bit back after.
    let rules = DynChain::Record { timeout: 10_800 }.rules();
    let update = rules.iter().position(|r| r.starts_with("update")).unwrap();
    assert!(
        rules[..update]
            .iter()
            .any(|r| r.contains("ct mark set ct mark & 0xffffbfff")),
        "{rules:?}"
    );
    assert!(
        rules[update + 1..]
            .iter()
            .any(|r| r.contains("ct mark set ct mark | 0x4000")),
        "{rules:?}"
    );
    assert_eq!(p.affinity_timeouts.get(&(id | MASQ_MARK)), Some(&10_800));
}

fn lb_local(health_port: u16) -> Service {
    svc(json!({"metadata": {"name": "lb", "namespace": "shop"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.41", "selector": {"a": "b"},
                 "externalTrafficPolicy": "Local", "healthCheckNodePort": health_port,
                 "ports": [{"name": "http", "port": 80, "nodePort": 30081},
                           {"name": "alt", "port": 81, "nodePort": 30082}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "172.20.0.240"}]}}}))
}

fn lb_slices(eps: &[(&str, &str, bool, bool, bool)]) -> [EndpointSlice; 2] {
    let mut a = slice_named("lb", "http", "TCP", 8080, eps);
    let mut b = slice_named("lb", "alt", "TCP", 8081, eps);
    for s in [&mut a, &mut b] {
        s.metadata.namespace = Some("shop".into());
    }
    [a, b]
}

#[test]
fn health_check_node_port_reports_the_ready_local_endpoint_addresses() {
    let mut c = Compiler::new(node("n1"));
    c.upsert_service(&lb_local(32100));
    let eps = [
        ("10.244.0.5", "n1", R, R, false),
        ("10.244.0.6", "n1", false, R, R),
        ("10.244.1.5", "n2", R, R, false),
    ];
    for s in &lb_slices(&eps) {
        c.upsert_slice(s);
    }
    c.update();
    let d = c.take_diff();
    assert!(d.health_changed);
    // One ready local address, counted once although it backs two ports; the terminating
    // one does not count (a node left with only those fails the check).
    assert_eq!(
        c.plan().health_checks.get(&32100),
        Some(&ServiceHealth {
            namespace: "shop".into(),
            name: "lb".into(),
            local_endpoints: 1
        })
    );
    // The port is not a frontend: nothing in the maps matches or refuses it.
    let on_node = |p: &ServicePlan| {
        p.services
            .keys()
            .chain(p.no_endpoints.keys())
            .any(|f| f.port == 32100)
    };
    assert!(!on_node(c.plan()));
    // The last ready local endpoint starts terminating: the count drops to 0.
    let eps = [
        ("10.244.0.5", "n1", false, R, R),
        ("10.244.1.5", "n2", R, R, false),
    ];
    for s in &lb_slices(&eps) {
        c.upsert_slice(s);
    }
    c.update();
    assert!(c.take_diff().health_changed);
    assert_eq!(c.plan().health_checks[&32100].local_endpoints, 0);
    // Unchanged counts are no change.
    for s in &lb_slices(&eps) {
        c.upsert_slice(s);
    }
    c.update();
    assert!(!c.take_diff().health_changed);
    // Policy Cluster: no health check; the port is gone.
    let mut s = lb_local(32100);
    s.spec.external_traffic_policy = Some("Cluster".into());
    c.upsert_service(&s);
    c.update();
    assert!(c.take_diff().health_changed);
    assert!(c.plan().health_checks.is_empty());
}
